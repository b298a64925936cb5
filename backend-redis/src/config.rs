//! `RedisConfig`: everything needed to reach Redis or ElastiCache, in one
//! value, so standalone and cluster deployments differ only in data.

use std::fmt;
use std::time::Duration;

use redis::IntoConnectionInfo as _;

/// The key prefix used unless [`RedisConfig::with_key_prefix`] says otherwise.
pub const DEFAULT_KEY_PREFIX: &str = "offstate:";

/// How the URLs are to be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ClusterMode {
    /// Ask the first reachable server (`INFO cluster`) at connect time.
    #[default]
    Auto,
    /// A single server (or an ElastiCache primary endpoint with cluster mode
    /// disabled). Only the first URL is used.
    Standalone,
    /// Redis Cluster, or ElastiCache with cluster mode enabled. The URLs are
    /// seed nodes (the ElastiCache configuration endpoint is enough).
    Cluster,
}

/// How to reach Redis, and how the store behaves on it.
///
/// `redis://host:port` is plain TCP, `rediss://host:port` is TLS (rustls,
/// with the system's roots plus [`with_root_certificate_pem`](Self::with_root_certificate_pem)).
/// Credentials may be in the URL (`redis://user:password@host`) or set with
/// [`with_password`](Self::with_password) / [`with_user`](Self::with_user).
///
/// ```
/// use std::time::Duration;
/// use offstate_redis::{ClusterMode, RedisConfig};
///
/// let config = RedisConfig::new("rediss://my-cache.example.com:6379")
///     .with_cluster_mode(ClusterMode::Cluster)
///     .with_user("app", "secret-token")
///     .with_command_timeout(Duration::from_millis(250))
///     .with_key_prefix("shop:");
/// assert_eq!(config.key_prefix(), "shop:");
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    pub(crate) urls: Vec<String>,
    pub(crate) mode: ClusterMode,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) pool_size: usize,
    pub(crate) key_prefix: String,
    pub(crate) root_certificate_pem: Option<Vec<u8>>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // URLs may carry a password: show only their count.
        f.debug_struct("RedisConfig")
            .field("urls", &self.urls.len())
            .field("mode", &self.mode)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("pool_size", &self.pool_size)
            .field("key_prefix", &self.key_prefix)
            .field("root_certificate_pem", &self.root_certificate_pem.is_some())
            .finish()
    }
}

impl RedisConfig {
    /// A configuration for one URL, cluster mode detected at connect time.
    #[must_use]
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_urls([url.into()])
    }

    /// A configuration for several seed URLs (cluster nodes).
    #[must_use]
    pub fn with_urls(urls: impl IntoIterator<Item = String>) -> Self {
        Self {
            urls: urls.into_iter().collect(),
            mode: ClusterMode::Auto,
            username: None,
            password: None,
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            pool_size: default_pool_size(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            root_certificate_pem: None,
        }
    }

    /// Sets standalone, cluster, or detection.
    #[must_use]
    pub fn with_cluster_mode(mut self, mode: ClusterMode) -> Self {
        self.mode = mode;
        self
    }

    /// Shorthand: `true` for [`ClusterMode::Cluster`], `false` for
    /// [`ClusterMode::Standalone`].
    #[must_use]
    pub fn with_cluster(self, cluster: bool) -> Self {
        self.with_cluster_mode(if cluster {
            ClusterMode::Cluster
        } else {
            ClusterMode::Standalone
        })
    }

    /// AUTH with a password only (`requirepass`, or an ElastiCache AUTH token).
    #[must_use]
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.username = None;
        self.password = Some(password.into());
        self
    }

    /// AUTH as an ACL user (Redis 6+ ACL, ElastiCache RBAC user).
    #[must_use]
    pub fn with_user(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self.password = Some(password.into());
        self
    }

    /// How long to wait for a new connection (TCP, TLS, AUTH). Default 1 s.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one store operation may take once connected. Default 1 s.
    /// An operation that also has to connect may take up to the connect
    /// timeout on top; past that it fails with `StoreError::Timeout`.
    #[must_use]
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// How many multiplexed connections to keep (each carries many
    /// concurrent requests). Default: one per 4 CPUs this process may use
    /// (`std::thread::available_parallelism`), at least 1, at most 8.
    ///
    /// More connections are not faster: Redis runs commands on one thread
    /// whatever the number, and requests spread over more connections
    /// ride fewer to a read or write system call, on both ends, and those
    /// calls are most of what a `GET` costs Redis. With the bench's app on
    /// 2 CPUs and 50 clients, 8 connections cost Redis about 15 µs of CPU
    /// per read against 9 µs with 2; 1 connection against 2, measured
    /// side by side: 6–9 % more reads and 2–11 % more adds per second,
    /// about 20 % less Redis CPU per request and slightly less app CPU,
    /// and the same with a busy loop taking one of the 2 CPUs. One
    /// connection's driver task (reading and parsing every reply) becomes
    /// the limit somewhere past that on a large machine, hence one more
    /// per 4 CPUs.
    #[must_use]
    pub fn with_pool_size(mut self, size: usize) -> Self {
        self.pool_size = size.max(1);
        self
    }

    /// How many multiplexed connections the store keeps (see
    /// [`with_pool_size`](Self::with_pool_size)).
    #[must_use]
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// The prefix of every key this store writes. Default `"offstate:"`.
    /// It must not contain `{` or `}` (they delimit the cluster hash tag).
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// An extra root certificate (PEM) to trust for `rediss://` URLs, for a
    /// private CA. ElastiCache uses public roots and needs none.
    #[must_use]
    pub fn with_root_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificate_pem = Some(pem.into());
        self
    }

    /// The key prefix.
    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The configured URLs.
    #[must_use]
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// The connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The command timeout.
    #[must_use]
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Whether any URL asks for TLS.
    #[must_use]
    pub fn uses_tls(&self) -> bool {
        self.urls.iter().any(|u| u.starts_with("rediss://"))
    }

    /// `host:port` of the first URL (the node, or a cluster's first seed),
    /// for traces' `server.address`: never the credentials, and one value
    /// per configuration whatever node a call lands on. `None` when the
    /// URL does not parse.
    pub(crate) fn server_address(&self) -> Option<String> {
        let url = self.urls.first()?;
        let info = url.as_str().into_connection_info().ok()?;
        Some(info.addr().to_string())
    }
}

/// One connection per 4 CPUs this process may use, at least 1, at most 8.
fn default_pool_size() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    pool_size_for(cpus)
}

/// The default pool size on `cpus` CPUs.
fn pool_size_for(cpus: usize) -> usize {
    cpus.div_ceil(4).clamp(1, 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_pool_grows_by_one_connection_per_4_cpus_up_to_8() {
        let sizes: Vec<usize> = [1, 2, 4, 5, 8, 9, 16, 32, 33, 128]
            .into_iter()
            .map(pool_size_for)
            .collect();
        assert_eq!(sizes, [1, 1, 1, 2, 2, 3, 4, 8, 8, 8]);
        assert!((1..=8).contains(&RedisConfig::new("redis://127.0.0.1").pool_size()));
    }
}
