//! A local cache for offstate sessions that is safe when a load
//! balancer sends each request to any instance.
//!
//! [`CachedStore`] wraps any [`SessionStore`](offstate_core::SessionStore)
//! and is one itself, so it composes with every backend and with the
//! middleware. Hot sessions are served from memory; writes go to the
//! backend first; peers are kept coherent by an
//! [`InvalidationChannel`](offstate_core::InvalidationChannel) (Redis
//! pub/sub in offstate-redis), or, without one, by a staleness bound.
//!
//! # Layout
//!
//! - `store`: [`CachedStore`] and its builder: the read and write paths.
//! - `entries`: the cached sessions, a sharded map with a byte budget,
//!   LRU eviction and expiry.
//! - `fences`: what recent invalidations allow a load in flight to cache.
//! - `shared`: the entries, the fences that keep a load in flight from
//!   refilling what was invalidated, the mode, and the announcing of this
//!   instance's writes.
//! - `coherence`: the listener that evicts on peers' invalidations and
//!   falls back to bounded staleness while the channel is down.
//! - `inbox`: the channel's events not yet handled, where a hit can see
//!   which sessions they are about.
//! - `echo`: timing this instance's own announcements on their way back
//!   (`offstate_cache_invalidation_delay_seconds`).
//! - `stats`: [`CacheStats`], also exported through the `metrics` facade
//!   as `offstate_cache_*_total` counters.
//! - `conformance` (feature `conformance`): the public cache conformance
//!   suite every cache configuration runs.
//!
//! # What a logout on one instance means for the others
//!
//! A logout is a `delete` of the session ("log out everywhere" is
//! `revoke_principal`). Each promise below is a test of that name, in
//! tests/failure_modes.rs, in the cache conformance suite
//! (`offstate_cache::conformance`, feature `conformance`, run on memory,
//! Redis, a Redis Cluster and DynamoDB) or in offstate-testing's
//! cache_redis.rs.
//!
//! **On the instance that logs out**
//!
//! - The entry goes before the backend is asked, so a logout in progress
//!   is never served from memory (`a_delete_evicts_locally_before_the_backend_call`,
//!   `a_revoke_evicts_locally_before_the_backend_call`), and a load that
//!   read the session before the logout reached the backend is not cached
//!   after it (`a_load_in_flight_when_the_invalidation_lands_is_not_cached`).
//!   From the logout's answer on, the instance never serves the session
//!   (`a_deleted_session_is_never_served`,
//!   `revoke_evicts_on_every_instance`).
//! - The announcement is part of the call. A store that announces its own
//!   writes ([`Capabilities::announces_writes`](offstate_core::Capabilities),
//!   offstate-redis with a channel) publishes in the same atomic step as
//!   the write, and the cache publishes nothing
//!   (`a_store_that_announces_its_writes_gets_no_second_announcement`).
//!   In front of any other store, the cache publishes after the write and
//!   answers only once the publish was sent or failed
//!   (`a_write_returns_only_after_its_invalidation_is_sent`). Either way,
//!   the client hears "logged out" after the message left for every peer,
//!   and an instance shutting down right after a logout has already sent
//!   it. The price, without a store that announces its writes: a write
//!   waits for its publish, so a slow channel server slows writes down to
//!   the channel's publish timeout. A dead one costs one write one publish
//!   timeout: after that failure the instance falls back, and writes stop
//!   waiting, their messages queued and sent in the background
//!   (`a_dead_channel_costs_one_publish_timeout_not_one_per_write`).
//!
//! **On the other instances, with a live channel (coherent mode)**
//!
//! - A peer evicts the session when it reads the message, and from then on
//!   never serves it, not even from a load that was in flight
//!   (`a_deleted_session_is_never_served`, `revoke_evicts_on_every_instance`,
//!   `a_peer_sees_a_write`).
//! - **No window on one Redis server**: the logout's answer waits until
//!   its message is on every peer's subscriber socket, and from then on a
//!   peer refuses to serve the session from memory.
//!   - On A: the store (offstate-redis with announcements) publishes from
//!     inside the logout's script, and the cache's own publish otherwise;
//!     Redis 7 writes that reply *before* the message to the subscribers
//!     (a raw-socket probe: 4,477 of 20,000 replies arrived first, by up
//!     to 5 ms at load average 5), so a logout (`delete`, `delete_if_version`,
//!     `revoke_principal`, or a published end of session) then sends a
//!     `PING` and returns on its answer, which Redis writes only after
//!     every write of the pass that published (0 of 20,000 then). One more
//!     round trip, on logouts and logins only; saves do not wait.
//!   - On B: every hit asks whether a message about its session is
//!     anywhere between its socket and its cache: unread on the socket (the
//!     Redis channel peeks at it and parses what is there), read by its
//!     tasks but not yet queued
//!     ([`InvalidationChannel::in_transit`](offstate_core::InvalidationChannel::in_transit);
//!     `a_peer_whose_channel_holds_the_message_asks_the_backend`), or queued
//!     and not yet handled
//!     (`a_peer_with_an_unhandled_invalidation_in_its_queue_asks_the_backend`);
//!     if so, it lets its listener handle it for a few turns and otherwise
//!     the backend answers. A message is about the session when it deletes
//!     its key, writes its key at a version newer than the cached one, or
//!     revokes its principal
//!     ([`Invalidation::concerns`](offstate_core::Invalidation::concerns));
//!     what cannot be read as a message counts as about every session:
//!     bytes that are not RESP, a payload that does not decode, a frame
//!     whose key has not arrived yet, more unread bytes than a check
//!     inspects (16 KiB), a Connected or Disconnected event
//!     (`bytes_the_channel_cannot_read_cost_every_hit`). A message about
//!     another session, or this instance's own write coming back at the
//!     version it cached, costs no hit
//!     (`another_sessions_invalidation_on_its_way_does_not_cost_a_hit`,
//!     `another_sessions_invalidation_in_the_queue_does_not_cost_a_hit`,
//!     `a_write_or_revoke_of_this_session_on_its_way_costs_the_hit`; on a
//!     real Redis socket, `only_messages_about_the_session_on_the_socket_cost_its_hit`).
//!     The entry is read first, to know its principal and version; an
//!     eviction that finished between that read and the check is caught
//!     by a count of evictions, and the entry then served only if it is
//!     still there, the same record.
//!   - A message that names a version evicts and fences off only copies
//!     older than it: the echo of an instance's own write, which often
//!     comes back before the write has cached its result, leaves that
//!     result cached
//!     (`the_echo_of_its_own_write_arriving_first_does_not_evict_the_write`),
//!     while a load in flight that read an older version is not cached
//!     (`a_load_in_flight_older_than_an_announced_version_is_not_cached`).
//!
//!   Measured over HTTP with two cart processes (`--cache`) on one Redis, a
//!   fresh session per round cached on B, the logout on A, then at once a
//!   read on B with the old cookie, on a loaded 2-core host (load average 5
//!   to 7): 0 stale answers in 10,000 logouts and 0 in 2,000 "log out
//!   everywhere" (`after_a_logout_on_a_b_never_serves_the_old_session`,
//!   examples/cart/tests/stale.rs, `OFFSTATE_STALE_ROUNDS=full`; CI runs
//!   300 and 100), against 245 and 19 before (164 and 12 with only the
//!   check moved before the read, 10 and 0 with only the socket watched).
//!   B still served over 90 % of its other repeated reads from memory. In
//!   one process with no gap at all between A's answer and B's read: 0 of
//!   2,000 (`logout_on_a_then_at_once_read_on_b`, offstate-testing; 167
//!   with the socket watched but no `PING`, about a third before either).
//! - **What is left**: on a Redis Cluster, a publish reaches the other
//!   nodes over the cluster bus after the answer, so a peer subscribed on
//!   another node may still serve the session for that hop. Where the
//!   channel cannot watch its socket (TLS, a Unix socket, a channel that
//!   does not implement `in_transit`, such as `LocalChannel`), a peer may
//!   serve the session until it has read the message
//!   (`until_a_peer_reads_the_message_it_may_still_serve_the_session`), a
//!   delay that grows with its load. Across hosts, "on B's socket" means
//!   sent to B: the message may be in the network while the client's
//!   request, on a faster path, reaches B.
//! - A channel that drops: every instance empties its cache, counts a
//!   fallback and caches under the staleness bound until the channel is
//!   back (`a_lost_channel_falls_back`); the Redis channel notices a dead
//!   server at once and a paused or partitioned one within its heartbeat
//!   interval plus timeout, about 2 s by default
//!   (`a_lost_channel_falls_back_to_bounded_staleness_and_recovers`). A
//!   logout missed meanwhile is served for at most that detection time plus
//!   the staleness bound. When the channel is back, every load that started
//!   before is fenced off (`a_reconnect_fences_every_load_that_started_before_it`).
//! - A publish that fails (pool timeout, the channel's server gone): the
//!   publishing instance counts it (`publish_failures`, `fallbacks`), runs
//!   on bounded staleness until a publish gets through, and sends the lost
//!   message again before the next one or on reconnect
//!   (`a_publisher_whose_publishes_fail_falls_back_to_bounded_staleness_and_counts_it`,
//!   `a_lost_invalidation_is_sent_again_on_reconnect`). A peer whose own
//!   subscription stays healthy serves the session until that resend, at
//!   most the coherent TTL ([`DEFAULT_COHERENT_TTL`], 30 s) if the channel
//!   never takes a publish again; with a store that announces its writes
//!   this case does not exist, since the write and its message are one step.
//! - A write whose outcome is unknown (its answer was lost): the instance
//!   forgets the session at once
//!   (`a_write_whose_outcome_is_unknown_makes_the_instance_forget_the_session`).
//!   In front of a store that does not announce its writes, the write may
//!   land after the invalidation sent for it; so the instance caches under
//!   the staleness bound for the coherent TTL after it
//!   (`after_an_unknown_outcome_the_instance_serves_a_session_at_most_the_staleness_bound`)
//!   and announces the session again one staleness bound later
//!   (`a_write_whose_outcome_is_unknown_is_announced_again_after_the_staleness_bound`).
//!   The bound for peers: a write that lands within the staleness bound of
//!   its timeout is seen within twice that bound; one that lands later
//!   still (a request stuck in the network for over a second) is seen when
//!   the peer's entry ends, at most the coherent TTL.
//!
//! **Without a channel (bounded mode)**: a peer may serve a logged-out
//! session for up to the staleness bound ([`DEFAULT_STALENESS`], 1 s; its
//! doc says why 1 s), never longer (`bounded_staleness_holds`).
//!
//! In every mode an entry never outlives the session's own deadline
//! (`an_expired_session_is_never_served`), and writes are never lost: they
//! are conditional on the version, a conflict replays on the record the
//! backend returned with it, never on the cached one
//! (`a_conflict_replays_on_the_backend_record_not_the_cached_one`,
//! `concurrent_updates_are_all_kept`), and a slow load never replaces a
//! newer cached version (`a_slow_load_never_replaces_a_newer_cached_version`).
//! Writers of one session on one instance queue in the process before the
//! store (`writers_on_one_instance_take_turns_before_the_store`). A session
//! changed behind the cache's back (not through a `CachedStore` on the same
//! channel, nor by a store that announces its writes) is seen when its
//! entry ends.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
//! use offstate_cache::CachedStore;
//! use offstate_core::{LocalChannel, MemoryStore, Sessions};
//!
//! // In production the channel is offstate_redis's pub/sub channel and the
//! // inner store is a backend shared by every instance.
//! let backend = MemoryStore::new();
//! let channel = LocalChannel::new();
//! let sessions = Sessions::new(
//!     CachedStore::builder(backend).with_channel(channel).build(),
//! );
//! let session = sessions.new_session();
//! session.insert("cart", &["apple"]).await?;
//! session.save().await?;
//! # Ok(()) }
//! ```
//!
//! With Redis for both the sessions and the channel (the channel works as
//! well in front of DynamoDB or memcached, given a Redis URL):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use offstate_cache::CachedStore;
//! use offstate_core::Sessions;
//! use offstate_redis::{RedisConfig, RedisInvalidationChannel, RedisStore};
//!
//! let config = RedisConfig::new("rediss://my-cache.example.com:6379");
//! let store = RedisStore::connect(config.clone()).await?;
//! // Publishes through the store's pool; subscribes on a connection of its own.
//! let channel = RedisInvalidationChannel::from_connection(store.connection().clone(), &config)?;
//! let sessions = Sessions::new(CachedStore::builder(store).with_channel(channel).build());
//! # let _ = sessions;
//! # Ok(()) }
//! ```

mod coherence;
#[cfg(feature = "conformance")]
pub mod conformance;
mod echo;
mod entries;
mod fences;
mod inbox;
mod shared;
mod stats;
mod store;

pub use stats::CacheStats;
pub use store::{
    CachedStore, CachedStoreBuilder, DEFAULT_COHERENT_TTL, DEFAULT_MAX_BYTES, DEFAULT_STALENESS,
};
