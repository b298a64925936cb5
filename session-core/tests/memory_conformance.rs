//! The conformance suite on `MemoryStore`, the reference implementation.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use offstate_core::conformance::Harness;
use offstate_core::{Clock, MemoryStore, SessionKey};

/// One shared map; each store instance gets its own clock.
#[derive(Default)]
struct Memory {
    store: MemoryStore,
}

impl Harness for Memory {
    type Store = MemoryStore;

    async fn store(&self, clock: Arc<dyn Clock>) -> MemoryStore {
        self.store.clone().with_clock(clock)
    }

    async fn corrupt(&self, _key: &SessionKey) -> bool {
        // Memory holds typed records, never bytes: nothing can be corrupt.
        false
    }
}

offstate_core::conformance_tests!(async { Memory::default() });
