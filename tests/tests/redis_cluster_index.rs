//! Redis Cluster specifics: the principal index lives in another slot (and
//! here another node) than the sessions it lists, and still lists and
//! revokes them; cluster mode is detected from the servers themselves.

use std::collections::BTreeSet;
use std::time::Duration;

use offstate_core::{
    Change, Clock, Deadlines, PrincipalChange, Record, SessionId, SessionStore, SystemClock,
    Version,
};
use offstate_redis::redis::cmd;
use offstate_redis::{ClusterMode, RedisConfig, RedisStore};
use offstate_testing::{Redis, redis, redis_cluster};

#[allow(clippy::expect_used)] // A test helper: a failure here fails the test.
async fn cluster() -> Redis {
    redis_cluster().shared().await.expect("a Redis Cluster")
}

fn record(principal: Option<&str>) -> Record {
    let now = SystemClock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(3600))),
    );
    record.principal = principal.map(str::to_owned);
    record.data.insert("k".into(), b"1".to_vec());
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn principal_index_lists_and_revokes_sessions_on_other_nodes() {
    let cluster = cluster().await;
    let store = cluster.store();
    let principal = format!("user-{}", &SessionId::generate().to_string()[..10]);
    let index_key = store.principal_key(&principal);
    let index_node = cluster.node_serving(&index_key).await.expect("index node");

    // Sessions until at least two live on nodes other than the index's.
    let mut keys = BTreeSet::new();
    let mut elsewhere = 0;
    while elsewhere < 2 || keys.len() < 4 {
        let key = SessionId::generate().key();
        if cluster
            .node_serving(&store.store_key(&key))
            .await
            .expect("session node")
            != index_node
        {
            elsewhere += 1;
        }
        if keys.len() % 2 == 0 {
            store
                .create(
                    &key,
                    &record(Some(&principal)),
                    offstate_core::Timestamp::now(),
                )
                .await
                .expect("create");
        } else {
            // Attached by a save rather than at creation.
            store
                .create(&key, &record(None), offstate_core::Timestamp::now())
                .await
                .expect("create");
            let mut change = Change::new(Version::INITIAL, record(None).deadlines);
            change.principal = PrincipalChange::Set(principal.clone());
            store
                .save(&key, &change, offstate_core::Timestamp::now())
                .await
                .expect("save");
        }
        keys.insert(key);
    }
    let other = SessionId::generate().key();
    store
        .create(
            &other,
            &record(Some("someone-else")),
            offstate_core::Timestamp::now(),
        )
        .await
        .expect("create");

    let listed: BTreeSet<_> = store
        .list_principal(&principal, offstate_core::Timestamp::now())
        .await
        .expect("list")
        .into_iter()
        .collect();
    assert_eq!(listed, keys);
    assert_eq!(
        store
            .revoke_principal(&principal, offstate_core::Timestamp::now())
            .await
            .expect("revoke"),
        keys.len()
    );
    for key in &keys {
        assert!(
            store
                .load(key, offstate_core::Timestamp::now())
                .await
                .expect("load")
                .is_none(),
            "revoked session still loads"
        );
    }
    assert!(
        store
            .load(&other, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_some(),
        "revoke hit another principal"
    );
    assert!(
        store
            .list_principal(&principal, offstate_core::Timestamp::now())
            .await
            .expect("list")
            .is_empty()
    );
    let left: u64 = cluster
        .query(cmd("ZCARD").arg(&index_key))
        .await
        .expect("ZCARD");
    assert_eq!(left, 0, "revoke left index entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_mode_detects_cluster_and_standalone() {
    let cluster = cluster().await;
    let store =
        RedisStore::connect(RedisConfig::new(cluster.url()).with_cluster_mode(ClusterMode::Auto))
            .await
            .expect("store");
    assert!(store.connection().is_cluster());
    let key = SessionId::generate().key();
    store
        .create(&key, &record(None), offstate_core::Timestamp::now())
        .await
        .expect("create through a detected cluster");
    assert!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_some()
    );

    let server = redis().await.expect("a Redis");
    let store = RedisStore::connect(RedisConfig::new(server.url()))
        .await
        .expect("store");
    assert!(!store.connection().is_cluster());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_index_is_rebuilt_by_the_next_touch_and_save_on_a_cluster() {
    let cluster = cluster().await;
    let store = cluster.store();
    let principal = format!("lost-{}", &SessionId::generate().to_string()[..10]);
    let index_key = store.principal_key(&principal);
    let touched = SessionId::generate().key();
    let saved = SessionId::generate().key();
    for key in [&touched, &saved] {
        store
            .create(
                key,
                &record(Some(&principal)),
                offstate_core::Timestamp::now(),
            )
            .await
            .expect("create");
    }
    // The whole index is lost (eviction, failover...).
    let _: i64 = cluster
        .query(cmd("DEL").arg(&index_key))
        .await
        .expect("DEL");

    let idle = SystemClock.now().saturating_add(Duration::from_secs(7200));
    store
        .touch(&touched, idle, offstate_core::Timestamp::now())
        .await
        .expect("touch");
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.set.insert("k".into(), b"2".to_vec());
    store
        .save(&saved, &change, offstate_core::Timestamp::now())
        .await
        .expect("save");

    assert_eq!(
        store
            .revoke_principal(&principal, offstate_core::Timestamp::now())
            .await
            .expect("revoke"),
        2
    );
    for key in [&touched, &saved] {
        assert!(
            store
                .load(key, offstate_core::Timestamp::now())
                .await
                .expect("load")
                .is_none()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_over_several_batches_on_a_cluster_deletes_every_session() {
    let cluster = cluster().await;
    let store = cluster.store();
    let principal = format!("many-{}", &SessionId::generate().to_string()[..10]);
    let mut keys = Vec::new();
    for _ in 0..230 {
        let key = SessionId::generate().key();
        store
            .create(
                &key,
                &record(Some(&principal)),
                offstate_core::Timestamp::now(),
            )
            .await
            .expect("create");
        keys.push(key);
    }
    assert_eq!(
        store
            .revoke_principal(&principal, offstate_core::Timestamp::now())
            .await
            .expect("revoke"),
        keys.len()
    );
    for key in &keys {
        assert!(
            store
                .load(key, offstate_core::Timestamp::now())
                .await
                .expect("load")
                .is_none()
        );
    }
    let left: u64 = cluster
        .query(cmd("ZCARD").arg(store.principal_key(&principal)))
        .await
        .expect("ZCARD");
    assert_eq!(left, 0);
}
