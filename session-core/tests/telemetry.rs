//! The metrics of `offstate_core::telemetry`: a scripted flow under a
//! test recorder gives exactly the counts the table promises.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::{CompositeKey, MetricKind};
use offstate_core::middleware;
use offstate_core::telemetry::{self, RefusedInput};
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{ManualClock, MemoryStore, OutagePolicy, SessionError, Sessions};

/// Every metric recorded, as (kind, name, sorted labels, value).
struct Recorded(Vec<(CompositeKey, DebugValue)>);

impl Recorded {
    fn take(snapshotter: &Snapshotter) -> Self {
        Self(
            snapshotter
                .snapshot()
                .into_vec()
                .into_iter()
                .map(|(key, _, _, value)| (key, value))
                .collect(),
        )
    }

    fn find(&self, kind: MetricKind, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.0.iter().find_map(|(key, value)| {
            let k = key.key();
            let mut have: Vec<(&str, &str)> = k.labels().map(|l| (l.key(), l.value())).collect();
            have.sort_unstable();
            let mut want = labels.to_vec();
            want.sort_unstable();
            (key.kind() == kind && k.name() == name && have == want).then_some(value)
        })
    }

    /// A counter's value (0 when never recorded).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match self.find(MetricKind::Counter, name, labels) {
            Some(DebugValue::Counter(n)) => *n,
            None => 0,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    /// A histogram's samples, in order.
    fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
        match self.find(MetricKind::Histogram, name, labels) {
            Some(DebugValue::Histogram(samples)) => {
                samples.iter().map(|s| s.into_inner()).collect()
            }
            None => Vec::new(),
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    fn store(&self, operation: &str, outcome: &str) -> u64 {
        self.counter(
            telemetry::STORE_CALLS,
            &[
                ("backend", "memory"),
                ("operation", operation),
                ("outcome", outcome),
            ],
        )
    }

    /// No label anywhere holds something that looks like an ID or a key.
    fn assert_labels_bounded(&self) {
        for (key, _) in &self.0 {
            for label in key.key().labels() {
                assert!(
                    label.value().len() < 24,
                    "label {}={} looks unbounded",
                    label.key(),
                    label.value()
                );
            }
        }
    }
}

/// Runs `flow` on a current-thread runtime with a fresh recorder installed
/// for this thread only, and returns what it recorded.
fn recorded<F: std::future::Future<Output = ()>>(flow: impl FnOnce() -> F) -> Recorded {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    metrics::with_local_recorder(&recorder, || runtime.block_on(flow()));
    Recorded::take(&snapshotter)
}

#[test]
fn a_scripted_flow_gives_the_documented_counts() {
    let recorded = recorded(|| async {
        let clock = ManualClock::new();
        let store = FaultyStore::new(MemoryStore::new());
        let sessions = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));

        // Add to a cart: one create.
        let session = sessions.new_session();
        session.insert("cart", &["apple"]).await.unwrap();
        session.save().await.unwrap();
        let id = session.id().unwrap();

        // A read soon after: the touch is skipped (coalesced).
        let read = middleware::open(&sessions, [id.clone()]);
        assert!(read.exists().await.unwrap());
        assert!(matches!(
            middleware::finish(&read).await.disposition,
            middleware::Disposition::Done
        ));
        // A read past the touch threshold (a quarter of 30 minutes): one touch.
        clock.advance(Duration::from_secs(10 * 60));
        let read = middleware::open(&sessions, [id.clone()]);
        assert!(read.exists().await.unwrap());
        middleware::finish(&read).await;

        // Two requests change the cart at once, on two instances: the second
        // save conflicts once and replays. (On one instance the second
        // would take its turn after the first, from its record.)
        let instance_b = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));
        let first = sessions.load(&id).await.unwrap().unwrap();
        let second = instance_b.load(&id).await.unwrap().unwrap();
        for (handle, item) in [(&first, "pear"), (&second, "plum")] {
            handle
                .update("cart", move |cart: Option<Vec<String>>| {
                    let mut cart = cart.unwrap_or_default();
                    cart.push(item.into());
                    Some(cart)
                })
                .await
                .unwrap();
        }
        first.save().await.unwrap();
        second.save().await.unwrap();

        // Log in: a rotation (create + delete_if_version).
        let login = sessions.load(&id).await.unwrap().unwrap();
        login.set_principal("alice").await.unwrap();
        login.save().await.unwrap();
        let logged_in = login.id().unwrap();

        // The old ID no longer works: found expired on read.
        assert!(sessions.load(&id).await.unwrap().is_none());

        // Log out.
        let logout = sessions.load(&logged_in).await.unwrap().unwrap();
        logout.delete().await.unwrap();

        // Two more sessions of bob, revoked at once.
        for _ in 0..2 {
            let session = sessions.new_session();
            session.set_principal("bob").await.unwrap();
            session.insert("x", &1).await.unwrap();
            session.save().await.unwrap();
        }
        assert_eq!(sessions.revoke_principal("bob").await.unwrap(), 2);

        // An outage, fail closed: the load fails.
        let kept = sessions.new_session();
        kept.insert("cart", &["fig"]).await.unwrap();
        kept.save().await.unwrap();
        let kept = kept.id().unwrap();
        store.inject(Call::Load, Fault::Unavailable);
        assert!(sessions.load(&kept).await.is_err());
        // The same outage, fail open: an empty session.
        let open = sessions.clone().with_outage_policy(OutagePolicy::FailOpen);
        store.inject(Call::Load, Fault::TimeoutBefore);
        let degraded = middleware::open(&open, [kept.clone()]);
        assert!(!degraded.exists().await.unwrap());
        assert!(degraded.is_degraded());

        // A save that gives up: one attempt allowed, and a writer on another
        // instance got in first (on this one, it would have taken its turn
        // after that writer, from its record, and not conflicted).
        let impatient = Sessions::new(store.clone())
            .with_clock(Arc::new(clock.clone()))
            .with_max_attempts(1);
        let slow = impatient.load(&kept).await.unwrap().unwrap();
        let fast = sessions.load(&kept).await.unwrap().unwrap();
        fast.insert("a", &1).await.unwrap();
        fast.save().await.unwrap();
        slow.insert("b", &2).await.unwrap();
        assert!(matches!(
            slow.save().await,
            Err(SessionError::RetriesExhausted { attempts: 1 })
        ));

        // Two live IDs in one request: ambiguous, no session.
        let other = sessions.new_session();
        other.insert("y", &1).await.unwrap();
        other.save().await.unwrap();
        let both = middleware::open(&sessions, [kept, other.id().unwrap()]);
        assert!(!both.exists().await.unwrap());

        // The middleware's own refusals are counted through core.
        RefusedInput::BadSignature.record();
    });
    recorded.assert_labels_bounded();

    // Sessions: 1 cart + 2 bob + 1 kept + 1 other created; 1 login rotated.
    assert_eq!(recorded.counter(telemetry::SESSIONS_CREATED, &[]), 5);
    assert_eq!(recorded.counter(telemetry::SESSIONS_ROTATED, &[]), 1);
    assert_eq!(recorded.counter(telemetry::SESSIONS_DELETED, &[]), 1);
    assert_eq!(recorded.counter(telemetry::SESSIONS_REVOKED, &[]), 2);
    assert_eq!(
        recorded.counter(telemetry::SESSIONS_EXPIRED_ON_READ, &[]),
        1
    );
    // Touches: one coalesced, one written; the store saw one touch.
    let touches = |result| recorded.counter(telemetry::SESSION_TOUCHES, &[("result", result)]);
    assert_eq!((touches("skipped"), touches("written")), (1, 1));
    assert_eq!(recorded.store("touch", "ok"), 1);
    // Conflicts and retries: first save 0 retries, second 1; the login 0;
    // the impatient one conflicted once and gave up; fast 0.
    let write = [("op", "write")];
    assert_eq!(recorded.counter(telemetry::SESSION_CONFLICTS, &write), 2);
    assert_eq!(
        recorded.histogram(telemetry::SESSION_SAVE_RETRIES, &write),
        [0.0, 1.0, 0.0, 1.0]
    );
    assert_eq!(
        recorded.counter(telemetry::SESSION_RETRIES_EXHAUSTED, &write),
        1
    );
    assert_eq!(
        recorded.histogram(telemetry::SESSION_SAVE_RETRIES, &[("op", "rotate")]),
        [0.0]
    );
    // Record sizes: one sample per write that landed.
    let sizes = |op| recorded.histogram(telemetry::SESSION_RECORD_BYTES, &[("op", op)]);
    assert_eq!(sizes("create").len(), 5);
    assert_eq!(sizes("write").len(), 3);
    assert_eq!(sizes("rotate").len(), 1);
    assert!(sizes("create").iter().all(|&bytes| bytes > 64.0));
    // Store calls by operation and outcome.
    assert_eq!(recorded.store("create", "ok"), 6); // 5 sessions + the login's new ID
    assert_eq!(recorded.store("save", "ok"), 4); // 3 writes + the login retiring the old ID
    assert_eq!(recorded.store("save", "conflict"), 2);
    assert_eq!(recorded.store("delete_if_version", "ok"), 1);
    assert_eq!(recorded.store("delete", "ok"), 1);
    assert_eq!(recorded.store("revoke_principal", "ok"), 1);
    assert_eq!(recorded.store("load", "gone"), 1);
    assert_eq!(recorded.store("load", "unavailable"), 1);
    assert_eq!(recorded.store("load", "timeout"), 1);
    // 2 reads, 2+1 conflict pair, login, logout, 2 for slow/fast, 2 ambiguous.
    assert_eq!(recorded.store("load", "ok"), 10);
    let latencies = recorded.histogram(
        telemetry::STORE_CALL_DURATION,
        &[("backend", "memory"), ("operation", "load")],
    );
    assert_eq!(latencies.len(), 13);
    // Outage decisions and refused input.
    let decision = |d| recorded.counter(telemetry::OUTAGE_DECISIONS, &[("decision", d)]);
    assert_eq!((decision("fail_closed"), decision("fail_open")), (1, 1));
    let refused = |r| recorded.counter(telemetry::REFUSED_INPUT, &[("reason", r)]);
    assert_eq!((refused("ambiguous"), refused("bad_signature")), (1, 1));
    // Every metric of the table showed up.
    for name in telemetry::CORE_METRICS {
        assert!(
            recorded.0.iter().any(|(key, _)| key.key().name() == *name),
            "{name} was never recorded"
        );
    }
}

/// A store call's duration is real time in seconds, whatever the clock
/// that reads it: a load held at a gate while 30 ms pass records at least
/// 0.03 (and not, say, nanoseconds or ticks read as seconds).
#[test]
fn a_store_call_records_the_real_time_it_took_in_seconds() {
    const HELD: Duration = Duration::from_millis(30);
    let recorded = recorded(|| async {
        let store = FaultyStore::new(MemoryStore::new());
        let sessions = Sessions::new(store.clone());
        let session = sessions.new_session();
        session.insert("cart", &["apple"]).await.unwrap();
        session.save().await.unwrap();
        let id = session.id().unwrap();

        let gate = store.gate(Call::Load);
        let read = middleware::open(&sessions, [id]);
        let load = tokio::spawn(async move { read.exists().await });
        gate.reached().await;
        // Real time passes while the call is held (the runtime's own clock
        // is paused, so a tokio sleep would not do).
        std::thread::sleep(HELD);
        gate.open();
        assert!(load.await.unwrap().unwrap());
    });
    let latencies = recorded.histogram(
        telemetry::STORE_CALL_DURATION,
        &[("backend", "memory"), ("operation", "load")],
    );
    assert_eq!(latencies.len(), 1, "{latencies:?}");
    assert!(
        (HELD.as_secs_f64()..5.0).contains(&latencies[0]),
        "{latencies:?}"
    );
}
