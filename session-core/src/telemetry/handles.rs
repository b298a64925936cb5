//! Metric handles registered once with the process's global recorder, so
//! that recording is an atomic add or a histogram record: no key built,
//! no registry looked up on each call.
//!
//! Every label of [`telemetry`](super) has a bounded set of values, so each
//! (metric, labels) pair gets a slot in a table built once. A slot is
//! filled on first use (a series appears when it is first recorded, as
//! before) and then reused.
//!
//! The handles belong to the recorder that registered them. The table is
//! only used while the current recorder is the global one: a recorder set
//! for a thread (`metrics::with_local_recorder`, as in tests) takes the
//! path of the `metrics` macros, which registers on each call. The global
//! recorder is found once, at the first metric recorded, from a thread
//! that has no local recorder; one installed later still gets everything,
//! through the macros' path.

use std::sync::OnceLock;

use metrics::{Counter, Histogram, Key, Label, Recorder};

use super::Outcome;
use crate::store::Call;

/// Values of `op` in the save metrics (`offstate_session_record_bytes`
/// also has `create`).
pub(super) const SAVE_OPS: [&str; 3] = ["write", "rotate", "create"];
/// A process rarely has more than one or two stores; more than this many
/// backend names take the macros' path.
const MAX_BACKENDS: usize = 4;

/// A handle registered on first use.
pub(super) type Slot<T> = OnceLock<T>;

/// The handles of one backend's store calls.
#[derive(Debug)]
pub(super) struct Backend {
    name: &'static str,
    calls: [[Slot<Counter>; Outcome::COUNT]; Call::COUNT],
    durations: [Slot<Histogram>; Call::COUNT],
}

/// Every handle of the session layer, for the global recorder.
#[derive(Debug)]
pub(super) struct Handles {
    /// The global recorder's address: the table is used only when the
    /// current recorder is this one.
    recorder: usize,
    backends: [OnceLock<Backend>; MAX_BACKENDS],
    /// By [`SAVE_OPS`] index.
    pub(super) conflicts: [Slot<Counter>; 2],
    pub(super) save_retries: [Slot<Histogram>; 2],
    pub(super) retries_exhausted: [Slot<Counter>; 2],
    pub(super) record_bytes: [Slot<Histogram>; 3],
    /// `skipped`, `written`.
    pub(super) touches: [Slot<Counter>; 2],
    pub(super) created: Slot<Counter>,
    pub(super) rotated: Slot<Counter>,
    pub(super) deleted: Slot<Counter>,
    pub(super) revoked: Slot<Counter>,
    pub(super) expired_on_read: Slot<Counter>,
    /// `fail_closed`, `fail_open`.
    pub(super) outage: [Slot<Counter>; 2],
    /// By [`RefusedInput`](super::RefusedInput) variant.
    pub(super) refused: [Slot<Counter>; 5],
}

/// `None` when no global recorder was installed when the table was asked
/// for first.
static TABLE: OnceLock<Option<Handles>> = OnceLock::new();

/// The table, when the current recorder is the global one it was built for.
#[inline]
pub(super) fn global() -> Option<&'static Handles> {
    let table = TABLE.get_or_init(probe).as_ref()?;
    (metrics::with_recorder(address) == table.recorder).then_some(table)
}

/// The global recorder's address, seen from a new thread (where no local
/// recorder can be set); `None` when there is none yet. `metrics`' no-op
/// recorder, like any recorder that holds no state, has no size: it is not
/// cached (a zero-sized value has no address of its own to tell it apart).
#[cold]
fn probe() -> Option<Handles> {
    let found = std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("offstate-metrics-probe".into())
            .spawn_scoped(scope, || {
                metrics::with_recorder(|r| (size_of_val(r) != 0).then(|| address(r)))
            })
            .ok()?
            .join()
            .ok()?
    })?;
    Some(Handles::new(found))
}

fn address(recorder: &dyn Recorder) -> usize {
    std::ptr::from_ref(recorder).cast::<()>().addr()
}

/// The position of `value` in `set`.
pub(super) fn index(set: &[&str], value: &str) -> Option<usize> {
    set.iter().position(|v| *v == value)
}

impl Handles {
    fn new(recorder: usize) -> Self {
        Self {
            recorder,
            backends: Default::default(),
            conflicts: Default::default(),
            save_retries: Default::default(),
            retries_exhausted: Default::default(),
            record_bytes: Default::default(),
            touches: Default::default(),
            created: Slot::new(),
            rotated: Slot::new(),
            deleted: Slot::new(),
            revoked: Slot::new(),
            expired_on_read: Slot::new(),
            outage: Default::default(),
            refused: Default::default(),
        }
    }

    /// The slots of `backend`'s store calls (`None` past
    /// [`MAX_BACKENDS`] names).
    pub(super) fn backend(&self, backend: &'static str) -> Option<&Backend> {
        for slot in &self.backends {
            let taken = slot.get_or_init(|| Backend::new(backend));
            // The same `name()` gives the same pointer: no string compare.
            if std::ptr::eq(taken.name, backend) || taken.name == backend {
                return Some(taken);
            }
        }
        None
    }
}

impl Backend {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            calls: Default::default(),
            durations: Default::default(),
        }
    }

    /// The counter slot of (`operation`, `outcome`), and the histogram
    /// slot of `operation`.
    pub(super) fn call(
        &self,
        operation: Call,
        outcome: Outcome,
    ) -> (&Slot<Counter>, &Slot<Histogram>) {
        let op = operation as usize;
        (&self.calls[op][outcome as usize], &self.durations[op])
    }
}

/// Ready-made keys of the store-call metrics for one backend. When the
/// table of handles is not in use (no global recorder, or a thread's own
/// recorder), a store call registers with one of these, as the `metrics`
/// macros would with the key they build: the same key and metadata,
/// without building a vector of labels and hashing it on every call.
#[derive(Debug)]
struct CallKeys {
    name: &'static str,
    calls: [[OnceLock<Key>; Outcome::COUNT]; Call::COUNT],
    durations: [OnceLock<Key>; Call::COUNT],
}

static CALL_KEYS: [OnceLock<CallKeys>; MAX_BACKENDS] = [const { OnceLock::new() }; MAX_BACKENDS];

/// The keys of `offstate_store_calls_total` and
/// `offstate_store_call_duration_seconds` for this call (`None` past
/// [`MAX_BACKENDS`] names).
pub(super) fn call_keys(
    backend: &'static str,
    operation: Call,
    outcome: Outcome,
) -> Option<(&'static Key, &'static Key)> {
    let keys = CALL_KEYS.iter().find_map(|slot| {
        let keys = slot.get_or_init(|| CallKeys {
            name: backend,
            calls: Default::default(),
            durations: Default::default(),
        });
        (std::ptr::eq(keys.name, backend) || keys.name == backend).then_some(keys)
    })?;
    let op = operation as usize;
    let call = keys.calls[op][outcome as usize].get_or_init(|| {
        let labels = vec![
            Label::new("backend", backend),
            Label::new("operation", operation.label()),
            Label::new("outcome", outcome.as_str()),
        ];
        Key::from_parts(super::STORE_CALLS, labels)
    });
    let duration = keys.durations[op].get_or_init(|| {
        let labels = vec![
            Label::new("backend", backend),
            Label::new("operation", operation.label()),
        ];
        Key::from_parts(super::STORE_CALL_DURATION, labels)
    });
    Some((call, duration))
}

/// Adds `n` to the counter in `slot` (registered by `register` the first
/// time), or, when there is no slot for the current recorder, to the
/// counter `register` gives now.
#[inline]
pub(super) fn count(slot: Option<&Slot<Counter>>, register: impl FnOnce() -> Counter, n: u64) {
    match slot {
        Some(slot) => slot.get_or_init(register).increment(n),
        None => register().increment(n),
    }
}

/// Records `value` in the histogram in `slot`, as [`count`] does.
#[inline]
pub(super) fn observe(
    slot: Option<&Slot<Histogram>>,
    register: impl FnOnce() -> Histogram,
    value: f64,
) {
    match slot {
        Some(slot) => slot.get_or_init(register).record(value),
        None => register().record(value),
    }
}
