//! Bytes a typical cart session takes in Redis, per library: `MEMORY
//! USAGE` of every key a session leaves behind, on a redis-server started
//! for the purpose (emptied between sessions, so every key there is the
//! session's).
//!
//! Two sessions per library, made by the cart app of [`crate::apps`] in
//! process: a cart after [`ADDS`] adds, and the same cart after
//! `POST /login` (offstate's principal, which also indexes the session
//! under its user; tower-sessions' user in a session key).

use hyper::Method;
use offstate_redis::redis;
use offstate_testing::Source;

use crate::BenchError;
use crate::server::{self, Variant};

/// Adds that fill the cart before it is measured.
pub const ADDS: u64 = 3;

/// Which session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A cart after [`ADDS`] adds.
    Cart,
    /// The same, then logged in.
    LoggedIn,
}

impl Shape {
    /// What the report calls it.
    #[must_use]
    pub fn label(self) -> String {
        match self {
            Self::Cart => format!("cart after {ADDS} adds"),
            Self::LoggedIn => format!("cart after {ADDS} adds, logged in"),
        }
    }
}

/// One key a session left in Redis.
#[derive(Debug, Clone)]
pub struct KeyBytes {
    /// The key.
    pub key: String,
    /// `TYPE`, and `OBJECT ENCODING`: `hash (listpack)`.
    pub kind: String,
    /// `MEMORY USAGE`.
    pub bytes: u64,
}

/// One session of one library.
#[derive(Debug, Clone)]
pub struct SessionBytes {
    /// The library (app variant).
    pub variant: Variant,
    /// The session.
    pub shape: Shape,
    /// Every key it left, biggest first.
    pub keys: Vec<KeyBytes>,
}

impl SessionBytes {
    /// All its keys together.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.keys.iter().map(|k| k.bytes).sum()
    }
}

/// Measures both shapes for offstate and tower-sessions.
///
/// # Errors
///
/// [`BenchError`] when redis-server cannot be started or a request fails.
pub async fn measure() -> Result<Vec<SessionBytes>, BenchError> {
    let redis = offstate_testing::redis().via(Source::Process).await?;
    let url = redis.url().to_owned();
    let client = redis::Client::open(url.as_str())?;
    let mut connection = client.get_multiplexed_async_connection().await?;
    let mut results = Vec::new();
    for variant in [Variant::TowerSessions, Variant::Offstate] {
        for shape in [Shape::Cart, Shape::LoggedIn] {
            redis::cmd("FLUSHALL")
                .query_async::<()>(&mut connection)
                .await?;
            let app = server::router(variant, &url, None).await?;
            let mut cookie = None;
            for _ in 0..ADDS {
                let set = crate::oneshot::call(&app, Method::POST, "/cart/add", cookie.as_deref())
                    .await?;
                cookie = set.or(cookie);
            }
            if shape == Shape::LoggedIn {
                crate::oneshot::call(&app, Method::POST, "/login", cookie.as_deref()).await?;
            }
            drop(app);
            let keys = keys(&mut connection).await?;
            results.push(SessionBytes {
                variant,
                shape,
                keys,
            });
        }
    }
    drop(redis);
    Ok(results)
}

/// Every key in the database with its size, biggest first.
async fn keys(
    connection: &mut redis::aio::MultiplexedConnection,
) -> Result<Vec<KeyBytes>, BenchError> {
    let names: Vec<String> = redis::cmd("KEYS").arg("*").query_async(connection).await?;
    let mut keys = Vec::with_capacity(names.len());
    for key in names {
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(connection)
            .await?;
        let kind: String = redis::cmd("TYPE").arg(&key).query_async(connection).await?;
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(connection)
            .await?;
        keys.push(KeyBytes {
            key,
            kind: format!("{kind} ({encoding})"),
            bytes,
        });
    }
    keys.sort_by_key(|k| std::cmp::Reverse(k.bytes));
    Ok(keys)
}
