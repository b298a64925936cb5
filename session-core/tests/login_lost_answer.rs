//! A login whose decisive step (the conditional save that retires the old
//! ID) gets no answer reads the old record again. These tests are the cases
//! the history checker in offstate-testing found when the old ID was gone
//! because a logout or another login ended it: the login must not stand
//! over them, nor with a copy that misses an acknowledged add.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{MemoryStore, SessionId, SessionStore as _, Sessions, Timestamp};

fn push(item: &'static str) -> impl Fn(Option<Vec<String>>) -> Option<Vec<String>> + Send + Sync {
    move |cart: Option<Vec<String>>| {
        let mut cart = cart.unwrap_or_default();
        cart.push(item.to_owned());
        Some(cart)
    }
}

async fn cart(sessions: &Sessions, id: &SessionId) -> Option<Vec<String>> {
    let session = sessions.load(id).await.unwrap()?;
    Some(
        session
            .get::<Vec<String>>("cart")
            .await
            .unwrap()
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_logout_during_a_login_whose_decisive_answer_is_lost() {
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let sessions = Sessions::new(store.clone());
    let visitor = sessions.new_session();
    visitor.update("cart", push("apple")).await.unwrap();
    visitor.save().await.unwrap();
    let old = visitor.id().unwrap();

    // Tab A logs in: it copies the session, then waits at the create.
    let create = store.gate(Call::Create);
    let login = sessions.load(&old).await.unwrap().unwrap();
    login.set_principal("alice").await.unwrap();
    let saving = tokio::spawn(async move { login.save().await.map(|()| login.id()) });
    create.reached().await;

    // Tab B adds to the cart, then logs out; both are acknowledged.
    let tab_b = sessions.load(&old).await.unwrap().unwrap();
    tab_b.update("cart", push("pear")).await.unwrap();
    tab_b.save().await.unwrap();
    let tab_b = sessions.load(&old).await.unwrap().unwrap();
    tab_b.delete().await.unwrap();
    let logged_out_at = Timestamp::now();

    // The login's decisive step never reaches the store.
    store.inject(Call::Save, Fault::TimeoutBefore);
    create.open();
    let outcome = saving.await.unwrap();
    let alive: Vec<_> = memory
        .list_principal("alice", Timestamp::now())
        .await
        .unwrap();
    println!(
        "login: {:?}; sessions of alice alive after the acknowledged logout (at {logged_out_at:?}): {}",
        outcome.as_ref().map(|_| "Ok"),
        alive.len()
    );
    if let Ok(Some(new)) = &outcome {
        println!("the new session's cart: {:?}", cart(&sessions, new).await);
    }
    assert!(
        outcome.is_err() || alive.is_empty(),
        "the login stood over an acknowledged logout: a session with the principal is alive, carrying a copy from before the logout ({:?})",
        match &outcome {
            Ok(Some(new)) => cart(&sessions, new).await,
            _ => None,
        }
    );
}

// The same path, with another login as the party that deleted the old ID:
// two tabs log in at once; the one whose decisive answer is lost stands
// too, with a copy made before an acknowledged add. The user ends up with
// two live sessions, and the one their browser keeps misses the add.
#[tokio::test]
async fn two_logins_of_one_session_when_one_decisive_answer_is_lost() {
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let sessions = Sessions::new(store.clone());
    let visitor = sessions.new_session();
    visitor.update("cart", push("apple")).await.unwrap();
    visitor.save().await.unwrap();
    let old = visitor.id().unwrap();

    // Tabs A and B load the session for their logins.
    let tab_a = sessions.load(&old).await.unwrap().unwrap();
    let tab_b = sessions.load(&old).await.unwrap().unwrap();
    // Tab C's add is acknowledged.
    let tab_c = sessions.load(&old).await.unwrap().unwrap();
    tab_c.update("cart", push("pear")).await.unwrap();
    tab_c.save().await.unwrap();
    // A logs in: its first try conflicts with C's add, the replay carries it.
    tab_a.set_principal("alice").await.unwrap();
    tab_a.save().await.unwrap();
    let a = tab_a.id().unwrap();
    assert_eq!(cart(&sessions, &a).await.unwrap(), ["apple", "pear"]);
    // B logs in; its decisive call never reaches the store.
    store.inject(Call::Save, Fault::TimeoutBefore);
    tab_b.set_principal("alice").await.unwrap();
    let outcome = tab_b.save().await;
    let alive = memory
        .list_principal("alice", Timestamp::now())
        .await
        .unwrap();
    let b_cart = match (&outcome, tab_b.id()) {
        (Ok(()), Some(b)) => cart(&sessions, &b).await,
        _ => None,
    };
    println!(
        "second login: {outcome:?}; alice has {} live sessions; its cart: {b_cart:?}",
        alive.len()
    );
    assert!(
        outcome.is_err() || b_cart.as_deref() == Some(&["apple".to_owned(), "pear".to_owned()][..]),
        "the second login stood with a copy that misses the acknowledged add: {b_cart:?} ({} live sessions of alice)",
        alive.len()
    );
}
