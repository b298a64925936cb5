//! Every store call the handle makes goes through here: one place that
//! reads the clock, names the call in a trace span and (later) counts it.

use std::sync::Arc;

use tracing::Instrument as _;

use super::Sessions;
use crate::error::StoreError;
use crate::id::SessionKey;
use crate::record::{Record, Timestamp, Version};
use crate::store::{Change, CreateOutcome, DeleteOutcome, SaveOutcome, TouchOutcome};

pub(crate) async fn load(
    sessions: &Sessions,
    key: &SessionKey,
) -> Result<Option<Arc<Record>>, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .load(key, now)
        .instrument(tracing::debug_span!("offstate.load", key = ?key))
        .await
}

pub(crate) async fn create(
    sessions: &Sessions,
    key: &SessionKey,
    record: &Record,
    now: Timestamp,
) -> Result<CreateOutcome, StoreError> {
    sessions
        .store
        .create(key, record, now)
        .instrument(tracing::debug_span!("offstate.create", key = ?key))
        .await
}

pub(crate) async fn save(
    sessions: &Sessions,
    key: &SessionKey,
    change: &Change,
    now: Timestamp,
) -> Result<SaveOutcome, StoreError> {
    sessions
        .store
        .save(key, change, now)
        .instrument(tracing::debug_span!("offstate.save", key = ?key, expected = %change.expected))
        .await
}

pub(crate) async fn touch(
    sessions: &Sessions,
    key: &SessionKey,
    idle_deadline: Timestamp,
) -> Result<TouchOutcome, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .touch(key, idle_deadline, now)
        .instrument(tracing::debug_span!("offstate.touch", key = ?key))
        .await
}

pub(crate) async fn delete(sessions: &Sessions, key: &SessionKey) -> Result<bool, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .delete(key, now)
        .instrument(tracing::debug_span!("offstate.delete", key = ?key))
        .await
}

pub(crate) async fn delete_if_version(
    sessions: &Sessions,
    key: &SessionKey,
    expected: Version,
) -> Result<DeleteOutcome, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .delete_if_version(key, expected, now)
        .instrument(tracing::debug_span!("offstate.delete_if_version", key = ?key, %expected))
        .await
}

pub(crate) async fn list_principal(
    sessions: &Sessions,
    principal: &str,
) -> Result<Vec<SessionKey>, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .list_principal(principal, now)
        .instrument(tracing::debug_span!("offstate.list_principal"))
        .await
}

pub(crate) async fn revoke_principal(
    sessions: &Sessions,
    principal: &str,
) -> Result<usize, StoreError> {
    let now = sessions.now();
    sessions
        .store
        .revoke_principal(principal, now)
        .instrument(tracing::debug_span!("offstate.revoke_principal"))
        .await
}
