//! memcached fixtures: real `memcached` processes on free loopback ports,
//! clusters of them, ready [`MemcachedStore`]s, and the conformance
//! [`Harness`].
//!
//! memcached is found through `OFFSTATE_MEMCACHED`, then `PATH` (Debian's
//! `memcached` package, which `scripts/setup.sh` installs); when it is
//! missing the error says so. Each server runs as
//! `memcached -l 127.0.0.1 -p PORT -U 0 -m 64` (plus `-u root` when the tests
//! run as root, which memcached otherwise refuses), and stops when its
//! fixture is dropped or the test process dies.
//!
//! Containers, or servers named by the environment, are in
//! [`crate::fixture::memcached`], which uses these processes as its last
//! resort.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use offstate_core::SessionKey;
use offstate_core::conformance::Harness;
use offstate_memcached::{MemcachedConfig, MemcachedStore};

use crate::process::{ServerError, ServerProcess, find_program, free_port};

/// The environment variable that can point at `memcached`.
pub const MEMCACHED_ENV: &str = "OFFSTATE_MEMCACHED";

/// The connect and command timeout of fixture stores: short, so that a test
/// of a dead node finishes quickly, long enough for a loaded CI machine.
pub const FIXTURE_TIMEOUT: Duration = Duration::from_secs(2);

/// One memcached server process.
#[derive(Debug)]
pub struct MemcachedServer {
    process: ServerProcess,
    addr: SocketAddr,
    extra: Vec<String>,
}

impl MemcachedServer {
    /// Starts a server with the default settings (64 MB, 1 MB items).
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] naming `OFFSTATE_MEMCACHED` when memcached
    /// is not installed; other [`ServerError`]s when it does not start.
    pub fn start() -> Result<Self, ServerError> {
        Self::start_with_args(&[])
    }

    /// Starts a server with extra command-line arguments (for example
    /// `["-I", "2m"]` for a larger item size limit).
    ///
    /// # Errors
    ///
    /// As [`MemcachedServer::start`].
    pub fn start_with_args(extra: &[&str]) -> Result<Self, ServerError> {
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn(free_port()?, extra)
    }

    fn spawn(port: u16, extra: Vec<String>) -> Result<Self, ServerError> {
        let program = find_program(
            "memcached",
            MEMCACHED_ENV,
            &[PathBuf::from("/usr/bin/memcached")],
        )?;
        let mut args: Vec<String> = [
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if running_as_root() {
            args.extend(["-u".to_owned(), "root".to_owned()]);
        }
        args.extend(extra.iter().cloned());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut process = ServerProcess::spawn("memcached", &program, &args)?;
        process.wait_for_port(addr, Duration::from_secs(10))?;
        Ok(Self {
            process,
            addr,
            extra,
        })
    }

    /// Kills the server and starts a new, empty one on the same port with
    /// the same arguments, as a crashed node coming back (or an ElastiCache
    /// node replacement keeping its endpoint).
    ///
    /// # Errors
    ///
    /// As [`MemcachedServer::start`].
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.process.kill();
        let fresh = Self::spawn(self.addr.port(), self.extra.clone())?;
        *self = fresh;
        Ok(())
    }

    /// Where it listens.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its address as a node entry (`127.0.0.1:PORT`).
    #[must_use]
    pub fn node(&self) -> String {
        self.addr.to_string()
    }

    /// A store configuration for this one server, with fixture timeouts.
    #[must_use]
    pub fn config(&self) -> MemcachedConfig {
        fixture_config(vec![self.node()])
    }

    /// A store on this server.
    ///
    /// # Panics
    ///
    /// If the fixture configuration is invalid, which is a fixture bug.
    #[must_use]
    pub fn store(&self) -> MemcachedStore {
        store_for(self.config())
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Freezes the server (SIGSTOP): connections are accepted by the kernel
    /// but nothing answers, as with a hung node.
    pub fn pause(&self) {
        self.process.pause();
    }

    /// Thaws a paused server.
    pub fn resume(&self) {
        self.process.resume();
    }

    /// Stores raw bytes under `key` with `set`, bypassing the store (to plant
    /// corrupt records).
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or does not answer `STORED`.
    pub fn raw_set(&self, key: &str, value: &[u8]) -> std::io::Result<()> {
        raw_set_at(&self.node(), key, value)
    }

    /// Deletes `key` with `delete`, bypassing the store. Returns whether it
    /// was there.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or answers something unexpected.
    pub fn raw_delete(&self, key: &str) -> std::io::Result<bool> {
        let reply = self.raw(format!("delete {key}\r\n").as_bytes())?;
        match reply.trim_end() {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            other => Err(std::io::Error::other(format!("delete answered {other:?}"))),
        }
    }

    /// Whether `key` exists on this server, bypassing the store.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached.
    pub fn raw_exists(&self, key: &str) -> std::io::Result<bool> {
        let reply = self.raw(format!("mg {key}\r\n").as_bytes())?;
        Ok(reply.starts_with("HD") || reply.starts_with("VA"))
    }

    /// Sends one command and reads one reply line.
    fn raw(&self, command: &[u8]) -> std::io::Result<String> {
        raw_command(&self.node(), command)
    }
}

/// Stores raw bytes under `key` with `set` on the memcached at `node`
/// (`host:port`), bypassing any store (to plant corrupt records).
///
/// # Errors
///
/// When the server cannot be reached or does not answer `STORED`.
pub fn raw_set_at(node: &str, key: &str, value: &[u8]) -> std::io::Result<()> {
    let mut command = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
    command.extend_from_slice(value);
    command.extend_from_slice(b"\r\n");
    let reply = raw_command(node, &command)?;
    if reply.starts_with("STORED") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("set answered {reply:?}")))
    }
}

/// Sends one command to the memcached at `node` and reads one reply line.
fn raw_command(node: &str, command: &[u8]) -> std::io::Result<String> {
    let addr = node
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{node} resolves to nothing")))?;
    let mut stream = TcpStream::connect_timeout(&addr, FIXTURE_TIMEOUT)?;
    stream.set_read_timeout(Some(FIXTURE_TIMEOUT))?;
    stream.write_all(command)?;
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n") {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        reply.push(byte[0]);
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// Several memcached servers used as one cluster, as an ElastiCache
/// Memcached cluster is.
#[derive(Debug)]
pub struct MemcachedCluster {
    servers: Vec<MemcachedServer>,
}

impl MemcachedCluster {
    /// Starts `n` servers with default settings.
    ///
    /// # Errors
    ///
    /// As [`MemcachedServer::start`].
    pub fn start(n: usize) -> Result<Self, ServerError> {
        Self::start_with_args(n, &[])
    }

    /// Starts `n` servers, each with these extra arguments.
    ///
    /// # Errors
    ///
    /// As [`MemcachedServer::start`].
    pub fn start_with_args(n: usize, extra: &[&str]) -> Result<Self, ServerError> {
        let servers = (0..n)
            .map(|_| MemcachedServer::start_with_args(extra))
            .collect::<Result<_, _>>()?;
        Ok(Self { servers })
    }

    /// The node list (`127.0.0.1:PORT` each), in start order.
    #[must_use]
    pub fn nodes(&self) -> Vec<String> {
        self.servers.iter().map(MemcachedServer::node).collect()
    }

    /// Server `i`.
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    #[must_use]
    pub fn server(&self, i: usize) -> &MemcachedServer {
        &self.servers[i]
    }

    /// A store configuration for all nodes, with fixture timeouts.
    #[must_use]
    pub fn config(&self) -> MemcachedConfig {
        fixture_config(self.nodes())
    }

    /// A store over all nodes.
    ///
    /// # Panics
    ///
    /// If the fixture configuration is invalid, which is a fixture bug.
    #[must_use]
    pub fn store(&self) -> MemcachedStore {
        store_for(self.config())
    }

    /// Kills server `i` (SIGKILL).
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    pub fn kill(&mut self, i: usize) {
        self.servers[i].kill();
    }

    /// Restarts server `i` empty, on the same port.
    ///
    /// # Errors
    ///
    /// As [`MemcachedServer::start`].
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    pub fn restart(&mut self, i: usize) -> Result<(), ServerError> {
        self.servers[i].restart()
    }

    /// Freezes server `i` (SIGSTOP).
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    pub fn pause(&self, i: usize) {
        self.servers[i].pause();
    }

    /// Thaws server `i`.
    ///
    /// # Panics
    ///
    /// If there is no server `i`.
    pub fn resume(&self, i: usize) {
        self.servers[i].resume();
    }

    /// The index of the server with this node address.
    #[must_use]
    pub fn index_of(&self, node: &str) -> Option<usize> {
        self.servers.iter().position(|s| s.node() == node)
    }
}

/// The conformance harness: a 2-node cluster; every store instance sees the
/// same servers.
#[derive(Debug)]
pub struct MemcachedHarness {
    cluster: MemcachedCluster,
}

impl MemcachedHarness {
    /// Starts a 2-node cluster.
    ///
    /// # Panics
    ///
    /// When memcached cannot be started, with the reason (missing program
    /// and the variable to set): conformance cases never skip.
    #[must_use]
    #[allow(clippy::panic)] // The suite requires a harness to fail loudly on set-up failure.
    pub fn start() -> Self {
        match MemcachedCluster::start(2) {
            Ok(cluster) => Self { cluster },
            Err(error) => panic!("cannot start memcached for the conformance suite: {error}"),
        }
    }

    /// The cluster.
    #[must_use]
    pub fn cluster(&self) -> &MemcachedCluster {
        &self.cluster
    }
}

impl Harness for MemcachedHarness {
    type Store = MemcachedStore;

    async fn store(&self) -> MemcachedStore {
        self.cluster.store()
    }

    #[allow(clippy::panic)] // A harness that cannot corrupt must fail the case, not skip it.
    async fn corrupt(&self, key: &SessionKey) -> bool {
        let store = self.cluster.store();
        let item = store.item_key(key);
        let Some(i) = self.cluster.index_of(store.node_for(key)) else {
            panic!("the store mapped {item} to a node outside the cluster");
        };
        if let Err(error) = self
            .cluster
            .server(i)
            .raw_set(&item, b"\x00not an offstate record")
        {
            panic!("cannot plant a corrupt record: {error}");
        }
        true
    }

    fn ttl_granularity(&self) -> Duration {
        // Whole seconds, plus the one second of slack the store adds.
        Duration::from_secs(2)
    }
}

/// A store configuration for `nodes` with the fixture timeouts.
#[must_use]
pub fn fixture_config(nodes: Vec<String>) -> MemcachedConfig {
    MemcachedConfig::new(nodes)
        .with_connect_timeout(FIXTURE_TIMEOUT)
        .with_command_timeout(FIXTURE_TIMEOUT)
}

#[allow(clippy::panic)] // Fixture configurations are valid; a bug here must fail the test.
fn store_for(config: MemcachedConfig) -> MemcachedStore {
    match MemcachedStore::new(config) {
        Ok(store) => store,
        Err(error) => panic!("fixture memcached configuration is invalid: {error}"),
    }
}

/// memcached refuses to run as root unless told which user to be.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
