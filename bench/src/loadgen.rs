//! The HTTP load generator: one keep-alive HTTP/1.1 connection and one
//! cookie jar per simulated client, on hyper's low-level client, so every
//! client is one browser-like user with its own session.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{COOKIE, HOST, HeaderValue, SET_COOKIE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::Barrier;

use crate::BenchError;

/// One simulated user: a connection and its cookies.
#[derive(Debug)]
pub struct HttpClient {
    sender: SendRequest<Empty<Bytes>>,
    cookies: BTreeMap<String, String>,
}

impl HttpClient {
    /// Opens a keep-alive connection to `addr`.
    ///
    /// # Errors
    ///
    /// [`BenchError::Http`] when the connection fails.
    pub async fn connect(addr: SocketAddr) -> Result<Self, BenchError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(Self {
            sender,
            cookies: BTreeMap::new(),
        })
    }

    /// Sends one request with the jar's cookies, keeps what `Set-Cookie`
    /// says, and returns the status and body.
    ///
    /// # Errors
    ///
    /// [`BenchError::Http`] when the connection fails.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
    ) -> Result<(StatusCode, Bytes), BenchError> {
        self.sender.ready().await?;
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "127.0.0.1")
            .body(Empty::new())?;
        if !self.cookies.is_empty() {
            let header = self
                .cookies
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect::<Vec<_>>()
                .join("; ");
            request
                .headers_mut()
                .insert(COOKIE, HeaderValue::from_str(&header)?);
        }
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        for value in response.headers().get_all(SET_COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            let pair = text.split(';').next().unwrap_or_default();
            let Some((name, value)) = pair.split_once('=') else {
                continue;
            };
            let removed = value.is_empty()
                || text
                    .split(';')
                    .any(|attribute| attribute.trim().eq_ignore_ascii_case("Max-Age=0"));
            if removed {
                self.cookies.remove(name.trim());
            } else {
                self.cookies
                    .insert(name.trim().to_owned(), value.trim().to_owned());
            }
        }
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, body))
    }

    /// Takes `other`'s cookies (so this client joins its session).
    pub fn copy_cookies(&mut self, other: &Self) {
        self.cookies.clone_from(&other.cookies);
    }

    /// `POST /cart/add`.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::send`].
    pub async fn add(&mut self) -> Result<(StatusCode, Bytes), BenchError> {
        self.send(Method::POST, "/cart/add").await
    }

    /// `GET /cart`.
    ///
    /// # Errors
    ///
    /// As [`HttpClient::send`].
    pub async fn cart(&mut self) -> Result<(StatusCode, Bytes), BenchError> {
        self.send(Method::GET, "/cart").await
    }
}

/// Which requests a client sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mix {
    /// Only `GET /cart`.
    ReadOnly,
    /// Only `POST /cart/add`.
    WriteOnly,
    /// One `POST /cart/add` in every `n` requests, the rest `GET /cart`.
    OneWriteIn(u32),
}

impl Mix {
    fn writes(self, i: u64) -> bool {
        match self {
            Self::ReadOnly => false,
            Self::WriteOnly => true,
            Self::OneWriteIn(n) => i.is_multiple_of(u64::from(n.max(1))),
        }
    }
}

/// What a timed run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Requests answered with a 2xx status.
    pub ok: u64,
    /// Requests answered otherwise, or failed.
    pub errors: u64,
    /// Wall time from the start signal to the last client's end.
    pub elapsed: Duration,
    /// Every request's latency in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    /// Successful requests per second.
    #[must_use]
    pub fn rps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ok as f64 / secs
        } else {
            0.0
        }
    }

    /// The latency at quantile `q` (0..=1), in milliseconds.
    #[must_use]
    pub fn percentile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let last = self.latencies_us.len() - 1;
        let index = ((last as f64) * q).round() as usize;
        f64::from(self.latencies_us[index.min(last)]) / 1000.0
    }
}

/// Opens `n` clients to `addr` and gives each a session (one add each,
/// not measured).
///
/// # Errors
///
/// [`BenchError`] when a connection or a first add fails.
pub async fn prepare(addr: SocketAddr, n: usize) -> Result<Vec<HttpClient>, BenchError> {
    let mut clients = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = HttpClient::connect(addr).await?;
        let (status, body) = client.add().await?;
        if !status.is_success() {
            return Err(BenchError::Status {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        clients.push(client);
    }
    Ok(clients)
}

/// Runs `clients` concurrently for `duration` on `mix`, and gives them
/// back with the result.
pub async fn run(
    clients: Vec<HttpClient>,
    mix: Mix,
    duration: Duration,
) -> (Vec<HttpClient>, LoadResult) {
    let barrier = Arc::new(Barrier::new(clients.len() + 1));
    let mut tasks = Vec::with_capacity(clients.len());
    for (index, mut client) in clients.into_iter().enumerate() {
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            let (mut ok, mut errors) = (0_u64, 0_u64);
            barrier.wait().await;
            let deadline = Instant::now() + duration;
            // Clients start at different points of the mix, so writes are
            // spread over time rather than synchronised.
            let mut i = index as u64;
            loop {
                let start = Instant::now();
                if start >= deadline {
                    break;
                }
                let outcome = if mix.writes(i) {
                    client.add().await
                } else {
                    client.cart().await
                };
                i += 1;
                let micros = u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX);
                latencies.push(micros);
                match outcome {
                    Ok((status, _)) if status.is_success() => ok += 1,
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        break;
                    }
                }
            }
            (client, ok, errors, latencies)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut result = LoadResult::default();
    let mut clients = Vec::with_capacity(tasks.len());
    for task in tasks {
        if let Ok((client, ok, errors, latencies)) = task.await {
            clients.push(client);
            result.ok += ok;
            result.errors += errors;
            result.latencies_us.extend(latencies);
        } else {
            result.errors += 1;
        }
    }
    result.elapsed = start.elapsed();
    result.latencies_us.sort_unstable();
    (clients, result)
}
