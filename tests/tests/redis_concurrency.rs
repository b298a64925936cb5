//! 1,000 `update` closures from 50 tasks on two separate store instances
//! (two app instances) against one redis-server lose nothing.

use offstate_core::Sessions;
use offstate_core::conformance::{assert_cart_complete, fill_one_cart_concurrently};

const TASKS: usize = 50;
const UPDATES: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_updates_from_two_instances_lose_nothing() {
    let redis = offstate_testing::redis().await.expect("a Redis");
    let store = || redis.connect_with(redis.config().clone());
    let a = Sessions::new(store().await.expect("store")).with_max_attempts(100_000);
    let b = Sessions::new(store().await.expect("store")).with_max_attempts(100_000);
    let id = fill_one_cart_concurrently(&a, &b, TASKS, UPDATES).await;
    assert_cart_complete(&b, &id, TASKS * UPDATES).await;
}
