//! The conformance suite on `CachedStore<RedisStore>` in coherent mode:
//! every store instance is a separate cache (a separate app instance) over
//! one redis-server, with its own `RedisInvalidationChannel`. A cache must
//! not change the contract of the store it fronts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use offstate_cache::CachedStore;
use offstate_core::SessionKey;
use offstate_core::conformance::Harness;
use offstate_redis::{RedisInvalidationChannel, RedisStore};
use offstate_testing::Redis;

struct CachedRedis {
    server: Redis,
}

impl Harness for CachedRedis {
    type Store = CachedStore<RedisStore>;

    async fn store(&self) -> Self::Store {
        let config = self.server.config().clone();
        let backend = RedisStore::connect(config.clone())
            .await
            .expect("a RedisStore on the test server");
        let channel = RedisInvalidationChannel::connect(&config)
            .await
            .expect("a Redis invalidation channel on the test server")
            .with_heartbeat(Duration::from_millis(200));
        let store = CachedStore::builder(backend)
            .with_staleness(Duration::from_millis(200))
            .with_channel(channel)
            .build();
        let start = Instant::now();
        while !store.is_coherent() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the Redis invalidation channel never connected"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        store
    }

    async fn corrupt(&self, _key: &SessionKey) -> bool {
        // A record corrupted behind the cache's back (no invalidation) is
        // served from the last good copy until its entry ends, by design;
        // RedisStore's own conformance run covers the typed error.
        false
    }

    fn ttl_granularity(&self) -> Duration {
        Duration::from_millis(300)
    }
}

offstate_core::conformance_tests!(async {
    CachedRedis {
        server: offstate_testing::redis()
            .shared()
            .await
            .expect("a Redis for the conformance suite"),
    }
});
