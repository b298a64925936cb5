//! The memcached record decoder: the blob comes back from a shared cache
//! that another deployment, a bug or an attacker may have written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offstate_memcached::encoding;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = encoding::decode(data) {
        let blob = encoding::encode(&envelope.record, envelope.epoch);
        assert!(blob.len() <= data.len(), "re-encoding never grows a blob");
        let again = encoding::decode(&blob).ok();
        assert_eq!(again, Some(envelope), "a decoded blob round-trips");
    }
});
