//! The session handle's policies and edge cases, one behaviour per test,
//! on stores scripted to misbehave: a writer that always gets in first, a
//! session that ends mid-write, an ID collision, lost answers. Backoff runs
//! in paused tokio time, so nothing here sleeps for real.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{
    Change, CountingStore, MemoryStore, OutagePolicy, SessionError, SessionStore, Sessions,
    Timestamp, WritePolicy,
};

async fn stored_session(sessions: &Sessions) -> offstate_core::SessionId {
    let session = sessions.new_session();
    session.insert("mine", &1).await.unwrap();
    session.save().await.unwrap();
    session.id().unwrap()
}

#[tokio::test(start_paused = true)]
async fn retries_end_with_retries_exhausted_after_max_attempts() {
    // Why: a write that can never win must fail in bounded time, not spin.
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let sessions = Sessions::new(store.clone()).with_max_attempts(5);
    let id = stored_session(&sessions).await;
    let session = sessions.load(&id).await.unwrap().unwrap();
    session.insert("mine", &2).await.unwrap();
    // Another writer changes the session (key `other`) just before each
    // save arrives, so every save conflicts.
    let saves = Arc::new(AtomicU32::new(0));
    store.on_call({
        let (saves, key) = (saves.clone(), id.key());
        move |call| {
            let (memory, saves, key) = (memory.clone(), saves.clone(), key.clone());
            async move {
                if call == Call::Save {
                    let n = saves.fetch_add(1, Ordering::SeqCst) + 1;
                    let now = Timestamp::now();
                    if let Some(current) = memory.load(&key, now).await.unwrap() {
                        let mut first = Change::new(current.version, current.deadlines);
                        first.set.insert("other".into(), n.to_string().into_bytes());
                        memory.save(&key, &first, now).await.unwrap();
                    }
                }
                None
            }
        }
    });
    match session.save().await {
        Err(SessionError::RetriesExhausted { attempts: 5 }) => {}
        other => panic!("expected RetriesExhausted after 5 attempts, got {other:?}"),
    }
    assert_eq!(saves.load(Ordering::SeqCst), 5);
    // Nothing of this request was written.
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(1));
}

#[tokio::test]
async fn last_writer_wins_replaces_the_key_and_keeps_the_others() {
    // Why: the default policy loses nothing but the contested key's old value.
    let sessions = Sessions::new(MemoryStore::new());
    let id = stored_session(&sessions).await;
    let slow = sessions.load(&id).await.unwrap().unwrap();
    slow.get::<u32>("mine").await.unwrap();
    let fast = sessions.load(&id).await.unwrap().unwrap();
    fast.insert("mine", &10).await.unwrap();
    fast.insert("other", "kept").await.unwrap();
    fast.save().await.unwrap();
    slow.insert("mine", &20).await.unwrap();
    slow.save().await.unwrap();
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(20));
    assert_eq!(
        stored.get::<String>("other").await.unwrap().as_deref(),
        Some("kept")
    );
}

#[tokio::test(start_paused = true)]
async fn reject_refuses_a_plain_insert_over_a_concurrent_change_of_that_key() {
    // Why: some values must not be silently overwritten (a checkout step).
    let memory = MemoryStore::new();
    let sessions = Sessions::new(memory.clone()).with_write_policy(WritePolicy::Reject);
    let id = stored_session(&sessions).await;
    let slow = sessions.load(&id).await.unwrap().unwrap();
    slow.get::<u32>("mine").await.unwrap();
    let fast = sessions.load(&id).await.unwrap().unwrap();
    fast.insert("mine", &10).await.unwrap();
    fast.save().await.unwrap();
    slow.insert("mine", &20).await.unwrap();
    match slow.save().await {
        Err(SessionError::Conflict { key }) => assert_eq!(key, "mine"),
        other => panic!("expected Conflict on `mine`, got {other:?}"),
    }
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(10));
}

#[tokio::test(start_paused = true)]
async fn reject_still_merges_other_keys_and_update_closures() {
    // Why: Reject is about contested plain inserts only.
    let memory = MemoryStore::new();
    let sessions = Sessions::new(memory.clone()).with_write_policy(WritePolicy::Reject);
    let id = stored_session(&sessions).await;
    let slow = sessions.load(&id).await.unwrap().unwrap();
    slow.get::<u32>("mine").await.unwrap();
    let fast = sessions.load(&id).await.unwrap().unwrap();
    fast.update("count", |n: Option<u32>| Some(n.unwrap_or(0) + 1))
        .await
        .unwrap();
    fast.save().await.unwrap();
    slow.update("count", |n: Option<u32>| Some(n.unwrap_or(0) + 1))
        .await
        .unwrap();
    slow.insert("theme", "dark").await.unwrap();
    slow.save().await.unwrap();
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("count").await.unwrap(), Some(2));
    assert_eq!(
        stored.get::<String>("theme").await.unwrap().as_deref(),
        Some("dark")
    );
}

#[tokio::test]
async fn discard_drops_pending_changes_and_shows_the_stored_session() {
    // Why: a handler that validates late must be able to back out.
    let sessions = Sessions::new(MemoryStore::new());
    let id = stored_session(&sessions).await;
    let session = sessions.load(&id).await.unwrap().unwrap();
    session.insert("mine", &99).await.unwrap();
    session.insert("extra", "x").await.unwrap();
    assert!(session.is_dirty());
    session.discard();
    assert!(!session.is_dirty());
    assert_eq!(session.get::<u32>("mine").await.unwrap(), Some(1));
    assert_eq!(session.keys().await.unwrap(), ["mine"]);
    session.save().await.unwrap();
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(1));
}

#[tokio::test]
async fn a_session_that_ends_mid_write_is_gone_and_stays_gone() {
    // Why: a request in flight during a logout must not bring it back.
    let store = FaultyStore::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone());
    let id = stored_session(&sessions).await;
    let writer = sessions.load(&id).await.unwrap().unwrap();
    writer.insert("mine", &2).await.unwrap();
    let gate = store.gate(Call::Save);
    let saving = tokio::spawn(async move {
        let result = writer.save().await;
        (result, writer.id())
    });
    gate.reached().await;
    sessions
        .load(&id)
        .await
        .unwrap()
        .unwrap()
        .delete()
        .await
        .unwrap();
    gate.open();
    let (result, id_after) = saving.await.unwrap();
    assert!(matches!(result, Err(SessionError::Gone)));
    assert_eq!(id_after, None, "the handle still offers the dead ID");
    assert!(sessions.load(&id).await.unwrap().is_none());
}

#[tokio::test]
async fn an_id_collision_on_create_draws_another_id() {
    // Why: a create never adopts or overwrites someone else's session.
    let memory = MemoryStore::new();
    let faulty = FaultyStore::new(memory.clone());
    faulty.inject(Call::Create, Fault::Collision);
    let store = CountingStore::new(faulty);
    let sessions = Sessions::new(store.clone());
    let session = sessions.new_session();
    session.insert("mine", &1).await.unwrap();
    session.save().await.unwrap();
    assert_eq!(store.counts().create, 2);
    assert_eq!(memory.len(), 1);
    assert!(session.id().is_some());
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_cleaned_up_and_reported() {
    // Why: the client never learned the ID; the record must not linger.
    let memory = MemoryStore::new();
    let store = FaultyStore::new(memory.clone());
    let sessions = Sessions::new(store.clone());
    store.inject(Call::Create, Fault::TimeoutAfter);
    let session = sessions.new_session();
    session.insert("mine", &1).await.unwrap();
    match session.save().await {
        Err(SessionError::Store(e)) if e.is_timeout() => {}
        other => panic!("expected the timeout, got {other:?}"),
    }
    assert!(session.id().is_none(), "an unconfirmed ID was handed out");
    for _ in 0..100 {
        if memory.is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(memory.is_empty(), "the unconfirmed record was left behind");
    // The changes are still pending: a retry creates the session.
    session.save().await.unwrap();
    assert_eq!(memory.len(), 1);
}

#[tokio::test]
async fn a_timed_out_save_keeps_the_changes_for_a_retry() {
    // Why: an outage must not silently drop what the user did.
    let store = FaultyStore::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone());
    let id = stored_session(&sessions).await;
    let session = sessions.load(&id).await.unwrap().unwrap();
    session.insert("mine", &2).await.unwrap();
    store.inject(Call::Save, Fault::TimeoutBefore);
    assert!(session.save().await.is_err());
    assert!(session.is_dirty());
    session.save().await.unwrap();
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(2));
}

#[tokio::test]
async fn fail_open_serves_an_empty_session_and_refuses_its_writes() {
    // Why: a degraded request must never overwrite the real session.
    let store = FaultyStore::new(MemoryStore::new());
    let sessions = Sessions::new(store.clone()).with_outage_policy(OutagePolicy::FailOpen);
    let id = stored_session(&sessions).await;
    store.inject(Call::Load, Fault::Unavailable);
    let session = offstate_core::middleware::open(&sessions, Some(id.clone()));
    assert_eq!(session.get::<u32>("mine").await.unwrap(), None);
    assert!(session.is_degraded());
    session.insert("mine", &5).await.unwrap();
    assert!(matches!(session.save().await, Err(SessionError::Store(_))));
    let stored = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(stored.get::<u32>("mine").await.unwrap(), Some(1));
}

#[tokio::test]
async fn local_writers_of_one_session_take_turns_without_conflicts() {
    // Why: fifty requests on one cart in one process should not fight in
    // the store; each starts from the record the previous one wrote.
    let counted = CountingStore::new(MemoryStore::new());
    let sessions = Sessions::new(counted.clone());
    let id = stored_session(&sessions).await;
    let handles: Vec<_> = (0..20)
        .map(|i| {
            let sessions = sessions.clone();
            let id = id.clone();
            async move {
                let session = sessions.load(&id).await.unwrap().unwrap();
                session
                    .update("cart", move |cart: Option<Vec<u32>>| {
                        let mut cart = cart.unwrap_or_default();
                        cart.push(i);
                        Some(cart)
                    })
                    .await
                    .unwrap();
                session.save().await.unwrap();
            }
        })
        .collect();
    counted.reset();
    futures_join_all(handles).await;
    assert_eq!(
        counted.counts().save,
        20,
        "writers of one process conflicted"
    );
    let cart: Vec<u32> = sessions
        .load(&id)
        .await
        .unwrap()
        .unwrap()
        .get("cart")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cart.len(), 20, "an update was lost");
}

/// Runs the futures concurrently on this task (no extra dependency).
async fn futures_join_all<F: std::future::Future<Output = ()> + 'static>(futures: Vec<F>) {
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async move {
            let handles: Vec<_> = futures.into_iter().map(tokio::task::spawn_local).collect();
            for handle in handles {
                handle.await.unwrap();
            }
        })
        .await;
}

#[tokio::test]
async fn a_writer_that_waited_its_turn_replays_on_the_newer_record() {
    // Why: the queue hands over the previous writer's record; updates the
    // waiting writer computed on the older one must be replayed on it.
    let counted = CountingStore::new(MemoryStore::new());
    let store = FaultyStore::new(counted.clone());
    let sessions = Sessions::new(store.clone());
    let id = stored_session(&sessions).await;
    let first = sessions.load(&id).await.unwrap().unwrap();
    let second = sessions.load(&id).await.unwrap().unwrap();
    for (session, item) in [(&first, 1u32), (&second, 2u32)] {
        session
            .update("cart", move |cart: Option<Vec<u32>>| {
                let mut cart = cart.unwrap_or_default();
                cart.push(item);
                Some(cart)
            })
            .await
            .unwrap();
    }
    let held = store.gate(Call::Save);
    counted.reset();
    let first_saving = tokio::spawn(async move { first.save().await });
    held.reached().await;
    let second_saving = tokio::spawn(async move { second.save().await });
    tokio::task::yield_now().await;
    held.open();
    first_saving.await.unwrap().unwrap();
    second_saving.await.unwrap().unwrap();
    assert_eq!(counted.counts().save, 2, "the waiting writer conflicted");
    let cart: Vec<u32> = sessions
        .load(&id)
        .await
        .unwrap()
        .unwrap()
        .get("cart")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cart, [1, 2]);
}
