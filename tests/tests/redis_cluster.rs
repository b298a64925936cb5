//! The conformance suite on a 3-master Redis Cluster (one cluster shared by
//! all cases of this binary; each case builds its own store instances).

use offstate_testing::redis::{RedisHarness, shared_cluster};

#[allow(clippy::panic)]
fn harness() -> RedisHarness {
    shared_cluster()
        .harness()
        .unwrap_or_else(|e| panic!("redis-cli is needed to corrupt records: {e}"))
}

offstate_core::conformance_tests!(async { harness() });
