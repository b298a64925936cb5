//! A memcached out of memory answers "try again later", and the store
//! reports it as an outage (`StoreError::Unavailable`, 503 through the
//! middleware), not as a bug: a real memcached with 2 MB and evictions
//! off (`-M`) is filled with sessions until it refuses one.

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_core::{
    Clock, CreateOutcome, Deadlines, Record, SessionId, SessionStore, StoreError, SystemClock,
};

fn record() -> Record {
    let now = SystemClock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(600))),
    );
    record.data.insert("cart".into(), vec![b'x'; 2000]);
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memcached_out_of_memory_is_an_outage() {
    let server = offstate_testing::memcached()
        .with_args(["-m", "2", "-I", "512k", "-M"])
        .await
        .expect("memcached");
    let store = server.store();
    // 2 MB hold about a thousand 2 KB sessions; the first refusal ends it.
    let mut created = 0;
    let refusal = loop {
        assert!(created < 5000, "memcached never ran out of memory");
        match store
            .create(&SessionId::generate().key(), &record(), SystemClock.now())
            .await
        {
            Ok(CreateOutcome::Created) => created += 1,
            Ok(other) => panic!("a fresh key was {other:?}"),
            Err(error) => break error,
        }
    };
    assert!(created > 0, "not even one session fitted");
    assert!(
        matches!(refusal, StoreError::Unavailable(_)),
        "after {created} sessions: {refusal:?}"
    );
    assert!(refusal.is_outage());
    println!(
        "memcached -m 2 -M refused session {}: {refusal}",
        created + 1
    );
}
