//! The request span, traced by a global subscriber (in a process of its
//! own, so no other test's callsites race its registration): every request
//! runs in `offstate.request`, which records what the client was told and
//! the status; store calls run in `offstate.store` spans inside it.

#![allow(clippy::unwrap_used)]

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::Request;
use offstate_core::{MemoryStore, SessionError, Sessions};
use offstate_tower::{CookieConfig, Session, SessionLayer};
use tower::ServiceExt as _;
use tracing_subscriber::fmt::format::FmtSpan;

mod support;
use support::Capture;

async fn write(session: Session) -> Result<&'static str, SessionError> {
    session.insert("n", &1).await?;
    Ok("ok")
}

async fn read(session: Session) -> Result<String, SessionError> {
    Ok(session.get::<u64>("n").await?.unwrap_or(0).to_string())
}

#[tokio::test(flavor = "current_thread")]
async fn every_request_runs_in_a_span_that_records_the_client_update_and_status() {
    let capture = Capture::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(capture.clone())
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_span_events(FmtSpan::CLOSE)
            .finish(),
    )
    .unwrap();
    let app = Router::new()
        .route("/write", post(write))
        .route("/read", get(read))
        .layer(
            SessionLayer::new(Sessions::new(MemoryStore::new()))
                .with_cookie(CookieConfig::default().with_secure(false)),
        );

    let request = Request::post("/write").body(Body::empty()).unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let cookie = response.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let logs = capture.take();
    assert!(
        logs.contains(r#"offstate.request{client_update="set" status=200}"#),
        "{logs}"
    );
    assert!(
        logs.contains(r#"db.operation.name="create""#) && logs.contains("offstate.store"),
        "{logs}"
    );

    let request = Request::get("/read")
        .header("cookie", cookie)
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let logs = capture.take();
    assert!(
        logs.contains(r#"offstate.request{client_update="unchanged" status=200}"#),
        "{logs}"
    );
    assert!(logs.contains(r#"offstate.outcome="ok""#), "{logs}");
}
