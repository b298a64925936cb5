//! Local server processes on free loopback ports, stopped on drop, on
//! panic, and even when the test process dies without unwinding.
//!
//! Each server gets a watchdog: a tiny shell loop that polls the test
//! process's PID and kills the server once the test process is gone. That
//! covers servers kept in statics (which Rust never drops) and SIGKILLed
//! test binaries. PIDs are always the real ones we spawned; nothing is ever
//! killed by name.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why a server could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The server's program is not installed.
    #[error(
        "`{program}` was not found. Install it (scripts/setup.sh does) or set {env} to its path"
    )]
    Missing {
        /// The program looked for.
        program: String,
        /// The environment variable that can point at it.
        env: &'static str,
    },
    /// The program could not be spawned.
    #[error("could not start `{program}`")]
    Spawn {
        /// The program.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The server did not accept connections in time.
    #[error("`{program}` did not listen on {addr} within {waited:?}; its log: {log}")]
    NotReady {
        /// The program.
        program: String,
        /// Where it should listen.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
    /// A signal (pause, resume) could not be sent.
    #[error("could not send SIG{signal} to `{program}`")]
    Signal {
        /// The program.
        program: String,
        /// The signal's name.
        signal: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A set-up command failed.
    #[error("set-up step failed: {0}")]
    Setup(String),
}

/// A free TCP port on 127.0.0.1 (bound, then released for the server).
///
/// # Errors
///
/// When no port can be bound.
pub fn free_port() -> Result<u16, ServerError> {
    loopback_port().map_err(|e| ServerError::Setup(format!("cannot bind a loopback port: {e}")))
}

/// A free TCP port on 127.0.0.1, as [`free_port`], with the OS error.
///
/// A port is released before its server binds it, so the OS may hand it out
/// again meanwhile. Within one test binary (where tests run in parallel) a
/// port is therefore never handed out twice, nor one [`reserve_port`]
/// claimed.
///
/// # Errors
///
/// When no port can be bound.
pub fn loopback_port() -> std::io::Result<u16> {
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if reserve_port(port) {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        "every port the OS offered was already handed out by this process",
    ))
}

/// Claims `port` for this process: false when [`loopback_port`] handed it
/// out or someone claimed it before. A server that also listens on a port
/// it was not given (a Redis cluster bus at port + 10000) claims it here.
pub fn reserve_port(port: u16) -> bool {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    HANDED_OUT
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(port)
}

/// Finds a program: the path in `env` if set, else `fallbacks` that exist,
/// else the name on `PATH`.
///
/// # Errors
///
/// [`ServerError::Missing`] naming `env`.
pub fn find_program(
    name: &str,
    env: &'static str,
    fallbacks: &[PathBuf],
) -> Result<PathBuf, ServerError> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if path.exists() {
            return Ok(path);
        }
        return Err(ServerError::Missing {
            program: path.display().to_string(),
            env,
        });
    }
    for candidate in fallbacks {
        if candidate.exists() {
            return Ok(candidate.clone());
        }
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(ServerError::Missing {
        program: name.to_owned(),
        env,
    })
}

/// The workspace's root folder (where `scripts/` and `.offstate-run/` live).
#[must_use]
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .map_or_else(|| manifest.to_path_buf(), Path::to_path_buf)
}

/// A running server process. Dropping it kills the server and its watchdog.
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    child: Child,
    watchdog: Option<Child>,
    log: PathBuf,
    dir: PathBuf,
}

impl ServerProcess {
    /// Starts `program` with `args` in a fresh temporary folder (its working
    /// directory), with stdout and stderr in a log file there.
    ///
    /// # Errors
    ///
    /// [`ServerError::Spawn`] when it cannot be started.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Self, ServerError> {
        let dir = temp_dir(name)?;
        let (child, watchdog, log) = launch(&dir, program, args)?;
        Ok(Self {
            name: name.to_owned(),
            child,
            watchdog,
            log,
            dir,
        })
    }

    /// Kills the server and starts it again with `args`, in the same folder
    /// (whatever it left there stays, such as a cluster node's
    /// `nodes.conf`), its log going on in the same file: a crash and
    /// restart of the same machine.
    ///
    /// # Errors
    ///
    /// [`ServerError::Spawn`] when it cannot be started again.
    pub fn restart(&mut self, program: &Path, args: &[String]) -> Result<(), ServerError> {
        self.kill();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let (child, watchdog, _) = launch(&self.dir, program, args)?;
        self.child = child;
        self.watchdog = watchdog;
        Ok(())
    }

    /// The server's PID.
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's private folder (working directory; certificates, data).
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of the server's log, for error messages.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Waits until `addr` accepts TCP connections.
    ///
    /// # Errors
    ///
    /// [`ServerError::NotReady`] after `timeout`, or if the process exited.
    pub fn wait_for_port(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<(), ServerError> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ServerError::NotReady {
                    program: self.name.clone(),
                    addr,
                    waited: start.elapsed(),
                    log: format!("exited with {status}: {}", self.log_tail()),
                });
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(ServerError::NotReady {
            program: self.name.clone(),
            addr,
            waited: timeout,
            log: self.log_tail(),
        })
    }

    /// How the server exited, if it has.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills the server now (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Pauses the server (SIGSTOP): it keeps its sockets but answers
    /// nothing. Returns once every thread of it has stopped: `kill` returns
    /// as soon as the signal is queued, and on a loaded machine a server's
    /// other threads went on answering requests for a while (memcached's
    /// workers did, failing a hung-node test in CI), until the thread the
    /// kernel woke for the signal got a CPU and stopped them.
    ///
    /// # Errors
    ///
    /// [`ServerError::Signal`] when the signal could not be sent or the
    /// server did not stop within 10 s: a pause that silently did
    /// not happen would pass a test of a hung server off as a failure of
    /// the code under test.
    pub fn pause(&self) -> Result<(), ServerError> {
        self.signal("STOP")?;
        let pid = self.child.id();
        let start = Instant::now();
        while !all_threads_stopped(pid) {
            if start.elapsed() > STOP_WITHIN {
                return Err(ServerError::Signal {
                    program: self.name.clone(),
                    signal: "STOP",
                    source: std::io::Error::other(format!(
                        "not every thread of process {pid} stopped within {STOP_WITHIN:?}"
                    )),
                });
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Resumes a paused server (SIGCONT).
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause).
    pub fn resume(&self) -> Result<(), ServerError> {
        self.signal("CONT")
    }

    fn signal(&self, name: &'static str) -> Result<(), ServerError> {
        signal(self.child.id(), name).map_err(|source| ServerError::Signal {
            program: self.name.clone(),
            signal: name,
            source,
        })
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = signal(self.child.id(), "CONT");
        self.kill();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long [`ServerProcess::pause`] waits for every thread to stop.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// Whether every thread of `pid` is stopped (state `T`, or `t` when traced),
/// read from `/proc/<pid>/task/*/stat`. A process whose tasks cannot be
/// read (not Linux, or gone) counts as stopped: there is nothing to wait for.
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // The state follows the command name, which is in parentheses and
        // may itself contain spaces or parentheses.
        match stat.rfind(')').map(|end| stat[end + 1..].trim_start()) {
            Some(rest) => rest.starts_with('T') || rest.starts_with('t'),
            None => true,
        }
    })
}

fn signal(pid: u32, sig: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{sig} {pid}: {status}"
        )))
    }
}

/// A shell loop that kills `server` once this test process is gone.
fn spawn_watchdog(server: u32) -> Option<Child> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; kill -CONT {server} 2>/dev/null; kill -9 {server} 2>/dev/null"
    );
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Starts `program` in `dir`, its output appended to `dir/server.log`, with
/// a watchdog that kills it if this process dies.
fn launch(
    dir: &Path,
    program: &Path,
    args: &[String],
) -> Result<(Child, Option<Child>, PathBuf), ServerError> {
    let log = dir.join("server.log");
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| ServerError::Setup(format!("cannot create {}: {e}", log.display())))?;
    let err = out
        .try_clone()
        .map_err(|e| ServerError::Setup(format!("cannot clone log handle: {e}")))?;
    let child = Command::new(program)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|source| ServerError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    let watchdog = spawn_watchdog(child.id());
    Ok((child, watchdog, log))
}

fn temp_dir(name: &str) -> Result<PathBuf, ServerError> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("offstate-{name}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServerError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

/// Runs a command to completion and returns its stdout.
///
/// # Errors
///
/// [`ServerError::Setup`] when it cannot run or exits non-zero.
pub fn run_command(program: &Path, args: &[String]) -> Result<String, ServerError> {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ServerError::Setup(format!("cannot run {}: {e}", program.display())))?;
    if !output.status.success() {
        return Err(ServerError::Setup(format!(
            "{} {} exited with {}: {}{}",
            program.display(),
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
