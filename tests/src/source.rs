//! Where a fixture's servers come from, why a fixture could not be set up,
//! and servers shared by the fixtures that ask for the same ones.
//!
//! # Where the servers come from
//!
//! In this order, unless `OFFSTATE_TEST_BACKEND` (or the builder's `via`)
//! forces one:
//!
//! 1. [`Source::Environment`]: servers named by a variable
//!    (`OFFSTATE_TEST_REDIS_URL`, `OFFSTATE_TEST_REDIS_CLUSTER_URLS`,
//!    `OFFSTATE_TEST_MEMCACHED_NODES`, `OFFSTATE_TEST_DYNAMODB_ENDPOINT`);
//!    nothing is started or stopped.
//! 2. [`Source::Container`]: Docker containers through testcontainers, when
//!    a daemon answers and the image is there (see [`crate::images`];
//!    images are never pulled unless `OFFSTATE_TEST_PULL=1`).
//! 3. [`Source::Process`]: local server processes.
//!
//! A forced source that cannot be had is an error saying why and what to
//! install or set: tests fail, they never skip.

use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::container::{ContainerError, Reach, docker_available, image_present, pull_allowed};
use crate::images::Image;
use crate::process::ServerError;

/// Forces where fixture servers come from: `process`, `container` or
/// `environment` (unset or `auto`: the usual order).
pub const BACKEND_ENV: &str = "OFFSTATE_TEST_BACKEND";

/// Where a fixture's servers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Source {
    /// Servers named by an environment variable, run by someone else.
    Environment,
    /// Docker containers started for the fixture.
    Container,
    /// Local server processes started for the fixture.
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

    /// Reads a value of `OFFSTATE_TEST_BACKEND`: `process`, `container`,
    /// `environment` (or `env`); `auto` or blank is none.
    ///
    /// # Errors
    ///
    /// [`FixtureError::BadBackend`] for anything else.
    pub fn parse(value: &str) -> Result<Option<Self>, FixtureError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(None),
            "process" => Ok(Some(Self::Process)),
            "container" => Ok(Some(Self::Container)),
            "environment" | "env" => Ok(Some(Self::Environment)),
            _ => Err(FixtureError::BadBackend {
                value: value.to_owned(),
            }),
        }
    }

    /// The source of a fixture that forces none: the forced one, else the
    /// servers in `url_var`, else containers when Docker answers and
    /// `image` is present (or may be pulled), else processes.
    ///
    /// # Errors
    ///
    /// [`FixtureError::BadBackend`] for a bad `OFFSTATE_TEST_BACKEND`.
    pub async fn choose(url_var: &str, image: &Image) -> Result<Self, FixtureError> {
        if let Some(forced) = Self::forced()? {
            return Ok(forced);
        }
        if env_value(url_var).is_some() {
            return Ok(Self::Environment);
        }
        if docker_available().await && (pull_allowed() || image_present(image.name()).await) {
            return Ok(Self::Container);
        }
        Ok(Self::Process)
    }
}

/// Why a fixture could not be set up, or a fault not be made. Its message
/// says what to install or which variable to set.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FixtureError {
    /// A container could not be started or changed.
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
    /// A server started but did not answer in time.
    #[error("{what} at {address} did not answer within {waited:?}; its log:\n{log}")]
    NotReady {
        /// The server.
        what: String,
        /// Where it was asked.
        address: String,
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// The servers run but a store (or the set-up it needs) failed on them.
    #[error("cannot set up {what} on {target}: {source}")]
    Store {
        /// What was being set up.
        what: &'static str,
        /// The servers.
        target: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The fault or change asked for cannot be made on servers from this
    /// source (a server from the environment cannot be paused, say).
    #[error("cannot {what} a server from {from:?}")]
    Unsupported {
        /// What was asked.
        what: &'static str,
        /// Where the server comes from.
        from: Source,
    },
}

impl FixtureError {
    /// A [`FixtureError::Store`].
    pub(crate) fn store(
        what: &'static str,
        target: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Store {
            what,
            target: target.into(),
            source: source.into(),
        }
    }
}

/// A variable's value, when set and not blank.
pub(crate) fn env_value(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

/// The variable's value, or [`FixtureError::MissingUrl`].
pub(crate) fn required_env(var: &'static str) -> Result<String, FixtureError> {
    env_value(var).ok_or(FixtureError::MissingUrl { var })
}

/// The entries of a comma-separated variable.
pub(crate) fn env_list(var: &'static str) -> Result<Vec<String>, FixtureError> {
    Ok(required_env(var)?
        .split(',')
        .map(|entry| entry.trim().to_owned())
        .filter(|entry| !entry.is_empty())
        .collect())
}

/// What every fixture builder takes: a forced source, a test network to
/// run its containers on, and whether its servers are shared.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub(crate) struct Options {
    pub(crate) source: Option<Source>,
    pub(crate) network: Option<String>,
    pub(crate) shared: bool,
}

impl Options {
    /// How the test process reaches a container of this fixture.
    pub(crate) fn reach(&self) -> Reach {
        match &self.network {
            Some(network) => Reach::Network(network.clone()),
            None => Reach::Published,
        }
    }
}

/// The options and `.await` of a fixture builder (a struct with an
/// `options: Options` field and an `async fn start(self)`).
macro_rules! fixture_builder {
    ($builder:ty => $fixture:ty) => {
        impl $builder {
            /// Takes the servers from `source`, whatever the environment
            /// says.
            pub fn via(mut self, source: $crate::Source) -> Self {
                self.options.source = Some(source);
                self
            }

            /// Runs the servers in containers on `network`, reached at
            /// their addresses there, so that
            /// [`Node::disconnect`](crate::node::Node::disconnect) cuts
            /// them off.
            pub fn on_network(mut self, network: &$crate::container::Network) -> Self {
                self.options.network = Some(network.name().to_owned());
                self.options.source = Some($crate::Source::Container);
                self
            }

            /// Shares the servers with the fixtures of this test binary
            /// that ask for the same ones, while any of them lives (each
            /// fixture still gets its own store). For suites of many short
            /// tests; never make faults on shared servers.
            pub fn shared(mut self) -> Self {
                self.options.shared = true;
                self
            }
        }

        impl std::future::IntoFuture for $builder {
            type Output = Result<$fixture, $crate::FixtureError>;
            type IntoFuture =
                std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

            fn into_future(self) -> Self::IntoFuture {
                Box::pin(self.start())
            }
        }
    };
}
#[cfg(any(feature = "redis", feature = "memcached", feature = "dynamodb"))]
pub(crate) use fixture_builder;

/// Servers that fixtures asking for the same ones (the same options) share
/// while any of those fixtures lives; the last one to go removes them.
/// Nothing is kept in a static beyond that: a static is never dropped, and
/// its containers would outlive the test run.
#[derive(Debug)]
pub(crate) struct Shared<T> {
    servers: tokio::sync::Mutex<Vec<(String, Weak<T>)>>,
}

impl<T> Shared<T> {
    /// An empty set, for a `static`.
    pub(crate) const fn new() -> Self {
        Self {
            servers: tokio::sync::Mutex::const_new(Vec::new()),
        }
    }

    /// The servers for a builder (`key`, its `options`): from its forced
    /// source or the usual one (`url_var`, `image`), started by `start`, or
    /// the live ones started for the same builder when it is shared.
    pub(crate) async fn servers<F, Fut>(
        &self,
        key: &impl std::fmt::Debug,
        options: &Options,
        (url_var, image): (&str, Image),
        start: F,
    ) -> Result<(Arc<T>, Source), FixtureError>
    where
        F: FnOnce(Source) -> Fut,
        Fut: Future<Output = Result<T, FixtureError>>,
    {
        let source = match options.source {
            Some(source) => source,
            None => Source::choose(url_var, &image).await?,
        };
        let servers = if options.shared {
            let key = format!("{key:?} from {source:?}");
            self.get_or_start(key, start(source)).await?
        } else {
            Arc::new(start(source).await?)
        };
        Ok((servers, source))
    }

    /// The live servers started under `key`, or new ones from `start`.
    async fn get_or_start<F>(&self, key: String, start: F) -> Result<Arc<T>, FixtureError>
    where
        F: Future<Output = Result<T, FixtureError>>,
    {
        let mut servers = self.servers.lock().await;
        servers.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(live) = servers
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, weak)| weak.upgrade())
        {
            return Ok(live);
        }
        let started = Arc::new(start.await?);
        servers.push((key, Arc::downgrade(&started)));
        Ok(started)
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
