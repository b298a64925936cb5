//! The counter on Redis, behind a coherent local cache: run it twice and
//! both instances serve the same visitors, most reads from memory.
//!
//! ```sh
//! redis-server --port 6379 &
//! OFFSTATE_REDIS_URL=redis://127.0.0.1:6379 OFFSTATE_LISTEN=127.0.0.1:3000 \
//!     cargo run -p offstate --example redis_cache &
//! OFFSTATE_REDIS_URL=redis://127.0.0.1:6379 OFFSTATE_LISTEN=127.0.0.1:3001 \
//!     cargo run -p offstate --example redis_cache &
//! curl -c jar -b jar http://127.0.0.1:3000/   # visit number 1
//! curl -c jar -b jar http://127.0.0.1:3001/   # visit number 2, other instance
//! ```
//!
//! Every write script also publishes its invalidation on Redis pub/sub, in
//! the same atomic step; each instance's cache listens and forgets what a
//! peer changed, so a cached read is never older than the last write it
//! could have heard of (see offstate-cache's crate docs for the exact
//! guarantee).

use axum::Router;
use axum::routing::get;
use offstate::cache::CachedStore;
use offstate::redis::{RedisConfig, RedisInvalidationChannel, RedisStore};
use offstate::tower::{CookieConfig, SessionLayer};
use offstate::{Session, SessionError, Sessions};

async fn count(session: Session) -> Result<String, SessionError> {
    session
        .update("visits", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?;
    // Save before answering: the save is conditional on the version, so if
    // the copy this instance's cache held was already stale (a peer's
    // announcement still on its way), the update is replayed on the
    // current record, and the count read back is the one stored.
    session.save().await?;
    let visits: Option<u64> = session.get("visits").await?;
    Ok(format!("visit number {}\n", visits.unwrap_or(0)))
}

/// Sessions on the Redis at `url`, behind a cache kept coherent by the
/// write scripts' own announcements.
async fn sessions(url: &str) -> Result<Sessions, Box<dyn std::error::Error + Send + Sync>> {
    let config = RedisConfig::new(url);
    let channel = RedisInvalidationChannel::connect(&config).await?;
    let store = RedisStore::connect(config)
        .await?
        .with_announcements(channel.channel_name());
    Ok(Sessions::new(
        CachedStore::builder(store).with_channel(channel).build(),
    ))
}

fn app(sessions: Sessions) -> Router {
    // Plain HTTP on localhost; keep the secure default in production.
    let cookie = CookieConfig::default().with_secure(false);
    Router::new()
        .route("/", get(count))
        .layer(SessionLayer::new(sessions).with_cookie(cookie))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let url =
        std::env::var("OFFSTATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let listen = std::env::var("OFFSTATE_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!(
        "counter on {url}, listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app(sessions(&url).await?)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use axum::body::Body;
    use http::{Request, header};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    async fn visit(app: &Router, cookie: Option<&str>) -> (String, Option<String>) {
        let mut request = Request::get("/");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .map(|c| c.to_str().unwrap().split(';').next().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (String::from_utf8(body.to_vec()).unwrap(), cookie)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_instances_count_the_same_visitor() {
        let redis = offstate_testing::redis()
            .await
            .expect("redis-server (scripts/setup.sh installs it)");
        let a = app(sessions(redis.url()).await.unwrap());
        let b = app(sessions(redis.url()).await.unwrap());
        let (body, cookie) = visit(&a, None).await;
        assert_eq!(body, "visit number 1\n");
        let cookie = cookie.expect("a new session sets its cookie");
        assert_eq!(visit(&b, Some(&cookie)).await.0, "visit number 2\n");
        // A and B both hold the session in their caches now, and each may
        // still have a copy the other has just made stale: a write is
        // conditional on the version, so no visit is ever lost or counted
        // twice, and each answer is the count that was stored.
        assert_eq!(visit(&a, Some(&cookie)).await.0, "visit number 3\n");
        assert_eq!(visit(&b, Some(&cookie)).await.0, "visit number 4\n");
        assert_eq!(visit(&a, Some(&cookie)).await.0, "visit number 5\n");
    }
}
