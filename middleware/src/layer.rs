//! `SessionLayer`: the configuration, applied to a service with
//! [`tower_layer::Layer`].

use std::sync::Arc;

use http::HeaderName;
use offstate_core::{SessionStore, Sessions};
use tower_layer::Layer;

use crate::carrier::Carrier;
use crate::config::{CookieConfig, DEFAULT_MAX_VALUE_LEN, Transport};
use crate::service::SessionService;
use crate::signing::SigningKey;

/// What every request of one layer shares.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    pub(crate) sessions: Sessions,
    pub(crate) carrier: Carrier,
}

/// Adds a lazy [`Session`](offstate_core::Session) to every request and,
/// after the handler, saves it and tells the client about new, rotated or
/// ended sessions.
///
/// ```
/// use offstate_core::{MemoryStore, Sessions};
/// use offstate_tower::{CookieConfig, SessionLayer};
///
/// let layer = SessionLayer::new(Sessions::new(MemoryStore::new()))
///     .with_cookie(CookieConfig::default().with_name("sid"));
/// # drop(layer);
/// ```
#[derive(Debug, Clone)]
pub struct SessionLayer {
    shared: Arc<Shared>,
}

impl SessionLayer {
    /// A layer handing out sessions from `sessions`, with the default
    /// cookie (see [`CookieConfig`]).
    #[must_use]
    pub fn new(sessions: Sessions) -> Self {
        Self {
            shared: Arc::new(Shared {
                sessions,
                carrier: Carrier {
                    transport: Transport::default(),
                    signing: None,
                    max_value_len: DEFAULT_MAX_VALUE_LEN,
                },
            }),
        }
    }

    /// A layer over `store` with default session settings.
    #[must_use]
    pub fn from_store(store: impl SessionStore) -> Self {
        Self::new(Sessions::new(store))
    }

    fn shared_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.shared)
    }

    /// Carries the ID in a cookie with these attributes (the default).
    #[must_use]
    pub fn with_cookie(mut self, cookie: CookieConfig) -> Self {
        self.shared_mut().carrier.transport = Transport::Cookie(cookie);
        self
    }

    /// Carries the ID in the request header `name` (for APIs), and sends
    /// new and rotated IDs back in the same response header. An empty
    /// response header value means the session ended.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName) -> Self {
        self.shared_mut().carrier.transport = Transport::Header(name);
        self
    }

    /// Sets the transport.
    #[must_use]
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.shared_mut().carrier.transport = transport;
        self
    }

    /// Signs IDs with `key`: the client gets `<id>.<tag>`, and an ID whose
    /// tag does not verify is treated as no session, without a store call.
    #[must_use]
    pub fn with_signing_key(mut self, key: SigningKey) -> Self {
        self.shared_mut().carrier.signing = Some(key);
        self
    }

    /// Sets the longest session cookie or header value accepted (default
    /// 4096 bytes); longer ones are answered with 431.
    #[must_use]
    pub fn with_max_value_len(mut self, bytes: usize) -> Self {
        self.shared_mut().carrier.max_value_len = bytes;
        self
    }

    /// The sessions this layer hands out, for work outside requests
    /// (revoking a user's sessions from an admin task, for example).
    #[must_use]
    pub fn sessions(&self) -> &Sessions {
        &self.shared.sessions
    }

    /// The transport.
    #[must_use]
    pub fn transport(&self) -> &Transport {
        &self.shared.carrier.transport
    }
}

impl<S> Layer<S> for SessionLayer {
    type Service = SessionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SessionService::from_shared(inner, Arc::clone(&self.shared))
    }
}
