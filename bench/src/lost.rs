//! Lost updates: many concurrent add-to-cart requests on ONE session, from
//! tasks spread over two app processes that share one Redis. An add that
//! reads the cart, appends, and writes the whole session back unconditioned
//! overwrites the adds that landed meanwhile; offstate's conditional save
//! and `update` retry keep every one.

use std::net::SocketAddr;

use crate::BenchError;
use crate::apps::Cart;
use crate::loadgen::{HttpClient, LoadResult};

/// What survived.
#[derive(Debug, Clone)]
pub struct LostResult {
    /// Adds sent concurrently.
    pub sent: u64,
    /// The first failure's status and body, if any.
    pub first_failure: Option<String>,
    /// Items of those adds found in the cart afterwards, read on each
    /// process (they must agree).
    pub survived: [u64; 2],
    /// Adds answered with a 2xx status (`ok`) and otherwise, or failed
    /// (`errors`); every add's latency, refused ones included, and the
    /// run's wall time: how long writers on one session wait for their
    /// turn.
    pub timing: LoadResult,
}

/// Sends `total` adds on one session from `tasks` tasks, alternating
/// between the two processes at `addrs`, then waits `settle` (a cache's
/// staleness bound) and reads the cart on each process.
///
/// # Errors
///
/// [`BenchError`] when the session cannot be created or read back.
pub async fn run(
    addrs: [SocketAddr; 2],
    total: u64,
    tasks: u64,
    settle: std::time::Duration,
) -> Result<LostResult, BenchError> {
    // One add creates the session; it is not one of the `total`.
    let mut first = HttpClient::connect(addrs[0]).await?;
    let (status, _) = first.add().await?;
    if !status.is_success() {
        return Err(BenchError::Usage(format!("the first add got {status}")));
    }
    let mut clients = Vec::new();
    for task in 0..tasks {
        let addr = addrs[usize::from(task % 2 == 1)];
        let mut client = HttpClient::connect(addr).await?;
        client.copy_cookies(&first);
        let share = total / tasks + u64::from(task < total % tasks);
        clients.push((client, share));
    }
    let started = std::time::Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .map(|(mut client, share)| {
            tokio::spawn(async move {
                let (mut ok, mut failed) = (0_u64, 0_u64);
                let mut first_failure = None;
                let mut latencies_us = Vec::new();
                for _ in 0..share {
                    let sent = std::time::Instant::now();
                    let outcome = client.add().await;
                    latencies_us
                        .push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                    match outcome {
                        Ok((status, _)) if status.is_success() => ok += 1,
                        outcome => {
                            failed += 1;
                            if first_failure.is_none() {
                                first_failure = Some(match outcome {
                                    Ok((status, body)) => {
                                        format!("{status} {}", String::from_utf8_lossy(&body))
                                    }
                                    Err(error) => error.to_string(),
                                });
                            }
                        }
                    }
                }
                (ok, failed, first_failure, latencies_us)
            })
        })
        .collect();
    let (mut ok, mut failed) = (0, 0);
    let mut first_failure = None;
    let mut latencies_us = Vec::new();
    for handle in handles {
        match handle.await {
            Ok((o, f, first, latencies)) => {
                ok += o;
                failed += f;
                first_failure = first_failure.or(first);
                latencies_us.extend(latencies);
            }
            Err(_) => failed += 1,
        }
    }
    let elapsed = started.elapsed();
    latencies_us.sort_unstable();
    tokio::time::sleep(settle).await;
    let mut survived = [0; 2];
    for (slot, addr) in survived.iter_mut().zip(addrs) {
        let mut reader = HttpClient::connect(addr).await?;
        reader.copy_cookies(&first);
        let (status, body) = reader.cart().await?;
        if !status.is_success() {
            return Err(BenchError::Usage(format!("reading the cart got {status}")));
        }
        let cart: Cart = serde_json::from_slice(&body)?;
        *slot = crate::apps::count(&cart).saturating_sub(1);
    }
    Ok(LostResult {
        sent: total,
        first_failure,
        survived,
        timing: LoadResult {
            ok,
            errors: failed,
            elapsed,
            latencies_us,
        },
    })
}
