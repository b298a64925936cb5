//! What the cache buys, against a local redis-server this bench starts:
//!
//! 1. **hit path vs backend path**: `CachedStore::load` answered from
//!    memory next to `RedisStore::load` of the same session (criterion
//!    groups `load/cache_hit` and `load/redis`, and a printed ratio);
//! 2. **backend calls per request** on a 90 % read / 10 % write workload
//!    through `Sessions` handles, without the cache and with it (one
//!    instance, and two coherent instances taking requests alternately),
//!    counted with `CountingStore` between the cache and Redis;
//! 3. **memory per cached session**: the cache's own weight for a typical
//!    cart session, and the process RSS growth per 10,000 cached sessions.
//!
//! Figures 2 and 3 are printed before criterion starts. Run with
//! `cargo bench -p offstate-cache`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group};
use offstate_cache::CachedStore;
use offstate_core::{
    Clock, CountingStore, Deadlines, Record, SessionId, SessionKey, SessionStore, Sessions,
    SystemClock,
};
use offstate_redis::{RedisInvalidationChannel, RedisStore};
use offstate_testing::{Redis, Source};
use tokio::runtime::Runtime;

/// A typical small session: a ten-item cart, a language, a CSRF token.
fn cart_record() -> Record {
    let now = SystemClock.now();
    let deadlines = Deadlines::idle_at(now.saturating_add(Duration::from_secs(3600)));
    let mut record = Record::new(now, deadlines);
    let cart: Vec<String> = (0..10).map(|i| format!("\"sku-{i:04}\"")).collect();
    record
        .data
        .insert("cart".into(), format!("[{}]", cart.join(",")).into_bytes());
    record.data.insert("lang".into(), b"\"en\"".to_vec());
    record.data.insert("csrf".into(), vec![b'x'; 43]);
    record
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn server(rt: &Runtime) -> Redis {
    rt.block_on(offstate_testing::redis().via(Source::Process).start())
        .expect("redis-server (install redis-server or set OFFSTATE_REDIS_SERVER)")
}

async fn coherent<S: SessionStore>(backend: S, server: &Redis) -> CachedStore<S> {
    let channel = RedisInvalidationChannel::connect(server.config())
        .await
        .expect("channel");
    let cached = CachedStore::builder(backend).with_channel(channel).build();
    let start = Instant::now();
    while !cached.is_coherent() {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "channel never connected"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cached
}

/// Mean time of `n` calls of `op`.
async fn mean<F, Fut>(n: u32, mut op: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    for _ in 0..n {
        op().await;
    }
    start.elapsed() / n
}

/// A small deterministic generator: the workload is the same every run.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

const SESSIONS: usize = 200;
const REQUESTS: u64 = 10_000;

/// Runs the 90/10 workload over `instances` (alternating), with backend
/// calls counted by `counters`; returns calls per request.
async fn workload(instances: &[Sessions], counters: &[CountingStore<RedisStore>]) -> f64 {
    let first = &instances[0];
    let mut ids = Vec::with_capacity(SESSIONS);
    for _ in 0..SESSIONS {
        let session = first.new_session();
        session.insert("cart", &Vec::<u64>::new()).await.unwrap();
        session.insert("lang", "en").await.unwrap();
        session.save().await.unwrap();
        ids.push(session.id().unwrap());
    }
    for c in counters {
        c.reset();
    }
    let mut rng = Lcg(42);
    for n in 0..REQUESTS {
        let sessions = &instances[(n as usize) % instances.len()];
        let id = &ids[(rng.next() as usize) % SESSIONS];
        let session = sessions.load(id).await.unwrap().expect("live");
        if rng.next().is_multiple_of(10) {
            session
                .update("cart", move |cart: Option<Vec<u64>>| {
                    let mut cart = cart.unwrap_or_default();
                    if cart.len() >= 10 {
                        cart.remove(0);
                    }
                    cart.push(n);
                    Some(cart)
                })
                .await
                .unwrap();
            session.save().await.unwrap();
        } else {
            black_box(session.get::<Vec<u64>>("cart").await.unwrap());
            session.save().await.unwrap();
        }
    }
    let calls: u64 = counters.iter().map(|c| c.counts().total()).sum();
    calls as f64 / REQUESTS as f64
}

fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Figures 1 (as a ratio), 2 and 3, printed once.
fn figures() {
    let rt = runtime();
    let server = server(&rt);
    rt.block_on(async {
        // 1. Hit path vs backend path, as a plain ratio.
        let redis = server.connect_with(server.config().clone()).await.unwrap();
        let cached = coherent(server.connect_with(server.config().clone()).await.unwrap(), &server).await;
        let key = SessionId::generate().key();
        cached.create(&key, &cart_record(), offstate_core::Timestamp::now()).await.unwrap();
        assert!(cached.load(&key, offstate_core::Timestamp::now()).await.unwrap().is_some());
        let hit = mean(20_000, || async {
            black_box(cached.load(&key, offstate_core::Timestamp::now()).await.unwrap());
        })
        .await;
        let backend = mean(2_000, || async {
            black_box(redis.load(&key, offstate_core::Timestamp::now()).await.unwrap());
        })
        .await;
        println!(
            "[cache] load: hit {hit:?}, Redis {backend:?}: the hit path is {:.0}x faster",
            backend.as_secs_f64() / hit.as_secs_f64()
        );

        // 2. Backend calls per request, 90 % read / 10 % write.
        let plain = CountingStore::new(server.connect_with(server.config().clone()).await.unwrap());
        let without = workload(&[Sessions::new(plain.clone())], &[plain]).await;
        let one = CountingStore::new(server.connect_with(server.config().clone()).await.unwrap());
        let with_one = workload(
            &[Sessions::new(coherent(one.clone(), &server).await)],
            &[one],
        )
        .await;
        let (a, b) = (
            CountingStore::new(server.connect_with(server.config().clone()).await.unwrap()),
            CountingStore::new(server.connect_with(server.config().clone()).await.unwrap()),
        );
        let with_two = workload(
            &[
                Sessions::new(coherent(a.clone(), &server).await),
                Sessions::new(coherent(b.clone(), &server).await),
            ],
            &[a, b],
        )
        .await;
        println!(
            "[cache] backend calls per request (90% read / 10% write, {SESSIONS} sessions, {REQUESTS} requests): \
             without cache {without:.3}; with cache, 1 instance {with_one:.3} ({:.1}x fewer); \
             2 coherent instances alternating {with_two:.3} ({:.1}x fewer)",
            without / with_one,
            without / with_two
        );

        // 3. Memory per cached session.
        let filler = server.connect_with(server.config().clone()).await.unwrap();
        let keys: Vec<SessionKey> = (0..10_000).map(|_| SessionId::generate().key()).collect();
        let record = cart_record();
        for key in &keys {
            filler.create(key, &record, offstate_core::Timestamp::now()).await.unwrap();
        }
        let cache = CachedStore::builder(server.connect_with(server.config().clone()).await.unwrap())
            .with_staleness(Duration::from_secs(600))
            .build();
        // Warm the client and the cache's structures before measuring.
        cache.load(&keys[0], offstate_core::Timestamp::now()).await.unwrap();
        cache.run_pending_tasks().await;
        let before = rss_bytes();
        for key in &keys {
            cache.load(key, offstate_core::Timestamp::now()).await.unwrap();
        }
        cache.run_pending_tasks().await;
        let after = rss_bytes();
        let entries = cache.entry_count();
        let weight = cache.weighted_size() / entries.max(1);
        let rss = match (before, after) {
            (Some(b), Some(a)) => format!(
                "{} KiB per 10k sessions ({} B each)",
                a.saturating_sub(b) / 1024,
                a.saturating_sub(b) / 10_000
            ),
            _ => "unavailable (no /proc/self/statm)".into(),
        };
        println!(
            "[cache] memory: {weight} B weighed per cart session ({} B record, {entries} entries); RSS growth {rss}",
            record.size()
        );
    });
}

fn hit_vs_backend(c: &mut Criterion) {
    let rt = runtime();
    let server = server(&rt);
    let (redis, cached, key) = rt.block_on(async {
        let redis = server.connect_with(server.config().clone()).await.unwrap();
        let cached = coherent(
            server.connect_with(server.config().clone()).await.unwrap(),
            &server,
        )
        .await;
        let key = SessionId::generate().key();
        cached
            .create(&key, &cart_record(), offstate_core::Timestamp::now())
            .await
            .unwrap();
        (redis, cached, key)
    });
    let mut group = c.benchmark_group("load");
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_secs(1));
    group.bench_function("cache_hit", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                cached
                    .load(&key, offstate_core::Timestamp::now())
                    .await
                    .unwrap(),
            )
        });
    });
    group.bench_function("redis", |b| {
        b.to_async(&rt).iter(|| async {
            black_box(
                redis
                    .load(&key, offstate_core::Timestamp::now())
                    .await
                    .unwrap(),
            )
        });
    });
    group.finish();
    assert!(cached.stats().hits > 0);
}

criterion_group!(benches, hit_vs_backend);

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` does not, and
    // only checks that the benchmarks run.
    if std::env::args().any(|a| a == "--bench") {
        figures();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
