//! Redis fixtures: a single `redis-server` (plain, password, ACL user or
//! TLS), a 3-master Redis Cluster, ready [`RedisStore`]s on them, a
//! `redis-cli` to poke at their data, and the conformance [`RedisHarness`].
//!
//! Servers are real processes on free loopback ports, started from
//! `redis-server` / `redis-cli` on `PATH` (or `OFFSTATE_REDIS_SERVER` /
//! `OFFSTATE_REDIS_CLI`). A test binary may share one server through the
//! `shared_*` functions: statics are never dropped, and the process
//! watchdog kills those servers when the test binary exits.
//!
//! Containers, or servers named by the environment, are in
//! [`crate::fixture::redis`], which uses these processes as its last resort.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use offstate_core::SessionKey;
use offstate_core::conformance::Harness;
use offstate_redis::{ClusterMode, RedisConfig, RedisStore};

use crate::process::{ServerError, ServerProcess, find_program, free_port, run_command};

const SERVER_ENV: &str = "OFFSTATE_REDIS_SERVER";
const CLI_ENV: &str = "OFFSTATE_REDIS_CLI";
const READY: Duration = Duration::from_secs(15);

fn redis_server() -> Result<PathBuf, ServerError> {
    find_program(
        "redis-server",
        SERVER_ENV,
        &[PathBuf::from("/usr/bin/redis-server")],
    )
}

fn redis_cli_program() -> Result<PathBuf, ServerError> {
    find_program("redis-cli", CLI_ENV, &[PathBuf::from("/usr/bin/redis-cli")])
}

/// How a test server authenticates clients.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// `redis-cli` pointed at one server, with its credentials and TLS flags.
#[derive(Debug, Clone)]
pub struct RedisCli {
    program: PathBuf,
    base: Vec<String>,
}

impl RedisCli {
    /// Runs `redis-cli <connection flags> <args>` and returns its output.
    ///
    /// # Errors
    ///
    /// [`ServerError::Setup`] when it cannot run or fails.
    pub fn run(&self, args: &[&str]) -> Result<String, ServerError> {
        let mut all = self.base.clone();
        all.extend(args.iter().map(|a| (*a).to_owned()));
        run_command(&self.program, &all)
    }
}

fn cli_base(port: u16, auth: &RedisAuth, tls: Option<&TlsFiles>, cluster: bool) -> Vec<String> {
    let mut base = vec![
        "-h".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
    ];
    if cluster {
        base.push("-c".into());
    }
    match auth {
        RedisAuth::None => {}
        RedisAuth::Password(p) => {
            base.extend(["-a".into(), p.clone(), "--no-auth-warning".into()]);
        }
        RedisAuth::User { name, password } => {
            base.extend([
                "--user".into(),
                name.clone(),
                "--pass".into(),
                password.clone(),
                "--no-auth-warning".into(),
            ]);
        }
    }
    if let Some(tls) = tls {
        base.extend([
            "--tls".into(),
            "--cacert".into(),
            tls.ca_cert.display().to_string(),
        ]);
    }
    base
}

/// Certificates for a TLS server: a fresh CA and a server certificate for
/// 127.0.0.1 and localhost, in a private folder removed on drop.
#[derive(Debug)]
struct TlsFiles {
    dir: PathBuf,
    ca_cert: PathBuf,
    ca_pem: Vec<u8>,
    cert: PathBuf,
    key: PathBuf,
}

impl TlsFiles {
    fn generate() -> Result<Self, ServerError> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let fail =
            |what: &str, e: &dyn std::fmt::Display| ServerError::Setup(format!("{what}: {e}"));
        let ca_key = KeyPair::generate().map_err(|e| fail("CA key", &e))?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(|e| fail("CA params", &e))?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "offstate test CA");
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(|e| fail("CA cert", &e))?;
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().map_err(|e| fail("server key", &e))?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .map_err(|e| fail("server params", &e))?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| fail("server cert", &e))?;

        let dir = unique_dir("redis-tls")?;
        let files = Self {
            ca_cert: dir.join("ca.pem"),
            ca_pem: ca_cert.pem().into_bytes(),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            dir,
        };
        let write = |path: &PathBuf, text: &[u8]| {
            std::fs::write(path, text).map_err(|e| fail(&format!("write {}", path.display()), &e))
        };
        write(&files.ca_cert, &files.ca_pem)?;
        write(&files.cert, cert.pem().as_bytes())?;
        write(&files.key, key.serialize_pem().as_bytes())?;
        Ok(files)
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unique_dir(name: &str) -> Result<PathBuf, ServerError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("offstate-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServerError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// One `redis-server` process on a free loopback port, without persistence.
#[derive(Debug)]
pub struct RedisServer {
    process: ServerProcess,
    port: u16,
    auth: RedisAuth,
    tls: Option<TlsFiles>,
    args: Vec<String>,
}

impl RedisServer {
    /// Starts a plain server with no authentication.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when `redis-server` is missing or does not start.
    pub fn start() -> Result<Self, ServerError> {
        Self::launch(RedisAuth::None, false)
    }

    /// Starts a server that requires AUTH with `password` (`requirepass`).
    ///
    /// # Errors
    ///
    /// [`ServerError`] when `redis-server` is missing or does not start.
    pub fn start_with_password(password: &str) -> Result<Self, ServerError> {
        Self::launch(RedisAuth::Password(password.to_owned()), false)
    }

    /// Starts a server whose only usable account is the ACL user `name`
    /// (the default user is disabled).
    ///
    /// # Errors
    ///
    /// [`ServerError`] when `redis-server` is missing or does not start.
    pub fn start_with_user(name: &str, password: &str) -> Result<Self, ServerError> {
        Self::launch(
            RedisAuth::User {
                name: name.to_owned(),
                password: password.to_owned(),
            },
            false,
        )
    }

    /// Starts a TLS-only server (`rediss://`) with a freshly generated CA.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when `redis-server` is missing, was built without
    /// TLS, or does not start.
    pub fn start_tls() -> Result<Self, ServerError> {
        Self::launch(RedisAuth::None, true)
    }

    fn launch(auth: RedisAuth, tls: bool) -> Result<Self, ServerError> {
        let program = redis_server()?;
        let port = free_port()?;
        let tls = if tls {
            Some(TlsFiles::generate()?)
        } else {
            None
        };
        let mut args = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
        ];
        match &tls {
            Some(files) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--tls-cert-file".into(),
                files.cert.display().to_string(),
                "--tls-key-file".into(),
                files.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                files.ca_cert.display().to_string(),
                "--tls-auth-clients".into(),
                "no".into(),
            ]),
            None => args.extend(["--port".into(), port.to_string()]),
        }
        match &auth {
            RedisAuth::None => {}
            RedisAuth::Password(p) => args.extend(["--requirepass".into(), p.clone()]),
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
        let process = spawn_ready(&program, &args, port)?;
        let server = Self {
            process,
            port,
            auth,
            tls,
            args,
        };
        server.wait_until_serving()?;
        Ok(server)
    }

    fn wait_until_serving(&self) -> Result<(), ServerError> {
        let start = Instant::now();
        loop {
            match self.cli(&["PING"]) {
                Ok(out) if out.trim() == "PONG" => return Ok(()),
                Ok(_) | Err(_) if start.elapsed() < READY => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(out) => {
                    return Err(ServerError::Setup(format!(
                        "redis-server answered PING with {out:?}"
                    )));
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// The server's port.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's URL, without credentials (`redis://` or `rediss://`).
    #[must_use]
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A standalone configuration for this server, with its credentials and
    /// (for TLS) its CA.
    #[must_use]
    pub fn config(&self) -> RedisConfig {
        let config = RedisConfig::new(self.url()).with_cluster_mode(ClusterMode::Standalone);
        let config = with_auth(config, &self.auth);
        match &self.tls {
            Some(files) => config.with_root_certificate_pem(files.ca_pem.clone()),
            None => config,
        }
    }

    /// A ready store on this server.
    ///
    /// # Errors
    ///
    /// [`ServerError::Setup`] when the store cannot be built.
    pub async fn store(&self) -> Result<RedisStore, ServerError> {
        connect(self.config()).await
    }

    /// `redis-cli` for this server.
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] when `redis-cli` is not installed.
    pub fn redis_cli(&self) -> Result<RedisCli, ServerError> {
        Ok(RedisCli {
            program: redis_cli_program()?,
            base: cli_base(self.port, &self.auth, self.tls.as_ref(), false),
        })
    }

    /// Runs `redis-cli` against this server.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when it cannot run or fails.
    pub fn cli(&self, args: &[&str]) -> Result<String, ServerError> {
        self.redis_cli()?.run(args)
    }

    /// The conformance harness on this server.
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] when `redis-cli` is not installed.
    pub fn harness(&self) -> Result<RedisHarness, ServerError> {
        Ok(RedisHarness::new(self.config(), self.redis_cli()?))
    }

    /// Kills the server (SIGKILL), as a crash would. Its data is lost.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Pauses the server (SIGSTOP): connections stay open, nothing answers.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Resumes a paused server.
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Kills the server and starts a fresh, empty one on the same port with
    /// the same settings.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when it does not come back.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.process.kill();
        self.process = spawn_ready(&redis_server()?, &self.args, self.port)?;
        self.wait_until_serving()
    }
}

fn with_auth(config: RedisConfig, auth: &RedisAuth) -> RedisConfig {
    match auth {
        RedisAuth::None => config,
        RedisAuth::Password(p) => config.with_password(p.clone()),
        RedisAuth::User { name, password } => config.with_user(name.clone(), password.clone()),
    }
}

async fn connect(config: RedisConfig) -> Result<RedisStore, ServerError> {
    RedisStore::connect(config)
        .await
        .map_err(|e| ServerError::Setup(format!("cannot build a RedisStore: {e}")))
}

fn spawn_ready(
    program: &std::path::Path,
    args: &[String],
    port: u16,
) -> Result<ServerProcess, ServerError> {
    let mut process = ServerProcess::spawn("redis", program, args)?;
    process.wait_for_port(SocketAddr::from(([127, 0, 0, 1], port)), READY)?;
    Ok(process)
}

/// A Redis Cluster of three masters (no replicas), each a `redis-server`
/// process on a free loopback port.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<ServerProcess>,
    ports: Vec<u16>,
}

impl RedisCluster {
    /// Starts three nodes, joins them with `redis-cli --cluster create`, and
    /// waits until every node reports `cluster_state:ok`.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when a program is missing or the cluster does not
    /// form.
    pub fn start() -> Result<Self, ServerError> {
        let program = redis_server()?;
        let cli = redis_cli_program()?;
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..3 {
            let port = cluster_port(&ports)?;
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
                "5000",
                "--save",
                "",
                "--appendonly",
                "no",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            nodes.push(spawn_ready(&program, &args, port)?);
            ports.push(port);
        }
        let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
        create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
        create.extend([
            "--cluster-replicas".into(),
            "0".into(),
            "--cluster-yes".into(),
        ]);
        run_command(&cli, &create)?;
        let cluster = Self { nodes, ports };
        cluster.wait_until_ok()?;
        Ok(cluster)
    }

    fn wait_until_ok(&self) -> Result<(), ServerError> {
        let start = Instant::now();
        for port in &self.ports {
            loop {
                let info = self
                    .node_cli(*port)?
                    .run(&["CLUSTER", "INFO"])
                    .unwrap_or_default();
                let ok = info.lines().any(|l| l.trim() == "cluster_state:ok")
                    && info.lines().any(|l| l.trim() == "cluster_slots_ok:16384")
                    && info.lines().any(|l| l.trim() == "cluster_known_nodes:3");
                if ok {
                    break;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    return Err(ServerError::Setup(format!(
                        "Redis Cluster node {port} not ready: {info}"
                    )));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// The nodes' ports.
    #[must_use]
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Seed URLs, one per node.
    #[must_use]
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The first node's URL.
    #[must_use]
    pub fn url(&self) -> String {
        self.urls().into_iter().next().unwrap_or_default()
    }

    /// A cluster-mode configuration with every node as a seed.
    #[must_use]
    pub fn config(&self) -> RedisConfig {
        RedisConfig::with_urls(self.urls()).with_cluster_mode(ClusterMode::Cluster)
    }

    /// A ready store on this cluster.
    ///
    /// # Errors
    ///
    /// [`ServerError::Setup`] when the store cannot be built.
    pub async fn store(&self) -> Result<RedisStore, ServerError> {
        connect(self.config()).await
    }

    fn node_cli(&self, port: u16) -> Result<RedisCli, ServerError> {
        Ok(RedisCli {
            program: redis_cli_program()?,
            base: cli_base(port, &RedisAuth::None, None, true),
        })
    }

    /// `redis-cli -c` (following redirects) on the first node.
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] when `redis-cli` is not installed.
    pub fn redis_cli(&self) -> Result<RedisCli, ServerError> {
        let port = self.ports.first().copied().unwrap_or_default();
        self.node_cli(port)
    }

    /// Runs `redis-cli -c` against the cluster.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when it cannot run or fails.
    pub fn cli(&self, args: &[&str]) -> Result<String, ServerError> {
        self.redis_cli()?.run(args)
    }

    /// Which node (index into [`ports`](Self::ports)) serves `key`.
    ///
    /// # Errors
    ///
    /// [`ServerError`] when the cluster cannot be asked.
    pub fn node_of(&self, key: &str) -> Result<usize, ServerError> {
        let slot: u16 = self
            .cli(&["CLUSTER", "KEYSLOT", key])?
            .trim()
            .parse()
            .map_err(|e| ServerError::Setup(format!("CLUSTER KEYSLOT: {e}")))?;
        // Lines of CLUSTER NODES: id addr:port@bus flags master ping pong
        // epoch link slot-ranges...
        let nodes = self.cli(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = fields.get(1) else { continue };
            let port: Option<u16> = addr
                .split('@')
                .next()
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse().ok());
            let serves = fields.iter().skip(8).any(|range| {
                let mut ends = range.split('-').map(|n| n.parse::<u16>().ok());
                match (ends.next().flatten(), ends.next()) {
                    (Some(lo), None) => lo == slot,
                    (Some(lo), Some(Some(hi))) => (lo..=hi).contains(&slot),
                    _ => false,
                }
            });
            if serves && let Some(i) = port.and_then(|p| self.ports.iter().position(|q| *q == p)) {
                return Ok(i);
            }
        }
        Err(ServerError::Setup(format!("no node serves {key}")))
    }

    /// Kills every node.
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }

    /// The conformance harness on this cluster.
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] when `redis-cli` is not installed.
    pub fn harness(&self) -> Result<RedisHarness, ServerError> {
        Ok(RedisHarness::new(self.config(), self.redis_cli()?))
    }
}

/// A port whose cluster bus port (+10000) is free too.
fn cluster_port(taken: &[u16]) -> Result<u16, ServerError> {
    for _ in 0..100 {
        let port = free_port()?;
        if port > 55_000 || taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    Err(ServerError::Setup(
        "no free port pair for a cluster node".into(),
    ))
}

/// The conformance suite's view of a Redis deployment: stores built from
/// one configuration, and `redis-cli` to corrupt a record.
#[derive(Debug, Clone)]
pub struct RedisHarness {
    config: RedisConfig,
    cli: RedisCli,
}

impl RedisHarness {
    /// A harness making stores from `config` and corrupting through `cli`.
    #[must_use]
    pub fn new(config: RedisConfig, cli: RedisCli) -> Self {
        Self { config, cli }
    }

    /// The key prefix stores use (the default one).
    fn session_key(&self, key: &SessionKey) -> String {
        format!("{}s:{{{}}}", self.config.key_prefix(), key.as_str())
    }
}

impl Harness for RedisHarness {
    type Store = RedisStore;

    #[allow(clippy::panic)] // The suite requires a harness to panic loudly on set-up failure.
    async fn store(&self) -> RedisStore {
        match RedisStore::connect(self.config.clone()).await {
            Ok(store) => store,
            Err(error) => panic!("cannot connect a RedisStore to the test server: {error}"),
        }
    }

    async fn corrupt(&self, key: &SessionKey) -> bool {
        let key = self.session_key(key);
        let cli = self.cli.clone();
        // redis-cli blocks; keep it off the async workers.
        let result =
            tokio::task::spawn_blocking(move || cli.run(&["HSET", &key, "version", "notanumber"]))
                .await;
        matches!(result, Ok(Ok(_)))
    }

    fn ttl_granularity(&self) -> Duration {
        // PEXPIREAT is exact to the millisecond; allow for the active
        // expiry cycle, though loads check deadlines themselves anyway.
        Duration::from_millis(200)
    }
}

/// Starts a fixture once per test binary, or panics naming what is missing.
#[allow(clippy::panic)] // Tests that need the server must fail loudly, never skip.
fn shared<T>(
    cell: &'static OnceLock<T>,
    start: impl FnOnce() -> Result<T, ServerError>,
    what: &str,
) -> &'static T {
    cell.get_or_init(|| match start() {
        Ok(fixture) => fixture,
        Err(error) => panic!("cannot start {what}: {error}"),
    })
}

/// One plain `redis-server` shared by every test of this binary.
///
/// # Panics
///
/// When the server cannot be started (the message says what to install).
#[must_use]
pub fn shared_server() -> &'static RedisServer {
    static CELL: OnceLock<RedisServer> = OnceLock::new();
    shared(&CELL, RedisServer::start, "redis-server")
}

/// One TLS `redis-server` shared by every test of this binary.
///
/// # Panics
///
/// When the server cannot be started.
#[must_use]
pub fn shared_tls_server() -> &'static RedisServer {
    static CELL: OnceLock<RedisServer> = OnceLock::new();
    shared(&CELL, RedisServer::start_tls, "a TLS redis-server")
}

/// One ACL-protected `redis-server` (user `offstate`) shared by every test of
/// this binary.
///
/// # Panics
///
/// When the server cannot be started.
#[must_use]
pub fn shared_acl_server() -> &'static RedisServer {
    static CELL: OnceLock<RedisServer> = OnceLock::new();
    shared(
        &CELL,
        || RedisServer::start_with_user("offstate", "s3cret-acl-pass"),
        "an ACL redis-server",
    )
}

/// One Redis Cluster shared by every test of this binary.
///
/// # Panics
///
/// When the cluster cannot be started.
#[must_use]
pub fn shared_cluster() -> &'static RedisCluster {
    static CELL: OnceLock<RedisCluster> = OnceLock::new();
    shared(&CELL, RedisCluster::start, "a Redis Cluster")
}
