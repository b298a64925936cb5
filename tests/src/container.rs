//! Docker containers and networks for the fixtures, driven through the
//! `docker` CLI, removed on drop, on panic, and even when the test process
//! dies without unwinding.
//!
//! # Why the CLI and not testcontainers
//!
//! testcontainers 0.28 (and every release since 0.16) talks to the daemon
//! through bollard with a fixed API version (1.53 for 0.28) and never
//! negotiates a lower one, so a Docker Engine 20.10 (API 1.41, what Debian
//! 12 ships) answers every request with "client version 1.53 is too new".
//! The `docker` CLI negotiates, costs no compile time, and is the same
//! semantics: start from an image, wait until ready, remove on drop.
//!
//! # Cleaning up
//!
//! - Drop runs `docker rm -f -v`, also while a failing test unwinds.
//! - Each container and network carries the label `offstate-test=<pid>`,
//!   and gets a watchdog: a shell loop that removes it once the test
//!   process is gone (a fixture kept in a static, or a SIGKILLed test).
//! - The first fixture of a process removes leftovers whose process is no
//!   longer alive ([`remove_leftovers`]). Nothing is ever removed by image
//!   name, nor anything another live test process owns.
//!
//! # Images are never pulled
//!
//! An image that is not there locally is an error naming the variable that
//! chooses it (see [`crate::images`]), unless `OFFSTATE_TEST_PULL=1` allows
//! `docker pull`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::images::Image;
use crate::process::free_port;

/// The label on every container and network the fixtures create; its value
/// is the PID of the test process that owns it.
pub const LABEL: &str = "offstate-test";

/// The variable that names the `docker` program (default: `docker` on
/// `PATH`).
pub const DOCKER_ENV: &str = "OFFSTATE_DOCKER";

/// The variable that allows pulling a missing image (`1`).
pub const PULL_ENV: &str = "OFFSTATE_TEST_PULL";

/// How long a container may take to answer its readiness probe.
const READY: Duration = Duration::from_secs(30);

/// Why a container or network could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// No Docker daemon answers through the `docker` CLI.
    #[error(
        "no Docker daemon is reachable through `docker` ({detail}); start dockerd, set DOCKER_HOST \
         (or {DOCKER_ENV} to the docker program), or run with OFFSTATE_TEST_BACKEND=process"
    )]
    NoDocker {
        /// What the CLI said.
        detail: String,
    },
    /// The image is not there and pulling is not allowed.
    #[error(
        "image {image} not found locally and no registry: run scripts/build-images.sh or set {var} \
         (or {PULL_ENV}=1 to let the tests pull it)"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
        /// The variable that chooses it.
        var: &'static str,
    },
    /// A `docker` command failed.
    #[error("`docker {command}` failed: {detail}")]
    Command {
        /// The command's arguments.
        command: String,
        /// Its output or the OS error.
        detail: String,
    },
    /// The container did not become ready.
    #[error(
        "container {name} ({image}) was not ready on {addr} within {waited:?}; its log:\n{log}"
    )]
    NotReady {
        /// The container's name.
        name: String,
        /// Its image.
        image: String,
        /// Where it was probed.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The end of its log.
        log: String,
    },
}

/// Runs `docker args...` and returns its trimmed stdout.
///
/// # Errors
///
/// [`ContainerError::Command`] when it cannot run or exits non-zero.
pub fn docker(args: &[&str]) -> Result<String, ContainerError> {
    let program = std::env::var_os(DOCKER_ENV).unwrap_or_else(|| "docker".into());
    let failed = |detail: String| ContainerError::Command {
        command: args.join(" "),
        detail,
    };
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| failed(e.to_string()))?;
    if !output.status.success() {
        return Err(failed(format!(
            "{}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Checks once per process that a Docker daemon answers, and then removes
/// leftovers of dead test processes.
///
/// # Errors
///
/// [`ContainerError::NoDocker`] with what the CLI said.
pub fn ensure_docker() -> Result<(), ContainerError> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let version = docker(&["version", "--format", "{{.Server.APIVersion}}"])
                .map_err(|e| e.to_string())?;
            tracing::debug!(api = %version, "docker daemon reachable");
            remove_leftovers();
            Ok(())
        })
        .clone()
        .map_err(|detail| ContainerError::NoDocker { detail })
}

/// Whether a Docker daemon answers (checked once per process).
#[must_use]
pub fn docker_available() -> bool {
    ensure_docker().is_ok()
}

/// Whether `image` is present locally.
#[must_use]
pub fn image_present(image: &str) -> bool {
    docker(&["image", "inspect", "--format", "{{.Id}}", image]).is_ok()
}

/// Makes sure `image` is present locally: there already, or pulled when
/// `OFFSTATE_TEST_PULL=1`.
///
/// # Errors
///
/// [`ContainerError::ImageMissing`] naming the image's variable, or the
/// pull's failure.
pub fn ensure_image(image: &Image) -> Result<(), ContainerError> {
    ensure_docker()?;
    if image_present(image.name()) {
        return Ok(());
    }
    if std::env::var(PULL_ENV).is_ok_and(|v| v == "1") {
        docker(&["pull", image.name()])?;
        return Ok(());
    }
    Err(ContainerError::ImageMissing {
        image: image.name().to_owned(),
        var: image.var(),
    })
}

/// Removes containers and networks labelled [`LABEL`] whose test process
/// is gone. Those of live processes (tests running in parallel) stay.
pub fn remove_leftovers() {
    let dead = |line: &str| -> Option<String> {
        let (id, pid) = line.split_once(' ')?;
        let pid: u32 = pid.trim().parse().ok()?;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        (!alive).then(|| id.to_owned())
    };
    let label = format!("label={LABEL}");
    let format = format!("{{{{.ID}}}} {{{{.Label \"{LABEL}\"}}}}");
    if let Ok(list) = docker(&["ps", "-a", "--filter", &label, "--format", &format]) {
        for id in list.lines().filter_map(dead) {
            tracing::info!(%id, "removing a leftover test container");
            let _ = docker(&["rm", "-f", "-v", &id]);
        }
    }
    if let Ok(list) = docker(&["network", "ls", "--filter", &label, "--format", &format]) {
        for id in list.lines().filter_map(dead) {
            tracing::info!(%id, "removing a leftover test network");
            let _ = docker(&["network", "rm", &id]);
        }
    }
}

fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("offstate-test-{kind}-{}-{n}", std::process::id())
}

/// A shell loop that runs `cleanup` once this test process is gone.
fn spawn_watchdog(cleanup: &str) -> Option<Child> {
    let me = std::process::id();
    let docker = std::env::var(DOCKER_ENV).unwrap_or_else(|_| "docker".into());
    let script = format!(
        "while kill -0 {me} 2>/dev/null; do sleep 0.5; done; {}",
        cleanup.replace("docker ", &format!("'{docker}' "))
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

fn stop_watchdog(watchdog: &mut Option<Child>) {
    if let Some(mut child) = watchdog.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// How to tell that a server in a container is ready: send `send` on a
/// fresh connection and read a reply starting with `expect`.
#[derive(Debug, Clone)]
pub struct Probe {
    send: Vec<u8>,
    expect: Vec<u8>,
}

impl Probe {
    /// A probe sending `send` and expecting a reply that starts with
    /// `expect`.
    #[must_use]
    pub fn new(send: impl Into<Vec<u8>>, expect: impl Into<Vec<u8>>) -> Self {
        Self {
            send: send.into(),
            expect: expect.into(),
        }
    }

    /// Whether the server at `addr` answers as expected now. (A plain TCP
    /// connect is not enough: Docker's port proxy accepts connections
    /// before the server listens.)
    #[must_use]
    pub fn ready(&self, addr: SocketAddr) -> bool {
        let attempt = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(&self.send)?;
            let mut reply = vec![0u8; self.expect.len()];
            stream.read_exact(&mut reply)?;
            Ok(reply == self.expect)
        };
        attempt().unwrap_or(false)
    }
}

/// How the test process reaches a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reach {
    /// Through a port published on 127.0.0.1 (works with Docker Desktop
    /// too). It stays the same across stop and start.
    Published,
    /// Through the container's address on Docker's default bridge (Linux
    /// only: the host routes to bridge networks). Needed when the servers
    /// announce their own addresses, as Redis Cluster nodes do.
    BridgeIp,
}

/// What to start: an image, the arguments for its server, the port it
/// listens on inside, and how to reach it.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    image: Image,
    args: Vec<String>,
    port: u16,
    probe: Probe,
    reach: Reach,
    network: Option<(String, Ipv4Addr)>,
}

impl ContainerSpec {
    /// A container from `image` whose server listens on `port` inside and
    /// answers `probe`; reached through a published port.
    #[must_use]
    pub fn new(image: Image, port: u16, probe: Probe) -> Self {
        Self {
            image,
            args: Vec::new(),
            port,
            probe,
            reach: Reach::Published,
            network: None,
        }
    }

    /// Arguments after the image (the server's command line, when the
    /// image's entrypoint is the server).
    #[must_use]
    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How the test process reaches the container.
    #[must_use]
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    /// Runs the container on `network` with a fixed address, and reaches
    /// it there (not through a published port), so that disconnecting it
    /// from the network really cuts it off.
    #[must_use]
    pub fn on_network(mut self, network: &Network) -> Self {
        let ip = network.next_ip();
        self.network = Some((network.name().to_owned(), ip));
        self
    }
}

/// A running container, removed on drop.
#[derive(Debug)]
pub struct Container {
    id: String,
    name: String,
    spec: ContainerSpec,
    addr: SocketAddr,
    watchdog: Option<Child>,
}

impl Container {
    /// Starts a container and waits until its server answers the probe.
    ///
    /// # Errors
    ///
    /// [`ContainerError`]: no daemon, a missing image (naming its variable),
    /// a failed `docker run`, or a server that does not become ready.
    pub fn start(spec: ContainerSpec) -> Result<Self, ContainerError> {
        ensure_image(&spec.image)?;
        let name = unique_name("c");
        let label = format!("{LABEL}={}", std::process::id());
        let mut args: Vec<String> = vec![
            "run".into(),
            "-d".into(),
            "--label".into(),
            label,
            "--name".into(),
            name.clone(),
        ];
        let mut host_port = None;
        match (&spec.network, spec.reach) {
            (Some((network, ip)), _) => {
                args.extend([format!("--network={network}"), format!("--ip={ip}")]);
            }
            (None, Reach::Published) => {
                let port = free_port().map_err(|e| ContainerError::Command {
                    command: "run".into(),
                    detail: e.to_string(),
                })?;
                args.extend(["-p".into(), format!("127.0.0.1:{port}:{}", spec.port)]);
                host_port = Some(port);
            }
            (None, Reach::BridgeIp) => {}
        }
        args.push(spec.image.name().to_owned());
        args.extend(spec.args.iter().cloned());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // Watch by name, before the container exists: a test killed while
        // `docker run` is under way leaves nothing behind either.
        let watchdog = spawn_watchdog(&format!(
            "docker rm -f -v {name} >/dev/null 2>&1; sleep 2; docker rm -f -v {name} >/dev/null 2>&1"
        ));
        let id = match docker(&arg_refs) {
            Ok(id) => id,
            Err(error) => {
                // `docker run` may have created the container before failing
                // to start it (a port taken meanwhile, say).
                let _ = docker(&["rm", "-f", "-v", &name]);
                let mut watchdog = watchdog;
                stop_watchdog(&mut watchdog);
                return Err(error);
            }
        };
        // From here on, Drop removes the container whatever happens.
        let mut container = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], host_port.unwrap_or(spec.port))),
            id,
            name,
            spec,
            watchdog,
        };
        container.addr = match (&container.spec.network, host_port) {
            (Some((_, ip)), _) => SocketAddr::from((*ip, container.spec.port)),
            (None, Some(port)) => SocketAddr::from(([127, 0, 0, 1], port)),
            (None, None) => SocketAddr::from((container.bridge_ip()?, container.spec.port)),
        };
        container.wait_ready()?;
        Ok(container)
    }

    fn bridge_ip(&self) -> Result<Ipv4Addr, ContainerError> {
        let text = docker(&[
            "inspect",
            "--format",
            "{{.NetworkSettings.IPAddress}}",
            &self.id,
        ])?;
        text.parse().map_err(|_| ContainerError::Command {
            command: format!("inspect {}", self.id),
            detail: format!("no bridge address in {text:?}"),
        })
    }

    /// Waits until the server answers its probe.
    ///
    /// # Errors
    ///
    /// [`ContainerError::NotReady`] with the container's log.
    pub fn wait_ready(&self) -> Result<(), ContainerError> {
        let start = Instant::now();
        let mut checks = 0u32;
        while start.elapsed() < READY {
            if self.spec.probe.ready(self.addr) {
                return Ok(());
            }
            checks += 1;
            if checks.is_multiple_of(20) && !self.is_running() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Err(ContainerError::NotReady {
            name: self.name.clone(),
            image: self.spec.image.name().to_owned(),
            addr: self.addr,
            waited: start.elapsed(),
            log: self.log_tail(),
        })
    }

    fn is_running(&self) -> bool {
        docker(&["inspect", "--format", "{{.State.Running}}", &self.id]).is_ok_and(|s| s == "true")
    }

    /// The container's ID.
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container's name (`offstate-test-c-<pid>-<n>`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the test process reaches the server.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The last lines of the container's output.
    #[must_use]
    pub fn log_tail(&self) -> String {
        let program = std::env::var_os(DOCKER_ENV).unwrap_or_else(|| "docker".into());
        Command::new(program)
            .args(["logs", "--tail", "15", &self.id])
            .stdin(Stdio::null())
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_default()
    }

    /// Freezes every process in the container (`docker pause`): its
    /// connections stay open, nothing answers.
    ///
    /// # Errors
    ///
    /// When `docker pause` fails.
    pub fn pause(&self) -> Result<(), ContainerError> {
        docker(&["pause", &self.id]).map(drop)
    }

    /// Thaws a paused container (`docker unpause`).
    ///
    /// # Errors
    ///
    /// When `docker unpause` fails.
    pub fn unpause(&self) -> Result<(), ContainerError> {
        docker(&["unpause", &self.id]).map(drop)
    }

    /// Stops the container (`docker stop`, one second's grace): its server
    /// exits and the port refuses connections.
    ///
    /// # Errors
    ///
    /// When `docker stop` fails.
    pub fn stop(&self) -> Result<(), ContainerError> {
        docker(&["stop", "-t", "1", &self.id]).map(drop)
    }

    /// Starts a stopped container again and waits until it is ready. Its
    /// server starts empty (the fixtures keep no data on disk); the address
    /// stays the same.
    ///
    /// # Errors
    ///
    /// When `docker start` fails or the server does not become ready.
    pub fn start_again(&self) -> Result<(), ContainerError> {
        docker(&["start", &self.id])?;
        self.wait_ready()
    }

    /// Disconnects the container from its network (`docker network
    /// disconnect`): traffic to its address goes nowhere.
    ///
    /// # Errors
    ///
    /// When it is not on a network, or the command fails.
    pub fn disconnect(&self) -> Result<(), ContainerError> {
        let (network, _) = self.network()?;
        docker(&["network", "disconnect", "-f", network, &self.id]).map(drop)
    }

    /// Connects the container back to its network, at the same address.
    ///
    /// # Errors
    ///
    /// When it is not on a network, or the command fails.
    pub fn reconnect(&self) -> Result<(), ContainerError> {
        let (network, ip) = self.network()?;
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip.to_string(),
            network,
            &self.id,
        ])
        .map(drop)
    }

    fn network(&self) -> Result<(&str, Ipv4Addr), ContainerError> {
        self.spec
            .network
            .as_ref()
            .map(|(n, ip)| (n.as_str(), *ip))
            .ok_or_else(|| ContainerError::Command {
                command: format!("network ... {}", self.id),
                detail: "the container was not started on a user-defined network".into(),
            })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(error) = docker(&["rm", "-f", "-v", &self.id]) {
            tracing::warn!(%error, id = %self.id, "could not remove a test container; its watchdog will");
            return;
        }
        stop_watchdog(&mut self.watchdog);
    }
}

/// A user-defined bridge network with its own subnet (so containers keep
/// their address when reconnected), removed on drop.
#[derive(Debug)]
pub struct Network {
    name: String,
    prefix: [u8; 3],
    next: AtomicU64,
    watchdog: Option<Child>,
}

impl Network {
    /// Creates a network on a free `10.213.x.0/24` subnet.
    ///
    /// # Errors
    ///
    /// [`ContainerError`] when Docker is missing or no subnet is free.
    pub fn create() -> Result<Self, ContainerError> {
        ensure_docker()?;
        let name = unique_name("net");
        let label = format!("{LABEL}={}", std::process::id());
        let seed = u64::from(std::process::id()) * 31 + unique_seed();
        let mut last = None;
        for attempt in 0..32u64 {
            let third = u8::try_from((seed + attempt * 7) % 250 + 1).unwrap_or(1);
            let prefix = [10, 213, third];
            let subnet = format!("10.213.{third}.0/24");
            match docker(&[
                "network", "create", "--driver", "bridge", "--subnet", &subnet, "--label", &label,
                &name,
            ]) {
                Ok(_) => {
                    let watchdog = spawn_watchdog(&format!(
                        "for i in 1 2 3 4 5 6 7 8 9 10; do docker network rm {name} >/dev/null 2>&1 && break; sleep 1; done"
                    ));
                    return Ok(Self {
                        name,
                        prefix,
                        next: AtomicU64::new(2),
                        watchdog,
                    });
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| ContainerError::Command {
            command: "network create".into(),
            detail: "no free subnet".into(),
        }))
    }

    /// The network's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    fn next_ip(&self) -> Ipv4Addr {
        let host = self.next.fetch_add(1, Ordering::Relaxed);
        let host = u8::try_from(host.min(254)).unwrap_or(254);
        Ipv4Addr::new(self.prefix[0], self.prefix[1], self.prefix[2], host)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(error) = docker(&["network", "rm", &self.name]) {
            tracing::warn!(%error, name = %self.name, "could not remove a test network; its watchdog will");
            return;
        }
        stop_watchdog(&mut self.watchdog);
    }
}

fn unique_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}
