//! The conformance suite on a single redis-server (one server shared by all
//! cases of this binary; each case builds its own store instances).

use offstate_testing::redis::{RedisHarness, shared_server};

#[allow(clippy::panic)]
fn harness() -> RedisHarness {
    shared_server()
        .harness()
        .unwrap_or_else(|e| panic!("redis-cli is needed to corrupt records: {e}"))
}

offstate_core::conformance_tests!(async { harness() });
