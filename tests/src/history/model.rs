//! What a history is made of: the operations clients run, their outcomes,
//! and the recorder that stamps each one with its invocation and
//! completion order.

use std::fmt;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use offstate_core::{SessionError, SessionId};

/// One kind of client operation (one request of a browser, or an admin's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// Adds a unique item to the cart (an `update` closure that pushes it).
    Add,
    /// Logs in: `set_principal` + `cycle_id` (and sometimes an add in the
    /// same request), then save.
    Login,
    /// Logs out: `delete`.
    Logout,
    /// Logs out everywhere: `revoke_principal` of the client's user (from
    /// its session if logged in, else through `Sessions`, as an admin).
    RevokeAll,
    /// A read-only request that saves with no changes (a touch).
    Touch,
    /// Reads the cart of the client's own session.
    Read,
    /// Presents an ID the client does not own (an attacker replaying a
    /// stolen, planted or logged-out ID) and reads what it gets.
    Snoop,
}

/// How an operation ended, as its client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged: it took effect.
    Ok,
    /// Refused with `SessionError::Gone`: the session had ended, nothing
    /// was written.
    Gone,
    /// Failed in a way that does not tell whether it took effect
    /// (timeouts, unreachable store, retries exhausted): a linearizability
    /// checker allows either.
    Unknown(String),
    /// It did not finish within the op deadline (a hang).
    Hung,
}

impl Outcome {
    /// The outcome of a session call.
    #[must_use]
    pub fn of<T>(result: &Result<T, SessionError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(SessionError::Gone) => Self::Gone,
            Err(SessionError::Store(error)) => Self::Unknown(format!("store: {error}")),
            Err(other) => Self::Unknown(other.to_string()),
        }
    }

    /// Whether it may have taken effect.
    #[must_use]
    pub fn maybe_applied(&self) -> bool {
        !matches!(self, Self::Gone)
    }

    /// Whether the client gave up without an answer (a timeout, a lost
    /// connection, a hang). Such a request may still be in flight at the
    /// server and take effect after the client saw the failure: a
    /// memcached paused with an `incr` in its socket applies it when it
    /// resumes. Its effect is bounded below by its invocation only.
    #[must_use]
    pub fn unknown(&self) -> bool {
        matches!(self, Self::Unknown(_) | Self::Hung)
    }
}

/// What a load of a presented ID found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// Whether the session was live.
    pub live: bool,
    /// Its principal, if live and logged in.
    pub principal: Option<String>,
    /// Its cart, if live.
    pub cart: Vec<String>,
}

/// One operation of a history, with what it presented, what it got, and
/// when.
#[derive(Debug, Clone)]
pub struct Event {
    /// Which client ran it.
    pub client: usize,
    /// Which app instance served it.
    pub instance: usize,
    /// What it was.
    pub kind: OpKind,
    /// The user of the client (the principal a login sets, a revoke ends).
    pub user: String,
    /// The ID the request presented, if any.
    pub presented: Option<SessionId>,
    /// What loading the presented ID found (`None`: no ID, or the load failed).
    pub observed: Option<Observation>,
    /// The session's ID after the operation, when it ended well: a new ID
    /// after a create or a login.
    pub result: Option<SessionId>,
    /// The item an add (or a login with an add) pushed.
    pub item: Option<String>,
    /// Logical time of the invocation.
    pub invoked: u64,
    /// Logical time of the completion.
    pub completed: u64,
    /// Wall time of the invocation.
    pub started: Instant,
    /// Wall time of the completion.
    pub ended: Instant,
    /// How it ended.
    pub outcome: Outcome,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{}..{} client {} on instance {}: {:?} as {} presenting {} -> {} ({:?})",
            self.invoked,
            self.completed,
            self.client,
            self.instance,
            self.kind,
            self.user,
            short(self.presented.as_ref()),
            short(self.result.as_ref()),
            self.outcome
        )
    }
}

/// The first characters of an ID, enough to tell IDs of one history apart.
#[must_use]
pub fn short(id: Option<&SessionId>) -> String {
    id.map_or_else(|| "-".to_owned(), |id| id.to_string()[..8].to_owned())
}

/// Records events, with one logical clock for invocations and completions.
#[derive(Debug)]
pub struct Recorder {
    clock: AtomicU64,
    events: Mutex<Vec<Event>>,
    /// Every ID a response handed out, in order (what snoopers replay).
    ids: Mutex<Vec<SessionId>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self {
            clock: AtomicU64::new(1),
            events: Mutex::default(),
            ids: Mutex::default(),
        }
    }
}

impl Recorder {
    /// The next logical time.
    pub fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }

    /// Records a finished event.
    pub fn push(&self, event: Event) {
        if let (Outcome::Ok, Some(id)) = (&event.outcome, &event.result) {
            self.learn(id.clone());
        }
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// Remembers an ID handed out to a client.
    pub fn learn(&self, id: SessionId) {
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    /// The `n`th ID handed out so far (modulo how many there are).
    #[must_use]
    pub fn some_id(&self, n: u64) -> Option<SessionId> {
        let ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        if ids.is_empty() {
            return None;
        }
        ids.get((n % ids.len() as u64) as usize).cloned()
    }

    /// The events, in completion order, and every ID handed out.
    #[must_use]
    pub fn finish(&self) -> (Vec<Event>, Vec<SessionId>) {
        let mut events =
            std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner));
        events.sort_by_key(|e| e.completed);
        let ids = std::mem::take(&mut *self.ids.lock().unwrap_or_else(PoisonError::into_inner));
        (events, ids)
    }
}
