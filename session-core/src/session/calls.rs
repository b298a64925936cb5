//! Every store call the handle makes goes through here: one place that
//! reads the clock, runs the call in a trace span and counts it (see
//! [`telemetry`](crate::telemetry) for the names).
//!
//! The duration is read with `quanta`, from the CPU's time-stamp counter
//! where it is invariant (the OS's monotonic clock elsewhere): two reads
//! per store call, on every request, cost about 20 ns instead of about 45
//! on the bench machine. `quanta` calibrates the counter once per process,
//! at [`Sessions::new`](crate::Sessions::new) (under a millisecond here).

use std::future::Future;
use std::sync::Arc;

use tracing::Instrument as _;
use tracing::Span;
use tracing::field::Empty;

use super::Sessions;
use crate::error::StoreError;
use crate::id::SessionKey;
use crate::record::{Record, Timestamp, Version};
use crate::store::{Call, Change, CreateOutcome, DeleteOutcome, SaveOutcome, TouchOutcome};
use crate::telemetry::{self, Outcome};

/// Runs one store call in its span, and counts it with the outcome
/// `outcome` gives a success.
async fn call<T>(
    sessions: &Sessions,
    operation: Call,
    key: Option<&SessionKey>,
    work: impl Future<Output = Result<T, StoreError>>,
    outcome: impl FnOnce(&T) -> Outcome,
) -> Result<T, StoreError> {
    let backend = sessions.shared.store.name();
    // With no subscriber at DEBUG, no span at all (see `debug_traced`).
    let span = if crate::middleware::debug_traced() {
        tracing::debug_span!(
            "offstate.store",
            otel.name = operation.label(),
            db.system = backend,
            db.operation.name = operation.label(),
            server.address = Empty,
            offstate.key = Empty,
            offstate.outcome = Empty,
        )
    } else {
        Span::none()
    };
    let started = quanta::Instant::now();
    if span.is_disabled() {
        // Nobody traces: no span entered and left per poll, no field
        // recorded (or logged, with `tracing`'s `log` feature).
        let result = work.await;
        let label = outcome_label(&result, outcome);
        telemetry::store_call(backend, operation, label, started.elapsed());
        return result;
    }
    if let Some(address) = sessions.shared.store.server_address() {
        span.record("server.address", address);
    }
    if let Some(key) = key {
        // The key is a hash of the ID; a prefix is enough to correlate.
        let text = key.as_str();
        span.record("offstate.key", text.get(..8).unwrap_or(text));
    }
    let result = work.instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let label = outcome_label(&result, outcome);
    span.record("offstate.outcome", label.as_str());
    telemetry::store_call(backend, operation, label, elapsed);
    result
}

fn outcome_label<T>(
    result: &Result<T, StoreError>,
    outcome: impl FnOnce(&T) -> Outcome,
) -> Outcome {
    match result {
        Ok(value) => outcome(value),
        Err(error) => Outcome::of_error(error),
    }
}

fn ok<T>(_: &T) -> Outcome {
    Outcome::Ok
}

/// The session under `key`. A retired record (an ID a login moved the
/// session away from) is no session, and reads as absent.
pub(crate) async fn load(
    sessions: &Sessions,
    key: &SessionKey,
) -> Result<Option<Arc<Record>>, StoreError> {
    let found = load_any(sessions, key).await?;
    Ok(found.filter(|record| record.retired_by().is_none()))
}

/// The record under `key`, retired or not.
pub(crate) async fn load_any(
    sessions: &Sessions,
    key: &SessionKey,
) -> Result<Option<Arc<Record>>, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.load(key, now);
    call(sessions, Call::Load, Some(key), work, |found| {
        if found.is_some() {
            Outcome::Ok
        } else {
            Outcome::Gone
        }
    })
    .await
}

pub(crate) async fn create(
    sessions: &Sessions,
    key: &SessionKey,
    record: &Record,
    now: Timestamp,
) -> Result<CreateOutcome, StoreError> {
    let work = sessions.shared.store.create(key, record, now);
    call(
        sessions,
        Call::Create,
        Some(key),
        work,
        |outcome| match outcome {
            CreateOutcome::Created => Outcome::Ok,
            _ => Outcome::Conflict,
        },
    )
    .await
}

pub(crate) async fn save(
    sessions: &Sessions,
    key: &SessionKey,
    change: &Change,
    now: Timestamp,
) -> Result<SaveOutcome, StoreError> {
    let work = sessions.shared.store.save(key, change, now);
    call(sessions, Call::Save, Some(key), work, save_label).await
}

/// The outcome label of a save, for both ways of saving.
fn save_label(outcome: &SaveOutcome) -> Outcome {
    match outcome {
        SaveOutcome::Saved(_) => Outcome::Ok,
        SaveOutcome::Conflict(_) => Outcome::Conflict,
        _ => Outcome::Gone,
    }
}

/// [`save`], with the record the change makes already built (see
/// [`SessionStore::save_applied`](crate::SessionStore::save_applied)).
/// Counted and traced as a `save`.
pub(crate) async fn save_applied(
    sessions: &Sessions,
    key: &SessionKey,
    change: &Change,
    base: &Arc<Record>,
    next: &Arc<Record>,
    now: Timestamp,
) -> Result<SaveOutcome, StoreError> {
    let work = sessions
        .shared
        .store
        .save_applied(key, change, base, next, now);
    call(sessions, Call::Save, Some(key), work, save_label).await
}

pub(crate) async fn touch(
    sessions: &Sessions,
    key: &SessionKey,
    idle_deadline: Timestamp,
) -> Result<TouchOutcome, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.touch(key, idle_deadline, now);
    call(
        sessions,
        Call::Touch,
        Some(key),
        work,
        |outcome| match outcome {
            TouchOutcome::Touched => Outcome::Ok,
            _ => Outcome::Gone,
        },
    )
    .await
}

pub(crate) async fn delete(sessions: &Sessions, key: &SessionKey) -> Result<bool, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.delete(key, now);
    call(sessions, Call::Delete, Some(key), work, |deleted| {
        if *deleted { Outcome::Ok } else { Outcome::Gone }
    })
    .await
}

pub(crate) async fn delete_if_version(
    sessions: &Sessions,
    key: &SessionKey,
    expected: Version,
) -> Result<DeleteOutcome, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.delete_if_version(key, expected, now);
    call(
        sessions,
        Call::DeleteIfVersion,
        Some(key),
        work,
        |outcome| match outcome {
            DeleteOutcome::Deleted => Outcome::Ok,
            DeleteOutcome::Conflict(_) => Outcome::Conflict,
            _ => Outcome::Gone,
        },
    )
    .await
}

pub(crate) async fn list_principal(
    sessions: &Sessions,
    principal: &str,
) -> Result<Vec<SessionKey>, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.list_principal(principal, now);
    call(sessions, Call::ListPrincipal, None, work, ok).await
}

pub(crate) async fn revoke_principal(
    sessions: &Sessions,
    principal: &str,
) -> Result<usize, StoreError> {
    let now = sessions.now();
    let work = sessions.shared.store.revoke_principal(principal, now);
    let revoked = call(sessions, Call::RevokePrincipal, None, work, ok).await?;
    telemetry::revoked(revoked);
    Ok(revoked)
}
