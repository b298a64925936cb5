//! Redis fixtures: a standalone server (plain, password, ACL user or TLS)
//! or a Redis Cluster (masters, and replicas if asked), from the
//! environment, containers or local processes, with a ready [`RedisStore`].
//!
//! Why this file is long: standalone, TLS, ACL and cluster set-ups share one
//! builder and one guard type, so a user learns one fixture; the process and
//! container halves of each set-up sit next to each other on purpose.
//!
//! ```no_run
//! # async fn demo() -> Result<(), offstate_testing::FixtureError> {
//! let redis = offstate_testing::redis().await?;
//! let cluster = offstate_testing::redis_cluster()
//!     .with_replicas(1)
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! Processes run `redis-server` from `PATH` (or `OFFSTATE_REDIS_SERVER`) on
//! free loopback ports. Containers run the image of `OFFSTATE_REDIS_IMAGE`
//! (default `redis:7`): a standalone one is reached through a port
//! published on 127.0.0.1 (or at its address on a test network); cluster
//! nodes announce their own addresses, so they run on the host's network,
//! listening on loopback as processes do (Linux only). No server keeps
//! data on disk.

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use offstate_core::conformance::Harness;
use offstate_core::{SessionId, SessionKey};
use offstate_redis::redis::{Cmd, FromRedisValue, cmd};
use offstate_redis::{ClusterMode, RedisConfig, RedisConnection, RedisStore};

use crate::container::{ContainerSpec, Reach};
use crate::images;
use crate::node::{Node, Readiness};
use crate::process::{find_program, free_port, reserve_port};
use crate::source::{
    FixtureError, Options, Shared, Source, env_list, fixture_builder, required_env,
};
use crate::tls::{self, Tls};

/// A standalone server's URL (`redis://[user:pass@]host:port`).
pub const REDIS_URL_ENV: &str = "OFFSTATE_TEST_REDIS_URL";
/// A cluster's seed URLs, comma-separated.
pub const REDIS_CLUSTER_URLS_ENV: &str = "OFFSTATE_TEST_REDIS_CLUSTER_URLS";
/// The `redis-server` program (default: on `PATH`).
pub const REDIS_SERVER_ENV: &str = "OFFSTATE_REDIS_SERVER";

const PORT: u16 = 6379;
/// How long servers and a forming cluster may take.
const READY: Duration = Duration::from_secs(60);
/// The timeouts of the fixture's own connections to single nodes: short,
/// so that asking a killed node fails fast.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a test server authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RedisAuth {
    /// No authentication.
    None,
    /// `requirepass`: AUTH with a password only.
    Password(String),
    /// An ACL user (the default user is disabled).
    User {
        /// The user name.
        name: String,
        /// Its password.
        password: String,
    },
}

/// A standalone Redis, from the usual source (see [`crate::source`]).
pub fn redis() -> RedisBuilder {
    RedisBuilder::new(0)
}

/// A Redis Cluster of three masters (no replicas unless
/// [`with_replicas`](RedisBuilder::with_replicas)), from the usual source.
pub fn redis_cluster() -> RedisBuilder {
    RedisBuilder::new(3)
}

/// What Redis to start. `.await` it (or call [`start`](Self::start)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct RedisBuilder {
    /// 0 for a standalone server.
    masters: usize,
    replicas: usize,
    auth: RedisAuth,
    tls: bool,
    node_timeout: Duration,
    options: Options,
}

impl RedisBuilder {
    fn new(masters: usize) -> Self {
        Self {
            masters,
            replicas: 0,
            auth: RedisAuth::None,
            tls: false,
            node_timeout: Duration::from_secs(5),
            options: Options::default(),
        }
    }

    /// Requires AUTH with `password` (`requirepass`).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.auth = RedisAuth::Password(password.into());
        self
    }

    /// Makes the ACL user `name` the only usable account.
    pub fn with_user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = RedisAuth::User {
            name: name.into(),
            password: password.into(),
        };
        self
    }

    /// Serves TLS only (`rediss://`), with a CA generated for the fixture
    /// that its stores trust. Standalone servers only.
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Gives every cluster master `n` replicas, which take over when their
    /// master dies. Cluster only.
    pub fn with_replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// How long cluster nodes wait before they count a silent node as
    /// failed (`cluster-node-timeout`; 5 s by default). Cluster only.
    pub fn with_node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Starts (or, when [`shared`](Self::shared), reuses) the servers and
    /// connects a store.
    ///
    /// # Errors
    ///
    /// [`FixtureError`] saying what is missing or what failed.
    pub async fn start(self) -> Result<Redis, FixtureError> {
        static SHARED: Shared<RedisServers> = Shared::new();
        let var = if self.masters == 0 {
            REDIS_URL_ENV
        } else {
            REDIS_CLUSTER_URLS_ENV
        };
        let usual = (var, images::redis());
        let start = |source| self.servers(source);
        let (servers, _) = SHARED.servers(&self, &self.options, usual, start).await?;
        let store = connect(servers.config.clone()).await?;
        Ok(Redis { store, servers })
    }

    fn nodes(&self) -> usize {
        if self.masters == 0 {
            1
        } else {
            self.masters * (1 + self.replicas)
        }
    }

    async fn servers(&self, source: Source) -> Result<RedisServers, FixtureError> {
        if source == Source::Environment {
            return RedisServers::external(self.masters > 0);
        }
        if self.tls && self.masters > 0 {
            return Err(FixtureError::Unsupported {
                what: "run a TLS cluster on",
                from: source,
            });
        }
        let tls = self.tls.then(Tls::generate).transpose()?;
        let mut nodes = Vec::new();
        for _ in 0..self.nodes() {
            let node = match source {
                Source::Container => self.container(tls.as_ref()).await?,
                _ => self.process(tls.as_ref()).await?,
            };
            nodes.push(node);
        }
        let ca = tls.as_ref().map(|t| t.ca.clone());
        let servers = RedisServers {
            config: self.config(&nodes, ca.as_deref()),
            nodes,
            auth: self.auth.clone(),
            ca,
            cluster: self.masters > 0,
            _tls: tls,
        };
        servers.wait_serving().await?;
        if self.masters > 0 {
            servers.form_cluster(self.masters, self.replicas).await?;
        }
        Ok(servers)
    }

    fn config(&self, nodes: &[Node], ca: Option<&[u8]>) -> RedisConfig {
        let scheme = if self.tls { "rediss" } else { "redis" };
        let urls = nodes.iter().map(|n| format!("{scheme}://{}", n.address()));
        let mode = if self.masters == 0 {
            ClusterMode::Standalone
        } else {
            ClusterMode::Cluster
        };
        let config = with_auth(RedisConfig::with_urls(urls), &self.auth).with_cluster_mode(mode);
        match ca {
            Some(ca) => config.with_root_certificate_pem(ca.to_vec()),
            None => config,
        }
    }

    /// `redis-server` arguments for a server on `port`, with TLS files in
    /// `tls_dir`.
    fn args(&self, port: u16, loopback: bool, tls_dir: Option<&str>) -> Vec<String> {
        let mut args: Vec<String> = vec!["--save".into(), String::new()];
        args.extend(["--appendonly".into(), "no".into()]);
        if loopback {
            args.extend(["--bind".into(), "127.0.0.1".into()]);
        } else {
            // Clients come through Docker's proxy or network, not loopback.
            args.extend(["--protected-mode".into(), "no".into()]);
        }
        match tls_dir {
            Some(dir) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                format!("{dir}/{}", tls::CERT),
                "--tls-key-file".into(),
                format!("{dir}/{}", tls::KEY),
                "--tls-ca-cert-file".into(),
                format!("{dir}/{}", tls::CA),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port.to_string()]),
        }
        match &self.auth {
            RedisAuth::None => {}
            RedisAuth::Password(password) => {
                args.extend(["--requirepass".into(), password.clone()]);
            }
            RedisAuth::User { name, password } => args.extend([
                "--user".into(),
                "default".into(),
                "off".into(),
                "--user".into(),
                name.clone(),
                "on".into(),
                format!(">{password}"),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
            ]),
        }
        if self.masters > 0 {
            args.extend([
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                self.node_timeout.as_millis().to_string(),
                // A replica on a busy machine may look stale; let it take
                // over anyway: tests are about what clients see.
                "--cluster-replica-validity-factor".into(),
                "0".into(),
            ]);
        }
        args
    }

    fn readiness(&self) -> Readiness {
        // A TLS server does not answer plain text: connecting is all we can
        // ask here; `wait_serving` then pings it over TLS.
        let hello: &[u8] = if self.tls { b"" } else { b"PING\r\n" };
        Readiness {
            hello,
            within: READY,
        }
    }

    fn port(&self) -> Result<u16, FixtureError> {
        if self.masters == 0 {
            Ok(free_port()?)
        } else {
            cluster_port()
        }
    }

    async fn process(&self, tls: Option<&Tls>) -> Result<Node, FixtureError> {
        let program = find_program(
            "redis-server",
            REDIS_SERVER_ENV,
            &[PathBuf::from("/usr/bin/redis-server")],
        )?;
        let dir = tls.map(|t| t.dir().display().to_string());
        let args = |port| self.args(port, true, dir.as_deref());
        Node::spawn("redis", program, args, || self.port(), self.readiness()).await
    }

    async fn container(&self, tls: Option<&Tls>) -> Result<Node, FixtureError> {
        let dir = tls.map(|_| tls::CONTAINER_DIR);
        let mut spec = if self.masters == 0 {
            ContainerSpec::new(images::redis(), PORT)
                .with_args(self.args(PORT, false, dir))
                .with_reach(self.options.reach())
        } else {
            let port = self.port()?;
            ContainerSpec::new(images::redis(), port)
                .with_args(self.args(port, true, dir))
                .with_reach(Reach::HostNetwork)
        };
        for (name, contents) in tls.iter().flat_map(|tls| tls.files()) {
            spec = spec.with_file(format!("{}/{name}", tls::CONTAINER_DIR), contents.to_vec());
        }
        Node::run(spec, self.readiness()).await
    }
}

fixture_builder!(RedisBuilder => Redis);

/// The servers of a fixture, and how to reach each one.
#[derive(Debug)]
struct RedisServers {
    config: RedisConfig,
    nodes: Vec<Node>,
    auth: RedisAuth,
    ca: Option<Vec<u8>>,
    cluster: bool,
    // After the nodes: the files go once the servers are gone.
    _tls: Option<Tls>,
}

impl RedisServers {
    fn external(cluster: bool) -> Result<Self, FixtureError> {
        let urls = if cluster {
            env_list(REDIS_CLUSTER_URLS_ENV)?
        } else {
            vec![required_env(REDIS_URL_ENV)?]
        };
        let mode = if cluster {
            ClusterMode::Cluster
        } else {
            ClusterMode::Standalone
        };
        Ok(Self {
            nodes: urls
                .iter()
                .map(|url| Node::external(address_of(url)))
                .collect(),
            config: RedisConfig::with_urls(urls).with_cluster_mode(mode),
            auth: RedisAuth::None,
            ca: None,
            cluster,
            _tls: None,
        })
    }

    /// A configuration for node `i` alone, with short timeouts.
    fn node_config(&self, i: usize) -> Option<RedisConfig> {
        let url = self.config.urls().get(i)?;
        let config = with_auth(RedisConfig::new(url.clone()), &self.auth)
            .with_cluster_mode(ClusterMode::Standalone)
            .with_connect_timeout(NODE_TIMEOUT)
            .with_command_timeout(NODE_TIMEOUT);
        Some(match &self.ca {
            Some(ca) => config.with_root_certificate_pem(ca.clone()),
            None => config,
        })
    }

    async fn node_connection(&self, i: usize) -> Result<RedisConnection, FixtureError> {
        let Some(config) = self.node_config(i) else {
            return Err(FixtureError::store(
                "a connection",
                format!("node {i}"),
                "no such node",
            ));
        };
        let target = config.urls().join(",");
        RedisConnection::connect(&config)
            .await
            .map_err(|e| FixtureError::store("a connection", target, e))
    }

    /// Waits until every node answers PING (over TLS, with credentials).
    async fn wait_serving(&self) -> Result<(), FixtureError> {
        let start = Instant::now();
        for i in 0..self.nodes.len() {
            loop {
                let answer = match self.node_connection(i).await {
                    Ok(conn) => conn
                        .query::<String>(&cmd("PING"))
                        .await
                        .map_err(|e| FixtureError::store("PING", self.config.urls()[i].clone(), e)),
                    Err(error) => Err(error),
                };
                match answer {
                    Ok(_) => break,
                    Err(error) if start.elapsed() > READY => return Err(error),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Ok(())
    }

    /// Joins the nodes, gives the masters a share of the slots each, makes
    /// the others their replicas, and waits until every node reports the
    /// cluster healthy and every replica is in sync.
    async fn form_cluster(&self, masters: usize, replicas: usize) -> Result<(), FixtureError> {
        let target = self.config.urls().join(",");
        let fail = |what: &'static str| {
            let target = target.clone();
            move |e: offstate_core::StoreError| FixtureError::store(what, target, e)
        };
        let mut conns = Vec::new();
        for i in 0..self.nodes.len() {
            conns.push(self.node_connection(i).await?);
        }
        let Some((first, _)) = conns.split_first() else {
            return Ok(());
        };
        for node in self.nodes.iter().skip(1) {
            let (host, port) = split_address(node.address());
            first
                .query::<()>(cmd("CLUSTER").arg("MEET").arg(host).arg(port))
                .await
                .map_err(fail("CLUSTER MEET"))?;
        }
        let count = u32::try_from(masters).unwrap_or(1).max(1);
        let per = 16_384 / count;
        for (i, node) in (0u32..).zip(conns.iter().take(masters)) {
            let lo = i * per;
            let hi = if i + 1 == count { 16_383 } else { lo + per - 1 };
            node.query::<()>(cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(lo).arg(hi))
                .await
                .map_err(fail("CLUSTER ADDSLOTSRANGE"))?;
        }
        let total = conns.len();
        self.wait_for(&conns, |info, _| {
            has(info, &format!("cluster_known_nodes:{total}"))
        })
        .await?;
        for (r, replica) in conns.iter().enumerate().skip(masters) {
            let master = &conns[(r - masters) / replicas.max(1)];
            let id: String = master
                .query(cmd("CLUSTER").arg("MYID"))
                .await
                .map_err(fail("CLUSTER MYID"))?;
            replica
                .query::<()>(cmd("CLUSTER").arg("REPLICATE").arg(id))
                .await
                .map_err(fail("CLUSTER REPLICATE"))?;
        }
        self.wait_for(&conns, |info, replication| {
            has(info, "cluster_state:ok")
                && has(info, "cluster_slots_ok:16384")
                && (!has(replication, "role:slave") || has(replication, "master_link_status:up"))
        })
        .await
    }

    /// Waits until `healthy(CLUSTER INFO, INFO replication)` holds on
    /// every node.
    async fn wait_for(
        &self,
        conns: &[RedisConnection],
        healthy: impl Fn(&str, &str) -> bool,
    ) -> Result<(), FixtureError> {
        let start = Instant::now();
        for conn in conns {
            loop {
                let info: String = conn
                    .query(cmd("CLUSTER").arg("INFO"))
                    .await
                    .unwrap_or_default();
                let replication: String = conn
                    .query(cmd("INFO").arg("replication"))
                    .await
                    .unwrap_or_default();
                if healthy(&info, &replication) {
                    break;
                }
                if start.elapsed() > READY {
                    return Err(FixtureError::store(
                        "a cluster",
                        self.config.urls().join(","),
                        format!("it did not form: {info}{replication}"),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }
}

/// Whether an INFO text has this line.
fn has(info: &str, line: &str) -> bool {
    info.lines().any(|l| l.trim() == line)
}

/// A cluster node as a live node sees it (a line of `CLUSTER NODES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNode {
    /// Where it answers (`host:port`).
    pub address: String,
    /// Whether it is a master.
    pub master: bool,
    /// Whether the cluster counts it as failed.
    pub failed: bool,
    /// The slot ranges it serves (inclusive).
    pub slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    /// Whether it serves `slot`.
    #[must_use]
    pub fn serves(&self, slot: u16) -> bool {
        self.slots
            .iter()
            .any(|(lo, hi)| (*lo..=*hi).contains(&slot))
    }
}

/// Reads `CLUSTER NODES`: `id addr:port@bus flags master ping pong epoch
/// link slot-ranges...`.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields.get(1)?.split('@').next()?.to_owned();
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
            Some(ClusterNode {
                address,
                master: flags.contains("master"),
                failed: flags.contains("fail"),
                slots,
            })
        })
        .collect()
}

/// A Redis server (or cluster) and a ready store on it. Dereferences to
/// the store; dropping it stops the servers it started (unless another
/// fixture shares them).
#[derive(Debug)]
pub struct Redis {
    // First: the store's connections close before the servers go.
    store: RedisStore,
    servers: Arc<RedisServers>,
}

impl Redis {
    /// The ready store.
    #[must_use]
    pub fn store(&self) -> &RedisStore {
        &self.store
    }

    /// The store configuration (add timeouts or a clock, then
    /// [`connect_with`](Self::connect_with)).
    #[must_use]
    pub fn config(&self) -> &RedisConfig {
        &self.servers.config
    }

    /// A new store on these servers with `config` (usually
    /// [`config`](Self::config) with changes).
    ///
    /// # Errors
    ///
    /// [`FixtureError::Store`] when it cannot connect.
    pub async fn connect_with(&self, config: RedisConfig) -> Result<RedisStore, FixtureError> {
        connect(config).await
    }

    /// The (first) server URL (credentials only where the environment's
    /// URL has them).
    #[must_use]
    pub fn url(&self) -> &str {
        self.urls().first().map_or("", String::as_str)
    }

    /// Every server URL (one per node).
    #[must_use]
    pub fn urls(&self) -> &[String] {
        self.servers.config.urls()
    }

    /// Where the servers come from.
    #[must_use]
    pub fn source(&self) -> Source {
        self.servers
            .nodes
            .first()
            .map_or(Source::Environment, Node::source)
    }

    /// The servers, one per node (masters first, then their replicas).
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.servers.nodes
    }

    /// Server `i`, to make faults on it.
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    #[must_use]
    pub fn node(&self, i: usize) -> &Node {
        &self.servers.nodes[i]
    }

    /// A connection to server `i` alone (with its credentials; 2 s
    /// timeouts).
    ///
    /// # Errors
    ///
    /// [`FixtureError::Store`] when it cannot connect.
    pub async fn node_connection(&self, i: usize) -> Result<RedisConnection, FixtureError> {
        self.servers.node_connection(i).await
    }

    /// What MONITOR on server `i` saw while `work` ran: every command line
    /// (`<time> [<db> <client>] "COMMAND" "arg" ...`; commands run by
    /// scripts show `lua]` as their client), up to a sentinel `ECHO` sent
    /// after `work`. Use a server of the test's own: MONITOR sees every
    /// client.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Store`] when MONITOR cannot be started, the sentinel
    /// cannot be sent, or no line comes for 10 s.
    pub async fn monitor(
        &self,
        i: usize,
        work: impl Future<Output = ()>,
    ) -> Result<Vec<String>, FixtureError> {
        use futures_util::StreamExt as _;
        let url = self.urls()[i].clone();
        let failed = |what| {
            let url = url.clone();
            move |e: offstate_redis::redis::RedisError| FixtureError::store(what, url, e)
        };
        let client =
            offstate_redis::redis::Client::open(url.as_str()).map_err(failed("MONITOR"))?;
        let mut monitor = client
            .get_async_monitor()
            .await
            .map_err(failed("MONITOR"))?;
        let sentinel = format!("sentinel-{}", SessionId::generate().key().as_str());
        work.await;
        let node = self.node_connection(i).await?;
        let _: String = node
            .query(cmd("ECHO").arg(&sentinel))
            .await
            .map_err(|e| FixtureError::store("ECHO", url.clone(), e))?;
        let mut lines = monitor.on_message::<String>();
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
                .await
                .ok()
                .flatten()
                .ok_or_else(|| FixtureError::store("MONITOR", url.clone(), "no line for 10 s"))?;
            if line.contains(&sentinel) {
                return Ok(seen);
            }
            seen.push(line);
        }
    }

    /// Runs a command through the store's connection (routed by key on a
    /// cluster).
    ///
    /// # Errors
    ///
    /// The store's error, as a [`FixtureError::Store`].
    pub async fn query<T: FromRedisValue>(&self, command: &Cmd) -> Result<T, FixtureError> {
        self.store
            .connection()
            .query(command)
            .await
            .map_err(|e| FixtureError::store("a command", self.url().to_owned(), e))
    }

    /// The cluster as the first node that answers and counts it healthy
    /// sees it; empty when none does.
    pub async fn cluster_nodes(&self) -> Vec<ClusterNode> {
        for i in 0..self.servers.nodes.len() {
            let Ok(conn) = self.node_connection(i).await else {
                continue;
            };
            let info: String = conn
                .query(cmd("CLUSTER").arg("INFO"))
                .await
                .unwrap_or_default();
            if !has(&info, "cluster_state:ok") {
                continue;
            }
            if let Ok(text) = conn.query::<String>(cmd("CLUSTER").arg("NODES")).await {
                return parse_cluster_nodes(&text);
            }
        }
        Vec::new()
    }

    /// The cluster slot of `key`.
    ///
    /// # Errors
    ///
    /// When the cluster cannot be asked.
    pub async fn slot(&self, key: &str) -> Result<u16, FixtureError> {
        self.query(cmd("CLUSTER").arg("KEYSLOT").arg(key)).await
    }

    /// Which server (index into [`nodes`](Self::nodes)) is at `address`.
    #[must_use]
    pub fn node_at(&self, address: &str) -> Option<usize> {
        self.servers
            .nodes
            .iter()
            .position(|n| n.address() == address)
    }

    /// Which server (index into [`nodes`](Self::nodes)) is the master
    /// serving `key`.
    ///
    /// # Errors
    ///
    /// When the cluster cannot be asked or no known server serves it.
    pub async fn node_serving(&self, key: &str) -> Result<usize, FixtureError> {
        let slot = self.slot(key).await?;
        self.cluster_nodes()
            .await
            .iter()
            .find(|n| n.master && !n.failed && n.serves(slot))
            .and_then(|n| self.node_at(&n.address))
            .ok_or_else(|| FixtureError::store("a lookup", key.to_owned(), "no node serves it"))
    }

    /// Whether the servers form a cluster.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.servers.cluster
    }
}

impl Deref for Redis {
    type Target = RedisStore;

    fn deref(&self) -> &RedisStore {
        &self.store
    }
}

impl Harness for Redis {
    type Store = RedisStore;

    #[allow(clippy::panic)] // The suite requires a harness to panic loudly on set-up failure.
    async fn store(&self) -> RedisStore {
        match connect(self.config().clone()).await {
            Ok(store) => store,
            Err(error) => panic!("{error}"),
        }
    }

    async fn corrupt(&self, key: &SessionKey) -> bool {
        // The first item's length becomes "x": nothing after it parses.
        let stored = self.store.store_key(key);
        self.query::<()>(cmd("SETRANGE").arg(stored).arg(0).arg("x"))
            .await
            .is_ok()
    }

    fn ttl_granularity(&self) -> Duration {
        // PEXPIREAT is exact to the millisecond; allow for the expiry cycle.
        Duration::from_millis(200)
    }
}

fn with_auth(config: RedisConfig, auth: &RedisAuth) -> RedisConfig {
    match auth {
        RedisAuth::None => config,
        RedisAuth::Password(p) => config.with_password(p.clone()),
        RedisAuth::User { name, password } => config.with_user(name.clone(), password.clone()),
    }
}

async fn connect(config: RedisConfig) -> Result<RedisStore, FixtureError> {
    let target = config.urls().join(",");
    RedisStore::connect(config)
        .await
        .map_err(|e| FixtureError::store("a RedisStore", target, e))
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port() -> Result<u16, FixtureError> {
    for _ in 0..100 {
        let port = free_port()?;
        if port <= 55_000
            && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok()
            && reserve_port(port + 10_000)
        {
            return Ok(port);
        }
    }
    Err(FixtureError::store(
        "a cluster node",
        "127.0.0.1",
        "no free port pair (port, port + 10000)",
    ))
}

/// `redis://[user:pass@]host:port[/db]` → `host:port`.
fn address_of(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let rest = rest.split('/').next().unwrap_or(rest);
    if rest.contains(':') {
        rest.to_owned()
    } else {
        format!("{rest}:{PORT}")
    }
}

/// `host:port` → (host, port).
fn split_address(address: &str) -> (&str, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (host, port.parse().unwrap_or(PORT)),
        None => (address, PORT),
    }
}

/// The command of a MONITOR line (see [`Redis::monitor`]), upper case;
/// empty for a line that is not a command.
#[must_use]
pub fn monitored_command(line: &str) -> String {
    line.split("] \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_ascii_uppercase()
}

/// Whether a MONITOR line is a command a script ran (not a round trip).
#[must_use]
pub fn monitored_from_script(line: &str) -> bool {
    line.contains(" lua] ")
}

#[cfg(test)]
mod tests {
    use super::{ClusterNode, address_of, parse_cluster_nodes, split_address};

    #[test]
    fn urls_give_node_addresses_with_and_without_credentials() {
        assert_eq!(address_of("redis://172.17.0.2:6379"), "172.17.0.2:6379");
        assert_eq!(address_of("rediss://u:p@h:7000/0"), "h:7000");
        assert_eq!(address_of("redis://h"), "h:6379");
        assert_eq!(split_address("127.0.0.1:7000"), ("127.0.0.1", 7000));
    }

    #[test]
    fn cluster_nodes_lines_give_roles_and_slots() {
        let text = "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460 7000\n\
                    b2 127.0.0.1:7001@17001 slave,fail a1 0 0 1 connected\n";
        assert_eq!(
            parse_cluster_nodes(text),
            vec![
                ClusterNode {
                    address: "127.0.0.1:7000".into(),
                    master: true,
                    failed: false,
                    slots: vec![(0, 5460), (7000, 7000)],
                },
                ClusterNode {
                    address: "127.0.0.1:7001".into(),
                    master: false,
                    failed: true,
                    slots: vec![],
                },
            ]
        );
    }
}
