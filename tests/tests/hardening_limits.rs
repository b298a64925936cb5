//! Abuse and resource limits through the middleware on real backends
//! (Redis, memcached, DynamoDB via moto): anonymous floods store nothing,
//! and every configured limit answers with its status and writes nothing:
//! keys per session, value size, record size (413) and the session cookie
//! or header size (431).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{Request, StatusCode, header};
use offstate_core::SessionError;
use offstate_core::{CountingStore, Limits, SessionStore, Sessions};
use offstate_redis::redis::cmd;
use offstate_tower::{Session, SessionLayer};
use tower::ServiceExt as _;

const FLOOD: usize = 10_000;
const MAX_KEYS: usize = 4;
const MAX_VALUE: usize = 200;
const MAX_RECORD: usize = 600;

fn limits() -> Limits {
    Limits::default()
        .with_max_keys(MAX_KEYS)
        .with_max_value_bytes(MAX_VALUE)
        .with_max_record_bytes(MAX_RECORD)
}

async fn insert_keys(session: &Session, n: usize) -> Result<&'static str, SessionError> {
    for i in 0..n {
        session.insert(&format!("k{i}"), &i).await?;
    }
    Ok("ok")
}

fn routes() -> Router {
    Router::new()
        .route(
            "/read",
            get(|s: Session| async move {
                let n: Option<u64> = s.get("k0").await?;
                Ok::<_, SessionError>(format!("{n:?}"))
            }),
        )
        .route(
            "/keys-at-limit",
            post(|s: Session| async move { insert_keys(&s, MAX_KEYS).await }),
        )
        .route(
            "/keys-over",
            post(|s: Session| async move { insert_keys(&s, MAX_KEYS + 1).await }),
        )
        // JSON adds the two quotes.
        .route(
            "/value-at-limit",
            post(|s: Session| async move {
                s.insert("v", &"x".repeat(MAX_VALUE - 2)).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        .route(
            "/value-over",
            post(|s: Session| async move {
                s.insert("v", &"x".repeat(MAX_VALUE - 1)).await?;
                Ok::<_, SessionError>("ok")
            }),
        )
        // Each value is within its limit; together they are not.
        .route(
            "/record-over",
            post(|s: Session| async move {
                for key in ["k0", "k1", "k2", "k3"] {
                    s.insert(key, &"y".repeat(MAX_VALUE - 50)).await?;
                }
                Ok::<_, SessionError>("ok")
            }),
        )
}

async fn send(app: &Router, method: &str, uri: &str, cookie: Option<&str>) -> http::Response<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    app.clone()
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap()
}

fn cookie_of(response: &http::Response<Body>) -> String {
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// Runs every limit and the anonymous flood against `store`; `stored` tells
/// how many sessions the backend holds, where it can say (Redis: DBSIZE).
async fn exercise<S: SessionStore + Clone>(
    label: &str,
    store: S,
    stored: impl AsyncFn() -> Option<usize>,
) {
    let counted = CountingStore::new(store);
    let sessions = Sessions::new(counted.clone()).with_limits(limits());
    let layer = SessionLayer::new(sessions.clone()).with_max_value_len(64);
    let app = routes().layer(layer);
    let before = stored().await;

    // Anonymous flood on a read-only page: nothing reaches the store.
    for _ in 0..FLOOD {
        let response = send(&app, "GET", "/read", None).await;
        assert_eq!(response.status(), StatusCode::OK, "{label}");
        assert!(
            !response.headers().contains_key(header::SET_COOKIE),
            "{label}"
        );
    }
    assert_eq!(
        counted.counts().total(),
        0,
        "{label}: anonymous reads reached the store"
    );
    assert_eq!(
        stored().await,
        before,
        "{label}: anonymous reads stored something"
    );

    // Over-limit writes with no session create nothing.
    for uri in ["/keys-over", "/value-over", "/record-over"] {
        let response = send(&app, "POST", uri, None).await;
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{label} {uri}"
        );
    }
    assert_eq!(
        counted.counts().writes(),
        0,
        "{label}: an over-limit write reached the store"
    );
    assert_eq!(stored().await, before, "{label}");

    // At the limit is fine; one over it on an existing session is 413,
    // and the stored session is unchanged.
    let response = send(&app, "POST", "/keys-at-limit", None).await;
    assert_eq!(response.status(), StatusCode::OK, "{label}");
    let cookie = cookie_of(&response);
    if let Some(before) = before {
        assert_eq!(
            stored().await,
            Some(before + 1),
            "{label}: data created one session"
        );
    }
    for uri in ["/keys-over", "/value-over", "/record-over"] {
        counted.reset();
        let response = send(&app, "POST", uri, Some(&cookie)).await;
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "{label} {uri}"
        );
        assert_eq!(
            counted.counts().writes(),
            0,
            "{label} {uri}: nothing may be written"
        );
    }
    let id = offstate_core::SessionId::parse(cookie.split_once('=').unwrap().1).unwrap();
    let session = sessions.load(&id).await.unwrap().expect("still live");
    assert_eq!(session.keys().await.unwrap().len(), MAX_KEYS, "{label}");
    let response = send(&app, "POST", "/value-at-limit", None).await;
    assert_eq!(response.status(), StatusCode::OK, "{label}");

    // A session cookie over the configured length: 431, no store call.
    counted.reset();
    let long = format!("__Host-offstate={}", "A".repeat(65));
    let response = send(&app, "GET", "/read", Some(&long)).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "{label}"
    );
    assert_eq!(counted.counts().total(), 0, "{label}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_floods_on_redis() {
    let redis = offstate_testing::redis()
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis: {e}"));
    let dbsize = async || redis.query(&cmd("DBSIZE")).await.ok();
    exercise("redis", redis.store().clone(), dbsize).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_floods_on_memcached() {
    let memcached = offstate_testing::memcached()
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"));
    exercise("memcached", memcached.store().clone(), async || None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_and_floods_on_dynamodb() {
    let dynamo = offstate_testing::dynamodb()
        .await
        .unwrap_or_else(|e| panic!("cannot start moto: {e}"));
    exercise("dynamodb", dynamo.store().clone(), async || None).await;
}
