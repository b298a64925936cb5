//! The cache conformance suite (`offstate_cache::conformance`) on every
//! cache configuration over real servers: Redis sessions with the Redis
//! channel, a Redis Cluster for both, DynamoDB on bounded staleness, and
//! DynamoDB with a Redis channel beside it. (Memory with `LocalChannel` runs
//! in offstate-cache's own tests.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_cache::conformance::CacheHarness;
use offstate_redis::{RedisConfig, RedisInvalidationChannel};

/// How often the channels of these tests check themselves, and how long a
/// heartbeat may take before the channel counts as lost.
const HEARTBEAT: Duration = Duration::from_millis(200);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(500);

async fn redis_channel(config: &RedisConfig) -> RedisInvalidationChannel {
    RedisInvalidationChannel::connect(config)
        .await
        .expect("a Redis invalidation channel")
        .with_heartbeat(HEARTBEAT)
        .with_heartbeat_timeout(HEARTBEAT_TIMEOUT)
}

/// Sessions and channel on one Redis (a single server or a cluster).
struct OnRedis {
    server: offstate_testing::Redis,
}

impl CacheHarness for OnRedis {
    type Store = offstate_redis::RedisStore;
    type Channel = RedisInvalidationChannel;

    async fn store(&self) -> Self::Store {
        let config = self.server.config().clone();
        self.server
            .connect_with(config)
            .await
            .expect("a RedisStore")
    }

    async fn channel(&self) -> Option<Self::Channel> {
        Some(redis_channel(self.server.config()).await)
    }
}

mod redis {
    use super::*;
    offstate_cache::cache_conformance_tests!(async {
        OnRedis {
            server: offstate_testing::redis()
                .shared()
                .await
                .expect("a Redis server (install redis-server, see scripts/setup.sh)"),
        }
    });
}

mod redis_cluster {
    use super::*;
    offstate_cache::cache_conformance_tests!(async {
        OnRedis {
            server: offstate_testing::redis_cluster()
                .shared()
                .await
                .expect("a Redis Cluster (install redis-server, see scripts/setup.sh)"),
        }
    });
}

/// Sessions on DynamoDB; a channel on a Redis beside it, or none.
#[cfg(feature = "dynamodb")]
struct OnDynamo {
    server: offstate_testing::DynamoDb,
    channel: Option<offstate_testing::Redis>,
}

#[cfg(feature = "dynamodb")]
impl CacheHarness for OnDynamo {
    type Store = offstate_dynamodb::DynamoDbStore;
    type Channel = RedisInvalidationChannel;

    async fn store(&self) -> Self::Store {
        let config = self.server.config().clone();
        self.server
            .store_with(config)
            .await
            .expect("a DynamoDbStore")
    }

    async fn channel(&self) -> Option<Self::Channel> {
        match &self.channel {
            Some(redis) => Some(redis_channel(redis.config()).await),
            None => None,
        }
    }
}

#[cfg(feature = "dynamodb")]
async fn dynamo() -> offstate_testing::DynamoDb {
    offstate_testing::dynamodb()
        .shared()
        .await
        .expect("a DynamoDB-compatible server (moto: run scripts/setup.sh)")
}

#[cfg(feature = "dynamodb")]
mod dynamodb_bounded {
    use super::*;
    offstate_cache::cache_conformance_tests!(async {
        OnDynamo {
            server: dynamo().await,
            channel: None,
        }
    });
}

#[cfg(feature = "dynamodb")]
mod dynamodb_with_redis_channel {
    use super::*;
    offstate_cache::cache_conformance_tests!(async {
        OnDynamo {
            server: dynamo().await,
            channel: Some(
                offstate_testing::redis()
                    .shared()
                    .await
                    .expect("a Redis server for the channel"),
            ),
        }
    });
}
