//! One server of a fixture, wherever it runs (a process, a container, or
//! someone else's server), with the faults tests make: pause and resume,
//! kill, restart empty at the same address, and (containers on a test
//! network) disconnect and reconnect.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::container::{Container, ContainerSpec};
use crate::process::ServerProcess;
use crate::source::{FixtureError, Source};

/// How to tell that a server is ready: connect, send `hello`, and get any
/// reply (an empty `hello`: the connection alone). A connection alone is
/// not enough for a published container port: Docker's proxy accepts it
/// before the server listens, then closes it.
#[derive(Debug, Clone, Copy)]
pub struct Readiness {
    /// What to send.
    pub hello: &'static [u8],
    /// How long the server may take.
    pub within: Duration,
}

impl Readiness {
    async fn answers(&self, address: &str) -> bool {
        let attempt = async {
            let mut stream = TcpStream::connect(address).await?;
            if self.hello.is_empty() {
                return Ok::<_, std::io::Error>(true);
            }
            stream.write_all(self.hello).await?;
            let mut byte = [0u8; 1];
            Ok(stream.read(&mut byte).await? > 0)
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Ok(true))
        )
    }
}

/// A server process and how to start it again.
#[derive(Debug)]
struct Spawned {
    process: Mutex<ServerProcess>,
    program: PathBuf,
    args: Vec<String>,
}

impl Spawned {
    fn process(&self) -> MutexGuard<'_, ServerProcess> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
enum Server {
    External,
    Process(Spawned),
    Container(Box<Container>),
}

/// One server: where it answers, and what runs it. Dropping it stops what
/// the fixture started.
#[derive(Debug)]
pub struct Node {
    address: String,
    readiness: Readiness,
    server: Server,
}

impl Node {
    /// A server someone else runs, at `address` (`host:port`).
    #[must_use]
    pub fn external(address: impl Into<String>) -> Self {
        Self {
            address: address.into(),
            readiness: Readiness {
                hello: b"",
                within: Duration::ZERO,
            },
            server: Server::External,
        }
    }

    /// Starts `program` with `args(port)` on a port from `port()`, listening
    /// on 127.0.0.1, and waits until it is ready. A server that exits because
    /// its port was taken meanwhile (by a program outside this process) is
    /// started again on another port, up to three times.
    ///
    /// # Errors
    ///
    /// [`FixtureError`] when it cannot be started or does not answer.
    pub async fn spawn(
        name: &'static str,
        program: PathBuf,
        args: impl Fn(u16) -> Vec<String>,
        port: impl Fn() -> Result<u16, FixtureError>,
        readiness: Readiness,
    ) -> Result<Self, FixtureError> {
        let mut attempt = 1;
        loop {
            let port = port()?;
            let args = args(port);
            let process = ServerProcess::spawn(name, &program, &args)?;
            let node = Self {
                address: format!("127.0.0.1:{port}"),
                readiness,
                server: Server::Process(Spawned {
                    process: Mutex::new(process),
                    program: program.clone(),
                    args,
                }),
            };
            match node.wait_ready().await {
                Ok(()) => return Ok(node),
                Err(FixtureError::NotReady { log, .. })
                    if attempt < 3 && node.exited() && log.contains("in use") =>
                {
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Starts a container and waits until its server is ready.
    ///
    /// # Errors
    ///
    /// [`FixtureError`] when it cannot be started or does not answer.
    pub async fn run(spec: ContainerSpec, readiness: Readiness) -> Result<Self, FixtureError> {
        let (container, address) = Container::start(spec).await?;
        let node = Self {
            address,
            readiness,
            server: Server::Container(Box::new(container)),
        };
        node.wait_ready().await?;
        Ok(node)
    }

    /// Where the server answers (`host:port`).
    #[must_use]
    pub fn address(&self) -> &str {
        &self.address
    }

    /// The server's port, when its address has one.
    #[must_use]
    pub fn port(&self) -> Option<u16> {
        self.address.rsplit_once(':')?.1.parse().ok()
    }

    /// Where the server comes from.
    #[must_use]
    pub fn source(&self) -> Source {
        match self.server {
            Server::External => Source::Environment,
            Server::Process(_) => Source::Process,
            Server::Container(_) => Source::Container,
        }
    }

    /// The container, when the server runs in one.
    #[must_use]
    pub fn container(&self) -> Option<&Container> {
        match &self.server {
            Server::Container(container) => Some(container),
            _ => None,
        }
    }

    /// The server's PID, when it is a local process.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        match &self.server {
            Server::Process(spawned) => Some(spawned.process().pid()),
            _ => None,
        }
    }

    fn unsupported(&self, what: &'static str) -> FixtureError {
        FixtureError::Unsupported {
            what,
            from: self.source(),
        }
    }

    /// Freezes the server (SIGSTOP, or `docker pause`): its connections stay
    /// open, nothing answers, as with a hung node.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Unsupported`] for a server from the environment, or
    /// Docker's refusal.
    pub async fn pause(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Process(spawned) => {
                spawned.process().pause()?;
                Ok(())
            }
            Server::Container(container) => Ok(container.pause().await?),
            Server::External => Err(self.unsupported("pause")),
        }
    }

    /// Thaws a paused server.
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause).
    pub async fn resume(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Process(spawned) => {
                spawned.process().resume()?;
                Ok(())
            }
            Server::Container(container) => Ok(container.unpause().await?),
            Server::External => Err(self.unsupported("resume")),
        }
    }

    /// Kills the server (SIGKILL), as a crash would: its data is lost, its
    /// address refuses connections until [`restart`](Self::restart). (Docker
    /// refuses to kill a paused container: resume it first.)
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause).
    pub async fn kill(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Process(spawned) => {
                spawned.process().kill();
                Ok(())
            }
            Server::Container(container) => Ok(container.kill().await?),
            Server::External => Err(self.unsupported("kill")),
        }
    }

    /// Kills the server if it runs, starts a fresh, empty one at the same
    /// address with the same settings, and waits until it is ready.
    ///
    /// # Errors
    ///
    /// As [`pause`](Self::pause), or when it does not come back.
    pub async fn restart(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Process(spawned) => {
                spawned.process().restart(&spawned.program, &spawned.args)?;
            }
            Server::Container(container) => {
                // Docker kills no frozen container; a running one is thawed.
                let _ = container.unpause().await;
                if container.is_running().await? {
                    container.kill().await?;
                }
                container.start_again().await?;
            }
            Server::External => return Err(self.unsupported("restart")),
        }
        self.wait_ready().await
    }

    /// Disconnects a container from its test network: traffic to its
    /// address goes nowhere.
    ///
    /// # Errors
    ///
    /// [`FixtureError::Unsupported`] unless the server is a container on a
    /// test network.
    pub async fn disconnect(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Container(container) => Ok(container.disconnect().await?),
            _ => Err(self.unsupported("disconnect")),
        }
    }

    /// Connects a disconnected container back, at the same address.
    ///
    /// # Errors
    ///
    /// As [`disconnect`](Self::disconnect).
    pub async fn reconnect(&self) -> Result<(), FixtureError> {
        match &self.server {
            Server::Container(container) => Ok(container.reconnect().await?),
            _ => Err(self.unsupported("reconnect")),
        }
    }

    /// Waits until the server answers, or fails with the end of its log.
    async fn wait_ready(&self) -> Result<(), FixtureError> {
        let start = Instant::now();
        let mut checks = 0u32;
        while start.elapsed() < self.readiness.within {
            if self.readiness.answers(&self.address).await {
                return Ok(());
            }
            checks += 1;
            let gone = match &self.server {
                Server::Container(container) => {
                    checks.is_multiple_of(20) && !container.is_running().await.unwrap_or(true)
                }
                _ => self.exited(),
            };
            if gone {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(FixtureError::NotReady {
            what: self.describe(),
            address: self.address.clone(),
            waited: start.elapsed(),
            log: self.log().await,
        })
    }

    /// Whether a server process has exited (never for the others).
    fn exited(&self) -> bool {
        match &self.server {
            Server::Process(spawned) => spawned.process().exit_status().is_some(),
            _ => false,
        }
    }

    /// The end of a server process's log (empty for the others).
    fn process_log(&self) -> String {
        match &self.server {
            Server::Process(spawned) => spawned.process().log_tail(),
            _ => String::new(),
        }
    }

    fn describe(&self) -> String {
        match &self.server {
            Server::Process(spawned) => format!("`{}`", spawned.program.display()),
            Server::Container(container) => format!("container {}", container.name()),
            Server::External => "the server".into(),
        }
    }

    /// The end of the server's output, for error messages.
    pub async fn log(&self) -> String {
        match &self.server {
            Server::Container(container) => {
                let log = container.log().await;
                let lines: Vec<&str> = log.lines().rev().take(15).collect();
                lines.into_iter().rev().collect::<Vec<_>>().join("\n")
            }
            _ => self.process_log(),
        }
    }
}
