//! The smallest offstate app: a visit counter kept in a session, in memory.
//!
//! ```sh
//! cargo run -p offstate --example counter
//! curl -c jar -b jar http://127.0.0.1:3000/   # visit number 1
//! curl -c jar -b jar http://127.0.0.1:3000/   # visit number 2
//! ```
//!
//! Swap `MemoryStore` for a shared store (see the `redis_cache` example) and
//! any number of instances serve the same counter.

use axum::Router;
use axum::routing::get;
use offstate::tower::{CookieConfig, SessionLayer};
use offstate::{MemoryStore, Session, SessionError, Sessions};

/// Counts this visitor's visits. `update` re-runs the closure if another
/// request changed the counter meanwhile, so no visit is lost.
async fn count(session: Session) -> Result<String, SessionError> {
    let visits = session
        .update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?;
    Ok(format!("visit number {}\n", visits.unwrap_or(0)))
}

fn app(sessions: Sessions) -> Router {
    // Plain HTTP on localhost: a `Secure` cookie would not come back. In
    // production keep the default (Secure, HttpOnly, SameSite=Lax, __Host-).
    let cookie = CookieConfig::default().with_secure(false);
    Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(sessions).with_cookie(cookie))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("counter listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app(Sessions::new(MemoryStore::new()))).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use axum::body::Body;
    use http::{Request, header};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    #[tokio::test]
    async fn the_second_visit_with_the_cookie_counts_two() {
        let app = app(Sessions::new(MemoryStore::new()));
        let first = app
            .clone()
            .oneshot(Request::get("/").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = first.headers()[header::SET_COOKIE].to_str().unwrap();
        let pair = cookie.split(';').next().unwrap().to_owned();
        let second = app
            .oneshot(
                Request::get("/")
                    .header(header::COOKIE, pair)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = second.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"visit number 2\n");
    }
}
