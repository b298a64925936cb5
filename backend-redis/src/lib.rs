//! Redis and ElastiCache (Redis OSS / Valkey) store for offstate: sessions
//! and carts in Redis, standalone or Redis Cluster, so app instances can
//! come and go.
//!
//! # Layout
//!
//! - [`RedisConfig`] and [`ClusterMode`]: URLs (`redis://`, `rediss://` for
//!   TLS), credentials, timeouts, pool size, key prefix. (The clock is the
//!   `Sessions`' own: every store call is given "now".)
//! - [`RedisConnection`]: the bounded connection pool (standalone or
//!   cluster, on `deadpool`), shared with the invalidation channel, and
//!   open to commands of your own ([`RedisConnection::query`]).
//! - [`RedisStore`]: the [`SessionStore`](offstate_core::SessionStore);
//!   with [`RedisStore::with_announcements`] every write also announces
//!   itself to the caches, inside its own script.
//! - [`RedisInvalidationChannel`]: the cache layer's
//!   [`InvalidationChannel`](offstate_core::InvalidationChannel) on Redis
//!   pub/sub (channel `<prefix>invalidations`), with a heartbeat that
//!   notices a paused or partitioned server. It works with ANY backend
//!   whenever a Redis URL is available: e.g. sessions in DynamoDB and
//!   invalidations through a small ElastiCache Redis.
//! - Inside: `keys` (key names and hash tags), `codec` (record ⇄ hash
//!   fields), `scripts` (the Lua scripts), `index` (the principal index),
//!   `error` (client errors ⇄ [`StoreError`](offstate_core::StoreError)).
//!
//! # Data model
//!
//! One hash per session at `<prefix>s:{<session key>}` (default prefix
//! `offstate:`): one field `d:<key>` per data key, and metadata fields
//! `version`, `created`, `idle`, `abs`, `principal`. The `{...}` hash tag
//! keeps everything of one session in one cluster slot. On a standalone
//! Redis the hash also holds `ix`, its principal's index key, so the
//! scripts can keep the index in step (see the `index` module).
//!
//! - **Load** is one round trip: a read-only script that runs `HGETALL`
//!   and packs the hash into one string (cheaper for the client to parse
//!   than the many short strings of `HGETALL`'s reply); the record's
//!   deadlines are checked against the caller's "now" (the `Sessions`'
//!   clock) whatever the server TTL did. Fields that do not decode give
//!   `StoreError::Corrupt`.
//! - **Every write is one Lua script** (`EVALSHA`, loading the script on
//!   `NOSCRIPT`) that atomically checks existence, expected version and
//!   expiry (with "now" passed by the caller, never the server's
//!   `TIME`), applies only the changed fields (`HSET`/`HDEL`), raises the
//!   version and sets `PEXPIREAT` to the record's end (or `PERSIST`). A
//!   version mismatch returns the current hash, so a conflict costs no extra
//!   read. Create writes only if the key is absent or expired by the clock;
//!   touch only rewrites `idle` and the TTL of a live session.
//! - **Principal index**: a sorted set per principal at
//!   `<prefix>principal:{<sha256 of the name>}`; see the `index` module's
//!   docs for the ordering that keeps revocation complete across slots.
//!   On a standalone Redis every write is one script call, the index
//!   update included; on a cluster a write of a session with a principal
//!   costs one more command (the index update, in the index's slot). The
//!   update also re-adds an entry that was lost and trims the entries of
//!   ended sessions. A revoke works in batches of 100 entries and keeps
//!   what each batch did, so a revoke cut short by its bound is continued
//!   by a retry.
//! - **Announcements** (optional, [`RedisStore::with_announcements`]):
//!   save, touch, delete, delete-if-version and every session a revoke
//!   deletes `PUBLISH` their invalidation from inside the same script, so
//!   a cached write is one round trip and no subscriber can hear of it
//!   after the writer's client did.
//! - **Timeouts**: every call is bounded by `tokio::time::timeout` (connect
//!   timeout + command timeout; on a cluster, a write that also updates the
//!   index may take that bound twice). A slow or dead server gives
//!   `StoreError::Timeout` or `StoreError::Unavailable`; broken connections
//!   are replaced at their next use, so the store recovers by itself when
//!   the server is back.
//!
//! # ElastiCache
//!
//! - **Parameter group**: nothing special. Nothing on the request path uses
//!   `CONFIG`, `KEYS` or `SCAN`, and correctness never depends on keyspace
//!   notifications. For cluster mode enabled, use a cluster-mode parameter
//!   group (`cluster-enabled yes`, the default `default.redis7.cluster.on`)
//!   and give the configuration endpoint as the URL with
//!   [`ClusterMode::Cluster`] (or leave [`ClusterMode::Auto`], which asks
//!   `INFO cluster` once at connect time). Redis 6.2 or later is needed
//!   (`ZADD GT`).
//! - **TLS** (in-transit encryption): use `rediss://`. ElastiCache's
//!   certificates chain to public roots, found in the system's store; a
//!   private CA can be added with [`RedisConfig::with_root_certificate_pem`].
//! - **AUTH**: an AUTH token is [`RedisConfig::with_password`]; an RBAC user
//!   is [`RedisConfig::with_user`]. The user needs `+@hash +@sortedset
//!   +@scripting +@keyspace +ping +info` on `~<prefix>*` (and `+publish`
//!   on the channel with announcements).
//! - Memory policy: sessions carry TTLs, so `volatile-lru` or
//!   `volatile-ttl` evicts them only under memory pressure (an evicted
//!   index is rebuilt entry by entry by the sessions' next writes and
//!   touches); `noeviction` makes writes fail instead, as an outage
//!   (`StoreError::Unavailable`, 503 through the middleware), like every
//!   other "try again later" answer (`BUSY`, `LOADING`, `MASTERDOWN`,
//!   `READONLY`, `NOREPLICAS`, `TRYAGAIN`, `CLUSTERDOWN`).
//!
//! # Failover
//!
//! Redis replicates asynchronously. When a master dies, a write it had
//! already acknowledged but not yet sent to its replica is lost when the
//! replica is promoted: at most about one write per concurrent writer on
//! that master, and on a local network normally none (the failover test
//! lost 0 of 300 acknowledged updates). While promotion is in progress
//! (about `cluster-node-timeout` plus an election: 3 to 4 s with a 1 s
//! timeout), operations on that master's slots fail with typed
//! [`StoreError`](offstate_core::StoreError)s (503 through the middleware)
//! and never hang past the command timeout; other slots are not affected.
//! `WAIT` would narrow the window at the cost of a round trip per write;
//! offstate does not use it.
//!
//! A master that restarts **empty** (no replica, no persistence) loses what
//! it held. On a cluster that can be a principal's index while that user's
//! sessions live on other masters: revoke-all then misses those sessions
//! until their next write or touch re-indexes them (the history checker
//! finds this when its cluster run restarts masters). Run cluster masters
//! with replicas, or with persistence, when log-out-everywhere must be
//! complete after a crash.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use offstate_core::Sessions;
//! use offstate_redis::{ClusterMode, RedisConfig, RedisStore};
//!
//! let config = RedisConfig::new("rediss://clustercfg.my-cache.example.com:6379")
//!     .with_cluster_mode(ClusterMode::Cluster)
//!     .with_password("auth-token")
//!     .with_command_timeout(Duration::from_millis(300));
//! let sessions = Sessions::new(RedisStore::connect(config).await?);
//!
//! let session = sessions.new_session();
//! session.insert("cart", &vec!["apple"]).await?;
//! session.save().await?;
//! # Ok(()) }
//! ```

mod codec;
mod config;
mod connection;
mod error;
mod index;
mod invalidation;
mod keys;
mod scripts;
mod store;
mod watch;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use codec::{decode_reply, encode_fields};
pub use config::{ClusterMode, DEFAULT_KEY_PREFIX, RedisConfig};
pub use connection::RedisConnection;
pub use error::ConnectError;
pub use invalidation::{DEFAULT_CHANNEL_SUFFIX, DEFAULT_HEARTBEAT, RedisInvalidationChannel};
pub use store::RedisStore;

/// The Redis client this crate is built on, for commands of your own on a
/// [`RedisConnection`].
pub use redis;
