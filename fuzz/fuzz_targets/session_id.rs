//! Session IDs and stored keys: `SessionId::parse` and
//! `SessionKey::from_stored` see cookie values and store replies. Anything
//! they accept must round-trip exactly (one text per ID, no malleability).
#![no_main]

use libfuzzer_sys::fuzz_target;
use offstate_core::{SessionId, SessionKey};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(id) = SessionId::parse(text) {
        assert_eq!(
            id.to_string(),
            text,
            "an accepted ID has exactly one text form"
        );
        assert_eq!(text.parse::<SessionId>().ok(), Some(id.clone()));
        let key = id.key();
        assert_eq!(SessionKey::from_stored(key.as_str()).ok(), Some(key));
    }
    if let Ok(key) = SessionKey::from_stored(text) {
        assert_eq!(key.as_str(), text);
        let _ = format!("{key:?}");
    }
});
