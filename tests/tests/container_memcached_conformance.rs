//! The conformance suite on a 2-node memcached cluster in Docker containers
//! (fresh containers per case, removed when the case ends). Fails, never
//! skips, when Docker or the image (`OFFSTATE_MEMCACHED_IMAGE`) is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offstate_testing::fixture::Source;
use offstate_testing::fixture::memcached::{MemcachedFixture, memcached_via};

async fn fixture() -> MemcachedFixture {
    let fixture = memcached_via(Source::Container, 2)
        .await
        .unwrap_or_else(|e| panic!("cannot start memcached in containers: {e}"));
    assert_eq!(fixture.source(), Source::Container);
    assert_eq!(fixture.containers().len(), 2);
    fixture
}

offstate_core::conformance_tests!(fixture());
