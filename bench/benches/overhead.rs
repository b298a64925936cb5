//! Middleware overhead in process: the same axum handlers behind offstate's
//! `SessionLayer` and behind tower-sessions' `SessionManagerLayer`, each
//! over its own in-memory store, driven with tower `oneshot`. One handler
//! reads one key, the other writes one key; the request carries the cookie
//! of an existing session. `scripts/bench.sh` reads the means back into
//! the report.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// criterion_group! generates an undocumented public function.
#![allow(missing_docs)]

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::BodyExt as _;
use hyper::Request;
use hyper::header::{COOKIE, SET_COOKIE};
use offstate_core::SessionError;
use offstate_core::{MemoryStore, Sessions};
use offstate_tower::{CookieConfig, SessionLayer};
use tower::ServiceExt as _;

/// A new value for every write, so no library can skip the save as a no-op.
static NEXT: AtomicU64 = AtomicU64::new(0);

async fn offstate_read(session: offstate_tower::Session) -> Result<String, SessionError> {
    let n: Option<u64> = session.get("n").await?;
    Ok(n.unwrap_or(0).to_string())
}

async fn offstate_write(session: offstate_tower::Session) -> Result<&'static str, SessionError> {
    session
        .insert("n", &NEXT.fetch_add(1, Ordering::Relaxed))
        .await?;
    Ok("ok")
}

async fn tower_read(session: tower_sessions::Session) -> String {
    let n: Option<u64> = session.get("n").await.unwrap();
    n.unwrap_or(0).to_string()
}

async fn tower_write(session: tower_sessions::Session) -> &'static str {
    session
        .insert("n", NEXT.fetch_add(1, Ordering::Relaxed))
        .await
        .unwrap();
    "ok"
}

fn offstate_app() -> Router {
    Router::new()
        .route("/read", get(offstate_read))
        .route("/write", post(offstate_write))
        .layer(
            SessionLayer::new(Sessions::new(MemoryStore::new()))
                .with_cookie(CookieConfig::default().with_secure(false)),
        )
}

fn tower_app() -> Router {
    Router::new()
        .route("/read", get(tower_read))
        .route("/write", post(tower_write))
        .layer(
            tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
                .with_secure(false),
        )
}

fn plain_app() -> Router {
    Router::new().route("/read", get(|| async { "0" }))
}

async fn request(app: &Router, method: &str, path: &str, cookie: Option<&str>) -> Option<String> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        builder = builder.header(COOKIE, cookie);
    }
    let response = app
        .clone()
        .oneshot(builder.body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let cookie = response
        .headers()
        .get(SET_COOKIE)
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    let _ = response.into_body().collect().await.unwrap();
    cookie
}

fn overhead(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("overhead");
    for (name, app) in [
        ("offstate", offstate_app()),
        ("tower-sessions", tower_app()),
    ] {
        let cookie = runtime
            .block_on(request(&app, "POST", "/write", None))
            .expect("the first write sets a cookie");
        group.bench_function(format!("{name}-read"), |b| {
            b.to_async(&runtime)
                .iter(|| request(&app, "GET", "/read", Some(&cookie)));
        });
        group.bench_function(format!("{name}-write"), |b| {
            b.to_async(&runtime)
                .iter(|| request(&app, "POST", "/write", Some(&cookie)));
        });
    }
    let plain = plain_app();
    group.bench_function("no-sessions", |b| {
        b.to_async(&runtime)
            .iter(|| request(&plain, "GET", "/read", None));
    });
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
