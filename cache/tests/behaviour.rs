//! What the cache promises beyond the store contract, on the memory backend
//! (the same promises are checked on real Redis and DynamoDB in tests/).

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use offstate_cache::CachedStore;
use offstate_core::{
    ChannelEvent, Clock, CountingStore, Deadlines, Invalidation, InvalidationChannel, LocalChannel,
    ManualClock, MemoryStore, Record, SessionId, SessionStore, Sessions, StoreError, Timestamp,
};
use tokio::sync::mpsc;

fn record(clock: &dyn Clock, ttl: Duration) -> Record {
    let now = clock.now();
    let mut record = Record::new(now, Deadlines::idle_at(now.saturating_add(ttl)));
    record.data.insert("cart".into(), b"[]".to_vec());
    record
}

async fn coherent(
    backend: impl SessionStore,
    channel: &LocalChannel,
) -> CachedStore<impl SessionStore> {
    let store = CachedStore::builder(backend)
        .with_channel(channel.clone())
        .build();
    for _ in 0..200 {
        if store.is_coherent() {
            return store;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the channel never connected");
}

/// Polls until `check` holds, for at most `limit`; returns how long it took.
async fn eventually<F, Fut>(limit: Duration, mut check: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

#[tokio::test]
async fn a_hit_makes_zero_backend_calls() {
    // Why: the point of the cache is to spare the backend on hot sessions.
    let backend = CountingStore::new(MemoryStore::new());
    let cached = CachedStore::builder(backend.clone())
        .with_staleness(Duration::from_secs(60))
        .build();
    let key = SessionId::generate().key();
    cached
        .create(
            &key,
            &record(&offstate_core::SystemClock, Duration::from_secs(600)),
            offstate_core::Timestamp::now(),
        )
        .await
        .unwrap();
    backend.reset();
    for _ in 0..10 {
        assert!(
            cached
                .load(&key, offstate_core::Timestamp::now())
                .await
                .unwrap()
                .is_some()
        );
    }
    assert_eq!(
        backend.counts().total(),
        0,
        "a cache hit reached the backend"
    );
    assert_eq!(cached.stats().hits, 10);
}

#[tokio::test]
async fn an_expired_session_is_never_served_from_the_cache() {
    // Why: the cache entry may outlive the session; the session's deadline wins.
    let clock = ManualClock::new();
    let backend = MemoryStore::new();
    let cached = CachedStore::builder(backend)
        .with_staleness(Duration::from_secs(3600))
        .build();
    let key = SessionId::generate().key();
    cached
        .create(&key, &record(&clock, Duration::from_secs(60)), clock.now())
        .await
        .unwrap();
    assert!(cached.load(&key, clock.now()).await.unwrap().is_some());
    clock.advance(Duration::from_secs(60));
    assert!(
        cached.load(&key, clock.now()).await.unwrap().is_none(),
        "served an expired session"
    );
}

#[tokio::test]
async fn a_write_on_one_instance_reaches_the_other_through_the_channel() {
    // Why: without sticky routing, B must not keep serving what A changed.
    let backend = MemoryStore::new();
    let channel = LocalChannel::new();
    let a = coherent(backend.clone(), &channel).await;
    let b = coherent(backend.clone(), &channel).await;
    let sessions_a = Sessions::new(a.clone());
    let sessions_b = Sessions::new(b.clone());
    let session = sessions_a.new_session();
    session.insert("n", &1).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    // B caches version 1.
    let seen = sessions_b.load(&id).await.unwrap().unwrap();
    assert_eq!(seen.get::<i32>("n").await.unwrap(), Some(1));

    let write = sessions_a.load(&id).await.unwrap().unwrap();
    write.insert("n", &2).await.unwrap();
    write.save().await.unwrap();
    let delay = eventually(Duration::from_secs(5), || {
        let sessions_b = sessions_b.clone();
        let id = id.clone();
        async move {
            let s = sessions_b.load(&id).await.unwrap().unwrap();
            s.get::<i32>("n").await.unwrap() == Some(2)
        }
    })
    .await
    .expect("B never saw A's write");
    println!("invalidation delay (in-process channel): {delay:?}");
    assert!(b.stats().invalidations_received >= 1);
}

#[tokio::test]
async fn a_delete_on_one_instance_is_never_served_by_the_other() {
    // Why: a logout on one instance must hold on every instance.
    let backend = MemoryStore::new();
    let channel = LocalChannel::new();
    let a = coherent(backend.clone(), &channel).await;
    let b = coherent(backend.clone(), &channel).await;
    let key = SessionId::generate().key();
    a.create(
        &key,
        &record(&offstate_core::SystemClock, Duration::from_secs(600)),
        Timestamp::now(),
    )
    .await
    .unwrap();
    assert!(b.load(&key, Timestamp::now()).await.unwrap().is_some());
    a.delete(&key, Timestamp::now()).await.unwrap();
    eventually(Duration::from_secs(5), || {
        let b = b.clone();
        let key = key.clone();
        async move { b.load(&key, Timestamp::now()).await.unwrap().is_none() }
    })
    .await
    .expect("B kept serving a deleted session");
    // And it stays gone.
    for _ in 0..20 {
        assert!(b.load(&key, Timestamp::now()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn revoking_a_principal_evicts_its_sessions_on_every_instance() {
    // Why: "log out everywhere" has to reach caches too.
    let backend = MemoryStore::new();
    let channel = LocalChannel::new();
    let a = coherent(backend.clone(), &channel).await;
    let b = coherent(backend.clone(), &channel).await;
    let key = SessionId::generate().key();
    let mut rec = record(&offstate_core::SystemClock, Duration::from_secs(600));
    rec.principal = Some("alice".into());
    a.create(&key, &rec, Timestamp::now()).await.unwrap();
    assert!(b.load(&key, Timestamp::now()).await.unwrap().is_some());
    a.revoke_principal("alice", Timestamp::now()).await.unwrap();
    eventually(Duration::from_secs(5), || {
        let b = b.clone();
        let key = key.clone();
        async move { b.load(&key, Timestamp::now()).await.unwrap().is_none() }
    })
    .await
    .expect("B kept serving a revoked session");
}

#[tokio::test]
async fn bounded_mode_honours_the_staleness_bound() {
    // Why: without a channel, the bound is the promise; past it B must ask the backend.
    let backend = MemoryStore::new();
    let bound = Duration::from_millis(300);
    let a = CachedStore::builder(backend.clone())
        .with_staleness(bound)
        .build();
    let b = CachedStore::builder(backend.clone())
        .with_staleness(bound)
        .build();
    let key = SessionId::generate().key();
    a.create(
        &key,
        &record(&offstate_core::SystemClock, Duration::from_secs(600)),
        offstate_core::Timestamp::now(),
    )
    .await
    .unwrap();
    assert!(
        b.load(&key, offstate_core::Timestamp::now())
            .await
            .unwrap()
            .is_some()
    );
    a.delete(&key, offstate_core::Timestamp::now())
        .await
        .unwrap();
    let took = eventually(Duration::from_secs(5), || {
        let b = b.clone();
        let key = key.clone();
        async move {
            b.load(&key, offstate_core::Timestamp::now())
                .await
                .unwrap()
                .is_none()
        }
    })
    .await
    .expect("B served the deleted session past the bound");
    // Slack for a loaded 2-core machine; the bug this catches is "served
    // until the session's own deadline", minutes away.
    assert!(
        took <= bound + Duration::from_millis(500),
        "the deleted session was visible for {took:?}, bound {bound:?}"
    );
}

/// A channel the test drives by hand, to cut it and bring it back.
#[derive(Clone, Default)]
struct Switchboard {
    subscribers: Arc<Mutex<Vec<mpsc::Sender<ChannelEvent>>>>,
}

impl Switchboard {
    async fn send(&self, event: ChannelEvent) {
        let subscribers = self.subscribers.lock().unwrap().clone();
        for s in subscribers {
            s.send(event.clone()).await.unwrap();
        }
    }
}

impl InvalidationChannel for Switchboard {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        self.send(ChannelEvent::Message(message.clone())).await;
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent> {
        let (tx, rx) = mpsc::channel(64);
        self.subscribers.lock().unwrap().push(tx);
        rx
    }
}

#[tokio::test]
async fn a_lost_channel_falls_back_to_bounded_staleness_and_recovers() {
    // Why: missed invalidations must not turn into stale reads for the coherent TTL.
    let board = Switchboard::default();
    let cached = CachedStore::builder(MemoryStore::new())
        .with_channel(board.clone())
        .build();
    board.send(ChannelEvent::Connected).await;
    eventually(Duration::from_secs(2), || async { cached.is_coherent() })
        .await
        .expect("connected");
    let key = SessionId::generate().key();
    cached
        .create(
            &key,
            &record(&offstate_core::SystemClock, Duration::from_secs(600)),
            offstate_core::Timestamp::now(),
        )
        .await
        .unwrap();
    cached.run_pending_tasks().await;
    assert_eq!(cached.entry_count(), 1);

    board.send(ChannelEvent::Disconnected).await;
    eventually(Duration::from_secs(2), || async { !cached.is_coherent() })
        .await
        .expect("fell back");
    cached.run_pending_tasks().await;
    assert_eq!(
        cached.entry_count(),
        0,
        "entries cached under the coherent TTL survived the loss"
    );
    assert_eq!(cached.stats().fallbacks, 1);

    board.send(ChannelEvent::Connected).await;
    eventually(Duration::from_secs(2), || async { cached.is_coherent() })
        .await
        .expect("coherent again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_updates_over_two_cached_instances_lose_nothing() {
    // Why: a stale cached read must turn into a conflict and a retry, never a lost item.
    let backend = MemoryStore::new();
    let channel = LocalChannel::new();
    let a = Sessions::new(coherent(backend.clone(), &channel).await).with_max_attempts(10_000);
    let b = Sessions::new(
        CachedStore::builder(backend.clone())
            .with_staleness(Duration::from_secs(5))
            .build(),
    )
    .with_max_attempts(10_000);
    let session = a.new_session();
    session.insert("cart", &Vec::<u32>::new()).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    let mut tasks = Vec::new();
    for t in 0..50u32 {
        let sessions = if t % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for u in 0..20u32 {
                let s = offstate_core::middleware::open(&sessions, Some(id.clone()));
                let item = t * 100 + u;
                s.update("cart", move |c: Option<Vec<u32>>| {
                    let mut c = c.unwrap_or_default();
                    c.push(item);
                    Some(c)
                })
                .await
                .unwrap();
                s.save().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cart: Vec<u32> = Sessions::new(backend)
        .load(&id)
        .await
        .unwrap()
        .unwrap()
        .get("cart")
        .await
        .unwrap()
        .unwrap();
    let mut sorted = cart.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(cart.len(), 1000, "lost updates");
    assert_eq!(sorted.len(), 1000, "duplicated updates");
}

#[tokio::test]
async fn capacity_is_bounded_in_bytes() {
    // Why: a flood of sessions must not grow the cache past its budget.
    let budget = 200_000;
    let cached = CachedStore::builder(MemoryStore::new())
        .with_max_bytes(budget)
        .with_staleness(Duration::from_secs(60))
        .build();
    for _ in 0..500 {
        let key = SessionId::generate().key();
        let mut rec = record(&offstate_core::SystemClock, Duration::from_secs(600));
        rec.data.insert("blob".into(), vec![b'x'; 2_000]);
        cached
            .create(&key, &rec, offstate_core::Timestamp::now())
            .await
            .unwrap();
    }
    cached.run_pending_tasks().await;
    assert!(
        cached.weighted_size() <= budget,
        "cache holds {} bytes",
        cached.weighted_size()
    );
    assert!(cached.entry_count() > 0);
    assert!(cached.stats().evictions > 0);
}
