//! What offstate tells the people who run it: metrics through the
//! [`metrics`](https://docs.rs/metrics) facade, and one trace span per
//! store call.
//!
//! Nothing is recorded until the application installs a recorder (for
//! example `metrics-exporter-prometheus`; the cart example does). Without
//! one, each call costs a check of the global recorder. With a global
//! recorder installed before the first metric is recorded, each handle is
//! registered once and a call is an atomic add or a histogram record (see
//! `handles`); a recorder installed later, or set for a thread only, is
//! asked for the handle on each call.
//!
//! # Metrics
//!
//! Every label has a small, fixed set of values: no session ID, key,
//! principal or value ever appears in a label. `backend` is the store's
//! [`SessionStore::name`](crate::SessionStore::name) (`redis`, `dynamodb`,
//! `memcached`, `memory`, ...).
//!
//! | Name | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `offstate_store_calls_total` | counter | `backend`, `operation`, `outcome` | Store calls made by the session layer. `operation`: `load`, `create`, `save`, `touch`, `delete`, `delete_if_version`, `list_principal`, `revoke_principal`. `outcome`: `ok`, `conflict` (a newer version, or an ID that exists), `gone` (no live record), `timeout`, `unavailable`, `too_large`, `error` (corrupt record, unsupported, any other failure). |
//! | `offstate_store_call_duration_seconds` | histogram | `backend`, `operation` | Time from the call to the store's answer (or failure), in seconds. |
//! | `offstate_session_conflicts_total` | counter | `op` | Conditional writes that met a newer version and were replayed. `op`: `write` (a save), `rotate` (a login or [`Session::cycle_id`](crate::Session::cycle_id)). |
//! | `offstate_session_save_retries` | histogram | `op` | Per finished save (`write` or `rotate`), how many times it had to go again after a conflict (0: first try). |
//! | `offstate_session_retries_exhausted_total` | counter | `op` | Saves that gave up after [`Sessions::max_attempts`](crate::Sessions::max_attempts) conflicts ([`SessionError::RetriesExhausted`](crate::SessionError::RetriesExhausted)). |
//! | `offstate_session_touches_total` | counter | `result` | Read-only requests on a session with an idle timeout: `written` (the touch threshold had passed: one touch call), `skipped` (coalesced: the deadline was recent enough). |
//! | `offstate_sessions_created_total` | counter | — | New sessions stored. |
//! | `offstate_sessions_rotated_total` | counter | — | Sessions moved to a new ID (logins, logouts that keep the data, `cycle_id`). |
//! | `offstate_sessions_deleted_total` | counter | — | Sessions deleted by [`Session::delete`](crate::Session::delete) (log out). |
//! | `offstate_sessions_revoked_total` | counter | — | Sessions the store reports ended by a revoke of a principal (memcached revokes without counting: 0). |
//! | `offstate_sessions_expired_on_read_total` | counter | — | A client presented a well-formed ID and the store had no live record for it (expired, logged out elsewhere, revoked, or never existed). |
//! | `offstate_session_record_bytes` | histogram | `op` | Size of each record written, in bytes (`op`: `create`, `write`, `rotate`). |
//! | `offstate_outage_decisions_total` | counter | `decision` | A load met an outage (timeout, unavailable): `fail_closed` (the request fails, 503) or `fail_open` (it gets an empty session that cannot be saved). |
//! | `offstate_refused_input_total` | counter | `reason` | Session input the middleware would not use: `too_long` (refused with 431), `not_utf8`, `malformed`, `bad_signature` (treated as anonymous: the store is not asked), `ambiguous` (several live IDs in one request: served none). |
//! | `offstate_cache_hits_total` | counter | — | (offstate-cache) Loads answered from memory. |
//! | `offstate_cache_misses_total` | counter | — | (offstate-cache) Loads that went to the store. |
//! | `offstate_cache_evictions_total` | counter | `cause` | (offstate-cache) Entries dropped by the cache itself: `size` (over capacity), `expired` (TTL or staleness bound). |
//! | `offstate_cache_invalidations_received_total` | counter | — | (offstate-cache) Invalidation messages received from peers (own writes included). |
//! | `offstate_cache_conflicts_total` | counter | — | (offstate-cache) Saves the store answered with a conflict. |
//! | `offstate_cache_fallbacks_total` | counter | — | (offstate-cache) Times the invalidation channel dropped and the cache fell back to bounded staleness. |
//! | `offstate_cache_fallback_active` | gauge | — | (offstate-cache) 1 while the cache is on bounded staleness, 0 when coherent. |
//! | `offstate_cache_fallback_duration_seconds` | histogram | — | (offstate-cache) How long each fallback lasted, recorded when the channel comes back, in seconds (its sum is the time spent in fallback). |
//! | `offstate_cache_invalidation_delay_seconds` | histogram | — | (offstate-cache) From the return of this instance's own write (save, delete, revoke) to its invalidation coming back through this instance's subscription, in seconds: how long a peer as near as the channel takes to hear of a write. One that came back before its write returned is not recorded, and the messages carry no send time, so a peer's own delay is not measured. |
//!
//! # Traces
//!
//! Every store call runs in a `DEBUG` span named `offstate.store` with
//! OpenTelemetry's database attribute names:
//!
//! - `otel.name`: `offstate <operation>`;
//! - `db.system`: the store's name;
//! - `db.operation.name`: the operation, as in the metrics;
//! - `server.address`: the store's address when it reports one
//!   ([`SessionStore::server_address`](crate::SessionStore::server_address));
//! - `offstate.key`: the first 8 characters of the session key, which is
//!   itself a hash of the session ID: enough to correlate, never the ID;
//! - `offstate.outcome`: the outcome, as in the metrics.

mod handles;

use std::time::Duration;

use self::handles::{SAVE_OPS, count, index, observe};
use crate::error::StoreError;
use crate::store::Call;

/// The handle of `$name` (a constant) with literal labels, from the
/// current recorder: `static_metric!(register_counter, NAME, "k" => "v")`.
/// The key is built and hashed at compile time. The `metrics` macros build
/// and hash a key on every call when the name is a constant rather than a
/// literal, which counts on every request when no recorder listens.
/// Registered with [`METADATA`], as the macros would from this module.
macro_rules! static_metric {
    ($register:ident, $name:expr $(, $label:literal => $value:literal)*) => {{
        // (The label count, written so that it is also right for none.)
        static LABELS: [metrics::Label; [$($label,)* ""].len() - 1] =
            [$(metrics::Label::from_static_parts($label, $value)),*];
        static KEY: metrics::Key = metrics::Key::from_static_parts($name, &LABELS);
        metrics::with_recorder(|r| r.$register(&KEY, &METADATA))
    }};
}

/// [`static_metric!`] with `"op" => op` for `op` `create`, `write` or
/// `rotate`; any other op gets a key built per call.
macro_rules! literal_op {
    ($op:expr, $register:ident, $metric:ident!($name:expr)) => {
        match $op {
            "create" => static_metric!($register, $name, "op" => "create"),
            "write" => static_metric!($register, $name, "op" => "write"),
            "rotate" => static_metric!($register, $name, "op" => "rotate"),
            other => metrics::$metric!($name, "op" => other),
        }
    };
}

/// `offstate_store_calls_total`: store calls by backend, operation, outcome.
pub const STORE_CALLS: &str = "offstate_store_calls_total";
/// `offstate_store_call_duration_seconds`: store call latency.
pub const STORE_CALL_DURATION: &str = "offstate_store_call_duration_seconds";
/// `offstate_session_conflicts_total`: conflicts met by saves.
pub const SESSION_CONFLICTS: &str = "offstate_session_conflicts_total";
/// `offstate_session_save_retries`: retries per finished save.
pub const SESSION_SAVE_RETRIES: &str = "offstate_session_save_retries";
/// `offstate_session_retries_exhausted_total`: saves that gave up.
pub const SESSION_RETRIES_EXHAUSTED: &str = "offstate_session_retries_exhausted_total";
/// `offstate_session_touches_total`: touches written or skipped.
pub const SESSION_TOUCHES: &str = "offstate_session_touches_total";
/// `offstate_sessions_created_total`.
pub const SESSIONS_CREATED: &str = "offstate_sessions_created_total";
/// `offstate_sessions_rotated_total`.
pub const SESSIONS_ROTATED: &str = "offstate_sessions_rotated_total";
/// `offstate_sessions_deleted_total`.
pub const SESSIONS_DELETED: &str = "offstate_sessions_deleted_total";
/// `offstate_sessions_revoked_total`.
pub const SESSIONS_REVOKED: &str = "offstate_sessions_revoked_total";
/// `offstate_sessions_expired_on_read_total`.
pub const SESSIONS_EXPIRED_ON_READ: &str = "offstate_sessions_expired_on_read_total";
/// `offstate_session_record_bytes`: size of records written.
pub const SESSION_RECORD_BYTES: &str = "offstate_session_record_bytes";
/// `offstate_outage_decisions_total`: fail closed or fail open.
pub const OUTAGE_DECISIONS: &str = "offstate_outage_decisions_total";
/// `offstate_refused_input_total`: session input not used, by reason.
pub const REFUSED_INPUT: &str = "offstate_refused_input_total";

/// Every metric the session layer and the middleware record (the cache's
/// are in offstate-cache), for tests and dashboards that check them all.
pub const CORE_METRICS: &[&str] = &[
    STORE_CALLS,
    STORE_CALL_DURATION,
    SESSION_CONFLICTS,
    SESSION_SAVE_RETRIES,
    SESSION_RETRIES_EXHAUSTED,
    SESSION_TOUCHES,
    SESSIONS_CREATED,
    SESSIONS_ROTATED,
    SESSIONS_DELETED,
    SESSIONS_REVOKED,
    SESSIONS_EXPIRED_ON_READ,
    SESSION_RECORD_BYTES,
    OUTAGE_DECISIONS,
    REFUSED_INPUT,
];

/// Why session input was not used (the `reason` label of
/// `offstate_refused_input_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefusedInput {
    /// Over the configured maximum length (refused with 431).
    TooLong,
    /// Not UTF-8.
    NotUtf8,
    /// Not a session ID.
    Malformed,
    /// Signing is on and the signature does not verify.
    BadSignature,
    /// Several live sessions in one request.
    Ambiguous,
}

impl RefusedInput {
    /// The label value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TooLong => "too_long",
            Self::NotUtf8 => "not_utf8",
            Self::Malformed => "malformed",
            Self::BadSignature => "bad_signature",
            Self::Ambiguous => "ambiguous",
        }
    }

    /// Counts it in `offstate_refused_input_total` (for middleware authors:
    /// offstate-tower calls it).
    pub fn record(self) {
        let reason = self.as_str();
        let slot = handles::global().and_then(|h| h.refused.get(self as usize));
        count(
            slot,
            || metrics::counter!(REFUSED_INPUT, "reason" => reason),
            1,
        );
    }
}

/// A store call's `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Conflict,
    Gone,
    Timeout,
    Unavailable,
    TooLarge,
    Error,
}

impl Outcome {
    /// How many there are (the handles' table has a slot for each): one
    /// past the last variant's index.
    pub(crate) const COUNT: usize = Self::Error as usize + 1;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Conflict => "conflict",
            Self::Gone => "gone",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::TooLarge => "too_large",
            Self::Error => "error",
        }
    }

    /// The outcome of a call that failed with `error`.
    pub(crate) fn of_error(error: &StoreError) -> Self {
        match error {
            StoreError::Timeout(_) => Self::Timeout,
            StoreError::Unavailable(_) => Self::Unavailable,
            StoreError::TooLarge { .. } => Self::TooLarge,
            _ => Self::Error,
        }
    }
}

pub(crate) fn store_call(
    backend: &'static str,
    operation: Call,
    outcome: Outcome,
    elapsed: Duration,
) {
    let slots = handles::global()
        .and_then(|h| h.backend(backend))
        .map(|b| b.call(operation, outcome));
    // Keys are needed only off the table of handles.
    let keys = match slots {
        Some(_) => None,
        None => handles::call_keys(backend, operation, outcome),
    };
    count(
        slots.map(|(calls, _)| calls),
        || match keys {
            Some((key, _)) => metrics::with_recorder(|r| r.register_counter(key, &METADATA)),
            None => {
                metrics::counter!(STORE_CALLS, "backend" => backend, "operation" => operation.label(), "outcome" => outcome.as_str())
            }
        },
        1,
    );
    observe(
        slots.map(|(_, durations)| durations),
        || match keys {
            Some((_, key)) => metrics::with_recorder(|r| r.register_histogram(key, &METADATA)),
            None => {
                metrics::histogram!(STORE_CALL_DURATION, "backend" => backend, "operation" => operation.label())
            }
        },
        elapsed.as_secs_f64(),
    );
}

/// What the `metrics` macros called here register with: this module as
/// target, at level INFO.
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// The slot for `op` (one of [`SAVE_OPS`]) in `select`'s array.
fn by_op<T, const N: usize>(
    op: &str,
    select: impl FnOnce(&'static handles::Handles) -> &'static [handles::Slot<T>; N],
) -> Option<&'static handles::Slot<T>> {
    let i = index(&SAVE_OPS, op)?;
    select(handles::global()?).get(i)
}

/// A save (`op`: `write` or `rotate`) is over: how many conflicts it met,
/// and whether it gave up.
pub(crate) fn save_finished(op: &'static str, retries: u32, exhausted: bool) {
    observe(
        by_op(op, |h| &h.save_retries),
        || literal_op!(op, register_histogram, histogram!(SESSION_SAVE_RETRIES)),
        f64::from(retries),
    );
    if exhausted {
        count(
            by_op(op, |h| &h.retries_exhausted),
            || literal_op!(op, register_counter, counter!(SESSION_RETRIES_EXHAUSTED)),
            1,
        );
    }
}

pub(crate) fn conflict(op: &'static str) {
    count(
        by_op(op, |h| &h.conflicts),
        || literal_op!(op, register_counter, counter!(SESSION_CONFLICTS)),
        1,
    );
}

pub(crate) fn touch(written: bool) {
    count(
        handles::global().map(|h| &h.touches[usize::from(written)]),
        || {
            if written {
                static_metric!(register_counter, SESSION_TOUCHES, "result" => "written")
            } else {
                static_metric!(register_counter, SESSION_TOUCHES, "result" => "skipped")
            }
        },
        1,
    );
}

pub(crate) fn record_written(op: &'static str, bytes: usize) {
    observe(
        by_op(op, |h| &h.record_bytes),
        || literal_op!(op, register_histogram, histogram!(SESSION_RECORD_BYTES)),
        bytes as f64,
    );
}

pub(crate) fn created() {
    let slot = handles::global().map(|h| &h.created);
    count(
        slot,
        || static_metric!(register_counter, SESSIONS_CREATED),
        1,
    );
}

pub(crate) fn rotated() {
    let slot = handles::global().map(|h| &h.rotated);
    count(
        slot,
        || static_metric!(register_counter, SESSIONS_ROTATED),
        1,
    );
}

pub(crate) fn deleted() {
    let slot = handles::global().map(|h| &h.deleted);
    count(
        slot,
        || static_metric!(register_counter, SESSIONS_DELETED),
        1,
    );
}

pub(crate) fn revoked(n: usize) {
    let slot = handles::global().map(|h| &h.revoked);
    count(
        slot,
        || static_metric!(register_counter, SESSIONS_REVOKED),
        n as u64,
    );
}

pub(crate) fn expired_on_read() {
    let slot = handles::global().map(|h| &h.expired_on_read);
    count(
        slot,
        || static_metric!(register_counter, SESSIONS_EXPIRED_ON_READ),
        1,
    );
}

pub(crate) fn outage(fail_open: bool) {
    count(
        handles::global().map(|h| &h.outage[usize::from(fail_open)]),
        || {
            if fail_open {
                static_metric!(register_counter, OUTAGE_DECISIONS, "decision" => "fail_open")
            } else {
                static_metric!(register_counter, OUTAGE_DECISIONS, "decision" => "fail_closed")
            }
        },
        1,
    );
}
