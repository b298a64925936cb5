//! Choosing where sessions live from a store URL, shared by the cart
//! example and the `offstate` command-line tool (feature `connect`).
//!
//! | URL | store |
//! |-----|-------|
//! | `memory://` | [`MemoryStore`]: this process only |
//! | `redis://host:port`, `rediss://...` | [`RedisStore`] (standalone or cluster, TLS with `rediss`) |
//! | `dynamodb://host:port/table` | [`DynamoDbStore`] on a local endpoint (moto, DynamoDB Local) |
//! | `dynamodb:///table` | [`DynamoDbStore`] on AWS (region and credentials from the environment) |
//! | `memcached://host:port,host:port` | [`MemcachedStore`] over those nodes |
//!
//! [`connect`] gives the [`Backend`] itself (the command-line tool reads
//! server statistics from it); [`sessions_with`] wraps it in
//! [`Sessions`], with a local [`CachedStore`] if asked. On Redis the cache
//! is coherent (pub/sub invalidations); elsewhere it runs in bounded
//! staleness mode.

use std::time::Duration;

use offstate_cache::CachedStore;
use offstate_core::{MemoryStore, SessionStore, Sessions};
use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};
use offstate_memcached::{MemcachedConfig, MemcachedStore};
use offstate_redis::{RedisConfig, RedisInvalidationChannel, RedisStore};

/// The region used with a local DynamoDB endpoint when the environment
/// names none (moto and DynamoDB Local accept any).
const LOCAL_REGION: &str = "us-east-1";

/// The store URL cannot be used, or its server cannot be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSetupError {
    /// The URL has no `scheme://`.
    #[error("store URL {0:?} has no scheme; try memory://")]
    NoScheme(String),
    /// A scheme nobody knows.
    #[error("unknown store scheme {0:?}; expected memory, redis, rediss, dynamodb or memcached")]
    Unknown(String),
    /// The URL's scheme is known but the rest does not fit it.
    #[error("bad {scheme}:// store URL: {reason}")]
    BadUrl {
        /// The scheme.
        scheme: String,
        /// What is wrong (the URL itself is not repeated: it may hold a
        /// password).
        reason: String,
    },
    /// The backend refused the connection or the set-up.
    #[error("cannot set up the {scheme}:// store")]
    Connect {
        /// The scheme.
        scheme: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// How the store is set up and wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Put a local [`CachedStore`] in front of the backend (default off).
    pub cache: bool,
    /// Create the DynamoDB table if it is missing (default on: instances
    /// of an app; a command-line tool turns it off and only reads).
    pub create_table: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            cache: false,
            create_table: true,
        }
    }
}

impl StoreOptions {
    /// Sets whether a local cache is put in front of the backend.
    #[must_use]
    pub fn with_cache(mut self, cache: bool) -> Self {
        self.cache = cache;
        self
    }

    /// Sets whether a missing DynamoDB table is created.
    #[must_use]
    pub fn with_create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }
}

/// A connected backend, before it is wrapped in [`Sessions`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Backend {
    /// `memory://`.
    Memory(MemoryStore),
    /// `redis://`, `rediss://`.
    Redis {
        /// The store.
        store: RedisStore,
        /// Its configuration (for the cache's invalidation channel);
        /// boxed, it is most of the enum's size.
        config: Box<RedisConfig>,
    },
    /// `dynamodb://`.
    DynamoDb(DynamoDbStore),
    /// `memcached://`.
    Memcached(MemcachedStore),
}

impl Backend {
    /// The URL scheme this backend answers to.
    #[must_use]
    pub fn scheme(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            Self::Redis { .. } => "redis",
            Self::DynamoDb(_) => "dynamodb",
            Self::Memcached(_) => "memcached",
        }
    }

    /// [`Sessions`] over this backend, wrapped as `options` say.
    ///
    /// # Errors
    ///
    /// [`StoreSetupError::Connect`] when the cache's invalidation channel
    /// cannot be set up.
    pub fn into_sessions(self, options: &StoreOptions) -> Result<Sessions, StoreSetupError> {
        match self {
            Self::Memory(store) => Ok(wrap(store, options)),
            Self::DynamoDb(store) => Ok(wrap(store, options)),
            Self::Memcached(store) => Ok(wrap(store, options)),
            Self::Redis { store, config } => {
                if !options.cache {
                    return Ok(Sessions::new(store));
                }
                // Coherent cache: every write script PUBLISHes its own
                // invalidation (one round trip, atomic with the write), and
                // the channel subscribes to what the peers' scripts publish.
                let channel =
                    RedisInvalidationChannel::from_connection(store.connection().clone(), &config)
                        .map_err(|e| StoreSetupError::Connect {
                            scheme: "redis".to_owned(),
                            source: Box::new(e),
                        })?;
                let store = store.with_announcements(channel.channel_name());
                Ok(Sessions::new(
                    CachedStore::builder(store).with_channel(channel).build(),
                ))
            }
        }
    }
}

/// Sessions over the store named by `url`, without a cache.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let sessions = offstate::connect::sessions_for("memory://").await.unwrap();
/// assert!(offstate::connect::sessions_for("nope").await.is_err());
/// # drop(sessions);
/// # }
/// ```
///
/// # Errors
///
/// [`StoreSetupError`] for URLs that name no usable store, and for
/// backends that cannot be reached.
pub async fn sessions_for(url: &str) -> Result<Sessions, StoreSetupError> {
    sessions_with(url, &StoreOptions::default()).await
}

/// Sessions over the store named by `url`, set up and wrapped as `options`
/// say.
///
/// # Errors
///
/// [`StoreSetupError`] for URLs that name no usable store, and for
/// backends that cannot be reached.
pub async fn sessions_with(url: &str, options: &StoreOptions) -> Result<Sessions, StoreSetupError> {
    connect(url, options).await?.into_sessions(options)
}

/// Connects to the store named by `url`. Only DynamoDB with
/// [`StoreOptions::create_table`] writes anything (the table).
///
/// # Errors
///
/// [`StoreSetupError`] for URLs that name no usable store, and for
/// backends that cannot be reached.
pub async fn connect(url: &str, options: &StoreOptions) -> Result<Backend, StoreSetupError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| StoreSetupError::NoScheme(redact(url)))?;
    let connect = |source: Box<dyn std::error::Error + Send + Sync>| StoreSetupError::Connect {
        scheme: scheme.to_owned(),
        source,
    };
    match scheme {
        "memory" => Ok(Backend::Memory(MemoryStore::new())),
        "redis" | "rediss" => {
            let config = RedisConfig::new(url);
            let store = RedisStore::connect(config.clone())
                .await
                .map_err(|e| connect(Box::new(e)))?;
            Ok(Backend::Redis {
                store,
                config: Box::new(config),
            })
        }
        "dynamodb" => {
            let target = dynamo_target(rest)?;
            let mut config = DynamoDbConfig::new(target.table);
            if let Some(endpoint) = target.endpoint {
                config = config.with_endpoint_url(endpoint);
                if std::env::var_os("AWS_REGION").is_none()
                    && std::env::var_os("AWS_DEFAULT_REGION").is_none()
                {
                    config = config.with_region(LOCAL_REGION);
                }
            }
            let store = DynamoDbStore::connect(config)
                .await
                .map_err(|e| connect(Box::new(e)))?;
            if options.create_table {
                // Instances started together may all try to create the
                // table: ensure_table treats "already being created" as
                // success and waits for it to be active.
                store
                    .ensure_table()
                    .await
                    .map_err(|e| connect(Box::new(e)))?;
            }
            Ok(Backend::DynamoDb(store))
        }
        "memcached" => {
            let nodes = memcached_nodes(rest)?;
            let config = MemcachedConfig::new(nodes).with_command_timeout(Duration::from_secs(1));
            let store = MemcachedStore::new(config).map_err(|e| connect(Box::new(e)))?;
            Ok(Backend::Memcached(store))
        }
        other => Err(StoreSetupError::Unknown(other.to_owned())),
    }
}

/// A URL without scheme as shown in an error: at most its first characters,
/// since a mistyped URL may still hold a password after them.
fn redact(url: &str) -> String {
    if url.contains('@') {
        "<redacted>".to_owned()
    } else {
        url.chars().take(40).collect()
    }
}

/// `Sessions` over `store`, behind a local cache in bounded staleness mode
/// if asked for.
fn wrap<S: SessionStore>(store: S, options: &StoreOptions) -> Sessions {
    if options.cache {
        // Bounded staleness: an entry is served for at most
        // offstate_cache::DEFAULT_STALENESS; writes are conditional on the
        // version, so a stale entry costs a retry, never a lost item.
        Sessions::new(CachedStore::builder(store).build())
    } else {
        Sessions::new(store)
    }
}

/// Where a `dynamodb://` URL points.
#[derive(Debug, PartialEq, Eq)]
struct DynamoTarget {
    /// `http://host:port`, or `None` for AWS's own endpoint.
    endpoint: Option<String>,
    table: String,
}

/// Parses what follows `dynamodb://`: `host:port/table` or `/table`.
fn dynamo_target(rest: &str) -> Result<DynamoTarget, StoreSetupError> {
    let bad = |reason: &str| StoreSetupError::BadUrl {
        scheme: "dynamodb".to_owned(),
        reason: reason.to_owned(),
    };
    let (host, table) = rest
        .split_once('/')
        .ok_or_else(|| bad("expected dynamodb://host:port/table or dynamodb:///table"))?;
    let table = table.trim_end_matches('/');
    if table.is_empty() || table.contains('/') {
        return Err(bad("the path must be one table name"));
    }
    let endpoint = (!host.is_empty()).then(|| format!("http://{host}"));
    Ok(DynamoTarget {
        endpoint,
        table: table.to_owned(),
    })
}

/// Parses what follows `memcached://`: `host:port[,host:port...]`.
fn memcached_nodes(rest: &str) -> Result<Vec<String>, StoreSetupError> {
    let nodes: Vec<String> = rest
        .trim_end_matches('/')
        .split(',')
        .map(str::trim)
        .filter(|node| !node.is_empty())
        .map(str::to_owned)
        .collect();
    if nodes.is_empty() || nodes.iter().any(|node| !node.contains(':')) {
        return Err(StoreSetupError::BadUrl {
            scheme: "memcached".to_owned(),
            reason: "expected memcached://host:port[,host:port...]".to_owned(),
        });
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dynamodb_urls() {
        assert_eq!(
            dynamo_target("127.0.0.1:5000/sessions").unwrap(),
            DynamoTarget {
                endpoint: Some("http://127.0.0.1:5000".into()),
                table: "sessions".into()
            }
        );
        assert_eq!(
            dynamo_target("/sessions/").unwrap(),
            DynamoTarget {
                endpoint: None,
                table: "sessions".into()
            }
        );
        assert!(dynamo_target("127.0.0.1:5000").is_err());
        assert!(dynamo_target("127.0.0.1:5000/").is_err());
        assert!(dynamo_target("h:1/a/b").is_err());
    }

    #[test]
    fn memcached_urls() {
        assert_eq!(
            memcached_nodes("a:11211, b:11212/").unwrap(),
            vec!["a:11211".to_owned(), "b:11212".to_owned()]
        );
        assert!(memcached_nodes("").is_err());
        assert!(memcached_nodes("nohost").is_err());
    }

    #[test]
    fn a_password_is_not_repeated() {
        assert_eq!(redact("user:secret@host"), "<redacted>");
    }

    #[tokio::test]
    async fn unknown_and_unreachable_stores_are_errors() {
        assert!(matches!(
            sessions_for("postgres://x").await,
            Err(StoreSetupError::Unknown(_))
        ));
        assert!(matches!(
            sessions_for("memcached://").await,
            Err(StoreSetupError::BadUrl { .. })
        ));
        assert!(matches!(
            sessions_for("no-scheme").await,
            Err(StoreSetupError::NoScheme(_))
        ));
    }
}
