//! A shopping-cart web app whose sessions live outside the instance: run
//! two instances on one shared store behind a load balancer and the cart
//! follows the user whichever instance answers. Every page says which
//! instance served it.
//!
//! Run it with `cargo run -p offstate-example-cart` and open
//! <http://127.0.0.1:3000>. It uses the in-memory store unless
//! `--store URL` names another (`redis://`, `rediss://`,
//! `dynamodb://host:port/table`, `memcached://host:port,...`; see
//! [`store`]), optionally behind a local cache (`--cache`).
//!
//! `scripts/demo.sh` runs three instances on one Redis behind a real nginx
//! load balancer; `tests/browser.rs` drives the same set-up from headless
//! Chromium (instance killed mid-session, login, concurrent adds, logout
//! everywhere). `tests/stale.rs` runs two instances with `--cache` on one
//! Redis and checks that after a logout on one, the other never serves the
//! old session (`OFFSTATE_STALE_ROUNDS=full` for 10,000 rounds).
//!
//! # Layout
//!
//! - [`config`]: flags and environment variables.
//! - [`store`]: the `--store` URL to [`Sessions`](offstate_core::Sessions).
//! - [`cart`]: the catalog and the pure functions that change a cart.
//! - [`pages`]: the HTML.
//! - [`prometheus`]: metrics for Prometheus on their own port
//!   (`--metrics-addr`).
//! - `routes`: the handlers and [`app`], the router behind the session layer.
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use offstate_example_cart::{AppConfig, app, store::sessions_for};
//!
//! let sessions = sessions_for("memory://").await.unwrap();
//! let router = app(sessions, AppConfig::new("instance-a").with_secure_cookies(false));
//! // axum::serve(listener, router).await
//! # drop(router);
//! # }
//! ```

pub mod cart;
pub mod config;
pub mod pages;
pub mod prometheus;
mod routes;
pub mod store;

pub use routes::{AppConfig, app};
