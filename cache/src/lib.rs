//! A local cache for offstate sessions, on moka, that is safe when a load
//! balancer sends each request to any instance.
//!
//! [`CachedStore`] wraps any [`SessionStore`](offstate_core::SessionStore)
//! and is one itself, so it composes with every backend and with the
//! middleware. Hot sessions are served from memory; writes go to the
//! backend first; peers are kept coherent by an
//! [`InvalidationChannel`](offstate_core::InvalidationChannel) (Redis
//! pub/sub in offstate-redis), or, without one, by a staleness bound.
//!
//! # Layout
//!
//! - `store`: [`CachedStore`] and its builder: the read and write paths.
//! - `coherence`: the listener that evicts on peers' invalidations and
//!   falls back to bounded staleness while the channel is down.
//! - `stats`: [`CacheStats`], also exported through the `metrics` facade
//!   as `offstate_cache_*_total` counters.
//!
//! # Modes, and what a logout on one instance means for the others
//!
//! A logout is a `delete` of the session (or, for "log out everywhere",
//! `revoke_principal`). On the instance that does it, the cache entry goes
//! at once, before the backend is asked. On the other instances:
//!
//! - **Coherent mode** (a channel is given and live): the instance that
//!   logged out publishes an invalidation after the backend write, off the
//!   request path; every other instance evicts the session when the message
//!   arrives, and from then on never serves it (a load still in flight
//!   when the message lands does not refill the cache). On loopback Redis
//!   the message arrives in about a millisecond. Until it arrives, a peer
//!   may still serve the session from its cache. If the channel is lost
//!   (the Redis channel notices a dead server at once and a paused or
//!   partitioned one within its heartbeat interval plus timeout, about 2 s
//!   by default), every instance empties its cache and runs in bounded mode
//!   until the channel is back, so a missed logout is served for at most
//!   that detection time plus the staleness bound.
//! - **Bounded mode** (no channel, or while it is down): a peer may serve a
//!   logged-out session for up to the staleness bound
//!   ([`DEFAULT_STALENESS`], 1 s; its doc says why 1 s), never longer:
//!   after it the peer asks the backend, which says the session is gone.
//!
//! In both modes an entry never outlives the session's own deadline (an
//! expired session is never served), and writes are never lost: they are
//! conditional on the version, so a write based on a stale cached record
//! meets a conflict and the [`Session`](offstate_core::Session) handle
//! retries. A session changed behind the cache's back (not through a
//! `CachedStore` on the same channel) is seen when its entry ends.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
//! use offstate_cache::CachedStore;
//! use offstate_core::{LocalChannel, MemoryStore, Sessions};
//!
//! // In production the channel is offstate_redis's pub/sub channel and the
//! // inner store is a backend shared by every instance.
//! let backend = MemoryStore::new();
//! let channel = LocalChannel::new();
//! let sessions = Sessions::new(
//!     CachedStore::builder(backend).with_channel(channel).build(),
//! );
//! let session = sessions.new_session();
//! session.insert("cart", &["apple"]).await?;
//! session.save().await?;
//! # Ok(()) }
//! ```
//!
//! With Redis for both the sessions and the channel (the channel works as
//! well in front of DynamoDB or memcached, given a Redis URL):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use offstate_cache::CachedStore;
//! use offstate_core::Sessions;
//! use offstate_redis::{RedisConfig, RedisInvalidationChannel, RedisStore};
//!
//! let config = RedisConfig::new("rediss://my-cache.example.com:6379");
//! let store = RedisStore::connect(config.clone()).await?;
//! // Publishes through the store's pool; subscribes on a connection of its own.
//! let channel = RedisInvalidationChannel::from_connection(store.connection().clone(), &config)?;
//! let sessions = Sessions::new(CachedStore::builder(store).with_channel(channel).build());
//! # let _ = sessions;
//! # Ok(()) }
//! ```

mod coherence;
#[cfg(feature = "conformance")]
pub mod conformance;
mod shared;
mod stats;
mod store;

pub use stats::CacheStats;
pub use store::{
    CachedStore, CachedStoreBuilder, DEFAULT_COHERENT_TTL, DEFAULT_MAX_BYTES, DEFAULT_STALENESS,
};
