//! The fixture API end to end: `redis()`, `redis_cluster()`, `memcached()`
//! and `dynamodb()` each give a working store from whichever source the
//! machine offers, a forced container source is a container, and a source
//! that cannot be had is an error naming what to set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_core::{
    Clock, CreateOutcome, Deadlines, Record, SessionId, SessionStore, SystemClock,
};
use offstate_testing::fixture::Source;
use offstate_testing::fixture::dynamodb::{DYNAMODB_ENDPOINT_ENV, dynamodb};
use offstate_testing::fixture::memcached::memcached;
use offstate_testing::fixture::redis::{
    REDIS_URL_ENV, redis, redis_cluster, redis_cluster_via, redis_via,
};

fn record() -> Record {
    let now = SystemClock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(600))),
    );
    record.data.insert("k".into(), b"v".to_vec());
    record
}

async fn round_trip(store: &impl SessionStore, what: &str) {
    let key = SessionId::generate().key();
    assert_eq!(
        store
            .create(&key, &record(), offstate_core::Timestamp::now())
            .await
            .expect(what),
        CreateOutcome::Created,
        "{what}"
    );
    let loaded = store
        .load(&key, offstate_core::Timestamp::now())
        .await
        .expect(what)
        .expect(what);
    assert_eq!(loaded.data["k"], b"v", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_backend_gives_a_working_store() {
    let fixture = redis().await.unwrap_or_else(|e| panic!("redis(): {e}"));
    round_trip(&*fixture, &format!("redis from {:?}", fixture.source())).await;
    let fixture = memcached()
        .await
        .unwrap_or_else(|e| panic!("memcached(): {e}"));
    round_trip(&*fixture, &format!("memcached from {:?}", fixture.source())).await;
    let fixture = dynamodb()
        .await
        .unwrap_or_else(|e| panic!("dynamodb(): {e}"));
    round_trip(&*fixture, &format!("dynamodb from {:?}", fixture.source())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_gives_a_working_store() {
    let fixture = redis_cluster()
        .await
        .unwrap_or_else(|e| panic!("redis_cluster(): {e}"));
    assert_eq!(fixture.urls().len(), 3, "{:?}", fixture.source());
    round_trip(&*fixture, &format!("cluster from {:?}", fixture.source())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_in_containers_spreads_keys_over_three_nodes() {
    let fixture = redis_cluster_via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start a Redis Cluster in containers: {e}"));
    assert_eq!(fixture.containers().len(), 3);
    for _ in 0..20 {
        round_trip(&*fixture, "cluster in containers").await;
    }
    // Every node holds some of the data.
    for container in fixture.containers() {
        let url = format!("redis://{}", container.addr());
        let node = offstate_redis::RedisConnection::connect(
            &offstate_redis::RedisConfig::new(url)
                .with_cluster_mode(offstate_redis::ClusterMode::Standalone),
        )
        .await
        .expect("node");
        let keys: u64 = node
            .query(&offstate_redis::redis::cmd("DBSIZE"))
            .await
            .expect("DBSIZE");
        assert!(keys > 0, "node {} holds nothing", container.name());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_container_is_a_container_and_goes_away_on_drop() {
    let fixture = redis_via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis in a container: {e}"));
    assert_eq!(fixture.source(), Source::Container);
    let id = fixture.container().expect("container").id().to_owned();
    round_trip(&*fixture, "redis in a container").await;
    drop(fixture);
    let left = offstate_testing::container::docker(&["ps", "-aq", "--filter", &format!("id={id}")])
        .expect("docker ps");
    assert!(left.is_empty(), "container {id} outlived its fixture");
}

#[tokio::test]
async fn an_environment_source_without_its_variable_names_it() {
    for (var, result) in [
        (REDIS_URL_ENV, redis_via(Source::Environment).await.err()),
        (
            DYNAMODB_ENDPOINT_ENV,
            offstate_testing::fixture::dynamodb::dynamodb_via(Source::Environment)
                .await
                .err(),
        ),
    ] {
        if std::env::var_os(var).is_some() {
            continue; // This run points the fixtures at a server: nothing to check.
        }
        let message = result.expect("no variable, no server").to_string();
        assert!(message.contains(var), "{message}");
    }
}
