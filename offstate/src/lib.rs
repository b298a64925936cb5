//! offstate: sessions and shopping carts that live off the application
//! instance, so any instance can serve any request and instances can come
//! and go without a user losing a basket.
//!
//! This crate gathers the parts behind feature flags; each part is also a
//! crate of its own.
//!
//! # Layout
//!
//! - The root: the session model, the [`SessionStore`] contract, the
//!   [`Session`] handle and the [`MemoryStore`] (from `offstate-core`).
//! - [`telemetry`]: the metrics and trace spans offstate emits, in one
//!   table.
//! - [`tower`] (feature `tower`, default): the layer and axum extractor.
//! - [`redis`], [`dynamodb`], [`memcached`] (features of those names): stores.
//! - [`cache`] (feature `cache`): the local cache in front of any store.
//! - [`conformance`] (feature `conformance`): the suite every store passes.
//! - [`connect`] (feature `connect`): store URLs to connected stores.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate::SessionError> {
//! use offstate::{MemoryStore, Sessions};
//!
//! let sessions = Sessions::new(MemoryStore::new());
//! let session = sessions.new_session();
//! session.insert("cart", &["apple"]).await?;
//! session.save().await?;
//! # Ok(()) }
//! ```

pub use offstate_core::*;

/// The Tower layer and axum extractor.
#[cfg(feature = "tower")]
pub mod tower {
    pub use offstate_tower::*;
}

/// The Redis and ElastiCache Redis store.
#[cfg(feature = "redis")]
pub mod redis {
    pub use offstate_redis::*;
}

/// The DynamoDB store.
#[cfg(feature = "dynamodb")]
pub mod dynamodb {
    pub use offstate_dynamodb::*;
}

/// The Memcached and ElastiCache Memcached store.
#[cfg(feature = "memcached")]
pub mod memcached {
    pub use offstate_memcached::*;
}

/// The local cache, coherent across instances.
#[cfg(feature = "cache")]
pub mod cache {
    pub use offstate_cache::*;
}

// Store URLs to connected stores; documented in the module itself (an
// outer doc here would make rustdoc resolve its links from the root).
#[cfg(feature = "connect")]
pub mod connect;

// The README's examples are compiled and run as doc tests, so it cannot go stale.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
