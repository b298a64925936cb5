//! Shared pieces of the fuzz targets: a session middleware over a counting
//! in-memory store, driven one request at a time on a current-thread
//! runtime, so a target can send hostile headers through the real request
//! path and check what reached the store.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use offstate_core::{CallCounts, CountingStore, MemoryStore, Sessions};
use offstate_tower::{SessionLayer, SessionService, SigningKey};
use tower_service::Service;

/// The fixed key the signed targets use (the fuzzer cannot forge its tags).
pub const FUZZ_KEY: [u8; 32] = [0x5a; 32];

/// The one session ID signed with [`FUZZ_KEY`], in the seed corpus so that
/// the accepted path is fuzzed too. The fuzzer cannot compute a tag, so a
/// signed target may load a session only for input that carries this one.
pub const SIGNED_SEED_ID: &str =
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYX.Vq8jLp_vwWvaj4K-05Tbi-pg2g6bQWdjWQfvPE5Zh8E";

/// The header the header-transport targets read.
pub const HEADER: &str = "x-session-id";

/// A handler that reads the session (so a usable ID costs one load) and
/// never writes.
#[derive(Clone, Debug)]
pub struct ReadOnly;

impl Service<Request<String>> for ReadOnly {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<String>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<String>) -> Self::Future {
        Box::pin(async move {
            if let Some(session) = request
                .extensions()
                .get::<offstate_tower::Session>()
                .cloned()
            {
                let _ = session.get::<String>("k").await;
            }
            Ok(Response::new(String::from("ok")))
        })
    }
}

/// One middleware configuration under test.
#[derive(Debug)]
pub struct Target {
    runtime: tokio::runtime::Runtime,
    store: CountingStore<MemoryStore>,
    service: SessionService<ReadOnly>,
}

/// The transport and signing a target uses.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Header transport instead of the cookie.
    pub header: bool,
    /// Signed IDs.
    pub signed: bool,
    /// The largest value accepted.
    pub max_value_len: usize,
}

impl Target {
    /// Builds the middleware for `setup`.
    ///
    /// # Panics
    ///
    /// When the runtime or key cannot be built (never, in practice).
    #[allow(clippy::expect_used)]
    pub fn new(setup: Setup) -> Self {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("current-thread runtime");
        let store = CountingStore::new(MemoryStore::new());
        let mut layer =
            SessionLayer::new(Sessions::new(store.clone())).with_max_value_len(setup.max_value_len);
        if setup.header {
            layer = layer.with_header(HeaderName::from_static(HEADER));
        }
        if setup.signed {
            layer = layer.with_signing_key(SigningKey::new(FUZZ_KEY).expect("32-byte key"));
        }
        let service = tower_layer_apply(&layer);
        Self {
            runtime,
            store,
            service,
        }
    }

    /// Sends one request with `headers`; returns its status and the store
    /// calls it caused.
    pub fn send(&mut self, headers: HeaderMap) -> (StatusCode, CallCounts) {
        self.store.reset();
        let mut request = Request::new(String::new());
        *request.headers_mut() = headers;
        let future = self.service.call(request);
        let status = match self.runtime.block_on(future) {
            Ok(response) => response.status(),
            Err(never) => match never {},
        };
        (status, self.store.counts())
    }
}

fn tower_layer_apply(layer: &SessionLayer) -> SessionService<ReadOnly> {
    tower_layer::Layer::layer(layer, ReadOnly)
}

/// Header values from fuzz input: `\n`-separated, each kept only if HTTP
/// allows it as a header value (what a server would hand the middleware).
pub fn values(data: &[u8]) -> Vec<HeaderValue> {
    data.split(|&b| b == b'\n')
        .filter_map(|part| HeaderValue::from_bytes(part).ok())
        .collect()
}
