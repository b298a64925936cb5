//! `RedisConnection`: shared, bounded access to standalone Redis or Redis
//! Cluster from one configuration. Kept apart from the session store so the
//! cache layer can reuse it.
//!
//! It holds a fixed set of slots (the configured pool size), each with one
//! redis-rs multiplexed connection (`MultiplexedConnection` or
//! `ClusterConnection`) that many requests use at once: a call takes the
//! next slot in turn and a clone of its connection, so concurrent requests
//! pipeline on a few sockets, as redis-rs's multiplexed connections are
//! built for. Nothing here uses `MULTI` or `WATCH`, which sharing would
//! break.
//!
//! Why not a pool crate: a checkout from `deadpool` (which this used
//! before) took a semaphore permit, popped and pushed its queue and read
//! the clock, about 1.6k instructions per store call
//! (`scripts/icount.sh read offstate http`), to hand out what is only a
//! clone of a shared connection. `deadpool-redis` also sends
//! `UNWATCH`+`PING` on every checkout, doubling the round trips of a
//! session operation. redis-rs's own `ConnectionManager` reconnects by
//! itself but keeps one socket, and a slot here is exactly that, times the
//! pool size.
//!
//! On plain TCP a slot's socket is `coalesce::Coalescing`: a flush waits
//! one turn of the scheduler, so the commands of requests that run in that
//! turn leave in one `writev` and reach Redis in one read (on the bench's
//! 90/10 mix, about 17 % more requests per second and less than half of
//! Redis's system time per request). TLS and cluster connections are
//! redis-rs's own.
//!
//! A slot connects on first use (one task connects, the others on that
//! slot wait; each within its connect timeout). A
//! connection on which a request failed at the connection level (I/O
//! error, dropped, timed out) is dropped and replaced at the slot's next
//! use; then every other slot checks its connection with a `PING` before
//! its next use too (what broke one, a restarted server, has usually
//! broken all, and a request should not be the one to find out), and so
//! does a connection idle for longer than `IDLE_PING`. So the connections
//! heal by themselves after a server restart without paying a round trip
//! per request.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use offstate_core::StoreError;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo,
    Pipeline, RedisError, RedisFuture, TlsCertificates, Value,
};

use crate::config::{ClusterMode, RedisConfig};
use crate::error::{ConnectError, from_redis};
use crate::slots::{Connector, Slots};

/// A connection idle for longer than this is checked with a `PING`
/// before it is handed out again.
pub(crate) const IDLE_PING: Duration = Duration::from_secs(30);

/// A few shared connections to Redis or Redis Cluster, with every call
/// bounded in time. Clones share the connections.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use offstate_redis::{RedisConfig, RedisConnection};
///
/// let redis = RedisConnection::connect(&RedisConfig::new("redis://127.0.0.1:6379")).await?;
/// let pong: String = redis.query(&redis::cmd("PING")).await?;
/// assert_eq!(pong, "PONG");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    slots: Arc<Slots>,
    cluster: bool,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConnection")
            .field("cluster", &self.is_cluster())
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .finish()
    }
}

impl RedisConnection {
    /// Builds the pool. With [`ClusterMode::Auto`] it asks the first server
    /// whether cluster mode is on, so that server must answer; with an
    /// explicit mode nothing is sent yet, and a server that is down now is
    /// simply connected to later.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] for an unusable configuration, or when detection
    /// found no server.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        if config.urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        if config.uses_tls() {
            // rustls needs a process-wide crypto provider. If the app (or
            // another crate enabling a second provider) installed one
            // already, that one is used; the error only says so.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let infos = config
            .urls
            .iter()
            .map(|url| connection_info(config, url))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = match config.mode {
            ClusterMode::Standalone => false,
            ClusterMode::Cluster => true,
            ClusterMode::Auto => detect_cluster(config, &infos).await?,
        };
        let connector = if cluster {
            Connector::Cluster(cluster_client(config, infos)?)
        } else {
            let info = infos.into_iter().next().ok_or(ConnectError::NoUrl)?;
            Connector::Standalone {
                client: Client::open(info).map_err(ConnectError::Client)?,
                config: async_config(config),
            }
        };
        let slots = Slots::new(connector, config.pool_size, config.connect_timeout);
        Ok(Self {
            slots: Arc::new(slots),
            cluster,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
        })
    }

    /// Whether this is a Redis Cluster connection.
    #[must_use]
    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// The most one bounded call may take: connect timeout plus command
    /// timeout.
    #[must_use]
    pub fn bound(&self) -> Duration {
        self.connect_timeout.saturating_add(self.command_timeout)
    }

    /// A connection of the next slot, connecting if needed. Making or
    /// checking a connection (and waiting for another task that does) is
    /// bounded by the connect timeout.
    ///
    /// # Errors
    ///
    /// [`StoreError::Timeout`] or [`StoreError::Unavailable`] when no
    /// connection can be had.
    pub(crate) async fn get(&self) -> Result<PooledConnection, StoreError> {
        self.slots.get().await.map(PooledConnection)
    }

    /// Runs `work` on a connection of the next slot, within
    /// [`bound`](Self::bound): it never hangs, whatever the server does.
    ///
    /// On a standalone Redis this is the call's one deadline: getting the
    /// connection is bounded by the connect timeout, then `work` by the
    /// command timeout, and redis-rs keeps no timer of its own (a second,
    /// nested timeout cost every command a timer wheel insert and removal).
    /// A `work` cut short marks its connection for replacement, as an I/O
    /// error does: a server that does not answer in time is not trusted
    /// with the next request. On a cluster, redis-rs times each attempt and
    /// retries on another node itself, so the whole call gets one bound.
    ///
    /// # Errors
    ///
    /// What `work` returns, or [`StoreError::Timeout`].
    pub(crate) async fn bounded<T, F, W>(&self, work: F) -> Result<T, StoreError>
    where
        F: FnOnce(PooledConnection) -> W,
        W: Future<Output = Result<T, StoreError>>,
    {
        if self.cluster {
            let bound = self.bound();
            let call = async { work(self.get().await?).await };
            return match tokio::time::timeout(bound, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout(bound)),
            };
        }
        let conn = self.get().await?;
        let broken = Arc::clone(&conn.0.broken);
        match tokio::time::timeout(self.command_timeout, work(conn)).await {
            Ok(result) => result,
            Err(_) => {
                self.slots.mark_broken(&broken);
                Err(StoreError::Timeout(self.command_timeout))
            }
        }
    }

    /// Sends one command on a pooled connection, bounded in time.
    ///
    /// # Errors
    ///
    /// [`StoreError`] from the pool, the server or the timeout.
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        self.bounded(|mut conn| async move {
            cmd.query_async(&mut conn).await.map_err(|e| self.error(e))
        })
        .await
    }

    /// Returns once Redis has written out everything it had to send when
    /// this was called: a `PING` sent after a reply arrived is read in a
    /// later pass of Redis's event loop, and answered after every write of
    /// the pass that produced that reply. Redis 7 writes a command's reply
    /// before the pub/sub messages the command published, so this is what
    /// makes "the logout answered" imply "its message is on every
    /// subscriber's socket" (one server; a cluster forwards publishes to
    /// other nodes on its bus, later). A failure is only logged: the write
    /// it follows stands.
    pub(crate) async fn flush_replies(&self) {
        if let Err(error) = self.query::<String>(&redis::cmd("PING")).await {
            tracing::debug!(%error, "the PING after an announced write failed");
        }
    }

    /// Maps a client error from a command on this connection.
    #[must_use]
    pub(crate) fn error(&self, error: RedisError) -> StoreError {
        from_redis(error, self.command_timeout)
    }
}

/// A connection from a [`RedisConnection`] pool: a handle on one of the
/// pool's multiplexed connections, which other requests use at the same
/// time. [`shared`](Self::shared) gives another handle for sending
/// requests concurrently.
pub(crate) struct PooledConnection(SharedConnection);

impl std::fmt::Debug for PooledConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("PooledConnection").field(&self.0).finish()
    }
}

impl PooledConnection {
    /// A handle on the same multiplexed connection, for concurrent requests.
    #[must_use]
    pub(crate) fn shared(&self) -> SharedConnection {
        self.0.clone()
    }
}

impl ConnectionLike for PooledConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        self.0.req_packed_command(cmd)
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        self.0.req_packed_commands(cmd, offset, count)
    }

    fn get_db(&self) -> i64 {
        self.0.get_db()
    }
}

/// A clone of a pooled multiplexed connection, for sending several requests
/// at once (each on its own clone). A connection-level failure on any clone
/// marks the pooled connection for replacement.
#[derive(Clone)]
pub(crate) struct SharedConnection {
    pub(crate) raw: Raw,
    pub(crate) broken: Arc<AtomicBool>,
    /// Raised (shared by every slot) whenever any connection breaks.
    pub(crate) breaks: Arc<AtomicU64>,
}

#[derive(Clone)]
pub(crate) enum Raw {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for SharedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.raw {
            Raw::Standalone(_) => "standalone",
            Raw::Cluster(_) => "cluster",
        };
        f.debug_struct("SharedConnection")
            .field("kind", &kind)
            .field("broken", &self.broken.load(Ordering::Relaxed))
            .finish()
    }
}

/// Whether an error means the connection itself is no longer trustworthy.
fn breaks_connection(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

impl SharedConnection {
    pub(crate) fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Relaxed)
    }

    /// Marks this connection for replacement, and every other one for a
    /// check: what broke one (a restarted or failed-over server) has
    /// usually broken them all.
    pub(crate) fn mark_broken(broken: &AtomicBool, breaks: &AtomicU64) {
        if !broken.swap(true, Ordering::Relaxed) {
            breaks.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn watch_with<'a, T: Send + 'a>(
        broken: Arc<AtomicBool>,
        breaks: Arc<AtomicU64>,
        request: RedisFuture<'a, T>,
    ) -> RedisFuture<'a, T> {
        Box::pin(async move {
            let result = request.await;
            if let Err(error) = &result
                && breaks_connection(error)
            {
                Self::mark_broken(&broken, &breaks);
            }
            result
        })
    }
}

impl ConnectionLike for SharedConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match &mut self.raw {
            // One box, not two: the standalone command is awaited inline.
            Raw::Standalone(c) => {
                let (broken, breaks) = (&self.broken, &self.breaks);
                Box::pin(async move {
                    let result = c.send_packed_command(cmd).await;
                    if let Err(error) = &result
                        && breaks_connection(error)
                    {
                        Self::mark_broken(broken, breaks);
                    }
                    result
                })
            }
            Raw::Cluster(c) => Self::watch_with(
                self.broken.clone(),
                self.breaks.clone(),
                c.req_packed_command(cmd),
            ),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let request = match &mut self.raw {
            Raw::Standalone(c) => c.req_packed_commands(cmd, offset, count),
            Raw::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        };
        Self::watch_with(self.broken.clone(), self.breaks.clone(), request)
    }

    fn get_db(&self) -> i64 {
        match &self.raw {
            Raw::Standalone(c) => c.get_db(),
            Raw::Cluster(c) => c.get_db(),
        }
    }
}

/// Parses one URL and applies the configured credentials and root
/// certificate.
pub(crate) fn connection_info(
    config: &RedisConfig,
    url: &str,
) -> Result<ConnectionInfo, ConnectError> {
    let mut info = url.into_connection_info().map_err(ConnectError::Client)?;
    if let Some(password) = &config.password {
        let mut settings = info.redis_settings().clone().set_password(password);
        if let Some(username) = &config.username {
            settings = settings.set_username(username);
        }
        info = info.set_redis_settings(settings);
    }
    if let Some(pem) = &config.root_certificate_pem
        && url.starts_with("rediss://")
    {
        let certs = TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        };
        let client = Client::build_with_tls(info, certs).map_err(ConnectError::Client)?;
        info = client.get_connection_info().clone();
    }
    Ok(info)
}

/// A standalone connection's settings: no response timeout, as every call
/// has its deadline from [`RedisConnection::bounded`].
fn async_config(config: &RedisConfig) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(None)
}

fn cluster_client(
    config: &RedisConfig,
    infos: Vec<ConnectionInfo>,
) -> Result<ClusterClient, ConnectError> {
    let mut builder = ClusterClientBuilder::new(infos)
        .connection_timeout(config.connect_timeout)
        .response_timeout(config.command_timeout)
        // Fail over to the caller's timeout rather than retry for long.
        .retries(2);
    if let Some(pem) = &config.root_certificate_pem {
        builder = builder.certs(TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.clone()),
        });
    }
    builder.build().map_err(ConnectError::Client)
}

/// Asks the first server that answers whether it runs in cluster mode.
async fn detect_cluster(
    config: &RedisConfig,
    infos: &[ConnectionInfo],
) -> Result<bool, ConnectError> {
    let bound = config
        .connect_timeout
        .saturating_add(config.command_timeout);
    let mut last = StoreError::unavailable("no Redis URL given");
    for info in infos {
        let probe = async {
            let client = Client::open(info.clone()).map_err(|e| from_redis(e, bound))?;
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&async_config(config))
                .await
                .map_err(|e| from_redis(e, bound))?;
            let info: String = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut conn)
                .await
                .map_err(|e| from_redis(e, bound))?;
            Ok::<_, StoreError>(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
        };
        match tokio::time::timeout(bound, probe).await {
            Ok(Ok(cluster)) => return Ok(cluster),
            Ok(Err(error)) => last = error,
            Err(_) => last = StoreError::Timeout(bound),
        }
    }
    Err(ConnectError::Detect(last))
}
