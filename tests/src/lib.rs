//! Test support for offstate: real Redis, memcached and DynamoDB-compatible
//! servers, from the environment, Docker containers (through
//! testcontainers) or local processes, each with a store ready to use.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use offstate_core::{SessionId, SessionStore};
//!
//! let redis = offstate_testing::redis().await?;
//! assert!(redis.load(&SessionId::generate().key(), offstate_core::Timestamp::now()).await?.is_none());
//! println!("{:?} server at {}", redis.source(), redis.url());
//! # Ok(()) }
//! ```
//!
//! One fixture per backend, each a builder to `.await`: [`redis()`] and
//! [`redis_cluster()`] (`.with_replicas(n)`, `.with_password(..)`,
//! `.with_tls()`, ...), [`memcached()`] and [`memcached_cluster(n)`](memcached_cluster()),
//! [`dynamodb()`]. Each gives one guard type ([`Redis`], [`Memcached`],
//! [`DynamoDb`]) that dereferences to its store, implements the
//! conformance [`Harness`](offstate_core::conformance::Harness), gives each
//! server as a [`Node`](node::Node) to pause, kill, restart or cut off, and
//! stops what it started on drop. `.via(Source::Container)` forces a
//! source; `.shared()` shares servers between the tests of a binary.
//!
//! # Layout
//!
//! - [`source`]: where servers come from ([`Source`]), [`FixtureError`];
//! - [`node`]: one server, wherever it runs, and the faults tests make;
//! - [`process`]: server processes on free loopback ports, stopped on drop
//!   and by a watchdog if the test process dies;
//! - [`container`]: containers and networks through testcontainers,
//!   labelled, removed on drop, never pulled unless asked;
//! - [`images`]: which image each backend uses (`OFFSTATE_*_IMAGE`);
//! - [`history`]: the randomized history checker (clients, faults, and
//!   the invariants of login, logout and revocation), for any backend;
//! - [`mod@redis`], [`mod@memcached`], [`mod@dynamodb`]: the fixtures (one
//!   feature each).
//!
//! A server that cannot be started is an error naming what to install or
//! which variable to set: tests that need it fail loudly, never skip.

pub mod container;
pub mod history;
pub mod images;
pub mod node;
pub mod process;
pub mod source;
#[cfg(feature = "redis")]
mod tls;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;

#[cfg(feature = "dynamodb")]
pub use dynamodb::{DynamoDb, dynamodb};
#[cfg(feature = "memcached")]
pub use memcached::{Memcached, memcached, memcached_cluster};
pub use process::{ServerError, ServerProcess, find_program, free_port, workspace_root};
#[cfg(feature = "redis")]
pub use redis::{Redis, redis, redis_cluster};
pub use source::{FixtureError, Source};
