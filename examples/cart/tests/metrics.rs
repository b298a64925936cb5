//! The cart's Prometheus endpoint after a scripted flow on two instances
//! sharing one store: add, a read before and past the touch threshold,
//! concurrent adds (one replayed, one giving up), login, the old cookie,
//! logout everywhere, logout, a forged cookie, and a store outage on a
//! fail-closed and a fail-open instance. Every documented metric is
//! scraped over HTTP with the counts the flow implies.
//!
//! The recorder is process-wide, so this file holds one test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use offstate_core::telemetry;
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{ManualClock, MemoryStore, OutagePolicy, Sessions};
use offstate_example_cart::{AppConfig, app, prometheus};
use tower::ServiceExt as _;

async fn call(router: &Router, request: Request<Body>) -> Response<Body> {
    router.clone().oneshot(request).await.unwrap()
}

fn get(cookie: &str) -> Request<Body> {
    Request::get("/")
        .header(header::COOKIE, cookie)
        .body(Body::empty())
        .unwrap()
}

fn post(uri: &str, form: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::from(form.to_owned())).unwrap()
}

/// `name=value` of the response's Set-Cookie.
fn cookie(response: &Response<Body>) -> String {
    let value = response.headers()[header::SET_COOKIE].to_str().unwrap();
    value.split(';').next().unwrap().to_owned()
}

/// `GET /metrics` over a real connection.
async fn scrape(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_owned()
    })
    .await
    .unwrap()
}

/// The samples of a text exposition: (name, labels) to value.
struct Exposition(Vec<(String, BTreeMap<String, String>, f64)>);

impl Exposition {
    fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap();
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            samples.push((name.to_owned(), labels, value.parse().unwrap()));
        }
        Self(samples)
    }

    /// The value of the series `name` whose labels include `labels` (0
    /// when absent, as Prometheus would read a counter never incremented).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .0
            .iter()
            .filter(|(n, have, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches several series");
        found.first().copied().unwrap_or(0.0)
    }

    fn store(&self, operation: &str, outcome: &str) -> f64 {
        self.value(
            telemetry::STORE_CALLS,
            &[
                ("backend", "memory"),
                ("operation", operation),
                ("outcome", outcome),
            ],
        )
    }

    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(name, _, _)| name.as_str())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_the_scripted_flow() {
    let handle = prometheus::install().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    tokio::spawn(prometheus::serve(listener, handle));

    // Two instances on one store: `a` with the defaults, `b` giving up
    // after one conflict and failing open.
    let clock = ManualClock::new();
    let store = FaultyStore::new(MemoryStore::new());
    let on = |sessions: Sessions| sessions.with_clock(Arc::new(clock.clone()));
    let a = app(on(Sessions::new(store.clone())), AppConfig::new("a"));
    let b = app(
        on(Sessions::new(store.clone()))
            .with_max_attempts(1)
            .with_outage_policy(OutagePolicy::FailOpen),
        AppConfig::new("b"),
    );

    // Add on a, add on b.
    let response = call(&a, post("/cart/add", "item=apple", None)).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let c1 = cookie(&response);
    let response = call(&b, post("/cart/add", "item=bread", Some(&c1))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // Look: the touch is coalesced; ten minutes later, it is written.
    assert_eq!(call(&a, get(&c1)).await.status(), StatusCode::OK);
    clock.advance(Duration::from_secs(600));
    assert_eq!(call(&a, get(&c1)).await.status(), StatusCode::OK);

    // Concurrent adds: a's save is held while b's lands; a replays.
    let gate = store.gate(Call::Save);
    let held = tokio::spawn({
        let (a, c1) = (a.clone(), c1.clone());
        async move { call(&a, post("/cart/add", "item=apple", Some(&c1))).await }
    });
    gate.reached().await;
    let response = call(&b, post("/cart/add", "item=pear", Some(&c1))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    gate.open();
    assert_eq!(held.await.unwrap().status(), StatusCode::SEE_OTHER);
    // Again the other way round: b may not replay, and says so (409).
    let gate = store.gate(Call::Save);
    let held = tokio::spawn({
        let (b, c1) = (b.clone(), c1.clone());
        async move { call(&b, post("/cart/add", "item=tea", Some(&c1))).await }
    });
    gate.reached().await;
    let response = call(&a, post("/cart/add", "item=pear", Some(&c1))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    gate.open();
    assert_eq!(held.await.unwrap().status(), StatusCode::CONFLICT);

    // Log in: a new ID; the old one now reads as expired.
    let response = call(&a, post("/login", "user=alice", Some(&c1))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let c2 = cookie(&response);
    assert_ne!(c2, c1);
    assert_eq!(call(&a, get(&c1)).await.status(), StatusCode::OK);
    // A second device logs in, and logs out everywhere: both sessions end.
    let response = call(&b, post("/login", "user=alice", None)).await;
    let c3 = cookie(&response);
    let response = call(&b, post("/logout-everywhere", "", Some(&c3))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // A shopper logs out.
    let response = call(&a, post("/cart/add", "item=tea", None)).await;
    let c4 = cookie(&response);
    let response = call(&a, post("/logout", "", Some(&c4))).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    // A made-up cookie: anonymous, and counted.
    let response = call(&a, get("__Host-offstate=made-up")).await;
    assert_eq!(response.status(), StatusCode::OK);

    // The store goes away: a fails closed (503), b fails open (200).
    let response = call(&a, post("/cart/add", "item=apple", None)).await;
    let c5 = cookie(&response);
    store.inject(Call::Load, Fault::Unavailable);
    let response = call(&a, get(&c5)).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    store.inject(Call::Load, Fault::Unavailable);
    let response = call(&b, get(&c5)).await;
    assert_eq!(response.status(), StatusCode::OK);

    let text = scrape(metrics_addr).await;
    let m = Exposition::parse(&text);

    // Every core metric of the table is there (histograms as _count).
    for name in telemetry::CORE_METRICS {
        assert!(
            m.names()
                .any(|n| n == *name || n == format!("{name}_count")),
            "{name} missing from the scrape:\n{text}"
        );
    }
    // Sessions.
    assert_eq!(m.value(telemetry::SESSIONS_CREATED, &[]), 4.0);
    assert_eq!(m.value(telemetry::SESSIONS_ROTATED, &[]), 1.0);
    assert_eq!(m.value(telemetry::SESSIONS_REVOKED, &[]), 2.0);
    assert_eq!(m.value(telemetry::SESSIONS_DELETED, &[]), 1.0);
    assert_eq!(m.value(telemetry::SESSIONS_EXPIRED_ON_READ, &[]), 1.0);
    // Touches.
    let touches = |r| m.value(telemetry::SESSION_TOUCHES, &[("result", r)]);
    assert_eq!((touches("skipped"), touches("written")), (1.0, 1.0));
    // Conflicts and retries: five saves landed or gave up, two conflicted.
    let write = [("op", "write")];
    assert_eq!(m.value(telemetry::SESSION_CONFLICTS, &write), 2.0);
    assert_eq!(m.value(telemetry::SESSION_RETRIES_EXHAUSTED, &write), 1.0);
    let retries = format!("{}_count", telemetry::SESSION_SAVE_RETRIES);
    let retries_sum = format!("{}_sum", telemetry::SESSION_SAVE_RETRIES);
    assert_eq!(m.value(&retries, &write), 5.0);
    assert_eq!(m.value(&retries_sum, &write), 2.0);
    assert_eq!(m.value(&retries, &[("op", "rotate")]), 1.0);
    // Record sizes: one sample per record written.
    let bytes = format!("{}_count", telemetry::SESSION_RECORD_BYTES);
    assert_eq!(m.value(&bytes, &[("op", "create")]), 4.0);
    assert_eq!(m.value(&bytes, &[("op", "write")]), 4.0);
    assert_eq!(m.value(&bytes, &[("op", "rotate")]), 1.0);
    // Store calls.
    assert_eq!(m.store("create", "ok"), 5.0); // 4 sessions + the login's new ID
    assert_eq!(m.store("save", "ok"), 5.0); // 4 writes + the login retiring the old ID
    assert_eq!(m.store("save", "conflict"), 2.0);
    assert_eq!(m.store("touch", "ok"), 1.0);
    assert_eq!(m.store("delete_if_version", "ok"), 1.0);
    assert_eq!(m.store("revoke_principal", "ok"), 1.0);
    assert_eq!(m.store("delete", "ok"), 1.0);
    assert_eq!(m.store("delete", "gone"), 1.0); // logout everywhere's own, already revoked
    assert_eq!(m.store("load", "ok"), 9.0);
    assert_eq!(m.store("load", "gone"), 1.0);
    assert_eq!(m.store("load", "unavailable"), 2.0);
    let latency = format!("{}_count", telemetry::STORE_CALL_DURATION);
    let loads = [("backend", "memory"), ("operation", "load")];
    assert_eq!(m.value(&latency, &loads), 12.0);
    // Outages and refused input.
    let decision = |d| m.value(telemetry::OUTAGE_DECISIONS, &[("decision", d)]);
    assert_eq!((decision("fail_closed"), decision("fail_open")), (1.0, 1.0));
    assert_eq!(
        m.value(telemetry::REFUSED_INPUT, &[("reason", "malformed")]),
        1.0
    );
    // No label value is an ID or a key (they are 32 characters and more).
    for (name, labels, _) in &m.0 {
        for value in labels.values() {
            assert!(value.len() < 24, "{name} has label value {value}");
        }
    }
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One plain HTTP/1.1 request; the response's head and body.
fn http(addr: SocketAddr, request: &str) -> (String, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

#[test]
fn the_binary_serves_metrics_on_the_metrics_addr() {
    let app_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut child = Child(
        std::process::Command::new(env!("CARGO_BIN_EXE_offstate-example-cart"))
            .args(["--listen", &app_addr.to_string(), "--store", "memory://"])
            .env("OFFSTATE_METRICS_ADDR", metrics_addr.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready when the app port answers (the metrics port is bound first).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(app_addr).is_err() {
        assert!(child.0.try_wait().unwrap().is_none(), "the cart exited");
        assert!(
            std::time::Instant::now() < deadline,
            "the cart never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let form = "item=apple";
    let (head, _) = http(
        app_addr,
        &format!(
            "POST /cart/add HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
            form.len()
        ),
    );
    assert!(head.starts_with("HTTP/1.1 303"), "{head}");
    let (head, body) = http(
        metrics_addr,
        "GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let m = Exposition::parse(&body);
    assert_eq!(m.value(telemetry::SESSIONS_CREATED, &[]), 1.0, "{body}");
    assert_eq!(m.store("create", "ok"), 1.0);
}
