//! The conformance suite on a TLS-only redis-server (`rediss://`, a CA
//! generated for the test), shared by all cases of this binary.

use offstate_testing::redis::{RedisHarness, shared_tls_server};

#[allow(clippy::panic)]
fn harness() -> RedisHarness {
    shared_tls_server()
        .harness()
        .unwrap_or_else(|e| panic!("redis-cli is needed to corrupt records: {e}"))
}

offstate_core::conformance_tests!(async { harness() });
