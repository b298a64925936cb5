//! [`Sessions`]: the store, the clock and the policies, shared by every
//! handle it makes.

use std::fmt;
use std::sync::Arc;

use super::policy::{Limits, OutagePolicy, WritePolicy};
use super::turns::Turnstile;
use super::{Session, calls};
use crate::clock::{Clock, system_clock};
use crate::erased::SharedStore;
use crate::error::SessionError;
use crate::expiry::ExpiryPolicy;
use crate::id::{SessionId, SessionKey};
use crate::record::{Record, Timestamp};
use crate::store::{Capabilities, SessionStore};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) expiry: ExpiryPolicy,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) write_policy: WritePolicy,
    pub(crate) outage: OutagePolicy,
    pub(crate) max_attempts: u32,
}

/// Makes [`Session`] handles over one store, with one configuration: the
/// one place where the store, the clock, expiry, limits and policies are
/// set. Cheap to clone; build it once and share it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
/// use offstate_core::{MemoryStore, Sessions};
///
/// let sessions = Sessions::new(MemoryStore::new());
///
/// // A worker (no HTTP): start a session, write, save.
/// let session = sessions.new_session();
/// session.insert("cart", &vec!["apple"]).await?;
/// session.save().await?;
/// let id = session.id().expect("saved sessions have an ID");
///
/// // Later, anywhere: load it by ID and change it.
/// let session = sessions.load(&id).await?.expect("still live");
/// session.update("cart", |cart: Option<Vec<String>>| {
///     let mut cart = cart.unwrap_or_default();
///     cart.push("pear".into());
///     Some(cart)
/// }).await?;
/// session.save().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Sessions {
    /// One allocation shared by every clone (each request's handle holds
    /// one): a clone is one reference count, not one per part.
    pub(crate) shared: Arc<Shared>,
}

/// What a [`Sessions`] is made of; its clones share it.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) store: SharedStore,
    pub(crate) config: Config,
    pub(crate) turns: Arc<Turnstile>,
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("store", &self.shared.store.name())
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions over `store`, with default expiry, limits and policies, on
    /// the system clock.
    ///
    /// The first call in a process also calibrates the clock that times
    /// store calls for the metrics (the CPU's time-stamp counter against
    /// the OS clock; under a millisecond on the bench machine, at most
    /// 200 ms), so that the first request does not.
    pub fn new(store: impl SessionStore) -> Self {
        calibrate_call_clock();
        Self {
            shared: Arc::new(Shared {
                store: Arc::new(store),
                config: Config {
                    expiry: ExpiryPolicy::default(),
                    clock: system_clock(),
                    limits: Limits::default(),
                    write_policy: WritePolicy::default(),
                    outage: OutagePolicy::default(),
                    max_attempts: 64,
                },
                turns: Arc::default(),
            }),
        }
    }

    /// This value's own settings: a clone configured differently keeps
    /// the store and the writers' turns it shares with the others.
    fn config_mut(&mut self) -> &mut Config {
        &mut Arc::make_mut(&mut self.shared).config
    }

    /// Sets the expiry policy.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use offstate_core::{ExpiryPolicy, MemoryStore, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new())
    ///     .with_expiry(ExpiryPolicy::default().with_idle(Some(Duration::from_secs(600))));
    /// assert_eq!(sessions.expiry().idle(), Some(Duration::from_secs(600)));
    /// ```
    #[must_use]
    pub fn with_expiry(mut self, expiry: ExpiryPolicy) -> Self {
        self.config_mut().expiry = expiry;
        self
    }

    /// Sets the clock. It computes every deadline and decides, on every
    /// store call, whether a session is still live: stores keep no clock of
    /// their own. Tests move a [`ManualClock`](crate::ManualClock) instead
    /// of sleeping.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use offstate_core::{ManualClock, MemoryStore, Sessions};
    /// let clock = ManualClock::new();
    /// let sessions = Sessions::new(MemoryStore::new()).with_clock(Arc::new(clock.clone()));
    /// # let _ = sessions;
    /// ```
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.config_mut().clock = clock;
        self
    }

    /// Sets the size and count limits.
    ///
    /// ```
    /// # use offstate_core::{Limits, MemoryStore, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new())
    ///     .with_limits(Limits::default().with_max_keys(32));
    /// assert_eq!(sessions.limits().max_keys, 32);
    /// ```
    #[must_use]
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.config_mut().limits = limits;
        self
    }

    /// Sets what a plain insert does on a concurrent change of the same key.
    ///
    /// ```
    /// # use offstate_core::{MemoryStore, Sessions, WritePolicy};
    /// let sessions = Sessions::new(MemoryStore::new()).with_write_policy(WritePolicy::Reject);
    /// assert_eq!(sessions.write_policy(), WritePolicy::Reject);
    /// ```
    #[must_use]
    pub fn with_write_policy(mut self, policy: WritePolicy) -> Self {
        self.config_mut().write_policy = policy;
        self
    }

    /// Sets what happens when the store is down.
    ///
    /// ```
    /// # use offstate_core::{MemoryStore, OutagePolicy, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new()).with_outage_policy(OutagePolicy::FailOpen);
    /// assert_eq!(sessions.outage_policy(), OutagePolicy::FailOpen);
    /// ```
    #[must_use]
    pub fn with_outage_policy(mut self, policy: OutagePolicy) -> Self {
        self.config_mut().outage = policy;
        self
    }

    /// Sets how many times a conflicting save is attempted (at least 1;
    /// default 64). After the second attempt, attempts are spaced by a
    /// random pause that grows with each conflict (at most 50 ms), so many
    /// writers on one session take turns instead of colliding again.
    ///
    /// ```
    /// # use offstate_core::{MemoryStore, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new()).with_max_attempts(8);
    /// assert_eq!(sessions.max_attempts(), 8);
    /// ```
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.config_mut().max_attempts = attempts.max(1);
        self
    }

    /// The expiry policy.
    #[must_use]
    pub fn expiry(&self) -> &ExpiryPolicy {
        &self.shared.config.expiry
    }

    /// The clock.
    #[must_use]
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.config.clock
    }

    /// The outage policy.
    #[must_use]
    pub fn outage_policy(&self) -> OutagePolicy {
        self.shared.config.outage
    }

    /// The write policy.
    #[must_use]
    pub fn write_policy(&self) -> WritePolicy {
        self.shared.config.write_policy
    }

    /// How many times a conflicting save is attempted.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.shared.config.max_attempts
    }

    /// The limits.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.shared.config.limits
    }

    /// What the store can do (list a user's sessions, announce its writes).
    #[must_use]
    pub fn capabilities(&self) -> Capabilities {
        self.shared.store.capabilities()
    }

    /// The store's name (`redis`, `dynamodb`, `memcached`, `memory`).
    #[must_use]
    pub fn store_name(&self) -> &'static str {
        self.shared.store.name()
    }

    /// A handle for a new session. It is stored on its first save with data.
    #[must_use]
    pub fn new_session(&self) -> Session {
        Session::open(self.clone(), None)
    }

    /// Loads the session `id` now; `None` if it is not live.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn load(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        let session = Session::open(self.clone(), Some(id.clone()));
        Ok(session.exists().await?.then_some(session))
    }

    /// Ends every session of `principal`, on every instance. Returns how
    /// many the store reports deleted (0 for stores that revoke without
    /// counting, such as memcached).
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails. Sessions reached before
    /// the failure stay ended; calling again finishes the job.
    pub async fn revoke_principal(&self, principal: &str) -> Result<usize, SessionError> {
        Ok(calls::revoke_principal(self, principal).await?)
    }

    /// The keys of `principal`'s live sessions (for operators: the store
    /// never learns session IDs, only their hashes).
    ///
    /// # Errors
    ///
    /// [`StoreError::Unsupported`](crate::StoreError::Unsupported) for a
    /// store that cannot list (memcached), and store errors.
    pub async fn list_principal(&self, principal: &str) -> Result<Vec<SessionKey>, SessionError> {
        Ok(calls::list_principal(self, principal).await?)
    }

    /// The stored record under `key`, if it is live: for operators (the
    /// admin API, the command-line tool), who find keys through
    /// [`list_principal`](Self::list_principal) and never see IDs.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), offstate_core::SessionError> {
    /// # use offstate_core::{MemoryStore, Sessions};
    /// let sessions = Sessions::new(MemoryStore::new());
    /// let session = sessions.new_session();
    /// session.insert("cart", &vec!["apple"]).await?;
    /// session.save().await?;
    /// let key = session.id().expect("saved").key();
    /// let record = sessions.inspect(&key).await?.expect("live");
    /// assert!(record.data.contains_key("cart"));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn inspect(&self, key: &SessionKey) -> Result<Option<Arc<Record>>, SessionError> {
        Ok(calls::load(self, key).await?)
    }

    /// Ends the one session stored under `key`, on every instance. Returns
    /// whether a live one was there.
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when the store fails.
    pub async fn revoke_key(&self, key: &SessionKey) -> Result<bool, SessionError> {
        Ok(calls::delete(self, key).await?)
    }

    /// Checks that the store answers ([`SessionStore::ping`]).
    ///
    /// # Errors
    ///
    /// [`SessionError::Store`] when it does not.
    pub async fn ping(&self) -> Result<(), SessionError> {
        Ok(self.shared.store.ping(self.now()).await?)
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.shared.config.clock.now()
    }
}

/// Calibrates the clock that times store calls (`quanta`'s time-stamp
/// counter against the OS clock), once per process: at the first
/// `Sessions::new` rather than on the first request. It spins until its
/// estimate settles (under a millisecond on the bench machine, at most
/// 200 ms), so its length depends on time, not on the code: the bench's
/// instruction counts leave `quanta::Clock::new` out (callgrind's
/// `--toggle-collect`).
fn calibrate_call_clock() {
    static CALIBRATED: std::sync::Once = std::sync::Once::new();
    CALIBRATED.call_once(|| drop(quanta::Clock::new()));
}
