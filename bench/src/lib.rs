//! Benchmarks of offstate against its peer, tower-sessions (taken from
//! crates.io exactly as its users get it), and against the limit of the
//! backend itself. `scripts/bench.sh` runs everything on loopback and
//! writes `bench/results/REPORT.md` and its chart.
//!
//! # Layout
//!
//! - `apps`: the same tiny cart app on offstate, on tower-sessions, and
//!   without sessions (the ceiling).
//! - `server`: the variants, and serving one in its own process.
//! - `loadgen`: the HTTP load generator (hyper, one keep-alive connection
//!   and cookie jar per client).
//! - `redis_stats`: Redis commands per request from `INFO commandstats`.
//! - `lost`: the lost-update test over two app processes.
//! - `counts`: backend requests per HTTP request on Redis, memcached and
//!   DynamoDB.
//! - `overhead`: the in-process app (read one key, write one key) that
//!   `benches/overhead.rs` times with criterion and the
//!   `inprocess-requests` binary runs for the instruction counts.
//! - `oneshot`: one request through a router in process.
//! - `icount`: instructions per request under callgrind, in process and
//!   of the app server over HTTP (`scripts/icount.sh`).
//! - `session_bytes`: `MEMORY USAGE` of a typical session in Redis.
//! - `turns`: one variant's turns on one mix over HTTP, and their sum.
//! - `run`: the whole run; `report` and `chart`: its output.
//!
//! # Example
//!
//! ```
//! use offstate_bench::apps::{add_item, count};
//!
//! let cart = add_item(add_item(None).into());
//! assert_eq!(count(&cart), 2);
//! ```

pub mod apps;
pub mod chart;
pub mod counts;
pub mod icount;
pub mod loadgen;
pub mod lost;
pub mod oneshot;
pub mod overhead;
pub mod redis_stats;
pub mod report;
pub mod run;
pub mod server;
pub mod session_bytes;
pub mod turns;

/// Anything that stops a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BenchError {
    /// Bad command line, or a result that cannot be read.
    #[error("{0}")]
    Usage(String),
    /// A socket or file failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP client failed.
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    /// A response body could not be read in process.
    #[error("response body: {0}")]
    Body(#[from] axum::Error),
    /// A request could not be built.
    #[error("HTTP request: {0}")]
    Request(#[from] hyper::http::Error),
    /// A cookie could not go in a header.
    #[error("cookie header: {0}")]
    Header(#[from] hyper::header::InvalidHeaderValue),
    /// An app answered with an unexpected status.
    #[error("unexpected status {status}: {body}")]
    Status {
        /// The status.
        status: hyper::StatusCode,
        /// The body.
        body: String,
    },
    /// The bench's own Redis connection failed.
    #[error("Redis: {0}")]
    Redis(#[from] offstate_redis::redis::RedisError),
    /// offstate's Redis store could not connect.
    #[error("offstate Redis store: {0}")]
    RedisStore(#[from] offstate_redis::ConnectError),
    /// tower-sessions' Redis client (fred) failed.
    #[error("fred: {0}")]
    Fred(#[from] tower_sessions_redis_store::fred::error::Error),
    /// A server could not be started.
    #[error(transparent)]
    Server(#[from] offstate_testing::ServerError),
    /// A fixture could not be set up.
    #[error(transparent)]
    Fixture(#[from] offstate_testing::FixtureError),
    /// JSON from an app or from criterion did not parse.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The chart could not be drawn.
    #[error("chart: {0}")]
    Chart(String),
}

impl From<std::convert::Infallible> for BenchError {
    fn from(never: std::convert::Infallible) -> Self {
        match never {}
    }
}
