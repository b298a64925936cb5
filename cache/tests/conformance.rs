//! Both conformance suites on `CachedStore` over `MemoryStore`, in both
//! modes: the store suite (a cache must not change the contract of the
//! store it fronts) and the cache suite (what a cache promises across
//! instances; `cache_suite` below).

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use offstate_cache::CachedStore;
use offstate_core::conformance::Harness;
use offstate_core::{LocalChannel, MemoryStore, SessionKey};

/// Every store instance is a separate cache (a separate app instance) over
/// one shared backend; coherent instances share one channel.
struct Cached {
    backend: MemoryStore,
    channel: Option<LocalChannel>,
}

impl Harness for Cached {
    type Store = CachedStore<MemoryStore>;

    async fn store(&self) -> Self::Store {
        let builder =
            CachedStore::builder(self.backend.clone()).with_staleness(Duration::from_millis(200));
        let store = match &self.channel {
            Some(channel) => builder.with_channel(channel.clone()).build(),
            None => builder.build(),
        };
        if self.channel.is_some() {
            // Wait for the listener to report the channel live.
            for _ in 0..100 {
                if store.is_coherent() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(store.is_coherent(), "the local channel never connected");
        }
        store
    }

    async fn corrupt(&self, _key: &SessionKey) -> bool {
        false
    }
}

mod coherent {
    use super::*;
    offstate_core::conformance_tests!(async {
        Cached {
            backend: MemoryStore::new(),
            channel: Some(LocalChannel::new()),
        }
    });
}

mod bounded {
    use super::*;
    offstate_core::conformance_tests!(async {
        Cached {
            backend: MemoryStore::new(),
            channel: None,
        }
    });
}

/// The cache conformance suite on memory: instances share one
/// `MemoryStore` and, coherent, one `LocalChannel`.
mod cache_suite {
    use offstate_cache::conformance::CacheHarness;
    use offstate_core::{LocalChannel, MemoryStore};

    struct Local {
        backend: MemoryStore,
        channel: Option<LocalChannel>,
    }

    impl CacheHarness for Local {
        type Store = MemoryStore;
        type Channel = LocalChannel;

        async fn store(&self) -> MemoryStore {
            self.backend.clone()
        }

        async fn channel(&self) -> Option<LocalChannel> {
            self.channel.clone()
        }
    }

    mod coherent {
        use super::*;
        offstate_cache::cache_conformance_tests!(async {
            Local {
                backend: MemoryStore::new(),
                channel: Some(LocalChannel::new()),
            }
        });
    }

    mod bounded {
        use super::*;
        offstate_cache::cache_conformance_tests!(async {
            Local {
                backend: MemoryStore::new(),
                channel: None,
            }
        });
    }
}
