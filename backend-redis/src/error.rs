//! How Redis client failures become typed [`StoreError`]s, and
//! what can go wrong while connecting.

use std::time::Duration;

use offstate_core::StoreError;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// The store could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration names no Redis URL.
    #[error("no Redis URL given")]
    NoUrl,
    /// The key prefix contains `{` or `}`, which delimit the cluster hash
    /// tag.
    #[error(
        "the key prefix {prefix:?} must not contain '{{' or '}}' (they delimit the cluster hash tag)"
    )]
    KeyPrefix {
        /// The prefix given.
        prefix: String,
    },
    /// The Redis client refused the URLs or TLS settings.
    #[error("invalid Redis connection settings")]
    Client(#[source] RedisError),
    /// Cluster mode detection needed a server, and none answered.
    #[error("could not detect whether Redis runs in cluster mode")]
    Detect(#[source] StoreError),
}

/// Server error codes that mean "try again later": the server is out of
/// memory under `noeviction` (`OOM`), busy running a script (`BUSY`),
/// loading its data (`LOADING`), a replica whose master is down
/// (`MASTERDOWN`), a replica after a failover (`READONLY`), without enough
/// replicas for `min-replicas-to-write` (`NOREPLICAS`), or a cluster that
/// is resharding or down (`TRYAGAIN`, `CLUSTERDOWN`).
const OUTAGE_CODES: &[&str] = &[
    "OOM",
    "BUSY",
    "LOADING",
    "MASTERDOWN",
    "READONLY",
    "NOREPLICAS",
    "TRYAGAIN",
    "CLUSTERDOWN",
];

/// Whether a server error means "try again later". A command that fails
/// inside a Lua script comes back with the script's error wrapped around
/// it (`ERR ... OOM command not allowed ...` on older servers), so the
/// message is checked for the codes' texts too.
fn is_overload(error: &RedisError) -> bool {
    if error
        .code()
        .is_some_and(|code| OUTAGE_CODES.contains(&code))
    {
        return true;
    }
    let detail = error.detail().unwrap_or_default();
    detail.contains("OOM command not allowed")
        || detail.contains("-BUSY ")
        || detail.contains("NOREPLICAS")
        || detail.contains("-READONLY ")
}

/// Maps a client error to the store's error kinds: timeouts, lost or
/// refused connections and "try again later" answers (see
/// [`OUTAGE_CODES`]) are outages; a value of the wrong type at a session
/// key is a corrupt record; anything else is a backend failure.
pub(crate) fn from_redis(error: RedisError, bound: Duration) -> StoreError {
    if error.is_timeout() {
        return StoreError::Timeout(bound);
    }
    if error.code() == Some("WRONGTYPE") {
        return StoreError::corrupt(error);
    }
    let outage = error.is_io_error()
        || is_overload(&error)
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || matches!(
            error.kind(),
            ErrorKind::ClusterConnectionNotFound
                | ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                )
        );
    if outage {
        StoreError::unavailable(error)
    } else {
        StoreError::backend(error)
    }
}

/// A server reply that is not what the scripts return.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct UnexpectedReply(pub(crate) String);

impl UnexpectedReply {
    pub(crate) fn store_error(what: impl Into<String>) -> StoreError {
        StoreError::backend(Self(what.into()))
    }
}
