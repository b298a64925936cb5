//! Instructions per request, counted by callgrind: unlike req/s and µs,
//! they do not move with the machine's load.
//!
//! A case runs twice under `valgrind --tool=callgrind`, with a small and a
//! large number of requests; the per-request figure is
//! `(I_large - I_small) / (N_large - N_small)`, so start-up, the first
//! request's warm-up and shutdown cancel out.
//!
//! - In process: the `inprocess-requests` binary (the criterion app of
//!   [`crate::overhead`], tower `oneshot`, one thread) is the measured
//!   process.
//! - Over HTTP: the real app server (`offstate-bench serve`, the cart app
//!   of [`crate::apps`] on Redis) is the measured process; this process
//!   sends it the requests one after the other on one keep-alive
//!   connection, then SIGTERM, on which it shuts down gracefully and
//!   callgrind writes its file. Only the app process is counted: HTTP
//!   parsing, the session layer, the Redis client. Redis and the client
//!   are not.
//!
//! The callgrind files stay in the output folder for
//! `callgrind_annotate --inclusive=yes`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use offstate_testing::process::{find_program, free_port, run_command};
use tokio::process::{Child, Command};

use crate::BenchError;
use crate::loadgen::HttpClient;
use crate::server::Variant;

/// Request counts of the two runs when none are given.
pub const DEFAULT_REQUESTS: [u64; 2] = [200, 1200];

/// How long a server under callgrind may take to listen, and to exit.
const PATIENCE: Duration = Duration::from_secs(120);

/// Where the requests are handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Router in process, tower `oneshot`, in-memory stores.
    InProcess,
    /// The app server process over HTTP, sessions in Redis.
    Http,
}

/// What each request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Reads the session (`GET /read` in process, `GET /cart` over HTTP).
    Read,
    /// Writes it (`POST /write` in process, `POST /cart/add` over HTTP).
    Add,
}

/// One measurement: where, what, and on which app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Case {
    /// Where.
    pub place: Place,
    /// What.
    pub op: Op,
    /// Which app; [`Variant::OffstateCached`] is the "cached read".
    pub variant: Variant,
}

impl Case {
    /// The case `op` (`read`, `add`, `cached-read` or `cached-add`) on `lib`
    /// (`offstate`, `tower-sessions` or `none`), in process or over HTTP.
    ///
    /// # Errors
    ///
    /// [`BenchError::Usage`] for unknown names, and for a cached read
    /// other than offstate's over HTTP.
    pub fn parse(op: &str, lib: &str, place: Place) -> Result<Self, BenchError> {
        let variant = match lib {
            "none" | "plain" => Variant::Plain,
            other => other.parse()?,
        };
        let name = op;
        let (op, variant) = match (op, variant) {
            ("read", v) => (Op::Read, v),
            ("add", v) => (Op::Add, v),
            ("cached-read", Variant::Offstate) => (Op::Read, Variant::OffstateCached),
            ("cached-add", Variant::Offstate) => (Op::Add, Variant::OffstateCached),
            ("cached-read" | "cached-add", _) => {
                return Err(BenchError::Usage(format!(
                    "{op} exists for offstate only (its coherent cache)"
                )));
            }
            (other, _) => {
                return Err(BenchError::Usage(format!(
                    "unknown case {other:?} (read, add, cached-read or cached-add)"
                )));
            }
        };
        if place == Place::InProcess && variant == Variant::OffstateCached {
            return Err(BenchError::Usage(format!(
                "{name} is measured over HTTP only (in process the store is in memory)"
            )));
        }
        Ok(Self { place, op, variant })
    }

    /// The cases the report shows.
    #[must_use]
    pub fn report_cases() -> Vec<Self> {
        let libs = [Variant::Plain, Variant::TowerSessions, Variant::Offstate];
        let mut cases = Vec::new();
        for place in [Place::InProcess, Place::Http] {
            for op in [Op::Read, Op::Add] {
                for variant in libs {
                    cases.push(Self { place, op, variant });
                }
            }
        }
        for op in [Op::Read, Op::Add] {
            cases.push(Self {
                place: Place::Http,
                op,
                variant: Variant::OffstateCached,
            });
        }
        cases
    }

    /// A name for files: `http-read-offstate-cached`.
    #[must_use]
    pub fn slug(&self) -> String {
        let place = match self.place {
            Place::InProcess => "inprocess",
            Place::Http => "http",
        };
        let op = match self.op {
            Op::Read => "read",
            Op::Add => "add",
        };
        format!("{place}-{op}-{}", self.variant)
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match (self.op, self.variant) {
            (Op::Read, Variant::OffstateCached) => "cached read",
            (Op::Read, _) => "read",
            (Op::Add, _) => "add",
        };
        let place = match self.place {
            Place::InProcess => "in process",
            Place::Http => "over HTTP",
        };
        write!(f, "{op} on {}, {place}", self.variant.short_label())
    }
}

/// One callgrind run.
#[derive(Debug, Clone)]
pub struct Run {
    /// Requests measured (after the one that starts the session).
    pub requests: u64,
    /// Instructions the process executed in all.
    pub instructions: u64,
    /// Callgrind's output file.
    pub file: PathBuf,
}

/// A case's two runs.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The case.
    pub case: Case,
    /// The small run, then the large one.
    pub runs: [Run; 2],
}

impl Measured {
    /// Instructions per request: the difference of the two runs.
    #[must_use]
    pub fn per_request(&self) -> f64 {
        let [small, large] = &self.runs;
        (large.instructions as f64 - small.instructions as f64)
            / (large.requests - small.requests) as f64
    }
}

/// `"200,1200"` as two request counts, the first smaller.
///
/// # Errors
///
/// [`BenchError::Usage`] otherwise.
pub fn parse_requests(text: &str) -> Result<[u64; 2], BenchError> {
    let bad = || BenchError::Usage(format!("request counts must be SMALL,LARGE: {text:?}"));
    let (small, large) = text.split_once(',').ok_or_else(bad)?;
    let small: u64 = small.trim().parse().map_err(|_| bad())?;
    let large: u64 = large.trim().parse().map_err(|_| bad())?;
    if small >= large {
        return Err(bad());
    }
    Ok([small, large])
}

/// The folder callgrind files go to by default: `target/icount`, next to
/// the profile folder this binary runs from.
#[must_use]
pub fn default_out_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("icount")))
        .unwrap_or_else(|| PathBuf::from("icount"))
}

/// Runs `case` twice with `requests` and counts. Over HTTP the sessions
/// live in Redis at `redis_url`.
///
/// # Errors
///
/// [`BenchError`] when valgrind is missing, a run fails, or an output
/// file cannot be read.
pub async fn measure(
    case: Case,
    requests: [u64; 2],
    out_dir: &Path,
    redis_url: &str,
) -> Result<Measured, BenchError> {
    std::fs::create_dir_all(out_dir)?;
    let mut runs = Vec::with_capacity(2);
    for n in requests {
        let file = out_dir.join(format!("{}-{n}.callgrind", case.slug()));
        match case.place {
            Place::InProcess => in_process(case, n, &file).await?,
            Place::Http => over_http(case, n, &file, redis_url).await?,
        }
        let instructions = total(&std::fs::read_to_string(&file)?).ok_or_else(|| {
            BenchError::Usage(format!("no totals in callgrind file {}", file.display()))
        })?;
        runs.push(Run {
            requests: n,
            instructions,
            file,
        });
    }
    let [small, large] = <[Run; 2]>::try_from(runs)
        .map_err(|_| BenchError::Usage("a case needs exactly two runs".into()))?;
    Ok(Measured {
        case,
        runs: [small, large],
    })
}

/// The total instruction count in a callgrind output file (`totals:`, or
/// `summary:` in files that have no totals line).
#[must_use]
pub fn total(callgrind_file: &str) -> Option<u64> {
    let field = |prefix: &str| {
        callgrind_file
            .lines()
            .find_map(|line| line.strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
    };
    field("totals:").or_else(|| field("summary:"))
}

/// `valgrind --tool=callgrind` writing to `file`, its own messages going
/// to `file.log`.
fn callgrind(file: &Path) -> Result<Command, BenchError> {
    let valgrind = find_program(
        "valgrind",
        "OFFSTATE_VALGRIND",
        &[PathBuf::from("/usr/bin/valgrind")],
    )?;
    let log = std::fs::File::create(log_path(file))?;
    let mut command = Command::new(valgrind);
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", file.display()))
        // quanta's calibration (offstate's store-call clock, and the
        // Prometheus exporter's) spins until its estimate settles: its
        // count depends on time. Not counted; everything else is (the
        // second option must come after the first, which turns it off).
        .arg("--toggle-collect=quanta::Clock::new")
        .arg("--collect-atstart=yes")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
    Ok(command)
}

fn log_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// The end of a run's valgrind log, for error messages.
fn log_tail(file: &Path) -> String {
    let text = std::fs::read_to_string(log_path(file)).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(10).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A program built next to this one (`target/release/<name>`).
fn sibling(name: &str) -> Result<PathBuf, BenchError> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(BenchError::Usage(format!(
            "{} not found; build it with `cargo build --release -p offstate-bench --bins`",
            path.display()
        )))
    }
}

async fn in_process(case: Case, n: u64, file: &Path) -> Result<(), BenchError> {
    let handler = match case.op {
        Op::Read => "read",
        Op::Add => "write",
    };
    let status = callgrind(file)?
        .arg(sibling("inprocess-requests")?)
        .args([case.variant.name(), handler, &n.to_string()])
        .status()
        .await?;
    if !status.success() {
        return Err(BenchError::Usage(format!(
            "{case} ({n} requests) exited with {status}: {}",
            log_tail(file)
        )));
    }
    Ok(())
}

async fn over_http(case: Case, n: u64, file: &Path, redis_url: &str) -> Result<(), BenchError> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let mut server = callgrind(file)?
        .arg(std::env::current_exe()?)
        .args(["serve", "--app", case.variant.name(), "--redis", redis_url])
        .args(["--listen", &addr.to_string()])
        .spawn()?;
    let result = drive(&mut server, case, n, addr, file).await;
    if result.is_err() {
        // kill_on_drop would too; this also reaps it.
        let _ = server.kill().await;
        return result;
    }
    let pid = server
        .id()
        .ok_or_else(|| BenchError::Usage(format!("{case}: the server is gone")))?;
    run_command(Path::new("kill"), &["-TERM".to_owned(), pid.to_string()])?;
    let status = tokio::time::timeout(PATIENCE, server.wait())
        .await
        .map_err(|_| {
            BenchError::Usage(format!(
                "{case}: the server did not exit within {PATIENCE:?} of SIGTERM"
            ))
        })??;
    if !status.success() {
        return Err(BenchError::Usage(format!(
            "{case}: the server exited with {status}: {}",
            log_tail(file)
        )));
    }
    Ok(())
}

/// Waits for the server, starts a session, sends `n` requests of the
/// case, and closes the connection.
async fn drive(
    server: &mut Child,
    case: Case,
    n: u64,
    addr: SocketAddr,
    file: &Path,
) -> Result<(), BenchError> {
    let start = Instant::now();
    let mut client = loop {
        if let Some(status) = server.try_wait()? {
            return Err(BenchError::Usage(format!(
                "{case}: the server exited with {status} before listening: {}",
                log_tail(file)
            )));
        }
        if let Ok(client) = HttpClient::connect(addr).await {
            break client;
        }
        if start.elapsed() > PATIENCE {
            return Err(BenchError::Usage(format!(
                "{case}: the server did not listen on {addr} within {PATIENCE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    check(client.add().await?)?;
    for _ in 0..n {
        let answer = match case.op {
            Op::Read => client.cart().await?,
            Op::Add => client.add().await?,
        };
        check(answer)?;
    }
    Ok(())
}

fn check((status, body): (hyper::StatusCode, bytes::Bytes)) -> Result<(), BenchError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(BenchError::Status {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

/// Inclusive instructions per function in a callgrind file, as
/// `callgrind_annotate --inclusive=yes` reports them.
///
/// # Errors
///
/// [`BenchError`] when callgrind_annotate is missing or fails.
pub fn inclusive(file: &Path) -> Result<HashMap<String, u64>, BenchError> {
    let annotate = find_program(
        "callgrind_annotate",
        "OFFSTATE_CALLGRIND_ANNOTATE",
        &[PathBuf::from("/usr/bin/callgrind_annotate")],
    )?;
    let text = run_command(
        &annotate,
        &[
            "--inclusive=yes".to_owned(),
            "--threshold=100".to_owned(),
            file.display().to_string(),
        ],
    )?;
    Ok(parse_annotate(&text))
}

/// `36,245,117 (100.0%)  ???:main [/bin/x]` lines, as function to count.
fn parse_annotate(text: &str) -> HashMap<String, u64> {
    let mut functions = HashMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let rest = rest.trim_start();
        // The percentage column, when present.
        let name = match rest.strip_prefix('(') {
            Some(after) => after.split_once(')').map_or(after, |(_, name)| name),
            None => rest,
        };
        let name = name.trim();
        if !name.is_empty() && name.contains(':') {
            *functions.entry(name.to_owned()).or_insert(0) += count;
        }
    }
    functions
}

/// The `n` functions with the most inclusive instructions per request,
/// by the same difference of the two runs, leaving out the frames that
/// hold the whole request loop (99 % of the total or more).
///
/// # Errors
///
/// As [`inclusive`].
pub fn top_functions(measured: &Measured, n: usize) -> Result<Vec<(String, f64)>, BenchError> {
    let [small, large] = &measured.runs;
    let before = inclusive(&small.file)?;
    let after = inclusive(&large.file)?;
    let requests = (large.requests - small.requests) as f64;
    let mut per_request: Vec<(String, f64)> = after
        .into_iter()
        .map(|(name, count)| {
            let base = before.get(&name).copied().unwrap_or(0);
            let per = (count as f64 - base as f64) / requests;
            (name, per)
        })
        .collect();
    // The frames around the whole request loop (main, the runtime) say
    // nothing about where a request's instructions go.
    let whole = 0.99 * measured.per_request();
    per_request.retain(|(_, per)| *per < whole);
    per_request.sort_by(|a, b| b.1.total_cmp(&a.1));
    per_request.truncate(n);
    Ok(per_request)
}

/// `???:a::b [/x/y/prog]` as `a::b [prog]`: annotate's names without the
/// unknown-file marker and with the object's file name only.
#[must_use]
pub fn short_name(name: &str) -> String {
    let name = name.strip_prefix("???:").unwrap_or(name);
    match name.rsplit_once(" [") {
        Some((function, object)) => {
            let object = object.trim_end_matches(']');
            let file = object.rsplit('/').next().unwrap_or(object);
            format!("{function} [{file}]")
        }
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_callgrind_totals() {
        // The totals line is what the per-request figure is built from.
        let file = "version: 1\ncreator: callgrind-3.19.0\nevents: Ir\nfn=(1) main\n5 10\nsummary: 123\ntotals: 4567\n";
        assert_eq!(total(file), Some(4567));
        assert_eq!(total("events: Ir\nsummary: 99\n"), Some(99));
        assert_eq!(total("events: Ir\n"), None);
    }

    #[test]
    fn per_request_is_the_difference_of_two_runs() {
        // Start-up and warm-up are in both runs and must cancel out.
        let run = |requests, instructions| Run {
            requests,
            instructions,
            file: PathBuf::new(),
        };
        let measured = Measured {
            case: Case {
                place: Place::InProcess,
                op: Op::Read,
                variant: Variant::Offstate,
            },
            runs: [
                run(200, 1_000_000 + 200 * 25),
                run(1200, 1_000_000 + 1200 * 25),
            ],
        };
        assert!((measured.per_request() - 25.0).abs() < 1e-9);
    }

    #[test]
    fn reads_annotate_lines() {
        // Top functions per request come from these lines.
        let text = "--------\nIr                  file:function\n--------\n\
                    1,234,567 (100.0%)  ???:main [/bin/x]\n   89 ( 0.01%)  src/a.rs:a::b [/bin/x]\n";
        let functions = parse_annotate(text);
        assert_eq!(functions.get("???:main [/bin/x]"), Some(&1_234_567));
        assert_eq!(functions.get("src/a.rs:a::b [/bin/x]"), Some(&89));
        assert_eq!(functions.len(), 2);
    }

    #[test]
    fn shortens_annotate_names() {
        // Rust names are long enough without the full path of the binary.
        assert_eq!(
            short_name("???:a::b [/work/target/release/prog]"),
            "a::b [prog]"
        );
        assert_eq!(
            short_name("./malloc/malloc.c:free [/usr/lib/libc.so.6]"),
            "./malloc/malloc.c:free [libc.so.6]"
        );
    }

    #[test]
    fn cached_read_is_offstate_over_http_only() {
        // Anything else would measure a cache that is not there.
        let case = Case::parse("cached-read", "offstate", Place::Http);
        assert!(matches!(case, Ok(c) if c.variant == Variant::OffstateCached));
        assert!(Case::parse("cached-read", "tower-sessions", Place::Http).is_err());
        assert!(Case::parse("cached-read", "offstate", Place::InProcess).is_err());
        let add = Case::parse("cached-add", "offstate", Place::Http);
        assert!(matches!(add, Ok(c) if c.variant == Variant::OffstateCached && c.op == Op::Add));
        assert!(Case::parse("cached-add", "none", Place::Http).is_err());
    }

    #[test]
    fn request_counts_must_grow() {
        // The difference method divides by their difference.
        assert_eq!(parse_requests("200,1200").ok(), Some([200, 1200]));
        assert!(parse_requests("1200,200").is_err());
        assert!(parse_requests("200").is_err());
    }
}
