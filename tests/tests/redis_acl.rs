//! The conformance suite on a redis-server whose default user is disabled:
//! every connection must AUTH as an ACL user (as with ElastiCache RBAC).

use offstate_testing::redis::{RedisHarness, shared_acl_server};

#[allow(clippy::panic)]
fn harness() -> RedisHarness {
    shared_acl_server()
        .harness()
        .unwrap_or_else(|e| panic!("redis-cli is needed to corrupt records: {e}"))
}

offstate_core::conformance_tests!(async { harness() });
