//! What the end of a request has to do, decided without building the
//! save's future: most requests save nothing, and the middleware finishes
//! them at once (`middleware::finish_now`).

use super::Session;
use super::save::Plan;
use super::state::State;
use crate::middleware::ClientUpdate;
use crate::telemetry;

impl Session {
    /// Whether the end of the request has anything to save, decided under
    /// one lock without building the save's future: `None` when it has
    /// not (nothing changed, and no touch is due), else whether the handle
    /// holds changes. A handler's own failed save also means `None`.
    pub(crate) fn save_needed(&self) -> Option<bool> {
        self.save_needed_in(&self.lock())
    }

    /// What to tell the client when the request has nothing to save (see
    /// [`save_needed`](Self::save_needed)), under the same lock; `None`
    /// when it has.
    pub(crate) fn finish_unsaved(&self) -> Option<ClientUpdate> {
        let mut state = self.lock();
        match self.save_needed_in(&state) {
            Some(_) => None,
            None => Some(state.take_client_update()),
        }
    }

    fn save_needed_in(&self, state: &State) -> Option<bool> {
        if state.own_save_failed {
            return None;
        }
        let dirty = !state.ended && state.is_dirty();
        if state.io_busy {
            // A clone is at the store (loading, say): `save_pending` waits
            // for it and decides then.
            return Some(dirty);
        }
        match Self::plan(state) {
            Plan::Nothing => None,
            Plan::Touch => {
                let sessions = self.sessions();
                let record = state.record.as_ref()?;
                if sessions
                    .shared
                    .config
                    .expiry
                    .touch_due(record, sessions.now())
                    .is_some()
                {
                    Some(dirty)
                } else {
                    if sessions.shared.config.expiry.idle().is_some() {
                        telemetry::touch(false);
                    }
                    None
                }
            }
            _ => Some(dirty),
        }
    }
}
