//! Prometheus metrics on a port of their own (`--metrics-addr`): every
//! metric of [`offstate_core::telemetry`] (and of the cache, with
//! `--cache`), in the text exposition format at `GET /metrics`.
//!
//! A separate listener keeps the metrics off the public port: the load
//! balancer never routes to it, and the scraper needs no cookie.

use std::time::Duration;

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use offstate_core::telemetry;

/// Store call latency buckets, in seconds: from an in-process store to a
/// timeout.
const LATENCY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Record size buckets, in bytes (DynamoDB bills by the KB, memcached's
/// default item limit is 1 MB).
const BYTES: &[f64] = &[
    128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0, 65536.0, 262_144.0,
];
/// Conflicts a save met before it landed.
const RETRIES: &[f64] = &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];
/// How long the cache's invalidation channel stayed down, in seconds.
const FALLBACK: &[f64] = &[1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0];
/// How long an instance's own invalidation took to come back through its
/// subscription, in seconds: well under a millisecond on a quiet network.
const DELAY: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder,
/// with buckets for offstate's histograms. Call it once, before building
/// the sessions.
///
/// # Errors
///
/// [`BuildError`] when a recorder is already installed.
pub fn install() -> Result<PrometheusHandle, BuildError> {
    let full = |name: &str| Matcher::Full(name.to_owned());
    PrometheusBuilder::new()
        .set_buckets_for_metric(full(telemetry::STORE_CALL_DURATION), LATENCY)?
        .set_buckets_for_metric(full(telemetry::SESSION_RECORD_BYTES), BYTES)?
        .set_buckets_for_metric(full(telemetry::SESSION_SAVE_RETRIES), RETRIES)?
        .set_buckets_for_metric(full("offstate_cache_fallback_duration_seconds"), FALLBACK)?
        .set_buckets_for_metric(full("offstate_cache_invalidation_delay_seconds"), DELAY)?
        .install_recorder()
}

/// `GET /metrics`, rendered from `handle`.
pub fn router(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let text = handle.render();
            async move { ([(CONTENT_TYPE, "text/plain; version=0.0.4")], text) }
        }),
    )
}

/// Serves [`router`] on `listener` until the process ends, and keeps the
/// recorder's histograms drained.
///
/// # Errors
///
/// The listener's I/O errors.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: PrometheusHandle,
) -> std::io::Result<()> {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    axum::serve(listener, router(handle)).await
}
