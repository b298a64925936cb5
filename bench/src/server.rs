//! The app variants the bench compares, and serving one of them: the
//! `serve` subcommand runs one variant in its own process, so every
//! variant gets the same runtime and competes with the load generator the
//! same way.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use axum::Router;
use offstate_cache::CachedStore;
use offstate_core::Sessions;
use offstate_redis::{ClusterMode, RedisConfig, RedisInvalidationChannel, RedisStore};
use tokio::signal::unix::{SignalKind, signal};
use tower_sessions_redis_store::fred::prelude::{ClientLike as _, Config as FredConfig, Pool};

use crate::BenchError;
use crate::apps;

/// How long the cached variant waits for its invalidation channel.
const COHERENT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// One way of running the cart app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// No sessions at all: the ceiling.
    Plain,
    /// tower-sessions 0.14 over tower-sessions-redis-store 0.16.
    TowerSessions,
    /// offstate over `RedisStore`, no cache.
    Offstate,
    /// offstate over a `CachedStore` in front of `RedisStore`.
    OffstateCached,
}

impl Variant {
    /// All variants, in report order.
    pub const ALL: [Self; 4] = [
        Self::Plain,
        Self::TowerSessions,
        Self::Offstate,
        Self::OffstateCached,
    ];

    /// The name on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Plain => "plain",
            Self::TowerSessions => "tower-sessions",
            Self::Offstate => "offstate",
            Self::OffstateCached => "offstate-cached",
        }
    }

    /// A short name for the chart.
    #[must_use]
    pub fn short_label(self) -> &'static str {
        match self {
            Self::Plain => "no sessions",
            Self::TowerSessions => "tower-sessions",
            Self::Offstate => "offstate",
            Self::OffstateCached => "offstate + cache",
        }
    }

    /// What the report calls it.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Plain => "no sessions (ceiling)",
            Self::TowerSessions => "tower-sessions + Redis",
            Self::Offstate => "offstate + Redis",
            Self::OffstateCached => cache_label(),
        }
    }
}

/// What the report calls the cached variant: a `CachedStore` kept
/// coherent by `RedisInvalidationChannel` (pub/sub on the same Redis).
#[must_use]
pub fn cache_label() -> &'static str {
    "offstate + Redis + coherent cache"
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Variant {
    type Err = BenchError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|v| v.name() == s)
            .ok_or_else(|| BenchError::Usage(format!("unknown app {s:?}")))
    }
}

/// offstate's Redis configuration for the bench server at `url`.
#[must_use]
pub fn redis_config(url: &str) -> RedisConfig {
    RedisConfig::new(url)
        .with_cluster_mode(ClusterMode::Standalone)
        .with_pool_size(pool_size())
}

/// Redis connections each variant's client may use: offstate's default
/// pool size (one per 4 CPUs, 1 to 8), and the same number of fred clients
/// for tower-sessions, whose store takes a pool the app builds; or
/// `OFFSTATE_BENCH_POOL` when set (to see how the figures depend on it).
#[must_use]
pub fn pool_size() -> usize {
    std::env::var("OFFSTATE_BENCH_POOL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| RedisConfig::new("redis://127.0.0.1").pool_size())
}

/// The router of `variant`, its sessions in Redis at `redis_url`; offstate
/// variants attempt a conflicting save `max_attempts` times (default 16).
///
/// # Errors
///
/// [`BenchError`] when Redis cannot be reached.
pub async fn router(
    variant: Variant,
    redis_url: &str,
    max_attempts: Option<u32>,
) -> Result<Router, BenchError> {
    let sessions = |sessions: Sessions| match max_attempts {
        Some(n) => sessions.with_max_attempts(n),
        None => sessions,
    };
    Ok(match variant {
        Variant::Plain => apps::plain_app(),
        Variant::Offstate => {
            let store = RedisStore::connect(redis_config(redis_url)).await?;
            apps::offstate_app(sessions(Sessions::new(store)))
        }
        Variant::OffstateCached => {
            let config = redis_config(redis_url);
            let channel = RedisInvalidationChannel::connect(&config).await?;
            // The write scripts announce themselves: a cached write is one
            // round trip, no separate PUBLISH.
            let store = RedisStore::connect(config.clone())
                .await?
                .with_announcements(channel.channel_name());
            let cached = CachedStore::builder(store).with_channel(channel).build();
            // Serve only once the channel is live, so the run measures the
            // coherent mode and not the bounded fallback.
            let deadline = tokio::time::Instant::now() + COHERENT_WAIT;
            while !cached.is_coherent() {
                if tokio::time::Instant::now() > deadline {
                    return Err(BenchError::Usage(
                        "the invalidation channel did not connect".into(),
                    ));
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            apps::offstate_app(sessions(Sessions::new(cached)))
        }
        Variant::TowerSessions => {
            let config = FredConfig::from_url(redis_url)?;
            let pool = Pool::new(config, None, None, None, pool_size())?;
            // The connection task runs for the life of the process.
            let _task = pool.init().await?;
            let store = tower_sessions_redis_store::RedisStore::new(pool);
            apps::tower_sessions_app(store)
        }
    })
}

/// Serves `variant` (as [`router`] builds it) on `listen` until the
/// process is killed, or until SIGTERM or SIGINT, after which it finishes
/// the requests in flight and returns (so a profiler such as callgrind
/// can write its output at exit).
///
/// # Errors
///
/// [`BenchError`] when Redis cannot be reached or the address is taken.
pub async fn serve(
    variant: Variant,
    redis_url: &str,
    listen: SocketAddr,
    max_attempts: Option<u32>,
) -> Result<(), BenchError> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let app = router(variant, redis_url, max_attempts).await?;
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
        })
        .await?;
    Ok(())
}
