//! Revocation through per-principal epochs, beyond the conformance suite:
//! saves and touches of revoked sessions, new logins after a revoke, and a
//! lost epoch key failing closed.

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_core::{
    Change, Clock, CreateOutcome, Deadlines, PrincipalChange, Record, SaveOutcome, SessionId,
    SessionKey, SessionStore, StoreError, SystemClock, TouchOutcome, Version,
};
use offstate_memcached::MemcachedStore;
use offstate_testing::Memcached;

async fn cluster() -> Memcached {
    offstate_testing::memcached_cluster(2)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"))
}

fn principal() -> String {
    format!("user-{}", &SessionId::generate().to_string()[..12])
}

fn record(principal: Option<&str>) -> Record {
    let now = SystemClock.now();
    let idle = now.saturating_add(Duration::from_secs(600));
    let mut record = Record::new(now, Deadlines::idle_at(idle));
    record.principal = principal.map(str::to_owned);
    record.data.insert("k".into(), b"1".to_vec());
    record
}

async fn login(store: &MemcachedStore, principal: &str) -> SessionKey {
    let key = SessionId::generate().key();
    let outcome = store
        .create(
            &key,
            &record(Some(principal)),
            offstate_core::Timestamp::now(),
        )
        .await
        .expect("create");
    assert_eq!(outcome, CreateOutcome::Created);
    key
}

async fn live(store: &MemcachedStore, key: &SessionKey) -> bool {
    store
        .load(key, offstate_core::Timestamp::now())
        .await
        .expect("load")
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_sessions_cannot_be_saved_or_touched_and_new_logins_work() {
    let cluster = cluster().await;
    let store = cluster.store();
    let alice = principal();
    let old: Vec<SessionKey> = login_many(store, &alice, 6).await;
    assert_eq!(
        store
            .revoke_principal(&alice, offstate_core::Timestamp::now())
            .await
            .expect("revoke"),
        0
    );

    for key in &old {
        assert!(!live(store, key).await, "revoked session loads");
        let change = Change::new(Version::INITIAL, record(None).deadlines);
        assert_eq!(
            store
                .save(key, &change, offstate_core::Timestamp::now())
                .await
                .expect("save"),
            SaveOutcome::Gone
        );
        let deadline = SystemClock.now().saturating_add(Duration::from_secs(900));
        assert_eq!(
            store
                .touch(key, deadline, offstate_core::Timestamp::now())
                .await
                .expect("touch"),
            TouchOutcome::Gone
        );
    }

    // A login after the revoke is live, and the old ones stay dead.
    let new = login(store, &alice).await;
    assert!(live(store, &new).await);
    // So is a session that attaches the principal by a save.
    let anonymous = SessionId::generate().key();
    store
        .create(&anonymous, &record(None), offstate_core::Timestamp::now())
        .await
        .expect("create");
    let mut change = Change::new(Version::INITIAL, record(None).deadlines);
    change.principal = PrincipalChange::Set(alice.clone());
    assert!(matches!(
        store
            .save(&anonymous, &change, offstate_core::Timestamp::now())
            .await
            .expect("save"),
        SaveOutcome::Saved(_)
    ));
    assert!(live(store, &anonymous).await);
    for key in &old {
        assert!(
            !live(store, key).await,
            "a new login revived a revoked session"
        );
    }

    // A second revoke ends the new ones too.
    store
        .revoke_principal(&alice, offstate_core::Timestamp::now())
        .await
        .expect("revoke");
    assert!(!live(store, &new).await);
    assert!(!live(store, &anonymous).await);
}

async fn login_many(store: &MemcachedStore, principal: &str, n: usize) -> Vec<SessionKey> {
    let mut keys = Vec::new();
    for _ in 0..n {
        keys.push(login(store, principal).await);
    }
    keys
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_epoch_key_fails_closed_and_never_revives_revoked_sessions() {
    let cluster = cluster().await;
    let store = cluster.store();
    let bob = principal();
    let revoked = login(store, &bob).await;
    store
        .revoke_principal(&bob, offstate_core::Timestamp::now())
        .await
        .expect("revoke");
    let current = login(store, &bob).await;
    assert!(live(store, &current).await);

    // The epoch key is evicted (or its node replaced).
    let epoch_key = store.epoch_key(&bob);
    let mut removed = false;
    for i in 0..2 {
        removed |= cluster.raw_delete(i, &epoch_key).await.expect("raw delete");
    }
    assert!(removed, "the epoch key {epoch_key} was on no node");

    // Without its epoch no session of bob is live: logged out, not revived.
    assert!(!live(store, &current).await);
    assert!(!live(store, &revoked).await);
    // Revoking a principal without an epoch key is a harmless no-op.
    assert_eq!(
        store
            .revoke_principal(&bob, offstate_core::Timestamp::now())
            .await
            .expect("revoke"),
        0
    );

    // Logging in again recreates the epoch at a fresh random value, which
    // neither old session recorded.
    let again = login(store, &bob).await;
    assert!(live(store, &again).await);
    assert!(!live(store, &current).await);
    assert!(!live(store, &revoked).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_spares_other_principals_and_anonymous_sessions() {
    let cluster = cluster().await;
    let store = cluster.store();
    let (carol, dave) = (principal(), principal());
    let carols = login(store, &carol).await;
    let daves = login(store, &dave).await;
    let anonymous = SessionId::generate().key();
    store
        .create(&anonymous, &record(None), offstate_core::Timestamp::now())
        .await
        .expect("create");
    store
        .revoke_principal(&carol, offstate_core::Timestamp::now())
        .await
        .expect("revoke");
    assert!(!live(store, &carols).await);
    assert!(live(store, &daves).await);
    assert!(live(store, &anonymous).await);
    match store
        .list_principal(&dave, offstate_core::Timestamp::now())
        .await
    {
        Err(StoreError::Unsupported(_)) => {}
        other => panic!("memcached cannot list a principal's sessions, got {other:?}"),
    }
    assert!(!store.capabilities().list_principal);
}
