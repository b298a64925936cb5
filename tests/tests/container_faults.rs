//! Faults made through Docker, on Redis and memcached containers: a paused
//! container, a killed one, and one cut off its network. Each gives the
//! store's typed outage errors (`Timeout` / `Unavailable`) within the
//! configured bound, never a hang; the middleware's default fail-closed
//! policy turns them into 503; and once the container is back the same
//! store instance and app recover by themselves.
//!
//! Fails, never skips, when Docker or an image is missing (see
//! `scripts/build-images.sh`, `OFFSTATE_REDIS_IMAGE`,
//! `OFFSTATE_MEMCACHED_IMAGE`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, Response, StatusCode};
use offstate_core::SessionError;
use offstate_core::{
    Clock, CreateOutcome, Deadlines, Record, SessionId, SessionKey, SessionStore, Sessions,
    StoreError, SystemClock,
};
use offstate_testing::container::Network;
use offstate_testing::node::Node;
use offstate_testing::{Memcached, Redis, Source, memcached, redis};
use offstate_tower::{Session, SessionLayer};
use tower::ServiceExt as _;

/// The stores' connect and command timeout.
const BOUND: Duration = Duration::from_millis(500);
/// Far above the bound: only a store or app that hangs reaches it.
const HANG_GUARD: Duration = Duration::from_secs(20);
/// How long a store may take to notice the server is back.
const RECOVERY: Duration = Duration::from_secs(30);

/// What is done to the container, and what it does to the data.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Pause / unpause: data survives.
    Pause,
    /// Kill / start again: the server comes back empty.
    Kill,
    /// Network disconnect / connect: data survives.
    Disconnect,
}

impl Fault {
    async fn cut(self, node: &Node) {
        match self {
            Self::Pause => node.pause().await,
            Self::Kill => node.kill().await,
            Self::Disconnect => node.disconnect().await,
        }
        .unwrap_or_else(|e| panic!("{self:?}: {e}"));
    }

    async fn restore(self, node: &Node) {
        match self {
            Self::Pause => node.resume().await,
            Self::Kill => node.restart().await,
            Self::Disconnect => node.reconnect().await,
        }
        .unwrap_or_else(|e| panic!("undo {self:?}: {e}"));
    }

    fn keeps_data(self) -> bool {
        !matches!(self, Self::Kill)
    }
}

async fn read(session: Session) -> Result<String, SessionError> {
    let n: Option<u64> = session.get("n").await?;
    Ok(format!("n={}", n.unwrap_or(0)))
}

async fn write(session: Session) -> Result<String, SessionError> {
    let n = session
        .update("n", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await?;
    Ok(format!("n={}", n.unwrap_or(0)))
}

/// A small app over `store`, with the default (fail-closed) outage policy.
fn app(store: impl SessionStore) -> Router {
    Router::new()
        .route("/read", get(read))
        .route("/write", post(write))
        .layer(SessionLayer::new(Sessions::new(store)))
}

async fn send(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Response<Body> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let request = request.body(Body::empty()).expect("request");
    tokio::time::timeout(HANG_GUARD, app.clone().oneshot(request))
        .await
        .expect("the app hung on an unreachable store")
        .expect("infallible")
}

async fn text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    String::from_utf8_lossy(&bytes).into_owned()
}

fn record() -> Record {
    let now = SystemClock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(600))),
    );
    record.data.insert("k".into(), b"v".to_vec());
    record
}

/// Loads until the store answers again.
async fn until_recovered<S: SessionStore>(store: &S, what: &str) {
    let probe = SessionId::generate().key();
    let start = Instant::now();
    while start.elapsed() < RECOVERY {
        if let Ok(Ok(_)) = tokio::time::timeout(
            HANG_GUARD,
            store.load(&probe, offstate_core::Timestamp::now()),
        )
        .await
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: the store did not recover within {RECOVERY:?} after the container came back");
}

/// The whole story for one fault: data and a session before, typed errors
/// and 503 during, recovery after.
async fn fault_story<S: SessionStore + Clone>(store: S, node: &Node, fault: Fault) {
    assert_eq!(node.source(), Source::Container);
    let what = format!("{fault:?} on {}", node.address());
    let app = app(store.clone());
    let response = send(&app, "POST", "/write", None).await;
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    assert_eq!(text(response).await, "n=1");
    let key: SessionKey = SessionId::generate().key();
    assert_eq!(
        store
            .create(&key, &record(), offstate_core::Timestamp::now())
            .await
            .expect("create"),
        CreateOutcome::Created
    );

    fault.cut(node).await;

    // The store: a typed outage error, within its bound.
    for _ in 0..3 {
        let started = Instant::now();
        let result = tokio::time::timeout(
            HANG_GUARD,
            store.load(&key, offstate_core::Timestamp::now()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: load hung past {HANG_GUARD:?}"));
        match result {
            Err(StoreError::Timeout(bound)) => {
                assert!(bound <= BOUND * 2, "{what}: Timeout({bound:?})");
            }
            Err(StoreError::Unavailable(_)) => {}
            other => panic!("{what}: load must be an outage error, got {other:?}"),
        }
        eprintln!("{what}: load failed after {:?}", started.elapsed());
    }
    let write = tokio::time::timeout(
        HANG_GUARD,
        store.create(
            &SessionId::generate().key(),
            &record(),
            offstate_core::Timestamp::now(),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: create hung"));
    assert!(
        matches!(&write, Err(e) if e.is_outage()),
        "{what}: create must be an outage error, got {write:?}"
    );

    // The middleware: fail-closed gives a short 503, the cookie untouched.
    let response = send(&app, "GET", "/read", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{what}");
    assert!(response.headers().get("set-cookie").is_none(), "{what}");
    assert_eq!(text(response).await, "session store unavailable");

    fault.restore(node).await;
    until_recovered(&store, &what).await;

    let loaded = store
        .load(&key, offstate_core::Timestamp::now())
        .await
        .expect("load after recovery");
    let response = send(&app, "GET", "/read", Some(&cookie)).await;
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    if fault.keeps_data() {
        assert_eq!(loaded.expect("the record survived").data["k"], b"v");
        assert_eq!(text(response).await, "n=1", "{what}: the session survived");
    } else {
        assert!(loaded.is_none(), "{what}: a restarted server is empty");
        assert_eq!(text(response).await, "n=0", "{what}: the session is gone");
    }
    // And new work goes through.
    let response = send(&app, "POST", "/write", None).await;
    assert_eq!(response.status(), StatusCode::OK, "{what}");
    assert_eq!(text(response).await, "n=1");
}

async fn redis_container() -> Redis {
    redis()
        .via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis in a container: {e}"))
}

async fn bounded_redis(fixture: &Redis) -> offstate_redis::RedisStore {
    let config = fixture
        .config()
        .clone()
        .with_connect_timeout(BOUND)
        .with_command_timeout(BOUND);
    fixture.connect_with(config).await.expect("store")
}

async fn memcached_container() -> Memcached {
    memcached()
        .via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached in a container: {e}"))
}

fn bounded_memcached(fixture: &Memcached) -> offstate_memcached::MemcachedStore {
    let config = fixture
        .config()
        .clone()
        .with_connect_timeout(BOUND)
        .with_command_timeout(BOUND);
    fixture.store_with(config).expect("store")
}

async fn network() -> Network {
    Network::create()
        .await
        .unwrap_or_else(|e| panic!("cannot create a Docker network: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_container() {
    let fixture = redis_container().await;
    let store = bounded_redis(&fixture).await;
    fault_story(store, fixture.node(0), Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_container() {
    let fixture = redis_container().await;
    let store = bounded_redis(&fixture).await;
    fault_story(store, fixture.node(0), Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_container_disconnected_from_its_network() {
    let network = network().await;
    let fixture = redis()
        .on_network(&network)
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis on a network: {e}"));
    let store = bounded_redis(&fixture).await;
    fault_story(store, fixture.node(0), Fault::Disconnect).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_paused_container() {
    let fixture = memcached_container().await;
    let store = bounded_memcached(&fixture);
    fault_story(store, fixture.node(0), Fault::Pause).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_killed_container() {
    let fixture = memcached_container().await;
    let store = bounded_memcached(&fixture);
    fault_story(store, fixture.node(0), Fault::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memcached_container_disconnected_from_its_network() {
    let network = network().await;
    let fixture = memcached()
        .on_network(&network)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached on a network: {e}"));
    let store = bounded_memcached(&fixture);
    fault_story(store, fixture.node(0), Fault::Disconnect).await;
}
