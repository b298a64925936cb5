//! Losing one node of a memcached cluster: sessions on the other node keep
//! working, sessions on the lost node fail with a typed outage error within
//! the configured timeout, never hang.

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use offstate_core::{
    Change, Clock, Deadlines, Record, SaveOutcome, SessionId, SessionKey, SessionStore, StoreError,
    SystemClock, Version,
};
use offstate_memcached::MemcachedStore;
use offstate_testing::Memcached;
use offstate_testing::memcached::FIXTURE_TIMEOUT;

/// Far above the store's own timeouts: reaching it means the store hung.
const HANG: Duration = Duration::from_secs(20);

async fn cluster() -> Memcached {
    offstate_testing::memcached_cluster(2)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"))
}

/// A store instance of its own (empty pools), as another app would have.
fn fresh_store(cluster: &Memcached) -> MemcachedStore {
    cluster.store_with(cluster.config().clone()).expect("store")
}

fn record() -> Record {
    let now = SystemClock.now();
    let idle = now.saturating_add(Duration::from_secs(600));
    let mut record = Record::new(now, Deadlines::idle_at(idle));
    record.data.insert("cart".into(), b"[1]".to_vec());
    record
}

/// A fresh session key that the store maps to server `node`.
fn key_on(store: &MemcachedStore, cluster: &Memcached, node: usize) -> SessionKey {
    loop {
        let key = SessionId::generate().key();
        if cluster.index_of(store.node_for(&key)) == Some(node) {
            return key;
        }
    }
}

/// Creates `per_node` sessions on each of the two nodes.
async fn sessions_on_both(
    store: &MemcachedStore,
    cluster: &Memcached,
    per_node: usize,
) -> BTreeMap<usize, Vec<SessionKey>> {
    let mut by_node = BTreeMap::new();
    for node in 0..2 {
        let mut keys = Vec::new();
        for _ in 0..per_node {
            let key = key_on(store, cluster, node);
            store
                .create(&key, &record(), offstate_core::Timestamp::now())
                .await
                .expect("create");
            keys.push(key);
        }
        by_node.insert(node, keys);
    }
    by_node
}

async fn bounded<T>(what: &str, op: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, op).await {
        Ok(result) => result,
        Err(_) => panic!("{what} hung for {HANG:?} on a lost node"),
    }
}

fn assert_outage<T: std::fmt::Debug>(what: &str, result: Result<T, StoreError>) {
    match result {
        Err(error) if error.is_outage() => {}
        other => panic!("{what} on a lost node must be Unavailable or Timeout, got {other:?}"),
    }
}

async fn assert_node_fails(store: &MemcachedStore, cluster: &Memcached, key: &SessionKey) {
    assert_outage(
        "load",
        bounded("load", store.load(key, offstate_core::Timestamp::now())).await,
    );
    let change = Change::new(Version::INITIAL, record().deadlines);
    assert_outage(
        "save",
        bounded(
            "save",
            store.save(key, &change, offstate_core::Timestamp::now()),
        )
        .await,
    );
    let deadline = SystemClock.now().saturating_add(Duration::from_secs(900));
    assert_outage(
        "touch",
        bounded(
            "touch",
            store.touch(key, deadline, offstate_core::Timestamp::now()),
        )
        .await,
    );
    assert_outage(
        "delete",
        bounded("delete", store.delete(key, offstate_core::Timestamp::now())).await,
    );
    let new = key_on(store, cluster, 1);
    assert_outage(
        "create",
        bounded(
            "create",
            store.create(&new, &record(), offstate_core::Timestamp::now()),
        )
        .await,
    );
}

async fn assert_node_works(store: &MemcachedStore, key: &SessionKey) {
    let loaded = store
        .load(key, offstate_core::Timestamp::now())
        .await
        .expect("load on a surviving node")
        .expect("live");
    let mut change = Change::new(loaded.version, loaded.deadlines);
    change.set.insert("cart".into(), b"[1,2]".to_vec());
    assert_eq!(
        store
            .save(key, &change, offstate_core::Timestamp::now())
            .await
            .expect("save"),
        SaveOutcome::Saved(loaded.version.next())
    );
    let again = store
        .load(key, offstate_core::Timestamp::now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(
        again.data.get("cart").map(Vec::as_slice),
        Some(&b"[1,2]"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_fails_typed_and_the_other_keeps_working() {
    let cluster = cluster().await;
    let store = fresh_store(&cluster);
    let by_node = sessions_on_both(&store, &cluster, 5).await;
    cluster.node(1).kill().await.expect("kill node 1");
    for key in &by_node[&0] {
        assert_node_works(&store, key).await;
    }
    for key in &by_node[&1] {
        assert_node_fails(&store, &cluster, key).await;
    }
    // New sessions on the surviving node are fine.
    let new = key_on(&store, &cluster, 0);
    store
        .create(&new, &record(), offstate_core::Timestamp::now())
        .await
        .expect("create on the surviving node");
    // A fresh store instance (empty pools) behaves the same.
    let fresh = fresh_store(&cluster);
    assert_node_works(&fresh, &by_node[&0][0]).await;
    assert_outage(
        "load",
        bounded(
            "load",
            fresh.load(&by_node[&1][0], offstate_core::Timestamp::now()),
        )
        .await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_node_times_out_and_recovers() {
    let cluster = cluster().await;
    let store = fresh_store(&cluster);
    let by_node = sessions_on_both(&store, &cluster, 3).await;
    cluster.node(1).pause().await.expect("pause node 1");
    for key in &by_node[&1] {
        match bounded("load", store.load(key, offstate_core::Timestamp::now())).await {
            Err(StoreError::Timeout(after)) => assert_eq!(after, FIXTURE_TIMEOUT),
            other => panic!("a load from a hung node must time out, got {other:?}"),
        }
    }
    for key in &by_node[&0] {
        assert_node_works(&store, key).await;
    }
    cluster.node(1).resume().await.expect("resume node 1");
    // Timed-out connections were dropped, not reused mid-reply: the node
    // answers correctly again.
    for key in &by_node[&1] {
        assert_node_works(&store, key).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_is_used_again_despite_stale_pooled_connections() {
    let cluster = cluster().await;
    let store = fresh_store(&cluster);
    let by_node = sessions_on_both(&store, &cluster, 3).await;
    // The pool to node 1 now holds connections; the restart kills them.
    cluster.node(1).restart().await.expect("restart node 1");
    // The restarted node is empty: its sessions are gone (not an error),
    // and the stale pooled connections are replaced transparently.
    for key in &by_node[&1] {
        assert!(
            bounded("load", store.load(key, offstate_core::Timestamp::now()))
                .await
                .expect("load after restart")
                .is_none()
        );
    }
    let new = key_on(&store, &cluster, 1);
    store
        .create(&new, &record(), offstate_core::Timestamp::now())
        .await
        .expect("create after restart");
    assert_node_works(&store, &new).await;
    for key in &by_node[&0] {
        assert_node_works(&store, key).await;
    }
}
