//! A JSON API that carries the session in a header instead of a cookie, as
//! mobile apps and other services do.
//!
//! ```sh
//! cargo run -p offstate --example json_api
//! curl -si -X POST localhost:3000/login -H 'content-type: application/json' -d '{"user":"alice"}'
//! curl -s localhost:3000/me -H 'x-session-id: <the x-session-id from the login answer>'
//! curl -si -X POST localhost:3000/logout -H 'x-session-id: <id>'
//! ```
//!
//! New and rotated IDs come back in the `x-session-id` response header; an
//! empty one means the session ended and the client should drop its ID.

use axum::routing::{get, post};
use axum::{Json, Router};
use http::{HeaderName, StatusCode};
use offstate::tower::SessionLayer;
use offstate::{MemoryStore, Session, SessionError, Sessions};
use serde::{Deserialize, Serialize};

const HEADER: HeaderName = HeaderName::from_static("x-session-id");

#[derive(Deserialize)]
struct Login {
    user: String,
}

#[derive(Serialize)]
struct Me {
    user: Option<String>,
    calls: u64,
}

/// Logs in: the session gets a new ID carrying the user (never the ID the
/// client came with), sent back in `x-session-id`.
async fn login(session: Session, Json(login): Json<Login>) -> Result<StatusCode, SessionError> {
    // Check the credentials here; this example trusts the name.
    session.set_principal(login.user).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn me(session: Session) -> Result<Json<Me>, SessionError> {
    let calls = session
        .update("calls", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?
        .unwrap_or(0);
    Ok(Json(Me {
        user: session.principal().await?,
        calls,
    }))
}

async fn logout(session: Session) -> Result<StatusCode, SessionError> {
    session.delete().await?;
    Ok(StatusCode::NO_CONTENT)
}

fn app(sessions: Sessions) -> Router {
    Router::new()
        .route("/login", post(login))
        .route("/me", get(me))
        .route("/logout", post(logout))
        .layer(SessionLayer::new(sessions).with_header(HEADER))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("json_api listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(Sessions::new(MemoryStore::new()))).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn call(app: &Router, request: Request<Body>) -> (StatusCode, Option<String>, String) {
        let response = app.clone().oneshot(request).await.unwrap();
        let id = response
            .headers()
            .get(&HEADER)
            .map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, id, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn login_hands_out_an_id_that_me_and_logout_accept() {
        let app = app(Sessions::new(MemoryStore::new()));
        let (status, id, _) = call(
            &app,
            Request::post("/login")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"user":"alice"}"#))
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let id = id.unwrap();
        let me = |id: &str| {
            Request::get("/me")
                .header(&HEADER, id)
                .body(Body::empty())
                .unwrap()
        };
        let (_, _, body) = call(&app, me(&id)).await;
        assert_eq!(body, r#"{"user":"alice","calls":1}"#);
        let (status, ended, _) = call(
            &app,
            Request::post("/logout")
                .header(&HEADER, id.as_str())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert_eq!(
            ended.as_deref(),
            Some(""),
            "the client is told to drop the ID"
        );
        let (_, _, body) = call(&app, me(&id)).await;
        assert_eq!(body, r#"{"user":null,"calls":1}"#);
    }
}
