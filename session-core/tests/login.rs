//! Logging in moves a session to a new ID. These tests hold the decisive
//! store call at a gate, or make it fail, and check what every other party
//! sees: the principal never lands on the ID the client had before, a
//! logout or revoke that comes first wins, a concurrent write is not lost,
//! and a failed login leaves nobody logged in.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use offstate_core::Clock as _;
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{
    ManualClock, MemoryStore, SessionError, SessionId, SessionStore, Sessions, Timestamp,
};

struct World {
    clock: ManualClock,
    memory: MemoryStore,
    store: FaultyStore<MemoryStore>,
    sessions: Sessions,
}

fn world() -> World {
    let clock = ManualClock::new();
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let sessions = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));
    World {
        clock,
        memory,
        store,
        sessions,
    }
}

impl World {
    /// An anonymous session with a cart of `items`, as a visitor has before
    /// logging in (or as an attacker plants it).
    async fn anonymous(&self, items: &[&str]) -> SessionId {
        let session = self.sessions.new_session();
        session.insert("cart", &items).await.unwrap();
        session.save().await.unwrap();
        session.id().unwrap()
    }

    async fn principal_of(&self, id: &SessionId) -> Option<Option<String>> {
        self.memory
            .load(&id.key(), self.clock.now())
            .await
            .unwrap()
            .map(|r| r.principal.clone())
    }

    async fn logged_in(&self, user: &str) -> Vec<offstate_core::SessionKey> {
        self.memory
            .list_principal(user, self.clock.now())
            .await
            .unwrap()
    }
}

fn now(clock: &ManualClock) -> Timestamp {
    clock.now()
}

#[tokio::test]
async fn login_never_writes_the_principal_under_the_old_id() {
    // Why: the old ID may be an attacker's planted one (session fixation).
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let decisive = w.store.gate(Call::Save);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    let saving = tokio::spawn(async move { login.save().await.map(|()| login.id()) });
    decisive.reached().await;
    // The new record exists; the old one still has no principal.
    assert_eq!(w.principal_of(&old).await, Some(None));
    assert_eq!(w.logged_in("alice").await.len(), 1);
    decisive.open();
    let new = saving.await.unwrap().unwrap().unwrap();
    assert_ne!(new, old);
    assert_eq!(w.principal_of(&old).await, None, "the old ID lives on");
    assert_eq!(w.principal_of(&new).await, Some(Some("alice".into())));
}

#[tokio::test]
async fn a_login_whose_last_step_fails_leaves_nobody_logged_in_under_the_old_id() {
    // Why: a failed login must not leave the planted ID logged in.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    w.store.inject(Call::Save, Fault::Unavailable);
    w.store.inject(Call::Load, Fault::Unavailable);
    match login.save().await {
        Err(SessionError::Store(e)) if e.is_outage() => {}
        other => panic!("expected the outage, got {other:?}"),
    }
    assert_eq!(w.principal_of(&old).await, Some(None), "old ID logged in");
    // The unused new record is deleted in the background.
    for _ in 0..100 {
        if w.logged_in("alice").await.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(
        w.logged_in("alice").await.is_empty(),
        "an orphan stays logged in"
    );
    // The visitor keeps the cart and can try again.
    let again = w.sessions.load(&old).await.unwrap().unwrap();
    assert_eq!(
        again.get::<Vec<String>>("cart").await.unwrap().unwrap(),
        ["apple"]
    );
}

#[tokio::test]
async fn a_logout_during_login_wins_and_leaves_no_session_logged_in() {
    // Why: a logout the user already saw succeed must not be undone by a
    // login that was still in flight.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let decisive = w.store.gate(Call::Save);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    let saving = tokio::spawn(async move { login.save().await });
    decisive.reached().await;
    let logout = w.sessions.load(&old).await.unwrap().unwrap();
    logout.delete().await.unwrap();
    decisive.open();
    assert!(matches!(saving.await.unwrap(), Err(SessionError::Gone)));
    assert!(w.logged_in("alice").await.is_empty());
    assert_eq!(w.principal_of(&old).await, None);
    assert_eq!(w.memory.len(), 0, "a session survived a logout");
}

#[tokio::test]
async fn a_revoke_during_login_ends_the_new_session_too() {
    // Why: "log out everywhere" must reach a session whose login is in flight.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let decisive = w.store.gate(Call::Save);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    let saving = tokio::spawn(async move { login.save().await.map(|()| login.id()) });
    decisive.reached().await;
    w.sessions.revoke_principal("alice").await.unwrap();
    decisive.open();
    let new = saving.await.unwrap().unwrap().unwrap();
    assert!(w.logged_in("alice").await.is_empty());
    assert!(
        w.sessions.load(&new).await.unwrap().is_none(),
        "revoked login lives"
    );
}

#[tokio::test]
async fn a_write_to_the_old_id_during_login_is_not_lost() {
    // Why: the other tab's add was acknowledged; it must reach the new session.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let decisive = w.store.gate(Call::Save);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    let saving = tokio::spawn(async move { login.save().await.map(|()| login.id()) });
    decisive.reached().await;
    // The other tab's request is served by another instance.
    let other_instance = Sessions::new(w.store.clone()).with_clock(Arc::new(w.clock.clone()));
    let other_tab = other_instance.load(&old).await.unwrap().unwrap();
    other_tab
        .update("cart", |cart: Option<Vec<String>>| {
            let mut cart = cart.unwrap_or_default();
            cart.push("pear".into());
            Some(cart)
        })
        .await
        .unwrap();
    other_tab.save().await.unwrap();
    decisive.open();
    let new = saving.await.unwrap().unwrap().unwrap();
    let moved = w.sessions.load(&new).await.unwrap().unwrap();
    assert_eq!(
        moved.get::<Vec<String>>("cart").await.unwrap().unwrap(),
        ["apple", "pear"]
    );
    assert_eq!(moved.principal().await.unwrap().as_deref(), Some("alice"));
    assert!(w.sessions.load(&old).await.unwrap().is_none());
    assert_eq!(
        w.memory.len(),
        1,
        "the discarded first attempt was left behind"
    );
}

#[tokio::test]
async fn a_login_whose_final_answer_is_lost_but_took_effect_stands() {
    // Why: the decisive step happened; throwing the new session away would
    // log the user out and lose the cart for a slow answer.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    w.store.inject(Call::Save, Fault::TimeoutAfter);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    let new = login.id().unwrap();
    assert_ne!(new, old);
    assert_eq!(w.principal_of(&new).await, Some(Some("alice".into())));
    assert_eq!(w.principal_of(&old).await, None);
}

#[tokio::test]
async fn a_login_whose_final_step_never_arrived_is_retried() {
    // Why: a lost request must not end the login; the store still has the
    // old session, so the login goes on and the first new record is dropped.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    w.store.inject(Call::Save, Fault::TimeoutBefore);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    let new = login.id().unwrap();
    assert_eq!(w.principal_of(&new).await, Some(Some("alice".into())));
    assert_eq!(w.principal_of(&old).await, None);
    assert_eq!(
        w.logged_in("alice").await.len(),
        1,
        "the first attempt survived"
    );
    assert_eq!(w.memory.len(), 1);
}

#[tokio::test]
async fn clearing_the_principal_also_moves_the_session() {
    // Why: any change of privilege renews the ID (OWASP), logout-keep-cart too.
    let w = world();
    let session = w.sessions.new_session();
    session.set_principal("alice").await.unwrap();
    session.insert("cart", &["apple"]).await.unwrap();
    session.save().await.unwrap();
    let logged_in = session.id().unwrap();
    let keep_cart = w.sessions.load(&logged_in).await.unwrap().unwrap();
    keep_cart.clear_principal().await.unwrap();
    keep_cart.save().await.unwrap();
    let anonymous = keep_cart.id().unwrap();
    assert_ne!(anonymous, logged_in);
    assert_eq!(w.principal_of(&anonymous).await, Some(None));
    assert_eq!(w.principal_of(&logged_in).await, None);
}

#[tokio::test]
async fn a_login_restarts_the_absolute_lifetime() {
    // Why: the absolute timeout bounds how long one authentication lasts.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    w.clock.advance(Duration::from_secs(20 * 60));
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    let new = login.id().unwrap();
    let record = w
        .memory
        .load(&new.key(), now(&w.clock))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(record.created_at, now(&w.clock));
}

#[tokio::test]
async fn a_write_to_the_old_id_after_login_is_refused_not_lost() {
    // Why: a tab that loaded the session before the login must not have a
    // write acknowledged on an ID that no longer leads anywhere.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    let other_tab = w.sessions.load(&old).await.unwrap().unwrap();
    let _ = other_tab.get::<Vec<String>>("cart").await.unwrap();
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    other_tab.insert("cart", &["apple", "pear"]).await.unwrap();
    assert!(matches!(other_tab.save().await, Err(SessionError::Gone)));
    let new = login.id().unwrap();
    let moved = w.sessions.load(&new).await.unwrap().unwrap();
    assert_eq!(
        moved.get::<Vec<String>>("cart").await.unwrap().unwrap(),
        ["apple"]
    );
}

#[tokio::test]
async fn the_old_id_reads_as_absent_even_when_its_clean_up_fails() {
    // Why: the retired record is inert; only its deletion failed, and a
    // client presenting the old ID must not get the pre-login session back.
    let w = world();
    let old = w.anonymous(&["apple"]).await;
    w.store.inject(Call::DeleteIfVersion, Fault::Unavailable);
    let login = w.sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    login.save().await.unwrap();
    let stored = w.memory.load(&old.key(), now(&w.clock)).await.unwrap();
    let stored = stored.expect("the retired record stays until its deadline");
    assert!(stored.data.keys().all(|k| k.starts_with("offstate.")));
    assert_eq!(stored.principal, None);
    assert!(w.sessions.load(&old).await.unwrap().is_none());
    assert!(w.sessions.inspect(&old.key()).await.unwrap().is_none());
    assert_eq!(w.logged_in("alice").await.len(), 1);
}

#[tokio::test]
async fn keys_offstate_keeps_for_itself_are_refused() {
    // Why: a value under offstate's own keys could make a session read as
    // retired.
    let w = world();
    let session = w.sessions.new_session();
    match session.insert("offstate.retired", &"x").await {
        Err(SessionError::Limit(offstate_core::LimitError::ReservedKey { key })) => {
            assert_eq!(key, "offstate.retired");
        }
        other => panic!("expected a reserved key error, got {other:?}"),
    }
    session.insert("offstate_cart", &"fine").await.unwrap();
}
