//! Memcached and ElastiCache Memcached store for offstate: sessions kept in
//! a memcached cluster, so any app instance can serve any request.
//!
//! Each session is one item, `<prefix><session key>`, holding a compact
//! versioned [binary encoding](encoding) of the record. Keys are spread over
//! the configured nodes by consistent hashing, as an ElastiCache Memcached
//! cluster expects from its clients. Every write is conditional on
//! memcached's CAS token, so concurrent requests never lose an update and a
//! deleted session never comes back.
//!
//! # Layout
//!
//! - [`MemcachedConfig`] (`config`): nodes, key prefix, timeouts, item size.
//! - [`MemcachedStore`] (`store`): the [`SessionStore`](offstate_core::SessionStore)
//!   implementation: `add` to create, `gets` + `cas` to save and touch,
//!   `delete`, and revocation by [per-principal epochs](#revocation).
//! - [`encoding`]: the blob format, with a decoder that never panics.
//! - `ring`: ketama-style consistent hashing over the nodes.
//! - `expiry`: memcached's `exptime` from the record's deadline.
//! - `epoch`: the per-principal revocation counters.
//! - [`discover_nodes`] (`discovery`): ElastiCache auto-discovery of the node
//!   list from a configuration endpoint (`config get cluster`).
//! - `pool` and `protocol`: a tiny per-node connection pool and the subset
//!   of the memcached text protocol the store speaks.
//!
//! # Example
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use offstate_core::Sessions;
//! use offstate_memcached::{MemcachedConfig, MemcachedStore};
//!
//! let config = MemcachedConfig::new([
//!     "sessions.abc123.0001.use1.cache.amazonaws.com:11211",
//!     "sessions.abc123.0002.use1.cache.amazonaws.com:11211",
//! ])
//! .with_command_timeout(Duration::from_millis(200));
//! let sessions = Sessions::new(MemcachedStore::new(config)?);
//!
//! let session = sessions.new_session();
//! session.update("cart", |cart: Option<Vec<String>>| {
//!     let mut cart = cart.unwrap_or_default();
//!     cart.push("apple".into());
//!     Some(cart)
//! }).await?;
//! session.save().await?;
//! # Ok(()) }
//! ```
//!
//! # Why its own protocol client
//!
//! The crates.io candidates were checked: `async-memcached` 0.9 (and
//! `deadpool-memcached`, which pools it) has `get`/`set`/`add`/`delete`/
//! `incr` but no `gets`/`cas` and no `touch` in either its text or meta
//! protocol API, so it cannot make a write conditional; `memcache-async`
//! 0.10 has `gets`/`cas` but no `touch`, no pooling and no timeouts, on
//! futures-io streams; the `memcache` crate is blocking. The store needs
//! five commands (`gets`, `add`, `cas`, `delete`, `incr`, plus
//! `config get cluster` for discovery), a timeout on every request, and the
//! guarantee that a connection which failed or was cancelled mid-reply is
//! never reused, so it speaks that subset of the text protocol itself over
//! tokio `TcpStream`s, with a small pool per node (`pool`).
//!
//! # Operations
//!
//! - **load**: `gets`; the record must decode, be within its deadlines by the
//!   store's clock, and (with a principal) match its principal's epoch.
//! - **create**: `add`. If something is there that has already ended by the
//!   store's clock, it is replaced with `cas` on exactly that version.
//! - **save**: `gets` → check live and version (else `Conflict` with the
//!   current record, or `Gone`) → apply the change → `cas`. A lost `cas`
//!   race is re-read: a new version is a `Conflict`, a vanished item `Gone`.
//! - **touch**: memcached's `touch` only moves the item's exptime, but the
//!   idle deadline lives inside the blob and reads check it, so a touch is
//!   `gets` + `cas` of the same record (same version and data) with the new
//!   idle deadline, only while it is live.
//! - **delete**: `delete`; it returns whether an item was there, which may
//!   include one already ended by the store's clock but not yet dropped.
//!
//! # Expiry
//!
//! The item's exptime comes from the record's earliest deadline, rounded up
//! to whole seconds against the real clock plus one second of slack for
//! memcached's coarse clock: relative seconds up to 30 days, an absolute Unix
//! time beyond, 0 (no expiry) without a deadline. Memcached may keep an item
//! up to about two seconds past its deadline, never drop it before; every
//! read checks the deadline with the store's clock anyway.
//!
//! # Size
//!
//! A record whose item would exceed [`MemcachedConfig::with_max_item_bytes`]
//! (default 1 MiB, memcached's `-I` default) is refused with
//! `StoreError::TooLarge` before anything is sent; if the server's limit is
//! smaller than configured, its refusal gives the same error. Either way the
//! stored session is intact.
//!
//! # Revocation
//!
//! Memcached cannot list keys, so
//! [`list_principal`](offstate_core::SessionStore::list_principal) is
//! `Unsupported` and revocation works through an epoch key per principal,
//! `<prefix>epoch:<base64url(sha256(principal))>`. A session records its
//! principal's epoch when the principal is attached; it is live only while
//! that epoch is current. [`revoke_principal`](offstate_core::SessionStore::revoke_principal)
//! bumps the epoch with `incr` and returns 0. Epoch keys never expire and
//! start at a random value, so an evicted or lost epoch key logs its
//! principal out everywhere rather than reviving revoked sessions. The cost:
//! one more `get` per load of a session that has a principal (the principal
//! is inside the blob, so it cannot share a multi-get), and about 100 bytes
//! per principal.
//!
//! # Node loss
//!
//! Each node has its own pool; a key on a dead or silent node fails with
//! `StoreError::Unavailable` or `StoreError::Timeout` within the configured
//! timeouts, while keys on the other nodes keep working. The ring is fixed by
//! the configuration: keys of a lost node are not remapped (that would
//! silently log users out), they fail until the node is back or replaced.

mod cluster;
mod config;
mod discovery;
// The blob codec is internal; the fuzz targets reach it through the
// `fuzzing` feature (no semver promise).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod encoding;
#[cfg(not(feature = "fuzzing"))]
#[allow(unreachable_pub, dead_code)] // public to the fuzz targets only
mod encoding;
mod epoch;
mod expiry;
mod pool;
mod protocol;
mod ring;
mod store;

pub use config::{ConfigError, DEFAULT_KEY_PREFIX, DEFAULT_MAX_ITEM_BYTES, MemcachedConfig};
pub use discovery::{DiscoveryError, discover_nodes};
pub use store::MemcachedStore;
