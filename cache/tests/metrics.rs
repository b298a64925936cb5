//! The cache's metrics under a test recorder: hits, misses, evictions by
//! cause, invalidations, how long a fallback lasted, and how long this
//! instance's own announcements take to come back.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use offstate_cache::CachedStore;
use offstate_core::{
    Change, ChannelEvent, Deadlines, Invalidation, InvalidationChannel, MemoryStore, Record,
    SaveOutcome, SessionId, SessionStore, StoreError, Timestamp, Version,
};
use tokio::sync::mpsc;

/// A channel the test drives by hand.
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

fn record(bytes: usize) -> Record {
    let now = Timestamp::now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(600))),
    );
    record.data.insert("blob".into(), vec![b'x'; bytes]);
    record
}

/// Lets the listener task (same thread) handle what was sent.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[test]
fn the_cache_counts_hits_misses_evictions_invalidations_and_fallback_time() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let board = Switchboard::default();
            let cached = CachedStore::builder(MemoryStore::new())
                .with_max_bytes(20_000)
                .with_channel(board.clone())
                .build();
            board.send(ChannelEvent::Connected).await;
            settle().await;
            assert!(cached.is_coherent());

            let key = SessionId::generate().key();
            let now = Timestamp::now();
            cached.create(&key, &record(10), now).await.unwrap();
            assert!(cached.load(&key, now).await.unwrap().is_some()); // hit
            let unknown = SessionId::generate().key();
            assert!(cached.load(&unknown, now).await.unwrap().is_none()); // miss
            // A peer's write: one invalidation received.
            board
                .send(ChannelEvent::Message(Invalidation::Key {
                    key: key.clone(),
                    version: None,
                }))
                .await;
            settle().await;

            // The channel drops, then comes back.
            board.send(ChannelEvent::Disconnected).await;
            settle().await;
            assert!(!cached.is_coherent());
            board.send(ChannelEvent::Connected).await;
            settle().await;
            assert!(cached.is_coherent());

            // Over the byte budget: evictions for size.
            for _ in 0..40 {
                let key = SessionId::generate().key();
                cached.create(&key, &record(2_000), now).await.unwrap();
            }
            cached.run_pending_tasks().await;
            assert!(cached.stats().evictions > 0);
        });
    });
    let recorded = snapshotter.snapshot().into_hashmap();
    let value = |name: &str, labels: &[(&str, &str)]| {
        recorded
            .iter()
            .find(|(key, _)| {
                let k = key.key();
                let have: Vec<_> = k.labels().map(|l| (l.key(), l.value())).collect();
                k.name() == name && have == labels
            })
            .map(|(_, (_, _, value))| value)
            .unwrap_or_else(|| panic!("{name} {labels:?} was not recorded"))
    };
    assert_eq!(
        value("offstate_cache_hits_total", &[]),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("offstate_cache_misses_total", &[]),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("offstate_cache_invalidations_received_total", &[]),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        value("offstate_cache_fallbacks_total", &[]),
        &DebugValue::Counter(1)
    );
    let DebugValue::Gauge(active) = value("offstate_cache_fallback_active", &[]) else {
        panic!("not a gauge")
    };
    assert_eq!((*active).into_inner(), 0.0, "coherent again");
    let DebugValue::Histogram(episodes) = value("offstate_cache_fallback_duration_seconds", &[])
    else {
        panic!("not a histogram")
    };
    assert_eq!(episodes.len(), 1, "one fallback, timed once");
    let DebugValue::Counter(evicted) =
        value("offstate_cache_evictions_total", &[("cause", "size")])
    else {
        panic!("not a counter")
    };
    assert!(*evicted > 0);
}

/// A channel whose publishes wait in an outbox until the test delivers
/// them, as a message on its way through Redis would.
#[derive(Clone, Default)]
struct Mailbag {
    board: Switchboard,
    outbox: Arc<Mutex<Vec<Invalidation>>>,
}

impl InvalidationChannel for Mailbag {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        self.outbox.lock().unwrap().push(message.clone());
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent> {
        self.board.subscribe()
    }
}

#[test]
fn the_cache_times_its_own_announcements_on_their_way_back() {
    // Issue 18: from a write's return to its announcement coming back
    // through the subscription, without changing the wire form.
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || {
        runtime.block_on(async {
            let bag = Mailbag::default();
            let cached = CachedStore::builder(MemoryStore::new())
                .with_channel(bag.clone())
                .build();
            bag.board.send(ChannelEvent::Connected).await;
            settle().await;
            assert!(cached.is_coherent());
            let key = SessionId::generate().key();
            let now = Timestamp::now();
            cached.create(&key, &record(10), now).await.unwrap();
            let mut change = Change::new(Version::new(1), record(10).deadlines);
            change.set.insert("n".into(), b"1".to_vec());
            let saved = cached.save(&key, &change, now).await.unwrap();
            assert_eq!(saved, SaveOutcome::Saved(Version::new(2)));
            cached
                .delete(&SessionId::generate().key(), now)
                .await
                .unwrap();
            // Both announcements come back 5 ms and 7 ms after their writes.
            tokio::time::advance(Duration::from_millis(5)).await;
            let sent = std::mem::take(&mut *bag.outbox.lock().unwrap());
            assert_eq!(sent.len(), 2);
            bag.board.send(ChannelEvent::Message(sent[0].clone())).await;
            settle().await;
            tokio::time::advance(Duration::from_millis(2)).await;
            bag.board.send(ChannelEvent::Message(sent[1].clone())).await;
            settle().await;
            // A peer's write, and the same announcement again: not timed.
            bag.board
                .send(ChannelEvent::Message(Invalidation::Key {
                    key: SessionId::generate().key(),
                    version: Some(Version::new(3)),
                }))
                .await;
            bag.board.send(ChannelEvent::Message(sent[0].clone())).await;
            settle().await;
            assert_eq!(cached.stats().invalidations_received, 4);
        });
    });
    let recorded = snapshotter.snapshot().into_hashmap();
    let (_, (_, _, delays)) = recorded
        .iter()
        .find(|(key, _)| key.key().name() == "offstate_cache_invalidation_delay_seconds")
        .expect("the delay was not recorded");
    let DebugValue::Histogram(delays) = delays else {
        panic!("not a histogram")
    };
    let delays: Vec<f64> = delays.iter().map(|d| d.into_inner()).collect();
    assert_eq!(delays.len(), 2, "{delays:?}");
    assert!((delays[0] - 0.005).abs() < 1e-6, "{delays:?}");
    assert!((delays[1] - 0.007).abs() < 1e-6, "{delays:?}");
}
