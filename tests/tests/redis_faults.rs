//! Outages and bad data on a single redis-server: a paused or dead server
//! gives typed errors within the configured bound, the same store instance
//! recovers once the server is back, and a corrupted hash is a typed error
//! for that session only.

// Test helpers: failing loudly is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use offstate_core::{
    Change, Clock, CreateOutcome, Deadlines, Record, SessionId, SessionKey, SessionStore,
    StoreError, SystemClock, TouchOutcome, Version,
};
use offstate_redis::RedisStore;
use offstate_redis::redis::cmd;
use offstate_testing::{Redis, redis};

const BOUND: Duration = Duration::from_millis(300);
/// Far above the store's bound: only a store that hangs trips it.
const HANG_GUARD: Duration = Duration::from_secs(20);

fn record(data: &[(&str, &str)]) -> Record {
    let now = SystemClock.now();
    let mut record = Record::new(
        now,
        Deadlines::idle_at(now.saturating_add(Duration::from_secs(3600))),
    );
    for (k, v) in data {
        record.data.insert((*k).to_owned(), v.as_bytes().to_vec());
    }
    record
}

async fn server() -> Redis {
    redis().await.expect("a Redis")
}

async fn bounded_store(server: &Redis) -> RedisStore {
    let config = server
        .config()
        .clone()
        .with_connect_timeout(BOUND)
        .with_command_timeout(BOUND);
    server.connect_with(config).await.expect("store")
}

fn is_outage(result: &Result<Option<Arc<Record>>, StoreError>) -> bool {
    matches!(
        result,
        Err(StoreError::Timeout(_) | StoreError::Unavailable(_))
    )
}

/// Retries `load` until the store answers again; returns how many tries
/// failed before it did.
async fn until_recovered(store: &RedisStore) -> usize {
    let probe = SessionId::generate().key();
    for failed in 0..200 {
        if store
            .load(&probe, offstate_core::Timestamp::now())
            .await
            .is_ok()
        {
            return failed;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the store did not recover after the server came back");
}

/// A server that lost its scripts (restarted empty, failed over, `SCRIPT
/// FLUSH`) answers `NOSCRIPT`: the store loads the script and runs it
/// again, for a script with keys only (load) and with arguments (touch,
/// delete).
#[tokio::test]
async fn flushed_scripts_are_loaded_again() {
    let server = server().await;
    let store = bounded_store(&server).await;
    let now = offstate_core::Timestamp::now();
    let key = SessionId::generate().key();
    let original = record(&[("cart", "apple")]);
    assert_eq!(
        store.create(&key, &original, now).await.expect("create"),
        CreateOutcome::Created
    );
    let flush = || async {
        server
            .query::<()>(cmd("SCRIPT").arg("FLUSH"))
            .await
            .expect("SCRIPT FLUSH");
    };
    flush().await;
    let loaded = store.load(&key, now).await.expect("load").expect("live");
    assert_eq!(loaded.data["cart"], b"apple");
    flush().await;
    assert_eq!(
        store
            .touch(&key, SystemClock.now(), now)
            .await
            .expect("touch"),
        TouchOutcome::Touched
    );
    flush().await;
    assert!(store.delete(&key, now).await.expect("delete"));
    assert!(store.load(&key, now).await.expect("load").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_then_killed_server_gives_typed_errors_and_the_store_recovers() {
    // A process: Docker cannot kill a frozen container without thawing it,
    // which would let the calls in flight through.
    let server = redis()
        .via(offstate_testing::Source::Process)
        .await
        .expect("a Redis process");
    let store = bounded_store(&server).await;
    let key = SessionId::generate().key();
    assert_eq!(
        store
            .create(
                &key,
                &record(&[("k", "1")]),
                offstate_core::Timestamp::now()
            )
            .await
            .expect("create"),
        CreateOutcome::Created
    );

    // A server that answers nothing: every call ends with Timeout.
    server.node(0).pause().await.expect("pause");
    let mut in_flight = Vec::new();
    for _ in 0..20 {
        let store = store.clone();
        let key = key.clone();
        in_flight.push(tokio::spawn(async move {
            tokio::time::timeout(
                HANG_GUARD,
                store.load(&key, offstate_core::Timestamp::now()),
            )
            .await
        }));
    }
    let touch = tokio::time::timeout(
        HANG_GUARD,
        store.touch(&key, SystemClock.now(), offstate_core::Timestamp::now()),
    )
    .await;
    assert!(
        matches!(touch, Ok(Err(StoreError::Timeout(_)))),
        "touch on a paused server: {touch:?}"
    );
    // While those are waiting, the server dies.
    server.node(0).kill().await.expect("kill");
    for call in in_flight {
        let result = call
            .await
            .expect("task")
            .expect("a call hung past the store's bound");
        assert!(is_outage(&result), "in-flight load: {result:?}");
    }
    // A dead server: refused connections are outages too, never a hang.
    let dead = tokio::time::timeout(
        HANG_GUARD,
        store.load(&key, offstate_core::Timestamp::now()),
    )
    .await
    .expect("hung on a dead server");
    assert!(is_outage(&dead), "load on a dead server: {dead:?}");

    // Same port, fresh (empty) server: the same store instance recovers.
    server.node(0).restart().await.expect("restart");
    until_recovered(&store).await;
    assert!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_none(),
        "data came back from a wiped server"
    );
    let fresh = SessionId::generate().key();
    assert_eq!(
        store
            .create(
                &fresh,
                &record(&[("k", "2")]),
                offstate_core::Timestamp::now()
            )
            .await
            .expect("create"),
        CreateOutcome::Created
    );
    let loaded = store
        .load(&fresh, offstate_core::Timestamp::now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(loaded.data.get("k").map(Vec::as_slice), Some(&b"2"[..]));
}

/// One deadline per call: once connected, a call to a server that does not
/// answer fails at the command timeout (the connect timeout, far longer,
/// plays no part), and the connection it timed out on is not trusted
/// again: once the server answers, the next call comes on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_fails_at_the_command_timeout_and_its_connection_is_replaced() {
    let server = redis()
        .via(offstate_testing::Source::Process)
        .await
        .expect("a Redis process");
    let config = server
        .config()
        .clone()
        .with_pool_size(1)
        .with_connect_timeout(HANG_GUARD)
        .with_command_timeout(BOUND);
    let store = server.connect_with(config).await.expect("store");
    let conn = store.connection();
    let client_id = || async {
        tokio::time::timeout(HANG_GUARD, conn.query::<i64>(cmd("CLIENT").arg("ID")))
            .await
            .expect("hung")
            .expect("CLIENT ID")
    };
    let first = client_id().await;
    assert_eq!(client_id().await, first, "one slot: the same connection");

    server.node(0).pause().await.expect("pause");
    let key = SessionId::generate().key();
    let load = tokio::time::timeout(
        HANG_GUARD,
        store.load(&key, offstate_core::Timestamp::now()),
    )
    .await
    .expect("a call hung past the command timeout");
    server.node(0).resume().await.expect("resume");
    assert!(
        matches!(load, Err(StoreError::Timeout(bound)) if bound == BOUND),
        "load on a paused server: {load:?}"
    );

    let next = client_id().await;
    assert_ne!(next, first, "the connection that timed out was used again");
    assert_eq!(client_id().await, next, "the new connection is kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_between_calls_is_survived_by_pooled_connections() {
    let server = server().await;
    let store = bounded_store(&server).await;
    // Fill the pool with connections that the restart will break.
    let mut warm = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        warm.push(tokio::spawn(async move {
            store
                .load(
                    &SessionId::generate().key(),
                    offstate_core::Timestamp::now(),
                )
                .await
        }));
    }
    for call in warm {
        call.await.expect("task").expect("load");
    }
    server.node(0).restart().await.expect("restart");
    until_recovered(&store).await;
    // Every pooled connection was broken; none may surface as a failure now.
    for _ in 0..20 {
        let key = SessionId::generate().key();
        store
            .create(
                &key,
                &record(&[("k", "1")]),
                offstate_core::Timestamp::now(),
            )
            .await
            .expect("create after restart");
        assert!(
            store
                .load(&key, offstate_core::Timestamp::now())
                .await
                .expect("load")
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_broken_connection_has_every_other_checked_before_its_next_use() {
    let server = server().await;
    let store = bounded_store(&server).await;
    // Every connection made (eight, one per slot), used one at a time: a
    // light load, as a heartbeat or a quiet instance makes.
    for _ in 0..16 {
        store
            .load(
                &SessionId::generate().key(),
                offstate_core::Timestamp::now(),
            )
            .await
            .expect("load");
    }
    let node = server.node(0);
    node.kill().await.expect("kill");
    // One call finds out; the server is down, so it fails.
    assert!(is_outage(
        &store
            .load(
                &SessionId::generate().key(),
                offstate_core::Timestamp::now()
            )
            .await
    ));
    node.restart().await.expect("restart");
    // The other seven connections broke too, unseen: each is checked (and
    // replaced) before a request uses it, so no request fails now.
    for call in 0..16 {
        store
            .load(
                &SessionId::generate().key(),
                offstate_core::Timestamp::now(),
            )
            .await
            .unwrap_or_else(|e| panic!("call {call} after the restart failed: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_session_is_corrupt_for_that_session_only() {
    let server = server().await;
    let store = server.store();
    let bad = SessionId::generate().key();
    let good = SessionId::generate().key();
    let original = record(&[("cart", "[1]")]);
    store
        .create(&bad, &original, offstate_core::Timestamp::now())
        .await
        .expect("create");
    store
        .create(&good, &original, offstate_core::Timestamp::now())
        .await
        .expect("create");

    // The layout byte becomes one no version of offstate writes.
    server
        .query::<()>(cmd("SETRANGE").arg(store.store_key(&bad)).arg(0).arg("x"))
        .await
        .expect("SETRANGE");
    assert!(matches!(
        store.load(&bad, offstate_core::Timestamp::now()).await,
        Err(StoreError::Corrupt(_))
    ));
    let change = Change::new(Version::INITIAL, original.deadlines);
    assert!(matches!(
        store
            .save(&bad, &change, offstate_core::Timestamp::now())
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(matches!(
        store
            .touch(&bad, SystemClock.now(), offstate_core::Timestamp::now())
            .await,
        Err(StoreError::Corrupt(_))
    ));
    assert_eq!(
        store
            .create(&bad, &original, offstate_core::Timestamp::now())
            .await
            .expect("create"),
        CreateOutcome::Exists,
        "create overwrote a corrupt record"
    );

    // The other session is untouched and fully usable.
    assert_eq!(
        store
            .load(&good, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .as_deref(),
        Some(&original)
    );
    assert!(matches!(
        store
            .save(&good, &change, offstate_core::Timestamp::now())
            .await,
        Ok(offstate_core::SaveOutcome::Saved(_))
    ));
    assert_eq!(
        store
            .touch(
                &good,
                SystemClock.now().saturating_add(Duration::from_secs(60)),
                offstate_core::Timestamp::now(),
            )
            .await
            .expect("touch"),
        TouchOutcome::Touched
    );

    // A value of another type at the session key is corrupt too, and delete clears it.
    server
        .query::<()>(cmd("DEL").arg(store.store_key(&bad)))
        .await
        .expect("DEL");
    server
        .query::<()>(cmd("SET").arg(store.store_key(&bad)).arg("garbage"))
        .await
        .expect("SET");
    assert!(matches!(
        store.load(&bad, offstate_core::Timestamp::now()).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store
            .delete(&bad, offstate_core::Timestamp::now())
            .await
            .expect("delete")
    );
    assert!(
        store
            .load(&bad, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_auth_is_required_and_used() {
    let server = redis()
        .with_password("p4ss-word")
        .await
        .expect("a Redis with a password");
    let store = server.store();
    let key = SessionId::generate().key();
    store
        .create(
            &key,
            &record(&[("k", "1")]),
            offstate_core::Timestamp::now(),
        )
        .await
        .expect("create with AUTH");
    assert!(
        store
            .load(&key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .is_some()
    );

    // Without the password the server refuses, as a typed error.
    let anonymous = RedisStore::connect(
        offstate_redis::RedisConfig::new(server.url())
            .with_cluster(false)
            .with_connect_timeout(BOUND)
            .with_command_timeout(BOUND),
    )
    .await
    .expect("store");
    let refused = anonymous.load(&key, offstate_core::Timestamp::now()).await;
    assert!(
        refused.is_err(),
        "a store without the password read a session: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_is_reusable_for_other_commands() {
    let server = server().await;
    let store = server.store();
    let conn = store.connection().clone();
    let pong: String = conn
        .query(&offstate_redis::redis::cmd("PING"))
        .await
        .expect("PING");
    assert_eq!(pong, "PONG");
    let echoed: String = conn
        .query(offstate_redis::redis::cmd("ECHO").arg("hi"))
        .await
        .expect("ECHO");
    assert_eq!(echoed, "hi");
    assert!(!conn.is_cluster());
}

/// A session as offstate stored it before sessions were strings: one hash.
async fn plant_hash(server: &Redis, store: &RedisStore, key: &SessionKey, fields: &[(&str, &str)]) {
    let name = store.store_key(key);
    let mut hset = cmd("HSET");
    hset.arg(&name);
    for (field, value) in fields {
        hset.arg(*field).arg(*value);
    }
    server.query::<()>(&hset).await.expect("HSET");
    server
        .query::<()>(cmd("PEXPIRE").arg(&name).arg(60_000))
        .await
        .expect("PEXPIRE");
}

/// The Redis type of the value at `key`'s session name.
async fn stored_type(server: &Redis, store: &RedisStore, key: &SessionKey) -> String {
    server
        .query(cmd("TYPE").arg(store.store_key(key)))
        .await
        .expect("TYPE")
}

/// A live session hash at `version`, created now with a minute's idle
/// timeout and `data` (`d:` fields): its key and "now".
async fn plant_live_hash(
    server: &Redis,
    store: &RedisStore,
    version: &str,
    data: &[(&str, &str)],
) -> (SessionKey, offstate_core::Timestamp) {
    let key = SessionId::generate().key();
    let now = offstate_core::Timestamp::now();
    let idle = now
        .saturating_add(Duration::from_secs(60))
        .as_millis()
        .to_string();
    let created = now.as_millis().to_string();
    let mut fields = vec![
        ("version", version),
        ("created", created.as_str()),
        ("idle", idle.as_str()),
    ];
    fields.extend_from_slice(data);
    plant_hash(server, store, &key, &fields).await;
    (key, now)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hash_of_an_earlier_version_is_read_then_saved_as_a_string() {
    let server = server().await;
    let store = server.store();
    let (key, now) = plant_live_hash(
        &server,
        store,
        "4",
        &[("d:cart", "[1,2]"), ("d:name", "\"ann\"")],
    )
    .await;

    let loaded = store
        .load(&key, now)
        .await
        .expect("load")
        .expect("the hash is a session");
    assert_eq!(loaded.version, Version::new(4));
    assert_eq!(
        loaded.data.get("cart").map(Vec::as_slice),
        Some(&b"[1,2]"[..])
    );

    // A save at another version is a conflict that returns the hash's record.
    let stale = Change::new(Version::new(3), loaded.deadlines);
    match store.save(&key, &stale, now).await.expect("save") {
        offstate_core::SaveOutcome::Conflict(current) => assert_eq!(*current, *loaded),
        other => panic!("expected a conflict, got {other:?}"),
    }

    // A save at its version: a string now, with the data it did not change.
    let mut change = Change::new(Version::new(4), loaded.deadlines);
    change.set.insert("cart".into(), b"[1,2,3]".to_vec());
    assert_eq!(
        store.save(&key, &change, now).await.expect("save"),
        offstate_core::SaveOutcome::Saved(Version::new(5))
    );
    assert_eq!(stored_type(&server, store, &key).await, "string");
    let ttl: i64 = server
        .query(cmd("PTTL").arg(store.store_key(&key)))
        .await
        .expect("PTTL");
    assert!(ttl > 0, "the saved session keeps its expiry, PTTL {ttl}");
    let saved = store.load(&key, now).await.expect("load").expect("saved");
    assert_eq!(saved.version, Version::new(5));
    assert_eq!(
        saved.data.len(),
        2,
        "the hash's other data is kept: {saved:?}"
    );
    assert_eq!(saved.created_at, loaded.created_at);
    assert_eq!(saved.deadlines, loaded.deadlines);
    assert_eq!(
        saved.data.get("cart").map(Vec::as_slice),
        Some(&b"[1,2,3]"[..])
    );
    assert_eq!(
        saved.data.get("name").map(Vec::as_slice),
        Some(&b"\"ann\""[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hash_of_an_earlier_version_becomes_a_string_at_its_first_touch() {
    let server = server().await;
    let store = server.store();
    let (key, now) = plant_live_hash(&server, store, "2", &[("d:k", "1"), ("d:l", "2")]).await;
    let before = store
        .load(&key, now)
        .await
        .expect("load")
        .expect("a session");
    let later = now.saturating_add(Duration::from_secs(120));
    assert_eq!(
        store.touch(&key, later, now).await.expect("touch"),
        TouchOutcome::Touched
    );
    assert_eq!(stored_type(&server, store, &key).await, "string");
    let touched = store.load(&key, now).await.expect("load").expect("touched");
    assert_eq!(touched.deadlines.idle, Some(later));
    assert_eq!(touched.version, Version::new(2));
    assert_eq!(touched.data, before.data);
    assert_eq!(touched.created_at, before.created_at);
    assert!(store.delete(&key, now).await.expect("delete"));
    assert!(store.load(&key, now).await.expect("load").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_session_hash_is_corrupt() {
    let server = server().await;
    let store = server.store();
    let key = SessionId::generate().key();
    let now = offstate_core::Timestamp::now();
    plant_hash(
        &server,
        store,
        &key,
        &[("version", "notanumber"), ("created", "1")],
    )
    .await;
    assert!(matches!(
        store.load(&key, now).await,
        Err(StoreError::Corrupt(_))
    ));
    let change = Change::new(Version::INITIAL, Deadlines::none());
    assert!(matches!(
        store.save(&key, &change, now).await,
        Err(StoreError::Corrupt(_))
    ));
    assert!(
        store.delete(&key, now).await.expect("delete"),
        "a corrupt hash is deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_hash_is_replaced_by_the_record_its_writer_built() {
    let server = server().await;
    let store = server.store();
    let (key, now) = plant_live_hash(&server, store, "7", &[("d:a", "1"), ("d:b", "2")]).await;
    let base = store
        .load(&key, now)
        .await
        .expect("load")
        .expect("a session");
    let mut change = Change::new(base.version, base.deadlines);
    change.remove.insert("b".into());
    change.set.insert("c".into(), b"3".to_vec());
    let next = Arc::new(change.apply_to(&base));
    assert_eq!(
        store
            .save_applied(&key, &change, &base, &next, now)
            .await
            .expect("save"),
        offstate_core::SaveOutcome::Saved(Version::new(8))
    );
    let saved = store.load(&key, now).await.expect("load").expect("saved");
    assert_eq!(*saved, *next);
}
