//! Docker containers and networks for the fixtures, through testcontainers
//! (and its bollard, for what testcontainers does not cover: killing a
//! container, networks with a fixed subnet, leftovers of dead test
//! processes).
//!
//! Why this file is long: every direct use of Docker (testcontainers and
//! bollard) is kept in this one file, so the rest of the fixtures never
//! touch the engine's API.
//!
//! # Cleaning up
//!
//! - Dropping a [`Container`] or [`Network`] removes it, also while a
//!   failing test unwinds, and also outside any tokio runtime (the removal
//!   runs on a thread of its own; testcontainers' own drop needs a runtime).
//! - testcontainers' `watchdog` removes the containers of a test process
//!   stopped by SIGINT, SIGTERM or SIGQUIT.
//! - Each container and network carries the label `offstate-test=<pid>`.
//!   The first container of a test process removes those whose process is
//!   gone (a SIGKILLed test, which nothing can clean up after), never those
//!   of a live one (tests running in parallel).
//!
//! # Images are never pulled
//!
//! testcontainers pulls an image it does not find. Here an image that is
//! not there locally is an error naming the variable that chooses it (see
//! [`crate::images`]), unless `OFFSTATE_TEST_PULL=1` lets testcontainers
//! pull it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};

use testcontainers::bollard::Docker;
use testcontainers::bollard::errors::Error as DockerError;
use testcontainers::bollard::models::{
    EndpointIpamConfig, EndpointSettings, Ipam, IpamConfig, NetworkConnectRequest,
    NetworkCreateRequest, NetworkDisconnectRequest, PortBinding,
};
use testcontainers::bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, ListNetworksOptions, RemoveContainerOptions,
};
use testcontainers::core::client::docker_client_instance;
use testcontainers::core::{ContainerPort, IntoContainerPort as _};
use testcontainers::runners::AsyncRunner as _;
use testcontainers::{
    ContainerAsync, CopyTargetOptions, GenericImage, ImageExt as _, TestcontainersError,
};
use tokio::sync::OnceCell;

use crate::images::Image;

/// The label on every container and network the fixtures create; its value
/// is the PID of the test process that owns it.
pub const LABEL: &str = "offstate-test";

/// The variable that allows pulling a missing image (`1`).
pub const PULL_ENV: &str = "OFFSTATE_TEST_PULL";

/// Why a container or network could not be set up or changed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// No Docker daemon answers.
    #[error(
        "no Docker daemon is reachable ({source}); start dockerd, set DOCKER_HOST, \
         or run with OFFSTATE_TEST_BACKEND=process"
    )]
    NoDocker {
        /// What the client said.
        #[source]
        source: Box<testcontainers::core::client::ClientError>,
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
    /// testcontainers could not start or change the container.
    #[error("{what} ({image}): {source}")]
    Testcontainers {
        /// What was being done.
        what: &'static str,
        /// The image.
        image: String,
        /// testcontainers' error.
        #[source]
        source: Box<TestcontainersError>,
    },
    /// A Docker API call failed.
    #[error("{what}: {source}")]
    Docker {
        /// What was being done.
        what: String,
        /// bollard's error.
        #[source]
        source: Box<DockerError>,
    },
    /// No loopback port could be had to publish the server on.
    #[error("no free loopback port to publish {image} on")]
    NoPort {
        /// The image.
        image: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The container is not on a user-defined network, so it cannot be
    /// disconnected from one.
    #[error("container {name} was not started on a test network")]
    NotOnNetwork {
        /// The container's name.
        name: String,
    },
}

/// The Docker client, once a daemon has answered; the first call of a test
/// process also removes the leftovers of dead test processes.
///
/// # Errors
///
/// [`ContainerError::NoDocker`] when no daemon answers.
pub async fn docker() -> Result<Docker, ContainerError> {
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    let docker = docker_client_instance()
        .await
        .map_err(|source| ContainerError::NoDocker {
            source: Box::new(source),
        })?;
    if !SWEPT.initialized() {
        if let Err(source) = docker.ping().await {
            return Err(ContainerError::NoDocker {
                source: Box::new(testcontainers::core::client::ClientError::Init(source)),
            });
        }
        SWEPT.get_or_init(|| remove_leftovers(&docker)).await;
    }
    Ok(docker)
}

/// Whether a Docker daemon answers.
pub async fn docker_available() -> bool {
    docker().await.is_ok()
}

/// Whether `image` is present locally.
pub async fn image_present(image: &str) -> bool {
    match docker().await {
        Ok(docker) => docker.inspect_image(image).await.is_ok(),
        Err(_) => false,
    }
}

/// Whether pulling missing images is allowed (`OFFSTATE_TEST_PULL=1`).
#[must_use]
pub fn pull_allowed() -> bool {
    std::env::var(PULL_ENV).is_ok_and(|v| v == "1")
}

/// Makes sure `image` can be run: it is there, or may be pulled.
///
/// # Errors
///
/// [`ContainerError::ImageMissing`] naming the image's variable.
pub async fn ensure_image(image: &Image) -> Result<(), ContainerError> {
    docker().await?;
    if pull_allowed() || image_present(image.name()).await {
        return Ok(());
    }
    Err(ContainerError::ImageMissing {
        image: image.name().to_owned(),
        var: image.var(),
    })
}

/// Removes containers and networks labelled [`LABEL`] whose test process
/// is gone. Those of live processes (tests running in parallel) stay.
pub async fn remove_leftovers(docker: &Docker) {
    let dead = |labels: Option<&HashMap<String, String>>| {
        let pid: u32 = labels?.get(LABEL)?.parse().ok()?;
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        (!alive).then_some(pid)
    };
    let filters = HashMap::from([("label".to_owned(), vec![LABEL.to_owned()])]);
    let containers = docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters.clone()),
            ..Default::default()
        }))
        .await
        .unwrap_or_default();
    for container in containers {
        if let (Some(id), Some(pid)) = (container.id, dead(container.labels.as_ref())) {
            tracing::info!(%id, pid, "removing a leftover test container");
            let _ = docker.remove_container(&id, Some(force_remove())).await;
        }
    }
    let networks = docker
        .list_networks(Some(ListNetworksOptions {
            filters: Some(filters),
        }))
        .await
        .unwrap_or_default();
    for network in networks {
        if let (Some(name), Some(pid)) = (network.name, dead(network.labels.as_ref())) {
            tracing::info!(%name, pid, "removing a leftover test network");
            let _ = docker.remove_network(&name).await;
        }
    }
}

fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    }
}

fn owner() -> String {
    std::process::id().to_string()
}

fn unique_name(kind: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("offstate-test-{kind}-{}-{n}", std::process::id())
}

/// Runs `work` to completion on a thread of its own with its own runtime,
/// and waits for it: safe in `Drop`, inside or outside a runtime. (bollard
/// keeps no idle connections, so nothing here belongs to the caller's
/// runtime, which may be blocked meanwhile or gone.)
fn run_aside(work: impl Future<Output = ()> + Send) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(work),
                Err(error) => tracing::warn!(%error, "no runtime to remove a test container"),
            }
        });
    });
}

/// How the test process reaches a container's server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Reach {
    /// Through a port published on 127.0.0.1, the same across stop and
    /// start.
    Published,
    /// On the host's network: the server listens on 127.0.0.1 itself, at
    /// the port its arguments give. For Redis Cluster nodes, which announce
    /// their own addresses (Linux only).
    HostNetwork,
    /// At its address on a [`Network`], so that disconnecting it from that
    /// network really cuts it off.
    Network(String),
}

/// What to start: an image, the arguments for its server, the port it
/// listens on inside, how to reach it, and files to put in first.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    image: Image,
    port: u16,
    args: Vec<String>,
    reach: Reach,
    entrypoint: Option<String>,
    files: Vec<(String, Vec<u8>)>,
}

impl ContainerSpec {
    /// A container from `image` whose server listens on `port` inside,
    /// reached through a published port.
    #[must_use]
    pub fn new(image: Image, port: u16) -> Self {
        Self {
            image,
            port,
            args: Vec::new(),
            reach: Reach::Published,
            entrypoint: None,
            files: Vec::new(),
        }
    }

    /// The server's arguments (the command after the image's entrypoint).
    #[must_use]
    pub fn with_args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args = args.into_iter().map(Into::into).collect();
        self
    }

    /// How the test process reaches the container.
    #[must_use]
    pub fn with_reach(mut self, reach: Reach) -> Self {
        self.reach = reach;
        self
    }

    /// Runs `program` instead of the image's entrypoint.
    #[must_use]
    pub fn with_entrypoint(mut self, program: impl Into<String>) -> Self {
        self.entrypoint = Some(program.into());
        self
    }

    /// Puts `contents` at `path` in the container (readable by anyone)
    /// before it starts.
    #[must_use]
    pub fn with_file(mut self, path: impl Into<String>, contents: Vec<u8>) -> Self {
        self.files.push((path.into(), contents));
        self
    }

    /// The image.
    #[must_use]
    pub fn image(&self) -> &Image {
        &self.image
    }
}

/// A running (or paused, or stopped) container, removed on drop.
#[derive(Debug)]
pub struct Container {
    inner: Option<ContainerAsync<GenericImage>>,
    id: String,
    name: String,
    image: String,
    /// The network it was started on, and its address there.
    network: Option<(String, String)>,
}

impl Container {
    /// Starts a container, and returns it with the address (`host:port`)
    /// where the test process reaches its server. Does not wait for the
    /// server: see [`crate::node::Node`].
    ///
    /// # Errors
    ///
    /// [`ContainerError`]: no daemon, a missing image (naming its variable),
    /// or a container that does not start.
    pub async fn start(spec: ContainerSpec) -> Result<(Self, String), ContainerError> {
        ensure_image(&spec.image).await?;
        let (repository, tag) = spec.image.name_and_tag();
        let mut image = GenericImage::new(repository, tag);
        if let Some(entrypoint) = &spec.entrypoint {
            image = image.with_entrypoint(entrypoint);
        }
        let name = unique_name("c");
        let mut request = image
            .with_container_name(&name)
            .with_label(LABEL, owner())
            .with_cmd(spec.args.clone());
        for (path, contents) in &spec.files {
            request = request.with_copy_to(
                CopyTargetOptions::new(path.clone()).with_mode(0o644),
                contents.clone(),
            );
        }
        let published = match &spec.reach {
            Reach::Published => {
                let host_port =
                    crate::process::loopback_port().map_err(|source| ContainerError::NoPort {
                        image: spec.image.name().to_owned(),
                        source,
                    })?;
                let inside: ContainerPort = spec.port.tcp();
                // Published on loopback only, at a port that stays the same
                // when the container is stopped and started again.
                request = request
                    .with_mapped_port(host_port, inside)
                    .with_host_config_modifier(move |config| {
                        config.port_bindings = Some(HashMap::from([(
                            inside.to_string(),
                            Some(vec![PortBinding {
                                host_ip: Some("127.0.0.1".into()),
                                host_port: Some(host_port.to_string()),
                            }]),
                        )]));
                    });
                Some(host_port)
            }
            Reach::HostNetwork => {
                request = request.with_network("host");
                None
            }
            Reach::Network(network) => {
                request = request.with_network(network.clone());
                None
            }
        };
        let inner = request
            .start()
            .await
            .map_err(|source| ContainerError::Testcontainers {
                what: "cannot start a container",
                image: spec.image.name().to_owned(),
                source: Box::new(source),
            })?;
        let mut container = Self {
            id: inner.id().to_owned(),
            inner: Some(inner),
            name,
            image: spec.image.name().to_owned(),
            network: None,
        };
        let address = match (&spec.reach, published) {
            (_, Some(host_port)) => format!("127.0.0.1:{host_port}"),
            (Reach::Network(network), None) => {
                let ip = container.address_on(network).await?;
                container.network = Some((network.clone(), ip.clone()));
                format!("{ip}:{}", spec.port)
            }
            (_, None) => format!("127.0.0.1:{}", spec.port),
        };
        Ok((container, address))
    }

    async fn address_on(&self, network: &str) -> Result<String, ContainerError> {
        let info = docker()
            .await?
            .inspect_container(&self.id, None)
            .await
            .map_err(|source| self.failed("inspect", source))?;
        info.network_settings
            .and_then(|settings| settings.networks)
            .and_then(|networks| networks.get(network).cloned())
            .and_then(|endpoint| endpoint.ip_address)
            .filter(|ip| !ip.is_empty())
            .ok_or_else(|| ContainerError::NotOnNetwork {
                name: self.name.clone(),
            })
    }

    fn failed(&self, what: &str, source: DockerError) -> ContainerError {
        ContainerError::Docker {
            what: format!("{what} {}", self.name),
            source: Box::new(source),
        }
    }

    fn inner(&self) -> &ContainerAsync<GenericImage> {
        // Only Drop takes it out.
        match &self.inner {
            Some(inner) => inner,
            None => unreachable!("a container is only taken out when dropped"),
        }
    }

    fn changed(
        &self,
        what: &'static str,
    ) -> impl FnOnce(TestcontainersError) -> ContainerError + '_ {
        move |source| ContainerError::Testcontainers {
            what,
            image: self.image.clone(),
            source: Box::new(source),
        }
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

    /// Freezes every process in the container: its connections stay open,
    /// nothing answers.
    ///
    /// # Errors
    ///
    /// When Docker refuses.
    pub async fn pause(&self) -> Result<(), ContainerError> {
        self.inner().pause().await.map_err(self.changed("pause"))
    }

    /// Thaws a paused container.
    ///
    /// # Errors
    ///
    /// When Docker refuses.
    pub async fn unpause(&self) -> Result<(), ContainerError> {
        self.inner()
            .unpause()
            .await
            .map_err(self.changed("unpause"))
    }

    /// Kills the container's server (SIGKILL), as a crash would; the
    /// container stays, stopped, until [`start`](Self::start_again).
    ///
    /// # Errors
    ///
    /// When Docker refuses.
    pub async fn kill(&self) -> Result<(), ContainerError> {
        let options = KillContainerOptions {
            signal: "SIGKILL".into(),
        };
        docker()
            .await?
            .kill_container(&self.id, Some(options))
            .await
            .map_err(|source| self.failed("kill", source))
    }

    /// Starts a stopped container again (its server starts empty: the
    /// fixtures keep no data on disk). Its address stays the same.
    ///
    /// # Errors
    ///
    /// When Docker refuses.
    pub async fn start_again(&self) -> Result<(), ContainerError> {
        self.inner().start().await.map_err(self.changed("start"))
    }

    /// Whether the container is running.
    ///
    /// # Errors
    ///
    /// When Docker cannot be asked.
    pub async fn is_running(&self) -> Result<bool, ContainerError> {
        self.inner()
            .is_running()
            .await
            .map_err(self.changed("inspect"))
    }

    /// The container's output so far (for error messages).
    pub async fn log(&self) -> String {
        let out = self.inner().stdout_to_vec().await.unwrap_or_default();
        let err = self.inner().stderr_to_vec().await.unwrap_or_default();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    }

    /// Disconnects the container from its network: traffic to its address
    /// goes nowhere.
    ///
    /// # Errors
    ///
    /// [`ContainerError::NotOnNetwork`], or Docker's refusal.
    pub async fn disconnect(&self) -> Result<(), ContainerError> {
        let (network, _) = self.network()?;
        let request = NetworkDisconnectRequest {
            container: self.id.clone(),
            force: Some(true),
        };
        docker()
            .await?
            .disconnect_network(network, request)
            .await
            .map_err(|source| self.failed("disconnect", source))
    }

    /// Connects the container back to its network, at the same address.
    ///
    /// # Errors
    ///
    /// [`ContainerError::NotOnNetwork`], or Docker's refusal.
    pub async fn reconnect(&self) -> Result<(), ContainerError> {
        let (network, ip) = self.network()?;
        let request = NetworkConnectRequest {
            container: self.id.clone(),
            endpoint_config: Some(EndpointSettings {
                ipam_config: Some(EndpointIpamConfig {
                    ipv4_address: Some(ip.to_owned()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        docker()
            .await?
            .connect_network(network, request)
            .await
            .map_err(|source| self.failed("reconnect", source))
    }

    fn network(&self) -> Result<(&str, &str), ContainerError> {
        self.network
            .as_ref()
            .map(|(network, ip)| (network.as_str(), ip.as_str()))
            .ok_or_else(|| ContainerError::NotOnNetwork {
                name: self.name.clone(),
            })
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let id = self.id.clone();
            run_aside(async move {
                if let Err(error) = inner.rm().await {
                    tracing::warn!(%error, %id, "could not remove a test container; the next test run will");
                }
            });
        }
    }
}

/// A user-defined bridge network with its own subnet (so that a container
/// keeps its address when reconnected), removed on drop.
#[derive(Debug)]
pub struct Network {
    name: String,
}

impl Network {
    /// Creates a network on a free `10.213.x.0/24` subnet.
    ///
    /// # Errors
    ///
    /// [`ContainerError`] when Docker is missing or no subnet is free.
    pub async fn create() -> Result<Self, ContainerError> {
        let docker = docker().await?;
        let name = unique_name("net");
        let seed = u64::from(std::process::id()) * 31 + unique_seed();
        let mut last = None;
        for attempt in 0..32u64 {
            let third = (seed + attempt * 7) % 250 + 1;
            let request = NetworkCreateRequest {
                name: name.clone(),
                driver: Some("bridge".into()),
                ipam: Some(Ipam {
                    config: Some(vec![IpamConfig {
                        subnet: Some(format!("10.213.{third}.0/24")),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                labels: Some(HashMap::from([(LABEL.to_owned(), owner())])),
                ..Default::default()
            };
            match docker.create_network(request).await {
                Ok(_) => return Ok(Self { name }),
                Err(error) => last = Some(error),
            }
        }
        Err(ContainerError::Docker {
            what: format!("create network {name} (no free subnet)"),
            source: Box::new(last.unwrap_or(DockerError::DockerResponseServerError {
                status_code: 0,
                message: "no attempt made".into(),
            })),
        })
    }

    /// The network's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        let name = self.name.clone();
        run_aside(async move {
            let removed = match docker().await {
                Ok(docker) => docker.remove_network(&name).await.is_ok(),
                Err(_) => false,
            };
            if !removed {
                tracing::warn!(%name, "could not remove a test network; the next test run will");
            }
        });
    }
}

fn unique_seed() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Whether the container with this ID still exists (for tests that check
/// a fixture removed its containers).
///
/// # Errors
///
/// When Docker cannot be asked.
pub async fn exists(id: &str) -> Result<bool, ContainerError> {
    match docker().await?.inspect_container(id, None).await {
        Ok(_) => Ok(true),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(false),
        Err(source) => Err(ContainerError::Docker {
            what: format!("inspect {id}"),
            source: Box::new(source),
        }),
    }
}
