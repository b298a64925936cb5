//! The cache layer on real Redis: two `CachedStore` instances (two app
//! instances) over one redis-server, kept coherent by
//! `RedisInvalidationChannel`, and what happens when the channel's server
//! pauses or dies.
//!
//! Delays are printed (run with `--nocapture` to see them), never asserted
//! against a speed goal: the promises checked are "B serves the new version
//! once the invalidation arrives" and "B never serves a deleted session
//! after it".

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use offstate_cache::CachedStore;
use offstate_core::{
    Clock, CountingStore, Deadlines, ManualClock, Record, SessionId, SessionStore, Sessions,
};
use offstate_redis::{RedisConfig, RedisInvalidationChannel, RedisStore};
use offstate_testing::{Redis, redis};

/// How often the channels of these tests check themselves.
const HEARTBEAT: Duration = Duration::from_millis(200);
/// How long a heartbeat may take before the channel counts as lost.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);
/// Generous limit for anything that should happen "soon" on a loaded
/// 2-core machine; a bug shows as never, not as late.
const SOON: Duration = Duration::from_secs(15);

async fn sessions_server() -> Redis {
    redis()
        .await
        .expect("a Redis server for sessions (install redis-server, see scripts/setup.sh)")
}

async fn store_on(redis: &Redis) -> RedisStore {
    redis
        .connect_with(redis.config().clone())
        .await
        .expect("store")
}

async fn channel(config: &RedisConfig) -> RedisInvalidationChannel {
    RedisInvalidationChannel::connect(config)
        .await
        .expect("invalidation channel")
        .with_heartbeat(HEARTBEAT)
        .with_heartbeat_timeout(HEARTBEAT_TIMEOUT)
}

/// A coherent cache over `backend`, once its channel reports live.
async fn coherent<S: SessionStore>(
    backend: S,
    channel: RedisInvalidationChannel,
    staleness: Duration,
) -> CachedStore<S> {
    let cached = CachedStore::builder(backend)
        .with_staleness(staleness)
        .with_channel(channel)
        .build();
    wait_until(SOON, || cached.is_coherent())
        .await
        .expect("the Redis invalidation channel never connected");
    cached
}

/// Polls `check` until it holds, for at most `limit`; how long it took.
async fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check() {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

fn record(clock: &dyn Clock, ttl: Duration) -> Record {
    let now = clock.now();
    let mut record = Record::new(now, Deadlines::idle_at(now.saturating_add(ttl)));
    record.data.insert("cart".into(), b"[]".to_vec());
    record
}

async fn value(sessions: &Sessions, id: &SessionId) -> Option<u32> {
    let session = sessions.load(id).await.expect("load")?;
    session.get::<u32>("n").await.expect("get")
}

async fn set(sessions: &Sessions, id: &SessionId, n: u32) {
    let session = sessions.load(id).await.expect("load").expect("live");
    session.insert("n", &n).await.expect("insert");
    session.save().await.expect("save");
}

/// Polls B until it serves `n`; how long that took.
async fn until_served(sessions: &Sessions, id: &SessionId, n: u32) -> Duration {
    let start = Instant::now();
    loop {
        if value(sessions, id).await == Some(n) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < SOON,
            "B still serves an old version {:?} after A wrote {n}",
            start.elapsed()
        );
        tokio::task::yield_now().await;
    }
}

fn summary(mut delays: Vec<Duration>) -> String {
    delays.sort_unstable();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q).round() as usize];
    format!(
        "n={} min={:?} median={:?} p90={:?} max={:?}",
        delays.len(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(1.0)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_is_served_by_b_once_the_invalidation_arrives() {
    // Why: without sticky routing, B must not keep serving what A changed.
    let redis = sessions_server().await;
    let a = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let b = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let (sa, sb) = (Sessions::new(a.clone()), Sessions::new(b.clone()));
    let session = sa.new_session();
    session.insert("n", &0u32).await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("id");

    let mut delays = Vec::new();
    for n in 1..=40u32 {
        // B holds the current version in its cache...
        assert_eq!(value(&sb, &id).await, Some(n - 1));
        let hits = b.stats().hits;
        assert_eq!(value(&sb, &id).await, Some(n - 1));
        assert!(b.stats().hits > hits, "B did not cache the session");
        // ...A changes it, and B serves the change once told.
        set(&sa, &id, n).await;
        delays.push(until_served(&sb, &id, n).await);
    }
    println!(
        "Redis pub/sub invalidation, A's save returned -> B serves the new version: {}",
        summary(delays)
    );
    assert!(b.stats().invalidations_received >= 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_or_logout_on_a_is_never_served_by_b_afterwards() {
    // Why: a logout on one instance must hold on every instance.
    let redis = sessions_server().await;
    let a = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let b = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let (sa, sb) = (Sessions::new(a.clone()), Sessions::new(b.clone()));

    // Three sessions: one deleted (logout), two of one principal revoked
    // (log out everywhere).
    let mut ids = Vec::new();
    for principal in [None, Some("alice"), Some("alice")] {
        let s = sa.new_session();
        s.insert("n", &7u32).await.expect("insert");
        if let Some(p) = principal {
            s.set_principal(p).await.expect("principal");
        }
        s.save().await.expect("create");
        ids.push(s.id().expect("id"));
    }
    for id in &ids {
        // Twice: the second load is a cache hit on B.
        assert_eq!(value(&sb, id).await, Some(7));
        assert_eq!(value(&sb, id).await, Some(7));
    }

    let logout = sa.load(&ids[0]).await.expect("load").expect("live");
    logout.delete().await.expect("delete");
    let gone = wait_until_gone(&sb, &ids[0]).await;
    println!("delete on A -> B no longer serves it: {gone:?}");

    sa.revoke_principal("alice").await.expect("revoke");
    for id in &ids[1..] {
        let gone = wait_until_gone(&sb, id).await;
        println!("revoke on A -> B no longer serves it: {gone:?}");
    }

    // And never again: check for a while, hits and misses alike.
    let start = Instant::now();
    let mut checks = 0;
    while start.elapsed() < Duration::from_secs(2) {
        for id in &ids {
            assert_eq!(value(&sb, id).await, None, "B served a logged-out session");
            checks += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(checks > 30);
    assert!(b.stats().invalidations_received >= 2);
}

async fn wait_until_gone(sessions: &Sessions, id: &SessionId) -> Duration {
    let start = Instant::now();
    while value(sessions, id).await.is_some() {
        assert!(
            start.elapsed() < SOON,
            "B still serves a deleted session after {:?}",
            start.elapsed()
        );
        tokio::task::yield_now().await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_hit_makes_zero_backend_calls() {
    // Why: the point of the cache is to spare Redis on hot sessions.
    let redis = sessions_server().await;
    let backend = CountingStore::new(store_on(&redis).await);
    let cached = coherent(
        backend.clone(),
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let key = SessionId::generate().key();
    let clock = offstate_core::SystemClock;
    cached
        .create(&key, &record(&clock, Duration::from_secs(600)), clock.now())
        .await
        .expect("create");
    backend.reset();
    for _ in 0..100 {
        assert!(
            cached
                .load(&key, clock.now())
                .await
                .expect("load")
                .is_some()
        );
    }
    assert_eq!(backend.counts().total(), 0, "a cache hit reached Redis");
    assert_eq!(cached.stats().hits, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_session_is_never_served_from_the_cache() {
    // Why: a coherent cache entry may live 30 s; the session's deadline wins.
    let redis = sessions_server().await;
    let clock = ManualClock::new();
    let _shared_clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let backend = redis
        .connect_with(redis.config().clone())
        .await
        .expect("store");
    let cached = CachedStore::builder(backend)
        .with_staleness(Duration::from_secs(3600))
        .with_coherent_ttl(Duration::from_secs(3600))
        .with_channel(channel(redis.config()).await)
        .build();
    wait_until(SOON, || cached.is_coherent())
        .await
        .expect("coherent");
    let key = SessionId::generate().key();
    cached
        .create(&key, &record(&clock, Duration::from_secs(60)), clock.now())
        .await
        .expect("create");
    assert!(
        cached
            .load(&key, clock.now())
            .await
            .expect("load")
            .is_some()
    );
    clock.advance(Duration::from_secs(59));
    assert!(
        cached
            .load(&key, clock.now())
            .await
            .expect("load")
            .is_some()
    );
    let hits = cached.stats().hits;
    assert!(hits >= 2, "the session was not served from the cache");
    clock.advance(Duration::from_secs(1));
    assert!(
        cached
            .load(&key, clock.now())
            .await
            .expect("load")
            .is_none(),
        "served an expired session"
    );
    assert_eq!(
        cached.stats().hits,
        hits,
        "the expired load counted as a hit"
    );
}

/// Log lines of this test binary, captured by a global subscriber.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&logs);
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || LogWriter(Arc::clone(&sink)))
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        logs
    })
    .clone()
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        // Echo for --nocapture, keep for the assertions.
        let _ = std::io::stderr().write_all(bytes);
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_contain(logs: &Mutex<Vec<u8>>, text: &str) -> usize {
    String::from_utf8_lossy(&logs.lock().unwrap())
        .matches(text)
        .count()
}

/// In bounded mode: B serves A's change within the staleness bound.
async fn bounded_change_is_seen(sa: &Sessions, sb: &Sessions, id: &SessionId, n: u32) -> Duration {
    assert_eq!(value(sb, id).await, Some(n - 1));
    set(sa, id, n).await;
    until_served(sb, id, n).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_channel_falls_back_to_bounded_staleness_and_recovers() {
    // Why: a paused or dead channel server must not leave caches trusting
    // entries for the coherent TTL while invalidations are lost.
    let logs = captured_logs();
    let redis = sessions_server().await;
    // The channel lives on a server of its own, which the test breaks.
    let channel_server = offstate_testing::redis()
        .await
        .expect("a second Redis for the channel");
    let bound = Duration::from_millis(300);
    let a = coherent(
        store_on(&redis).await,
        channel(channel_server.config()).await,
        bound,
    )
    .await;
    let b = coherent(
        store_on(&redis).await,
        channel(channel_server.config()).await,
        bound,
    )
    .await;
    let (sa, sb) = (Sessions::new(a.clone()), Sessions::new(b.clone()));
    let session = sa.new_session();
    session.insert("n", &0u32).await.expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("id");
    let mut n = 0u32;

    // Coherent: the change arrives as a message.
    n += 1;
    let before = b.stats().invalidations_received;
    let took = bounded_change_is_seen(&sa, &sb, &id, n).await;
    assert!(b.stats().invalidations_received > before);
    println!("coherent: B served A's change after {took:?}");

    for (round, how) in ["pause", "kill"].iter().enumerate() {
        let round = round as u64 + 1;
        let fallback_logs = logs_contain(&logs, "falls back to bounded staleness");
        // Both caches hold the session under the coherent TTL.
        assert_eq!(value(&sb, &id).await, Some(n));
        assert_eq!(value(&sa, &id).await, Some(n));

        let node = channel_server.node(0);
        if round == 1 {
            node.pause().await.expect("pause");
        } else {
            node.kill().await.expect("kill");
        }
        let detected = wait_until(SOON, || !a.is_coherent() && !b.is_coherent())
            .await
            .unwrap_or_else(|| panic!("the caches never noticed the {how} of the channel"));
        println!("{how} of the channel server noticed by both caches after {detected:?}");
        assert!(a.stats().fallbacks >= round && b.stats().fallbacks >= round);
        assert!(
            logs_contain(&logs, "falls back to bounded staleness") >= fallback_logs + 2,
            "no fallback log line"
        );

        // Bounded: B serves A's change within the bound, without messages.
        let mut seen = Vec::new();
        for _ in 0..5 {
            n += 1;
            seen.push(bounded_change_is_seen(&sa, &sb, &id, n).await);
        }
        println!(
            "bounded ({bound:?}) while the channel is down: {}",
            summary(seen.clone())
        );
        let worst = seen.iter().max().copied().unwrap_or_default();
        // Slack for a loaded 2-core machine; the bug this catches is "served
        // for the coherent TTL", 30 s.
        assert!(
            worst <= bound + Duration::from_secs(1),
            "B served a stale version for {worst:?}, bound {bound:?}"
        );
        assert!(!b.is_coherent());

        if round == 1 {
            node.resume().await.expect("resume");
        } else {
            node.restart()
                .await
                .expect("the channel server restarts on its address");
        }
        let back = wait_until(SOON, || a.is_coherent() && b.is_coherent())
            .await
            .unwrap_or_else(|| panic!("coherent mode never resumed after the {how}"));
        println!("coherent again {back:?} after the channel server came back");

        // Coherent again: changes arrive as messages once more.
        n += 1;
        let before = b.stats().invalidations_received;
        let took = bounded_change_is_seen(&sa, &sb, &id, n).await;
        wait_until(SOON, || b.stats().invalidations_received > before)
            .await
            .expect("no invalidation after the channel came back");
        println!("coherent again: B served A's change after {took:?}");
    }
    assert!(logs_contain(&logs, "session invalidation channel lost") >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_updates_over_two_coherent_caches_lose_nothing() {
    // Why: a stale cached read must turn into a conflict and a retry, never
    // a lost item.
    let redis = sessions_server().await;
    let a = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let b = coherent(
        store_on(&redis).await,
        channel(redis.config()).await,
        Duration::from_secs(1),
    )
    .await;
    let sa = Sessions::new(a.clone()).with_max_attempts(100_000);
    let sb = Sessions::new(b.clone()).with_max_attempts(100_000);
    let session = sa.new_session();
    session
        .insert("cart", &Vec::<u32>::new())
        .await
        .expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("id");
    let mut tasks = Vec::new();
    for t in 0..50u32 {
        let sessions = if t % 2 == 0 { sa.clone() } else { sb.clone() };
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            for u in 0..20u32 {
                let s = offstate_core::middleware::open(&sessions, Some(id.clone()));
                let item = t * 100 + u;
                s.update("cart", move |c: Option<Vec<u32>>| {
                    let mut c = c.unwrap_or_default();
                    c.push(item);
                    Some(c)
                })
                .await
                .expect("update");
                s.save().await.expect("save");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let cart: Vec<u32> = Sessions::new(store_on(&redis).await)
        .load(&id)
        .await
        .expect("load")
        .expect("live")
        .get("cart")
        .await
        .expect("get")
        .expect("cart");
    let mut unique = cart.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(cart.len(), 1000, "lost updates");
    assert_eq!(unique.len(), 1000, "duplicated updates");
    println!("1000 updates: A {:?}, B {:?}", a.stats(), b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_channel_works_on_a_redis_cluster() {
    // Why: classic PUBLISH is broadcast to every node, so a subscriber on
    // one seed node hears a publish routed to any other.
    use offstate_core::{ChannelEvent, Invalidation, InvalidationChannel};
    let cluster = offstate_testing::redis_cluster()
        .await
        .expect("a Redis Cluster (install redis-server)");
    let publisher = channel(cluster.config()).await;
    let listener = channel(cluster.config()).await;
    let mut events = listener.subscribe();
    let first = tokio::time::timeout(SOON, events.recv())
        .await
        .expect("event");
    assert_eq!(first, Some(ChannelEvent::Connected));
    // Keys of many slots, so publishes land on every node's connection.
    let mut sent = Vec::new();
    for _ in 0..20 {
        let message = Invalidation::Key {
            key: SessionId::generate().key(),
            version: None,
        };
        publisher.publish(&message).await.expect("publish");
        sent.push(message);
    }
    for message in sent {
        let got = tokio::time::timeout(SOON, events.recv())
            .await
            .expect("message");
        assert_eq!(got, Some(ChannelEvent::Message(message)));
    }
}
