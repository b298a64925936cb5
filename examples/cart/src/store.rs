//! Choosing where sessions live from a `--store` URL. The app itself only
//! sees `Sessions`, so adding a backend is one arm of the `match` below.
//!
//! | URL | store |
//! |-----|-------|
//! | `memory://` | [`MemoryStore`]: this process only (the default) |
//! | `redis://host:port`, `rediss://...` | [`RedisStore`] (standalone or cluster, TLS with `rediss`) |
//! | `dynamodb://host:port/table` | [`DynamoDbStore`] on a local endpoint (moto, DynamoDB Local) |
//! | `dynamodb:///table` | [`DynamoDbStore`] on AWS (region and credentials from the environment) |
//! | `memcached://host:port,host:port` | [`MemcachedStore`] over those nodes |
//!
//! With `--cache` the store is wrapped in a [`CachedStore`]. On Redis the
//! cache is coherent: every instance publishes its writes on Redis pub/sub
//! ([`RedisInvalidationChannel`]) and evicts on its peers' messages. On the
//! other backends it runs in bounded staleness mode (an entry is trusted for
//! at most [`offstate_cache::DEFAULT_STALENESS`]).

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

/// How the store is wrapped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreOptions {
    /// Put a local [`CachedStore`] in front of the backend.
    pub cache: bool,
}

impl StoreOptions {
    /// Sets whether a local cache is put in front of the backend.
    #[must_use]
    pub fn with_cache(mut self, cache: bool) -> Self {
        self.cache = cache;
        self
    }
}

/// Sessions over the store named by `url`, without a cache.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let sessions = offstate_example_cart::store::sessions_for("memory://").await.unwrap();
/// assert!(offstate_example_cart::store::sessions_for("nope").await.is_err());
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

/// Sessions over the store named by `url`, wrapped as `options` say.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use offstate_example_cart::store::{StoreOptions, sessions_with};
///
/// let options = StoreOptions::default().with_cache(true);
/// let sessions = sessions_with("memory://", &options).await.unwrap();
/// # drop(sessions);
/// # }
/// ```
///
/// # Errors
///
/// [`StoreSetupError`] for URLs that name no usable store, and for
/// backends that cannot be reached.
pub async fn sessions_with(url: &str, options: &StoreOptions) -> Result<Sessions, StoreSetupError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| StoreSetupError::NoScheme(url.to_owned()))?;
    let connect = |source: Box<dyn std::error::Error + Send + Sync>| StoreSetupError::Connect {
        scheme: scheme.to_owned(),
        source,
    };
    match scheme {
        "memory" => Ok(wrap(MemoryStore::new(), options)),
        "redis" | "rediss" => {
            let config = RedisConfig::new(url);
            let store = RedisStore::connect(config.clone())
                .await
                .map_err(|e| connect(Box::new(e)))?;
            if !options.cache {
                return Ok(Sessions::new(store));
            }
            // Coherent cache: invalidations on pub/sub, published through
            // the store's own pool.
            let channel =
                RedisInvalidationChannel::from_connection(store.connection().clone(), &config)
                    .map_err(|e| connect(Box::new(e)))?;
            Ok(Sessions::new(
                CachedStore::builder(store).with_channel(channel).build(),
            ))
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
            // Instances started together may all try to create the table:
            // ensure_table treats "already being created" as success and
            // waits for it to be active.
            store
                .ensure_table()
                .await
                .map_err(|e| connect(Box::new(e)))?;
            Ok(wrap(store, options))
        }
        "memcached" => {
            let nodes = memcached_nodes(rest)?;
            let config = MemcachedConfig::new(nodes).with_command_timeout(Duration::from_secs(1));
            let store = MemcachedStore::new(config).map_err(|e| connect(Box::new(e)))?;
            Ok(wrap(store, options))
        }
        other => Err(StoreSetupError::Unknown(other.to_owned())),
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
    }
}
