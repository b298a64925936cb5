//! `offstate-bench`: `run` does the whole benchmark and writes the report;
//! `serve` runs one app variant (the `run` command starts these itself);
//! `icount` counts instructions per request for one case under callgrind
//! (`scripts/icount.sh`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use offstate_bench::BenchError;
use offstate_bench::icount::{self, Case, Place};
use offstate_bench::loadgen::{self, Mix};
use offstate_bench::run::Settings;
use offstate_bench::server::{self, Variant};

const USAGE: &str = "\
usage:
  offstate-bench run [--seconds S] [--short-seconds S] [--clients N]
                     [--raw-requests N] [--lost-adds N]
                     [--out DIR] [--criterion DIR]
                     [--icount-requests SMALL,LARGE] [--icount-dir DIR]
  offstate-bench icount --case read|add|cached-read|cached-add --lib offstate|tower-sessions|none
                        [--http] [--redis URL] [--requests SMALL,LARGE]
                        [--out DIR] [--top N]
      (instructions per request under callgrind; over HTTP it starts its
      own redis-server unless --redis is given)
  offstate-bench serve --app plain|tower-sessions|offstate|offstate-cached
                       --redis URL --listen ADDR [--max-attempts N]
  offstate-bench load --addr ADDR [--seconds S] [--clients N] [--mix mixed|read|write]
      (load on a running `serve`, for profiling it)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("offstate-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

/// The value after `--name`, parsed.
fn option<T: std::str::FromStr>(args: &[String], name: &str) -> Result<Option<T>, BenchError> {
    let Some(i) = args.iter().position(|a| a == name) else {
        return Ok(None);
    };
    let value = args
        .get(i + 1)
        .ok_or_else(|| BenchError::Usage(format!("{name} needs a value\n{USAGE}")))?;
    value
        .parse()
        .map(Some)
        .map_err(|_| BenchError::Usage(format!("bad value for {name}: {value:?}\n{USAGE}")))
}

async fn dispatch(args: &[String]) -> Result<(), BenchError> {
    match args.first().map(String::as_str) {
        Some("serve") => {
            let app: String = option(args, "--app")?
                .ok_or_else(|| BenchError::Usage(format!("--app is required\n{USAGE}")))?;
            let redis: String = option(args, "--redis")?
                .ok_or_else(|| BenchError::Usage(format!("--redis is required\n{USAGE}")))?;
            let listen: SocketAddr = option(args, "--listen")?
                .ok_or_else(|| BenchError::Usage(format!("--listen is required\n{USAGE}")))?;
            let max_attempts: Option<u32> = option(args, "--max-attempts")?;
            server::serve(app.parse::<Variant>()?, &redis, listen, max_attempts).await
        }
        Some("load") => {
            let addr: SocketAddr = option(args, "--addr")?
                .ok_or_else(|| BenchError::Usage(format!("--addr is required\n{USAGE}")))?;
            let seconds: f64 = option(args, "--seconds")?.unwrap_or(10.0);
            let clients: usize = option(args, "--clients")?.unwrap_or(50);
            let mix = match option::<String>(args, "--mix")?.as_deref() {
                None | Some("mixed") => Mix::OneWriteIn(10),
                Some("read") => Mix::ReadOnly,
                Some("write") => Mix::WriteOnly,
                Some(other) => {
                    return Err(BenchError::Usage(format!("unknown mix {other:?}\n{USAGE}")));
                }
            };
            let prepared = loadgen::prepare(addr, clients).await?;
            let (_, result) =
                loadgen::run(prepared, mix, std::time::Duration::from_secs_f64(seconds)).await;
            println!(
                "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, {} errors",
                result.rps(),
                result.percentile_ms(0.5),
                result.percentile_ms(0.99),
                result.errors
            );
            Ok(())
        }
        Some("run") => {
            let root = offstate_testing::workspace_root();
            let settings = Settings {
                seconds: option(args, "--seconds")?.unwrap_or(10.0),
                short_seconds: option(args, "--short-seconds")?.unwrap_or(6.0),
                clients: option(args, "--clients")?.unwrap_or(50),
                raw_requests: option(args, "--raw-requests")?.unwrap_or(200_000),
                lost_adds: option(args, "--lost-adds")?.unwrap_or(1000),
                out_dir: option::<PathBuf>(args, "--out")?
                    .unwrap_or_else(|| root.join("bench").join("results")),
                criterion_dir: option::<PathBuf>(args, "--criterion")?
                    .unwrap_or_else(|| root.join("target").join("criterion")),
                icount_requests: requests(args, "--icount-requests")?,
                icount_dir: option::<PathBuf>(args, "--icount-dir")?
                    .unwrap_or_else(icount::default_out_dir),
            };
            let out_dir = settings.out_dir.clone();
            let results = offstate_bench::run::run(settings).await?;
            offstate_bench::report::write(&results, &out_dir)?;
            print!("{}", offstate_bench::report::render(&results));
            eprintln!("[bench] wrote {}", out_dir.join("REPORT.md").display());
            Ok(())
        }
        Some("icount") => icount_command(args).await,
        _ => Err(BenchError::Usage(USAGE.to_owned())),
    }
}

/// `SMALL,LARGE` after `name`, or the default pair.
fn requests(args: &[String], name: &str) -> Result<[u64; 2], BenchError> {
    option::<String>(args, name)?.map_or(Ok(icount::DEFAULT_REQUESTS), |text| {
        icount::parse_requests(&text)
    })
}

async fn icount_command(args: &[String]) -> Result<(), BenchError> {
    let op: String = option(args, "--case")?
        .ok_or_else(|| BenchError::Usage(format!("--case is required\n{USAGE}")))?;
    let lib: String = option(args, "--lib")?
        .ok_or_else(|| BenchError::Usage(format!("--lib is required\n{USAGE}")))?;
    let place = if args.iter().any(|a| a == "--http") {
        Place::Http
    } else {
        Place::InProcess
    };
    let case = Case::parse(&op, &lib, place)?;
    let requests = requests(args, "--requests")?;
    let out_dir = option::<PathBuf>(args, "--out")?.unwrap_or_else(icount::default_out_dir);
    let top: usize = option(args, "--top")?.unwrap_or(0);
    // Over HTTP without --redis: a redis-server of our own for the run.
    let mut own_redis = None;
    let redis_url = match option::<String>(args, "--redis")? {
        Some(url) => url,
        None if place == Place::Http => {
            let redis = offstate_testing::redis()
                .via(offstate_testing::Source::Process)
                .await?;
            let url = redis.url().to_owned();
            own_redis = Some(redis);
            url
        }
        None => String::new(),
    };
    let measured = icount::measure(case, requests, &out_dir, &redis_url).await?;
    drop(own_redis);
    let [small, large] = &measured.runs;
    println!(
        "{case}: {:.0} instructions per request ({} - {}) / ({} - {} requests)",
        measured.per_request(),
        large.instructions,
        small.instructions,
        large.requests,
        small.requests
    );
    println!("callgrind files: {}", small.file.display());
    println!("                 {}", large.file.display());
    println!(
        "where they go:   callgrind_annotate --inclusive=yes {} | less",
        large.file.display()
    );
    if top > 0 {
        println!(
            "\ntop {top} functions, inclusive instructions per request (same difference; \
             frames around the whole request loop left out):"
        );
        for (name, per) in icount::top_functions(&measured, top)? {
            println!("{per:>10.0}  {}", icount::short_name(&name));
        }
    }
    Ok(())
}
