//! Writers of one session in one process take turns.
//!
//! Without this, fifty requests adding to one cart on one instance all
//! send their conditional write at once; all but one conflict, replay and
//! collide again, and the store does fifty times the work. With it, they
//! queue here, in memory, and each one starts from the record the previous
//! one wrote, so on a single instance they do not conflict at all; across
//! instances only the writers at the head of each instance's queue race.
//!
//! The queue of a session exists only while someone writes it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::id::SessionKey;
use crate::record::Record;

const SHARDS: usize = 16;

/// The last record a writer of this session stored, for the next in line.
type Latest = Option<Arc<Record>>;

#[derive(Debug)]
pub(crate) struct Turnstile {
    shards: [Mutex<HashMap<SessionKey, Arc<AsyncMutex<Latest>>>>; SHARDS],
}

impl Default for Turnstile {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl Turnstile {
    fn shard(
        &self,
        key: &SessionKey,
    ) -> MutexGuard<'_, HashMap<SessionKey, Arc<AsyncMutex<Latest>>>> {
        // Keys are uniform hashes: their first byte spreads them evenly.
        let index = key.as_str().as_bytes().first().copied().unwrap_or(0) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this session's turn.
    pub(crate) async fn enter(&self, key: &SessionKey) -> Turn<'_> {
        let queue = Arc::clone(self.shard(key).entry(key.clone()).or_default());
        let guard = Arc::clone(&queue).lock_owned().await;
        Turn {
            turnstile: self,
            key: key.clone(),
            queue,
            guard: Some(guard),
        }
    }
}

/// One writer's turn; the next one in line goes when it is dropped.
pub(crate) struct Turn<'a> {
    turnstile: &'a Turnstile,
    key: SessionKey,
    queue: Arc<AsyncMutex<Latest>>,
    guard: Option<OwnedMutexGuard<Latest>>,
}

impl Turn<'_> {
    /// The record the previous writer in line stored, if any.
    pub(crate) fn latest(&self) -> Option<&Arc<Record>> {
        self.guard.as_ref().and_then(|g| g.as_ref())
    }

    /// Leaves `record` for the next writer in line.
    pub(crate) fn hand_over(&mut self, record: Arc<Record>) {
        if let Some(guard) = self.guard.as_mut() {
            **guard = Some(record);
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut shard = self.turnstile.shard(&self.key);
        // Waiters clone the queue under this lock, so the count is exact:
        // the map's and ours means nobody else is waiting.
        if Arc::strong_count(&self.queue) == 2 {
            shard.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;
    use crate::record::{Deadlines, Timestamp};

    #[tokio::test]
    async fn a_queue_nobody_waits_on_goes_away() {
        let turnstile = Turnstile::default();
        let key = SessionId::generate().key();
        let record = Arc::new(Record::new(Timestamp::from_millis(1), Deadlines::none()));
        {
            let mut first = turnstile.enter(&key).await;
            assert!(first.latest().is_none());
            first.hand_over(Arc::clone(&record));
        }
        // Nobody was waiting: the queue is gone, and with it the record.
        assert!(turnstile.shard(&key).is_empty());
        assert!(turnstile.enter(&key).await.latest().is_none());
    }

    #[tokio::test]
    async fn a_waiting_writer_sees_the_record_the_one_before_it_stored() {
        let turnstile = Arc::new(Turnstile::default());
        let key = SessionId::generate().key();
        let record = Arc::new(Record::new(Timestamp::from_millis(7), Deadlines::none()));
        let mut first = turnstile.enter(&key).await;
        let waiter = tokio::spawn({
            let turnstile = Arc::clone(&turnstile);
            let key = key.clone();
            async move {
                let turn = turnstile.enter(&key).await;
                turn.latest().map(|r| r.created_at)
            }
        });
        tokio::task::yield_now().await;
        first.hand_over(record);
        drop(first);
        assert_eq!(waiter.await.unwrap(), Some(Timestamp::from_millis(7)));
        assert!(turnstile.shard(&key).is_empty());
    }
}
