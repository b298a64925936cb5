//! What a [`MemcachedStore`](crate::MemcachedStore) needs to know: its
//! nodes, key prefix, timeouts and limits.

use std::time::Duration;

/// The default key prefix.
pub const DEFAULT_KEY_PREFIX: &str = "offstate:";

/// Memcached's default item size limit (`-I 1m`).
pub const DEFAULT_MAX_ITEM_BYTES: usize = 1024 * 1024;

/// Memcached's longest key.
pub(crate) const MAX_KEY_LEN: usize = 250;

/// The longest part a store appends to the prefix: `epoch:` and a
/// 43-character hash (session keys are 43 characters).
const LONGEST_SUFFIX: usize = "epoch:".len() + 43;

/// Configuration of a [`MemcachedStore`](crate::MemcachedStore).
///
/// ```
/// use std::time::Duration;
/// use offstate_memcached::MemcachedConfig;
///
/// let config = MemcachedConfig::new(["cache-1.example:11211", "cache-2.example:11211"])
///     .with_key_prefix("shop:")
///     .with_command_timeout(Duration::from_millis(250))
///     .with_max_item_bytes(2 * 1024 * 1024); // the servers run with -I 2m
/// assert_eq!(config.nodes().len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemcachedConfig {
    nodes: Vec<String>,
    key_prefix: String,
    connect_timeout: Duration,
    command_timeout: Duration,
    max_item_bytes: usize,
    pool_size: usize,
}

impl MemcachedConfig {
    /// A configuration for these nodes (`host:port` each; ElastiCache node
    /// endpoints, or the configuration endpoint's members), with the
    /// defaults: prefix `offstate:`, 1 s connect and command timeouts, a
    /// 1 MiB item limit and up to 32 connections per node.
    pub fn new<I, S>(nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            max_item_bytes: DEFAULT_MAX_ITEM_BYTES,
            pool_size: 32,
        }
    }

    /// Puts this in front of every key, so several apps (or environments)
    /// can share a cluster.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Bounds opening a connection to a node.
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bounds every request to a node, including waiting for and opening a
    /// connection. A store operation makes up to a few such requests.
    #[must_use]
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// The servers' item size limit (their `-I` setting). Records that
    /// would not fit are refused before anything is sent.
    #[must_use]
    pub fn with_max_item_bytes(mut self, bytes: usize) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    /// The most connections kept open to one node at a time.
    #[must_use]
    pub fn with_pool_size(mut self, connections: usize) -> Self {
        self.pool_size = connections.max(1);
        self
    }

    /// The nodes.
    #[must_use]
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// The key prefix.
    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The connect timeout.
    #[must_use]
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The per-request timeout.
    #[must_use]
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// The item size limit.
    #[must_use]
    pub fn max_item_bytes(&self) -> usize {
        self.max_item_bytes
    }

    /// The connection cap per node.
    #[must_use]
    pub fn pool_size(&self) -> usize {
        self.pool_size
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] when there is no node, a node address is blank or
    /// holds whitespace, or the prefix could make an invalid memcached key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.nodes.is_empty() {
            return Err(ConfigError::NoNodes);
        }
        for node in &self.nodes {
            if node.is_empty() || node.chars().any(char::is_whitespace) {
                return Err(ConfigError::BadNode(node.clone()));
            }
        }
        if self
            .key_prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control() || !b.is_ascii())
        {
            return Err(ConfigError::BadPrefix(self.key_prefix.clone()));
        }
        if self.key_prefix.len() + LONGEST_SUFFIX > MAX_KEY_LEN {
            return Err(ConfigError::PrefixTooLong {
                len: self.key_prefix.len(),
                max: MAX_KEY_LEN - LONGEST_SUFFIX,
            });
        }
        Ok(())
    }
}

/// A configuration a store cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node list is empty.
    #[error("no memcached node configured")]
    NoNodes,
    /// A node address is blank or holds whitespace.
    #[error("invalid memcached node address {0:?}")]
    BadNode(String),
    /// The prefix holds whitespace, control or non-ASCII characters.
    #[error("memcached key prefix {0:?} holds whitespace, control or non-ASCII characters")]
    BadPrefix(String),
    /// The prefix would push keys past memcached's 250 bytes.
    #[error("memcached key prefix of {len} bytes is too long; the most is {max}")]
    PrefixTooLong {
        /// The prefix's length.
        len: usize,
        /// The longest prefix allowed.
        max: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let config = MemcachedConfig::new(["127.0.0.1:11211"]);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.key_prefix(), "offstate:");
        assert_eq!(config.max_item_bytes(), 1 << 20);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let none = MemcachedConfig::new(Vec::<String>::new());
        assert_eq!(none.validate(), Err(ConfigError::NoNodes));
        let blank = MemcachedConfig::new([" "]);
        assert!(matches!(blank.validate(), Err(ConfigError::BadNode(_))));
        let spaced = MemcachedConfig::new(["h:1"]).with_key_prefix("my app:");
        assert!(matches!(spaced.validate(), Err(ConfigError::BadPrefix(_))));
        let long = MemcachedConfig::new(["h:1"]).with_key_prefix("p".repeat(202));
        assert!(matches!(
            long.validate(),
            Err(ConfigError::PrefixTooLong { max: 201, .. })
        ));
        let ok = MemcachedConfig::new(["h:1"]).with_key_prefix("p".repeat(201));
        assert_eq!(ok.validate(), Ok(()));
    }
}
