//! `offstate-example-cart`: parse the settings, pick the store, serve.

use std::process::ExitCode;

use offstate_example_cart::config::{Settings, SettingsError};
use offstate_example_cart::{AppConfig, app, prometheus, store};
use offstate_tower::SigningKey;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let settings = match Settings::from_env() {
        Ok(settings) => settings,
        Err(SettingsError::Help) => {
            println!("{}", offstate_example_cart::config::USAGE);
            return Ok(());
        }
        Err(error) => return Err(error.to_string()),
    };
    // The recorder goes in before the sessions, so nothing is missed.
    if let Some(addr) = settings.metrics_addr {
        let handle = prometheus::install().map_err(|e| format!("metrics: {e}"))?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr} for metrics: {e}"))?;
        tracing::info!("metrics on http://{addr}/metrics");
        tokio::spawn(async move {
            if let Err(error) = prometheus::serve(listener, handle).await {
                tracing::error!(%error, "the metrics listener failed");
            }
        });
    }
    let options = store::StoreOptions::default().with_cache(settings.cache);
    let sessions = store::sessions_with(&settings.store, &options)
        .await
        .map_err(|e| error_chain(&e))?
        .with_expiry(settings.expiry());
    let mut config = AppConfig::new(settings.instance.clone())
        .with_secure_cookies(settings.secure_cookies)
        .with_store_label(if settings.cache {
            format!("{}, with a local cache", scheme(&settings.store))
        } else {
            scheme(&settings.store).to_owned()
        });
    if let Some(key) = &settings.signing_key {
        let key =
            SigningKey::new(key.as_bytes()).map_err(|e| format!("OFFSTATE_SIGNING_KEY: {e}"))?;
        config = config.with_signing_key(key);
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    tracing::info!(
        listen = %settings.listen,
        instance = %settings.instance,
        store = %scheme(&settings.store),
        cache = settings.cache,
        "offstate cart listening on http://{}",
        settings.listen
    );
    axum::serve(listener, app(sessions, config))
        .with_graceful_shutdown(shutdown())
        .await
        .map_err(|e| format!("server failed: {e}"))
}

/// The scheme of a store URL only: the rest may hold a password.
fn scheme(url: &str) -> &str {
    url.split_once("://").map_or("?", |(scheme, _)| scheme)
}

/// An error and its sources, one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Resolves on Ctrl-C or SIGTERM (how the demo launcher stops instances).
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}
