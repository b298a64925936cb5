//! The core of offstate: sessions that live outside the application
//! instance, so any instance can serve any request and instances can come
//! and go without a user losing a basket.
//!
//! # Layout
//!
//! - [`id`](SessionId): session IDs and the hashed [`SessionKey`]s stores use.
//! - [`Record`], [`Version`], [`Deadlines`], [`Timestamp`]: the stored form.
//! - [`ExpiryPolicy`] and [`Clock`]: idle and absolute expiry, touch threshold.
//! - [`SessionStore`]: the versioned, conditional store contract.
//! - [`Sessions`] and [`Session`]: the handle apps use, with typed values,
//!   `update` closures that survive conflicts, ID rotation and revocation.
//! - [`MemoryStore`]: the embedded default.
//! - [`InvalidationChannel`]: how caches on different instances stay coherent.
//! - [`CountingStore`]: counts store calls, for tests and benchmarks.
//! - [`conformance`] (feature `conformance`): the suite every store passes;
//!   [`testing`] (same feature): a store wrapper that injects faults and
//!   holds calls at gates, for deterministic race and outage tests.
//! - [`middleware`]: the protocol an HTTP middleware follows (open, finish).
//! - [`telemetry`]: the metrics and trace spans offstate emits, in one table.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
//! use offstate_core::{MemoryStore, Sessions};
//!
//! let sessions = Sessions::new(MemoryStore::new());
//! let session = sessions.new_session();
//! session.update("cart", |cart: Option<Vec<String>>| {
//!     let mut cart = cart.unwrap_or_default();
//!     cart.push("apple".into());
//!     Some(cart)
//! }).await?;
//! session.save().await?; // one conditional write
//!
//! let id = session.id().expect("saved");
//! let again = sessions.load(&id).await?.expect("live");
//! assert_eq!(again.get::<Vec<String>>("cart").await?, Some(vec!["apple".into()]));
//! # Ok(()) }
//! ```

mod clock;
mod codec;
mod counting;
mod erased;
mod error;
mod expiry;
mod id;
mod invalidation;
mod memory;
mod record;
mod session;
mod store;

#[cfg(feature = "axum")]
mod extract;
pub mod middleware;
pub mod telemetry;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "conformance")]
pub mod testing;

pub use clock::{Clock, ManualClock, SystemClock, system_clock};
pub use codec::{Codec, Json};
pub use counting::{CallCounts, CountingStore};
pub use error::{BoxError, LimitError, SessionError, StoreError};
pub use expiry::ExpiryPolicy;
#[cfg(feature = "axum")]
pub use extract::MissingSessionLayer;
pub use id::{
    IdError, KeyHasher, KeyHashing, KeyPrefix, MAX_KEY_PREFIX_LEN, SESSION_ID_LEN, SessionId,
    SessionKey,
};
pub use invalidation::{
    CachedCopy, ChannelEvent, Invalidation, InvalidationChannel, LocalChannel,
    MalformedInvalidation,
};
pub use memory::MemoryStore;
pub use record::{Deadlines, RESERVED_KEY_PREFIX, Record, Timestamp, Version};
pub use session::{Limits, OutagePolicy, Session, Sessions, WritePolicy};
pub use store::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, PrincipalChange, SaveOutcome, SessionStore,
    TouchOutcome,
};
