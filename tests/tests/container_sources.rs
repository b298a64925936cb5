//! The fixture API end to end: `redis()`, `redis_cluster()`, `memcached()`
//! and `dynamodb()` each give a working store from whichever source the
//! machine offers; a forced container source is a container, removed when
//! its fixture goes (after a panic, and outside any runtime too); and a
//! source that cannot be had is an error naming what to set.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_core::{
    Clock, CreateOutcome, Deadlines, Record, SessionId, SessionStore, SystemClock,
};
use offstate_redis::redis::cmd;
use offstate_testing::container::exists;
use offstate_testing::dynamodb::DYNAMODB_ENDPOINT_ENV;
use offstate_testing::redis::REDIS_URL_ENV;
use offstate_testing::{Redis, Source, dynamodb, memcached, redis, redis_cluster};

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

async fn redis_container() -> Redis {
    redis()
        .via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis in a container: {e}"))
}

fn container_id(fixture: &Redis) -> String {
    let container = fixture.node(0).container().expect("a container");
    container.id().to_owned()
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
async fn a_cluster_in_containers_spreads_keys_over_three_nodes() {
    let fixture = redis_cluster()
        .via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start a Redis Cluster in containers: {e}"));
    assert_eq!(fixture.nodes().len(), 3);
    for _ in 0..20 {
        round_trip(&*fixture, "cluster in containers").await;
    }
    // Every node holds some of the data.
    for (i, node) in fixture.nodes().iter().enumerate() {
        assert_eq!(node.source(), Source::Container);
        let conn = fixture.node_connection(i).await.expect("node");
        let keys: u64 = conn.query(&cmd("DBSIZE")).await.expect("DBSIZE");
        assert!(keys > 0, "node {} holds nothing", node.address());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_follow_their_masters() {
    // Why: the failover test relies on a replica per master, in sync.
    let fixture = redis_cluster()
        .with_replicas(1)
        .await
        .unwrap_or_else(|e| panic!("redis_cluster().with_replicas(1): {e}"));
    let view = fixture.cluster_nodes().await;
    assert_eq!(view.iter().filter(|n| n.master).count(), 3, "{view:?}");
    assert_eq!(view.iter().filter(|n| !n.master).count(), 3, "{view:?}");
    round_trip(&*fixture, "cluster with replicas").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_container_is_a_container_and_goes_away_on_drop() {
    let fixture = redis_container().await;
    assert_eq!(fixture.source(), Source::Container);
    let id = container_id(&fixture);
    round_trip(&*fixture, "redis in a container").await;
    drop(fixture);
    assert!(!exists(&id).await.unwrap(), "{id} outlived its fixture");
}

#[test]
fn a_container_dropped_outside_any_runtime_is_removed_without_a_panic() {
    // Why: testcontainers' own drop needs a runtime; a fixture kept past
    // its test's runtime (or in a synchronous bench) must still clean up.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let fixture = runtime.block_on(redis_container());
    let id = container_id(&fixture);
    drop(runtime);
    drop(fixture);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    assert!(!runtime.block_on(exists(&id)).unwrap(), "{id} was left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_still_removes_its_container() {
    let id = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = std::sync::mpsc::channel();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // `tx` goes with the future: a fixture that fails to start
            // fails this test instead of leaving `recv` waiting.
            runtime.block_on(async move {
                let fixture = redis_container().await;
                tx.send(container_id(&fixture)).expect("send");
                panic!("a failing test");
            })
        }));
        assert!(outcome.is_err());
        rx.recv()
            .expect("the container's ID (did the fixture start?)")
    })
    .join()
    .expect("thread");
    assert!(!exists(&id).await.unwrap(), "{id} outlived the panic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_dead_test_processes_are_removed_and_live_ones_kept() {
    // Why: testcontainers cannot clean up after a SIGKILLed test; the next
    // run must, without touching the containers of tests running now.
    use testcontainers::runners::AsyncRunner as _;
    use testcontainers::{GenericImage, ImageExt as _};
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let start = |owner: u32| {
        let image = offstate_testing::images::redis();
        let (name, tag) = image.name_and_tag();
        GenericImage::new(name, tag)
            .with_label(offstate_testing::container::LABEL, owner.to_string())
            .start()
    };
    let orphan = start(gone.id()).await.unwrap();
    let mine = start(std::process::id()).await.unwrap();
    let docker = offstate_testing::container::docker().await.unwrap();
    offstate_testing::container::remove_leftovers(&docker).await;
    assert!(!exists(orphan.id()).await.unwrap(), "the orphan was kept");
    assert!(
        exists(mine.id()).await.unwrap(),
        "a live test's container went"
    );
    mine.rm().await.unwrap();
    std::mem::forget(orphan); // Already removed: nothing left to drop.
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_servers_live_while_a_fixture_holds_them() {
    // Why: `.shared()` must neither start a server per test nor leave one
    // behind once the last test using it is done.
    let first = redis().via(Source::Container).shared().await.unwrap();
    let second = redis().via(Source::Container).shared().await.unwrap();
    let id = container_id(&first);
    assert_eq!(container_id(&second), id, "a second server was started");
    drop(first);
    round_trip(&*second, "the shared server after the first fixture went").await;
    drop(second);
    assert!(
        !exists(&id).await.unwrap(),
        "{id} outlived its last fixture"
    );
}

#[tokio::test]
async fn an_environment_source_without_its_variable_names_it() {
    for (var, result) in [
        (REDIS_URL_ENV, redis().via(Source::Environment).await.err()),
        (
            DYNAMODB_ENDPOINT_ENV,
            dynamodb().via(Source::Environment).await.err(),
        ),
    ] {
        if std::env::var_os(var).is_some() {
            continue; // This run points the fixtures at a server: nothing to check.
        }
        let message = result.expect("no variable, no server").to_string();
        assert!(message.contains(var), "{message}");
    }
}

#[tokio::test]
async fn a_missing_image_is_an_error_naming_its_variable() {
    // Why: testcontainers would try to pull it; here nothing may be pulled
    // unless OFFSTATE_TEST_PULL=1 says so.
    if offstate_testing::container::pull_allowed() {
        return; // This run may pull: a missing image is not an error.
    }
    let image = offstate_testing::images::Image::from_env(
        "OFFSTATE_TEST_NO_SUCH_IMAGE",
        "offstate-local/no-such-image:0",
    );
    let spec = offstate_testing::container::ContainerSpec::new(image, 1);
    let error = offstate_testing::container::Container::start(spec)
        .await
        .expect_err("a missing image cannot start");
    let message = error.to_string();
    assert!(message.contains("OFFSTATE_TEST_NO_SUCH_IMAGE"), "{message}");
}
