//! ElastiCache Memcached auto-discovery: the node list from a cluster's
//! configuration endpoint (`config get cluster`).
//!
//! Discovery runs once, when the app builds its store; the ring is then
//! fixed. After ElastiCache adds or replaces nodes, build a new store (or
//! restart). A plain memcached answers `ERROR` to the command, which is
//! reported as [`DiscoveryError::Server`].
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use offstate_memcached::{MemcachedConfig, MemcachedStore, discover_nodes};
//!
//! let endpoint = "sessions.abc123.cfg.use1.cache.amazonaws.com:11211";
//! let nodes = discover_nodes(endpoint, Duration::from_secs(2)).await?;
//! let store = MemcachedStore::new(MemcachedConfig::new(nodes))?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use crate::pool::{Node, NodeError, PoolLimits};
use crate::protocol::{Request, Response};

/// Why the node list could not be discovered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// The endpoint could not be reached or did not answer in time.
    #[error("cannot ask {endpoint} for the cluster configuration")]
    Unreachable {
        /// The configuration endpoint.
        endpoint: String,
        /// What failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The endpoint answered with an error (a plain memcached does).
    #[error(
        "{endpoint} did not return a cluster configuration; is it an ElastiCache configuration endpoint?"
    )]
    Server {
        /// The configuration endpoint.
        endpoint: String,
        /// The server's answer.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The configuration could not be parsed.
    #[error("malformed cluster configuration: {0}")]
    Malformed(String),
}

/// The node addresses (`host:port`) of the ElastiCache cluster behind a
/// configuration endpoint.
///
/// # Errors
///
/// [`DiscoveryError`] when the endpoint cannot be reached within `timeout`,
/// is not a configuration endpoint, or answers something unparsable.
pub async fn discover_nodes(
    endpoint: &str,
    timeout: Duration,
) -> Result<Vec<String>, DiscoveryError> {
    let node = Node::new(
        endpoint.to_owned(),
        PoolLimits {
            connect_timeout: timeout,
            command_timeout: timeout,
            max_connections: 1,
            max_value: 1024 * 1024,
        },
    );
    match node.execute(&Request::ConfigGetCluster).await {
        Ok(Response::Config(data)) => parse_config(&data),
        Ok(other) => Err(DiscoveryError::Malformed(format!(
            "unexpected reply {other:?}"
        ))),
        Err(error @ NodeError::Protocol { .. }) if !error.is_connection() => {
            Err(DiscoveryError::Server {
                endpoint: endpoint.to_owned(),
                source: Box::new(error),
            })
        }
        Err(error) => Err(DiscoveryError::Unreachable {
            endpoint: endpoint.to_owned(),
            source: Box::new(error),
        }),
    }
}

/// Parses the configuration block: a version line, then one line of
/// space-separated `hostname|ip|port` entries.
pub(crate) fn parse_config(data: &[u8]) -> Result<Vec<String>, DiscoveryError> {
    let text =
        std::str::from_utf8(data).map_err(|_| DiscoveryError::Malformed("not UTF-8".into()))?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let version = lines
        .next()
        .ok_or_else(|| DiscoveryError::Malformed("empty".into()))?;
    if version.parse::<u64>().is_err() {
        return Err(DiscoveryError::Malformed(format!(
            "bad version line {version:?}"
        )));
    }
    let entries = lines
        .next()
        .ok_or_else(|| DiscoveryError::Malformed("no node line".into()))?;
    let mut nodes = Vec::new();
    for entry in entries.split_whitespace() {
        let mut parts = entry.split('|');
        let (host, ip, port) = match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(host), Some(ip), Some(port), None) => (host, ip, port),
            _ => {
                return Err(DiscoveryError::Malformed(format!(
                    "bad node entry {entry:?}"
                )));
            }
        };
        if port.parse::<u16>().is_err() {
            return Err(DiscoveryError::Malformed(format!("bad port in {entry:?}")));
        }
        let name = if host.is_empty() { ip } else { host };
        if name.is_empty() {
            return Err(DiscoveryError::Malformed(format!("no host in {entry:?}")));
        }
        nodes.push(format!("{name}:{port}"));
    }
    if nodes.is_empty() {
        return Err(DiscoveryError::Malformed("no nodes".into()));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_elasticache_format() {
        let data = b"12\nmc.abc.0001.use1.cache.amazonaws.com|10.82.235.120|11211 mc.abc.0002.use1.cache.amazonaws.com|10.80.249.27|11211\n\r\n";
        let nodes = parse_config(data).unwrap();
        assert_eq!(
            nodes,
            vec![
                "mc.abc.0001.use1.cache.amazonaws.com:11211".to_owned(),
                "mc.abc.0002.use1.cache.amazonaws.com:11211".to_owned(),
            ]
        );
    }

    #[test]
    fn falls_back_to_the_ip() {
        assert_eq!(
            parse_config(b"1\n|10.0.0.1|11211\n").unwrap(),
            vec!["10.0.0.1:11211".to_owned()]
        );
    }

    #[test]
    fn refuses_malformed_configurations() {
        for bad in [
            &b""[..],
            b"x\nh|i|1\n",
            b"1\n",
            b"1\nh|i\n",
            b"1\nh|i|port\n",
            b"1\n||11211\n",
            b"1\nh|i|1|extra\n",
            &[0xff, b'\n'],
        ] {
            assert!(parse_config(bad).is_err(), "{bad:?} parsed");
        }
    }
}
