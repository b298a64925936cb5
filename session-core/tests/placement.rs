//! `SessionStore::key_prefix`: a login draws the new ID so that its key
//! starts with the prefix the store asks for its principal; anonymous
//! sessions and stores that ask nothing get plain random IDs. Wrappers
//! (the counter, the fault injector) pass the wish on.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use offstate_core::testing::FaultyStore;
use offstate_core::{
    Change, CountingStore, CreateOutcome, DeleteOutcome, KeyPrefix, MemoryStore, Record,
    SaveOutcome, SessionKey, SessionStore, Sessions, StoreError, Timestamp, TouchOutcome, Version,
};

/// A memory store that asks for each principal's keys to start with the
/// principal's first letter, upper-cased (one character: 64 draws).
#[derive(Debug, Clone, Default)]
struct ByInitial {
    inner: MemoryStore,
}

impl SessionStore for ByInitial {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        self.inner.load(key, now).await
    }
    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.inner.create(key, record, now).await
    }
    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.inner.save(key, change, now).await
    }
    async fn touch(
        &self,
        key: &SessionKey,
        at: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        self.inner.touch(key, at, now).await
    }
    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        self.inner.delete(key, now).await
    }
    async fn delete_if_version(
        &self,
        key: &SessionKey,
        v: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        self.inner.delete_if_version(key, v, now).await
    }
    async fn list_principal(&self, p: &str, now: Timestamp) -> Result<Vec<SessionKey>, StoreError> {
        self.inner.list_principal(p, now).await
    }
    async fn revoke_principal(&self, p: &str, now: Timestamp) -> Result<usize, StoreError> {
        self.inner.revoke_principal(p, now).await
    }
    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        KeyPrefix::new(&principal.get(..1)?.to_uppercase()).ok()
    }
}

async fn logged_in_key(sessions: &Sessions, principal: &str) -> SessionKey {
    let session = sessions.new_session();
    session.insert("cart", &vec!["apple"]).await.unwrap();
    session.save().await.unwrap();
    session.set_principal(principal).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    // The session moved with its data and principal.
    let loaded = sessions.load(&id).await.unwrap().unwrap();
    assert_eq!(
        loaded.principal().await.unwrap().as_deref(),
        Some(principal)
    );
    assert_eq!(
        loaded.get::<Vec<String>>("cart").await.unwrap(),
        Some(vec!["apple".to_owned()])
    );
    id.key()
}

#[tokio::test]
async fn a_login_draws_a_key_with_the_stores_prefix() {
    let sessions = Sessions::new(ByInitial::default());
    for principal in ["alice", "bob", "zoe", "quinn"] {
        let key = logged_in_key(&sessions, principal).await;
        let initial = principal[..1].to_uppercase();
        assert!(key.as_str().starts_with(&initial), "{principal}: {key}");
        assert_eq!(sessions.list_principal(principal).await.unwrap(), vec![key]);
    }
}

#[tokio::test]
async fn a_new_session_created_with_a_principal_is_placed_too() {
    let sessions = Sessions::new(ByInitial::default());
    let session = sessions.new_session();
    session.set_principal("mallory").await.unwrap();
    session.save().await.unwrap();
    assert!(session.id().unwrap().key().as_str().starts_with('M'));
}

#[tokio::test]
async fn wrappers_pass_the_wish_on() {
    let wrapped = FaultyStore::new(CountingStore::new(ByInitial::default()));
    assert_eq!(
        wrapped.key_prefix("carol").map(|p| p.to_string()),
        Some("C".to_owned())
    );
    let sessions = Sessions::new(wrapped);
    let key = logged_in_key(&sessions, "dave").await;
    assert!(key.as_str().starts_with('D'));
}

#[tokio::test]
async fn stores_that_ask_nothing_get_plain_ids() {
    // The default is no wish; the login still rotates to a fresh ID.
    let memory = MemoryStore::new();
    assert_eq!(memory.key_prefix("alice"), None);
    let sessions = Sessions::new(memory);
    let starts: std::collections::BTreeSet<char> = [
        logged_in_key(&sessions, "alice").await,
        logged_in_key(&sessions, "alice").await,
        logged_in_key(&sessions, "alice").await,
        logged_in_key(&sessions, "alice").await,
    ]
    .iter()
    .map(|k| k.as_str().chars().next().unwrap())
    .collect();
    // Four random keys share a first character with odds of 1 in 64³.
    assert!(starts.len() > 1, "{starts:?}");
}
