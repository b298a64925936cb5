//! The conformance suite on a standalone Redis in a Docker container (one
//! container per case, removed when the case ends). Fails, never skips,
//! when Docker or the image (`OFFSTATE_REDIS_IMAGE`) is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offstate_testing::fixture::Source;
use offstate_testing::fixture::redis::{RedisFixture, redis_via};

async fn fixture() -> RedisFixture {
    let fixture = redis_via(Source::Container)
        .await
        .unwrap_or_else(|e| panic!("cannot start Redis in a container: {e}"));
    assert_eq!(fixture.source(), Source::Container);
    fixture
}

offstate_core::conformance_tests!(fixture());
