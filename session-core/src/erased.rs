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
use crate::id::SessionKey;
use crate::record::{Record, Timestamp};
use crate::store::{Change, CreateOutcome, SaveOutcome, SessionStore, TouchOutcome};

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) trait ErasedStore: Send + Sync + 'static {
    fn load<'a>(&'a self, key: &'a SessionKey)
    -> BoxFuture<'a, Result<Option<Record>, StoreError>>;
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<CreateOutcome, StoreError>>;
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>>;
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: Timestamp,
    ) -> BoxFuture<'a, Result<TouchOutcome, StoreError>>;
    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn revoke_principal<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<usize, StoreError>>;
}

impl<S: SessionStore> ErasedStore for S {
    fn load<'a>(
        &'a self,
        key: &'a SessionKey,
    ) -> BoxFuture<'a, Result<Option<Record>, StoreError>> {
        Box::pin(SessionStore::load(self, key))
    }
    fn create<'a>(
        &'a self,
        key: &'a SessionKey,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<CreateOutcome, StoreError>> {
        Box::pin(SessionStore::create(self, key, record))
    }
    fn save<'a>(
        &'a self,
        key: &'a SessionKey,
        change: &'a Change,
    ) -> BoxFuture<'a, Result<SaveOutcome, StoreError>> {
        Box::pin(SessionStore::save(self, key, change))
    }
    fn touch<'a>(
        &'a self,
        key: &'a SessionKey,
        idle_deadline: Timestamp,
    ) -> BoxFuture<'a, Result<TouchOutcome, StoreError>> {
        Box::pin(SessionStore::touch(self, key, idle_deadline))
    }
    fn delete<'a>(&'a self, key: &'a SessionKey) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(SessionStore::delete(self, key))
    }
    fn revoke_principal<'a>(
        &'a self,
        principal: &'a str,
    ) -> BoxFuture<'a, Result<usize, StoreError>> {
        Box::pin(SessionStore::revoke_principal(self, principal))
    }
}

pub(crate) type SharedStore = Arc<dyn ErasedStore>;
