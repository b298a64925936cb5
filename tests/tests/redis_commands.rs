//! What a session call runs inside Redis, counted with `INFO commandstats`
//! on a server of its own: the common write stores the string its writer
//! built (a `GETRANGE` of the stored header and one `SET` in the script:
//! the session's data is not read); a conflict or a session that is gone
//! is decided from one `GET` in the same script; only the cases that need
//! more fall back to the general save.

// Test helpers: failing loudly is the point.
#![allow(clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use offstate_core::{
    Change, Clock, Deadlines, ManualClock, Record, SaveOutcome, SessionId, SessionKey,
    SessionStore, Timestamp, Version,
};
use offstate_redis::RedisStore;
use offstate_redis::redis::cmd;
use offstate_testing::{Redis, redis};

const HOUR: Duration = Duration::from_secs(3600);

/// The commands run since the last call, by name (`get`, `set`, `evalsha`...).
async fn commands_since_last(server: &Redis) -> BTreeMap<String, u64> {
    let info: String = server
        .query(cmd("INFO").arg("commandstats"))
        .await
        .expect("INFO commandstats");
    let _: () = server
        .query(cmd("CONFIG").arg("RESETSTAT"))
        .await
        .expect("CONFIG RESETSTAT");
    info.lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .filter(|(name, _)| !name.starts_with("config") && name != "info")
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect()
}

/// `base` with `cart` set and the idle deadline `idle` asked, as a writer
/// builds it.
fn write(base: &Record, idle: Timestamp, cart: &str) -> (Change, Arc<Record>) {
    let mut deadlines = base.deadlines;
    deadlines.idle = Some(idle);
    let mut change = Change::new(base.version, deadlines);
    change.set.insert("cart".into(), cart.as_bytes().to_vec());
    let next = Arc::new(change.apply_to(base));
    (change, next)
}

/// A session created with an hour of idle time (and `cart` set to `[]`
/// when `cart` is true), as a writer then reads it.
async fn created(
    store: &RedisStore,
    clock: &ManualClock,
    key: &SessionKey,
    cart: bool,
) -> Arc<Record> {
    let mut record = Record::new(
        clock.now(),
        Deadlines::idle_at(clock.now().saturating_add(HOUR)),
    );
    if cart {
        record.data.insert("cart".into(), b"[]".to_vec());
    }
    store
        .create(key, &record, clock.now())
        .await
        .expect("create");
    store
        .load(key, clock.now())
        .await
        .expect("load")
        .expect("created")
}

#[tokio::test]
async fn the_common_save_is_one_get_and_one_set_and_the_rest_fall_back() {
    let server = redis().await.expect("a Redis");
    let store = server.store();
    let clock = ManualClock::new();
    let key = SessionId::generate().key();
    let created = created(store, &clock, &key, true).await;
    // The first saves load the scripts (`NOSCRIPT`, `SCRIPT LOAD`): the
    // general one, then the common one.
    let (change, primed) = write(&created, clock.now().saturating_add(HOUR), "[]");
    store.save(&key, &change, clock.now()).await.expect("save");
    let (change, base) = write(&primed, clock.now().saturating_add(HOUR), "[0]");
    store
        .save_applied(&key, &change, &primed, &base, clock.now())
        .await
        .expect("save");
    commands_since_last(&server).await;

    // An anonymous session saved by a writer that read it: the script
    // stores the writer's string as it is.
    let (change, next) = write(&base, clock.now().saturating_add(HOUR * 2), "[1]");
    let saved = store
        .save_applied(&key, &change, &base, &next, clock.now())
        .await
        .expect("save");
    assert_eq!(saved, SaveOutcome::Saved(Version::new(4)));
    assert_eq!(
        commands_since_last(&server).await,
        counts(&[("evalsha", 1), ("getrange", 1), ("set", 1)])
    );
    let ttl: i64 = server
        .query(cmd("PEXPIRETIME").arg(store.store_key(&key)))
        .await
        .expect("PEXPIRETIME");
    assert_eq!(
        u64::try_from(ttl).ok(),
        next.deadlines.idle.map(Timestamp::as_millis),
        "the key expires with the session"
    );

    // A touch at version 2 moved the idle deadline past the one the next
    // writer asks for: the general save keeps the later one (a full GET
    // after the header is its cost, paid only here).
    let touched = clock.now().saturating_add(HOUR * 3);
    store
        .touch(&key, touched, clock.now())
        .await
        .expect("touch");
    commands_since_last(&server).await;
    let read = next;
    let (change, next) = write(&read, clock.now().saturating_add(HOUR), "[1,2]");
    let saved = store
        .save_applied(&key, &change, &read, &next, clock.now())
        .await;
    assert_eq!(saved.expect("save"), SaveOutcome::Saved(Version::new(5)));
    // The common save's script finds another header and returns the
    // session (`GETRANGE`, `GET`); the general save reads it and stores.
    assert_eq!(
        commands_since_last(&server).await,
        counts(&[("evalsha", 2), ("getrange", 1), ("get", 2), ("set", 1)])
    );
    let loaded = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("saved");
    assert_eq!(loaded.deadlines.idle, Some(touched));
    let ttl: i64 = server
        .query(cmd("PEXPIRETIME").arg(store.store_key(&key)))
        .await
        .expect("PEXPIRETIME");
    assert_eq!(u64::try_from(ttl).ok(), Some(touched.as_millis()));

    // A save that sets a principal takes the general path too.
    commands_since_last(&server).await;
    let mut change = Change::new(loaded.version, loaded.deadlines);
    change.principal = offstate_core::PrincipalChange::Set("ada".into());
    let next = Arc::new(change.apply_to(&loaded));
    let saved = store
        .save_applied(&key, &change, &loaded, &next, clock.now())
        .await;
    assert_eq!(saved.expect("save"), SaveOutcome::Saved(Version::new(6)));
    let ran = commands_since_last(&server).await;
    assert_eq!(ran.get("evalsha"), Some(&1), "{ran:?}");
    assert_eq!(ran.get("getrange"), None, "{ran:?}");
    assert_eq!(ran.get("get"), Some(&1), "{ran:?}");
}

#[tokio::test]
async fn a_common_save_that_meets_another_version_or_none_decides_from_one_get() {
    let server = redis().await.expect("a Redis");
    let store = server.store();
    let clock = ManualClock::new();
    let key = SessionId::generate().key();
    let read = created(store, &clock, &key, false).await;
    let (first, first_next) = write(&read, clock.now().saturating_add(HOUR), "[1]");
    let saved = store
        .save_applied(&key, &first, &read, &first_next, clock.now())
        .await;
    assert_eq!(saved.expect("save"), SaveOutcome::Saved(Version::new(2)));
    commands_since_last(&server).await;

    // A second writer read version 1 too: it meets version 2, and gets
    // it back whole from the same script, with nothing written.
    let (second, second_next) = write(&read, clock.now().saturating_add(HOUR), "[2]");
    let saved = store
        .save_applied(&key, &second, &read, &second_next, clock.now())
        .await
        .expect("save");
    match saved {
        SaveOutcome::Conflict(current) => {
            assert_eq!(current.version, Version::new(2));
            assert_eq!(
                current.data.get("cart").map(Vec::as_slice),
                Some(&b"[1]"[..])
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        commands_since_last(&server).await,
        counts(&[("evalsha", 1), ("getrange", 1), ("get", 1)])
    );

    // The session was deleted: gone, and nothing is written back.
    assert!(store.delete(&key, clock.now()).await.expect("delete"));
    commands_since_last(&server).await;
    let (third, third_next) = write(&first_next, clock.now().saturating_add(HOUR), "[3]");
    let saved = store
        .save_applied(&key, &third, &first_next, &third_next, clock.now())
        .await;
    assert_eq!(saved.expect("save"), SaveOutcome::Gone);
    let ran = commands_since_last(&server).await;
    assert_eq!(ran.get("set"), None, "{ran:?}");
    let exists: i64 = server
        .query(cmd("EXISTS").arg(store.store_key(&key)))
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "a save of a deleted session writes nothing");
}
