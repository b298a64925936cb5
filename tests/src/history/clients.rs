//! Simulated clients: each runs its program through the real
//! [`Session`] handle on the app instance each request names, keeps its
//! cookie as a browser would, and records every request as an [`Event`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use offstate_core::{Session, SessionError, SessionId, Sessions};

use super::faults::{FaultCount, Injector};
use super::generator::{Request, Step};
use super::model::{Event, Observation, OpKind, Outcome, Recorder};

/// What every client of one history shares.
pub(crate) struct Shared {
    pub(crate) instances: Vec<Sessions>,
    pub(crate) recorder: Recorder,
    pub(crate) injector: Arc<dyn Injector>,
    pub(crate) faults: Arc<FaultCount>,
    /// A request that takes longer than this is recorded as hung.
    pub(crate) deadline: Duration,
    /// Prefix of this history's cart items.
    pub(crate) tag: String,
}

/// One client: its user and its cookie.
struct Client {
    index: usize,
    user: String,
    cookie: Option<SessionId>,
    items: u64,
}

/// Runs `program` as client `index` of user `user`.
pub(crate) async fn run(shared: Arc<Shared>, index: usize, user: String, program: Vec<Step>) {
    let mut client = Client {
        index,
        user,
        cookie: None,
        items: 0,
    };
    for step in program {
        if let Some((call, fault)) = step.fault {
            shared.injector.inject(call, fault);
            shared
                .faults
                .store
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        let mut events = Vec::new();
        match step.requests.as_slice() {
            [one] => {
                let item = client.next_item(&shared.tag);
                events.push(request(&shared, &client, *one, step.pick, item).await);
            }
            [one, two] => {
                let (a, b) = (client.next_item(&shared.tag), client.next_item(&shared.tag));
                let (a, b) = tokio::join!(
                    request(&shared, &client, *one, step.pick, a),
                    request(&shared, &client, *two, step.pick, b),
                );
                events.extend([a, b]);
            }
            _ => {}
        }
        // Set-Cookie headers apply in the order the responses arrive.
        events.sort_by_key(|e| e.completed);
        for event in events {
            client.apply(&event);
            shared.recorder.push(event);
        }
    }
}

impl Client {
    fn next_item(&mut self, tag: &str) -> String {
        self.items += 1;
        format!("{tag}c{}i{}", self.index, self.items)
    }

    /// What the browser does with the response.
    fn apply(&mut self, event: &Event) {
        if event.kind == OpKind::Snoop {
            return;
        }
        let ours = self.cookie == event.presented;
        match (&event.outcome, event.kind) {
            (Outcome::Ok, OpKind::Logout | OpKind::RevokeAll) if ours => self.cookie = None,
            (Outcome::Ok, OpKind::Add | OpKind::Login) => self.cookie.clone_from(&event.result),
            (Outcome::Gone, _) if ours => self.cookie = None,
            _ if ours && event.observed.as_ref().is_some_and(|o| !o.live) => self.cookie = None,
            _ => {}
        }
    }
}

async fn observe(session: &Session) -> Observation {
    Observation {
        live: true,
        principal: session.principal().await.ok().flatten(),
        cart: session
            .get::<Vec<String>>("cart")
            .await
            .ok()
            .flatten()
            .unwrap_or_default(),
    }
}

fn push(item: String) -> impl Fn(Option<Vec<String>>) -> Option<Vec<String>> + Send + Sync {
    move |cart: Option<Vec<String>>| {
        let mut cart = cart.unwrap_or_default();
        cart.push(item.clone());
        Some(cart)
    }
}

/// What a request did: its result ID, or the error it met.
type Done = Result<Option<SessionId>, SessionError>;

async fn request(
    shared: &Shared,
    client: &Client,
    request: Request,
    pick: u64,
    item: String,
) -> Event {
    let presented = match request.kind {
        OpKind::Snoop => shared.recorder.some_id(pick),
        _ => client.cookie.clone(),
    };
    let invoked = shared.recorder.tick();
    let started = Instant::now();
    let sessions = &shared.instances[request.instance];
    let mut observed = None;
    let adds =
        matches!(request.kind, OpKind::Add) || (request.kind == OpKind::Login && request.with_add);
    let work = perform(
        sessions,
        &client.user,
        &presented,
        request,
        &item,
        &mut observed,
    );
    let outcome = match tokio::time::timeout(shared.deadline, work).await {
        Ok(done) => done,
        Err(_) => Err(Hang),
    };
    let (outcome, result) = match outcome {
        Ok(result) => (Outcome::Ok, result),
        Err(Hang) => (Outcome::Hung, None),
        Err(Failed(error)) => (Outcome::of::<()>(&Err(error)), None),
    };
    let completed = shared.recorder.tick();
    Event {
        client: client.index,
        instance: request.instance,
        kind: request.kind,
        user: client.user.clone(),
        presented,
        observed,
        result,
        item: adds.then_some(item),
        invoked,
        completed,
        started,
        ended: Instant::now(),
        outcome,
    }
}

/// Why a request did not end well.
enum Failure {
    Hang,
    Failed(SessionError),
}
use Failure::{Failed, Hang};

async fn perform(
    sessions: &Sessions,
    user: &str,
    presented: &Option<SessionId>,
    request: Request,
    item: &str,
    observed: &mut Option<Observation>,
) -> Result<Option<SessionId>, Failure> {
    let done: Done = async {
        let session = match presented {
            Some(id) => match sessions.load(id).await? {
                Some(session) => {
                    *observed = Some(observe(&session).await);
                    Some(session)
                }
                None => {
                    *observed = Some(Observation {
                        live: false,
                        principal: None,
                        cart: Vec::new(),
                    });
                    None
                }
            },
            None => None,
        };
        match request.kind {
            OpKind::Add => {
                let session = session.unwrap_or_else(|| sessions.new_session());
                session.update("cart", push(item.to_owned())).await?;
                session.save().await?;
                Ok(session.id())
            }
            OpKind::Login => {
                let session = session.unwrap_or_else(|| sessions.new_session());
                if request.with_add {
                    session.update("cart", push(item.to_owned())).await?;
                }
                session.set_principal(user).await?;
                session.cycle_id().await?;
                session.save().await?;
                Ok(session.id())
            }
            OpKind::Logout => {
                if let Some(session) = session {
                    session.delete().await?;
                }
                Ok(None)
            }
            OpKind::RevokeAll => {
                match session {
                    Some(session) if session.principal().await?.as_deref() == Some(user) => {
                        session.revoke_principal().await?;
                    }
                    _ => {
                        sessions.revoke_principal(user).await?;
                    }
                }
                Ok(None)
            }
            OpKind::Touch => match session {
                Some(session) => {
                    session.save().await?;
                    Ok(session.id())
                }
                None => Ok(None),
            },
            OpKind::Read | OpKind::Snoop => Ok(session.and_then(|s| s.id())),
        }
    }
    .await;
    done.map_err(Failed)
}
