//! Redis Cluster failover under load: a master is SIGKILLed while many
//! tasks add unique items to carts with `Session::update`; its replica is
//! promoted, and sessions keep working.
//!
//! The fixture ([`ReplicatedCluster`], here because only this test needs
//! it) is 3 masters + 3 replicas on loopback (`--cluster-replicas 1`) with
//! `cluster-node-timeout 1000`.
//!
//! What is checked: every operation is bounded by `tokio::time::timeout`
//! and none outlives it (in-flight operations end with a typed error
//! instead); writes to the killed master's slots work again after the
//! promotion; and every acknowledged item is still in its cart, except
//! those inside Redis's asynchronous replication window: a write the
//! master acknowledged but had not yet sent to its replica when it died.
//! That window is at most one acknowledged write per writer on the killed
//! master, so the test allows at most that many losses and reports the
//! count (on loopback it is normally 0).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use offstate_core::{SessionId, Sessions};
use offstate_redis::{ClusterMode, RedisConfig, RedisStore};
use offstate_testing::process::{ServerProcess, find_program, free_port, run_command};
use tokio::sync::Mutex;

const NODE_TIMEOUT_MS: u64 = 1000;
/// The bound on every single operation; none may outlive it.
const OP_BOUND: Duration = Duration::from_secs(10);
const SESSIONS: usize = 24;
const TASKS: usize = 24;

/// 3 masters + 3 replicas, each a `redis-server` on a free loopback port.
struct ReplicatedCluster {
    nodes: Vec<Option<ServerProcess>>,
    ports: Vec<u16>,
    cli: PathBuf,
}

impl ReplicatedCluster {
    fn start() -> Self {
        let server = find_program(
            "redis-server",
            "OFFSTATE_REDIS_SERVER",
            &[PathBuf::from("/usr/bin/redis-server")],
        )
        .unwrap_or_else(|e| panic!("cannot start the failover cluster: {e}"));
        let cli = find_program(
            "redis-cli",
            "OFFSTATE_REDIS_CLI",
            &[PathBuf::from("/usr/bin/redis-cli")],
        )
        .unwrap_or_else(|e| panic!("cannot start the failover cluster: {e}"));
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..6 {
            let port = cluster_port(&ports);
            let args: Vec<String> = [
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                &NODE_TIMEOUT_MS.to_string(),
                // A replica on a busy machine may look stale; let it take
                // over anyway, as the test is about what the client sees.
                "--cluster-replica-validity-factor",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            let mut process = ServerProcess::spawn("redis-failover", &server, &args).unwrap();
            process
                .wait_for_port(
                    SocketAddr::from(([127, 0, 0, 1], port)),
                    Duration::from_secs(15),
                )
                .unwrap();
            nodes.push(Some(process));
            ports.push(port);
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend([
            "--cluster-replicas".into(),
            "1".into(),
            "--cluster-yes".into(),
        ]);
        run_command(&cli, &create).unwrap();
        let cluster = Self { nodes, ports, cli };
        cluster.wait_until(|nodes| {
            let masters = nodes.iter().filter(|n| n.master && !n.failed).count();
            let replicas = nodes.iter().filter(|n| !n.master && !n.failed).count();
            masters == 3 && replicas == 3
        });
        cluster.wait_for_replication();
        cluster
    }

    /// Waits until every replica has finished its initial sync, so a
    /// failover has something to promote.
    fn wait_for_replication(&self) {
        let start = Instant::now();
        loop {
            let synced = self.ports.iter().all(|port| {
                let Ok(info) = self.cli(*port, &["INFO", "replication"]) else {
                    return false;
                };
                let replica = info.lines().any(|l| l.trim() == "role:slave");
                !replica || info.lines().any(|l| l.trim() == "master_link_status:up")
            });
            if synced {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the replicas did not finish their initial sync"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn cli(&self, port: u16, args: &[&str]) -> Result<String, String> {
        let mut all = vec![
            "-h".to_owned(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_command(&self.cli, &all).map_err(|e| e.to_string())
    }

    /// The cluster as some live node sees it.
    fn view(&self) -> Vec<Node> {
        for (i, port) in self.ports.iter().enumerate() {
            if self.nodes[i].is_none() {
                continue;
            }
            let Ok(info) = self.cli(*port, &["CLUSTER", "INFO"]) else {
                continue;
            };
            if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                continue;
            }
            if let Ok(text) = self.cli(*port, &["CLUSTER", "NODES"]) {
                return parse_nodes(&text);
            }
        }
        Vec::new()
    }

    fn wait_until(&self, done: impl Fn(&[Node]) -> bool) {
        let start = Instant::now();
        loop {
            let view = self.view();
            if !view.is_empty() && done(&view) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the cluster did not reach the expected state: {view:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn config(&self) -> RedisConfig {
        RedisConfig::with_urls(self.ports.iter().map(|p| format!("redis://127.0.0.1:{p}")))
            .with_cluster_mode(ClusterMode::Cluster)
            // Short enough to see typed timeouts during the promotion, long
            // enough that a busy 2-core machine (six servers syncing) does
            // not time out the set-up.
            .with_command_timeout(Duration::from_millis(2000))
            .with_connect_timeout(Duration::from_millis(2000))
    }

    fn slot(&self, key: &str) -> u16 {
        self.cli(self.ports[0], &["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// SIGKILLs the node on `port`.
    fn kill(&mut self, port: u16) {
        let i = self.ports.iter().position(|p| *p == port).unwrap();
        if let Some(mut node) = self.nodes[i].take() {
            node.kill();
        }
    }
}

#[derive(Debug, Clone)]
struct Node {
    port: u16,
    master: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

fn parse_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let port = fields
                .get(1)?
                .split('@')
                .next()?
                .rsplit(':')
                .next()?
                .parse()
                .ok()?;
            let flags = fields.get(2)?;
            let slots = fields
                .iter()
                .skip(8)
                .filter_map(|range| {
                    let mut ends = range.split('-');
                    let lo = ends.next()?.parse().ok()?;
                    let hi = ends.next().map_or(Some(lo), |h| h.parse().ok())?;
                    Some((lo, hi))
                })
                .collect();
            Some(Node {
                port,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

fn cluster_port(taken: &[u16]) -> u16 {
    for _ in 0..100 {
        let port = free_port().unwrap();
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    /// Items acknowledged (save returned Ok), per session.
    acked: HashMap<usize, BTreeSet<u64>>,
    /// Operations that failed with a typed error, after the kill.
    failed_after_kill: u64,
    /// Operations that failed before the kill.
    failed_before_kill: u64,
    /// First successful write to an affected session after the kill.
    first_affected_success: Option<Instant>,
    /// Successful writes to affected sessions after the kill.
    affected_successes_after_kill: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_survive_a_master_failover_under_load() {
    let mut cluster = tokio::task::spawn_blocking(ReplicatedCluster::start)
        .await
        .unwrap();
    let store = RedisStore::connect(cluster.config()).await.unwrap();
    let sessions = Sessions::new(store).with_max_attempts(64);

    // Sessions, and which master serves each.
    let view = cluster.view();
    let victim = view
        .iter()
        .find(|n| n.master && !n.slots.is_empty())
        .unwrap()
        .clone();
    let mut ids = Vec::new();
    let mut affected = Vec::new();
    while ids.len() < SESSIONS {
        let session = sessions.new_session();
        session.insert("cart", &Vec::<u64>::new()).await.unwrap();
        session.save().await.unwrap();
        let id = session.id().unwrap();
        let slot = cluster.slot(id.key().as_str());
        let on_victim = victim
            .slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot));
        // Half on the victim, half elsewhere.
        let victims = affected.iter().filter(|a| **a).count();
        if on_victim && victims >= SESSIONS / 2 || !on_victim && ids.len() - victims >= SESSIONS / 2
        {
            continue;
        }
        affected.push(on_victim);
        ids.push(id);
    }
    let ids: Arc<Vec<SessionId>> = Arc::new(ids);
    let affected: Arc<Vec<bool>> = Arc::new(affected);

    let tally = Arc::new(Mutex::new(Tally::default()));
    let next_item = Arc::new(AtomicU64::new(1));
    let killed_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let stop_at = Arc::new(std::sync::Mutex::new(
        Instant::now() + Duration::from_secs(60),
    ));
    let outliving = Arc::new(AtomicU64::new(0));

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let sessions = sessions.clone();
        let ids = Arc::clone(&ids);
        let affected = Arc::clone(&affected);
        let tally = Arc::clone(&tally);
        let next_item = Arc::clone(&next_item);
        let killed_at = Arc::clone(&killed_at);
        let stop_at = Arc::clone(&stop_at);
        let outliving = Arc::clone(&outliving);
        tasks.push(tokio::spawn(async move {
            // Bounded in count and in time.
            for round in 0..5_000usize {
                if Instant::now() >= *stop_at.lock().unwrap() {
                    break;
                }
                let which = (t + round * TASKS) % ids.len();
                let id = ids[which].clone();
                let item = next_item.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let op = async {
                    let Some(session) = sessions.load(&id).await? else {
                        return Err(offstate_core::SessionError::Gone);
                    };
                    session
                        .update("cart", move |cart: Option<Vec<u64>>| {
                            let mut cart = cart.unwrap_or_default();
                            cart.push(item);
                            Some(cart)
                        })
                        .await?;
                    session.save().await
                };
                let result = tokio::time::timeout(OP_BOUND, op).await;
                let kill = *killed_at.lock().unwrap();
                let mut tally = tally.lock().await;
                match result {
                    Err(_) => {
                        outliving.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Ok(())) => {
                        tally.acked.entry(which).or_default().insert(item);
                        if let Some(kill) = kill
                            && affected[which]
                            && started >= kill
                        {
                            tally.affected_successes_after_kill += 1;
                            let now = Instant::now();
                            if tally.first_affected_success.is_none_or(|t| now < t) {
                                tally.first_affected_success = Some(now);
                            }
                        }
                    }
                    Ok(Err(error)) => {
                        // A typed error: outage, retries exhausted, ...
                        assert!(
                            !matches!(error, offstate_core::SessionError::Gone),
                            "a session vanished: {error}"
                        );
                        if kill.is_some() {
                            tally.failed_after_kill += 1;
                        } else {
                            tally.failed_before_kill += 1;
                        }
                    }
                }
                drop(tally);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }));
    }

    // Let the load run, then kill the victim master.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked_before_kill: usize = tally.lock().await.acked.values().map(BTreeSet::len).sum();
    let kill_time = Instant::now();
    *killed_at.lock().unwrap() = Some(kill_time);
    cluster.kill(victim.port);

    // Wait for a replica to take over the victim's slots.
    let cluster = tokio::task::spawn_blocking(move || {
        let slots = victim.slots.clone();
        cluster.wait_until(|nodes| {
            nodes
                .iter()
                .any(|n| n.master && !n.failed && n.port != victim.port && n.slots == slots)
        });
        cluster
    })
    .await
    .unwrap();
    let promoted_after = kill_time.elapsed();

    // Keep the load on until affected sessions have been written for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let done = tally.lock().await.affected_successes_after_kill >= 50;
        if done || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *stop_at.lock().unwrap() = Instant::now();
    for task in tasks {
        task.await.unwrap();
    }

    // Every acknowledged item must be in its cart, minus the replication window.
    let tally = tally.lock().await;
    let mut lost = 0usize;
    let mut acked_total = 0usize;
    for (which, items) in &tally.acked {
        let session = tokio::time::timeout(OP_BOUND, sessions.load(&ids[*which]))
            .await
            .expect("a load after the failover outlived its bound")
            .expect("loads work after the failover")
            .expect("the session survived the failover");
        let cart: Vec<u64> = session.get("cart").await.unwrap().unwrap_or_default();
        let cart: BTreeSet<u64> = cart.into_iter().collect();
        acked_total += items.len();
        lost += items.difference(&cart).count();
    }
    let first_write = tally
        .first_affected_success
        .map(|t| t.duration_since(kill_time));
    println!(
        "failover figures: replica promoted after {promoted_after:?}; first successful write \
         to an affected slot after {first_write:?}; operations failed during failover: {}; \
         failed before the kill: {}; acknowledged updates: {acked_total} ({acked_before_kill} \
         before the kill); lost: {lost}; operations outliving their {OP_BOUND:?} bound: {}",
        tally.failed_after_kill,
        tally.failed_before_kill,
        outliving.load(Ordering::Relaxed),
    );
    assert_eq!(
        outliving.load(Ordering::Relaxed),
        0,
        "an operation hung past its bound"
    );
    assert!(
        tally.affected_successes_after_kill > 0,
        "writes to the killed master's slots never worked again"
    );
    let writers_on_victim = TASKS;
    assert!(
        lost <= writers_on_victim,
        "{lost} acknowledged updates lost; the replication window allows at most one per writer ({writers_on_victim})"
    );
    assert!(acked_total > acked_before_kill, "the load kept going");
    drop(cluster);
}
