//! Clones of one handle take turns at the store (load, save, delete), so
//! they never race each other. The turn is a flag in the handle's state,
//! not an async lock: the usual request, one task with one handle, takes
//! and leaves it under the state lock it takes anyway.

use super::Session;
use super::state::State;

/// A handle's turn at the store (load, save, delete), so clones of one
/// handle never race each other; the next clone in line goes when it is
/// dropped. Never drop it while holding the state lock.
pub(super) struct IoTurn<'a>(pub(super) &'a Session);

impl IoTurn<'_> {
    /// Ends the turn under a lock the caller already holds.
    pub(super) fn release(self, state: &mut State) {
        Self::free(self.0, state);
        std::mem::forget(self);
    }

    fn free(session: &Session, state: &mut State) {
        state.io_busy = false;
        if state.io_waiters > 0 {
            // Wakers only schedule the waiting tasks: nothing runs here
            // that could take the state lock.
            session.inner.io_free.notify_waiters();
        }
    }
}

impl Drop for IoTurn<'_> {
    fn drop(&mut self) {
        Self::free(self.0, &mut self.0.lock());
    }
}

/// A clone counted as waiting for a turn, until it stops waiting
/// (it got the turn, or its future was dropped).
struct Waiting<'a>(&'a Session);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.lock().io_waiters -= 1;
    }
}

impl Session {
    /// Takes this handle's turn at the store: at once when nobody holds it
    /// (the usual case, one task per request: a flag in the state, no
    /// async lock), else after the clone that holds it.
    pub(super) async fn io(&self) -> IoTurn<'_> {
        let free = !std::mem::replace(&mut self.lock().io_busy, true);
        if free {
            IoTurn(self)
        } else {
            Box::pin(self.wait_for_io()).await
        }
    }

    pub(super) async fn wait_for_io(&self) -> IoTurn<'_> {
        loop {
            let mut notified = std::pin::pin!(self.inner.io_free.notified());
            // Registered before the flag is read: a release in between
            // still wakes this clone.
            notified.as_mut().enable();
            {
                let mut state = self.lock();
                if !state.io_busy {
                    state.io_busy = true;
                    return IoTurn(self);
                }
                state.io_waiters += 1;
            }
            let _waiting = Waiting(self);
            notified.await;
        }
    }
}
