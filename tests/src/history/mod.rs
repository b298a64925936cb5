//! A randomized history checker for sessions: many simulated clients add
//! to carts, log in, log out, revoke everywhere, touch and read through the
//! real [`Session`](offstate_core::Session) handle on several app
//! instances, while store faults and paused servers hit them; every
//! request is recorded, and the finished history is checked against the
//! promises of an authentication layer (see [`checker`] for the list).
//!
//! ```no_run
//! # async fn demo() {
//! use std::sync::Arc;
//! use offstate_core::{MemoryStore, Sessions, testing::FaultyStore};
//! use offstate_testing::history::{self, Config, Target};
//!
//! let store = FaultyStore::new(MemoryStore::new());
//! let target = Target::new("memory", vec![Sessions::new(store.clone()); 2], Arc::new(store.clone()))
//!     .with_probe(Sessions::new(store.clone()));
//! let report = history::run(&Config::from_env(), target).await;
//! println!("{report}");
//! assert!(report.anomalies.is_empty(), "{}", report.failure());
//! # }
//! ```
//!
//! Seeded: `OFFSTATE_HISTORY_SEED` replays the same client programs and
//! fault plan (the interleaving is the scheduler's); without it a random
//! seed is drawn and printed. `OFFSTATE_HISTORY_OPS` sets the number of
//! requests per backend (a short pass by default; a long run on demand).
//!
//! # Layout
//!
//! - [`model`]: operations, outcomes, events and their recorder;
//! - [`generator`]: the seeded client programs and store faults;
//! - [`faults`]: how faults reach the store and the servers;
//! - `clients`: the simulated clients, through the real session handle;
//! - [`checker`]: the invariants.

pub mod checker;
mod clients;
pub mod faults;
pub mod generator;
pub mod model;

use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use offstate_core::{ExpiryPolicy, Sessions};
use tokio::task::JoinSet;

use self::clients::Shared;
use self::faults::{FaultCount, Injector};
use self::generator::{Rng, Shape};
use self::model::Recorder;
use crate::node::Node;

/// Environment variable with the seed to replay.
pub const SEED_ENV: &str = "OFFSTATE_HISTORY_SEED";
/// Environment variable with the number of requests per backend.
pub const OPS_ENV: &str = "OFFSTATE_HISTORY_OPS";
/// Requests per backend when [`OPS_ENV`] is not set: a short pass.
pub const DEFAULT_OPS: usize = 1200;

/// How big a run is, and its seed.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed every history's programs and faults derive from.
    pub seed: u64,
    /// Requests in all, over every history.
    pub ops: usize,
    /// Requests per history.
    pub ops_per_history: usize,
    /// Concurrent clients per history.
    pub clients: usize,
    /// Users (principals) the clients log in as; several clients share one.
    pub users: usize,
    /// Chance that a step of a client queues a store fault first.
    pub fault_rate: f64,
    /// A request that takes longer is a hang (an anomaly).
    pub deadline: Duration,
}

impl Config {
    /// The default shape, with the seed and size from the environment.
    #[must_use]
    pub fn from_env() -> Self {
        Self::from_env_or(DEFAULT_OPS)
    }

    /// As [`from_env`](Self::from_env), with `ops` requests when
    /// [`OPS_ENV`] is not set (a slow backend's short pass).
    #[must_use]
    pub fn from_env_or(ops: usize) -> Self {
        let seed = std::env::var(SEED_ENV)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(random_seed);
        let ops = std::env::var(OPS_ENV)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(ops);
        Self {
            seed,
            ops,
            ops_per_history: 400,
            clients: 12,
            users: 6,
            fault_rate: 0.15,
            deadline: Duration::from_secs(30),
        }
    }

    fn histories(&self) -> usize {
        self.ops.div_ceil(self.ops_per_history.max(1)).max(1)
    }
}

fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() % 1_000_000_000_000
}

/// What a history runs against: the app instances, how faults reach their
/// store, and how to read the final state.
pub struct Target<'a> {
    /// The test's name suffix (`redis_cached`), for the replay command.
    pub name: &'static str,
    /// The app instances (each its own [`Sessions`], so its own turns and,
    /// behind a cache, its own cache), all over one backend.
    pub instances: Vec<Sessions>,
    /// Queues faults for the store the instances use.
    pub injector: Arc<dyn Injector>,
    /// The backend itself (no cache, no faults once cleared), for the
    /// final state.
    pub probe: Sessions,
    /// Behind a cache: how long another instance may still serve an ended
    /// session (the bound the cache documents). `None`: no cache.
    pub staleness: Option<Duration>,
    /// Servers to pause while the clients run.
    pub nodes: Vec<&'a Node>,
    /// Whether servers are also killed and restarted empty (a cluster
    /// node keeps its nodes.conf and rejoins its cluster, empty).
    pub restarts: bool,
    /// The store's command timeout (pauses run from a tenth of it to twice it).
    pub timeout: Duration,
}

impl fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("instances", &self.instances.len())
            .field("staleness", &self.staleness)
            .field("nodes", &self.nodes.len())
            .finish_non_exhaustive()
    }
}

impl<'a> Target<'a> {
    /// A target with `instances` over one store, `injector` its faults;
    /// the probe is the first instance until [`with_probe`](Self::with_probe).
    #[must_use]
    pub fn new(name: &'static str, instances: Vec<Sessions>, injector: Arc<dyn Injector>) -> Self {
        let probe = instances[0].clone();
        Self {
            name,
            instances,
            injector,
            probe,
            staleness: None,
            nodes: Vec::new(),
            restarts: false,
            timeout: Duration::from_secs(1),
        }
    }

    /// Also kills servers and restarts them empty (a crash). Sessions
    /// that vanish in a history with a restart are counted, not anomalies;
    /// everything else must still hold (nothing revoked or logged out comes
    /// back, no fixation, no partial session).
    #[must_use]
    pub fn with_restarts(mut self) -> Self {
        self.restarts = true;
        self
    }

    /// Reads the final state through `probe` (the backend under any cache).
    #[must_use]
    pub fn with_probe(mut self, probe: Sessions) -> Self {
        self.probe = probe;
        self
    }

    /// The instances sit behind caches that may serve an ended session on
    /// another instance for `bound`.
    #[must_use]
    pub fn with_staleness(mut self, bound: Duration) -> Self {
        self.staleness = Some(bound);
        self
    }

    /// Pauses `nodes` while the clients run; `timeout` is the store's
    /// command timeout.
    #[must_use]
    pub fn with_nodes(mut self, nodes: Vec<&'a Node>, timeout: Duration) -> Self {
        self.nodes = nodes;
        self.timeout = timeout;
        self
    }
}

/// What a run found.
#[derive(Debug, Default)]
pub struct Report {
    /// The target's name.
    pub name: &'static str,
    /// The seed.
    pub seed: u64,
    /// Requests per backend asked for.
    pub ops_asked: usize,
    /// Histories run.
    pub histories: usize,
    /// Requests run.
    pub operations: usize,
    /// Requests acknowledged.
    pub acknowledged: usize,
    /// Requests refused with `Gone`.
    pub refused: usize,
    /// Requests of unknown outcome.
    pub unknown: usize,
    /// Store faults queued.
    pub store_faults: u64,
    /// Server pauses.
    pub pauses: u64,
    /// Servers killed and restarted empty.
    pub restarts: u64,
    /// Sessions gone at the end with nothing to end them but a restart.
    pub lost_to_restarts: usize,
    /// Sessions whose final state was checked.
    pub sessions_checked: usize,
    /// Acknowledged adds found where they belong.
    pub adds_checked: usize,
    /// The longest an ended session was still served (behind a cache).
    pub max_stale: Duration,
    /// Wall time.
    pub elapsed: Duration,
    /// Violations (must be none).
    pub anomalies: Vec<String>,
}

impl Report {
    /// The command that replays this run.
    #[must_use]
    pub fn replay(&self) -> String {
        format!(
            "{SEED_ENV}={} {OPS_ENV}={} cargo test -p offstate-testing --test history -- history_{} --exact --nocapture",
            self.seed, self.ops_asked, self.name
        )
    }

    /// A failure message: the anomalies (the first 20), the seed and the
    /// replay command.
    #[must_use]
    pub fn failure(&self) -> String {
        let mut text = format!(
            "history_{}: {} anomalies (seed {}); replay with:\n  {}\n",
            self.name,
            self.anomalies.len(),
            self.seed,
            self.replay()
        );
        for anomaly in self.anomalies.iter().take(20) {
            text.push_str("- ");
            text.push_str(anomaly);
            text.push('\n');
        }
        text
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "history_{}: seed {} | {} histories, {} operations ({} ok, {} gone, {} unknown), faults {} ({} store, {} server pauses, {} restarts; {} sessions lost to restarts), {} sessions / {} adds checked, max stale read {:?}, {:.1?} | anomalies {}",
            self.name,
            self.seed,
            self.histories,
            self.operations,
            self.acknowledged,
            self.refused,
            self.unknown,
            self.store_faults + self.pauses + self.restarts,
            self.store_faults,
            self.pauses,
            self.restarts,
            self.lost_to_restarts,
            self.sessions_checked,
            self.adds_checked,
            self.max_stale,
            self.elapsed,
            self.anomalies.len()
        )
    }
}

/// Runs the histories `config` asks for against `target` and checks each.
pub async fn run(config: &Config, target: Target<'_>) -> Report {
    let start = Instant::now();
    let expiry = ExpiryPolicy::default()
        .with_idle(Some(Duration::from_secs(3600)))
        // Every read-only request touches: touches race with everything.
        .with_touch_threshold(0.0);
    let instances: Vec<Sessions> = target
        .instances
        .iter()
        .map(|s| s.clone().with_expiry(expiry))
        .collect();
    let probe = target.probe.clone().with_expiry(expiry);
    let mut report = Report {
        name: target.name,
        seed: config.seed,
        ops_asked: config.ops,
        ..Report::default()
    };
    for history in 0..config.histories() {
        let seed = Rng::derive(config.seed, history as u64);
        let steps = (config.ops_per_history / config.clients.max(1)).max(1);
        let users: Vec<String> = (0..config.users.max(1))
            .map(|u| format!("user{u}-{:x}", seed & 0xff_ffff))
            .collect();
        let faults = Arc::new(FaultCount::default());
        let shared = Arc::new(Shared {
            instances: instances.clone(),
            recorder: Recorder::default(),
            injector: Arc::clone(&target.injector),
            faults: Arc::clone(&faults),
            deadline: config.deadline,
            tag: format!("{:x}-", seed & 0xff_ffff),
        });
        let shape = Shape {
            instances: instances.len(),
            fault_rate: config.fault_rate,
        };
        let mut clients = JoinSet::new();
        for client in 0..config.clients {
            let program = generator::program(Rng::derive(seed, client as u64 + 1), steps, shape);
            let user = users[client % users.len()].clone();
            clients.spawn(clients::run(Arc::clone(&shared), client, user, program));
        }
        let (done, finished) = tokio::sync::oneshot::channel::<()>();
        let mut panics = Vec::new();
        let joined = async {
            while let Some(result) = clients.join_next().await {
                if let Err(error) = result {
                    panics.push(format!("a client task failed: {error}"));
                }
            }
            let _ = done.send(());
        };
        let pauses = faults::disturb_nodes(
            &target.nodes,
            Rng::derive(seed, 0xFA17),
            target.timeout,
            target.restarts,
            &faults,
            async {
                let _ = finished.await;
            },
        );
        tokio::join!(joined, pauses);
        target.injector.clear();
        if !target.nodes.is_empty() {
            // Requests sent to a paused server land after its resume.
            tokio::time::sleep(target.timeout).await;
        }
        let (events, ids) = shared.recorder.finish();
        let lossy = faults.restarts.load(Ordering::SeqCst) > 0;
        let findings = checker::check(&events, &ids, &users, &probe, target.staleness, lossy).await;
        report.histories += 1;
        report.operations += events.len();
        for event in &events {
            match event.outcome {
                model::Outcome::Ok => report.acknowledged += 1,
                model::Outcome::Gone => report.refused += 1,
                _ => report.unknown += 1,
            }
        }
        report.store_faults += faults.store.load(Ordering::SeqCst);
        report.pauses += faults.pauses.load(Ordering::SeqCst);
        report.restarts += faults.restarts.load(Ordering::SeqCst);
        report.lost_to_restarts += findings.lost_to_restarts;
        report.sessions_checked += findings.sessions_checked;
        report.adds_checked += findings.adds_checked;
        report.max_stale = report.max_stale.max(findings.max_stale);
        report.anomalies.extend(panics);
        report.anomalies.extend(
            findings
                .anomalies
                .into_iter()
                .map(|a| format!("history {history} (seed {seed}): {a}")),
        );
    }
    report.elapsed = start.elapsed();
    report
}
