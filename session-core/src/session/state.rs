//! What one handle knows between its first use and its save: the record it
//! loaded, and this request's changes as operations over it.
//!
//! The record is shared (`Arc`), never copied: reads look in the overlay of
//! this request's changes first, then in the record. The operations are
//! kept in order so a save that meets a newer record can replay them on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::SessionError;
use crate::id::{SessionId, SessionKey};
use crate::middleware::ClientUpdate;
use crate::record::{Record, Timestamp};
use crate::store::{Change, PrincipalChange};

/// An `update` closure on encoded values: the current value (if any) in,
/// the new value (or removal) out.
pub(crate) type UpdateFn =
    Arc<dyn Fn(Option<&[u8]>) -> Result<Option<Vec<u8>>, SessionError> + Send + Sync + 'static>;

/// One change a request made, replayable on any record.
#[derive(Clone)]
pub(crate) enum Op {
    Set { key: String, value: Vec<u8> },
    Remove { key: String },
    Update { key: String, f: UpdateFn },
}

impl Op {
    fn key(&self) -> &str {
        match self {
            Self::Set { key, .. } | Self::Remove { key } | Self::Update { key, .. } => key,
        }
    }
}

/// This request's view of the changed keys: `Some` set, `None` removed.
pub(crate) type Overlay = BTreeMap<String, Option<Vec<u8>>>;

/// Applies `op` to `overlay` over `base`.
pub(crate) fn apply(
    op: &Op,
    base: Option<&Record>,
    overlay: &mut Overlay,
) -> Result<(), SessionError> {
    let next = match op {
        Op::Set { value, .. } => Some(value.clone()),
        Op::Remove { .. } => None,
        Op::Update { key, f } => {
            let current = match overlay.get(key) {
                Some(value) => value.as_deref(),
                None => base.and_then(|r| r.data.get(key)).map(Vec::as_slice),
            };
            f(current)?
        }
    };
    overlay.insert(op.key().to_owned(), next);
    Ok(())
}

/// Replays `ops` over `base` from scratch.
pub(crate) fn replay(ops: &[Op], base: Option<&Record>) -> Result<Overlay, SessionError> {
    let mut overlay = Overlay::new();
    for op in ops {
        apply(op, base, &mut overlay)?;
    }
    Ok(overlay)
}

pub(crate) struct State {
    /// The ID the client presented, or the one a save created.
    pub(crate) id: Option<SessionId>,
    /// `id`'s store key, hashed once.
    key: Option<SessionKey>,
    /// Several different IDs the client presented (a cookie tossed in by a
    /// sibling domain, say): the load keeps the one that is live.
    pub(crate) candidates: Vec<SessionId>,
    pub(crate) loaded: bool,
    /// The last record known to be stored (`None`: no live session).
    pub(crate) record: Option<Arc<Record>>,
    pub(crate) overlay: Overlay,
    pub(crate) ops: Vec<Op>,
    pub(crate) principal: PrincipalChange,
    pub(crate) cycle: bool,
    /// The session was deleted, revoked or found gone: tell the client.
    pub(crate) ended: bool,
    /// Fail-open after a store outage: an empty session that is never saved.
    pub(crate) degraded: bool,
    /// The client must be sent the ID again (new, rotated or extended).
    pub(crate) resend: bool,
    /// When the clock was read for the record shown (its last save or
    /// touch): a cookie's `Max-Age` counts from it.
    pub(crate) as_of: Timestamp,
    /// The handler called `save` itself and it failed: the middleware leaves
    /// the handler's response alone and does not save again.
    pub(crate) own_save_failed: bool,
    /// A clone of the handle is talking to the store (`Session::io`).
    pub(crate) io_busy: bool,
    /// Clones waiting for that turn.
    pub(crate) io_waiters: usize,
}

impl State {
    pub(crate) fn new(id: Option<SessionId>) -> Self {
        Self {
            loaded: id.is_none(),
            id,
            key: None,
            candidates: Vec::new(),
            record: None,
            overlay: Overlay::new(),
            ops: Vec::new(),
            principal: PrincipalChange::Keep,
            cycle: false,
            ended: false,
            degraded: false,
            resend: false,
            as_of: Timestamp::default(),
            own_save_failed: false,
            io_busy: false,
            io_waiters: 0,
        }
    }

    /// A state for the IDs a client presented: none, one, or several to
    /// choose from on load.
    pub(crate) fn presented(ids: impl IntoIterator<Item = SessionId>) -> Self {
        let mut ids = ids.into_iter();
        let Some(first) = ids.next() else {
            return Self::new(None);
        };
        // The usual request presents one ID: no list is allocated for it.
        let Some(second) = ids.find(|id| *id != first) else {
            return Self::new(Some(first));
        };
        let mut ids: Vec<SessionId> = [first, second].into_iter().chain(ids).collect();
        ids.dedup();
        let mut state = Self::new(None);
        state.loaded = false;
        state.candidates = ids;
        state
    }

    /// The store key of the current ID.
    pub(crate) fn key(&mut self) -> Option<SessionKey> {
        if self.key.is_none() {
            self.key = self.id.as_ref().map(SessionId::key);
        }
        self.key.clone()
    }

    pub(crate) fn set_id(&mut self, id: SessionId, key: SessionKey) {
        self.id = Some(id);
        self.key = Some(key);
    }

    pub(crate) fn is_dirty(&self) -> bool {
        !self.ops.is_empty() || self.principal != PrincipalChange::Keep || self.cycle
    }

    /// What the handler sees under `key`.
    pub(crate) fn value(&self, key: &str) -> Option<&[u8]> {
        match self.overlay.get(key) {
            Some(value) => value.as_deref(),
            None => self.record.as_ref()?.data.get(key).map(Vec::as_slice),
        }
    }

    /// The keys the handler sees, in order.
    pub(crate) fn keys(&self) -> Vec<String> {
        let stored = self.record.iter().flat_map(|r| r.data.keys());
        let mut keys: Vec<String> = stored
            .filter(|k| !self.overlay.contains_key(*k))
            .cloned()
            .collect();
        keys.extend(
            self.overlay
                .iter()
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.clone()),
        );
        keys.sort();
        keys
    }

    /// The principal the handler sees.
    pub(crate) fn principal(&self) -> Option<String> {
        match &self.principal {
            PrincipalChange::Set(p) => Some(p.clone()),
            PrincipalChange::Clear => None,
            _ => self.record.as_ref().and_then(|r| r.principal.clone()),
        }
    }

    /// Records `op` and applies it to the view.
    pub(crate) fn push(&mut self, op: Op) -> Result<(), SessionError> {
        apply(&op, self.record.as_deref(), &mut self.overlay)?;
        self.ops.push(op);
        Ok(())
    }

    /// Forgets pending changes; the view is `record` again.
    pub(crate) fn reset_to(&mut self, record: Option<Arc<Record>>) {
        self.record = record;
        self.overlay.clear();
        self.ops.clear();
        self.principal = PrincipalChange::Keep;
        self.cycle = false;
    }

    /// The session ended (deleted, revoked, expired): nothing is pending
    /// and the client must forget the ID.
    pub(crate) fn end(&mut self) {
        self.reset_to(None);
        self.loaded = true;
        self.ended = true;
    }

    /// What the client must now be told, forgetting it was pending.
    pub(crate) fn take_client_update(&mut self) -> ClientUpdate {
        if std::mem::take(&mut self.ended) {
            return ClientUpdate::Remove;
        }
        if !std::mem::take(&mut self.resend) {
            return ClientUpdate::Unchanged;
        }
        match (&self.id, self.record.is_some()) {
            (Some(id), true) => ClientUpdate::Set {
                id: id.clone(),
                expires_at: self.expires_at(),
                as_of: self.as_of,
            },
            _ => ClientUpdate::Unchanged,
        }
    }

    /// When the session ends, for the cookie's `Max-Age`.
    pub(crate) fn expires_at(&self) -> Option<Timestamp> {
        self.record.as_ref().and_then(|r| r.deadlines.expires_at())
    }
}

/// The principal change to write over `base`, or `Keep` when `base`
/// already has what the request asked for.
pub(crate) fn principal_change(asked: &PrincipalChange, base: Option<&str>) -> PrincipalChange {
    match asked {
        PrincipalChange::Set(p) if base != Some(p.as_str()) => PrincipalChange::Set(p.clone()),
        PrincipalChange::Clear if base.is_some() => PrincipalChange::Clear,
        _ => PrincipalChange::Keep,
    }
}

/// The data delta from `base` to `overlay` into `change`; returns the key
/// count and [`Record::size`] of the record the change would produce.
pub(crate) fn delta(base: &Record, overlay: &Overlay, change: &mut Change) -> (usize, usize) {
    let mut keys = base.data.len();
    let mut size = base.size();
    for (key, value) in overlay {
        let stored = base.data.get(key);
        match (value, stored) {
            (Some(v), Some(old)) if v != old => {
                size = size + v.len() - old.len();
                change.set.insert(key.clone(), v.clone());
            }
            (Some(v), None) => {
                keys += 1;
                size += key.len() + v.len();
                change.set.insert(key.clone(), v.clone());
            }
            (None, Some(old)) => {
                keys -= 1;
                size -= key.len() + old.len();
                change.remove.insert(key.clone());
            }
            _ => {}
        }
    }
    match &change.principal {
        PrincipalChange::Set(p) => {
            size = size + p.len() - base.principal.as_ref().map_or(0, String::len);
        }
        PrincipalChange::Clear => size -= base.principal.as_ref().map_or(0, String::len),
        _ => {}
    }
    (keys, size)
}

/// A record with `overlay` applied over `base`'s data (for creating one).
pub(crate) fn materialize(base: Option<&Record>, overlay: &Overlay, into: &mut Record) {
    if let Some(base) = base {
        into.data = base.data.clone();
    }
    for (key, value) in overlay {
        match value {
            Some(v) => {
                into.data.insert(key.clone(), v.clone());
            }
            None => {
                into.data.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_ids_keep_one_repeated_id_and_every_distinct_candidate() {
        let (a, b) = (SessionId::generate(), SessionId::generate());

        let none = State::presented([]);
        assert!(none.id.is_none() && none.candidates.is_empty() && none.loaded);

        let one = State::presented([a.clone(), a.clone(), a.clone()]);
        assert!(one.id.as_ref() == Some(&a) && one.candidates.is_empty());

        let two = State::presented([a.clone(), a.clone(), b.clone(), a.clone()]);
        assert!(two.id.is_none() && !two.loaded);
        // Only repeats in a row fold, as before: a, b, a stays three.
        assert!(two.candidates == [a.clone(), b, a]);
    }
}
