//! Records over the item size limit: refused with `StoreError::TooLarge`
//! whether the library's configured limit or the server's `-I` catches
//! them, with nothing written and the stored session intact.

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_core::{
    Change, Clock, CreateOutcome, Deadlines, Record, SaveOutcome, SessionId, SessionKey,
    SessionStore, StoreError, SystemClock,
};
use offstate_memcached::MemcachedStore;
use offstate_testing::Memcached;

const MIB: usize = 1024 * 1024;

async fn server(args: &[&str]) -> Memcached {
    offstate_testing::memcached()
        .with_args(args.iter().copied())
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"))
}

fn record(value_len: usize) -> Record {
    let now = SystemClock.now();
    let idle = now.saturating_add(Duration::from_secs(600));
    let mut record = Record::new(now, Deadlines::idle_at(idle));
    record.data.insert("small".into(), b"1".to_vec());
    if value_len > 0 {
        record.data.insert("big".into(), vec![b'x'; value_len]);
    }
    record
}

fn assert_too_large<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(StoreError::TooLarge { size, limit }) => assert!(size > 0 && limit > 0),
        other => panic!("{what} of a 1.5 MB record must be TooLarge, got {other:?}"),
    }
}

/// Creating and growing a session past the limit both fail; nothing of the
/// big record is stored and the small session survives unchanged.
async fn refuses_without_losing_anything(store: &MemcachedStore) {
    let big = MIB + MIB / 2;
    let key = SessionId::generate().key();
    assert_too_large(
        "create",
        store
            .create(&key, &record(big), offstate_core::Timestamp::now())
            .await,
    );
    assert!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_none(),
        "a refused create left a record"
    );

    let key: SessionKey = SessionId::generate().key();
    let small = record(0);
    assert_eq!(
        store
            .create(&key, &small, offstate_core::Timestamp::now())
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    let mut change = Change::new(small.version, small.deadlines);
    change.set.insert("big".into(), vec![b'x'; big]);
    assert_too_large(
        "save",
        store
            .save(&key, &change, offstate_core::Timestamp::now())
            .await,
    );
    assert_eq!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .as_deref(),
        Some(&small),
        "the stored session changed"
    );

    // The session still takes ordinary writes.
    let mut change = Change::new(small.version, small.deadlines);
    change.set.insert("small".into(), b"2".to_vec());
    assert!(matches!(
        store
            .save(&key, &change, offstate_core::Timestamp::now())
            .await
            .expect("save"),
        SaveOutcome::Saved(_)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_configured_limit_refuses_before_sending() {
    // The server would take 2 MB items; the library is configured for 1 MiB.
    let server = server(&["-I", "2m"]).await;
    let store = server.store();
    assert_eq!(store.config().max_item_bytes(), MIB);
    refuses_without_losing_anything(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_limit_is_a_typed_error_too() {
    // The library is told 4 MiB, but the server runs with the default -I 1m:
    // the server's refusal must come back as TooLarge, not a backend error.
    let server = server(&[]).await;
    let store =
        MemcachedStore::new(server.config().clone().with_max_item_bytes(4 * MIB)).expect("config");
    refuses_without_losing_anything(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_larger_limit_stores_large_records() {
    let server = server(&["-I", "2m"]).await;
    let store =
        MemcachedStore::new(server.config().clone().with_max_item_bytes(2 * MIB)).expect("config");
    let key = SessionId::generate().key();
    let big = record(MIB + MIB / 2);
    assert_eq!(
        store
            .create(&key, &big, offstate_core::Timestamp::now())
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    assert_eq!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .as_deref(),
        Some(&big)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_counts_the_whole_item() {
    // A record just under 1 MiB of data does not fit once the encoding, the
    // key and memcached's item header are counted: refused up front.
    let server = server(&[]).await;
    let store = server.store();
    let key = SessionId::generate().key();
    assert_too_large(
        "create",
        store
            .create(&key, &record(MIB - 40), offstate_core::Timestamp::now())
            .await,
    );
    // Comfortably under the limit it is stored.
    let fits = record(MIB - 4096);
    assert_eq!(
        store
            .create(&key, &fits, offstate_core::Timestamp::now())
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    assert_eq!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .as_deref(),
        Some(&fits)
    );
}
