//! Concurrent requests on one plain TCP connection share its system calls:
//! a flush waits one turn of the scheduler, so every request ready to run
//! sends its command first, and Redis reads them all at once (counted by
//! its own `total_reads_processed`).

// Test helpers: failing loudly is the point.
#![allow(clippy::expect_used)]

use offstate_core::{Clock, Deadlines, ManualClock, Record, SessionId, SessionStore};
use offstate_redis::redis::cmd;
use offstate_testing::{Redis, redis};

/// Redis's count of reads from its clients' sockets so far (the `INFO`
/// that asks is one of them).
async fn reads(server: &Redis) -> u64 {
    let info: String = server
        .query(cmd("INFO").arg("stats"))
        .await
        .expect("INFO stats");
    info.lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

// One worker: every task below is queued on it, as the tasks of requests
// whose sockets became readable together are on a server's worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_hundred_concurrent_loads_reach_redis_in_a_few_reads() {
    let server = redis().await.expect("a Redis");
    let store = server
        .connect_with(server.config().clone().with_pool_size(1))
        .await
        .expect("a store on one connection");
    let clock = ManualClock::new();
    let key = SessionId::generate().key();
    let record = Record::new(clock.now(), Deadlines::none());
    store
        .create(&key, &record, clock.now())
        .await
        .expect("create");

    let before = reads(&server).await;
    let loads = tokio::spawn(async move {
        // Spawned from a worker: all of them wait on its queue together.
        let tasks: Vec<_> = (0..100)
            .map(|_| {
                let store = store.clone();
                let key = key.clone();
                let now = clock.now();
                tokio::spawn(async move { store.load(&key, now).await })
            })
            .collect();
        let mut found = 0;
        for task in tasks {
            if task.await.expect("task").expect("load").is_some() {
                found += 1;
            }
        }
        found
    });
    assert_eq!(
        loads.await.expect("loads"),
        100,
        "every load found the session"
    );
    let reads = reads(&server).await - before - 1;
    assert!(
        reads <= 10,
        "100 concurrent GETs on one connection took {reads} reads in Redis"
    );
}
