//! Shared test fixtures: an app with one route per handler kind, a store
//! that fails on demand, and request helpers.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::routing::{get, post};
use http::{HeaderValue, Request, Response, header};
use http_body_util::BodyExt as _;
use offstate_core::SessionError;
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{CountingStore, ManualClock, MemoryStore, Sessions};
use offstate_tower::{Session, SessionLayer};
use tower::ServiceExt as _;

/// Switches that make a store fail on demand: reads, writes, or both,
/// with a timeout or an unavailable error, for as long as they are on
/// (through [`FaultyStore::on_call`]). Real-server fault tests live with
/// the backends.
#[derive(Debug, Clone, Default)]
pub struct Outage {
    fail_reads: Arc<AtomicBool>,
    fail_writes: Arc<AtomicBool>,
    timeout: Arc<AtomicBool>,
}

impl Outage {
    pub fn fail_reads(&self, yes: bool) {
        self.fail_reads.store(yes, Ordering::SeqCst);
    }

    pub fn fail_writes(&self, yes: bool) {
        self.fail_writes.store(yes, Ordering::SeqCst);
    }

    /// Fail with `Timeout` instead of `Unavailable`.
    pub fn with_timeouts(&self, yes: bool) {
        self.timeout.store(yes, Ordering::SeqCst);
    }

    /// The fault for `call` while the switches are as they are.
    fn fault(&self, call: Call) -> Option<Fault> {
        let read = matches!(call, Call::Load | Call::ListPrincipal);
        let failing = if read {
            &self.fail_reads
        } else {
            &self.fail_writes
        };
        failing.load(Ordering::SeqCst).then(|| {
            if self.timeout.load(Ordering::SeqCst) {
                Fault::TimeoutBefore
            } else {
                Fault::Unavailable
            }
        })
    }
}

/// A counted, flaky memory store on a manual clock, and Sessions over it.
pub struct Fixture {
    pub clock: ManualClock,
    pub memory: MemoryStore,
    pub flaky: Outage,
    pub store: CountingStore<FaultyStore<MemoryStore>>,
    pub sessions: Sessions,
}

impl Fixture {
    pub fn new() -> Self {
        let clock = ManualClock::new();
        let memory = MemoryStore::new();
        let flaky = Outage::default();
        let faulty = FaultyStore::new(memory.clone());
        faulty.on_call({
            let flaky = flaky.clone();
            move |call| std::future::ready(flaky.fault(call))
        });
        let store = CountingStore::new(faulty);
        let sessions = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));
        Self {
            clock,
            memory,
            flaky,
            store,
            sessions,
        }
    }

    /// The default layer over these sessions, on the manual clock.
    pub fn layer(&self) -> SessionLayer {
        SessionLayer::new(self.sessions.clone())
    }
}

async fn untouched() -> &'static str {
    "untouched"
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

async fn big(session: Session) -> Result<&'static str, SessionError> {
    session.insert("big", &"x".repeat(2000)).await?;
    Ok("stored")
}

async fn login(session: Session) -> Result<&'static str, SessionError> {
    session.set_principal("alice").await?;
    session.cycle_id().await?;
    Ok("logged in")
}

async fn whoami(session: Session) -> Result<String, SessionError> {
    Ok(session
        .principal()
        .await?
        .unwrap_or_else(|| "nobody".into()))
}

async fn logout(session: Session) -> Result<&'static str, SessionError> {
    session.delete().await?;
    Ok("logged out")
}

async fn logout_everywhere(session: Session) -> Result<String, SessionError> {
    let n = session.revoke_principal().await?;
    Ok(format!("revoked {n}"))
}

async fn save_myself(session: Session) -> (http::StatusCode, &'static str) {
    if session
        .update("k", |n: Option<u64>| Some(n.unwrap_or(0) + 1))
        .await
        .is_err()
    {
        return (http::StatusCode::OK, "could not write; carrying on");
    }
    match session.save().await {
        Ok(()) => (http::StatusCode::OK, "saved"),
        Err(_) => (http::StatusCode::ACCEPTED, "saved later, maybe"),
    }
}

async fn optional(session: Option<Session>) -> &'static str {
    if session.is_some() { "with" } else { "without" }
}

/// Routes, one per handler kind.
pub fn routes() -> Router {
    Router::new()
        .route("/untouched", get(untouched))
        .route("/read", get(read))
        .route("/write", post(write))
        .route("/big", post(big))
        .route("/login", post(login))
        .route("/whoami", get(whoami))
        .route("/logout", post(logout))
        .route("/logout-everywhere", post(logout_everywhere))
        .route("/save-myself", post(save_myself))
        .route("/optional", get(optional))
}

/// The routes behind `layer`.
pub fn app(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

/// A request with the given `Cookie` headers.
pub fn request(method: &str, uri: &str, cookies: &[&str]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for cookie in cookies {
        builder = builder.header(header::COOKIE, *cookie);
    }
    builder.body(Body::empty()).unwrap()
}

/// A request with raw header values.
pub fn request_with(method: &str, uri: &str, headers: &[(&str, HeaderValue)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, value.clone());
    }
    builder.body(Body::empty()).unwrap()
}

pub async fn send(app: &Router, request: Request<Body>) -> Response<Body> {
    app.clone().oneshot(request).await.unwrap()
}

pub async fn body(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Every Set-Cookie header of a response.
pub fn set_cookies(response: &Response<Body>) -> Vec<String> {
    response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// The single Set-Cookie header of a response.
pub fn set_cookie(response: &Response<Body>) -> String {
    let all = set_cookies(response);
    assert_eq!(all.len(), 1, "expected one Set-Cookie, got {all:?}");
    all.into_iter().next().unwrap()
}

/// `name=value` of a Set-Cookie header, for sending back.
pub fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().trim().to_owned()
}

/// The attribute `name` of a Set-Cookie header (`Some("")` for a flag).
pub fn attribute(set_cookie: &str, name: &str) -> Option<String> {
    set_cookie.split(';').skip(1).find_map(|part| {
        let part = part.trim();
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        key.eq_ignore_ascii_case(name).then(|| value.to_owned())
    })
}

/// A writer that keeps everything a `tracing` subscriber formats.
#[derive(Clone, Default)]
pub struct Capture(pub Arc<Mutex<Vec<u8>>>);

impl Capture {
    /// What was written since the last call.
    pub fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
