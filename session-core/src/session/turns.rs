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

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::id::{KeyHashing, SessionKey};
use crate::record::Record;

const SHARDS: usize = 16;
/// Records of emptied queues kept per shard (so at most 256 in all).
const RECENT: usize = 16;

/// The last record a writer of this session stored, for the next in line.
type Latest = Option<Arc<Record>>;

/// One session's queue: a flag and a count under the shard's lock, so the
/// usual writer, alone on its session, takes and leaves its turn without
/// an allocation or an async lock.
#[derive(Debug)]
struct Queue {
    /// The record the last writer left, while nobody holds the turn.
    latest: Latest,
    /// Someone holds the turn.
    busy: bool,
    /// Writers waiting for it.
    waiting: usize,
    /// Wakes one waiter at a time, oldest first; made for the first one.
    wake: Option<Arc<Notify>>,
}

#[derive(Debug, Default)]
struct Shard {
    queues: HashMap<SessionKey, Queue, KeyHashing>,
    /// The last records of queues that emptied, oldest first.
    recent: VecDeque<(SessionKey, Arc<Record>)>,
}

impl Shard {
    /// Takes `key`'s turn if nobody holds it, with the record the last
    /// writer left; else counts the caller as waiting and returns what
    /// wakes it.
    fn take(&mut self, key: &SessionKey) -> Result<Latest, Arc<Notify>> {
        let recent = &mut self.recent;
        match self.queues.entry(key.clone()) {
            Entry::Vacant(vacant) => {
                let latest = recent
                    .iter()
                    .position(|(k, _)| k == key)
                    .and_then(|at| recent.remove(at))
                    .map(|(_, record)| record);
                vacant.insert(Queue {
                    latest: None,
                    busy: true,
                    waiting: 0,
                    wake: None,
                });
                Ok(latest)
            }
            Entry::Occupied(mut occupied) => {
                let queue = occupied.get_mut();
                if queue.busy {
                    queue.waiting += 1;
                    Err(Arc::clone(queue.wake.get_or_insert_with(Arc::default)))
                } else {
                    queue.busy = true;
                    Ok(queue.latest.take())
                }
            }
        }
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
        let taken = self.shard(key).take(key);
        match taken {
            Ok(latest) => self.turn(key, latest),
            // Boxed: only writers that meet another one on their session
            // wait, and the usual write's future stays small.
            Err(wake) => Box::pin(self.wait(key, wake)).await,
        }
    }

    async fn wait(&self, key: &SessionKey, mut wake: Arc<Notify>) -> Turn<'_> {
        loop {
            let waiting = Waiting {
                turnstile: self,
                key,
            };
            // A wake-up sent before this waits is kept for it (`notify_one`
            // stores one), and one sent to a waiter whose future is dropped
            // goes on to the next.
            wake.notified().await;
            std::mem::forget(waiting);
            let taken = {
                let mut shard = self.shard(key);
                if let Some(queue) = shard.queues.get_mut(key) {
                    queue.waiting -= 1;
                }
                shard.take(key)
            };
            match taken {
                Ok(latest) => return self.turn(key, latest),
                // Someone came in between: wait again, counted again.
                Err(again) => wake = again,
            }
        }
    }

    fn turn<'a>(&'a self, key: &SessionKey, latest: Latest) -> Turn<'a> {
        Turn {
            turnstile: self,
            key: key.clone(),
            latest,
        }
    }
}

/// A writer counted as waiting for `key`'s turn, until it stops waiting.
struct Waiting<'a> {
    turnstile: &'a Turnstile,
    key: &'a SessionKey,
}

impl Drop for Waiting<'_> {
    /// The waiter's future was dropped: uncount it, and remove the queue
    /// if it was the last one there and nobody holds the turn.
    fn drop(&mut self) {
        let mut shard = self.turnstile.shard(self.key);
        let Some(queue) = shard.queues.get_mut(self.key) else {
            return;
        };
        queue.waiting -= 1;
        if queue.waiting == 0
            && !queue.busy
            && let Some(queue) = shard.queues.remove(self.key)
            && let Some(record) = queue.latest
        {
            shard.keep(self.key.clone(), record);
        }
    }
}

/// One writer's turn; the next one in line goes when it is dropped.
pub(crate) struct Turn<'a> {
    turnstile: &'a Turnstile,
    key: SessionKey,
    latest: Latest,
}

impl Turn<'_> {
    /// The record the previous writer in line stored, if any.
    pub(crate) fn latest(&self) -> Option<&Arc<Record>> {
        self.latest.as_ref()
    }

    /// Leaves `record` for the next writer in line.
    pub(crate) fn hand_over(&mut self, record: Arc<Record>) {
        self.latest = Some(record);
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut shard = self.turnstile.shard(&self.key);
        let latest = self.latest.take();
        let Some(queue) = shard.queues.get_mut(&self.key) else {
            return;
        };
        if queue.waiting > 0 {
            queue.busy = false;
            queue.latest = latest;
            if let Some(wake) = &queue.wake {
                wake.notify_one();
            }
            return;
        }
        // Nobody waits: the queue goes, its record kept aside.
        shard.queues.remove(&self.key);
        if let Some(record) = latest {
            shard.keep(self.key.clone(), record);
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_waiter_that_gives_up_leaves_no_queue_behind() {
        let turnstile = Arc::new(Turnstile::default());
        let key = SessionId::generate().key();
        let record = Arc::new(Record::new(Timestamp::from_millis(9), Deadlines::none()));
        let mut first = turnstile.enter(&key).await;
        let waiter = tokio::spawn({
            let turnstile = Arc::clone(&turnstile);
            let key = key.clone();
            async move {
                turnstile.enter(&key).await;
            }
        });
        tokio::task::yield_now().await;
        assert_eq!(turnstile.shard(&key).queues[&key].waiting, 1);
        first.hand_over(record);
        drop(first);
        // Woken, but gone before it took the turn.
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert!(turnstile.shard(&key).queues.is_empty());
        let next = turnstile.enter(&key).await;
        assert_eq!(
            next.latest().map(|r| r.created_at),
            Some(Timestamp::from_millis(9))
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn waiters_go_in_the_order_they_came_each_with_the_last_record() {
        let turnstile = Arc::new(Turnstile::default());
        let key = SessionId::generate().key();
        let first = turnstile.enter(&key).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for n in 1..=3u64 {
            waiters.push(tokio::spawn({
                let (turnstile, key, order) =
                    (Arc::clone(&turnstile), key.clone(), Arc::clone(&order));
                async move {
                    let mut turn = turnstile.enter(&key).await;
                    let seen = turn.latest().map(|r| r.created_at.as_millis());
                    order.lock().unwrap().push((n, seen));
                    turn.hand_over(Arc::new(Record::new(
                        Timestamp::from_millis(n),
                        Deadlines::none(),
                    )));
                }
            }));
            // Each one queues before the next is spawned.
            tokio::task::yield_now().await;
        }
        drop(first);
        for waiter in waiters {
            waiter.await.unwrap();
        }
        assert_eq!(
            *order.lock().unwrap(),
            [(1, None), (2, Some(1)), (3, Some(2))]
        );
        assert!(turnstile.shard(&key).queues.is_empty());
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
