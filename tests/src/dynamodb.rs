//! DynamoDB fixtures: a moto server (one per test binary, or a dedicated
//! one for tests that pause or kill it), SDK clients with test credentials,
//! and [`DynamoStore`]s on their own table or key prefix.
//!
//! (Containers, or a server named by the environment, are in
//! [`crate::fixture::dynamodb`], which uses these processes as its last
//! resort.)
//!
//! moto is found through `OFFSTATE_MOTO_SERVER`, then
//! `.offstate-run/venv/bin/moto_server` (what `scripts/setup.sh` installs),
//! then `PATH`; when it is missing the error says so.
//!
//! # Why not plain `moto_server`
//!
//! moto's server is multi-threaded and its DynamoDB model has no locks, so
//! two concurrent conditional writes on one item can both pass their
//! condition (seen here: two of twenty saves of the same version "won").
//! Real DynamoDB applies each conditional write atomically. So the fixture
//! runs moto's own WSGI app through the interpreter of `moto_server`'s
//! `#!` line, behind one lock: requests are still accepted concurrently
//! but handled one at a time, as atomic as DynamoDB's per-item writes.
//! A `moto_server` that is not a Python script is started as it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use offstate_core::conformance::Harness;
use offstate_core::{SessionId, SessionKey};
use offstate_dynamodb::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use offstate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use offstate_dynamodb::aws_sdk_dynamodb::{self, Client};
use offstate_dynamodb::{DynamoConfig, DynamoStore};

use crate::process::{ServerError, ServerProcess, find_program, free_port, workspace_root};

/// The environment variable that can point at `moto_server`.
pub const MOTO_ENV: &str = "OFFSTATE_MOTO_SERVER";

/// The region every fixture client uses.
pub const REGION: &str = "us-east-1";

/// A running moto server.
#[derive(Debug)]
pub struct Moto {
    server: ServerProcess,
    endpoint: String,
}

impl Moto {
    /// Starts a dedicated moto server on a free loopback port and waits
    /// until it listens.
    ///
    /// # Errors
    ///
    /// [`ServerError::Missing`] naming `OFFSTATE_MOTO_SERVER` and
    /// `scripts/setup.sh` when moto is not installed; other
    /// [`ServerError`]s when it does not start.
    pub fn start() -> Result<Self, ServerError> {
        let program = find_program(
            "moto_server",
            MOTO_ENV,
            &[workspace_root().join(".offstate-run/venv/bin/moto_server")],
        )?;
        let port = free_port()?;
        let mut server = match python_of(&program) {
            Some(python) => {
                let args = [
                    "-c".to_owned(),
                    SERIALIZED_MOTO.to_owned(),
                    "127.0.0.1".to_owned(),
                    port.to_string(),
                ];
                ServerProcess::spawn("moto", &python, &args)?
            }
            None => {
                let args = [
                    "-H".to_owned(),
                    "127.0.0.1".to_owned(),
                    "-p".to_owned(),
                    port.to_string(),
                ];
                ServerProcess::spawn("moto", &program, &args)?
            }
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        server.wait_for_port(addr, Duration::from_secs(60))?;
        Ok(Self {
            server,
            endpoint: format!("http://{addr}"),
        })
    }

    /// The server's endpoint URL.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The server process (to pause or kill it).
    #[must_use]
    pub fn process(&self) -> &ServerProcess {
        &self.server
    }

    /// A client configuration for this server: static test credentials,
    /// `us-east-1`, the latest behavior version. Add interceptors or
    /// timeouts before building it.
    #[must_use]
    pub fn client_config(&self) -> aws_sdk_dynamodb::config::Builder {
        client_config_for(&self.endpoint)
    }

    /// A client for this server.
    #[must_use]
    pub fn client(&self) -> Client {
        Client::from_conf(self.client_config().build())
    }

    /// A store on `config`'s table through [`Moto::client`], with the
    /// table ensured.
    ///
    /// # Errors
    ///
    /// [`offstate_core::StoreError`] when the table cannot be created.
    pub async fn store(
        &self,
        config: DynamoConfig,
    ) -> Result<DynamoStore, offstate_core::StoreError> {
        let store = DynamoStore::from_client(self.client(), config);
        store.ensure_table().await?;
        Ok(store)
    }
}

/// A client configuration for the DynamoDB-compatible server at
/// `endpoint`: static test credentials, `us-east-1`, the latest behavior
/// version.
#[must_use]
pub fn client_config_for(endpoint: &str) -> aws_sdk_dynamodb::config::Builder {
    aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "offstate-tests",
        ))
        .endpoint_url(endpoint)
}

/// Overwrites the item of `key` in `store`'s table with one that is not a
/// valid record (for the conformance suite's corruption case).
///
/// # Errors
///
/// The SDK error, as text.
pub async fn plant_corrupt_item(store: &DynamoStore, key: &SessionKey) -> Result<(), String> {
    let names = store.attributes();
    store
        .client()
        .put_item()
        .table_name(store.table())
        .item(&names.key, AttributeValue::S(store.item_key(key)))
        .item(&names.data, AttributeValue::S("not a map".into()))
        .item(&names.version, AttributeValue::S("one".into()))
        .send()
        .await
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

/// moto's WSGI app behind one lock (see the module docs). Arguments: host,
/// port.
const SERIALIZED_MOTO: &str = r#"
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def serialized(environ, start_response):
    with lock:
        return list(app(environ, start_response))
run_simple(sys.argv[1], int(sys.argv[2]), serialized, threaded=True, request_handler=MotoRequestHandler)
"#;

/// The Python interpreter named on `program`'s `#!` line, if it has one.
fn python_of(program: &Path) -> Option<PathBuf> {
    let text = std::fs::read(program).ok()?;
    let first = text.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(first).ok()?.strip_prefix("#!")?.trim();
    let mut parts = line.split_whitespace();
    let interpreter = parts.next()?;
    let python = if interpreter.ends_with("/env") {
        parts.next()?
    } else {
        interpreter
    };
    if !python.contains("python") {
        return None;
    }
    let path = PathBuf::from(python);
    if path.is_absolute() {
        Some(path)
    } else {
        find_program(python, MOTO_ENV, &[]).ok()
    }
}

/// The moto server shared by the tests of this test binary, started on
/// first use. (A static is never dropped; the process watchdog stops the
/// server when the test binary exits.)
///
/// # Errors
///
/// The start error, as text, for every caller.
pub fn shared_moto() -> Result<&'static Moto, String> {
    static MOTO: OnceLock<Result<Moto, String>> = OnceLock::new();
    MOTO.get_or_init(|| Moto::start().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(Clone::clone)
}

/// The shared moto server, or a panic that says how to install it.
///
/// # Panics
///
/// When moto cannot be started.
#[must_use]
#[allow(clippy::panic)] // Tests that need moto must fail loudly, never skip.
pub fn moto() -> &'static Moto {
    match shared_moto() {
        Ok(moto) => moto,
        Err(error) => panic!("cannot start moto for the DynamoDB tests: {error}"),
    }
}

/// A fresh name with `tag` in it, for tables and key prefixes.
#[must_use]
pub fn unique(tag: &str) -> String {
    let id = SessionId::generate().to_string();
    let clean: String = id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(10)
        .collect();
    format!("{tag}-{clean}")
}

/// The conformance harness: one shared table on the shared moto, and a key
/// prefix of its own, so cases run in parallel without meeting.
#[derive(Debug)]
pub struct DynamoHarness {
    moto: &'static Moto,
    config: DynamoConfig,
}

/// The table the conformance cases share.
pub const CONFORMANCE_TABLE: &str = "offstate-conformance";

impl DynamoHarness {
    /// Starts (or reuses) moto and ensures the shared table.
    ///
    /// # Panics
    ///
    /// When moto cannot be started or the table cannot be created.
    #[allow(clippy::panic)] // The suite requires a harness to panic loudly on set-up failure.
    pub async fn start() -> Self {
        let moto = moto();
        let config =
            DynamoConfig::new(CONFORMANCE_TABLE).with_key_prefix(format!("{}:", unique("case")));
        if let Err(error) = moto.store(config.clone()).await {
            panic!("cannot create the DynamoDB conformance table on moto: {error} ({error:?})");
        }
        Self { moto, config }
    }

    /// The store configuration the harness uses.
    #[must_use]
    pub fn config(&self) -> &DynamoConfig {
        &self.config
    }
}

impl Harness for DynamoHarness {
    type Store = DynamoStore;

    async fn store(&self) -> DynamoStore {
        DynamoStore::from_client(self.moto.client(), self.config.clone())
    }

    #[allow(clippy::panic)] // A harness that cannot corrupt must fail the case, not skip it.
    async fn corrupt(&self, key: &SessionKey) -> bool {
        let store = DynamoStore::from_client(self.moto.client(), self.config.clone());
        if let Err(error) = plant_corrupt_item(&store, key).await {
            panic!("could not corrupt the item: {error}");
        }
        true
    }
}
