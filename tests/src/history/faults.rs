//! The fault plan: store faults queued through [`FaultyStore`] at seeded
//! steps of the client programs, and servers paused (or killed and
//! restarted) at seeded times while the clients run; and [`Jitter`],
//! scheduling noise so requests interleave at every store call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{
    Capabilities, Change, CreateOutcome, DeleteOutcome, KeyPrefix, Record, SaveOutcome, SessionKey,
    SessionStore, StoreError, Timestamp, TouchOutcome, Version,
};

use super::generator::Rng;
use crate::node::Node;

/// Something that queues store faults for the stores a target's instances
/// use (a [`FaultyStore`] under them).
pub trait Injector: Send + Sync {
    /// Queues `fault` for the next `call`.
    fn inject(&self, call: Call, fault: Fault);
    /// Drops every queued fault.
    fn clear(&self);
}

impl<S: SessionStore> Injector for FaultyStore<S> {
    fn inject(&self, call: Call, fault: Fault) {
        FaultyStore::inject(self, call, fault);
    }

    fn clear(&self) {
        FaultyStore::clear(self);
    }
}

/// Counts of the faults a history got.
#[derive(Debug, Default)]
pub struct FaultCount {
    /// Store faults queued.
    pub store: AtomicU64,
    /// Server pauses.
    pub pauses: AtomicU64,
    /// Servers killed and restarted empty.
    pub restarts: AtomicU64,
}

impl FaultCount {
    /// Store faults plus server pauses and restarts.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.store.load(Ordering::SeqCst)
            + self.pauses.load(Ordering::SeqCst)
            + self.restarts.load(Ordering::SeqCst)
    }
}

/// Disturbs one of `nodes` at a time, at seeded moments, until `done`
/// resolves: mostly a pause of seeded length (from a tenth of the store's
/// command `timeout`, answers just late, to twice it, requests time out
/// and land after the resume); with `restarts`, one time in four a kill
/// and a restart empty (a crash: everything it held is lost). Every node
/// is running again when it returns.
pub async fn disturb_nodes(
    nodes: &[&Node],
    seed: u64,
    timeout: Duration,
    restarts: bool,
    count: &FaultCount,
    done: impl Future<Output = ()>,
) {
    if nodes.is_empty() {
        done.await;
        return;
    }
    let mut rng = Rng::new(seed);
    let mut done = std::pin::pin!(done);
    loop {
        let wait = Duration::from_millis(20 + rng.below(200));
        tokio::select! {
            () = &mut done => return,
            () = tokio::time::sleep(wait) => {}
        }
        let node = nodes[rng.below(nodes.len() as u64) as usize];
        let length = timeout.mul_f64(0.1 + rng.below(20) as f64 / 10.0);
        if restarts && rng.chance(0.25) {
            if let Err(error) = node.kill().await {
                tracing::warn!(%error, "could not kill a server");
                continue;
            }
            count.restarts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(length).await;
            if let Err(error) = node.restart().await {
                tracing::error!(%error, "could not restart a killed server");
            }
            continue;
        }
        if let Err(error) = node.pause().await {
            tracing::warn!(%error, "could not pause a server");
            continue;
        }
        count.pauses.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(length).await;
        // A node that will not resume ends the run with a loud error: the
        // checks after it would only see an outage.
        if let Err(error) = node.resume().await {
            tracing::error!(%error, "could not resume a paused server");
        }
    }
}

/// A store that lets other tasks run before each call (a few yields, now
/// and then a millisecond's sleep), so that requests on one session
/// interleave at every store call even over a store that never waits
/// (memory). Scheduling noise, not a fault: every call goes through.
#[derive(Debug, Clone)]
pub struct Jitter<S> {
    inner: Arc<S>,
    noise: Arc<AtomicU64>,
}

impl<S: SessionStore> Jitter<S> {
    /// Wraps `inner`; `seed` starts the noise.
    pub fn new(inner: S, seed: u64) -> Self {
        Self {
            inner: Arc::new(inner),
            noise: Arc::new(AtomicU64::new(seed)),
        }
    }

    async fn shake(&self) {
        let n = Rng::new(self.noise.fetch_add(1, Ordering::Relaxed)).next_u64();
        for _ in 0..n % 4 {
            tokio::task::yield_now().await;
        }
        if n.is_multiple_of(64) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl<S: SessionStore> SessionStore for Jitter<S> {
    async fn load(
        &self,
        key: &SessionKey,
        now: Timestamp,
    ) -> Result<Option<Arc<Record>>, StoreError> {
        self.shake().await;
        self.inner.load(key, now).await
    }

    async fn create(
        &self,
        key: &SessionKey,
        record: &Record,
        now: Timestamp,
    ) -> Result<CreateOutcome, StoreError> {
        self.shake().await;
        self.inner.create(key, record, now).await
    }

    async fn save(
        &self,
        key: &SessionKey,
        change: &Change,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.shake().await;
        self.inner.save(key, change, now).await
    }

    async fn save_applied(
        &self,
        key: &SessionKey,
        change: &Change,
        base: &Arc<Record>,
        next: &Arc<Record>,
        now: Timestamp,
    ) -> Result<SaveOutcome, StoreError> {
        self.shake().await;
        self.inner.save_applied(key, change, base, next, now).await
    }

    async fn touch(
        &self,
        key: &SessionKey,
        idle_deadline: Timestamp,
        now: Timestamp,
    ) -> Result<TouchOutcome, StoreError> {
        self.shake().await;
        self.inner.touch(key, idle_deadline, now).await
    }

    async fn delete(&self, key: &SessionKey, now: Timestamp) -> Result<bool, StoreError> {
        self.shake().await;
        self.inner.delete(key, now).await
    }

    async fn delete_if_version(
        &self,
        key: &SessionKey,
        expected: Version,
        now: Timestamp,
    ) -> Result<DeleteOutcome, StoreError> {
        self.shake().await;
        self.inner.delete_if_version(key, expected, now).await
    }

    async fn list_principal(
        &self,
        principal: &str,
        now: Timestamp,
    ) -> Result<Vec<SessionKey>, StoreError> {
        self.shake().await;
        self.inner.list_principal(principal, now).await
    }

    async fn revoke_principal(&self, principal: &str, now: Timestamp) -> Result<usize, StoreError> {
        self.shake().await;
        self.inner.revoke_principal(principal, now).await
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
}
