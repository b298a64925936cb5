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

mod coherence;
mod stats;
mod store;

pub use stats::CacheStats;
pub use store::{
    CachedStore, CachedStoreBuilder, DEFAULT_COHERENT_TTL, DEFAULT_MAX_BYTES, DEFAULT_STALENESS,
};
