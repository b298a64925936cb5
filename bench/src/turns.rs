//! One variant's turns on one mix over HTTP: what each turn measured (the
//! load, the app's and Redis's CPU, the commands Redis ran) and their sum,
//! summarised as a [`Phase`].

use std::collections::BTreeMap;
use std::time::Duration;

use crate::BenchError;
use crate::loadgen::{self, Mix};
use crate::redis_stats::CommandStats;
use crate::run::Phase;

/// What one turn of a variant on one mix measured, before it is added to
/// the variant's other turns and summarised as a [`Phase`].
#[derive(Debug, Default)]
pub(crate) struct Sample {
    load: loadgen::LoadResult,
    app_cpu_seconds: f64,
    redis_cpu_seconds: f64,
    commands: BTreeMap<String, u64>,
}

impl Sample {
    pub(crate) fn add(&mut self, other: Self) {
        self.load.ok += other.load.ok;
        self.load.errors += other.load.errors;
        self.load.elapsed += other.load.elapsed;
        self.load.latencies_us.extend(other.load.latencies_us);
        self.app_cpu_seconds += other.app_cpu_seconds;
        self.redis_cpu_seconds += other.redis_cpu_seconds;
        for (name, n) in other.commands {
            *self.commands.entry(name).or_default() += n;
        }
    }

    pub(crate) fn into_phase(mut self) -> Phase {
        self.load.latencies_us.sort_unstable();
        let requests = (self.load.ok + self.load.errors).max(1) as f64;
        Phase {
            rps: self.load.rps(),
            p50_ms: self.load.percentile_ms(0.50),
            p99_ms: self.load.percentile_ms(0.99),
            ok: self.load.ok,
            errors: self.load.errors,
            commands: self.commands,
            app_cpu_us: self.app_cpu_seconds * 1e6 / requests,
            redis_cpu_us: self.redis_cpu_seconds * 1e6 / requests,
        }
    }
}

/// Runs `mix` on `clients` for `seconds` against the app of `app_pid`.
pub(crate) async fn sample(
    clients: Vec<loadgen::HttpClient>,
    stats: &mut CommandStats,
    app_pid: u32,
    mix: Mix,
    seconds: f64,
) -> Result<(Vec<loadgen::HttpClient>, Sample), BenchError> {
    stats.reset().await?;
    let redis_cpu = stats.cpu_seconds().await?;
    let app_cpu = process_cpu_seconds(app_pid).unwrap_or(0.0);
    let (clients, load) = loadgen::run(clients, mix, Duration::from_secs_f64(seconds)).await;
    let app_cpu_seconds = process_cpu_seconds(app_pid).unwrap_or(0.0) - app_cpu;
    let redis_cpu_seconds = stats.cpu_seconds().await? - redis_cpu;
    let commands = stats.calls().await?;
    let sample = Sample {
        load,
        app_cpu_seconds,
        redis_cpu_seconds,
        commands,
    };
    Ok((clients, sample))
}

/// Each variant's time on each mix is split into this many turns, and the
/// variants take their turns in rounds (round 1: every variant, then round
/// 2...). On a shared machine whose speed drifts over minutes, every
/// variant then meets the same slow and fast spells, instead of the one
/// measured last meeting the slowest; the figures are the sums of the turns.
pub const ROUNDS: u32 = 3;

/// CPU seconds (user + system) process `pid` has used, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s, Linux's USER_HZ).
fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_name = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_add_up_to_one_phase() {
        let turn = |ok: u64, latencies: Vec<u32>, gets: u64| Sample {
            load: loadgen::LoadResult {
                ok,
                errors: 0,
                elapsed: Duration::from_secs(1),
                latencies_us: latencies,
            },
            app_cpu_seconds: 0.5,
            redis_cpu_seconds: 0.25,
            commands: BTreeMap::from([("get".to_owned(), gets)]),
        };
        let mut total = Sample::default();
        total.add(turn(100, vec![3000, 1000], 100));
        total.add(turn(300, vec![2000], 300));
        let phase = total.into_phase();
        assert_eq!(phase.ok, 400);
        assert!((phase.rps - 200.0).abs() < 1e-9);
        assert!((phase.p50_ms - 2.0).abs() < 1e-9);
        assert!((phase.p99_ms - 3.0).abs() < 1e-9);
        assert!((phase.app_cpu_us - 2500.0).abs() < 1e-9);
        assert!((phase.redis_cpu_us - 1250.0).abs() < 1e-9);
        assert!((phase.commands_per_request() - 1.0).abs() < 1e-9);
    }
}
