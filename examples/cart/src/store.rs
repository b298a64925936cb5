//! Choosing where sessions live from a `--store` URL. The app itself only
//! sees `Sessions`, so adding a backend is one arm of the `match` below.

use offstate_core::{MemoryStore, Sessions};

/// The store URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSetupError {
    /// The URL has no `scheme://`.
    #[error("store URL {0:?} has no scheme; try memory://")]
    NoScheme(String),
    /// A backend this build does not wire yet.
    #[error("the {0}:// store is not wired into this example yet; use memory://")]
    NotWired(String),
    /// A scheme nobody knows.
    #[error("unknown store scheme {0:?}; expected memory, redis, dynamodb or memcached")]
    Unknown(String),
}

/// Sessions over the store named by `url`.
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
/// [`StoreSetupError`] for URLs that name no usable store.
pub async fn sessions_for(url: &str) -> Result<Sessions, StoreSetupError> {
    let (scheme, _rest) = url
        .split_once("://")
        .ok_or_else(|| StoreSetupError::NoScheme(url.to_owned()))?;
    match scheme {
        "memory" => Ok(Sessions::new(MemoryStore::new())),
        // The backends plug in here, each building its store from the URL
        // and wrapping it in `Sessions::new(...)`:
        "redis" | "rediss" | "dynamodb" | "memcached" => {
            Err(StoreSetupError::NotWired(scheme.to_owned()))
        }
        other => Err(StoreSetupError::Unknown(other.to_owned())),
    }
}
