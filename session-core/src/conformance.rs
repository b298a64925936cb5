//! The public conformance suite: one async function per behaviour of the
//! [`SessionStore`] contract, run by every store.
//!
//! Why this file is long: it is the contract's executable form, one short
//! function per behaviour; split across files, a store author would have to
//! read several to see what a store must do.
//!
//! A store's tests implement [`Harness`] (how to make a store over a shared
//! backend, and how to corrupt a record in it) and call
//! [`conformance_tests!`](crate::conformance_tests), which writes one test
//! per case, so a failure names the case:
//!
//! ```
//! use offstate_core::conformance::Harness;
//! use offstate_core::{MemoryStore, SessionKey};
//!
//! // Your harness: how to make store instances over one shared backend.
//! #[derive(Default)]
//! struct MyHarness(MemoryStore);
//!
//! impl Harness for MyHarness {
//!     type Store = MemoryStore;
//!     async fn store(&self) -> MemoryStore {
//!         self.0.clone()
//!     }
//!     async fn corrupt(&self, _key: &SessionKey) -> bool {
//!         false // a store of typed values cannot hold bad bytes
//!     }
//! }
//!
//! // In a test file this writes one #[test] per case:
//! offstate_core::conformance_tests!(async { MyHarness::default() });
//! # fn main() {}
//! ```
//!
//! Every case uses fresh random session keys and principals, so cases may
//! share one backend and run in parallel. A harness whose server cannot be
//! started must panic with a clear message: a case never skips silently.

// This module is a test suite: a panic here is a failing test, which is its job.
#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::clock::{Clock, ManualClock, SystemClock};
use crate::counting::CountingStore;
use crate::error::{LimitError, SessionError, StoreError};
use crate::expiry::ExpiryPolicy;
use crate::id::{SessionId, SessionKey};
use crate::record::{Deadlines, Record, Timestamp, Version};
use crate::session::{Limits, Sessions};
use crate::store::{
    Change, CreateOutcome, DeleteOutcome, PrincipalChange, SaveOutcome, SessionStore, TouchOutcome,
};

/// What the suite needs from a store's test set-up.
pub trait Harness: Send + Sync + 'static {
    /// The store under test.
    type Store: SessionStore;

    /// A new store instance over the harness's backend. Two calls must give
    /// two instances that see the same data, as two app instances would.
    fn store(&self) -> impl Future<Output = Self::Store> + Send;

    /// Overwrites the stored record under `key` (prefix included, as the
    /// store writes it) with data that is not a valid record, and returns
    /// true. A store that holds typed values and no bytes (the memory store)
    /// returns false; the case then checks the record is intact instead.
    fn corrupt(&self, key: &SessionKey) -> impl Future<Output = bool> + Send;

    /// How late the backend may remove a record after its deadline, for the
    /// one real-time check (memcached counts in whole seconds).
    fn ttl_granularity(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// Runs a future on a fresh multi-threaded runtime: how the generated tests
/// run each case.
///
/// # Panics
///
/// If a runtime cannot be built, which fails the test that asked for it.
pub fn run<F: Future<Output = ()>>(future: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(future),
        Err(error) => panic!("could not build a tokio runtime for a conformance case: {error}"),
    }
}

/// Writes one `#[test]` per conformance case for a harness.
///
/// The argument is an `async` expression that yields the harness; it is
/// evaluated once per case.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::__conformance_cases!($make;
            create_then_load_round_trips,
            create_never_overwrites_an_existing_session,
            save_applies_only_the_delta_and_raises_the_version,
            save_applied_is_exactly_save,
            save_applied_without_a_principal_keeps_every_rule_of_save,
            save_with_a_stale_version_conflicts_and_returns_the_current_record,
            save_never_creates_a_session,
            touch_moves_the_idle_deadline_without_rewriting_data,
            touch_never_creates_a_session,
            touch_never_moves_the_idle_deadline_backwards,
            save_never_moves_deadlines_backwards,
            delete_if_version_deletes_only_the_version_read,
            deleted_session_is_not_resurrected_by_save_or_touch,
            in_flight_write_does_not_resurrect_a_deleted_session,
            idle_expiry_follows_the_injected_clock,
            absolute_expiry_is_not_extended_by_touches,
            expired_session_cannot_be_saved_or_touched,
            real_time_expiry_within_ttl_granularity,
            touch_threshold_limits_writes_on_reads,
            principal_sessions_are_listed_and_revoked,
            clearing_the_principal_removes_it_from_the_index,
            corrupt_record_is_a_typed_error_for_that_session_only,
            large_values_round_trip,
            size_limits_are_checked_before_writing,
            concurrent_updates_lose_nothing,
            cycle_id_moves_the_data_and_retires_the_old_id,
            revoke_from_a_session_logs_out_everywhere,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run(async {
                    let harness = $make.await;
                    $crate::conformance::$case(&harness).await;
                });
            }
        )*
    };
}

fn new_key() -> SessionKey {
    SessionId::generate().key()
}

fn principal_name(tag: &str) -> String {
    format!("{tag}-{}", &SessionId::generate().to_string()[..12])
}

fn record_with(now: Timestamp, ttl: Duration, data: &[(&str, &str)]) -> Record {
    let mut record = Record::new(now, Deadlines::idle_at(now.saturating_add(ttl)));
    for (k, v) in data {
        record.data.insert((*k).to_owned(), v.as_bytes().to_vec());
    }
    record
}

const HOUR: Duration = Duration::from_secs(3600);

async fn manual<H: Harness>(h: &H) -> (ManualClock, H::Store) {
    (ManualClock::new(), h.store().await)
}

async fn must<T>(result: Result<T, StoreError>, what: &str) -> T {
    match result {
        Ok(value) => value,
        Err(error) => panic!("{what} failed: {error} ({error:?})"),
    }
}

/// `create` then `load` returns exactly what was created, at version 1.
pub async fn create_then_load_round_trips<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let mut record = record_with(clock.now(), HOUR, &[("cart", "[1,2]"), ("lang", "\"en\"")]);
    record.deadlines.absolute = Some(clock.now().saturating_add(HOUR * 2));
    assert_eq!(
        must(store.create(&key, &record, clock.now()).await, "create").await,
        CreateOutcome::Created
    );
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("created session loads");
    assert_eq!(*loaded, record);
    assert_eq!(loaded.version, Version::INITIAL);
    assert!(
        must(store.load(&new_key(), clock.now()).await, "load")
            .await
            .is_none()
    );
}

/// An ID collision on create never overwrites another session.
pub async fn create_never_overwrites_an_existing_session<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let first = record_with(clock.now(), HOUR, &[("owner", "\"alice\"")]);
    let second = record_with(clock.now(), HOUR, &[("owner", "\"mallory\"")]);
    must(store.create(&key, &first, clock.now()).await, "create").await;
    assert_eq!(
        must(store.create(&key, &second, clock.now()).await, "create").await,
        CreateOutcome::Exists
    );
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("still there");
    assert_eq!(loaded.data, first.data);
}

/// The change both delta tests make to a session holding `a`, `b` and
/// `c`: `a` rewritten, `d` added, `b` removed, a new principal (named from
/// `tag`), and a later idle deadline.
fn delta_change(now: Timestamp, tag: &str) -> (Change, String) {
    let mut change = Change::new(
        Version::INITIAL,
        Deadlines::idle_at(now.saturating_add(HOUR * 2)),
    );
    change.set.insert("a".into(), b"10".to_vec());
    change.set.insert("d".into(), b"4".to_vec());
    change.remove.insert("b".into());
    let principal = principal_name(tag);
    change.principal = PrincipalChange::Set(principal.clone());
    (change, principal)
}

/// A save changes only the keys in the change, keeps the rest, raises the
/// version by one and stores the new deadlines and principal.
pub async fn save_applies_only_the_delta_and_raises_the_version<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("a", "1"), ("b", "2"), ("c", "3")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let (change, principal) = delta_change(clock.now(), "delta");
    let outcome = must(store.save(&key, &change, clock.now()).await, "save").await;
    assert_eq!(outcome, SaveOutcome::Saved(Version::new(2)));
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("saved session loads");
    assert_eq!(*loaded, change.apply_to(&record));
    assert_eq!(loaded.principal.as_deref(), Some(principal.as_str()));
    assert_eq!(loaded.data.get("c").map(Vec::as_slice), Some(&b"3"[..]));
    assert!(!loaded.data.contains_key("b"));
}

/// `save_applied` (the writer hands over the record it built) does exactly
/// what `save` does: the same record after it, a later stored idle
/// deadline kept (a touch at the same version), a principal change, and a
/// conflict that writes nothing when the base is stale.
pub async fn save_applied_is_exactly_save<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("a", "1"), ("b", "2"), ("c", "3")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let base = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("created");
    // A touch at the same version moves the idle deadline past the one the
    // writer asks for: the later one stays.
    let touched = clock.now().saturating_add(HOUR * 3);
    must(store.touch(&key, touched, clock.now()).await, "touch").await;
    let (change, principal) = delta_change(clock.now(), "applied");
    let next = Arc::new(change.apply_to(&base));
    let outcome = must(
        store
            .save_applied(&key, &change, &base, &next, clock.now())
            .await,
        "save_applied",
    )
    .await;
    assert_eq!(outcome, SaveOutcome::Saved(Version::new(2)));
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("saved session loads");
    let mut expected = change.apply_to(&base);
    expected.deadlines.idle = Some(touched);
    assert_eq!(*loaded, expected);
    assert_eq!(loaded.principal.as_deref(), Some(principal.as_str()));

    // The same base again is stale now: a conflict, nothing written.
    let mut stale = Change::new(Version::INITIAL, base.deadlines);
    stale.set.insert("a".into(), b"99".to_vec());
    let stale_next = Arc::new(stale.apply_to(&base));
    match must(
        store
            .save_applied(&key, &stale, &base, &stale_next, clock.now())
            .await,
        "save_applied",
    )
    .await
    {
        SaveOutcome::Conflict(current) => assert_eq!(*current, expected),
        other => panic!("a stale save must conflict, got {other:?}"),
    }
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("still there");
    assert_eq!(*loaded, expected);
}

/// One write of an anonymous session through `save_applied`: `base` with
/// `cart` set to `value` and the idle deadline `idle` asked.
fn anonymous_write(base: &Record, idle: Option<Timestamp>, value: &str) -> (Change, Arc<Record>) {
    let mut deadlines = base.deadlines;
    deadlines.idle = idle;
    let mut change = Change::new(base.version, deadlines);
    change.set.insert("cart".into(), value.as_bytes().to_vec());
    let next = Arc::new(change.apply_to(base));
    (change, next)
}

/// The commonest write, `save_applied` of a session with no principal that
/// keeps none (a store may then keep the writer's record as it is, as the
/// Redis store does), obeys every rule of `save`: the asked idle deadline
/// is stored; a later one from a touch at the same version stays; an
/// absolute deadline before the asked idle one still ends the session; a
/// session without an idle deadline gets none; a stale base conflicts and
/// writes nothing; an expired session is gone.
pub async fn save_applied_without_a_principal_keeps_every_rule_of_save<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("cart", "[]")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let load = |key: SessionKey, at: Timestamp| {
        let store = &store;
        async move { must(store.load(&key, at).await, "load").await }
    };
    let save = |key: SessionKey, change: Change, base: Arc<Record>, next: Arc<Record>| {
        let (store, now) = (&store, clock.now());
        async move {
            must(
                store.save_applied(&key, &change, &base, &next, now).await,
                "save_applied",
            )
            .await
        }
    };

    // The asked idle deadline is later than the stored one: stored as built.
    let base = load(key.clone(), clock.now()).await.expect("created");
    let (change, next) = anonymous_write(&base, Some(clock.now().saturating_add(HOUR * 2)), "[1]");
    let saved = save(key.clone(), change, Arc::clone(&base), Arc::clone(&next)).await;
    assert_eq!(saved, SaveOutcome::Saved(Version::new(2)));
    let second = load(key.clone(), clock.now()).await.expect("saved");
    assert_eq!(*second, *next);

    // The same base again is stale: a conflict with the stored record.
    let (stale, stale_next) = anonymous_write(&base, base.deadlines.idle, "[9]");
    match save(key.clone(), stale, Arc::clone(&base), stale_next).await {
        SaveOutcome::Conflict(current) => assert_eq!(*current, *next),
        other => panic!("a stale save must conflict, got {other:?}"),
    }

    // A touch at version 2 moves the idle deadline past the one the next
    // writer asks for (its clock is behind): the touched one stays.
    let touched = clock.now().saturating_add(HOUR * 3);
    must(store.touch(&key, touched, clock.now()).await, "touch").await;
    let (change, next) = anonymous_write(&second, Some(clock.now().saturating_add(HOUR)), "[1,2]");
    let saved = save(key.clone(), change, Arc::clone(&second), Arc::clone(&next)).await;
    assert_eq!(saved, SaveOutcome::Saved(Version::new(3)));
    let third = load(key.clone(), clock.now()).await.expect("saved");
    assert_eq!(third.deadlines.idle, Some(touched));
    assert_eq!(third.data, next.data);
    clock.advance(HOUR * 2);
    assert!(
        load(key.clone(), clock.now()).await.is_some(),
        "a save with an earlier idle deadline shortened the session"
    );

    // An absolute deadline before the asked idle one ends the session.
    let key = new_key();
    let mut record = record_with(clock.now(), HOUR, &[("cart", "[]")]);
    let absolute = clock.now().saturating_add(Duration::from_secs(1800));
    record.deadlines.absolute = Some(absolute);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let base = load(key.clone(), clock.now()).await.expect("created");
    let (change, next) = anonymous_write(&base, Some(clock.now().saturating_add(HOUR * 2)), "[1]");
    let saved = save(key.clone(), change, Arc::clone(&base), Arc::clone(&next)).await;
    assert_eq!(saved, SaveOutcome::Saved(Version::new(2)));
    let loaded = load(key.clone(), clock.now()).await.expect("saved");
    assert_eq!(*loaded, *next);
    assert_eq!(loaded.deadlines.absolute, Some(absolute));
    clock.advance(Duration::from_secs(1801));
    assert!(
        load(key.clone(), clock.now()).await.is_none(),
        "a save moved the absolute deadline"
    );
    // Expired: a save finds it gone and writes nothing.
    let (change, next) = anonymous_write(&loaded, Some(clock.now().saturating_add(HOUR)), "[2]");
    assert_eq!(
        save(key.clone(), change, Arc::clone(&loaded), next).await,
        SaveOutcome::Gone
    );

    // No idle deadline: none after the save either.
    let key = new_key();
    let mut record = Record::new(clock.now(), Deadlines::default());
    record.data.insert("cart".into(), b"[]".to_vec());
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let base = load(key.clone(), clock.now()).await.expect("created");
    let (change, next) = anonymous_write(&base, None, "[1]");
    let saved = save(key.clone(), change, Arc::clone(&base), Arc::clone(&next)).await;
    assert_eq!(saved, SaveOutcome::Saved(Version::new(2)));
    let loaded = load(key.clone(), clock.now()).await.expect("saved");
    assert_eq!(*loaded, *next);
    assert_eq!(loaded.deadlines, Deadlines::default());
}

/// A save against an old version writes nothing and returns the current
/// record, so the caller can merge without another read.
pub async fn save_with_a_stale_version_conflicts_and_returns_the_current_record<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("n", "0")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let mut first = Change::new(Version::INITIAL, record.deadlines);
    first.set.insert("n".into(), b"1".to_vec());
    must(store.save(&key, &first, clock.now()).await, "save").await;
    let mut stale = Change::new(Version::INITIAL, record.deadlines);
    stale.set.insert("n".into(), b"99".to_vec());
    stale.set.insert("other".into(), b"1".to_vec());
    match must(store.save(&key, &stale, clock.now()).await, "save").await {
        SaveOutcome::Conflict(current) => {
            assert_eq!(current.version, Version::new(2));
            assert_eq!(current.data.get("n").map(Vec::as_slice), Some(&b"1"[..]));
        }
        other => panic!("a stale save must conflict, got {other:?}"),
    }
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("still there");
    assert_eq!(loaded.version, Version::new(2));
    assert!(
        !loaded.data.contains_key("other"),
        "a conflicting save wrote data"
    );
}

/// A save on a key that was never created is `Gone` and creates nothing.
pub async fn save_never_creates_a_session<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let mut change = Change::new(
        Version::INITIAL,
        Deadlines::idle_at(clock.now().saturating_add(HOUR)),
    );
    change.set.insert("x".into(), b"1".to_vec());
    assert_eq!(
        must(store.save(&key, &change, clock.now()).await, "save").await,
        SaveOutcome::Gone
    );
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
}

/// A touch moves the idle deadline and leaves data and version alone.
pub async fn touch_moves_the_idle_deadline_without_rewriting_data<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), Duration::from_secs(60), &[("k", "\"v\"")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    clock.advance(Duration::from_secs(50));
    let deadline = clock.now().saturating_add(Duration::from_secs(60));
    assert_eq!(
        must(store.touch(&key, deadline, clock.now()).await, "touch").await,
        TouchOutcome::Touched
    );
    clock.advance(Duration::from_secs(30));
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("touched session lives on");
    assert_eq!(loaded.version, Version::INITIAL);
    assert_eq!(loaded.data, record.data);
    assert_eq!(loaded.deadlines.idle, Some(deadline));
}

/// A touch on a key that was never created is `Gone` and creates nothing.
pub async fn touch_never_creates_a_session<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let outcome = must(
        store
            .touch(&key, clock.now().saturating_add(HOUR), clock.now())
            .await,
        "touch",
    )
    .await;
    assert_eq!(outcome, TouchOutcome::Gone);
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
}

/// A touch never moves the idle deadline backwards: a late touch, or one
/// from an instance whose clock runs behind, keeps the later deadline that
/// another request already set.
pub async fn touch_never_moves_the_idle_deadline_backwards<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("k", "1")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let earlier = clock.now().saturating_add(Duration::from_secs(600));
    assert_eq!(
        must(store.touch(&key, earlier, clock.now()).await, "touch").await,
        TouchOutcome::Touched
    );
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("live");
    assert_eq!(loaded.deadlines.idle, record.deadlines.idle);
    clock.advance(Duration::from_secs(1800));
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_some(),
        "a late touch shortened the session"
    );
}

/// A save keeps the later idle deadline too, and never changes the
/// absolute deadline set at creation.
pub async fn save_never_moves_deadlines_backwards<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let mut record = record_with(clock.now(), HOUR, &[("k", "1")]);
    record.deadlines.absolute = Some(clock.now().saturating_add(HOUR * 2));
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let skewed = Deadlines::idle_at(clock.now().saturating_add(Duration::from_secs(600)))
        .with_absolute_at(clock.now().saturating_add(HOUR * 10));
    let mut change = Change::new(Version::INITIAL, skewed);
    change.set.insert("k".into(), b"2".to_vec());
    assert_eq!(
        must(store.save(&key, &change, clock.now()).await, "save").await,
        SaveOutcome::Saved(Version::new(2))
    );
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("live");
    assert_eq!(loaded.deadlines, record.deadlines);
    assert_eq!(loaded.data.get("k").map(Vec::as_slice), Some(&b"2"[..]));
}

/// `delete_if_version` deletes a live session only at the version the
/// caller read: a newer version is a conflict that returns the current
/// record, a missing or expired session is gone. ID rotation relies on it
/// so that a write racing with a login is never lost.
pub async fn delete_if_version_deletes_only_the_version_read<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("n", "0")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let mut change = Change::new(Version::INITIAL, record.deadlines);
    change.set.insert("n".into(), b"1".to_vec());
    must(store.save(&key, &change, clock.now()).await, "save").await;
    let v2 = Version::new(2);
    match must(
        store
            .delete_if_version(&key, Version::INITIAL, clock.now())
            .await,
        "delete_if_version",
    )
    .await
    {
        DeleteOutcome::Conflict(current) => {
            assert_eq!(current.version, v2);
            assert_eq!(current.data.get("n").map(Vec::as_slice), Some(&b"1"[..]));
        }
        other => panic!("a delete at an old version must conflict, got {other:?}"),
    }
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_some(),
        "a conflicting delete deleted"
    );
    assert_eq!(
        must(
            store.delete_if_version(&key, v2, clock.now()).await,
            "delete_if_version"
        )
        .await,
        DeleteOutcome::Deleted
    );
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
    assert_eq!(
        must(
            store.delete_if_version(&key, v2, clock.now()).await,
            "delete_if_version"
        )
        .await,
        DeleteOutcome::Gone
    );
    let expiring = new_key();
    let short = record_with(clock.now(), Duration::from_secs(60), &[("k", "1")]);
    must(store.create(&expiring, &short, clock.now()).await, "create").await;
    clock.advance(Duration::from_secs(61));
    assert_eq!(
        must(
            store
                .delete_if_version(&expiring, Version::INITIAL, clock.now())
                .await,
            "delete_if_version"
        )
        .await,
        DeleteOutcome::Gone
    );
}

/// After delete, neither a save with the old version nor a touch brings the
/// session back.
pub async fn deleted_session_is_not_resurrected_by_save_or_touch<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), HOUR, &[("cart", "[1]")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    assert!(must(store.delete(&key, clock.now()).await, "delete").await);
    let mut change = Change::new(Version::INITIAL, record.deadlines);
    change.set.insert("cart".into(), b"[1,2]".to_vec());
    assert_eq!(
        must(store.save(&key, &change, clock.now()).await, "save").await,
        SaveOutcome::Gone
    );
    let touch = must(
        store
            .touch(&key, clock.now().saturating_add(HOUR), clock.now())
            .await,
        "touch",
    )
    .await;
    assert_eq!(touch, TouchOutcome::Gone);
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
    assert!(!must(store.delete(&key, clock.now()).await, "delete").await);
}

/// A request that loaded a session before another request deleted it
/// (logout in another tab) cannot write it back: its save reports `Gone`.
pub async fn in_flight_write_does_not_resurrect_a_deleted_session<H: Harness>(h: &H) {
    let clock = ManualClock::new();
    let a = Sessions::new(h.store().await).with_clock(Arc::new(clock.clone()));
    let b = Sessions::new(h.store().await).with_clock(Arc::new(clock.clone()));
    let session = a.new_session();
    session.insert("cart", &vec![1]).await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("created");

    let in_flight = a.load(&id).await.expect("load").expect("live");
    in_flight.get::<Vec<i32>>("cart").await.expect("read");
    let logout = b.load(&id).await.expect("load").expect("live");
    logout.delete().await.expect("delete");

    in_flight.insert("cart", &vec![1, 2]).await.expect("insert");
    match in_flight.save().await {
        Err(SessionError::Gone) => {}
        other => panic!("a write after delete must report Gone, got {other:?}"),
    }
    assert!(
        b.load(&id).await.expect("load").is_none(),
        "deleted session came back"
    );
}

/// Past its idle deadline by the injected clock, a session is gone, even
/// though the backend's own TTL (on real time) has not fired.
pub async fn idle_expiry_follows_the_injected_clock<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), Duration::from_secs(600), &[("k", "1")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    clock.advance(Duration::from_secs(599));
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_some()
    );
    clock.advance(Duration::from_secs(1));
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none(),
        "served an expired session"
    );
}

/// The absolute deadline ends a session however often it is touched.
pub async fn absolute_expiry_is_not_extended_by_touches<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let now = clock.now();
    let mut record = record_with(now, Duration::from_secs(600), &[("k", "1")]);
    record.deadlines.absolute = Some(now.saturating_add(Duration::from_secs(1000)));
    must(store.create(&key, &record, clock.now()).await, "create").await;
    for _ in 0..4 {
        clock.advance(Duration::from_secs(300));
        if clock.now() < now.saturating_add(Duration::from_secs(1000)) {
            let deadline = clock.now().saturating_add(Duration::from_secs(600));
            assert_eq!(
                must(store.touch(&key, deadline, clock.now()).await, "touch").await,
                TouchOutcome::Touched
            );
            assert!(
                must(store.load(&key, clock.now()).await, "load")
                    .await
                    .is_some()
            );
        }
    }
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none(),
        "touches extended a session past its absolute deadline"
    );
}

/// An expired session is gone for writes too: no save or touch revives it.
pub async fn expired_session_cannot_be_saved_or_touched<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let record = record_with(clock.now(), Duration::from_secs(60), &[("k", "1")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    clock.advance(Duration::from_secs(61));
    let fresh = Deadlines::idle_at(clock.now().saturating_add(HOUR));
    let mut change = Change::new(Version::INITIAL, fresh);
    change.set.insert("k".into(), b"2".to_vec());
    assert_eq!(
        must(store.save(&key, &change, clock.now()).await, "save").await,
        SaveOutcome::Gone
    );
    let touch = must(
        store
            .touch(&key, clock.now().saturating_add(HOUR), clock.now())
            .await,
        "touch",
    )
    .await;
    assert_eq!(touch, TouchOutcome::Gone);
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
    // The key may now be reused by a create, as a fresh session.
    let again = record_with(clock.now(), HOUR, &[("k", "3")]);
    assert_eq!(
        must(store.create(&key, &again, clock.now()).await, "create").await,
        CreateOutcome::Created
    );
}

/// On the real clock, a session with a one-second deadline is gone once the
/// deadline and the backend's TTL granularity have passed.
pub async fn real_time_expiry_within_ttl_granularity<H: Harness>(h: &H) {
    let clock = SystemClock;
    let store = h.store().await;
    let key = new_key();
    let record = record_with(clock.now(), Duration::from_millis(1000), &[("k", "1")]);
    must(store.create(&key, &record, clock.now()).await, "create").await;
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_some()
    );
    tokio::time::sleep(Duration::from_millis(1000) + h.ttl_granularity()).await;
    assert!(
        must(store.load(&key, clock.now()).await, "load")
            .await
            .is_none()
    );
}

/// Through the `Session` handle, a read-only request touches the session
/// only once the touch threshold has passed.
pub async fn touch_threshold_limits_writes_on_reads<H: Harness>(h: &H) {
    let clock = ManualClock::new();
    let store = CountingStore::new(h.store().await);
    let sessions = Sessions::new(store.clone())
        .with_clock(Arc::new(clock.clone()))
        .with_expiry(
            ExpiryPolicy::never()
                .with_idle(Some(Duration::from_secs(100)))
                .with_touch_threshold(0.5),
        );
    let session = sessions.new_session();
    session.insert("k", "v").await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("created");

    clock.advance(Duration::from_secs(40));
    store.reset();
    let read = crate::middleware::open(&sessions, Some(id.clone()));
    assert_eq!(
        read.get::<String>("k").await.expect("get").as_deref(),
        Some("v")
    );
    read.save().await.expect("save");
    assert_eq!(store.counts().touch, 0, "touched before the threshold");
    assert_eq!(store.counts().total(), 1, "a read costs one load");

    clock.advance(Duration::from_secs(20));
    let read = crate::middleware::open(&sessions, Some(id.clone()));
    read.get::<String>("k").await.expect("get");
    read.save().await.expect("save");
    assert_eq!(store.counts().touch, 1, "no touch past the threshold");

    // The touch moved the deadline: 90 s after the first write it still lives.
    clock.advance(Duration::from_secs(90));
    let read = crate::middleware::open(&sessions, Some(id));
    assert!(
        read.exists().await.expect("load"),
        "the touch did not extend the session"
    );
}

/// All live sessions of a principal are listed, revoked together, and no
/// other principal's session is touched.
pub async fn principal_sessions_are_listed_and_revoked<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let alice = principal_name("alice");
    let bob = principal_name("bob");
    let mut alice_keys = BTreeSet::new();
    for _ in 0..3 {
        let key = new_key();
        let mut record = record_with(clock.now(), HOUR, &[("k", "1")]);
        record.principal = Some(alice.clone());
        must(store.create(&key, &record, clock.now()).await, "create").await;
        alice_keys.insert(key);
    }
    // One more attached by a save rather than at creation.
    let late = new_key();
    let record = record_with(clock.now(), HOUR, &[("k", "1")]);
    must(store.create(&late, &record, clock.now()).await, "create").await;
    let mut change = Change::new(Version::INITIAL, record.deadlines);
    change.principal = PrincipalChange::Set(alice.clone());
    must(store.save(&late, &change, clock.now()).await, "save").await;
    alice_keys.insert(late);

    let bobs = new_key();
    let mut record = record_with(clock.now(), HOUR, &[("k", "1")]);
    record.principal = Some(bob.clone());
    must(store.create(&bobs, &record, clock.now()).await, "create").await;

    let caps = store.capabilities();
    if caps.list_principal {
        let listed = list_eventually(
            &store,
            &clock,
            &alice,
            alice_keys.len(),
            caps.consistent_principal_index,
        )
        .await;
        assert_eq!(listed, alice_keys);
    } else {
        match store.list_principal(&alice, clock.now()).await {
            Err(StoreError::Unsupported(_)) => {}
            other => panic!("a store without listing must say Unsupported, got {other:?}"),
        }
    }
    if !caps.consistent_principal_index {
        // Give an eventually consistent index the time to see every write.
        list_eventually(&store, &clock, &alice, alice_keys.len(), false).await;
    }
    must(store.revoke_principal(&alice, clock.now()).await, "revoke").await;
    for key in &alice_keys {
        assert!(
            must(store.load(key, clock.now()).await, "load")
                .await
                .is_none(),
            "revoked session still loads"
        );
    }
    assert!(
        must(store.load(&bobs, clock.now()).await, "load")
            .await
            .is_some(),
        "revoke hit another principal"
    );
    if caps.list_principal {
        assert!(
            must(store.list_principal(&alice, clock.now()).await, "list")
                .await
                .is_empty()
        );
    }
}

async fn list_eventually<S: SessionStore>(
    store: &S,
    clock: &ManualClock,
    principal: &str,
    want: usize,
    consistent: bool,
) -> BTreeSet<SessionKey> {
    let tries = if consistent { 1 } else { 50 };
    let mut listed = BTreeSet::new();
    for _ in 0..tries {
        match store.list_principal(principal, clock.now()).await {
            Ok(keys) => listed = keys.into_iter().collect(),
            Err(StoreError::Unsupported(_)) => return listed,
            Err(error) => panic!("list_principal failed: {error}"),
        }
        if listed.len() >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    listed
}

/// A session detached from its principal is not revoked with it.
pub async fn clearing_the_principal_removes_it_from_the_index<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let carol = principal_name("carol");
    let key = new_key();
    let mut record = record_with(clock.now(), HOUR, &[("k", "1")]);
    record.principal = Some(carol.clone());
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let mut change = Change::new(Version::INITIAL, record.deadlines);
    change.principal = PrincipalChange::Clear;
    must(store.save(&key, &change, clock.now()).await, "save").await;
    if !store.capabilities().consistent_principal_index {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    must(store.revoke_principal(&carol, clock.now()).await, "revoke").await;
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("detached session survives");
    assert_eq!(loaded.principal, None);
}

/// A record that does not decode gives `StoreError::Corrupt` for that
/// session, and other sessions are unaffected.
pub async fn corrupt_record_is_a_typed_error_for_that_session_only<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let bad = new_key();
    let good = new_key();
    let record = record_with(clock.now(), HOUR, &[("k", "1")]);
    must(store.create(&bad, &record, clock.now()).await, "create").await;
    must(store.create(&good, &record, clock.now()).await, "create").await;
    if h.corrupt(&bad).await {
        match store.load(&bad, clock.now()).await {
            Err(StoreError::Corrupt(_)) => {}
            other => panic!("a corrupt record must give StoreError::Corrupt, got {other:?}"),
        }
    } else {
        let loaded = must(store.load(&bad, clock.now()).await, "load").await;
        assert_eq!(
            loaded.as_deref(),
            Some(&record),
            "a store without bytes changed the record"
        );
    }
    assert!(
        must(store.load(&good, clock.now()).await, "load")
            .await
            .is_some()
    );
}

/// Values of hundreds of kilobytes, and many keys, round-trip intact.
pub async fn large_values_round_trip<H: Harness>(h: &H) {
    let (clock, store) = manual(h).await;
    let key = new_key();
    let mut record = record_with(clock.now(), HOUR, &[]);
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    record.data.insert("big".into(), big.clone());
    for i in 0..100 {
        record
            .data
            .insert(format!("key-{i}"), format!("{i}").into_bytes());
    }
    must(store.create(&key, &record, clock.now()).await, "create").await;
    let loaded = must(store.load(&key, clock.now()).await, "load")
        .await
        .expect("large session loads");
    assert_eq!(loaded.data.get("big"), Some(&big));
    assert_eq!(loaded.data.len(), 101);
}

/// The handle refuses a write over the configured limits with a typed
/// error, and the stored session stays as it was.
pub async fn size_limits_are_checked_before_writing<H: Harness>(h: &H) {
    let clock = ManualClock::new();
    let store = h.store().await;
    let sessions = Sessions::new(store)
        .with_clock(Arc::new(clock))
        .with_limits(
            Limits::default()
                .with_max_keys(3)
                .with_max_value_bytes(1000)
                .with_max_record_bytes(2500),
        );
    let session = sessions.new_session();
    session.insert("a", "small").await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("created");

    let session = sessions.load(&id).await.expect("load").expect("live");
    match session.insert("big", &"x".repeat(2000)).await {
        Err(SessionError::Limit(LimitError::ValueTooLarge { .. })) => {}
        other => panic!("an oversized value must be refused, got {other:?}"),
    }
    for (k, n) in [("b", 900), ("c", 900), ("d", 900)] {
        session.insert(k, &"y".repeat(n)).await.expect("insert");
    }
    match session.save().await {
        Err(SessionError::Limit(
            LimitError::TooManyKeys { .. } | LimitError::RecordTooLarge { .. },
        )) => {}
        other => panic!("an oversized record must be refused, got {other:?}"),
    }
    let stored = sessions.load(&id).await.expect("load").expect("live");
    assert_eq!(stored.keys().await.expect("keys"), vec!["a".to_owned()]);
}

/// Creates a session with an empty `cart` through `a`, then runs `tasks`
/// tasks of `updates` `update` closures each, alternating between `a` and
/// `b` (two app instances), each adding the unique item `"<task>-<update>"`.
/// Returns the session's ID for the caller's checks. Every store's
/// concurrency tests use it, so they hammer the same way.
///
/// # Panics
///
/// When a session operation fails, which fails the calling test.
pub async fn fill_one_cart_concurrently(
    a: &Sessions,
    b: &Sessions,
    tasks: usize,
    updates: usize,
) -> SessionId {
    let session = a.new_session();
    session
        .insert("cart", &Vec::<String>::new())
        .await
        .expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("created");
    let mut running = Vec::new();
    for t in 0..tasks {
        let sessions = if t % 2 == 0 { a.clone() } else { b.clone() };
        let id = id.clone();
        running.push(tokio::spawn(async move {
            for u in 0..updates {
                let session = crate::middleware::open(&sessions, Some(id.clone()));
                let item = format!("{t}-{u}");
                session
                    .update("cart", move |cart: Option<Vec<String>>| {
                        let mut cart = cart.unwrap_or_default();
                        cart.push(item.clone());
                        Some(cart)
                    })
                    .await
                    .expect("update");
                session.save().await.expect("save");
            }
        }));
    }
    for task in running {
        task.await.expect("task panicked");
    }
    id
}

/// Reads the `cart` of `id` and checks it holds exactly `count` distinct
/// items: nothing lost, nothing applied twice.
///
/// # Panics
///
/// When it does not, which fails the calling test.
pub async fn assert_cart_complete(
    sessions: &Sessions,
    id: &SessionId,
    count: usize,
) -> Vec<String> {
    let cart: Vec<String> = sessions
        .load(id)
        .await
        .expect("load")
        .expect("live")
        .get("cart")
        .await
        .expect("get")
        .expect("cart");
    let unique: BTreeSet<&String> = cart.iter().collect();
    assert_eq!(cart.len(), count, "lost updates");
    assert_eq!(unique.len(), count, "duplicated updates");
    cart
}

/// N tasks × M `update` closures on one session, through two store
/// instances, lose nothing.
pub async fn concurrent_updates_lose_nothing<H: Harness>(h: &H) {
    const TASKS: usize = 10;
    const UPDATES: usize = 20;
    let a = Sessions::new(h.store().await).with_max_attempts(1000);
    let b = Sessions::new(h.store().await).with_max_attempts(1000);
    let id = fill_one_cart_concurrently(&a, &b, TASKS, UPDATES).await;
    // Read back through a fresh instance: a caching store may serve its
    // instance's copy for up to its staleness bound, which is not a loss.
    let fresh = Sessions::new(h.store().await);
    assert_cart_complete(&fresh, &id, TASKS * UPDATES).await;
}

/// `cycle_id` gives the session a new ID with the same data; the old ID no
/// longer loads.
pub async fn cycle_id_moves_the_data_and_retires_the_old_id<H: Harness>(h: &H) {
    let clock = ManualClock::new();
    let sessions = Sessions::new(h.store().await).with_clock(Arc::new(clock));
    let session = sessions.new_session();
    session
        .insert("cart", &vec!["apple"])
        .await
        .expect("insert");
    session.save().await.expect("create");
    let old = session.id().expect("created");

    let login = sessions.load(&old).await.expect("load").expect("live");
    let principal = principal_name("dave");
    login
        .set_principal(principal.clone())
        .await
        .expect("principal");
    login.cycle_id().await.expect("cycle");
    login.save().await.expect("save");
    let new = login.id().expect("rotated");
    assert_ne!(new, old);
    assert!(
        sessions.load(&old).await.expect("load").is_none(),
        "old ID still loads"
    );
    let moved = sessions
        .load(&new)
        .await
        .expect("load")
        .expect("new ID loads");
    assert_eq!(
        moved.get::<Vec<String>>("cart").await.expect("get"),
        Some(vec!["apple".to_owned()])
    );
    assert_eq!(moved.principal().await.expect("principal"), Some(principal));
}

/// "Log out everywhere" from one session ends the user's other sessions.
pub async fn revoke_from_a_session_logs_out_everywhere<H: Harness>(h: &H) {
    let clock = ManualClock::new();
    let sessions = Sessions::new(h.store().await).with_clock(Arc::new(clock));
    let principal = principal_name("erin");
    let mut ids = Vec::new();
    for _ in 0..2 {
        let session = sessions.new_session();
        session.insert("k", &1).await.expect("insert");
        session
            .set_principal(principal.clone())
            .await
            .expect("principal");
        session.save().await.expect("create");
        ids.push(session.id().expect("created"));
    }
    let phone = sessions.load(&ids[0]).await.expect("load").expect("live");
    phone.revoke_principal().await.expect("revoke");
    for id in &ids {
        assert!(
            sessions.load(id).await.expect("load").is_none(),
            "session survived revoke"
        );
    }
}
