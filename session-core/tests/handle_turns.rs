//! Clones of one handle take turns at the store: a clone that asks while
//! another is loading waits for that load and uses it, a waiting clone
//! whose future is dropped leaves nothing stuck, and the end of a request
//! that meets a load in flight waits for it before deciding what to save.
//! The first clone's load is held at a gate, so every interleaving here is
//! the one the test chose.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offstate_core::testing::{Call, FaultyStore};
use offstate_core::{
    CountingStore, MemoryStore, Session, SessionError, SessionId, Sessions, middleware,
};
use tokio::task::JoinHandle;

struct World {
    store: FaultyStore<CountingStore<MemoryStore>>,
    counting: CountingStore<MemoryStore>,
    sessions: Sessions,
    id: SessionId,
}

/// A stored session with `n` = 1, and a fresh count of store calls.
async fn world() -> World {
    let counting = CountingStore::new(MemoryStore::new());
    let store = FaultyStore::new(counting.clone());
    let sessions = Sessions::new(store.clone());
    let session = sessions.new_session();
    session.insert("n", &1u32).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    counting.reset();
    World {
        store,
        counting,
        sessions,
        id,
    }
}

/// Lets every other task on this runtime run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn opened(w: &World) -> Session {
    middleware::open(&w.sessions, Some(w.id.clone()))
}

/// Reads `n` through a clone of `handle`, in a task of its own.
fn spawn_get(handle: &Session) -> JoinHandle<Result<Option<u32>, SessionError>> {
    let handle = handle.clone();
    tokio::spawn(async move { handle.get::<u32>("n").await })
}

#[tokio::test(flavor = "current_thread")]
async fn a_clone_that_asks_during_a_load_waits_for_it_and_uses_it() {
    let w = world().await;
    let handle = opened(&w);
    let gate = w.store.gate(Call::Load);
    let first = spawn_get(&handle);
    gate.reached().await;
    let second = spawn_get(&handle);
    settle().await;
    assert!(
        !second.is_finished(),
        "the second clone did not wait for the load"
    );
    gate.open();
    assert_eq!(first.await.unwrap().unwrap(), Some(1));
    assert_eq!(second.await.unwrap().unwrap(), Some(1));
    assert_eq!(
        w.counting.counts().load,
        1,
        "the waiting clone loaded again"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_waiting_clone_that_gives_up_leaves_the_turn_free() {
    let w = world().await;
    let handle = opened(&w);
    let gate = w.store.gate(Call::Load);
    let first = spawn_get(&handle);
    gate.reached().await;
    let quitter = spawn_get(&handle);
    settle().await;
    quitter.abort();
    assert!(quitter.await.unwrap_err().is_cancelled());
    gate.open();
    assert_eq!(first.await.unwrap().unwrap(), Some(1));
    // The turn is free: a write and its save go through at once.
    handle.insert("n", &2u32).await.unwrap();
    handle.save().await.unwrap();
    let again = opened(&w);
    assert_eq!(again.get::<u32>("n").await.unwrap(), Some(2));
}

#[tokio::test(flavor = "current_thread")]
async fn a_load_whose_future_is_dropped_frees_the_turn() {
    let w = world().await;
    let handle = opened(&w);
    let gate = w.store.gate(Call::Load);
    let loading = spawn_get(&handle);
    gate.reached().await;
    loading.abort();
    assert!(loading.await.unwrap_err().is_cancelled());
    // Nothing loaded, nothing holds the turn: the next use loads (the
    // dropped load never got past the gate to the store).
    assert_eq!(handle.get::<u32>("n").await.unwrap(), Some(1));
    assert_eq!(w.counting.counts().load, 1);
}

#[tokio::test(flavor = "current_thread")]
async fn the_end_of_a_request_waits_for_a_clone_s_load_before_deciding() {
    let w = world().await;
    let handle = opened(&w);
    let gate = w.store.gate(Call::Load);
    // A task the handler spawned writes through a clone; its load is slow.
    let writer = tokio::spawn({
        let handle = handle.clone();
        async move { handle.insert("n", &5u32).await }
    });
    gate.reached().await;
    // Nothing is loaded or changed yet, but a clone is at the store: the
    // middleware must not conclude that there is nothing to save.
    assert!(middleware::finish_now(&handle).is_none());
    let finish = tokio::spawn({
        let handle = handle.clone();
        async move { middleware::finish(&handle).await }
    });
    settle().await;
    assert!(!finish.is_finished(), "finish did not wait for the load");
    gate.open();
    writer.await.unwrap().unwrap();
    let finished = finish.await.unwrap();
    assert!(matches!(
        finished.disposition,
        middleware::Disposition::Done
    ));
    assert!(matches!(
        finished.update,
        middleware::ClientUpdate::Set { .. }
    ));
    let again = opened(&w);
    assert_eq!(again.get::<u32>("n").await.unwrap(), Some(5));
}
