//! Store wrappers for testing what happens around a store call: faults
//! injected at chosen calls, and gates that hold a call until the test
//! lets it through. Races and outages become deterministic: a test decides
//! which call fails, how, and what happens while another call is held.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use offstate_core::testing::{Fault, FaultyStore, Call};
//! use offstate_core::{MemoryStore, SessionError, Sessions};
//!
//! let store = FaultyStore::new(MemoryStore::new());
//! let sessions = Sessions::new(store.clone());
//! let session = sessions.new_session();
//! session.insert("cart", &["apple"]).await.unwrap();
//! // The create reaches the store, then its answer is lost.
//! store.inject(Call::Create, Fault::TimeoutAfter);
//! assert!(matches!(session.save().await, Err(SessionError::Store(_))));
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use crate::error::StoreError;
use crate::id::{KeyPrefix, SessionKey};
use crate::record::{Record, Timestamp, Version};
use crate::store::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, SaveOutcome, SessionStore, TouchOutcome,
};

pub use crate::store::Call;

/// What happens to one injected call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Fault {
    /// The call never reaches the store: it fails with a timeout.
    TimeoutBefore,
    /// The call reaches the store and takes effect, but its answer is lost:
    /// the caller gets a timeout.
    TimeoutAfter,
    /// The call never reaches the store: the store is unreachable.
    Unavailable,
    /// The call waits this long (in tokio time), then goes through.
    Delay(Duration),
    /// The call waits at the gate until the test opens it.
    Gate(Gate),
    /// The call reaches the store and takes effect, then its answer waits
    /// at the gate until the test opens it: a call that is slow after it
    /// read or wrote.
    GateAfter(Gate),
    /// A create never reaches the store and answers
    /// [`CreateOutcome::Exists`], as when another session drew the same
    /// ID. Any other call goes through.
    Collision,
}

/// Holds one call until the test opens it: `reached` tells the test the
/// call is waiting, `open` lets it go on.
#[derive(Debug, Clone, Default)]
pub struct Gate {
    inner: Arc<GateInner>,
}

#[derive(Debug)]
struct GateInner {
    reached: Notify,
    arrived: Semaphore,
    open: Semaphore,
}

impl Default for GateInner {
    fn default() -> Self {
        Self {
            reached: Notify::new(),
            arrived: Semaphore::new(0),
            open: Semaphore::new(0),
        }
    }
}

impl Gate {
    /// A closed gate.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Waits until the call has reached the gate.
    pub async fn reached(&self) {
        loop {
            let notified = self.inner.reached.notified();
            if self.inner.arrived.available_permits() > 0 {
                return;
            }
            notified.await;
        }
    }

    /// Lets the held call (or the next one to arrive) go on.
    pub fn open(&self) {
        self.inner.open.add_permits(1);
    }

    /// Waits at the gate: tells [`Gate::reached`] that the caller is here,
    /// then holds it until the gate opens. [`FaultyStore`] passes its gated
    /// calls through here; a test holds its own steps the same way (a
    /// publish on a channel the test drives, say).
    pub async fn pass(&self) {
        self.inner.arrived.add_permits(1);
        self.inner.reached.notify_waiters();
        if let Ok(permit) = self.inner.open.acquire().await {
            permit.forget();
        }
    }
}

/// Queued faults, per kind of call.
type Queues = Vec<(Call, VecDeque<Fault>)>;

/// What [`FaultyStore::on_call`] runs before a call.
type HookFn = dyn Fn(Call) -> Pin<Box<dyn Future<Output = Option<Fault>> + Send>> + Send + Sync;

/// The hook a test set, if any.
#[derive(Clone, Default)]
struct Hook(Option<Arc<HookFn>>);

impl fmt::Debug for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(set)"
        } else {
            "Hook(none)"
        })
    }
}

/// A store that hands each call to `inner`, except those a test has
/// injected a [`Fault`] for. Faults queue per kind of call and are used up
/// one call at a time; a call without a queued fault asks the hook set with
/// [`FaultyStore::on_call`], if any, and otherwise goes straight through.
/// Clones share the queues and the hook.
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: Arc<S>,
    faults: Arc<Mutex<Queues>>,
    hook: Arc<Mutex<Hook>>,
}

impl<S: SessionStore> FaultyStore<S> {
    /// Wraps `inner` with no faults queued.
    pub fn new(inner: S) -> Self {
        Self {
            inner: Arc::new(inner),
            faults: Arc::default(),
            hook: Arc::default(),
        }
    }

    /// The wrapped store.
    #[must_use]
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Queues `fault` for the next `call` that has none queued before it.
    pub fn inject(&self, call: Call, fault: Fault) {
        let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
        match faults.iter_mut().find(|(c, _)| *c == call) {
            Some((_, queue)) => queue.push_back(fault),
            None => faults.push((call, VecDeque::from([fault]))),
        }
    }

    /// Queues a gate for the next `call` and returns it.
    #[must_use]
    pub fn gate(&self, call: Call) -> Gate {
        let gate = Gate::new();
        self.inject(call, Fault::Gate(gate.clone()));
        gate
    }

    /// Runs `hook` before every call that has no fault queued, and applies
    /// the fault it answers, if any, to that call. The hook may do async
    /// work of its own first (another writer's write, say), so a test
    /// scripts what happens around every call of a kind, not only the next
    /// one, or switches faults on and off for as long as it likes. Replaces
    /// the hook set before.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// use offstate_core::testing::{Call, Fault, FaultyStore};
    /// use offstate_core::{MemoryStore, SessionStore as _, SessionId, Timestamp};
    ///
    /// let store = FaultyStore::new(MemoryStore::new());
    /// // Every read fails; writes go through.
    /// store.on_call(|call| async move { (call == Call::Load).then_some(Fault::Unavailable) });
    /// let key = SessionId::generate().key();
    /// assert!(store.load(&key, Timestamp::now()).await.is_err());
    /// assert!(store.delete(&key, Timestamp::now()).await.is_ok());
    /// # }
    /// ```
    pub fn on_call<F, Fut>(&self, hook: F)
    where
        F: Fn(Call) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Option<Fault>> + Send + 'static,
    {
        let hook: Arc<HookFn> = Arc::new(move |call| Box::pin(hook(call)));
        *self.hook.lock().unwrap_or_else(PoisonError::into_inner) = Hook(Some(hook));
    }

    /// Drops every queued fault.
    pub fn clear(&self) {
        self.faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// The fault for this call: the next queued one, else the hook's.
    async fn next(&self, call: Call) -> Option<Fault> {
        let queued = {
            let mut faults = self.faults.lock().unwrap_or_else(PoisonError::into_inner);
            faults
                .iter_mut()
                .find(|(c, _)| *c == call)
                .and_then(|(_, queue)| queue.pop_front())
        };
        if queued.is_some() {
            return queued;
        }
        let hook = self
            .hook
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone();
        match hook {
            Some(hook) => hook(call).await,
            None => None,
        }
    }

    /// Runs `work` (the inner call) as the fault for this call says.
    async fn run<T>(
        &self,
        call: Call,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let fault = self.next(call).await;
        Self::apply(call, fault, work).await
    }

    /// Runs `work` as `fault` says.
    async fn apply<T>(
        call: Call,
        fault: Option<Fault>,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let lost = || StoreError::Timeout(Duration::from_millis(100));
        match fault {
            None | Some(Fault::Collision) => work.await,
            Some(Fault::TimeoutBefore) => Err(lost()),
            Some(Fault::Unavailable) => Err(StoreError::unavailable(format!(
                "{call:?}: injected: store unreachable"
            ))),
            Some(Fault::TimeoutAfter) => {
                let _ = work.await;
                Err(lost())
            }
            Some(Fault::Delay(by)) => {
                tokio::time::sleep(by).await;
                work.await
            }
            Some(Fault::Gate(gate)) => {
                gate.pass().await;
                work.await
            }
            Some(Fault::GateAfter(gate)) => {
                let answer = work.await;
                gate.pass().await;
                answer
            }
        }
    }
}

impl<S: SessionStore> SessionStore for FaultyStore<S> {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        self.run(Call::Load, self.inner.load(key, now)).await
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        match self.next(Call::Create).await {
            Some(Fault::Collision) => Ok(CreateOutcome::Exists),
            fault => Self::apply(Call::Create, fault, self.inner.create(key, record, now)).await,
        }
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.run(Call::Save, self.inner.save(key, change, now))
            .await
    }

    /// A save, faults included, on the path the store takes without the
    /// wrapper.
    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.run(
            Call::Save,
            self.inner.save_applied(key, change, base, next, now),
        )
        .await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        self.run(Call::Touch, self.inner.touch(key, idle_deadline, now))
            .await
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        self.run(Call::Delete, self.inner.delete(key, now)).await
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        self.run(
            Call::DeleteIfVersion,
            self.inner.delete_if_version(key, expected, now),
        )
        .await
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        self.run(
            Call::ListPrincipal,
            self.inner.list_principal(principal, now),
        )
        .await
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        self.run(
            Call::RevokePrincipal,
            self.inner.revoke_principal(principal, now),
        )
        .await
    }

    fn key_prefix(&self, principal: &str) -> Option<KeyPrefix> {
        self.inner.key_prefix(principal)
    }

    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn server_address(&self) -> Option<&str> {
        self.inner.server_address()
    }
}
