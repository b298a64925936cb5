//! The cache layer on DynamoDB (moto): two `CachedStore` instances over one
//! table in bounded mode (no channel) honour the staleness bound; and, with
//! a Redis server at hand, `RedisInvalidationChannel` makes caches over
//! DynamoDB coherent (the channel works with any backend).
//!
//! Delays are printed (run with `--nocapture`), and the bound is checked
//! with generous slack: the bug caught is "served until the session's own
//! deadline", minutes away, not a slow machine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use offstate_cache::CachedStore;
use offstate_core::{SessionId, Sessions};
use offstate_dynamodb::DynamoDbStore;
use offstate_testing::{DynamoDb, dynamodb};

const SOON: Duration = Duration::from_secs(15);

async fn fixture() -> DynamoDb {
    dynamodb()
        .await
        .expect("a DynamoDB-compatible server (moto: run scripts/setup.sh)")
}

async fn store_on(dynamo: &DynamoDb) -> DynamoDbStore {
    dynamo
        .store_with(dynamo.config().clone())
        .await
        .expect("store")
}

async fn value(sessions: &Sessions, id: &SessionId) -> Option<u32> {
    let session = sessions.load(id).await.expect("load")?;
    session.get::<u32>("n").await.expect("get")
}

async fn set(sessions: &Sessions, id: &SessionId, n: u32) {
    let session = sessions.load(id).await.expect("load").expect("live");
    session.insert("n", &n).await.expect("insert");
    session.save().await.expect("save");
}

/// Polls until B serves `want`; how long that took.
async fn until(sessions: &Sessions, id: &SessionId, want: Option<u32>) -> Duration {
    let start = Instant::now();
    while value(sessions, id).await != want {
        assert!(
            start.elapsed() < SOON,
            "B still serves an old state after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bounded_mode_honours_the_staleness_bound_on_dynamodb() {
    // Why: without a channel, the bound is the whole promise.
    let dynamo = fixture().await;
    let bound = Duration::from_millis(500);
    let a = CachedStore::builder(store_on(&dynamo).await)
        .with_staleness(bound)
        .build();
    let b = CachedStore::builder(store_on(&dynamo).await)
        .with_staleness(bound)
        .build();
    let (sa, sb) = (Sessions::new(a.clone()), Sessions::new(b.clone()));
    let session = sa.new_session();
    session.insert("n", &0u32).await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("id");

    let mut changes = Vec::new();
    for n in 1..=5u32 {
        assert_eq!(value(&sb, &id).await, Some(n - 1));
        let hits = b.stats().hits;
        assert_eq!(value(&sb, &id).await, Some(n - 1));
        assert!(b.stats().hits > hits, "B did not cache the session");
        set(&sa, &id, n).await;
        changes.push(until(&sb, &id, Some(n)).await);
    }
    println!("bounded ({bound:?}) on DynamoDB, change on A -> served by B: {changes:?}");

    assert_eq!(value(&sb, &id).await, Some(5));
    sa.load(&id)
        .await
        .expect("load")
        .expect("live")
        .delete()
        .await
        .expect("delete");
    let gone = until(&sb, &id, None).await;
    println!("bounded ({bound:?}) on DynamoDB, delete on A -> gone on B: {gone:?}");

    let slack = Duration::from_secs(1);
    for took in changes.iter().chain([&gone]) {
        assert!(
            *took <= bound + slack,
            "B served a stale state for {took:?}, bound {bound:?}"
        );
    }
    // And it stays gone.
    for _ in 0..20 {
        assert_eq!(value(&sb, &id).await, None);
    }
    assert!(!a.is_coherent() && !b.is_coherent());
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_channel_makes_caches_over_dynamodb_coherent() {
    // Why: the documented deployment "DynamoDB sessions + a small Redis for
    // invalidations" must work.
    use offstate_redis::RedisInvalidationChannel;
    let dynamo = fixture().await;
    let redis = offstate_testing::redis()
        .await
        .expect("a Redis server for the channel (install redis-server)");
    let mut caches = Vec::new();
    for _ in 0..2 {
        let channel = RedisInvalidationChannel::connect(redis.config())
            .await
            .expect("channel");
        let cached = CachedStore::builder(store_on(&dynamo).await)
            // A bound far above the delays measured: only a message can
            // make B see the change in time.
            .with_staleness(Duration::from_secs(60))
            .with_channel(channel)
            .build();
        let start = Instant::now();
        while !cached.is_coherent() {
            assert!(start.elapsed() < SOON, "the channel never connected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        caches.push(cached);
    }
    let (a, b) = (caches[0].clone(), caches[1].clone());
    let (sa, sb) = (Sessions::new(a), Sessions::new(b.clone()));
    let session = sa.new_session();
    session.insert("n", &0u32).await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("id");
    assert_eq!(value(&sb, &id).await, Some(0));
    set(&sa, &id, 1).await;
    let took = until(&sb, &id, Some(1)).await;
    println!("DynamoDB sessions + Redis channel: change on A served by B after {took:?}");
    assert!(b.stats().invalidations_received >= 1);
    sa.load(&id)
        .await
        .expect("load")
        .expect("live")
        .delete()
        .await
        .expect("delete");
    let gone = until(&sb, &id, None).await;
    println!("DynamoDB sessions + Redis channel: delete on A gone on B after {gone:?}");
}
