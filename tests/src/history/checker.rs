//! The invariants a finished history must hold, checked against the
//! recorded events and the final state (read straight from the backend,
//! under any cache and with no faults).
//!
//! An operation whose outcome is unknown (a timeout, an unreachable store,
//! a hang) may have taken effect or not, as a linearizability checker
//! allows, and at any time after it started: the request may still sit in
//! a paused server's socket when the client gives up. An acknowledged one
//! must have taken effect before it completed, and a refused one (`Gone`)
//! must not have.
//!
//! 1. **No lost add**: every acknowledged add is in the final record of
//!    its session (following the logins that moved it), and a session that
//!    nothing may have ended (no logout or revoke that may have run, no
//!    login of unknown outcome) is still live at the end. No refused add
//!    shows up anywhere.
//! 2. **No read after the end**: a load that started after an
//!    acknowledged logout, revoke-all or login (for the pre-login ID)
//!    completed does not find the session. Behind a cache, another
//!    instance may serve it for the bound the cache documents; the largest
//!    delay seen is reported either way.
//! 3. **Revoked means gone**: at the end no session of a principal
//!    created before that principal's last acknowledged revoke-all is live;
//!    and after a final revoke-all of every principal, no handed-out ID
//!    loads with a principal (nor does the store list one).
//!    A pre-login ID (one an acknowledged login moved) is dead at the end.
//! 4. **No fixation**: no ID ever loads with a principal other than the one
//!    it was created with (an ID from before a login never carries the
//!    login's principal).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use offstate_core::{SessionId, Sessions};

use super::model::{Event, Observation, OpKind, Outcome, short};

/// How long the final reads and revokes retry while the backend recovers
/// from the run's faults. A time, not a number of tries: after a Redis
/// Cluster master restarts, a client's calls fail for about 2 s (at once
/// with "unavailable", then by timeouts) until it reconnects, longer
/// than ten quick retries took.
const RECOVERY: Duration = Duration::from_secs(15);

/// What checking one history found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Violations, each a sentence with the events involved.
    pub anomalies: Vec<String>,
    /// The longest a session was still served after an acknowledged end,
    /// within the allowance (behind a cache) or not.
    pub max_stale: Duration,
    /// Sessions whose final state was checked for every acknowledged add.
    pub sessions_checked: usize,
    /// Acknowledged adds found where they belong.
    pub adds_checked: usize,
    /// Sessions gone at the end that only a server restart explains.
    pub lost_to_restarts: usize,
}

/// Where an ID came from: the acknowledged event that handed it out, and
/// the principal it was created with.
struct Origin {
    principal: Option<String>,
    event: usize,
}

struct View<'a> {
    events: &'a [Event],
    origin: HashMap<SessionId, Origin>,
    /// The ID an acknowledged login moved a session to.
    next: HashMap<SessionId, SessionId>,
    /// Events by the ID they presented.
    by_presented: HashMap<SessionId, Vec<usize>>,
}

impl<'a> View<'a> {
    fn new(events: &'a [Event]) -> Self {
        let mut origin = HashMap::new();
        let mut next = HashMap::new();
        let mut by_presented: HashMap<SessionId, Vec<usize>> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            if let Some(id) = &e.presented {
                by_presented.entry(id.clone()).or_default().push(i);
            }
            let (Outcome::Ok, Some(result)) = (&e.outcome, &e.result) else {
                continue;
            };
            if e.presented.as_ref() == Some(result) {
                continue;
            }
            let principal = (e.kind == OpKind::Login).then(|| e.user.clone());
            origin.insert(
                result.clone(),
                Origin {
                    principal,
                    event: i,
                },
            );
            let was_live = e.observed.as_ref().is_some_and(|o| o.live);
            if let (OpKind::Login, Some(from), true) = (e.kind, &e.presented, was_live) {
                next.insert(from.clone(), result.clone());
            }
        }
        Self {
            events,
            origin,
            next,
            by_presented,
        }
    }

    /// Where the session of `id` ended up after the acknowledged logins.
    fn last(&self, id: &SessionId) -> SessionId {
        let mut at = id.clone();
        let mut hops = 0;
        while let Some(next) = self.next.get(&at) {
            at = next.clone();
            hops += 1;
            if hops > self.next.len() {
                break;
            }
        }
        at
    }

    fn presented(&self, id: &SessionId) -> impl Iterator<Item = &Event> {
        self.by_presented
            .get(id)
            .into_iter()
            .flatten()
            .map(|&i| &self.events[i])
    }

    /// Whether something may have ended (or moved) the session `id`.
    fn may_have_ended(&self, id: &SessionId) -> bool {
        let ended_here = self.presented(id).any(|e| match e.kind {
            OpKind::Logout => e.outcome.maybe_applied(),
            OpKind::RevokeAll => e.outcome.maybe_applied(),
            OpKind::Login => e.outcome.unknown(),
            _ => false,
        });
        let revoked = self.origin.get(id).is_some_and(|origin| {
            let created = &self.events[origin.event];
            origin.principal.as_ref().is_some_and(|p| {
                self.events.iter().any(|e| {
                    e.kind == OpKind::RevokeAll
                        && &e.user == p
                        && (e.outcome.maybe_applied() && e.completed > created.invoked
                            || e.outcome.unknown())
                })
            })
        });
        ended_here || revoked
    }
}

/// A moment an ID stopped being servable: an acknowledged event ended it.
struct End<'a> {
    event: &'a Event,
    why: &'static str,
}

/// Checks `events` and the final state; `handed_out` is every ID a
/// response gave a client; `staleness` the cache's allowance for other
/// instances (`None`: no cache, every read is strict); `lossy` when a
/// server restarted empty during the history.
pub(crate) async fn check(
    events: &[Event],
    handed_out: &[SessionId],
    users: &[String],
    probe: &Sessions,
    staleness: Option<Duration>,
    lossy: bool,
) -> Findings {
    let mut findings = Findings::default();
    let view = View::new(events);

    for e in events {
        if e.outcome == Outcome::Hung {
            findings
                .anomalies
                .push(format!("a request hung past its deadline: {e}"));
        }
    }

    // 4. No fixation, on every load a request made.
    for e in events {
        if let (Some(id), Some(seen)) = (&e.presented, &e.observed)
            && seen.live
        {
            fixation(&view, id, seen, &format!("{e}"), &mut findings);
        }
    }

    // 2. No read after the end.
    let mut ends: HashMap<&SessionId, Vec<End<'_>>> = HashMap::new();
    for e in events.iter().filter(|e| e.outcome == Outcome::Ok) {
        match (e.kind, &e.presented) {
            (OpKind::Logout, Some(id)) => ends.entry(id).or_default().push(End {
                event: e,
                why: "logout",
            }),
            (OpKind::Login, Some(id)) if view.next.get(id) == e.result.as_ref() => {
                ends.entry(id).or_default().push(End {
                    event: e,
                    why: "login (the pre-login ID)",
                });
            }
            (OpKind::RevokeAll, _) => {
                for (id, origin) in &view.origin {
                    let created = &events[origin.event];
                    if origin.principal.as_ref() == Some(&e.user) && created.completed < e.invoked {
                        ends.entry(id).or_default().push(End {
                            event: e,
                            why: "revoke-all",
                        });
                    }
                }
            }
            _ => {}
        }
    }
    for (id, ends) in &ends {
        for read in view.presented(id) {
            if !read.observed.as_ref().is_some_and(|o| o.live) {
                continue;
            }
            for end in ends.iter().filter(|end| read.invoked > end.event.completed) {
                let late = read.started.saturating_duration_since(end.event.ended);
                findings.max_stale = findings.max_stale.max(late);
                let allowed = staleness
                    .is_some_and(|bound| read.instance != end.event.instance && late <= bound);
                if !allowed {
                    findings.anomalies.push(format!(
                        "served {late:?} after an acknowledged {} ({}): {read}; its events: {}",
                        end.why,
                        end.event,
                        lineage(&view, &view.last(id))
                    ));
                }
            }
        }
    }

    // The final state of every ID handed out, from the backend.
    let mut last_state = HashMap::new();
    for id in handed_out {
        match final_load(probe, id).await {
            Ok(seen) => {
                last_state.insert(id.clone(), seen);
            }
            Err(error) => findings.anomalies.push(format!(
                "could not read the final state of {}: {error}",
                short(Some(id))
            )),
        }
    }
    for (id, seen) in &last_state {
        if seen.live {
            fixation(&view, id, seen, "the final state", &mut findings);
            if let Some(to) = view.next.get(id) {
                findings.anomalies.push(format!(
                    "the pre-login ID {} is still live at the end (as {:?}, {} items), though an acknowledged login moved it to {}; its events: {}",
                    short(Some(id)),
                    seen.principal,
                    seen.cart.len(),
                    short(Some(to)),
                    lineage(&view, to)
                ));
            }
        }
    }

    // 1. No lost add.
    let mut expected: HashMap<SessionId, Vec<&Event>> = HashMap::new();
    let mut refused = HashSet::new();
    for e in events {
        let Some(item) = &e.item else { continue };
        match (&e.outcome, &e.result) {
            (Outcome::Ok, Some(id)) => expected.entry(view.last(id)).or_default().push(e),
            (Outcome::Gone, _) => {
                refused.insert(item.as_str());
            }
            _ => {}
        }
    }
    for id in handed_out {
        if view.next.contains_key(id) {
            continue;
        }
        let Some(seen) = last_state.get(id) else {
            continue;
        };
        let adds = expected.get(id).map(Vec::as_slice).unwrap_or_default();
        if !seen.live {
            if lossy && !view.may_have_ended(id) {
                // A server restarted empty: losing whole sessions is what
                // a crash of a non-persistent store does.
                findings.lost_to_restarts += 1;
            } else if !view.may_have_ended(id) {
                findings.anomalies.push(format!(
                    "session {} is gone though no logout, revoke or failed login may have ended it ({} acknowledged adds lost); its events: {}",
                    short(Some(id)),
                    adds.len(),
                    lineage(&view, id)
                ));
            }
            continue;
        }
        findings.sessions_checked += 1;
        for add in adds {
            let item = add.item.as_deref().unwrap_or_default();
            if seen.cart.iter().any(|i| i == item) {
                findings.adds_checked += 1;
            } else {
                findings.anomalies.push(format!(
                    "acknowledged add {item} is missing from the live session {}: {add}; its events: {}",
                    short(Some(id)),
                    lineage(&view, id)
                ));
            }
        }
        for item in &seen.cart {
            if refused.contains(item.as_str()) {
                findings.anomalies.push(format!(
                    "add {item} was refused (Gone) but is in session {}",
                    short(Some(id))
                ));
            }
        }
    }

    // 3. Revoked means gone: the last acknowledged revoke of each user.
    for user in users {
        let Some(revoke) = events
            .iter()
            .filter(|e| e.kind == OpKind::RevokeAll && &e.user == user && e.outcome == Outcome::Ok)
            .max_by_key(|e| e.completed)
        else {
            continue;
        };
        for (id, origin) in &view.origin {
            let created = &events[origin.event];
            if origin.principal.as_ref() == Some(user)
                && created.completed < revoke.invoked
                && last_state.get(id).is_some_and(|s| s.live)
            {
                findings.anomalies.push(format!(
                    "session {} of {user} (created {created}) is alive after the acknowledged revoke-all {revoke}",
                    short(Some(id))
                ));
            }
        }
    }
    sweep(probe, handed_out, users, &mut findings).await;
    findings
}

/// The final revoke-all of every user; then no handed-out ID loads with a
/// principal, and the store lists none.
async fn sweep(probe: &Sessions, ids: &[SessionId], users: &[String], findings: &mut Findings) {
    for user in users {
        let mut last = None;
        let start = Instant::now();
        while start.elapsed() < RECOVERY {
            match probe.revoke_principal(user).await {
                Ok(_) => {
                    last = None;
                    break;
                }
                Err(error) => {
                    last = Some(error);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Some(error) = last {
            findings
                .anomalies
                .push(format!("the final revoke-all of {user} failed: {error}"));
        }
        if probe.capabilities().list_principal {
            match probe.list_principal(user).await {
                Ok(keys) if !keys.is_empty() => findings.anomalies.push(format!(
                    "{} sessions of {user} still listed after the final revoke-all",
                    keys.len()
                )),
                Ok(_) => {}
                Err(error) => findings
                    .anomalies
                    .push(format!("listing {user}'s sessions failed: {error}")),
            }
        }
    }
    for id in ids {
        if let Ok(seen) = final_load(probe, id).await
            && seen.live
            && let Some(principal) = seen.principal
        {
            findings.anomalies.push(format!(
                "session {} of {principal} is alive after the final revoke-all of every user",
                short(Some(id))
            ));
        }
    }
}

fn fixation(
    view: &View<'_>,
    id: &SessionId,
    seen: &Observation,
    when: &str,
    findings: &mut Findings,
) {
    let Some(origin) = view.origin.get(id) else {
        return;
    };
    if seen.principal != origin.principal {
        findings.anomalies.push(format!(
            "ID {} was created as {:?} but loads as {:?} ({when}); created by {}",
            short(Some(id)),
            origin.principal,
            seen.principal,
            view.events[origin.event]
        ));
    }
}

/// The events of `id` and of the IDs that led to it, for a report.
fn lineage(view: &View<'_>, id: &SessionId) -> String {
    let mut ids = vec![id.clone()];
    let mut changed = true;
    while changed {
        changed = false;
        for (from, to) in &view.next {
            if ids.contains(to) && !ids.contains(from) {
                ids.push(from.clone());
                changed = true;
            }
        }
    }
    let principals: Vec<&String> = ids
        .iter()
        .filter_map(|id| view.origin.get(id)?.principal.as_ref())
        .collect();
    let mut lines: Vec<&Event> = view
        .events
        .iter()
        .filter(|e| {
            e.presented.as_ref().is_some_and(|p| ids.contains(p))
                || e.result.as_ref().is_some_and(|r| ids.contains(r))
                || (e.kind == OpKind::RevokeAll && principals.contains(&&e.user))
        })
        .collect();
    lines.sort_by_key(|e| e.invoked);
    lines
        .iter()
        .map(|e| format!("\n    {e}"))
        .collect::<String>()
}

/// Loads `id` straight from the backend, retrying while it recovers from
/// the run's faults.
async fn final_load(
    probe: &Sessions,
    id: &SessionId,
) -> Result<Observation, offstate_core::SessionError> {
    let start = Instant::now();
    loop {
        match probe.load(id).await {
            Ok(Some(session)) => {
                return Ok(Observation {
                    live: true,
                    principal: session.principal().await?,
                    cart: session
                        .get::<Vec<String>>("cart")
                        .await?
                        .unwrap_or_default(),
                });
            }
            Ok(None) => {
                return Ok(Observation {
                    live: false,
                    principal: None,
                    cart: Vec::new(),
                });
            }
            Err(error) if start.elapsed() >= RECOVERY => return Err(error),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        at: u64,
        kind: OpKind,
        presented: Option<&SessionId>,
        result: Option<&SessionId>,
        outcome: Outcome,
    ) -> Event {
        let now = Instant::now();
        Event {
            client: 0,
            instance: 0,
            kind,
            user: "user3".into(),
            presented: presented.cloned(),
            observed: None,
            result: result.cloned(),
            item: None,
            invoked: at,
            completed: at + 10,
            started: now,
            ended: now,
            outcome,
        }
    }

    /// CI seed 722662398701 (memcached behind a cache, a server paused): a
    /// revoke-all timed out, the user logged in again, and the new session
    /// was gone at the end, because the paused memcached applied the
    /// revoke's `incr` when it resumed, after the login read the epoch.
    #[test]
    fn a_timed_out_revoke_may_end_a_later_login() {
        let old = SessionId::generate();
        let new = SessionId::generate();
        let timed_out = Outcome::Unknown("store: did not answer within 400ms".into());
        let events = [
            event(0, OpKind::RevokeAll, Some(&old), None, timed_out),
            event(20, OpKind::Login, None, Some(&new), Outcome::Ok),
        ];
        assert!(View::new(&events).may_have_ended(&new));
    }

    #[test]
    fn an_acknowledged_revoke_does_not_end_a_later_login() {
        let old = SessionId::generate();
        let new = SessionId::generate();
        let events = [
            event(0, OpKind::RevokeAll, Some(&old), None, Outcome::Ok),
            event(20, OpKind::Login, None, Some(&new), Outcome::Ok),
        ];
        assert!(!View::new(&events).may_have_ended(&new));
    }
}
