//! The conformance suite on `MemoryStore`, the reference implementation.

// Integration tests: a panic is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offstate_core::conformance::Harness;
use offstate_core::{MemoryStore, SessionKey};

/// One shared map; every store instance sees it.
#[derive(Default)]
struct Memory {
    store: MemoryStore,
}

impl Harness for Memory {
    type Store = MemoryStore;

    async fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    async fn corrupt(&self, _key: &SessionKey) -> bool {
        // Memory holds typed records, never bytes: nothing can be corrupt.
        false
    }
}

offstate_core::conformance_tests!(async { Memory::default() });
