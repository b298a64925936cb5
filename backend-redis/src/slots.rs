//! The slots of a [`RedisConnection`](crate::RedisConnection): one shared
//! multiplexed connection each, made on first use, checked with a `PING`
//! after any connection broke or after `IDLE_PING` idle, and replaced when
//! broken (see the `connection` module docs).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use offstate_core::StoreError;
use redis::cluster::ClusterClient;
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, RedisError};

use crate::coalesce;
use crate::connection::{IDLE_PING, Raw, SharedConnection};
use crate::error::from_redis;

/// How a slot makes a connection.
pub(crate) enum Connector {
    Standalone {
        client: Client,
        config: AsyncConnectionConfig,
    },
    Cluster(ClusterClient),
}

/// The connections (see the module docs).
pub(crate) struct Slots {
    connector: Connector,
    slots: Box<[Slot]>,
    /// The slot the next call takes (modulo their number).
    next: AtomicUsize,
    pings: AtomicUsize,
    /// What `Slot::used` counts from.
    epoch: Instant,
    /// How many connections have broken (see `SharedConnection::breaks`).
    breaks: Arc<AtomicU64>,
    connect_timeout: Duration,
}

/// One shared connection, made on first use.
#[derive(Default)]
struct Slot {
    /// The connection, while it is trusted.
    conn: Mutex<Option<SharedConnection>>,
    /// Held by the one task that connects or checks this slot's connection.
    renewing: tokio::sync::Mutex<()>,
    /// When the connection was last handed out, ms since `Slots::epoch`.
    used: AtomicU64,
    /// `Slots::breaks` when the connection was made or last checked: a
    /// connection broken elsewhere since then is checked before use.
    checked: AtomicU64,
}

impl Slots {
    pub(crate) fn new(connector: Connector, size: usize, connect_timeout: Duration) -> Self {
        Self {
            connector,
            slots: (0..size.max(1)).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            pings: AtomicUsize::new(0),
            epoch: Instant::now(),
            breaks: Arc::new(AtomicU64::new(0)),
            connect_timeout,
        }
    }

    /// Marks the connection whose flag is `broken` for replacement, and
    /// every other one for a check.
    pub(crate) fn mark_broken(&self, broken: &AtomicBool) {
        SharedConnection::mark_broken(broken, &self.breaks);
    }

    pub(crate) async fn get(&self) -> Result<SharedConnection, StoreError> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let now = self.millis();
        if let Some(conn) = slot.fresh(now, self.breaks()) {
            return Ok(conn);
        }
        // Connecting (TCP, TLS, handshake) or pinging is a future of many
        // kilobytes. Boxed, it stays out of every call's own future, which
        // is built and moved on every store call.
        let renew = Box::pin(self.renew(slot, now));
        match tokio::time::timeout(self.connect_timeout, renew).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.connect_timeout)),
        }
    }

    fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::Relaxed)
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The slot's connection, checked or made anew (the caller bounds it).
    async fn renew(&self, slot: &Slot, now: u64) -> Result<SharedConnection, StoreError> {
        let _renewing = slot.renewing.lock().await;
        // Another task may have renewed it while this one waited.
        let breaks = self.breaks();
        if let Some(conn) = slot.fresh(self.millis(), breaks) {
            return Ok(conn);
        }
        let idle = slot.lock().take().filter(|c| !c.is_broken());
        if let Some(mut conn) = idle {
            let n = self.pings.fetch_add(1, Ordering::Relaxed).to_string();
            let echoed: Result<String, _> = redis::cmd("PING").arg(&n).query_async(&mut conn).await;
            if echoed.is_ok_and(|e| e == n) {
                return Ok(slot.keep(conn, now, breaks));
            }
        }
        let connect = async {
            let raw = match &self.connector {
                Connector::Standalone { client, config } => {
                    let info = client.get_connection_info();
                    Raw::Standalone(match info.addr() {
                        ConnectionAddr::Tcp(host, port) => {
                            coalesce::connect(host, *port, info, config.clone()).await?
                        }
                        _ => {
                            client
                                .get_multiplexed_async_connection_with_config(config)
                                .await?
                        }
                    })
                }
                Connector::Cluster(client) => Raw::Cluster(client.get_async_connection().await?),
            };
            Ok::<_, RedisError>(raw)
        };
        let raw = connect
            .await
            .map_err(|error| from_redis(error, self.connect_timeout))?;
        let conn = SharedConnection {
            raw,
            broken: Arc::new(AtomicBool::new(false)),
            breaks: Arc::clone(&self.breaks),
        };
        Ok(slot.keep(conn, now, breaks))
    }
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SharedConnection>> {
        // The guarded value is a plain Option, whole at every unlock.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection, if it is trusted, was used within `IDLE_PING`, and
    /// no connection broke since it was made or checked (`breaks`).
    fn fresh(&self, now: u64, breaks: u64) -> Option<SharedConnection> {
        if self.checked.load(Ordering::Relaxed) != breaks {
            return None;
        }
        let conn = self.lock();
        let conn = conn.as_ref().filter(|c| !c.is_broken())?;
        let idle = now.saturating_sub(self.used.load(Ordering::Relaxed));
        if u128::from(idle) >= IDLE_PING.as_millis() {
            return None;
        }
        self.used.fetch_max(now, Ordering::Relaxed);
        Some(conn.clone())
    }

    fn keep(&self, conn: SharedConnection, now: u64, breaks: u64) -> SharedConnection {
        self.used.store(now, Ordering::Relaxed);
        self.checked.store(breaks, Ordering::Relaxed);
        *self.lock() = Some(conn.clone());
        conn
    }
}
