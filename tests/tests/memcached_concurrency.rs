//! 1,000 `update` closures from 50 tasks on two store instances over a
//! 2-node memcached cluster lose nothing: `gets`/`cas` makes every write
//! conditional.

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;

use offstate_core::conformance::fill_one_cart_concurrently;
use offstate_core::{Clock, CountingStore, Sessions, SystemClock};

const TASKS: usize = 50;
const UPDATES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_from_fifty_tasks_on_two_instances_lose_nothing() {
    let cluster = offstate_testing::memcached_cluster(2)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"));
    let store = || cluster.store_with(cluster.config().clone()).expect("store");
    let _clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store_a = CountingStore::new(store());
    let store_b = CountingStore::new(store());
    let a = Sessions::new(store_a.clone()).with_max_attempts(100_000);
    let b = Sessions::new(store_b.clone()).with_max_attempts(100_000);
    let id = fill_one_cart_concurrently(&a, &b, TASKS, UPDATES).await;

    let (ca, cb) = (store_a.counts(), store_b.counts());
    let saves = ca.save + cb.save;
    // Every update needs at least one save; the rest were conflicts, each
    // answered with the current record (no extra load).
    assert!(
        saves >= (TASKS * UPDATES) as u64,
        "{saves} saves for {} updates",
        TASKS * UPDATES
    );
    eprintln!(
        "{} updates: {saves} saves ({} conflicted), {} loads",
        TASKS * UPDATES,
        saves - (TASKS * UPDATES) as u64,
        ca.load + cb.load
    );

    let fresh = Sessions::new(store());
    let cart: Vec<String> = fresh
        .load(&id)
        .await
        .expect("load")
        .expect("live")
        .get("cart")
        .await
        .expect("get")
        .expect("cart");
    let unique: BTreeSet<&String> = cart.iter().collect();
    assert_eq!(cart.len(), TASKS * UPDATES, "lost updates");
    assert_eq!(unique.len(), TASKS * UPDATES, "duplicated updates");
    // Each task's own updates are in its order.
    for t in 0..TASKS {
        let mine: Vec<usize> = cart
            .iter()
            .filter_map(|item| item.split_once('-'))
            .filter(|(task, _)| *task == t.to_string())
            .filter_map(|(_, u)| u.parse().ok())
            .collect();
        assert_eq!(
            mine,
            (0..UPDATES).collect::<Vec<_>>(),
            "task {t} out of order"
        );
    }
}
