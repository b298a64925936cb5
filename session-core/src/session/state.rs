//! What one handle knows between its first use and its save: the record it
//! loaded, and this request's changes as operations over it.
//!
//! The record is shared (`Arc`), never copied: reads look in the overlay of
//! this request's changes first, then in the record. A value that was
//! computed from the stored one (by an update) keeps its updates, in
//! order, so a save that meets a newer record can replay them on it; a
//! value set or removed stands as it is, and is kept once.

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

/// One change a handler asks for.
pub(crate) enum Op {
    Set { key: String, value: Vec<u8> },
    Remove { key: String },
    Update { key: String, f: UpdateFn },
}

/// An update kept to replay: the key's value was computed from the
/// stored one.
#[derive(Clone)]
pub(crate) struct Update {
    key: String,
    f: UpdateFn,
}

/// The latest value this request gave a key, and how it got it.
#[derive(Clone)]
pub(crate) struct Entry {
    /// `None`: removed.
    pub(crate) value: Option<Vec<u8>>,
    /// A `set` (not only an update) wrote the key: under
    /// `WritePolicy::Reject`, a concurrent change to it is a conflict.
    pub(crate) set: bool,
    /// The value was computed from the stored one (the key's first
    /// change was an update, with no set or remove since): a save that
    /// meets a newer record replays the key's updates on it. Any other
    /// value stands whatever is stored, and keeps no operation.
    replays: bool,
}

/// This request's changes by key.
pub(crate) type Overlay = BTreeMap<String, Entry>;

/// Applies `op` over `base` (for a key `overlay` does not hold yet),
/// keeping in `updates` what a replay will need.
pub(crate) fn apply(
    op: Op,
    base: Option<&Record>,
    overlay: &mut Overlay,
    updates: &mut Vec<Update>,
) -> Result<(), SessionError> {
    match op {
        // The value is moved in: a set is kept once, not as an operation
        // and again as a value.
        Op::Set { key, value } => settle(overlay, updates, key, Some(value), true),
        Op::Remove { key } => settle(overlay, updates, key, None, false),
        Op::Update { key, f } => {
            let (current, set, replays) = match overlay.get(&key) {
                Some(entry) => (entry.value.as_deref(), entry.set, entry.replays),
                None => (
                    base.and_then(|r| r.data.get(&key)).map(Vec::as_slice),
                    false,
                    true,
                ),
            };
            let value = f(current)?;
            if replays {
                updates.push(Update {
                    key: key.clone(),
                    f,
                });
            }
            overlay.insert(
                key,
                Entry {
                    value,
                    set,
                    replays,
                },
            );
        }
    }
    Ok(())
}

/// `key` takes `value` whatever it held: its updates so far need no replay.
fn settle(
    overlay: &mut Overlay,
    updates: &mut Vec<Update>,
    key: String,
    value: Option<Vec<u8>>,
    set: bool,
) {
    match overlay.get_mut(&key) {
        Some(entry) => {
            if entry.replays {
                updates.retain(|update| update.key != key);
            }
            entry.value = value;
            entry.set |= set;
            entry.replays = false;
        }
        None => {
            overlay.insert(
                key,
                Entry {
                    value,
                    set,
                    replays: false,
                },
            );
        }
    }
}

/// `overlay` as it is over `base`: the values that stand as they are,
/// and the updates run again on `base`.
pub(crate) fn replay(
    overlay: &Overlay,
    updates: &[Update],
    base: Option<&Record>,
) -> Result<Overlay, SessionError> {
    let mut replayed: Overlay = overlay
        .iter()
        .filter(|(_, entry)| !entry.replays)
        .map(|(key, entry)| (key.clone(), entry.clone()))
        .collect();
    for update in updates {
        let current = match replayed.get(&update.key) {
            Some(entry) => entry.value.as_deref(),
            None => base
                .and_then(|r| r.data.get(&update.key))
                .map(Vec::as_slice),
        };
        let value = (update.f)(current)?;
        replayed.insert(
            update.key.clone(),
            Entry {
                value,
                set: overlay.get(&update.key).is_some_and(|entry| entry.set),
                replays: true,
            },
        );
    }
    Ok(replayed)
}

/// Puts `later` (changes a clone of the handle made while a save of
/// `earlier` was running, over the same `base`) on top of `earlier`.
pub(crate) fn merge(
    earlier: (Overlay, Vec<Update>),
    later: (Overlay, Vec<Update>),
    base: Option<&Record>,
) -> (Overlay, Vec<Update>) {
    let (mut overlay, mut updates) = earlier;
    let (later_overlay, later_updates) = later;
    for (key, entry) in &later_overlay {
        if !entry.replays {
            settle(
                &mut overlay,
                &mut updates,
                key.clone(),
                entry.value.clone(),
                entry.set,
            );
        }
    }
    for update in later_updates {
        let op = Op::Update {
            key: update.key.clone(),
            f: Arc::clone(&update.f),
        };
        // An update that fails on the earlier value keeps the value it
        // had, and is kept to replay.
        if apply(op, base, &mut overlay, &mut updates).is_err() {
            if let Some(entry) = later_overlay.get(&update.key) {
                overlay.insert(update.key.clone(), entry.clone());
            }
            updates.push(update);
        }
    }
    (overlay, updates)
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
    /// The updates of the overlay's values that replay.
    pub(crate) updates: Vec<Update>,
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
            updates: Vec::new(),
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
        !self.overlay.is_empty() || self.principal != PrincipalChange::Keep || self.cycle
    }

    /// What the handler sees under `key`.
    pub(crate) fn value(&self, key: &str) -> Option<&[u8]> {
        match self.overlay.get(key) {
            Some(entry) => entry.value.as_deref(),
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
                .filter(|(_, entry)| entry.value.is_some())
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

    /// Applies `op` to the view, keeping what a replay needs.
    pub(crate) fn push(&mut self, op: Op) -> Result<(), SessionError> {
        apply(
            op,
            self.record.as_deref(),
            &mut self.overlay,
            &mut self.updates,
        )
    }

    /// Forgets pending changes; the view is `record` again.
    pub(crate) fn reset_to(&mut self, record: Option<Arc<Record>>) {
        self.record = record;
        self.overlay.clear();
        self.updates.clear();
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
    for (key, entry) in overlay {
        let stored = base.data.get(key);
        match (&entry.value, stored) {
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
    for (key, entry) in overlay {
        match &entry.value {
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

    /// An update that adds one to a decimal value (absent: 0).
    fn increment(key: &str) -> Op {
        Op::Update {
            key: key.to_owned(),
            f: Arc::new(|current| {
                let n: u64 = current
                    .map(|v| std::str::from_utf8(v).unwrap().parse().unwrap())
                    .unwrap_or(0);
                Ok(Some((n + 1).to_string().into_bytes()))
            }),
        }
    }

    fn set(key: &str, value: &str) -> Op {
        Op::Set {
            key: key.to_owned(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn record(pairs: &[(&str, &str)]) -> Record {
        let mut record = Record::new(Timestamp::from_millis(0), Default::default());
        for (key, value) in pairs {
            record
                .data
                .insert((*key).to_owned(), value.as_bytes().to_vec());
        }
        record
    }

    fn values(overlay: &Overlay) -> Vec<(&str, Option<&str>)> {
        overlay
            .iter()
            .map(|(k, e)| {
                let value = e.value.as_deref().map(|v| std::str::from_utf8(v).unwrap());
                (k.as_str(), value)
            })
            .collect()
    }

    #[test]
    fn only_values_computed_from_the_stored_one_keep_updates_and_replay() {
        let loaded = record(&[("n", "5"), ("m", "1")]);
        let newer = record(&[("n", "7"), ("m", "9")]);
        let (mut overlay, mut updates) = (Overlay::new(), Vec::new());
        // `n` is updated from the stored value; `m` is set, then updated.
        for op in [
            increment("n"),
            set("m", "10"),
            increment("m"),
            increment("n"),
        ] {
            apply(op, Some(&loaded), &mut overlay, &mut updates).unwrap();
        }
        assert_eq!(values(&overlay), [("m", Some("11")), ("n", Some("7"))]);
        assert_eq!(updates.len(), 2, "only n's updates are kept");
        assert!(overlay["m"].set && !overlay["n"].set);

        let replayed = replay(&overlay, &updates, Some(&newer)).unwrap();
        assert_eq!(values(&replayed), [("m", Some("11")), ("n", Some("9"))]);

        // A set or a remove ends the key's replay.
        apply(
            Op::Remove { key: "n".into() },
            Some(&loaded),
            &mut overlay,
            &mut updates,
        )
        .unwrap();
        assert!(updates.is_empty());
        let replayed = replay(&overlay, &updates, Some(&newer)).unwrap();
        assert_eq!(values(&replayed), [("m", Some("11")), ("n", None)]);
    }

    #[test]
    fn changes_made_during_a_failed_save_go_on_top_of_the_saved_ones() {
        let base = record(&[("n", "5")]);
        // The save's changes: n set to 10.
        let (mut earlier, mut earlier_updates) = (Overlay::new(), Vec::new());
        apply(
            set("n", "10"),
            Some(&base),
            &mut earlier,
            &mut earlier_updates,
        )
        .unwrap();
        // A clone's, meanwhile, over the same base: n + 1 (6), and k + 1.
        let (mut later, mut later_updates) = (Overlay::new(), Vec::new());
        for op in [increment("n"), increment("k")] {
            apply(op, Some(&base), &mut later, &mut later_updates).unwrap();
        }
        let (overlay, updates) = merge(
            (earlier, earlier_updates),
            (later, later_updates),
            Some(&base),
        );
        // n: the clone's update runs on the set value, which stands.
        assert_eq!(values(&overlay), [("k", Some("1")), ("n", Some("11"))]);
        assert!(overlay["n"].set);
        // k still replays on a newer record.
        let newer = record(&[("n", "0"), ("k", "41")]);
        let replayed = replay(&overlay, &updates, Some(&newer)).unwrap();
        assert_eq!(values(&replayed), [("k", Some("42")), ("n", Some("11"))]);
    }

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
