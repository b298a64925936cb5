//! Session load and save round trips on a local redis-server, next to raw
//! `GET`/`SET` of a value of the same size through the same client, plus the
//! Redis commands each session operation costs (from `INFO commandstats`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use offstate_core::{
    Change, Clock, Deadlines, Record, SaveOutcome, SessionId, SessionKey, SessionStore,
    SystemClock, Version,
};
use offstate_redis::RedisStore;
use offstate_redis::redis::cmd;
use offstate_testing::{Redis, Source};
use tokio::runtime::Runtime;

struct Fixture {
    server: Redis,
    runtime: Runtime,
    store: RedisStore,
    key: SessionKey,
    version: Arc<AtomicU64>,
    deadlines: Deadlines,
    raw_key: String,
    value: Vec<u8>,
}

fn fixture() -> Fixture {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let server = runtime
        .block_on(offstate_testing::redis().via(Source::Process).start())
        .expect("redis-server (install redis-server or set OFFSTATE_REDIS_SERVER)");
    let store = server.store().clone();
    let now = SystemClock.now();
    let deadlines = Deadlines::idle_at(now.saturating_add(Duration::from_secs(3600)));
    let mut record = Record::new(now, deadlines);
    // A typical small session: a cart, a language, a CSRF token.
    let cart: Vec<String> = (0..10).map(|i| format!("\"sku-{i:04}\"")).collect();
    record
        .data
        .insert("cart".into(), format!("[{}]", cart.join(",")).into_bytes());
    record.data.insert("lang".into(), b"\"en\"".to_vec());
    record.data.insert("csrf".into(), vec![b'x'; 43]);
    let value: Vec<u8> = record.data.values().flatten().copied().collect();
    let key = SessionId::generate().key();
    runtime
        .block_on(store.create(&key, &record, offstate_core::Timestamp::now()))
        .expect("create");
    Fixture {
        server,
        runtime,
        store,
        key,
        version: Arc::new(AtomicU64::new(Version::INITIAL.get())),
        deadlines,
        raw_key: "bench:raw".into(),
        value,
    }
}

async fn save_once(f: &Fixture, n: u64) {
    let expected = Version::new(f.version.load(Ordering::Relaxed));
    let mut change = Change::new(expected, f.deadlines);
    change
        .set
        .insert("lang".into(), format!("\"{}\"", n % 7).into_bytes());
    match f
        .store
        .save(&f.key, &change, offstate_core::Timestamp::now())
        .await
        .expect("save")
    {
        SaveOutcome::Saved(v) => f.version.store(v.get(), Ordering::Relaxed),
        other => panic!("unexpected {other:?}"),
    }
}

async fn raw_get(f: &Fixture) {
    let value: Option<Vec<u8>> = f
        .store
        .connection()
        .query(cmd("GET").arg(&f.raw_key))
        .await
        .expect("GET");
    assert!(value.is_some());
}

async fn raw_set(f: &Fixture) {
    let _: () = f
        .store
        .connection()
        .query(cmd("SET").arg(&f.raw_key).arg(&f.value))
        .await
        .expect("SET");
}

fn commandstats(f: &Fixture) -> BTreeMap<String, u64> {
    let mut command = cmd("INFO");
    let info = f.server.query::<String>(command.arg("commandstats"));
    let text = f.runtime.block_on(info).expect("INFO");
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.split(',').find_map(|kv| kv.strip_prefix("calls="))?;
            Some((name.to_owned(), calls.parse().ok()?))
        })
        .collect()
}

/// Runs `op` `n` times and prints the commands it cost per call.
fn count_commands<F, Fut>(f: &Fixture, what: &str, n: u64, op: F)
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    let before = commandstats(f);
    f.runtime.block_on(async {
        for i in 0..n {
            op(i).await;
        }
    });
    let after = commandstats(f);
    let per_op: Vec<String> = after
        .iter()
        .filter_map(|(name, calls)| {
            let delta = calls - before.get(name).copied().unwrap_or(0);
            (delta > 0).then(|| format!("{name}={:.2}", delta as f64 / n as f64))
        })
        .collect();
    println!("redis commands per {what}: {}", per_op.join(" "));
}

/// Mean latency of `op` over `n` sequential calls.
fn mean<F, Fut>(f: &Fixture, n: u64, op: F) -> Duration
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = ()>,
{
    f.runtime.block_on(async {
        let start = Instant::now();
        for i in 0..n {
            op(i).await;
        }
        start.elapsed() / u32::try_from(n).unwrap_or(u32::MAX)
    })
}

fn bench(c: &mut Criterion) {
    let f = fixture();
    f.runtime.block_on(raw_set(&f));

    let mut group = c.benchmark_group("redis");
    group.bench_function("session_load", |b| {
        b.to_async(&f.runtime).iter(|| async {
            f.store
                .load(&f.key, offstate_core::Timestamp::now())
                .await
                .expect("load")
        });
    });
    let n = AtomicU64::new(0);
    group.bench_function("session_save", |b| {
        b.to_async(&f.runtime)
            .iter(|| save_once(&f, n.fetch_add(1, Ordering::Relaxed)));
    });
    group.bench_function("raw_get", |b| b.to_async(&f.runtime).iter(|| raw_get(&f)));
    group.bench_function("raw_set", |b| b.to_async(&f.runtime).iter(|| raw_set(&f)));
    group.finish();

    // The same four, timed back to back, for the ratios.
    const N: u64 = 2000;
    let load = mean(&f, N, |_| async {
        f.store
            .load(&f.key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .map(drop)
            .unwrap_or(())
    });
    let save = mean(&f, N, |i| save_once(&f, i));
    let get = mean(&f, N, |_| raw_get(&f));
    let set = mean(&f, N, |_| raw_set(&f));
    println!(
        "mean latency over {N} calls: load {load:?}, save {save:?}, raw GET {get:?}, raw SET {set:?}; \
         load/GET = {:.2}, save/SET = {:.2}",
        load.as_secs_f64() / get.as_secs_f64(),
        save.as_secs_f64() / set.as_secs_f64(),
    );
    count_commands(&f, "session load", 500, |_| async {
        f.store
            .load(&f.key, offstate_core::Timestamp::now())
            .await
            .expect("load")
            .map(drop)
            .unwrap_or(())
    });
    count_commands(&f, "session save", 500, |i| save_once(&f, i));
    count_commands(&f, "raw GET", 500, |_| raw_get(&f));
}

criterion_group!(benches, bench);
criterion_main!(benches);
