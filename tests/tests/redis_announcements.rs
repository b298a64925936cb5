//! A `RedisStore` with announcements publishes the invalidation of every
//! write that changes or ends a session from inside the write's own script:
//! a `RedisInvalidationChannel` subscriber hears save, touch, delete,
//! delete-if-version and each revoked session, and `MONITOR` shows every
//! `PUBLISH` coming from a script (`[0 lua]`), none from a client. On a
//! Redis Cluster a subscriber on one node hears writes to every node.

// Test helpers: failing loudly is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::time::Duration;

use offstate_core::{
    Change, ChannelEvent, Clock, CreateOutcome, Deadlines, DeleteOutcome, Invalidation,
    InvalidationChannel, Record, SaveOutcome, SessionId, SessionKey, SessionStore, SystemClock,
    Timestamp, TouchOutcome, Version,
};
use offstate_redis::{RedisInvalidationChannel, RedisStore};
use offstate_testing::redis::{monitored_command, monitored_from_script};
use offstate_testing::{Redis, redis, redis_cluster};
use tokio::sync::mpsc;

/// Far above any delivery on loopback: only a message that never comes
/// trips it.
const PATIENCE: Duration = Duration::from_secs(10);

fn now() -> Timestamp {
    SystemClock.now()
}

fn record(principal: Option<&str>) -> Record {
    let now = now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(3600))),
    );
    record.principal = principal.map(str::to_owned);
    record.data.insert("k".into(), b"1".to_vec());
    record
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", &SessionId::generate().to_string()[..12])
}

/// A subscription on a channel of its own, once it reports live.
async fn subscribe(server: &Redis, name: &str) -> mpsc::Receiver<ChannelEvent> {
    let channel = RedisInvalidationChannel::from_connection(
        server.store().connection().clone(),
        server.config(),
    )
    .expect("channel")
    .with_channel_name(name)
    // No heartbeat traffic during the test.
    .with_heartbeat(Duration::from_secs(3600));
    let mut events = channel.subscribe();
    let first = tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("a first event");
    assert_eq!(first, Some(ChannelEvent::Connected));
    events
}

async fn next_message(events: &mut mpsc::Receiver<ChannelEvent>) -> Invalidation {
    match tokio::time::timeout(PATIENCE, events.recv()).await {
        Ok(Some(ChannelEvent::Message(message))) => message,
        Ok(Some(other)) => panic!("unexpected channel event {other:?}"),
        Ok(None) => panic!("the subscription ended"),
        Err(_) => panic!("no invalidation within {PATIENCE:?}"),
    }
}

fn written(key: &SessionKey, version: Version) -> Invalidation {
    Invalidation::Key {
        key: key.clone(),
        version: Some(version),
    }
}

fn ended(key: &SessionKey) -> Invalidation {
    Invalidation::Key {
        key: key.clone(),
        version: None,
    }
}

async fn create(store: &RedisStore, principal: Option<&str>) -> SessionKey {
    let key = SessionId::generate().key();
    assert_eq!(
        store
            .create(&key, &record(principal), now())
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    key
}

/// Every write kind, each followed by the message it must announce (in
/// order: one store, one connection, one channel).
async fn write_and_hear(store: &RedisStore, events: &mut mpsc::Receiver<ChannelEvent>) {
    // A create announces nothing: the first message is the save's.
    let key = create(store, None).await;
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.set.insert("k".into(), b"2".to_vec());
    assert_eq!(
        store.save(&key, &change, now()).await.expect("save"),
        SaveOutcome::Saved(Version::INITIAL.next())
    );
    assert_eq!(
        next_message(events).await,
        written(&key, Version::INITIAL.next())
    );

    let idle = now().saturating_add(Duration::from_secs(7200));
    assert_eq!(
        store.touch(&key, idle, now()).await.expect("touch"),
        TouchOutcome::Touched
    );
    assert_eq!(
        next_message(events).await,
        written(&key, Version::INITIAL.next())
    );

    assert!(store.delete(&key, now()).await.expect("delete"));
    assert_eq!(next_message(events).await, ended(&key));

    let other = create(store, None).await;
    assert_eq!(
        store
            .delete_if_version(&other, Version::INITIAL, now())
            .await
            .expect("delete_if_version"),
        DeleteOutcome::Deleted
    );
    assert_eq!(next_message(events).await, ended(&other));

    let principal = unique("announced");
    let first = create(store, Some(&principal)).await;
    let second = create(store, Some(&principal)).await;
    assert_eq!(
        store
            .revoke_principal(&principal, now())
            .await
            .expect("revoke"),
        2
    );
    let heard: BTreeSet<_> = [next_message(events).await, next_message(events).await]
        .into_iter()
        .map(|m| format!("{m:?}"))
        .collect();
    let expected: BTreeSet<_> = [ended(&first), ended(&second)]
        .into_iter()
        .map(|m| format!("{m:?}"))
        .collect();
    assert_eq!(heard, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_write_announces_itself_from_its_script() {
    // A server of its own: MONITOR sees only this test.
    let server = redis().await.expect("a Redis");
    let name = unique("announcements");
    let mut events = subscribe(&server, &name).await;
    let store = server.store().clone().with_announcements(&name);
    assert!(store.capabilities().announces_writes);
    assert!(!server.store().capabilities().announces_writes);
    assert_eq!(store.announcement_channel(), Some(name.as_str()));

    let lines = server
        .monitor(0, write_and_hear(&store, &mut events))
        .await
        .expect("MONITOR");

    // Every PUBLISH on the channel ran inside a script.
    let mut from_scripts = 0;
    let mut from_clients = 0;
    for line in lines
        .iter()
        .filter(|line| monitored_command(line) == "PUBLISH")
    {
        // The subscription's own heartbeat is `<name>:hb:<nonce>`.
        if !line.contains(&name) || line.contains(":hb:") {
            continue;
        }
        if monitored_from_script(line) {
            from_scripts += 1;
        } else {
            println!("{line}");
            from_clients += 1;
        }
    }
    assert_eq!(from_clients, 0, "a PUBLISH round trip of its own");
    // Save, touch, delete, delete-if-version, two revoked sessions.
    assert_eq!(from_scripts, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_announcements_publishes_nothing() {
    let server = redis().shared().await.expect("a Redis");
    let name = unique("silent");
    let mut events = subscribe(&server, &name).await;
    let store = server.store();
    let key = create(store, None).await;
    assert!(store.delete(&key, now()).await.expect("delete"));
    // A message published now on the same channel is the first to arrive.
    let marker = SessionId::generate().key();
    RedisInvalidationChannel::from_connection(store.connection().clone(), server.config())
        .expect("channel")
        .with_channel_name(&name)
        .publish(&ended(&marker))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut events).await, ended(&marker));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_reach_a_subscriber_on_any_cluster_node() {
    let cluster = redis_cluster().shared().await.expect("a Redis Cluster");
    let name = unique("cluster-announcements");
    // The subscription is on the first node that answers; the writes land
    // on every node (keys of random slots).
    let mut events = subscribe(&cluster, &name).await;
    let store = cluster.store().clone().with_announcements(&name);
    let mut nodes = BTreeSet::new();
    while nodes.len() < 3 {
        let key = create(&store, None).await;
        nodes.insert(
            cluster
                .node_serving(&store.store_key(&key))
                .await
                .expect("node"),
        );
        assert!(store.delete(&key, now()).await.expect("delete"));
        assert_eq!(next_message(&mut events).await, ended(&key));
    }
    write_and_hear(&store, &mut events).await;
}
