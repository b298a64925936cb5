//! Redis and ElastiCache (Redis OSS / Valkey) store for offstate: sessions
//! and carts in Redis, standalone or Redis Cluster, so app instances can
//! come and go.
//!
//! # Layout
//!
//! - [`RedisConfig`] and [`ClusterMode`]: URLs (`redis://`, `rediss://` for
//!   TLS), credentials, timeouts, pool size, key prefix. (The clock is the
//!   `Sessions`' own: every store call is given "now".)
//! - [`RedisConnection`]: a few shared multiplexed connections (standalone
//!   or cluster), every call bounded in time, shared with the invalidation
//!   channel, and
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
//! - Inside: `keys` (key names and hash tags), `names` (the store contract
//!   on a session's name, and its legacy name), `codec` (record ⇄ the
//!   stored string), `scripts` (the Lua scripts), `replies` (reading
//!   their answers), `index` (the principal index),
//!   `error` (client errors ⇄ [`StoreError`](offstate_core::StoreError)),
//!   `slots` (the connection's slots: made on first use, checked, replaced
//!   when broken), `coalesce` (plain TCP connections whose writes wait a scheduler turn,
//!   so that concurrent requests' commands share a system call),
//!   `watch` (what is on the subscriber's socket and not yet with the
//!   cache) and `subscriber` (the subscription over a watched socket,
//!   read with the watch's own RESP parser).
//!
//! # Data model
//!
//! One string per session at `<prefix>s:{<2>}<41>`, the 43 characters of
//! the session key with its first two as the cluster hash tag (default
//! prefix `offstate:`): a fixed binary header (layout, version, creation
//! time, idle and absolute deadlines), the principal's name, then one
//! `<length>:<key><length>:<value>` pair per data key (see the `codec`
//! module). A login draws
//! the session's new ID so that its key starts with the tag of its
//! principal's index, which puts a logged-in session in its index's
//! cluster slot. Wherever the session shares a server (standalone) or a slot
//! (cluster) with its principal's index, it also holds `ix`, the index's
//! key, so the scripts keep the index in step (see the `index` module).
//! Sessions from before the short tags (`<prefix>s:{<session key>}`) are
//! still found: [`RedisStore::with_legacy_names`].
//!
//! - **Load** is one round trip, a plain `GET` (no script: a script costs
//!   Redis about 3 µs of CPU more per read, and `GET` also runs on a
//!   replica); the record's deadlines are checked against the caller's
//!   "now" (the `Sessions`' clock) whatever the server TTL did. Fields
//!   that do not decode give `StoreError::Corrupt`.
//! - **Every write is one Lua script** (`EVALSHA`, loading the script on
//!   `NOSCRIPT`) that atomically checks existence, expected version and
//!   expiry (with "now" passed by the caller, never the server's
//!   `TIME`), applies the change (from a `Session`, which read the
//!   version it writes over, the new data is sent whole and the script
//!   parses none of it; a bare [`SessionStore::save`](offstate_core::SessionStore::save)
//!   sends only the changed keys and the script keeps the stored pairs of
//!   the others), raises the version and writes the string with `PXAT` at
//!   the record's end (or no TTL). A version mismatch returns the current
//!   session, so a conflict costs no extra read. Create writes only if the
//!   key is absent or expired by the clock; touch only rewrites `idle` and
//!   the TTL of a live session.
//! - **Sessions stored by earlier versions** as one hash per session are
//!   still read (a `GET` that meets a hash reads it with `HGETALL`: one
//!   more round trip) and deleted, and become strings at their first save
//!   or touch. An instance of an earlier version cannot read a
//!   session this version has saved: upgrade every instance of a fleet
//!   before sessions are written by the new one (or accept that a user
//!   served by an old instance meanwhile sees a corrupt-session error).
//! - **Principal index**: a sorted set per principal at
//!   `<prefix>principal:{<2>}<41>` of the SHA-256 of the name; see the
//!   `index` module's docs for the ordering that keeps revocation complete
//!   across slots. Every write of a session placed with its principal
//!   (every login's, on a standalone Redis every one) is one script call,
//!   the index update included; on a cluster a write of a session with a
//!   principal in another slot (created through the store directly, or
//!   before the short tags) costs one more command. The update also
//!   re-adds an entry that was lost and trims the entries of ended
//!   sessions. A revoke works in batches of 100 entries and keeps
//!   what each batch did, so a revoke cut short by its bound is continued
//!   by a retry.
//! - **Announcements** (optional, [`RedisStore::with_announcements`]):
//!   save, touch, delete, delete-if-version and every session a revoke
//!   deletes `PUBLISH` their invalidation from inside the same script, so
//!   a cached write is one round trip and no subscriber can hear of it
//!   after the writer's client did.
//! - **Timeouts**: every call is bounded: getting a connection by the
//!   connect timeout, then the call itself by the command timeout, one
//!   timer per call (on a cluster, one bound of both for the whole call,
//!   and a write that also updates the index may take that bound twice). A slow or dead server gives
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
//!   is [`RedisConfig::with_user`]. The user needs `+@string +@hash
//!   +@sortedset +@scripting +@keyspace +ping +info` on `~<prefix>*` (and `+publish`
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
//! it held: the sessions in its slots are gone, as a crash of any
//! non-persistent store loses them (their users log in again). Log-out-
//! everywhere stays complete: a login puts the session in the slot of its
//! principal's index (the new ID is drawn until its key starts with the
//! index's two-character hash tag: 4,096 draws, about 1.5 ms of CPU per
//! login; one character would cost 64 draws but give only 64 slots, too
//! few to spread over the masters), so a restart loses a principal's index together with all its
//! logged-in sessions, never the index alone. The cluster history check
//! restarts masters and finds no session alive after revoke-all.
//!
//! Two kinds of sessions stay outside that guarantee, both only through a
//! restart of the master holding their principal's index: sessions
//! written before the short tags (under their legacy names, until they
//! end; see [`RedisStore::with_legacy_names`]), and sessions given a
//! principal through [`SessionStore`](offstate_core::SessionStore) calls
//! that pick their own key (not through a login). Revoke-all misses such a
//! session until its next write or touch re-indexes it. A principal's
//! tag holds 1/4,096 of the principals: slots are balanced over masters as
//! long as the cluster has far fewer than 4,096 masters.
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

mod coalesce;
mod codec;
mod config;
mod connection;
mod error;
mod index;
mod invalidation;
mod keys;
mod names;
mod replies;
mod scripts;
mod slots;
mod store;
mod subscriber;
mod watch;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use codec::{decode_reply, encode_fields, encode_stored};
pub use config::{ClusterMode, DEFAULT_KEY_PREFIX, RedisConfig};
pub use connection::RedisConnection;
pub use error::ConnectError;
pub use invalidation::{DEFAULT_CHANNEL_SUFFIX, DEFAULT_HEARTBEAT, RedisInvalidationChannel};
pub use store::RedisStore;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use watch::read_frames;

/// The Redis client this crate is built on, for commands of your own on a
/// [`RedisConnection`].
pub use redis;
