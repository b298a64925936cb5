//! The in-process middleware overhead app: the same two axum handlers (one
//! reads one key, the other writes one key) behind offstate's
//! `SessionLayer` and behind tower-sessions' `SessionManagerLayer`, each
//! over its own in-memory store, and the same routes with no session
//! layer (the floor). Requests go through tower `oneshot` and carry the
//! cookie of an existing session.
//!
//! `benches/overhead.rs` times these with criterion; the
//! `inprocess-requests` binary runs them under callgrind for the
//! instruction counts (`icount`).

use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use hyper::Method;
use offstate_core::SessionError;
use offstate_core::{MemoryStore, Sessions};
use offstate_tower::{CookieConfig, SessionLayer};

use crate::BenchError;
use crate::apps::internal;
use crate::server::Variant;

/// A new value for every write, so no library can skip the save as a no-op.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// The session key both handlers use.
const KEY: &str = "n";

/// Which handler a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// `GET /read`: reads one key.
    Read,
    /// `POST /write`: writes one key (a new value each time).
    Write,
}

impl Handler {
    fn method(self) -> Method {
        match self {
            Self::Read => Method::GET,
            Self::Write => Method::POST,
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::Read => "/read",
            Self::Write => "/write",
        }
    }
}

async fn offstate_read(session: offstate_tower::Session) -> Result<String, SessionError> {
    let n: Option<u64> = session.get(KEY).await?;
    Ok(n.unwrap_or(0).to_string())
}

async fn offstate_write(session: offstate_tower::Session) -> Result<&'static str, SessionError> {
    session
        .insert(KEY, &NEXT.fetch_add(1, Ordering::Relaxed))
        .await?;
    Ok("ok")
}

async fn tower_read(session: tower_sessions::Session) -> Result<String, (StatusCode, String)> {
    let n: Option<u64> = session.get(KEY).await.map_err(internal)?;
    Ok(n.unwrap_or(0).to_string())
}

async fn tower_write(
    session: tower_sessions::Session,
) -> Result<&'static str, (StatusCode, String)> {
    session
        .insert(KEY, NEXT.fetch_add(1, Ordering::Relaxed))
        .await
        .map_err(internal)?;
    Ok("ok")
}

/// The router of `variant` over its library's in-memory store.
///
/// # Errors
///
/// [`BenchError::Usage`] for [`Variant::OffstateCached`]: a cache in
/// front of an in-memory store measures nothing.
pub fn router(variant: Variant) -> Result<Router, BenchError> {
    Ok(match variant {
        Variant::Offstate => Router::new()
            .route(Handler::Read.path(), get(offstate_read))
            .route(Handler::Write.path(), post(offstate_write))
            .layer(
                SessionLayer::new(Sessions::new(MemoryStore::new()))
                    .with_cookie(CookieConfig::default().with_secure(false)),
            ),
        Variant::TowerSessions => Router::new()
            .route(Handler::Read.path(), get(tower_read))
            .route(Handler::Write.path(), post(tower_write))
            .layer(
                tower_sessions::SessionManagerLayer::new(tower_sessions::MemoryStore::default())
                    .with_secure(false),
            ),
        Variant::Plain => Router::new()
            .route(Handler::Read.path(), get(|| async { "0" }))
            .route(Handler::Write.path(), post(|| async { "ok" })),
        Variant::OffstateCached => {
            return Err(BenchError::Usage(
                "the in-process app has no cached variant (it runs on an in-memory store)".into(),
            ));
        }
    })
}

/// One request to `handler` with `cookie`; returns the cookie the
/// response sets, if any.
///
/// # Errors
///
/// [`BenchError`] when the app answers anything but 2xx.
pub async fn request(
    app: &Router,
    handler: Handler,
    cookie: Option<&str>,
) -> Result<Option<String>, BenchError> {
    crate::oneshot::call(app, handler.method(), handler.path(), cookie).await
}

/// Starts a session with one write and returns its cookie (`None` on the
/// router without sessions).
///
/// # Errors
///
/// As [`request`].
pub async fn start_session(app: &Router) -> Result<Option<String>, BenchError> {
    request(app, Handler::Write, None).await
}

/// Sends `n` requests to `handler` on the session of `cookie`, one after
/// the other.
///
/// # Errors
///
/// As [`request`], at the first failure.
pub async fn repeat(
    app: &Router,
    handler: Handler,
    cookie: Option<&str>,
    n: u64,
) -> Result<(), BenchError> {
    for _ in 0..n {
        request(app, handler, cookie).await?;
    }
    Ok(())
}

/// Rounds of [`interleaved`]; its figure is their median.
pub const INTERLEAVED_ROUNDS: usize = 41;

/// offstate's time over tower-sessions' on `handler`, measured so that a
/// drift in the machine's speed hits both alike: each round times a block
/// of `block` requests on one library, then on the other (the first of
/// the pair alternating), and the figure is the median of the rounds'
/// ratios. Criterion measures one library for seconds, then the other,
/// and on this shared machine that ratio moves by ±10 % between runs; this
/// one is the steadier measure beside it.
///
/// # Errors
///
/// As [`request`].
pub async fn interleaved(handler: Handler, block: u64) -> Result<f64, BenchError> {
    let mut apps = Vec::new();
    for variant in [Variant::Offstate, Variant::TowerSessions] {
        let app = router(variant)?;
        let cookie = start_session(&app).await?;
        // Warm-up: caches, allocator, the store's maps.
        repeat(&app, handler, cookie.as_deref(), block).await?;
        apps.push((app, cookie));
    }
    let mut ratios = Vec::with_capacity(INTERLEAVED_ROUNDS);
    for round in 0..INTERLEAVED_ROUNDS {
        let mut times = [0.0; 2];
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (app, cookie) = &apps[i];
            let started = std::time::Instant::now();
            repeat(app, handler, cookie.as_deref(), block).await?;
            times[i] = started.elapsed().as_secs_f64();
        }
        ratios.push(times[0] / times[1]);
    }
    ratios.sort_by(f64::total_cmp);
    Ok(ratios[ratios.len() / 2])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn interleaved_ratios_come_from_both_libraries_answering() {
        for handler in [Handler::Read, Handler::Write] {
            let ratio = interleaved(handler, 20).await.unwrap();
            assert!(ratio.is_finite() && ratio > 0.0, "{ratio}");
        }
    }
}
