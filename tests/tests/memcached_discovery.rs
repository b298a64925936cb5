//! ElastiCache auto-discovery against real processes: a plain memcached is
//! not a configuration endpoint, and an unreachable endpoint fails in time.
//! (The ElastiCache answer format itself is unit-tested in the crate.)

// Helpers here are test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_memcached::{DiscoveryError, discover_nodes};
use offstate_testing::free_port;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_memcached_is_not_a_configuration_endpoint() {
    let server = offstate_testing::memcached()
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached: {e}"));
    match discover_nodes(server.url(), Duration::from_secs(2)).await {
        Err(DiscoveryError::Server { .. }) => {}
        other => panic!("plain memcached must answer with a server error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_a_typed_error() {
    let port = free_port().expect("port");
    match discover_nodes(&format!("127.0.0.1:{port}"), Duration::from_secs(2)).await {
        Err(DiscoveryError::Unreachable { .. }) => {}
        other => panic!("nothing listens there, got {other:?}"),
    }
}
