//! `memory_scale [N] [IDLE_SECS]`: the embedded `MemoryStore` at scale.
//!
//! Creates N sessions (default 1,000,000) with an idle timeout of IDLE_SECS
//! (default 2), each with a small cart, timing every write; waits until they
//! have all expired and times writes again while they are being freed; then
//! leaves the store alone for three seconds and reports what is still held.
//! Prints a markdown table: worst and p99 write latency during the fill and
//! while sessions expire, in wall time and in the thread's CPU time (which a
//! busy machine's scheduler does not inflate), bytes per session (resident memory), and records
//! and memory left after the idle pause.
//!
//! ```sh
//! cargo run --release -p offstate-core --example memory_scale -- 1000000 2
//! ```

#![allow(clippy::expect_used, clippy::cast_precision_loss)] // a measuring program: stop loudly

use std::time::{Duration, Instant};

use offstate_core::{Deadlines, MemoryStore, Record, SessionId, SessionStore, Timestamp};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let idle = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(2));
    let store = MemoryStore::new();
    let rss_before = rss_bytes();

    let mut fill = Vec::with_capacity(n);
    let mut fill_cpu = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let now = Timestamp::now();
        let key = SessionId::generate().key();
        let record = cart(now, idle);
        let t = Instant::now();
        let c = cpu_time();
        store.create(&key, &record, now).await.expect("create");
        fill_cpu.push(cpu_time().saturating_sub(c));
        fill.push(t.elapsed());
    }
    let fill_secs = started.elapsed().as_secs_f64();
    let rss_full = rss_bytes();
    let per_session = rss_full.saturating_sub(rss_before) / n.max(1) as u64;

    // Everything has expired once the idle timeout has passed since the
    // last write; then keep writing while the store frees them.
    tokio::time::sleep(idle + Duration::from_millis(100)).await;
    let mut expiring = Vec::with_capacity(20_000);
    let mut expiring_cpu = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let now = Timestamp::now();
        let key = SessionId::generate().key();
        let record = cart(now, Duration::from_secs(3600));
        let t = Instant::now();
        let c = cpu_time();
        store.create(&key, &record, now).await.expect("create");
        expiring_cpu.push(cpu_time().saturating_sub(c));
        expiring.push(t.elapsed());
    }
    let held_after_writes = store.len();

    // No traffic: the background purge alone.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held_idle = store.len();
    let rss_idle = rss_bytes();

    println!(
        "| MemoryStore, {n} sessions, {}s idle timeout | figure |",
        idle.as_secs()
    );
    println!("|---|---|");
    println!("| fill rate | {:.0} creates/s |", n as f64 / fill_secs);
    for (what, wall, cpu) in [
        ("during the fill", &mut fill, &mut fill_cpu),
        ("while they expire", &mut expiring, &mut expiring_cpu),
    ] {
        println!(
            "| worst write {what}: wall / CPU | {} / {} |",
            show(worst(wall)),
            show(worst(cpu))
        );
        println!(
            "| p99 write {what}: wall / CPU | {} / {} |",
            show(p99(wall)),
            show(p99(cpu))
        );
        println!(
            "| writes over 1 ms {what}: wall / CPU | {} / {} |",
            over_1ms(wall),
            over_1ms(cpu)
        );
    }
    println!("| resident bytes per session | {per_session} |");
    println!(
        "| records held after 20,000 writes past expiry | {held_after_writes} (of {}) |",
        n + 20_000
    );
    println!("| records held after 3 s without traffic | {held_idle} (20,000 live) |");
    println!(
        "| resident memory: empty / full / after the pause | {} / {} / {} MiB |",
        rss_before >> 20,
        rss_full >> 20,
        rss_idle >> 20
    );
}

/// A session like the cart's: three lines in a JSON map.
fn cart(now: Timestamp, idle: Duration) -> Record {
    let mut record = Record::new(now, Deadlines::idle_at(now.saturating_add(idle)));
    record
        .data
        .insert("cart".into(), br#"{"apple":2,"bread":1,"tea":1}"#.to_vec());
    record
}

fn worst(samples: &[Duration]) -> Duration {
    samples.iter().copied().max().unwrap_or_default()
}

fn p99(samples: &mut [Duration]) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    samples[samples.len() * 99 / 100]
}

fn over_1ms(samples: &[Duration]) -> usize {
    samples
        .iter()
        .filter(|d| **d > Duration::from_millis(1))
        .count()
}

/// CPU time this thread has used: unlike wall time, not inflated while the
/// scheduler runs something else.
fn cpu_time() -> Duration {
    cpu_time::ThreadTime::now().as_duration()
}

fn show(d: Duration) -> String {
    if d >= Duration::from_millis(1) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.1} µs", d.as_secs_f64() * 1e6)
    }
}

/// Resident memory of this process, from /proc (0 where there is none).
fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}
