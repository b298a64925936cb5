//! The invalidation message decoder: messages come from a shared pub/sub
//! channel that any client of the store can publish on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offstate_core::Invalidation;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(message) = Invalidation::decode(text) {
        let wire = message.encode();
        assert_eq!(Invalidation::decode(&wire).ok(), Some(message));
    }
});
