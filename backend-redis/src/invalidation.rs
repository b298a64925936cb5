//! `RedisInvalidationChannel`: the cache layer's invalidation channel on
//! classic Redis pub/sub, with a heartbeat that notices a Redis that stops
//! answering while its socket stays open.
//!
//! Why a heartbeat: a paused, overloaded or partitioned Redis keeps the
//! subscriber's TCP connection open, so "the message stream ended" alone
//! would leave caches trusting a channel that delivers nothing. Every
//! heartbeat interval the subscription task publishes a numbered message
//! to a channel only it listens to (`<channel>:hb:<random nonce>`), through
//! the same path a peer's invalidation takes (a normal connection, then
//! the server's fan-out to the subscriber connection). If that message is
//! not back within the heartbeat timeout, the task reports
//! [`ChannelEvent::Disconnected`], drops the connection and reconnects with
//! backoff; subscribers fall back to bounded staleness meanwhile.
//!
//! Classic `PUBLISH` is broadcast to every node of a Redis Cluster, so the
//! subscription needs one node only (any seed URL that answers); publishes
//! go through a pooled [`RedisConnection`] (standalone or cluster).
//!
//! Over plain TCP the subscription opens its own socket, watches it (the
//! `watch` module), so [`InvalidationChannel::in_transit`] can tell a
//! cache that a message about the session it would serve has reached this
//! process and not the cache yet, and reads it itself (the `subscriber`
//! module); over TLS or a Unix socket redis-rs subscribes, unwatched.
//! A publish that ends a session returns only after a `PING` answered,
//! when Redis has written the message to every subscriber's socket.
//!
//! A [`RedisStore`](crate::RedisStore) given this channel's name with
//! [`with_announcements`](crate::RedisStore::with_announcements) publishes
//! on it from inside its write scripts, in the same wire form; a cache in
//! front of such a store then never publishes itself.

use std::fmt;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::{Either, select};
use futures_util::{Stream, StreamExt};
use offstate_core::{
    CachedCopy, ChannelEvent, Invalidation, InvalidationChannel, SessionId, StoreError,
};
use redis::{Client, ConnectionAddr};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::RedisConfig;
use crate::connection::{RedisConnection, connection_info};
use crate::error::{ConnectError, from_redis};
use crate::subscriber::{Pushed, Subscriber};
use crate::watch::{Watch, Watched};

/// The channel name used unless
/// [`RedisInvalidationChannel::with_channel_name`] says otherwise, after the
/// configuration's key prefix: `offstate:invalidations` by default.
pub const DEFAULT_CHANNEL_SUFFIX: &str = "invalidations";

/// How often the subscription checks itself unless configured: 1 second.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);

/// The first wait before reconnecting after a loss.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// The longest wait between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Events buffered for a slow subscriber before the task waits for it.
const EVENT_BUFFER: usize = 1024;

/// An [`InvalidationChannel`] on Redis pub/sub, for
/// `offstate_cache::CachedStore`'s coherent mode.
///
/// It is independent of the session store: any backend's caches can use
/// it whenever a Redis (or ElastiCache) URL is available, e.g. sessions in
/// DynamoDB and invalidations through a small ElastiCache Redis.
///
/// Clones share the publishing pool and settings. Each
/// [`subscribe`](InvalidationChannel::subscribe) opens one dedicated
/// pub/sub connection. An ACL user (ElastiCache RBAC) needs
/// `+publish +subscribe` and the channels `&<channel>*` (the heartbeat
/// channels are `<channel>:hb:<nonce>`).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use offstate_core::InvalidationChannel;
/// use offstate_redis::{RedisConfig, RedisInvalidationChannel};
///
/// let channel = RedisInvalidationChannel::connect(&RedisConfig::new("redis://127.0.0.1:6379"))
///     .await?
///     .with_heartbeat(Duration::from_millis(500));
/// let mut events = channel.subscribe();
/// // The first event says whether the subscription is live.
/// println!("{:?}", events.recv().await);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisInvalidationChannel {
    publisher: RedisConnection,
    config: RedisConfig,
    channel: Arc<str>,
    heartbeat: Duration,
    heartbeat_timeout: Duration,
    /// The subscriptions' watches, for `in_transit`.
    watches: Arc<Mutex<Vec<Weak<Watch>>>>,
}

impl fmt::Debug for RedisInvalidationChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisInvalidationChannel")
            .field("channel", &self.channel)
            .field("heartbeat", &self.heartbeat)
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("publisher", &self.publisher)
            .finish_non_exhaustive()
    }
}

impl RedisInvalidationChannel {
    /// A channel on the Redis that `config` names (same URLs, TLS, AUTH and
    /// cluster mode as the store), publishing through a pool of its own.
    ///
    /// # Errors
    ///
    /// [`ConnectError`] for an unusable configuration, or when cluster mode
    /// detection ([`ClusterMode::Auto`](crate::ClusterMode::Auto)) found no
    /// server.
    pub async fn connect(config: &RedisConfig) -> Result<Self, ConnectError> {
        let publisher = RedisConnection::connect(config).await?;
        Self::from_connection(publisher, config)
    }

    /// A channel publishing through an existing pool (for example
    /// [`RedisStore::connection`](crate::RedisStore::connection)'s), and
    /// subscribing to the first URL of `config` that answers.
    ///
    /// # Errors
    ///
    /// [`ConnectError::NoUrl`] when `config` has no URL, and
    /// [`ConnectError::Client`] for one that does not parse.
    pub fn from_connection(
        publisher: RedisConnection,
        config: &RedisConfig,
    ) -> Result<Self, ConnectError> {
        if config.urls.is_empty() {
            return Err(ConnectError::NoUrl);
        }
        for url in &config.urls {
            connection_info(config, url)?;
        }
        let heartbeat = DEFAULT_HEARTBEAT;
        Ok(Self {
            publisher,
            config: config.clone(),
            channel: format!("{}{DEFAULT_CHANNEL_SUFFIX}", config.key_prefix).into(),
            heartbeat,
            heartbeat_timeout: default_timeout(heartbeat, config),
            watches: Arc::default(),
        })
    }

    /// Uses `name` as the channel, verbatim (the key prefix is not added).
    /// Every instance whose caches must agree uses the same name.
    #[must_use]
    pub fn with_channel_name(mut self, name: impl Into<String>) -> Self {
        self.channel = name.into().into();
        self
    }

    /// Checks the subscription every `interval` (default
    /// [`DEFAULT_HEARTBEAT`]); a heartbeat not back within the heartbeat
    /// timeout counts as a lost channel. Also sets the timeout to
    /// `interval` or the command timeout, whichever is longer, unless
    /// [`with_heartbeat_timeout`](Self::with_heartbeat_timeout) follows.
    #[must_use]
    pub fn with_heartbeat(mut self, interval: Duration) -> Self {
        self.heartbeat = interval.max(Duration::from_millis(1));
        self.heartbeat_timeout = default_timeout(self.heartbeat, &self.config);
        self
    }

    /// How long a heartbeat may take to come back before the channel counts
    /// as lost.
    #[must_use]
    pub fn with_heartbeat_timeout(mut self, timeout: Duration) -> Self {
        self.heartbeat_timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The channel's name.
    #[must_use]
    pub fn channel_name(&self) -> &str {
        &self.channel
    }

    /// The heartbeat interval.
    #[must_use]
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// The heartbeat timeout.
    #[must_use]
    pub fn heartbeat_timeout(&self) -> Duration {
        self.heartbeat_timeout
    }

    async fn publish_text(&self, channel: &str, text: String) -> Result<(), StoreError> {
        let mut cmd = redis::cmd("PUBLISH");
        cmd.arg(channel).arg(text);
        // The reply is the number of receivers on the node; zero is fine.
        self.publisher.query::<i64>(&cmd).await.map(|_| ())
    }
}

fn default_timeout(heartbeat: Duration, config: &RedisConfig) -> Duration {
    heartbeat.max(config.command_timeout)
}

impl InvalidationChannel for RedisInvalidationChannel {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        self.publish_text(&self.channel, message.encode()).await?;
        // A session ended (or a write of unknown outcome): return only once
        // the message is on every subscriber's socket. Saves do not wait.
        if matches!(
            message,
            Invalidation::Key { version: None, .. } | Invalidation::Principal(_)
        ) {
            self.publisher.flush_replies().await;
        }
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent> {
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let watch = Arc::new(Watch::new(&self.channel));
        {
            let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
            watches.retain(|w| w.strong_count() > 0);
            watches.push(Arc::downgrade(&watch));
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(subscription(self.clone(), tx, watch));
            }
            Err(_) => tracing::error!(
                "RedisInvalidationChannel::subscribe needs a tokio runtime; the subscription is closed"
            ),
        }
        rx
    }

    /// True while a message about `copy` (its key at a newer version, a
    /// delete of it, a revoke of its principal), or bytes that cannot be
    /// read as a message yet, are on this process's subscriber socket, or
    /// read off it and not yet in the subscriber's queue. Over TLS or a
    /// Unix socket the subscription cannot be watched, and this is false.
    fn in_transit(&self, copy: &CachedCopy<'_>) -> bool {
        let watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches
            .iter()
            .filter_map(Weak::upgrade)
            .any(|watch| watch.in_transit(copy))
    }
}

/// A subscribed connection: read by offstate when it is watched, by
/// redis-rs otherwise (see the `subscriber` module).
enum Source {
    Watched(Subscriber),
    Other(Pin<Box<dyn Stream<Item = redis::Msg> + Send>>),
}

impl Source {
    /// The next message, or why there is none.
    async fn next(&mut self) -> Result<Pushed, String> {
        match self {
            Self::Watched(subscriber) => subscriber.next().await,
            Self::Other(stream) => match stream.next().await {
                Some(message) => Ok(Pushed {
                    channel: message.get_channel_name().as_bytes().to_vec(),
                    payload: message.get_payload_bytes().to_vec(),
                }),
                None => Err("the subscription connection closed".into()),
            },
        }
    }
}

/// Why one subscribed session ended.
enum End {
    /// The receiver was dropped: stop for good.
    Closed,
    /// The channel was lost: report it and reconnect.
    Lost(String),
}

/// The subscription task: connect, subscribe, forward, notice loss,
/// reconnect; until the receiver is dropped.
async fn subscription(
    channel: RedisInvalidationChannel,
    tx: mpsc::Sender<ChannelEvent>,
    watch: Arc<Watch>,
) {
    // Reported state: None before the first event.
    let mut connected: Option<bool> = None;
    let mut failures: u32 = 0;
    let mut node = 0usize;
    let nonce = SessionId::generate().key().as_str().to_owned();
    let heartbeat_channel = format!("{}:hb:{nonce}", channel.channel);
    loop {
        if tx.is_closed() {
            return;
        }
        let url = channel.config.urls[node % channel.config.urls.len()].clone();
        node = node.wrapping_add(1);
        let opened = open(&channel, &url, &heartbeat_channel, &watch).await;
        if opened.is_err() {
            watch.closed();
        }
        match opened {
            Ok(source) => {
                failures = 0;
                if tx.send(ChannelEvent::Connected).await.is_err() {
                    return;
                }
                if connected == Some(false) {
                    tracing::info!(channel = %channel.channel, "session invalidation channel back");
                }
                connected = Some(true);
                let end = listen(&channel, source, &heartbeat_channel, &tx, &watch).await;
                watch.closed();
                match end {
                    End::Closed => return,
                    End::Lost(why) => {
                        tracing::warn!(channel = %channel.channel, %why, "session invalidation channel lost; reconnecting");
                    }
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                if connected != Some(false) {
                    tracing::warn!(channel = %channel.channel, %error, "cannot subscribe to the session invalidation channel; retrying");
                } else {
                    tracing::debug!(channel = %channel.channel, %error, "still cannot subscribe to the session invalidation channel");
                }
            }
        }
        if connected != Some(false) {
            if tx.send(ChannelEvent::Disconnected).await.is_err() {
                return;
            }
            connected = Some(false);
        }
        let wait = backoff(failures, &nonce);
        let closed = pin!(tx.closed());
        let slept = pin!(tokio::time::sleep(wait));
        if let Either::Left(_) = select(closed, slept).await {
            return;
        }
    }
}

/// The wait before reconnection attempt `failures` (0 right after a loss):
/// doubling from [`BACKOFF_MIN`] up to [`BACKOFF_MAX`], with up to 25 %
/// jitter so instances do not reconnect in lockstep.
fn backoff(failures: u32, nonce: &str) -> Duration {
    let base = BACKOFF_MIN
        .saturating_mul(1u32 << failures.min(8))
        .min(BACKOFF_MAX);
    let seed = nonce.bytes().fold(u64::from(failures), |h, b| {
        h.wrapping_mul(31).wrapping_add(u64::from(b))
    });
    let quarter = base.as_millis() / 4;
    let jitter = u64::try_from(quarter).unwrap_or(0);
    let extra = if jitter == 0 { 0 } else { seed % jitter };
    base + Duration::from_millis(extra)
}

/// Connects a dedicated pub/sub connection to `url` and subscribes to the
/// channel and this task's heartbeat channel, within the connect and
/// command timeouts. A plain TCP connection is opened here, so that
/// `watch` can peek at its socket; others are left to redis-rs, unwatched.
async fn open(
    channel: &RedisInvalidationChannel,
    url: &str,
    heartbeat_channel: &str,
    watch: &Arc<Watch>,
) -> Result<Source, StoreError> {
    let config = &channel.config;
    let bound = config
        .connect_timeout
        .saturating_add(config.command_timeout);
    let info = connection_info(config, url).map_err(StoreError::backend)?;
    let channels = [&*channel.channel, heartbeat_channel];
    let work = async {
        if let ConnectionAddr::Tcp(host, port) = info.addr() {
            let socket = tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .and_then(|socket| {
                    socket.set_nodelay(true)?;
                    let socket = socket.into_std()?;
                    let peek = socket.try_clone()?;
                    Ok((tokio::net::TcpStream::from_std(socket)?, peek))
                })
                .map_err(StoreError::unavailable)?;
            let (socket, peek) = socket;
            watch.watch(peek);
            let stream = Watched::new(socket, Arc::clone(watch));
            let subscriber =
                Subscriber::subscribe(stream, info.redis_settings(), &channels).await?;
            return Ok(Source::Watched(subscriber));
        }
        watch.unwatched();
        let client = Client::open(info).map_err(|e| from_redis(e, bound))?;
        let mut pubsub = client
            .get_async_pubsub()
            .await
            .map_err(|e| from_redis(e, bound))?;
        pubsub
            .subscribe(&channels)
            .await
            .map_err(|e| from_redis(e, bound))?;
        Ok(Source::Other(Box::pin(pubsub.into_on_message())))
    };
    match tokio::time::timeout(bound, work).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Timeout(bound)),
    }
}

/// Forwards messages and runs the heartbeat until the subscription is lost
/// or the receiver is dropped.
async fn listen(
    channel: &RedisInvalidationChannel,
    mut source: Source,
    heartbeat_channel: &str,
    tx: &mpsc::Sender<ChannelEvent>,
    watch: &Watch,
) -> End {
    let mut beat: u64 = 0;
    // The heartbeat in flight and when it is due back.
    let mut due: Option<Instant> = None;
    let mut next_beat = Instant::now();
    loop {
        // The receiver's end is noticed here, at least once per heartbeat.
        if tx.is_closed() {
            return End::Closed;
        }
        let wake = due.map_or(next_beat, |d| d.min(next_beat));
        let timer = pin!(tokio::time::sleep_until(wake));
        let next = pin!(source.next());
        match select(next, timer).await {
            Either::Left((Err(why), _)) => return End::Lost(why),
            Either::Left((Ok(message), _)) => {
                let payload = &message.payload[..];
                if message.channel == heartbeat_channel.as_bytes() {
                    let seq = std::str::from_utf8(payload)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok());
                    if seq == Some(beat) {
                        due = None;
                    }
                    watch.forwarded();
                    continue;
                }
                let decoded = std::str::from_utf8(payload).ok().map(Invalidation::decode);
                match decoded {
                    Some(Ok(invalidation)) => {
                        if tx.send(ChannelEvent::Message(invalidation)).await.is_err() {
                            return End::Closed;
                        }
                        // Queued: from now on the cache sees it pending.
                        watch.forwarded();
                    }
                    // The payload may name a principal: log its size only.
                    _ => {
                        tracing::warn!(
                            bytes = payload.len(),
                            "ignoring a malformed invalidation message"
                        );
                        watch.forwarded();
                    }
                }
            }
            Either::Right(((), _)) => {
                let now = Instant::now();
                if due.is_some_and(|d| now >= d) {
                    return End::Lost(format!(
                        "heartbeat not back within {:?}",
                        channel.heartbeat_timeout
                    ));
                }
                if now >= next_beat {
                    next_beat = now + channel.heartbeat;
                    if due.is_none() {
                        beat = beat.wrapping_add(1);
                        due = Some(now + channel.heartbeat_timeout);
                        // Off the loop, so a hung publish cannot stall
                        // message delivery; a failed one simply does not
                        // come back, which the deadline catches.
                        let publisher = channel.clone();
                        let target = heartbeat_channel.to_owned();
                        let text = beat.to_string();
                        tokio::spawn(async move {
                            if let Err(error) = publisher.publish_text(&target, text).await {
                                tracing::debug!(%error, "session invalidation heartbeat not published");
                            }
                        });
                    }
                }
            }
        }
    }
}
