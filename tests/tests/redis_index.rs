//! The Redis principal index under loss and growth, and what a full Redis
//! answers: a lost index entry (or a lost index) comes back with the
//! session's next write or touch, every add trims what has ended, a revoke
//! cut short by its time bound keeps what it did and a retry finishes it,
//! on a standalone Redis every write of a logged-in session is one round
//! trip (the index update is in the script), and a Redis out of memory is
//! an outage, not a bug.

// Test helpers: failing loudly is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::Duration;

use offstate_core::{
    Change, Clock, CreateOutcome, Deadlines, PrincipalChange, Record, SaveOutcome, SessionId,
    SessionKey, SessionStore, StoreError, SystemClock, Timestamp, TouchOutcome, Version,
};
use offstate_redis::RedisStore;
use offstate_redis::redis::{Client, cmd, pipe};
use offstate_testing::redis::{monitored_command, monitored_from_script};
use offstate_testing::{Redis, redis as redis_fixture};

async fn shared() -> Redis {
    redis_fixture().shared().await.expect("a Redis")
}

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

async fn create(store: &RedisStore, principal: Option<&str>) -> SessionKey {
    let key = SessionId::generate().key();
    let created = store
        .create(&key, &record(principal), now())
        .await
        .expect("create");
    assert_eq!(created, CreateOutcome::Created);
    key
}

async fn zcard(server: &Redis, index: &str) -> usize {
    server.query(cmd("ZCARD").arg(index)).await.expect("ZCARD")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn touch_reindexes_a_session_whose_index_key_vanished() {
    let server = shared().await;
    let store = server.store();
    let principal = unique("vanished-index");
    let key = create(store, Some(&principal)).await;
    let index = store.principal_key(&principal);
    let _: i64 = server.query(cmd("DEL").arg(&index)).await.expect("DEL");
    assert_eq!(zcard(&server, &index).await, 0);

    let idle = now().saturating_add(Duration::from_secs(7200));
    assert_eq!(
        store.touch(&key, idle, now()).await.expect("touch"),
        TouchOutcome::Touched
    );

    assert_eq!(zcard(&server, &index).await, 1);
    assert_eq!(
        store
            .revoke_principal(&principal, now())
            .await
            .expect("revoke"),
        1
    );
    assert!(store.load(&key, now()).await.expect("load").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn save_reindexes_a_session_whose_index_entry_vanished() {
    let server = shared().await;
    let store = server.store();
    let principal = unique("vanished-entry");
    let key = create(store, Some(&principal)).await;
    let other = create(store, Some(&principal)).await;
    let index = store.principal_key(&principal);
    let _: i64 = server
        .query(cmd("ZREM").arg(&index).arg(key.as_str()))
        .await
        .expect("ZREM");

    // A save that keeps the principal and changes data only.
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.set.insert("k".into(), b"2".to_vec());
    assert!(matches!(
        store.save(&key, &change, now()).await.expect("save"),
        SaveOutcome::Saved(_)
    ));

    assert_eq!(
        store
            .revoke_principal(&principal, now())
            .await
            .expect("revoke"),
        2
    );
    assert!(store.load(&key, now()).await.expect("load").is_none());
    assert!(store.load(&other, now()).await.expect("load").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_trims_thousands_of_ended_entries() {
    let server = shared().await;
    let store = server.store();
    let principal = unique("trimmed");
    let index = store.principal_key(&principal);
    // 5,000 entries of sessions that ended long ago (scores in 1970).
    for chunk in 0..5 {
        let mut command = cmd("ZADD");
        command.arg(&index);
        for i in 0..1000 {
            let n = chunk * 1000 + i + 1;
            command.arg(n).arg(SessionId::generate().key().as_str());
        }
        let _: i64 = server.query(&command).await.expect("ZADD");
    }
    assert_eq!(zcard(&server, &index).await, 5000);

    let key = create(store, Some(&principal)).await;

    assert_eq!(zcard(&server, &index).await, 1);
    let score: Option<f64> = server
        .query(cmd("ZSCORE").arg(&index).arg(key.as_str()))
        .await
        .expect("ZSCORE");
    assert!(score.is_some(), "the new session is indexed");
    assert_eq!(
        store.list_principal(&principal, now()).await.expect("list"),
        vec![key]
    );
}

/// Writes `n` sessions of `principal` straight into Redis, in the store's
/// data model, pipelined (the store's own creates would take long).
async fn plant_sessions(server: &Redis, store: &RedisStore, principal: &str, n: usize) {
    let idle = now()
        .saturating_add(Duration::from_secs(3600))
        .as_millis()
        .to_string();
    let index = store.principal_key(principal);
    let client = Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let mut planted = 0;
    while planted < n {
        let mut batch = pipe();
        for _ in 0..1000.min(n - planted) {
            let key = SessionId::generate().key();
            batch
                .cmd("HSET")
                .arg(store.store_key(&key))
                .arg("version")
                .arg(1)
                .arg("created")
                .arg(now().as_millis())
                .arg("idle")
                .arg(&idle)
                .arg("principal")
                .arg(principal)
                .ignore();
            batch
                .cmd("ZADD")
                .arg(&index)
                .arg(&idle)
                .arg(key.as_str())
                .ignore();
            planted += 1;
        }
        let () = batch.query_async(&mut conn).await.expect("pipeline");
    }
    assert_eq!(zcard(server, &index).await, n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_cut_by_its_bound_keeps_its_progress_and_a_retry_finishes() {
    const SESSIONS: usize = 20_000;
    const BOUND: Duration = Duration::from_millis(50);
    let server = shared().await;
    let principal = unique("batched");
    plant_sessions(&server, server.store(), &principal, SESSIONS).await;
    let index = server.store().principal_key(&principal);

    // 100 ms per call: far less than 20,000 scripts take Redis alone.
    let tight = server
        .connect_with(
            server
                .config()
                .clone()
                .with_connect_timeout(BOUND)
                .with_command_timeout(BOUND),
        )
        .await
        .expect("store");
    // A warm pool, so the first call spends its bound on the revoke.
    let _ = tight.load(&SessionId::generate().key(), now()).await;

    let first = tight.revoke_principal(&principal, now()).await;
    assert!(
        matches!(first, Err(StoreError::Timeout(_))),
        "20,000 sessions in 100 ms: {first:?}"
    );
    let mut left = zcard(&server, &index).await;
    assert!(left < SESSIONS, "the cut revoke removed nothing");
    assert!(left > 0, "the cut revoke finished after all");

    let mut attempts = 1;
    let mut revoked_last = None;
    while attempts < 5000 {
        attempts += 1;
        match tight.revoke_principal(&principal, now()).await {
            Ok(n) => {
                revoked_last = Some(n);
                break;
            }
            Err(StoreError::Timeout(_)) => {
                // Every cut call keeps what it did.
                let now_left = zcard(&server, &index).await;
                assert!(now_left <= left, "the index grew back");
                left = now_left;
            }
            Err(other) => panic!("revoke failed: {other}"),
        }
    }
    assert!(revoked_last.is_some(), "no retry finished");
    assert_eq!(zcard(&server, &index).await, 0);
    assert!(
        server
            .store()
            .list_principal(&principal, now())
            .await
            .expect("list")
            .is_empty()
    );
    println!("revoke of {SESSIONS} sessions: {attempts} calls of at most 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_over_several_batches_deletes_every_session() {
    let server = shared().await;
    let store = server.store();
    let principal = unique("batches");
    let mut keys = Vec::new();
    for _ in 0..250 {
        keys.push(create(store, Some(&principal)).await);
    }
    assert_eq!(
        store
            .revoke_principal(&principal, now())
            .await
            .expect("revoke"),
        250
    );
    for key in &keys {
        assert!(store.load(key, now()).await.expect("load").is_none());
    }
    assert_eq!(zcard(&server, &store.principal_key(&principal)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_redis_out_of_memory_are_an_outage() {
    // A server of its own: its memory limit is changed.
    let server = redis_fixture().await.expect("a Redis");
    let store = server.store();
    let key = create(store, Some("oom-user")).await;
    // Load every script while writes still work.
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.set.insert("k".into(), b"2".to_vec());
    let saved = store.save(&key, &change, now()).await.expect("save");
    assert_eq!(saved, SaveOutcome::Saved(Version::INITIAL.next()));
    let idle = now().saturating_add(Duration::from_secs(7200));
    store.touch(&key, idle, now()).await.expect("touch");

    let _: () = server
        .query(
            cmd("CONFIG")
                .arg("SET")
                .arg("maxmemory-policy")
                .arg("noeviction"),
        )
        .await
        .expect("CONFIG SET");
    let _: () = server
        .query(cmd("CONFIG").arg("SET").arg("maxmemory").arg(1))
        .await
        .expect("CONFIG SET");

    let mut change = Change::new(Version::INITIAL.next(), record(None).deadlines);
    change.set.insert("k".into(), b"3".to_vec());
    let save = store.save(&key, &change, now()).await;
    assert!(
        matches!(save, Err(StoreError::Unavailable(_))),
        "save: {save:?}"
    );
    let created = store
        .create(&SessionId::generate().key(), &record(None), now())
        .await;
    assert!(
        matches!(created, Err(StoreError::Unavailable(_))),
        "create: {created:?}"
    );
    // A touch that moves the idle deadline writes a field.
    let later = idle.saturating_add(Duration::from_secs(60));
    let touched = store.touch(&key, later, now()).await;
    assert!(
        matches!(touched, Err(StoreError::Unavailable(_))),
        "touch: {touched:?}"
    );
    // Reads still work.
    assert!(store.load(&key, now()).await.expect("load").is_some());

    let _: () = server
        .query(cmd("CONFIG").arg("SET").arg("maxmemory").arg(0))
        .await
        .expect("CONFIG SET");
    assert!(matches!(
        store.save(&key, &change, now()).await.expect("save"),
        SaveOutcome::Saved(_)
    ));
    // The index is writable again too.
    let mut detach = Change::new(Version::INITIAL.next().next(), record(None).deadlines);
    detach.principal = PrincipalChange::Clear;
    assert!(matches!(
        store.save(&key, &detach, now()).await.expect("save"),
        SaveOutcome::Saved(_)
    ));
}

/// The commands clients (not scripts) sent while `work` ran, as MONITOR
/// shows them: the command names, upper case.
async fn client_commands(server: &Redis, work: impl Future<Output = ()>) -> Vec<String> {
    let lines = server.monitor(0, work).await.expect("MONITOR");
    lines
        .iter()
        .filter(|line| !monitored_from_script(line))
        .map(|line| monitored_command(line))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_writes_of_a_logged_in_session_are_one_round_trip_each() {
    // A server of its own: MONITOR sees only this test.
    let server = redis_fixture().await.expect("a Redis");
    let store = server.store();
    let principal = unique("one-trip");
    let index = store.principal_key(&principal);
    // Every script loaded once (a first call may add SCRIPT LOAD).
    let warm = create(store, Some(&principal)).await;
    let idle = now().saturating_add(Duration::from_secs(7200));
    store.touch(&warm, idle, now()).await.expect("touch");
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.set.insert("k".into(), b"2".to_vec());
    store.save(&warm, &change, now()).await.expect("save");
    store.delete(&warm, now()).await.expect("delete");

    let key = SessionId::generate().key();
    let commands = client_commands(&server, async {
        let created = store
            .create(&key, &record(Some(&principal)), now())
            .await
            .expect("create");
        assert_eq!(created, CreateOutcome::Created);
        assert!(matches!(
            store.save(&key, &change, now()).await.expect("save"),
            SaveOutcome::Saved(_)
        ));
        let later = idle.saturating_add(Duration::from_secs(60));
        assert_eq!(
            store.touch(&key, later, now()).await.expect("touch"),
            TouchOutcome::Touched
        );
    })
    .await;
    assert_eq!(commands, ["EVALSHA"; 3], "create, save, touch");
    let score: Option<f64> = server
        .query(cmd("ZSCORE").arg(&index).arg(key.as_str()))
        .await
        .expect("ZSCORE");
    let later = idle.saturating_add(Duration::from_secs(60));
    assert_eq!(
        score,
        Some(later.as_millis() as f64),
        "the entry follows the touch"
    );

    let commands = client_commands(&server, async {
        assert!(store.delete(&key, now()).await.expect("delete"));
    })
    .await;
    assert_eq!(commands, ["EVALSHA"], "delete");
    assert_eq!(zcard(&server, &index).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_without_its_index_key_field_is_still_indexed_by_a_touch() {
    // As written by an earlier version: a hash, with no `ix` field.
    let server = shared().await;
    let store = server.store();
    let principal = unique("legacy");
    let key = create(store, Some(&principal)).await;
    let record = store
        .load(&key, now())
        .await
        .expect("load")
        .expect("created");
    let name = store.store_key(&key);
    let idle = record.deadlines.idle.expect("an idle deadline").as_millis();
    let _: i64 = server.query(cmd("DEL").arg(&name)).await.expect("DEL");
    let _: i64 = server
        .query(
            cmd("HSET")
                .arg(&name)
                .arg("version")
                .arg(record.version.get())
                .arg("created")
                .arg(record.created_at.as_millis())
                .arg("idle")
                .arg(idle)
                .arg("principal")
                .arg(&principal),
        )
        .await
        .expect("HSET");
    let _: i64 = server
        .query(cmd("PEXPIREAT").arg(&name).arg(idle))
        .await
        .expect("PEXPIREAT");
    let index = store.principal_key(&principal);
    let _: i64 = server.query(cmd("DEL").arg(&index)).await.expect("DEL");

    let idle = now().saturating_add(Duration::from_secs(7200));
    assert_eq!(
        store.touch(&key, idle, now()).await.expect("touch"),
        TouchOutcome::Touched
    );
    assert_eq!(
        store
            .revoke_principal(&principal, now())
            .await
            .expect("revoke"),
        1
    );
    assert!(store.load(&key, now()).await.expect("load").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_to_a_redis_busy_with_a_script_are_an_outage() {
    // A server of its own: it is kept busy.
    let server = redis_fixture().await.expect("a Redis");
    let store = server.store();
    let key = create(store, None).await;
    let _: () = server
        .query(cmd("CONFIG").arg("SET").arg("busy-reply-threshold").arg(20))
        .await
        .expect("CONFIG SET");

    // A script that never ends, on a connection of its own; Redis answers
    // every other command BUSY once it has run for the threshold.
    let client = Client::open(server.url()).expect("client");
    let mut busy = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let spinning = tokio::spawn(async move {
        cmd("EVAL")
            .arg("while true do end")
            .arg(0)
            .query_async::<()>(&mut busy)
            .await
    });

    // Until the script runs, a save may still go through; once Redis is
    // busy, it is refused as an outage.
    let mut version = Version::INITIAL;
    let refusal = loop {
        assert!(!spinning.is_finished(), "the script ended by itself");
        let mut change = Change::new(version, record(None).deadlines);
        change.set.insert("k".into(), b"2".to_vec());
        match store.save(&key, &change, now()).await {
            Ok(SaveOutcome::Saved(next)) => version = next,
            Ok(other) => panic!("save: {other:?}"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(refusal, StoreError::Unavailable(_)),
        "save: {refusal:?}"
    );

    let mut killer = client
        .get_multiplexed_async_connection()
        .await
        .expect("connection");
    let _: () = cmd("SCRIPT")
        .arg("KILL")
        .query_async(&mut killer)
        .await
        .expect("SCRIPT KILL");
    assert!(
        spinning.await.expect("task").is_err(),
        "the script was killed"
    );
    let mut change = Change::new(version, record(None).deadlines);
    change.set.insert("k".into(), b"3".to_vec());
    assert!(matches!(
        store.save(&key, &change, now()).await.expect("save"),
        SaveOutcome::Saved(_)
    ));
}
