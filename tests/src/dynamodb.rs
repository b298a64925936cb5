//! DynamoDB fixtures: a DynamoDB-compatible endpoint from the environment,
//! a container or a local moto process, and a ready [`DynamoDbStore`] on a
//! fresh table of its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), offstate_testing::FixtureError> {
//! let dynamo = offstate_testing::dynamodb().shared().await?;
//! # Ok(()) }
//! ```
//!
//! moto is found through `OFFSTATE_MOTO_SERVER`, then
//! `.offstate-run/venv/bin/moto_server` (what `scripts/setup.sh` installs),
//! then `PATH`. Containers run the image of `OFFSTATE_DYNAMODB_IMAGE`
//! (default `motoserver/moto:latest`, serving on port 5000) as it is.
//!
//! # moto and conditional writes
//!
//! moto's server is multi-threaded and its DynamoDB model has no locks, so
//! two concurrent conditional writes on one item can both pass their
//! condition: measured with plain boto3, 200 concurrent increments of one
//! counter were all acknowledged and the counter ended at 191 to 196. Real
//! DynamoDB applies each conditional write atomically. So the process
//! fixture runs moto's own WSGI app through the interpreter of
//! `moto_server`'s `#!` line, behind one lock: requests are still accepted
//! concurrently but handled one at a time. A `moto_server` that is not a
//! Python script, a container, or a server from the environment runs moto
//! as it is: contention tests belong on the process fixture or on real
//! DynamoDB.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use offstate_core::conformance::Harness;
use offstate_core::{SessionId, SessionKey};
use offstate_dynamodb::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use offstate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use offstate_dynamodb::aws_sdk_dynamodb::{self, Client};
use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};

use crate::container::ContainerSpec;
use crate::images;
use crate::node::{Node, Readiness};
use crate::process::{find_program, free_port, workspace_root};
use crate::source::{FixtureError, Options, Shared, Source, fixture_builder, required_env};

/// The endpoint URL of a running DynamoDB-compatible server (credentials
/// `test`/`test`, region `us-east-1`).
pub const DYNAMODB_ENDPOINT_ENV: &str = "OFFSTATE_TEST_DYNAMODB_ENDPOINT";
/// The `moto_server` program.
pub const MOTO_ENV: &str = "OFFSTATE_MOTO_SERVER";
/// The region every fixture client uses.
pub const REGION: &str = "us-east-1";

const PORT: u16 = 5000;
const READINESS: Readiness = Readiness {
    hello: b"GET / HTTP/1.0\r\n\r\n",
    within: Duration::from_secs(60),
};

/// A DynamoDB-compatible server from the usual source (see
/// [`crate::source`]), with a store on a fresh table.
pub fn dynamodb() -> DynamoBuilder {
    DynamoBuilder {
        options: Options::default(),
    }
}

/// What DynamoDB-compatible server to start. `.await` it (or call
/// [`start`](Self::start)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[must_use]
pub struct DynamoBuilder {
    options: Options,
}

impl DynamoBuilder {
    /// Starts (or reuses) the server and makes a store on a fresh table.
    ///
    /// # Errors
    ///
    /// [`FixtureError`] saying what is missing or what failed.
    pub async fn start(self) -> Result<DynamoDb, FixtureError> {
        static SHARED: Shared<Node> = Shared::new();
        let usual = (DYNAMODB_ENDPOINT_ENV, images::dynamodb());
        let start = |source| server(source, &self.options);
        let (node, source) = SHARED.servers(&self, &self.options, usual, start).await?;
        let endpoint = match source {
            Source::Environment => required_env(DYNAMODB_ENDPOINT_ENV)?,
            _ => format!("http://{}", node.address()),
        };
        let config = DynamoDbConfig::new(unique("offstate-fixture"));
        let store = ensure(&endpoint, config.clone()).await?;
        Ok(DynamoDb {
            store,
            config,
            endpoint,
            node,
        })
    }
}

fixture_builder!(DynamoBuilder => DynamoDb);

async fn server(source: Source, options: &Options) -> Result<Node, FixtureError> {
    match source {
        Source::Environment => {
            let endpoint = required_env(DYNAMODB_ENDPOINT_ENV)?;
            let address = endpoint.split("://").last().unwrap_or_default();
            Ok(Node::external(address.trim_end_matches('/')))
        }
        Source::Container => {
            let spec = ContainerSpec::new(images::dynamodb(), PORT).with_reach(options.reach());
            Node::run(spec, READINESS).await
        }
        _ => {
            let program = find_program(
                "moto_server",
                MOTO_ENV,
                &[workspace_root().join(".offstate-run/venv/bin/moto_server")],
            )?;
            let python = python_of(&program);
            let args = |port: u16| -> Vec<String> {
                let (host, port) = ("127.0.0.1".to_owned(), port.to_string());
                match &python {
                    Some(_) => vec!["-c".into(), SERIALIZED_MOTO.into(), host, port],
                    None => vec!["-H".into(), host, "-p".into(), port],
                }
            };
            let port = || Ok(free_port()?);
            Node::spawn(
                "moto",
                python.clone().unwrap_or(program),
                args,
                port,
                READINESS,
            )
            .await
        }
    }
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

async fn ensure(endpoint: &str, config: DynamoDbConfig) -> Result<DynamoDbStore, FixtureError> {
    let store = DynamoDbStore::from_client(client_for(endpoint), config);
    store
        .ensure_table()
        .await
        .map_err(|e| FixtureError::store("a table", endpoint, e))?;
    Ok(store)
}

fn client_for(endpoint: &str) -> Client {
    Client::from_conf(client_config_for(endpoint).build())
}

/// A client configuration for the DynamoDB-compatible server at
/// `endpoint`: static test credentials, `us-east-1`, the latest behavior
/// version. Add interceptors or timeouts before building it.
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

/// A fresh name with `tag` in it, for tables, key prefixes and principals.
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

/// A DynamoDB-compatible server and a ready store on a fresh table.
/// Dereferences to the store; dropping it stops the server it started
/// (unless another fixture shares it).
#[derive(Debug)]
pub struct DynamoDb {
    store: DynamoDbStore,
    config: DynamoDbConfig,
    endpoint: String,
    node: Arc<Node>,
}

impl DynamoDb {
    /// The ready store.
    #[must_use]
    pub fn store(&self) -> &DynamoDbStore {
        &self.store
    }

    /// The store configuration (its table exists).
    #[must_use]
    pub fn config(&self) -> &DynamoDbConfig {
        &self.config
    }

    /// A store on this server with `config`, its table ensured.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Store`] when the table cannot be created.
    pub async fn store_with(&self, config: DynamoDbConfig) -> Result<DynamoDbStore, FixtureError> {
        ensure(&self.endpoint, config).await
    }

    /// A client for this server (test credentials, `us-east-1`).
    #[must_use]
    pub fn client(&self) -> Client {
        client_for(&self.endpoint)
    }

    /// A client configuration for this server, to add interceptors or
    /// timeouts to before building it.
    #[must_use]
    pub fn client_config(&self) -> aws_sdk_dynamodb::config::Builder {
        client_config_for(&self.endpoint)
    }

    /// The endpoint URL.
    #[must_use]
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where the server comes from.
    #[must_use]
    pub fn source(&self) -> Source {
        self.node.source()
    }

    /// The server, to make faults on it.
    #[must_use]
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Overwrites the item of `key` with one that is not a valid record.
    ///
    /// # Errors
    ///
    /// The SDK's error.
    pub async fn plant_corrupt_item(&self, key: &SessionKey) -> Result<(), FixtureError> {
        let names = self.store.attributes();
        self.store
            .client()
            .put_item()
            .table_name(self.store.table())
            .item(&names.key, AttributeValue::S(self.store.store_key(key)))
            .item(&names.data, AttributeValue::S("not a map".into()))
            .item(&names.version, AttributeValue::S("one".into()))
            .send()
            .await
            .map(drop)
            .map_err(|e| FixtureError::store("a corrupt item", self.endpoint.clone(), e))
    }
}

impl Deref for DynamoDb {
    type Target = DynamoDbStore;

    fn deref(&self) -> &DynamoDbStore {
        &self.store
    }
}

impl Harness for DynamoDb {
    type Store = DynamoDbStore;

    async fn store(&self) -> DynamoDbStore {
        DynamoDbStore::from_client(self.client(), self.config.clone())
    }

    #[allow(clippy::panic)] // A harness that cannot corrupt must fail the case, not skip it.
    async fn corrupt(&self, key: &SessionKey) -> bool {
        if let Err(error) = self.plant_corrupt_item(key).await {
            panic!("could not corrupt the item: {error}");
        }
        true
    }
}
