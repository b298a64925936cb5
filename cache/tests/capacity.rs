//! The cache's memory budget holds: a flood of sessions never grows it
//! past its byte cap. (What the cache promises across instances is the
//! cache conformance suite, run in tests/conformance.rs; its failure modes
//! are tests/failure_modes.rs.)

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_cache::CachedStore;
use offstate_core::{Deadlines, MemoryStore, Record, SessionId, SessionStore, Timestamp};

fn record(ttl: Duration) -> Record {
    let now = Timestamp::now();
    let mut record = Record::new(now, Deadlines::idle_at(now.saturating_add(ttl)));
    record.data.insert("cart".into(), b"[]".to_vec());
    record
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
        let mut rec = record(Duration::from_secs(600));
        rec.data.insert("blob".into(), vec![b'x'; 2_000]);
        cached.create(&key, &rec, Timestamp::now()).await.unwrap();
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
