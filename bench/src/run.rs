//! The whole run behind `scripts/bench.sh`: one redis-server, every app
//! variant in its own process on it, the load (the variants taking turns,
//! see `turns`), the backend's own limit,
//! the lost-update test, the per-backend counts, the instruction counts,
//! the bytes per session, then the report.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use offstate_redis::redis::cmd;
use offstate_testing::Source;
use offstate_testing::process::{ServerProcess, find_program, free_port, run_command};

use crate::BenchError;
use crate::counts::{self, BackendCounts};
use crate::icount::{self, Case, Measured};
use crate::loadgen::{self, Mix};
use crate::lost::{self, LostResult};
use crate::redis_stats::CommandStats;
use crate::server::Variant;
use crate::session_bytes::{self, SessionBytes};
use crate::turns::{ROUNDS, Sample, sample};

/// What to run, from the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Length of each 90/10 run.
    pub seconds: f64,
    /// Length of each read-only and write-only run.
    pub short_seconds: f64,
    /// Concurrent clients.
    pub clients: usize,
    /// Requests per `redis-benchmark` test.
    pub raw_requests: u64,
    /// Concurrent adds in the lost-update test.
    pub lost_adds: u64,
    /// Where the report and chart go.
    pub out_dir: PathBuf,
    /// Criterion's output directory (its `overhead` group is read).
    pub criterion_dir: PathBuf,
    /// Requests in the small and the large callgrind run of each case.
    pub icount_requests: [u64; 2],
    /// Where the callgrind files go.
    pub icount_dir: PathBuf,
}

/// One timed run, summarised.
#[derive(Debug, Clone, Default)]
pub struct Phase {
    /// Successful requests per second.
    pub rps: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Successful requests.
    pub ok: u64,
    /// Failed requests.
    pub errors: u64,
    /// Redis calls per command during the run.
    pub commands: BTreeMap<String, u64>,
    /// CPU time of the app process per request, µs.
    pub app_cpu_us: f64,
    /// CPU time of redis-server per request, µs.
    pub redis_cpu_us: f64,
}

impl Phase {
    fn requests(&self) -> f64 {
        (self.ok + self.errors).max(1) as f64
    }

    /// Redis round trips (commands sent by clients; a script is one) per
    /// HTTP request.
    #[must_use]
    pub fn commands_per_request(&self) -> f64 {
        crate::redis_stats::client_commands(&self.commands) as f64 / self.requests()
    }

    /// Every command Redis executed, those inside scripts included, per
    /// HTTP request.
    #[must_use]
    pub fn executed_per_request(&self) -> f64 {
        self.commands.values().sum::<u64>() as f64 / self.requests()
    }

    /// `hgetall 0.90, evalsha 0.10`: each command per request.
    #[must_use]
    pub fn command_breakdown(&self) -> String {
        let requests = (self.ok + self.errors).max(1) as f64;
        let mut parts: Vec<_> = self
            .commands
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(name, n)| (name.clone(), *n as f64 / requests))
            .collect();
        parts.sort_by(|a, b| b.1.total_cmp(&a.1));
        let text: Vec<String> = parts
            .iter()
            .filter(|(_, per)| *per >= 0.0005)
            .map(|(name, per)| format!("{} {per:.3}", name.to_uppercase()))
            .collect();
        if text.is_empty() {
            "none".into()
        } else {
            text.join(", ")
        }
    }
}

/// One variant's three runs.
#[derive(Debug, Clone)]
pub struct VariantResult {
    /// Which.
    pub variant: Variant,
    /// 90 % reads, 10 % adds.
    pub mixed: Phase,
    /// Reads only.
    pub read: Phase,
    /// Adds only.
    pub write: Phase,
}

/// `redis-benchmark` at the same concurrency.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawLimit {
    /// GET per second.
    pub get: f64,
    /// SET per second.
    pub set: f64,
}

/// The criterion means, in nanoseconds per request.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overhead {
    /// offstate, handler reads one key.
    pub offstate_read: f64,
    /// offstate, handler writes one key.
    pub offstate_write: f64,
    /// tower-sessions, handler reads one key.
    pub tower_read: f64,
    /// tower-sessions, handler writes one key.
    pub tower_write: f64,
    /// No session layer, same handler shape (reference).
    pub plain: f64,
    /// offstate / tower-sessions on the read handler, interleaved
    /// ([`crate::overhead::interleaved`]), when it ran.
    pub interleaved_read: Option<f64>,
    /// The same on the write handler.
    pub interleaved_write: Option<f64>,
}

/// Everything the report shows.
#[derive(Debug, Clone)]
pub struct Results {
    /// The settings used.
    pub settings: Settings,
    /// `/proc/loadavg` before the run.
    pub load_before: String,
    /// `/proc/loadavg` after the run.
    pub load_after: String,
    /// CPUs the machine has.
    pub cpus: usize,
    /// `redis-server --version`.
    pub redis_version: String,
    /// HTTP runs.
    pub variants: Vec<VariantResult>,
    /// The backend's own limit.
    pub raw: RawLimit,
    /// Lost-update runs.
    pub lost: Vec<LostRun>,
    /// Backend requests per HTTP request.
    pub counts: Vec<BackendCounts>,
    /// Why a per-backend count could not be had.
    pub count_failures: Vec<String>,
    /// Middleware overhead, when criterion's output was found.
    pub overhead: Option<Overhead>,
    /// Instructions per request, by case.
    pub instructions: Vec<Measured>,
    /// Why an instruction count could not be had.
    pub instruction_failures: Vec<String>,
    /// Bytes per session in Redis.
    pub session_bytes: Vec<SessionBytes>,
    /// Why they could not be had.
    pub session_bytes_failure: Option<String>,
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Starts `variant` as a `serve` process of this binary.
fn spawn_app(
    variant: Variant,
    redis_url: &str,
    max_attempts: Option<u32>,
) -> Result<(ServerProcess, SocketAddr), BenchError> {
    let port = free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let exe = std::env::current_exe()?;
    let mut args = vec![
        "serve".to_owned(),
        "--app".to_owned(),
        variant.name().to_owned(),
        "--redis".to_owned(),
        redis_url.to_owned(),
        "--listen".to_owned(),
        addr.to_string(),
    ];
    if let Some(n) = max_attempts {
        args.extend(["--max-attempts".to_owned(), n.to_string()]);
    }
    let mut process = ServerProcess::spawn(&format!("app-{variant}"), &exe, &args)?;
    process.wait_for_port(addr, Duration::from_secs(30))?;
    Ok((process, addr))
}

async fn http_runs(
    settings: &Settings,
    redis_url: &str,
    stats: &mut CommandStats,
) -> Result<Vec<VariantResult>, BenchError> {
    let mut samples: Vec<[Sample; 3]> = Variant::ALL.iter().map(|_| Default::default()).collect();
    let turn = |seconds: f64| seconds / f64::from(ROUNDS);
    for round in 1..=ROUNDS {
        for (variant, [mixed, read, write]) in Variant::ALL.into_iter().zip(&mut samples) {
            eprintln!(
                "[bench] HTTP, round {round} of {ROUNDS}: {}",
                variant.label()
            );
            // Only the variant whose turn it is runs: a fresh process, so
            // that no other app's background work lands in its figures.
            let (process, addr) = spawn_app(variant, redis_url, None)?;
            let clients = loadgen::prepare(addr, settings.clients).await?;
            // A short warm-up: connections, caches, allocator.
            let (mut clients, _) =
                loadgen::run(clients, Mix::OneWriteIn(10), Duration::from_secs(1)).await;
            let pid = process.pid();
            for (mix, seconds, total) in [
                (Mix::OneWriteIn(10), settings.seconds, &mut *mixed),
                (Mix::ReadOnly, settings.short_seconds, &mut *read),
                (Mix::WriteOnly, settings.short_seconds, &mut *write),
            ] {
                let (back, part) = sample(clients, stats, pid, mix, turn(seconds)).await?;
                clients = back;
                total.add(part);
            }
            drop(clients);
            drop(process);
        }
    }
    let mut results = Vec::new();
    for (variant, [mixed, read, write]) in Variant::ALL.into_iter().zip(samples) {
        let (mixed, read, write) = (mixed.into_phase(), read.into_phase(), write.into_phase());
        eprintln!(
            "[bench] HTTP {}: 90/10 {:.0} req/s, p99 {:.2} ms, {:.3} cmd/req, app {:.0} µs + redis {:.0} µs CPU/req; read-only {:.3} cmd/req",
            variant.label(),
            mixed.rps,
            mixed.p99_ms,
            mixed.commands_per_request(),
            mixed.app_cpu_us,
            mixed.redis_cpu_us,
            read.commands_per_request()
        );
        results.push(VariantResult {
            variant,
            mixed,
            read,
            write,
        });
    }
    Ok(results)
}

/// `"GET","71428.57",...` lines of `redis-benchmark --csv`.
fn parse_benchmark_csv(text: &str) -> RawLimit {
    let mut raw = RawLimit::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(',').map(|f| f.trim_matches('"')).collect();
        if fields.len() < 2 {
            continue;
        }
        let Ok(rps) = fields[1].parse::<f64>() else {
            continue;
        };
        match fields[0] {
            "GET" => raw.get = rps,
            "SET" => raw.set = rps,
            _ => {}
        }
    }
    raw
}

fn raw_limit(settings: &Settings, port: u16) -> Result<RawLimit, BenchError> {
    let program = find_program(
        "redis-benchmark",
        "OFFSTATE_REDIS_BENCHMARK",
        &[PathBuf::from("/usr/bin/redis-benchmark")],
    )?;
    let args: Vec<String> = [
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-c",
        &settings.clients.to_string(),
        "-n",
        &settings.raw_requests.to_string(),
        "-r",
        "100000",
        "-t",
        "get,set",
        "--csv",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let output = run_command(&program, &args)?;
    let raw = parse_benchmark_csv(&output);
    if raw.get == 0.0 || raw.set == 0.0 {
        return Err(BenchError::Usage(format!(
            "cannot read redis-benchmark's output: {output}"
        )));
    }
    Ok(raw)
}

/// `max_attempts` for the lost-update runs that show what the retry
/// budget does under 50-way contention on one session.
pub const RAISED_ATTEMPTS: u32 = 200;

/// One lost-update run: which app, and its retry budget if not the default.
#[derive(Debug, Clone)]
pub struct LostRun {
    /// The app.
    pub variant: Variant,
    /// `Sessions::with_max_attempts`, if set.
    pub max_attempts: Option<u32>,
    /// What survived.
    pub result: LostResult,
}

impl LostRun {
    /// How the report names the run.
    #[must_use]
    pub fn label(&self) -> String {
        match self.max_attempts {
            Some(n) => format!("{}, max_attempts = {n}", self.variant.label()),
            None => self.variant.label().to_owned(),
        }
    }
}

async fn lost_runs(settings: &Settings, redis_url: &str) -> Result<Vec<LostRun>, BenchError> {
    let mut results = Vec::new();
    for (variant, max_attempts) in [
        (Variant::TowerSessions, None),
        (Variant::Offstate, None),
        (Variant::OffstateCached, None),
        (Variant::Offstate, Some(RAISED_ATTEMPTS)),
        (Variant::OffstateCached, Some(RAISED_ATTEMPTS)),
    ] {
        eprintln!("[bench] lost updates: {variant}, max_attempts {max_attempts:?}");
        let (a, addr_a) = spawn_app(variant, redis_url, max_attempts)?;
        let (b, addr_b) = spawn_app(variant, redis_url, max_attempts)?;
        // Coherent caches hear of every save within a network hop; a short
        // pause lets the last invalidations arrive before the read-back.
        let settle = if variant == Variant::OffstateCached {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        let result = lost::run([addr_a, addr_b], settings.lost_adds, 50, settle).await?;
        eprintln!(
            "[bench]   {} of {} survived ({} failed)",
            result.survived[0], result.sent, result.timing.errors
        );
        drop((a, b));
        results.push(LostRun {
            variant,
            max_attempts,
            result,
        });
    }
    Ok(results)
}

/// Reads criterion's mean for `overhead/<id>`, in nanoseconds.
fn criterion_mean(dir: &Path, id: &str) -> Option<f64> {
    let path = dir
        .join("overhead")
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value.get("mean")?.get("point_estimate")?.as_f64()
}

fn overhead(dir: &Path) -> Option<Overhead> {
    Some(Overhead {
        offstate_read: criterion_mean(dir, "offstate-read")?,
        offstate_write: criterion_mean(dir, "offstate-write")?,
        tower_read: criterion_mean(dir, "tower-sessions-read")?,
        tower_write: criterion_mean(dir, "tower-sessions-write")?,
        plain: criterion_mean(dir, "no-sessions")?,
        interleaved_read: None,
        interleaved_write: None,
    })
}

/// [`crate::overhead::interleaved`] for both handlers, on a thread of its
/// own with a current-thread runtime (as criterion runs them).
fn interleaved() -> Result<(f64, f64), BenchError> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async {
                    use crate::overhead::Handler;
                    let read = crate::overhead::interleaved(Handler::Read, 20_000).await?;
                    let write = crate::overhead::interleaved(Handler::Write, 10_000).await?;
                    Ok((read, write))
                })
            })
            .join()
            .unwrap_or_else(|_| Err(BenchError::Usage("the interleaved run panicked".into())))
    })
}

/// Runs everything and writes the report.
///
/// # Errors
///
/// [`BenchError`] when a server cannot be started or a measurement fails.
pub async fn run(settings: Settings) -> Result<Results, BenchError> {
    let load_before = loadavg();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let mut overhead = overhead(&settings.criterion_dir);
    if let Some(o) = overhead.as_mut() {
        eprintln!("[bench] in process, interleaved");
        let (read, write) = interleaved()?;
        o.interleaved_read = Some(read);
        o.interleaved_write = Some(write);
    }
    if overhead.is_none() {
        eprintln!(
            "[bench] no criterion output under {}; run `cargo bench -p offstate-bench --bench overhead` first",
            settings.criterion_dir.display()
        );
    }
    let redis = offstate_testing::redis().via(Source::Process).await?;
    let redis_url = redis.url().to_owned();
    let redis_version = redis
        .query::<String>(cmd("INFO").arg("server"))
        .await
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.trim().strip_prefix("redis_version:").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown".into());
    let mut stats = CommandStats::connect(&redis_url).await?;

    let variants = http_runs(&settings, &redis_url, &mut stats).await?;
    eprintln!("[bench] redis-benchmark -c {}", settings.clients);
    let port = redis.node(0).port().unwrap_or_default();
    let raw = raw_limit(&settings, port)?;
    let lost = lost_runs(&settings, &redis_url).await?;

    eprintln!("[bench] backend requests per HTTP request");
    let mut counts = Vec::new();
    let mut count_failures = Vec::new();
    match counts::redis(&redis_url).await {
        Ok(c) => counts.push(c),
        Err(e) => count_failures.push(format!("Redis: {e}")),
    }
    match counts::memcached().await {
        Ok(c) => counts.push(c),
        Err(e) => count_failures.push(format!("memcached: {e}")),
    }
    match counts::dynamodb().await {
        Ok(c) => counts.push(c),
        Err(e) => count_failures.push(format!("DynamoDB: {e}")),
    }

    let (instructions, instruction_failures) = instruction_counts(&settings, &redis_url).await;
    drop(redis);
    eprintln!("[bench] bytes per session in Redis");
    let (session_bytes, session_bytes_failure) = match session_bytes::measure().await {
        Ok(bytes) => (bytes, None),
        Err(e) => {
            eprintln!("[bench]   not measured: {e}");
            (Vec::new(), Some(e.to_string()))
        }
    };
    Ok(Results {
        settings,
        load_before,
        load_after: loadavg(),
        cpus,
        redis_version,
        variants,
        raw,
        lost,
        counts,
        count_failures,
        overhead,
        instructions,
        instruction_failures,
        session_bytes,
        session_bytes_failure,
    })
}

/// Every case of [`Case::report_cases`] under callgrind; HTTP cases on
/// the Redis at `redis_url`.
async fn instruction_counts(settings: &Settings, redis_url: &str) -> (Vec<Measured>, Vec<String>) {
    let mut measured = Vec::new();
    let mut failures = Vec::new();
    for case in Case::report_cases() {
        eprintln!("[bench] instructions: {case}");
        match icount::measure(
            case,
            settings.icount_requests,
            &settings.icount_dir,
            redis_url,
        )
        .await
        {
            Ok(m) => {
                eprintln!("[bench]   {:.0} per request", m.per_request());
                measured.push(m);
            }
            Err(e) => {
                eprintln!("[bench]   not measured: {e}");
                failures.push(format!("{case}: {e}"));
            }
        }
    }
    (measured, failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_redis_benchmark_csv() {
        let raw = parse_benchmark_csv(
            "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"80000.00\",\"0.3\"\n\"GET\",\"90000.50\",\"0.2\"\n",
        );
        assert!((raw.get - 90000.5).abs() < 1e-9);
        assert!((raw.set - 80000.0).abs() < 1e-9);
    }
}
