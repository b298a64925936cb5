//! Writers of one session in one process take turns.
//!
//! Without this, fifty requests adding to one cart on one instance all
//! send their conditional write at once; all but one conflict, replay and
//! collide again, and the store does fifty times the work. With it, they
//! queue here, in memory, and each one starts from the record the previous
//! one wrote, so on a single instance they do not conflict at all; across
//! instances only the writers at the head of each instance's queue race.
//!
//! The queue of a session exists only while someone writes it. When it
//! empties, its last record is kept among the shard's few most recent
//! ones: a writer that loaded before that record was stored and enters
//! after the queue went still starts from it, instead of conflicting.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::id::{KeyHashing, SessionKey};
use crate::record::Record;

const SHARDS: usize = 16;
/// Records of emptied queues kept per shard (so at most 256 in all).
const RECENT: usize = 16;

/// The last record a writer of this session stored, for the next in line.
type Latest = Option<Arc<Record>>;

#[derive(Debug, Default)]
struct Shard {
    queues: HashMap<SessionKey, Arc<AsyncMutex<Latest>>, KeyHashing>,
    /// The last records of queues that emptied, oldest first.
    recent: VecDeque<(SessionKey, Arc<Record>)>,
}

impl Shard {
    /// The queue of `key`, made (from its recent record, if any) if need be.
    fn queue(&mut self, key: &SessionKey) -> Arc<AsyncMutex<Latest>> {
        let recent = &mut self.recent;
        let queue = self.queues.entry(key.clone()).or_insert_with(|| {
            let latest = recent
                .iter()
                .position(|(k, _)| k == key)
                .and_then(|at| recent.remove(at))
                .map(|(_, record)| record);
            Arc::new(AsyncMutex::new(latest))
        });
        Arc::clone(queue)
    }

    /// Keeps the last record of `key`'s queue, which just emptied.
    fn keep(&mut self, key: SessionKey, record: Arc<Record>) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((key, record));
    }
}

#[derive(Debug)]
pub(crate) struct Turnstile {
    shards: [Mutex<Shard>; SHARDS],
}

impl Default for Turnstile {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

impl Turnstile {
    fn shard(&self, key: &SessionKey) -> MutexGuard<'_, Shard> {
        // Keys are uniform hashes: their first byte spreads them evenly.
        let index = key.as_bytes().first().copied().unwrap_or(0) as usize % SHARDS;
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for this session's turn.
    pub(crate) async fn enter(&self, key: &SessionKey) -> Turn<'_> {
        let queue = self.shard(key).queue(key);
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
        let mut shard = self.turnstile.shard(&self.key);
        // Waiters clone the queue under this lock, so the count is exact:
        // the map's, ours and our guard's means nobody else is waiting.
        let last = self.guard.take();
        if Arc::strong_count(&self.queue) == 3 {
            shard.queues.remove(&self.key);
            if let Some(record) = last.and_then(|mut guard| guard.take()) {
                shard.keep(self.key.clone(), record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::record::{Deadlines, Timestamp};
    use crate::{CountingStore, MemoryStore, SessionId, Sessions};

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
        // Nobody was waiting: the queue is gone, its record kept aside.
        assert!(turnstile.shard(&key).queues.is_empty());
        assert_eq!(turnstile.shard(&key).recent.len(), 1);
    }

    #[tokio::test]
    async fn a_writer_after_the_queue_emptied_still_gets_the_last_record() {
        let turnstile = Turnstile::default();
        let key = SessionId::generate().key();
        let record = Arc::new(Record::new(Timestamp::from_millis(7), Deadlines::none()));
        turnstile.enter(&key).await.hand_over(record);
        let next = turnstile.enter(&key).await;
        assert_eq!(
            next.latest().map(|r| r.created_at),
            Some(Timestamp::from_millis(7))
        );
        // Taken back into the queue, not kept twice.
        assert!(turnstile.shard(&key).recent.is_empty());
    }

    #[tokio::test]
    async fn only_the_last_few_records_per_shard_are_kept() {
        let turnstile = Turnstile::default();
        let keys: Vec<SessionKey> = std::iter::repeat_with(|| SessionId::generate().key())
            .filter(|k| usize::from(k.as_str().as_bytes()[0]).is_multiple_of(SHARDS))
            .take(RECENT + 1)
            .collect();
        for key in &keys {
            let record = Arc::new(Record::new(Timestamp::from_millis(1), Deadlines::none()));
            turnstile.enter(key).await.hand_over(record);
        }
        assert_eq!(turnstile.shard(&keys[0]).recent.len(), RECENT);
        assert!(turnstile.enter(&keys[0]).await.latest().is_none());
        assert!(turnstile.enter(&keys[RECENT]).await.latest().is_some());
    }

    #[tokio::test]
    async fn a_handle_that_loaded_before_a_write_it_enters_after_does_not_conflict() {
        // Why: the issue-14 conflicts. B loads; A writes and leaves, its
        // queue empties; only then B saves. B must start from A's record
        // (one save), not from what it loaded (a conflict and a replay).
        let store = CountingStore::new(MemoryStore::new());
        let sessions = Sessions::new(store.clone());
        let session = sessions.new_session();
        session.insert("a", &0u32).await.unwrap();
        session.save().await.unwrap();
        let id = session.id().unwrap();
        let b = sessions.load(&id).await.unwrap().unwrap();
        let a = sessions.load(&id).await.unwrap().unwrap();
        a.insert("a", &1u32).await.unwrap();
        a.save().await.unwrap();
        let before = store.counts().save;
        b.insert("b", &2u32).await.unwrap();
        b.save().await.unwrap();
        assert_eq!(store.counts().save - before, 1, "B conflicted");
        let now = sessions.load(&id).await.unwrap().unwrap();
        assert_eq!(now.get::<u32>("a").await.unwrap(), Some(1));
        assert_eq!(now.get::<u32>("b").await.unwrap(), Some(2));
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
        assert!(turnstile.shard(&key).queues.is_empty());
    }
}
