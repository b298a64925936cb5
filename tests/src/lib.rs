//! Test support for offstate: real servers on free loopback ports, and
//! stores ready to use against them.
//!
//! # Layout
//!
//! - [`fixture`]: the API tests use: `redis()`, `redis_cluster()`,
//!   `memcached()`, `memcached_cluster(n)`, `dynamodb()` give a running
//!   server and a ready store, from the environment, a container, or a
//!   local process, in that order.
//! - [`process`]: start a server process, wait for its port, stop it on
//!   drop (and from a watchdog if the test process dies).
//! - [`container`]: the same for Docker containers, driven through the
//!   `docker` CLI (labelled, removed on drop and by a watchdog, never pulled).
//! - [`images`]: which image each backend uses (`OFFSTATE_*_IMAGE`).
//! - `redis`, `memcached`, `dynamodb`: per-backend process fixtures and
//!   conformance harnesses (one feature each).
//!
//! A server that cannot be started is an error naming what to install or
//! which variable to set: tests that need it fail loudly, never skip.

pub mod container;
pub mod fixture;
pub mod images;
pub mod process;

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;

pub use process::{ServerError, ServerProcess, find_program, free_port, workspace_root};
