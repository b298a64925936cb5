//! One fixture API for every backend: `redis()`, `redis_cluster()`,
//! `memcached()`, `dynamodb()` give a running server and a ready store, in
//! a guard that keeps the server alive and removes it on drop.
//!
//! # Where the server comes from
//!
//! In this order, unless `OFFSTATE_TEST_BACKEND` forces one:
//!
//! 1. [`Source::Environment`]: a server named by a variable
//!    (`OFFSTATE_TEST_REDIS_URL`, `OFFSTATE_TEST_REDIS_CLUSTER_URLS`,
//!    `OFFSTATE_TEST_MEMCACHED_NODES`, `OFFSTATE_TEST_DYNAMODB_ENDPOINT`);
//!    nothing is started or stopped.
//! 2. [`Source::Container`]: a Docker container, when a daemon answers and
//!    the image is there (see [`crate::images`]; images are never pulled
//!    unless `OFFSTATE_TEST_PULL=1`).
//! 3. [`Source::Process`]: a local server process (the
//!    [`crate::process`]-based fixtures).
//!
//! `OFFSTATE_TEST_BACKEND=process|container|environment` forces a source;
//! the `*_via` functions force one from code. A forced source that cannot
//! be had is an error saying why and what to install or set: tests fail,
//! they never skip.
//!
//! # Layout
//!
//! - this module: [`Source`], [`FixtureError`], the choice;
//! - [`redis`](mod@redis): [`RedisFixture`](redis::RedisFixture), standalone
//!   or cluster;
//! - [`memcached`](mod@memcached): [`MemcachedFixture`](memcached::MemcachedFixture),
//!   one or more nodes;
//! - [`dynamodb`](mod@dynamodb): [`DynamoFixture`](dynamodb::DynamoFixture), on
//!   moto.
//!
//! Every fixture dereferences to its store and implements the conformance
//! [`Harness`](offstate_core::conformance::Harness).
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use offstate_core::{SessionId, SessionStore};
//!
//! let redis = offstate_testing::fixture::redis::redis().await?;
//! let key = SessionId::generate().key();
//! assert!(redis.load(&key, offstate_core::Timestamp::now()).await?.is_none());
//! println!("{:?} server at {}", redis.source(), redis.url());
//! # Ok(()) }
//! ```

#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "memcached")]
pub mod memcached;
#[cfg(feature = "redis")]
pub mod redis;

use crate::container::{ContainerError, docker_available, image_present};
use crate::images::Image;
use crate::process::ServerError;

/// Forces where fixture servers come from: `process`, `container` or
/// `environment` (unset or `auto`: the usual order).
pub const BACKEND_ENV: &str = "OFFSTATE_TEST_BACKEND";

/// Where a fixture's server comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Source {
    /// A server named by an environment variable, run by someone else.
    Environment,
    /// A Docker container started for the fixture.
    Container,
    /// A local server process started for the fixture.
    Process,
}

impl Source {
    /// The source `OFFSTATE_TEST_BACKEND` forces, if any.
    ///
    /// # Errors
    ///
    /// [`FixtureError::BadBackend`] for a value that is not a source.
    pub fn forced() -> Result<Option<Self>, FixtureError> {
        match std::env::var(BACKEND_ENV) {
            Ok(value) => Self::parse(&value),
            Err(_) => Ok(None),
        }
    }

    /// Reads a value of `OFFSTATE_TEST_BACKEND`: `process`, `container`
    /// (or `docker`), `environment` (or `env`); `auto` or blank is none.
    ///
    /// # Errors
    ///
    /// [`FixtureError::BadBackend`] for anything else.
    pub fn parse(value: &str) -> Result<Option<Self>, FixtureError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "process" => Ok(Some(Self::Process)),
            "container" | "docker" => Ok(Some(Self::Container)),
            "environment" | "env" => Ok(Some(Self::Environment)),
            _ => Err(FixtureError::BadBackend {
                value: value.to_owned(),
            }),
        }
    }

    /// The source a fixture uses when the caller forces none: the forced
    /// one, else a server from `url_var`, else a container when Docker
    /// answers and `image` is present (or may be pulled), else a process.
    ///
    /// # Errors
    ///
    /// [`FixtureError::BadBackend`] for a bad `OFFSTATE_TEST_BACKEND`.
    pub fn choose(url_var: &str, image: &Image) -> Result<Self, FixtureError> {
        if let Some(forced) = Self::forced()? {
            return Ok(forced);
        }
        if env_value(url_var).is_some() {
            return Ok(Self::Environment);
        }
        let pull = std::env::var(crate::container::PULL_ENV).is_ok_and(|v| v == "1");
        if docker_available() && (pull || image_present(image.name())) {
            return Ok(Self::Container);
        }
        Ok(Self::Process)
    }
}

/// Why a fixture could not be set up. Its message says what to install or
/// which variable to set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// A container could not be started.
    #[error(transparent)]
    Container(#[from] ContainerError),
    /// A server process could not be started.
    #[error(transparent)]
    Process(#[from] ServerError),
    /// The environment source was forced but its variable is not set.
    #[error("{var} is not set: set it to a running server, or let the fixture start one")]
    MissingUrl {
        /// The variable.
        var: &'static str,
    },
    /// `OFFSTATE_TEST_BACKEND` has a value that is not a source.
    #[error("{BACKEND_ENV}={value:?} is not one of: process, container, environment, auto")]
    BadBackend {
        /// The value found.
        value: String,
    },
    /// The server runs but a store (or the set-up it needs) failed on it.
    #[error("cannot set up a store on {target}: {detail}")]
    Store {
        /// The server.
        target: String,
        /// What failed.
        detail: String,
    },
}

/// A variable's value, when set and not blank.
fn env_value(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

#[cfg(any(feature = "redis", feature = "memcached", feature = "dynamodb"))]
/// The variable's value, or [`FixtureError::MissingUrl`].
fn required_env(var: &'static str) -> Result<String, FixtureError> {
    env_value(var).ok_or(FixtureError::MissingUrl { var })
}

#[cfg(any(feature = "redis", feature = "memcached", feature = "dynamodb"))]
/// Runs blocking set-up (process or container start) off the async
/// workers.
async fn blocking<T, F>(work: F) -> Result<T, FixtureError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, FixtureError> + Send + 'static,
{
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => Err(FixtureError::Store {
            target: "fixture set-up".into(),
            detail: format!("the set-up task failed: {error}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::{FixtureError, Source};

    #[test]
    fn backend_values_parse() {
        assert_eq!(Source::parse("").ok(), Some(None));
        assert_eq!(Source::parse("auto").ok(), Some(None));
        assert_eq!(Source::parse(" Process ").ok(), Some(Some(Source::Process)));
        assert_eq!(
            Source::parse("container").ok(),
            Some(Some(Source::Container))
        );
        assert_eq!(Source::parse("env").ok(), Some(Some(Source::Environment)));
        match Source::parse("kubernetes") {
            Err(error @ FixtureError::BadBackend { .. }) => {
                let message = error.to_string();
                assert!(message.contains("OFFSTATE_TEST_BACKEND"), "{message}");
                assert!(message.contains("kubernetes"), "{message}");
            }
            other => panic!("expected BadBackend, got {other:?}"),
        }
    }
}
