//! Issue 14: after A acknowledges a logout, does B, another cart process
//! with a local cache on the same Redis, still answer with the old session?
//!
//! Two cart binaries with `--cache` (coherent: the Redis store publishes
//! each write's invalidation from inside its script) share one Redis
//! started by the offstate-testing fixture; a client talks to each over
//! its own keep-alive connection. Every round starts a fresh session (log
//! in and add on A, read once on B so B has it in its cache), logs out on
//! A, and reads on B with the old cookie the moment A has answered. An
//! answer that still shows the cart or the user is stale.
//!
//! Rounds: `OFFSTATE_STALE_ROUNDS=full` runs the size (10,000
//! logouts and 2,000 "log out everywhere"); `N,M` any other; the default
//! (CI) is 300 and 100. Every size must give 0 stale answers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt as _;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use offstate_testing::{ServerProcess, Source, free_port};
use serde::Deserialize;

/// The full size: logouts, then "log out everywhere"s.
const FULL: (usize, usize) = (10_000, 2_000);
/// What CI runs unless `OFFSTATE_STALE_ROUNDS` says otherwise.
const CI: (usize, usize) = (300, 100);

fn rounds() -> (usize, usize) {
    match std::env::var("OFFSTATE_STALE_ROUNDS").as_deref() {
        Err(_) | Ok("") => CI,
        Ok("full") => FULL,
        Ok(other) => {
            let (n, m) = other
                .split_once(',')
                .expect("OFFSTATE_STALE_ROUNDS is `full` or `N,M`");
            (n.trim().parse().unwrap(), m.trim().parse().unwrap())
        }
    }
}

/// One cart process with a coherent cache.
struct Cart {
    addr: SocketAddr,
    metrics: SocketAddr,
    _process: ServerProcess,
}

fn start_cart(name: &str, store: &str) -> Cart {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
    let args: Vec<String> = [
        "--listen",
        &addr.to_string(),
        "--instance",
        name,
        "--store",
        store,
        "--cache",
        "--metrics-addr",
        &metrics.to_string(),
    ]
    .map(String::from)
    .to_vec();
    let bin = Path::new(env!("CARGO_BIN_EXE_offstate-example-cart"));
    let mut process = ServerProcess::spawn(name, bin, &args).unwrap();
    process
        .wait_for_port(addr, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("cart {name} did not start: {e}"));
    Cart {
        addr,
        metrics,
        _process: process,
    }
}

/// `GET /api/cart` as the cart answers it.
#[derive(Debug, Deserialize)]
struct CartJson {
    count: u32,
    user: Option<String>,
}

/// A keep-alive HTTP/1.1 client for both instances.
struct Shopper {
    client: Client<HttpConnector, Body>,
}

impl Shopper {
    fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
        }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Option<String>, Bytes) {
        let response = self.client.request(request).await.unwrap();
        let status = response.status();
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, cookie, body)
    }

    /// A form post that must answer 303; returns the new cookie, if set.
    async fn post(
        &self,
        cart: &Cart,
        path: &str,
        form: &str,
        cookie: Option<&str>,
    ) -> Option<String> {
        let mut builder = Request::post(format!("http://{}{path}", cart.addr))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        let request = builder.body(Body::from(form.to_owned())).unwrap();
        let (status, set, body) = self.send(request).await;
        assert_eq!(
            status,
            StatusCode::SEE_OTHER,
            "{path}: {}",
            String::from_utf8_lossy(&body)
        );
        set
    }

    /// A counter of `cart`'s Prometheus endpoint.
    async fn counter(&self, cart: &Cart, name: &str) -> f64 {
        let request = Request::get(format!("http://{}/metrics", cart.metrics))
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK);
        let text = String::from_utf8(body.to_vec()).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    async fn cart(&self, cart: &Cart, cookie: &str) -> CartJson {
        let request = Request::get(format!("http://{}/api/cart", cart.addr))
            .header(header::COOKIE, cookie)
            .body(Body::empty())
            .unwrap();
        let (status, _, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }
}

/// How one kind of logout fared.
#[derive(Debug)]
struct Tally {
    rounds: usize,
    stale: usize,
    took: Duration,
}

/// `rounds` times: a fresh session (log in and add on A, read on B so B
/// caches it), then `logout` on A, then at once a read on B.
async fn run(shopper: &Shopper, a: &Cart, b: &Cart, logout: &str, rounds: usize) -> Tally {
    let started = Instant::now();
    let mut stale = 0;
    for round in 0..rounds {
        let user = format!("{}-{round}", logout.trim_start_matches('/'));
        let cookie = shopper
            .post(a, "/login", &format!("user={user}"), None)
            .await
            .expect("a login sets the cookie");
        let kept = shopper
            .post(a, "/cart/add", "item=apple", Some(&cookie))
            .await;
        let cookie = kept.unwrap_or(cookie);
        // Twice: B caches it, then (normally) serves it from memory.
        for _ in 0..2 {
            let seen = shopper.cart(b, &cookie).await;
            assert_eq!(
                (seen.count, seen.user.as_deref()),
                (1, Some(user.as_str())),
                "B does not see the session A made"
            );
        }
        shopper.post(a, logout, "", Some(&cookie)).await;
        // A has acknowledged the logout: from here B must not serve it.
        let after = shopper.cart(b, &cookie).await;
        if after.count != 0 || after.user.is_some() {
            stale += 1;
        }
    }
    Tally {
        rounds,
        stale,
        took: started.elapsed(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_logout_on_a_b_never_serves_the_old_session() {
    let (n, m) = rounds();
    let redis = offstate_testing::redis()
        .via(Source::Process)
        .await
        .unwrap_or_else(|e| panic!("this test needs redis-server: {e}"));
    let a = start_cart("a", redis.url());
    let b = start_cart("b", redis.url());
    let shopper = Shopper::new();
    let logout = run(&shopper, &a, &b, "/logout", n).await;
    let everywhere = run(&shopper, &a, &b, "/logout-everywhere", m).await;
    let hits = shopper.counter(&b, "offstate_cache_hits_total").await;
    let misses = shopper.counter(&b, "offstate_cache_misses_total").await;
    // A timed each of its logouts' announcements on their way back to it.
    let delays = "offstate_cache_invalidation_delay_seconds";
    let echoes = shopper.counter(&a, &format!("{delays}_count")).await;
    let delay_sum = shopper.counter(&a, &format!("{delays}_sum")).await;
    for (what, tally) in [("logout", &logout), ("log out everywhere", &everywhere)] {
        println!(
            "{what} on A, then at once a read on B: {} stale of {} rounds, {:.1} s",
            tally.stale,
            tally.rounds,
            tally.took.as_secs_f64()
        );
    }
    println!("B's cache: {hits} hits, {misses} misses");
    println!(
        "A's invalidation delay: {echoes} timed, mean {:.0} µs",
        delay_sum / echoes.max(1.0) * 1e6
    );
    assert!(
        echoes >= 1.0,
        "A's metrics endpoint shows no {delays} after {} logouts",
        logout.rounds
    );
    assert_eq!(
        (logout.stale, everywhere.stale),
        (0, 0),
        "B served a session after A acknowledged its logout"
    );
    // The reads above were B's cache at work, not the backend every time.
    let rounds = (n + m) as f64;
    assert!(
        hits >= rounds / 2.0,
        "B served only {hits} of {rounds} reads from its cache"
    );
}
