//! Choosing where sessions live from a `--store` URL. The app itself only
//! sees `Sessions`. The parsing lives in [`offstate::connect`], shared with
//! the `offstate` command-line tool, so both take the same URLs:
//!
//! | URL | store |
//! |-----|-------|
//! | `memory://` | `MemoryStore`: this process only (the default) |
//! | `redis://host:port`, `rediss://...` | `RedisStore` (standalone or cluster, TLS with `rediss`) |
//! | `dynamodb://host:port/table` | `DynamoDbStore` on a local endpoint (moto, DynamoDB Local) |
//! | `dynamodb:///table` | `DynamoDbStore` on AWS (region and credentials from the environment) |
//! | `memcached://host:port,host:port` | `MemcachedStore` over those nodes |
//!
//! With `--cache` the store is wrapped in a `CachedStore`. On Redis the
//! cache is coherent: every instance publishes its writes on Redis pub/sub
//! and evicts on its peers' messages. On the other backends it runs in
//! bounded staleness mode (an entry is trusted for at most
//! `offstate_cache::DEFAULT_STALENESS`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use offstate_example_cart::store::{StoreOptions, sessions_for, sessions_with};
//!
//! let sessions = sessions_for("memory://").await.unwrap();
//! assert!(sessions_for("nope").await.is_err());
//! let cached = sessions_with("memory://", &StoreOptions::default().with_cache(true)).await.unwrap();
//! # drop((sessions, cached));
//! # }
//! ```

pub use offstate::connect::{StoreOptions, StoreSetupError, sessions_for, sessions_with};
