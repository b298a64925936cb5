//! memcached fixtures: one or more nodes used as one cluster (as an
//! ElastiCache Memcached cluster is), from the environment, containers or
//! local processes, with a ready [`MemcachedStore`] over all of them.
//!
//! ```no_run
//! # async fn demo() -> Result<(), offstate_testing::FixtureError> {
//! let one = offstate_testing::memcached().await?;
//! let two = offstate_testing::memcached_cluster(2).with_args(["-I", "2m"]).await?;
//! # Ok(()) }
//! ```
//!
//! Processes run `memcached` from `PATH` (or `OFFSTATE_MEMCACHED`) as
//! `memcached -l 127.0.0.1 -p PORT -U 0 -m 64` (plus `-u root` when the
//! tests run as root, which memcached otherwise refuses). Containers run
//! the image of `OFFSTATE_MEMCACHED_IMAGE` (default `memcached:1.6`) with
//! `-m 64 -U 0`, reached through ports published on 127.0.0.1 (or their
//! addresses on a test network). Stores use [`FIXTURE_TIMEOUT`].

use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use offstate_core::SessionKey;
use offstate_core::conformance::Harness;
use offstate_memcached::{MemcachedConfig, MemcachedStore};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::container::ContainerSpec;
use crate::images;
use crate::node::{Node, Readiness};
use crate::process::{find_program, free_port};
use crate::source::{FixtureError, Options, Shared, Source, env_list, fixture_builder};

/// The nodes of a running memcached cluster, comma-separated `host:port`.
pub const MEMCACHED_NODES_ENV: &str = "OFFSTATE_TEST_MEMCACHED_NODES";
/// The `memcached` program (default: on `PATH`).
pub const MEMCACHED_ENV: &str = "OFFSTATE_MEMCACHED";

/// The connect and command timeout of fixture stores: short, so that a test
/// of a dead node finishes quickly, long enough for a loaded CI machine.
pub const FIXTURE_TIMEOUT: Duration = Duration::from_secs(2);

const PORT: u16 = 11211;
const READINESS: Readiness = Readiness {
    hello: b"version\r\n",
    within: Duration::from_secs(30),
};

/// One memcached node, from the usual source (see [`crate::source`]).
pub fn memcached() -> MemcachedBuilder {
    memcached_cluster(1)
}

/// `n` memcached nodes, from the usual source. From the environment, the
/// nodes are those listed, whatever `n`.
pub fn memcached_cluster(n: usize) -> MemcachedBuilder {
    MemcachedBuilder {
        nodes: n,
        args: Vec::new(),
        options: Options::default(),
    }
}

/// What memcached to start. `.await` it (or call [`start`](Self::start)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct MemcachedBuilder {
    nodes: usize,
    args: Vec<String>,
    options: Options,
}

impl MemcachedBuilder {
    /// Extra server arguments for every node (`["-I", "2m"]` for 2 MB
    /// items, say).
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// Starts (or reuses) the nodes and builds a store over them.
    ///
    /// # Errors
    ///
    /// [`FixtureError`] saying what is missing or what failed.
    pub async fn start(self) -> Result<Memcached, FixtureError> {
        static SHARED: Shared<Vec<Node>> = Shared::new();
        let usual = (MEMCACHED_NODES_ENV, images::memcached());
        let start = |source| self.servers(source);
        let (nodes, _) = SHARED.servers(&self, &self.options, usual, start).await?;
        let config = fixture_config(nodes.iter().map(|n| n.address().to_owned()).collect());
        let store = build(config.clone())?;
        Ok(Memcached {
            store,
            config,
            nodes,
        })
    }

    async fn servers(&self, source: Source) -> Result<Vec<Node>, FixtureError> {
        if source == Source::Environment {
            return Ok(env_list(MEMCACHED_NODES_ENV)?
                .into_iter()
                .map(Node::external)
                .collect());
        }
        let mut nodes = Vec::new();
        for _ in 0..self.nodes {
            let node = match source {
                Source::Container => self.container().await?,
                _ => self.process().await?,
            };
            nodes.push(node);
        }
        Ok(nodes)
    }

    async fn process(&self) -> Result<Node, FixtureError> {
        let program = find_program(
            "memcached",
            MEMCACHED_ENV,
            &[PathBuf::from("/usr/bin/memcached")],
        )?;
        let args = |port: u16| {
            let mut args: Vec<String> = ["-l", "127.0.0.1", "-p", &port.to_string()]
                .map(String::from)
                .into();
            args.extend(["-U", "0", "-m", "64"].map(String::from));
            if running_as_root() {
                args.extend(["-u".to_owned(), "root".to_owned()]);
            }
            args.extend(self.args.iter().cloned());
            args
        };
        let port = || Ok(free_port()?);
        Node::spawn("memcached", program, args, port, READINESS).await
    }

    async fn container(&self) -> Result<Node, FixtureError> {
        let mut args: Vec<String> = ["-m", "64", "-U", "0"].map(String::from).into();
        args.extend(self.args.iter().cloned());
        let spec = ContainerSpec::new(images::memcached(), PORT)
            .with_args(args)
            .with_reach(self.options.reach());
        Node::run(spec, READINESS).await
    }
}

fixture_builder!(MemcachedBuilder => Memcached);

/// memcached nodes and a ready store over them. Dereferences to the store;
/// dropping it stops the nodes it started (unless another fixture shares
/// them).
#[derive(Debug)]
pub struct Memcached {
    store: MemcachedStore,
    config: MemcachedConfig,
    nodes: Arc<Vec<Node>>,
}

impl Memcached {
    /// The ready store (fixture timeouts: [`FIXTURE_TIMEOUT`]).
    #[must_use]
    pub fn store(&self) -> &MemcachedStore {
        &self.store
    }

    /// The store configuration.
    #[must_use]
    pub fn config(&self) -> &MemcachedConfig {
        &self.config
    }

    /// A new store on these nodes with `config` (usually
    /// [`config`](Self::config) with changes).
    ///
    /// # Errors
    ///
    /// [`FixtureError::Store`] when the configuration is invalid.
    pub fn store_with(&self, config: MemcachedConfig) -> Result<MemcachedStore, FixtureError> {
        build(config)
    }

    /// The node addresses, `host:port` each, in start order.
    #[must_use]
    pub fn addresses(&self) -> &[String] {
        self.config.nodes()
    }

    /// The first node's address (`host:port`).
    #[must_use]
    pub fn url(&self) -> &str {
        self.addresses().first().map_or("", String::as_str)
    }

    /// Where the nodes come from.
    #[must_use]
    pub fn source(&self) -> Source {
        self.nodes.first().map_or(Source::Environment, Node::source)
    }

    /// The nodes, in start order.
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node `i`, to make faults on it.
    ///
    /// # Panics
    ///
    /// If there is no node `i`.
    #[must_use]
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The index of the node with this address (as
    /// [`MemcachedStore::node_for`] gives it).
    #[must_use]
    pub fn index_of(&self, address: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.address() == address)
    }

    /// Stores raw bytes under `key` on node `i` with `set`, bypassing the
    /// store (to plant corrupt records).
    ///
    /// # Errors
    ///
    /// When the node cannot be reached or does not answer `STORED`.
    pub async fn raw_set(&self, i: usize, key: &str, value: &[u8]) -> std::io::Result<()> {
        let mut command = format!("set {key} 0 0 {}\r\n", value.len()).into_bytes();
        command.extend_from_slice(value);
        command.extend_from_slice(b"\r\n");
        match self.raw(i, &command).await?.as_str() {
            "STORED" => Ok(()),
            other => Err(std::io::Error::other(format!("set answered {other:?}"))),
        }
    }

    /// Deletes `key` on node `i` with `delete`, bypassing the store.
    /// Returns whether it was there.
    ///
    /// # Errors
    ///
    /// When the node cannot be reached or answers something unexpected.
    pub async fn raw_delete(&self, i: usize, key: &str) -> std::io::Result<bool> {
        match self
            .raw(i, format!("delete {key}\r\n").as_bytes())
            .await?
            .as_str()
        {
            "DELETED" => Ok(true),
            "NOT_FOUND" => Ok(false),
            other => Err(std::io::Error::other(format!("delete answered {other:?}"))),
        }
    }

    /// Sends one command to node `i` and reads one reply line (trimmed).
    async fn raw(&self, i: usize, command: &[u8]) -> std::io::Result<String> {
        let address = self
            .addresses()
            .get(i)
            .ok_or_else(|| std::io::Error::other(format!("no node {i}")))?;
        let exchange = async {
            let mut stream = TcpStream::connect(address).await?;
            stream.write_all(command).await?;
            let mut reply = String::new();
            BufReader::new(stream).read_line(&mut reply).await?;
            Ok(reply.trim_end().to_owned())
        };
        tokio::time::timeout(FIXTURE_TIMEOUT, exchange)
            .await
            .map_err(|_| std::io::Error::other(format!("{address} did not answer")))?
    }
}

impl Deref for Memcached {
    type Target = MemcachedStore;

    fn deref(&self) -> &MemcachedStore {
        &self.store
    }
}

impl Harness for Memcached {
    type Store = MemcachedStore;

    #[allow(clippy::panic)] // The suite requires a harness to panic loudly on set-up failure.
    async fn store(&self) -> MemcachedStore {
        match build(self.config.clone()) {
            Ok(store) => store,
            Err(error) => panic!("{error}"),
        }
    }

    #[allow(clippy::panic)] // A harness that cannot corrupt must fail the case, not skip it.
    async fn corrupt(&self, key: &SessionKey) -> bool {
        let item = self.store.store_key(key);
        let Some(i) = self.index_of(self.store.node_for(key)) else {
            panic!("the store mapped {item} to a node outside the fixture");
        };
        if let Err(error) = self.raw_set(i, &item, b"\x00not an offstate record").await {
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

fn build(config: MemcachedConfig) -> Result<MemcachedStore, FixtureError> {
    let target = config.nodes().join(",");
    MemcachedStore::new(config).map_err(|e| FixtureError::store("a MemcachedStore", target, e))
}

/// memcached refuses to run as root unless told which user to be.
fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}
