//! The conformance suite on a 2-node memcached cluster (real processes).

use offstate_testing::memcached::MemcachedHarness;

offstate_core::conformance_tests!(async { MemcachedHarness::start() });
