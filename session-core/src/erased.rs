//! The store behind the `Session` handle, with its type erased once.
//!
//! `SessionStore` returns `impl Future`, which keeps stores zero-cost to
//! compose but makes the trait not object-safe. Handlers should not be
//! generic over the store, so the handle holds an `Arc<dyn ErasedStore>`
//! whose methods box their futures: one allocation per store call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::error::StoreError;
use crate::id::{KeyPrefix, SessionKey};
use crate::record::{Record, Timestamp, Version};
use crate::store::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, SaveOutcome, SessionStore, TouchOutcome,
};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait ErasedStore: Send + Sync + 'static {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>, StoreError>>;
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<CreateOutcome, StoreError>>;
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>>;
    fn save_applied<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
        base: &'a Arc<Record>,
        next: &'a Arc<Record>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>>;
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<TouchOutcome, StoreError>>;
    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn delete_if_version<'a>(
        &'a self,
        key: &'a SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<DeleteOutcome, StoreError>>;
    fn list_principal<'a>(
        &'a self,
        principal: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<SessionKey>, StoreError>>;
    fn revoke_principal<'a>(
        &'a self,
        principal: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;
    fn ping(&self, now: Timestamp) -> BoxFuture<'_, Result<(), StoreError>>;
    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix>;
    fn capabilities(&self) -> Capabilities;
    fn name(&self) -> &'static str;
    fn server_address(&self) -> Option<&str>;
}

impl<S: SessionStore> ErasedStore for S {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Arc<Record>>, StoreError>> {
        Box::pin(SessionStore::load(self, key, now))
    }
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<CreateOutcome, StoreError>> {
        Box::pin(SessionStore::create(self, key, record, now))
    }
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(SessionStore::save(self, key, change, now))
    }
    fn save_applied<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
        base: &'a Arc<Record>,
        next: &'a Arc<Record>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(SessionStore::save_applied(
            self, key, change, base, next, now,
        ))
    }
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<TouchOutcome, StoreError>> {
        Box::pin(SessionStore::touch(self, key, idle_deadline, now))
    }
    fn delete<'a>(
        &'a self,
        key: &'a SessionKey,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SessionStore::delete(self, key, now))
    }
    fn delete_if_version<'a>(
        &'a self,
        key: &'a SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<DeleteOutcome, StoreError>> {
        Box::pin(SessionStore::delete_if_version(self, key, expected, now))
    }
    fn list_principal<'a>(
        &'a self,
        principal: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Vec<SessionKey>, StoreError>> {
        Box::pin(SessionStore::list_principal(self, principal, now))
    }
    fn revoke_principal<'a>(
        &'a self,
        principal: &'a str,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(SessionStore::revoke_principal(self, principal, now))
    }
    fn ping(&self, now: Timestamp) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(SessionStore::ping(self, now))
    }
    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        SessionStore::key_prefix(self, principal)
    }
    fn capabilities(&self) -> Capabilities {
        SessionStore::capabilities(self)
    }
    fn name(&self) -> &'static str {
        SessionStore::name(self)
    }
    fn server_address(&self) -> Option<&str> {
        SessionStore::server_address(self)
    }
}

pub(crate) type SharedStore = Arc<dyn ErasedStore>;
