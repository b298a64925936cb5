//! The public cache conformance suite: one async function per behaviour a
//! coherent (or bounded) cache promises across instances, run by every
//! cache configuration (feature `conformance`).
//!
//! Why this file is long: it is the cache contract in executable form, one
//! function per promise with the helpers they share; split, the promises
//! would no longer read as one list.
//!
//! A configuration's tests implement [`CacheHarness`] (how to reach the
//! shared backend, and how to open a channel to the other instances, if
//! there is one) and call
//! [`cache_conformance_tests!`](crate::cache_conformance_tests), which
//! writes one test per case, so a failure names the behaviour:
//!
//! ```
//! use offstate_cache::conformance::CacheHarness;
//! use offstate_core::{LocalChannel, MemoryStore};
//!
//! #[derive(Default)]
//! struct Local(MemoryStore, LocalChannel);
//!
//! impl CacheHarness for Local {
//!     type Store = MemoryStore;
//!     type Channel = LocalChannel;
//!     async fn store(&self) -> MemoryStore {
//!         self.0.clone()
//!     }
//!     async fn channel(&self) -> Option<LocalChannel> {
//!         Some(self.1.clone()) // None: bounded staleness only
//!     }
//! }
//!
//! // In a test file this writes one #[test] per case:
//! offstate_cache::cache_conformance_tests!(async { Local::default() });
//! # fn main() {}
//! ```
//!
//! Each instance the suite builds is one app instance: a [`CachedStore`]
//! over a [`CountingStore`] over a new client of the shared backend, with
//! its own channel wrapped in a switch the suite can cut. Cases use fresh
//! random keys and principals, so they may share one backend and run in
//! parallel. Delays are printed (`--nocapture`); bounds are checked with
//! slack for a loaded machine, since the bugs they catch are "served until
//! the coherent TTL" or "until the session's own deadline", not lateness.

// This module is a test suite: a panic here is a failing test, which is its job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use offstate_core::conformance::{assert_cart_complete, fill_one_cart_concurrently};
use offstate_core::{
    ChannelEvent, Clock, CountingStore, Deadlines, Invalidation, InvalidationChannel, ManualClock,
    Record, SessionId, SessionStore, Sessions, StoreError,
};
use tokio::sync::mpsc;

use crate::CachedStore;

/// What the suite needs from a cache configuration's test set-up.
pub trait CacheHarness: Send + Sync + 'static {
    /// The backend behind the caches.
    type Store: SessionStore;
    /// The channel between the caches (any type when there is none).
    type Channel: InvalidationChannel;

    /// A new client of the shared backend: two calls give two clients that
    /// see the same sessions, as two app instances would.
    fn store(&self) -> impl Future<Output = Self::Store> + Send;

    /// A new connection to the channel the instances share, or `None` when
    /// the configuration runs on bounded staleness alone.
    fn channel(&self) -> impl Future<Output = Option<Self::Channel>> + Send;
}

/// Writes one `#[test]` per cache conformance case for a harness.
///
/// The argument is an `async` expression that yields the harness; it is
/// evaluated once per case.
#[macro_export]
macro_rules! cache_conformance_tests {
    ($make:expr) => {
        $crate::__cache_conformance_cases!($make;
            a_hit_costs_no_store_call,
            an_expired_session_is_never_served,
            a_peer_sees_a_write,
            a_deleted_session_is_never_served,
            revoke_evicts_on_every_instance,
            bounded_staleness_holds,
            a_lost_channel_falls_back,
            concurrent_updates_are_all_kept,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cache_conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                ::offstate_core::conformance::run(async {
                    let harness = $make.await;
                    $crate::conformance::$case(&harness).await;
                });
            }
        )*
    };
}

/// The staleness bound of the suite's bounded instances.
pub const STALENESS: Duration = Duration::from_millis(300);
/// Slack on every time bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(1);
/// Limit for "soon" (a message arriving, a channel connecting): a bug
/// shows as never, not as late.
const SOON: Duration = Duration::from_secs(15);
/// A staleness bound no case waits out: only a message can make a peer
/// with it see a change in time.
const FOREVER: Duration = Duration::from_secs(600);

/// One app instance as the suite builds it.
pub type Instance<H> = CachedStore<CountingStore<<H as CacheHarness>::Store>>;

/// An instance with its channel's switch.
struct Node<H: CacheHarness> {
    cache: Instance<H>,
    counted: CountingStore<H::Store>,
    switch: Option<Switch>,
}

/// Builds an instance: staleness `bound`, the harness's channel (if any)
/// behind a switch, connected before it is returned.
async fn node<H: CacheHarness>(h: &H, bound: Duration) -> Node<H> {
    let counted = CountingStore::new(h.store().await);
    let builder = CachedStore::builder(counted.clone()).with_staleness(bound);
    let (cache, switch) = match h.channel().await {
        Some(channel) => {
            let switched = Switched::new(channel);
            let switch = switched.switch.clone();
            (builder.with_channel(switched).build(), Some(switch))
        }
        None => (builder.build(), None),
    };
    if switch.is_some() {
        wait_until(SOON, || cache.is_coherent())
            .await
            .expect("the invalidation channel never connected");
    }
    Node {
        cache,
        counted,
        switch,
    }
}

/// Polls `check` until it holds, for at most `limit`; how long it took.
async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Polls `sessions` until `id` reads as `want`; how long that took.
async fn until_served(
    sessions: &Sessions,
    id: &SessionId,
    want: Option<u32>,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let seen = value(sessions, id).await;
        if seen == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "still served {seen:?} (want {want:?}) after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn value(sessions: &Sessions, id: &SessionId) -> Option<u32> {
    let session = sessions.load(id).await.expect("load")?;
    session.get::<u32>("n").await.expect("get")
}

async fn set(sessions: &Sessions, id: &SessionId, n: u32) {
    let session = sessions.load(id).await.expect("load").expect("live");
    session.insert("n", &n).await.expect("insert");
    session.save().await.expect("save");
}

async fn new_session(sessions: &Sessions, principal: Option<&str>) -> SessionId {
    let session = sessions.new_session();
    session.insert("n", &0u32).await.expect("insert");
    if let Some(principal) = principal {
        session.set_principal(principal).await.expect("principal");
    }
    session.save().await.expect("create");
    session.id().expect("created")
}

/// Loads `id` through `node` twice and checks the second was a hit. A
/// cache refuses hits while an invalidation is on its way to it (a peer's
/// earlier write, a heartbeat), so each try first waits until it has
/// handled what it was sent.
async fn cached_on<H: CacheHarness>(node: &Node<H>, sessions: &Sessions, id: &SessionId, n: u32) {
    for _ in 0..20 {
        let start = Instant::now();
        while node.cache.has_pending_invalidations() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "the instance never handled its invalidations"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(value(sessions, id).await, Some(n));
        let hits = node.cache.stats().hits;
        assert_eq!(value(sessions, id).await, Some(n));
        if node.cache.stats().hits > hits {
            return;
        }
    }
    panic!("the instance did not cache the session");
}

/// The limit within which a peer must see a change: soon with a channel
/// (its staleness is too long to matter), the bound plus slack without.
fn limit<H: CacheHarness>(peer: &Node<H>) -> Duration {
    if peer.switch.is_some() {
        SOON
    } else {
        STALENESS + SLACK
    }
}

/// Staleness for instances of the peer cases: with a channel, too long to
/// matter, so only a message explains what the peer sees.
fn peer_bound(coherent: bool) -> Duration {
    if coherent { FOREVER } else { STALENESS }
}

async fn has_channel<H: CacheHarness>(h: &H) -> bool {
    h.channel().await.is_some()
}

/// Loads answered from the cache make no call to the backend.
pub async fn a_hit_costs_no_store_call<H: CacheHarness>(h: &H) {
    let a = node(h, FOREVER).await;
    let sessions = Sessions::new(a.cache.clone());
    let id = new_session(&sessions, None).await;
    assert_eq!(value(&sessions, &id).await, Some(0));
    a.counted.reset();
    let hits = a.cache.stats().hits;
    for _ in 0..100 {
        assert_eq!(value(&sessions, &id).await, Some(0));
    }
    assert_eq!(
        a.counted.counts().total(),
        0,
        "a cache hit reached the backend"
    );
    assert_eq!(a.cache.stats().hits - hits, 100);
}

/// The session's own deadline wins over any cache lifetime.
pub async fn an_expired_session_is_never_served<H: CacheHarness>(h: &H) {
    let a = node(h, FOREVER).await;
    let clock = ManualClock::new();
    let key = SessionId::generate().key();
    let now = clock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(60))),
    );
    record.data.insert("n".into(), b"0".to_vec());
    a.cache.create(&key, &record, now).await.expect("create");
    clock.advance(Duration::from_secs(59));
    assert!(
        a.cache
            .load(&key, clock.now())
            .await
            .expect("load")
            .is_some()
    );
    let hits = a.cache.stats().hits;
    assert!(hits >= 1, "the session was not served from the cache");
    clock.advance(Duration::from_secs(1));
    assert!(
        a.cache
            .load(&key, clock.now())
            .await
            .expect("load")
            .is_none(),
        "served an expired session"
    );
    assert_eq!(
        a.cache.stats().hits,
        hits,
        "the expired load counted as a hit"
    );
}

/// A write on one instance is served by another: at once when its message
/// arrives (with a channel), within the staleness bound without one.
pub async fn a_peer_sees_a_write<H: CacheHarness>(h: &H) {
    let bound = peer_bound(has_channel(h).await);
    let (a, b) = (node(h, bound).await, node(h, bound).await);
    let (sa, sb) = (
        Sessions::new(a.cache.clone()),
        Sessions::new(b.cache.clone()),
    );
    let id = new_session(&sa, None).await;
    let mut delays = Vec::new();
    for n in 1..=10u32 {
        cached_on(&b, &sb, &id, n - 1).await;
        set(&sa, &id, n).await;
        delays.push(until_served(&sb, &id, Some(n), limit(&b)).await);
    }
    println!(
        "{}: A's write returned -> B serves it: {delays:?}",
        std::any::type_name::<H>()
    );
    if b.switch.is_some() {
        assert!(b.cache.stats().invalidations_received >= 10);
    }
}

/// A logout (delete) on one instance: the other stops serving the session
/// (when the message arrives, or within the bound) and never serves it
/// again.
pub async fn a_deleted_session_is_never_served<H: CacheHarness>(h: &H) {
    let bound = peer_bound(has_channel(h).await);
    let (a, b) = (node(h, bound).await, node(h, bound).await);
    let (sa, sb) = (
        Sessions::new(a.cache.clone()),
        Sessions::new(b.cache.clone()),
    );
    let id = new_session(&sa, None).await;
    cached_on(&b, &sb, &id, 0).await;
    let session = sa.load(&id).await.expect("load").expect("live");
    session.delete().await.expect("delete");
    // A itself never serves it again, not even once.
    assert_eq!(value(&sa, &id).await, None, "A served its own logout");
    let took = until_served(&sb, &id, None, limit(&b)).await;
    println!(
        "{}: delete on A -> gone on B after {took:?}",
        std::any::type_name::<H>()
    );
    for _ in 0..50 {
        assert_eq!(
            value(&sb, &id).await,
            None,
            "B served a deleted session again"
        );
        assert_eq!(
            value(&sa, &id).await,
            None,
            "A served a deleted session again"
        );
    }
}

/// "Log out everywhere" evicts the principal's sessions on every instance.
pub async fn revoke_evicts_on_every_instance<H: CacheHarness>(h: &H) {
    let bound = peer_bound(has_channel(h).await);
    let (a, b) = (node(h, bound).await, node(h, bound).await);
    let (sa, sb) = (
        Sessions::new(a.cache.clone()),
        Sessions::new(b.cache.clone()),
    );
    let principal = format!("carol-{}", &SessionId::generate().to_string()[..12]);
    let ids = [
        new_session(&sa, Some(&principal)).await,
        new_session(&sa, Some(&principal)).await,
    ];
    for id in &ids {
        cached_on(&a, &sa, id, 0).await;
        cached_on(&b, &sb, id, 0).await;
    }
    sa.revoke_principal(&principal).await.expect("revoke");
    for id in &ids {
        assert_eq!(value(&sa, id).await, None, "A served a session it revoked");
        let took = until_served(&sb, id, None, limit(&b)).await;
        println!(
            "{}: revoke on A -> gone on B after {took:?}",
            std::any::type_name::<H>()
        );
    }
    for _ in 0..20 {
        for id in &ids {
            assert_eq!(
                value(&sb, id).await,
                None,
                "B served a revoked session again"
            );
        }
    }
}

/// Without a channel, a peer serves a change or a logout for at most the
/// staleness bound: past it, it asks the backend.
pub async fn bounded_staleness_holds<H: CacheHarness>(h: &H) {
    let a = bounded(h).await;
    let b = bounded(h).await;
    let (sa, sb) = (
        Sessions::new(a.cache.clone()),
        Sessions::new(b.cache.clone()),
    );
    let id = new_session(&sa, None).await;
    let mut took = Vec::new();
    for n in 1..=3u32 {
        cached_on(&b, &sb, &id, n - 1).await;
        set(&sa, &id, n).await;
        took.push(until_served(&sb, &id, Some(n), STALENESS + SLACK).await);
    }
    cached_on(&b, &sb, &id, 3).await;
    sa.load(&id)
        .await
        .expect("load")
        .expect("live")
        .delete()
        .await
        .expect("delete");
    took.push(until_served(&sb, &id, None, STALENESS + SLACK).await);
    println!(
        "{}: bounded ({STALENESS:?}), change or delete on A -> on B: {took:?}",
        std::any::type_name::<H>()
    );
    assert!(!a.cache.is_coherent() && !b.cache.is_coherent());
}

/// An instance without a channel: what `node` builds when the harness
/// has none.
async fn bounded<H: CacheHarness>(h: &H) -> Node<H> {
    let counted = CountingStore::new(h.store().await);
    let cache = CachedStore::builder(counted.clone())
        .with_staleness(STALENESS)
        .build();
    Node {
        cache,
        counted,
        switch: None,
    }
}

/// When the channel is lost, an instance empties its cache, counts a
/// fallback, serves peers' changes within the staleness bound, and turns
/// coherent again when the channel is back. (Without a channel the
/// instance is on bounded staleness from the start.)
pub async fn a_lost_channel_falls_back<H: CacheHarness>(h: &H) {
    let (a, b) = (node(h, STALENESS).await, node(h, STALENESS).await);
    let (sa, sb) = (
        Sessions::new(a.cache.clone()),
        Sessions::new(b.cache.clone()),
    );
    let id = new_session(&sa, None).await;
    cached_on(&b, &sb, &id, 0).await;
    let Some(switch) = &b.switch else {
        assert!(!b.cache.is_coherent(), "coherent without a channel");
        set(&sa, &id, 1).await;
        until_served(&sb, &id, Some(1), STALENESS + SLACK).await;
        return;
    };
    let fallbacks = b.cache.stats().fallbacks;
    switch.cut();
    wait_until(SOON, || !b.cache.is_coherent())
        .await
        .expect("B never noticed the lost channel");
    assert_eq!(b.cache.stats().fallbacks, fallbacks + 1);
    b.cache.run_pending_tasks().await;
    assert_eq!(
        b.cache.entry_count(),
        0,
        "entries cached under the coherent TTL survived"
    );
    // Messages no longer reach B: the bound does.
    for n in 1..=3u32 {
        cached_on(&b, &sb, &id, n - 1).await;
        set(&sa, &id, n).await;
        until_served(&sb, &id, Some(n), STALENESS + SLACK).await;
    }
    switch.heal();
    wait_until(SOON, || b.cache.is_coherent())
        .await
        .expect("B never turned coherent again");
    let received = b.cache.stats().invalidations_received;
    set(&sa, &id, 4).await;
    until_served(&sb, &id, Some(4), SOON).await;
    wait_until(SOON, || b.cache.stats().invalidations_received > received)
        .await
        .expect("no invalidation after the channel came back");
}

/// Ten writers on each of two instances, twenty updates each, on one
/// session: every update is kept, none twice.
pub async fn concurrent_updates_are_all_kept<H: CacheHarness>(h: &H) {
    const TASKS: usize = 20;
    const UPDATES: usize = 10;
    let bound = STALENESS;
    let (a, b) = (node(h, bound).await, node(h, bound).await);
    let sa = Sessions::new(a.cache.clone()).with_max_attempts(1000);
    let sb = Sessions::new(b.cache.clone()).with_max_attempts(1000);
    let id = fill_one_cart_concurrently(&sa, &sb, TASKS, UPDATES).await;
    let fresh = Sessions::new(h.store().await);
    assert_cart_complete(&fresh, &id, TASKS * UPDATES).await;
    println!(
        "{}: A {:?}, B {:?}",
        std::any::type_name::<H>(),
        a.cache.stats(),
        b.cache.stats()
    );
}

/// A channel behind a switch: cut, it reports `Disconnected`, drops what
/// arrives and refuses publishes; healed, it reports `Connected` again.
struct Switched<C> {
    inner: C,
    switch: Switch,
}

/// The suite's handle on a [`Switched`] channel.
#[derive(Clone, Default)]
struct Switch {
    state: Arc<Mutex<SwitchState>>,
}

#[derive(Default)]
struct SwitchState {
    cut: bool,
    subscribers: Vec<mpsc::Sender<ChannelEvent>>,
}

impl Switch {
    fn lock(&self) -> std::sync::MutexGuard<'_, SwitchState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_cut(&self) -> bool {
        self.lock().cut
    }

    fn cut(&self) {
        self.set(true, ChannelEvent::Disconnected);
    }

    fn heal(&self) {
        self.set(false, ChannelEvent::Connected);
    }

    fn set(&self, cut: bool, event: ChannelEvent) {
        let mut state = self.lock();
        state.cut = cut;
        for s in &state.subscribers {
            // Room is plenty: the listener drains as fast as it can.
            let _ = s.try_send(event.clone());
        }
    }
}

impl<C: InvalidationChannel> Switched<C> {
    fn new(inner: C) -> Self {
        Self {
            inner,
            switch: Switch::default(),
        }
    }
}

impl<C: InvalidationChannel> InvalidationChannel for Switched<C> {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        if self.switch.is_cut() {
            return Err(StoreError::unavailable(
                "the suite cut the invalidation channel",
            ));
        }
        self.inner.publish(message).await
    }

    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent> {
        let mut incoming = self.inner.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        self.switch.lock().subscribers.push(tx.clone());
        let switch = self.switch.clone();
        let forward = async move {
            while let Some(event) = incoming.recv().await {
                if switch.is_cut() {
                    continue;
                }
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(forward);
            }
            Err(_) => panic!("the cache conformance suite runs inside a tokio runtime"),
        }
        rx
    }
}
