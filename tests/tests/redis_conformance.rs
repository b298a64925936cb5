//! The conformance suite on every kind of Redis deployment: a standalone
//! server as a process and in a container, one that only an ACL user may
//! use (as with ElastiCache RBAC), a TLS-only one (`rediss://`, a CA made
//! for the test), and a 3-master Redis Cluster shared by the cases. Each
//! case builds its own store instances; servers that cannot be started fail
//! the case, naming what is missing.

#![allow(clippy::expect_used)]

use offstate_testing::redis::RedisBuilder;
use offstate_testing::{Redis, Source, redis};

async fn start(builder: RedisBuilder) -> Redis {
    builder.await.expect("a Redis for the conformance suite")
}

/// A standalone server from `source`, and no other.
async fn standalone(source: Source) -> Redis {
    let fixture = start(redis().via(source)).await;
    assert_eq!(fixture.source(), source);
    fixture
}

mod process {
    offstate_core::conformance_tests!(super::standalone(offstate_testing::Source::Process));
}

mod container {
    offstate_core::conformance_tests!(super::standalone(offstate_testing::Source::Container));
}

mod acl {
    offstate_core::conformance_tests!(super::start(
        offstate_testing::redis().with_user("offstate", "s3cret-acl-pass")
    ));
}

mod tls {
    offstate_core::conformance_tests!(super::start(offstate_testing::redis().with_tls()));
}

mod cluster {
    offstate_core::conformance_tests!(super::start(offstate_testing::redis_cluster().shared()));
}
