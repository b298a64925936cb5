//! Timing this instance's own announcements on their way back: when a
//! write that announced itself returned, and when its message came back
//! through the subscription. The difference is how long a peer as near as
//! this instance takes to hear of a write, without changing the wire form.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, PoisonError};

use offstate_core::Invalidation;
use tokio::time::Instant;

/// How many returned writes are remembered while their messages are on
/// their way; past it, the oldest are forgotten (their delay not recorded).
const REMEMBERED_MAX: usize = 1024;

/// The map's hashing: foldhash, seeded per process. It holds only this
/// instance's own announcements, at most [`REMEMBERED_MAX`] of them, so
/// SipHash's resistance to chosen keys buys nothing here, and it cost
/// about 1.5k instructions per write (the message hashed three times).
type EchoHashing = foldhash::fast::RandomState;

#[derive(Debug, Default)]
struct Returned {
    at: HashMap<Invalidation, Instant, EchoHashing>,
    /// Insertion order, to forget the oldest first.
    order: VecDeque<Invalidation>,
}

/// This instance's announced writes whose messages have not come back.
#[derive(Debug, Default)]
pub(crate) struct Echoes {
    returned: Mutex<Returned>,
}

impl Echoes {
    /// A write of this instance announced `message` and has returned.
    pub(crate) fn returned(&self, message: Invalidation) {
        let now = Instant::now();
        let mut returned = self.returned.lock().unwrap_or_else(PoisonError::into_inner);
        if returned.at.insert(message.clone(), now).is_none() {
            returned.order.push_back(message);
        }
        while returned.order.len() > REMEMBERED_MAX {
            if let Some(oldest) = returned.order.pop_front() {
                returned.at.remove(&oldest);
            }
        }
    }

    /// `message` came through the subscription: if it is one of this
    /// instance's returned writes, records how long after the write it came.
    /// A message back before its write returned is not recorded.
    pub(crate) fn came_back(&self, message: &Invalidation) {
        let at = self
            .returned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .at
            .remove(message);
        if let Some(at) = at {
            metrics::histogram!("offstate_cache_invalidation_delay_seconds")
                .record(at.elapsed().as_secs_f64());
        }
    }
}
