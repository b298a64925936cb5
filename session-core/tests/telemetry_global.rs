//! Under a global recorder, `offstate_core::telemetry` registers each
//! handle once and records through it: the same series and counts as the
//! `metrics` macros' path (a recorder set for the thread), a second run
//! records the same and registers nothing new, and a thread's own recorder still gets its
//! metrics and none of them reach the global one.
//!
//! The recorder is process-wide, and the handle table looks for it at the
//! first metric recorded: this file holds one test.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use offstate_core::middleware;
use offstate_core::telemetry::{self, RefusedInput};
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{ManualClock, MemoryStore, OutagePolicy, Sessions};

/// A debugging recorder that counts the handles it is asked to register.
struct CountingRegistrations {
    inner: DebuggingRecorder,
    registered: Arc<AtomicUsize>,
}

impl Recorder for CountingRegistrations {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.registered.fetch_add(1, Ordering::SeqCst);
        self.inner.register_counter(key, metadata)
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.registered.fetch_add(1, Ordering::SeqCst);
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.registered.fetch_add(1, Ordering::SeqCst);
        self.inner.register_histogram(key, metadata)
    }
}

/// A series: kind, name, sorted labels.
type Series = (String, String, Vec<(String, String)>);

/// What a snapshot holds, comparable across runs: counters' values,
/// histograms' samples (latencies: only how many, their values vary).
#[derive(Debug, PartialEq)]
enum Value {
    Counter(u64),
    Samples(Vec<f64>),
    Count(usize),
}

fn take(snapshotter: &Snapshotter) -> BTreeMap<Series, Value> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let (kind, key) = key.into_parts();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            let name = key.name().to_owned();
            let value = match value {
                DebugValue::Counter(n) => Value::Counter(n),
                DebugValue::Histogram(samples) if name == telemetry::STORE_CALL_DURATION => {
                    Value::Count(samples.len())
                }
                DebugValue::Histogram(samples) => {
                    Value::Samples(samples.iter().map(|s| s.into_inner()).collect())
                }
                DebugValue::Gauge(g) => panic!("{name} is a gauge: {g:?}"),
            };
            assert_ne!(kind, MetricKind::Gauge);
            ((format!("{kind:?}"), name, labels), value)
        })
        .collect()
}

fn counters(snapshot: &BTreeMap<Series, Value>) -> BTreeMap<&Series, u64> {
    snapshot
        .iter()
        .filter_map(|(series, value)| match value {
            Value::Counter(n) => Some((series, *n)),
            _ => None,
        })
        .collect()
}

/// Every metric of the table, at least once.
async fn flow() {
    let clock = ManualClock::new();
    let store = FaultyStore::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));

    let session = sessions.new_session();
    session.insert("cart", &["apple"]).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();

    // A coalesced touch, then a written one.
    let read = middleware::open(&sessions, [id.clone()]);
    assert!(read.exists().await.unwrap());
    middleware::finish(&read).await;
    clock.advance(Duration::from_secs(10 * 60));
    let read = middleware::open(&sessions, [id.clone()]);
    assert!(read.exists().await.unwrap());
    middleware::finish(&read).await;

    // A conflict, replayed; then one that gives up. The writers are on two
    // instances: on one, they take turns and do not conflict.
    let other = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));
    let first = sessions.load(&id).await.unwrap().unwrap();
    let second = other.load(&id).await.unwrap().unwrap();
    first.insert("a", &1).await.unwrap();
    second.insert("b", &2).await.unwrap();
    first.save().await.unwrap();
    second.save().await.unwrap();
    let slow = sessions
        .clone()
        .with_max_attempts(1)
        .load(&id)
        .await
        .unwrap()
        .unwrap();
    let fast = other.load(&id).await.unwrap().unwrap();
    fast.insert("c", &3).await.unwrap();
    fast.save().await.unwrap();
    slow.insert("d", &4).await.unwrap();
    assert!(slow.save().await.is_err());

    // Log in (a rotation), the old ID is gone, log out.
    let login = sessions.load(&id).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    assert!(sessions.load(&id).await.unwrap().is_none());
    let logged_in = login.id().unwrap();
    let bob = sessions.new_session();
    bob.set_principal("bob").await.unwrap();
    bob.save().await.unwrap();
    assert_eq!(sessions.revoke_principal("bob").await.unwrap(), 1);

    // Outages: fail closed, fail open.
    store.inject(Call::Load, Fault::Unavailable);
    assert!(sessions.load(&logged_in).await.is_err());
    let open = sessions.clone().with_outage_policy(OutagePolicy::FailOpen);
    store.inject(Call::Load, Fault::TimeoutBefore);
    let degraded = middleware::open(&open, [logged_in.clone()]);
    assert!(!degraded.exists().await.unwrap());
    sessions
        .load(&logged_in)
        .await
        .unwrap()
        .unwrap()
        .delete()
        .await
        .unwrap();

    RefusedInput::Malformed.record();
}

fn block_on_flow() {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap()
        .block_on(flow());
}

#[test]
fn a_global_recorder_gets_the_same_series_through_handles_registered_once() {
    let global = DebuggingRecorder::new();
    let global_snapshots = global.snapshotter();
    let registered = Arc::new(AtomicUsize::new(0));
    metrics::set_global_recorder(CountingRegistrations {
        inner: global,
        registered: Arc::clone(&registered),
    })
    .unwrap();

    block_on_flow();
    let once = take(&global_snapshots);
    let registrations = registered.load(Ordering::SeqCst);
    for name in telemetry::CORE_METRICS {
        assert!(
            once.keys().any(|(_, n, _)| n == name),
            "{name} was never recorded"
        );
    }
    assert_eq!(
        registrations,
        once.len(),
        "one registration per series, not one per call"
    );

    // Again (a snapshot drains what it reads): the same again, and
    // nothing is registered again.
    block_on_flow();
    assert_eq!(take(&global_snapshots), once);
    assert_eq!(registered.load(Ordering::SeqCst), registrations);

    // A thread's own recorder: the macros' path, the same series and
    // counts as the first global run, and nothing of it reaches the
    // global recorder.
    let local = DebuggingRecorder::new();
    let local_snapshots = local.snapshotter();
    metrics::with_local_recorder(&local, block_on_flow);
    assert_eq!(take(&local_snapshots), once);
    assert_eq!(registered.load(Ordering::SeqCst), registrations);
    let global_after = take(&global_snapshots);
    assert!(
        counters(&global_after).values().all(|&n| n == 0),
        "the local run reached the global recorder: {global_after:?}"
    );
}
