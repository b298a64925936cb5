//! The conformance suite on a 2-node memcached cluster, once as processes
//! and once in containers (fresh nodes per case). Nodes that cannot be
//! started fail the case, naming what is missing.

#![allow(clippy::expect_used)]

use offstate_testing::{Memcached, Source, memcached_cluster};

async fn start(source: Source) -> Memcached {
    let fixture = memcached_cluster(2)
        .via(source)
        .await
        .expect("memcached for the conformance suite");
    assert_eq!(fixture.source(), source);
    fixture
}

mod process {
    offstate_core::conformance_tests!(super::start(offstate_testing::Source::Process));
}

mod container {
    offstate_core::conformance_tests!(super::start(offstate_testing::Source::Container));
}
