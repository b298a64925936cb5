//! Backend requests per HTTP request, counted (not timed), for every
//! backend offstate supports: the cart app in process (tower `oneshot`)
//! over a [`CountingStore`] around the backend's store, with the backend's
//! own requests counted where the backend is:
//!
//! - Redis: the commands clients sent, read off a `MONITOR` connection,
//!   as round trips (a Lua script is one command, whatever it runs inside
//!   Redis: `MONITOR` marks those `lua`);
//! - memcached: the server's `stats` counters (`cmd_get`, `cmd_set`, which
//!   includes `cas`, `cmd_touch`, deletes, `incr`);
//! - DynamoDB (moto): an SDK interceptor counting every HTTP request the
//!   client transmits, retries included.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use hyper::Method;
use offstate_core::{CallCounts, CountingStore, SessionStore, Sessions};
use offstate_dynamodb::DynamoDbStore;
use offstate_dynamodb::aws_sdk_dynamodb;
use offstate_dynamodb::aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use offstate_dynamodb::aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use offstate_memcached::MemcachedStore;
use offstate_redis::RedisStore;
use offstate_testing::Source;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

use crate::BenchError;
use crate::apps;
use crate::redis_stats::CommandStats;

/// Requests of each kind measured per backend.
const SAMPLES: u64 = 100;

/// Counts for one backend.
#[derive(Debug, Clone)]
pub struct BackendCounts {
    /// The backend's name.
    pub backend: &'static str,
    /// What a backend request is there.
    pub unit: &'static str,
    /// Backend requests for the first add (creates the session).
    pub create: f64,
    /// Backend requests per `GET /cart` on an existing session.
    pub read: f64,
    /// Backend requests per `POST /cart/add` on an existing session.
    pub write: f64,
    /// Backend requests per `POST /cart/add` once the session is logged in
    /// (`set_principal`, which also indexes it under the user).
    pub logged_in_write: f64,
    /// Store calls per read.
    pub read_calls: CallsPerRequest,
    /// Store calls per write.
    pub write_calls: CallsPerRequest,
}

/// Where the backend's own request count comes from.
enum Counter {
    Redis(Monitor),
    Memcached(Vec<String>),
    Dynamo(Arc<AtomicU64>),
}

impl Counter {
    async fn total(&mut self) -> Result<u64, BenchError> {
        match self {
            Self::Redis(monitor) => monitor.sent().await,
            Self::Memcached(nodes) => memcached_requests(nodes).await,
            Self::Dynamo(count) => Ok(count.load(Ordering::SeqCst)),
        }
    }
}

/// The commands clients send a Redis server, counted exactly: `MONITOR`
/// shows each one, and the commands a script runs inside Redis as coming
/// from `lua` (which `INFO commandstats` cannot tell apart; a save that
/// falls through from the common case runs two `GET`s inside its script).
struct Monitor {
    lines: tokio::io::Lines<BufReader<tokio::net::TcpStream>>,
    /// Sends the markers that end each count.
    marker: CommandStats,
    marks: u64,
    sent: u64,
}

impl Monitor {
    async fn connect(url: &str) -> Result<Self, BenchError> {
        let info = offstate_redis::redis::Client::open(url)?
            .get_connection_info()
            .clone();
        let offstate_redis::redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
            return Err(BenchError::Usage(format!(
                "MONITOR needs a TCP address: {url}"
            )));
        };
        let mut stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
        stream.write_all(b"MONITOR\r\n").await?;
        let mut lines = BufReader::new(stream).lines();
        match lines.next_line().await? {
            Some(line) if line.trim() == "+OK" => {}
            other => return Err(BenchError::Usage(format!("MONITOR refused: {other:?}"))),
        }
        Ok(Self {
            lines,
            marker: CommandStats::connect(url).await?,
            marks: 0,
            sent: 0,
        })
    }

    /// Commands clients have sent since the connection, the markers left
    /// out: everything up to a marker sent now.
    async fn sent(&mut self) -> Result<u64, BenchError> {
        self.marks += 1;
        let marker = format!("offstate-bench-mark-{}", self.marks);
        self.marker.echo(&marker).await?;
        loop {
            let Some(line) = self.lines.next_line().await? else {
                return Err(BenchError::Usage("the MONITOR connection closed".into()));
            };
            if line.contains("offstate-bench-mark-") {
                if line.contains(&marker) {
                    return Ok(self.sent);
                }
                continue;
            }
            if monitored_from_client(&line) {
                self.sent += 1;
            }
        }
    }
}

/// Whether a `MONITOR` line (`+<time> [<db> <client>] "cmd" ...`) is a
/// command a client sent, not one a script ran (`[<db> lua]`).
fn monitored_from_client(line: &str) -> bool {
    let Some((_, rest)) = line.split_once('[') else {
        return false;
    };
    let Some((source, _)) = rest.split_once(']') else {
        return false;
    };
    source
        .split_whitespace()
        .nth(1)
        .is_some_and(|client| client != "lua")
}

/// Requests the memcached nodes at `nodes` (`host:port`) have served:
/// the sum of their `stats` request counters.
///
/// # Errors
///
/// [`BenchError::Io`] when a node cannot be reached.
pub async fn memcached_requests(nodes: &[String]) -> Result<u64, BenchError> {
    let mut total = 0;
    for node in nodes {
        total += node_requests(node).await?;
    }
    Ok(total)
}

/// Sum of one memcached node's request counters.
async fn node_requests(node: &str) -> Result<u64, BenchError> {
    const COUNTED: &[&str] = &[
        "cmd_get",
        "cmd_set",
        "cmd_touch",
        "delete_hits",
        "delete_misses",
        "incr_hits",
        "incr_misses",
        "decr_hits",
        "decr_misses",
    ];
    let mut stream = tokio::net::TcpStream::connect(node).await?;
    stream.write_all(b"stats\r\n").await?;
    let mut lines = BufReader::new(stream).lines();
    let mut total = 0;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim();
        if line == "END" {
            break;
        }
        let mut parts = line.split_whitespace();
        if let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
            && COUNTED.contains(&name)
        {
            total += value.parse::<u64>().unwrap_or(0);
        }
    }
    Ok(total)
}

/// Counts every HTTP request the DynamoDB client sends.
#[derive(Debug)]
struct RequestCounter(Arc<AtomicU64>);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "offstate-bench request counter"
    }

    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// One cart request through the app in process: `GET /cart` or
/// `POST /cart/add`; returns the session cookie it set, if any.
async fn call(
    app: &Router,
    method: Method,
    cookie: Option<&str>,
) -> Result<Option<String>, BenchError> {
    let path = if method == Method::GET {
        "/cart"
    } else {
        "/cart/add"
    };
    crate::oneshot::call(app, method, path, cookie).await
}

/// Store calls per HTTP request, by operation.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallsPerRequest {
    /// `load` calls.
    pub load: f64,
    /// `create` calls.
    pub create: f64,
    /// `save` calls.
    pub save: f64,
    /// `touch` calls.
    pub touch: f64,
}

impl std::fmt::Display for CallsPerRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        for (name, n) in [
            ("load", self.load),
            ("create", self.create),
            ("save", self.save),
            ("touch", self.touch),
        ] {
            if n > 0.0 {
                parts.push(format!("{n:.2} {name}"));
            }
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join(" + "))
        }
    }
}

fn per_request(before: CallCounts, after: CallCounts) -> CallsPerRequest {
    let per = |a: u64, b: u64| (b - a) as f64 / SAMPLES as f64;
    CallsPerRequest {
        load: per(before.load, after.load),
        create: per(before.create, after.create),
        save: per(before.save, after.save),
        touch: per(before.touch, after.touch),
    }
}

async fn measure<S: SessionStore + Clone>(
    backend: &'static str,
    unit: &'static str,
    store: S,
    mut counter: Counter,
) -> Result<BackendCounts, BenchError> {
    let counting = CountingStore::new(store);
    let app = apps::offstate_app(Sessions::new(counting.clone()));
    let start = counter.total().await?;
    let cookie = call(&app, Method::POST, None)
        .await?
        .ok_or_else(|| BenchError::Usage("the first add set no cookie".into()))?;
    let created = counter.total().await?;

    let calls = counting.counts();
    for _ in 0..SAMPLES {
        call(&app, Method::GET, Some(&cookie)).await?;
    }
    let read = counter.total().await?;
    let read_calls = per_request(calls, counting.counts());

    let calls = counting.counts();
    for _ in 0..SAMPLES {
        call(&app, Method::POST, Some(&cookie)).await?;
    }
    let written = counter.total().await?;
    let write_calls = per_request(calls, counting.counts());

    let cookie = crate::oneshot::call(&app, Method::POST, "/login", Some(&cookie))
        .await?
        .ok_or_else(|| BenchError::Usage("the login set no cookie".into()))?;
    let logged_in = counter.total().await?;
    for _ in 0..SAMPLES {
        call(&app, Method::POST, Some(&cookie)).await?;
    }
    let logged_in_written = counter.total().await?;

    let per = |a: u64, b: u64| (b - a) as f64 / SAMPLES as f64;
    Ok(BackendCounts {
        backend,
        unit,
        create: (created - start) as f64,
        read: per(created, read),
        write: per(read, written),
        logged_in_write: per(logged_in, logged_in_written),
        read_calls,
        write_calls,
    })
}

/// Counts on the bench's Redis server at `url`.
///
/// # Errors
///
/// [`BenchError`] when Redis cannot be reached or a request fails.
pub async fn redis(url: &str) -> Result<BackendCounts, BenchError> {
    let store = RedisStore::connect(crate::server::redis_config(url)).await?;
    let monitor = Monitor::connect(url).await?;
    measure("Redis", "round trips", store, Counter::Redis(monitor)).await
}

/// Counts on a memcached node started for the purpose.
///
/// # Errors
///
/// [`BenchError`] when memcached cannot be started or a request fails.
pub async fn memcached() -> Result<BackendCounts, BenchError> {
    let fixture = offstate_testing::memcached().via(Source::Process).await?;
    let store: MemcachedStore = fixture.store().clone();
    let counter = Counter::Memcached(fixture.addresses().to_vec());
    let counts = measure("memcached", "commands", store, counter).await;
    drop(fixture);
    counts
}

/// Counts on moto started for the purpose.
///
/// # Errors
///
/// [`BenchError`] when moto cannot be started or a request fails.
pub async fn dynamodb() -> Result<BackendCounts, BenchError> {
    let fixture = offstate_testing::dynamodb().via(Source::Process).await?;
    let count = Arc::new(AtomicU64::new(0));
    let config = fixture
        .client()
        .config()
        .to_builder()
        .interceptor(RequestCounter(Arc::clone(&count)))
        .build();
    let client = aws_sdk_dynamodb::Client::from_conf(config);
    let store = DynamoDbStore::from_client(client, fixture.config().clone());
    let counts = measure(
        "DynamoDB (moto)",
        "HTTP requests",
        store,
        Counter::Dynamo(count),
    )
    .await;
    drop(fixture);
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_lines_from_scripts_are_no_round_trips() {
        assert!(monitored_from_client(
            r#"+1764400000.123456 [0 127.0.0.1:5555] "EVALSHA" "abc" "1" "k""#
        ));
        assert!(monitored_from_client(
            r#"+1764400000.123456 [0 unix:/tmp/r.sock] "GET" "k""#
        ));
        assert!(!monitored_from_client(
            r#"+1764400000.123457 [0 lua] "GET" "k""#
        ));
        assert!(!monitored_from_client("+OK"));
        assert!(!monitored_from_client("+1764400000.1 [0]"));
    }
}
