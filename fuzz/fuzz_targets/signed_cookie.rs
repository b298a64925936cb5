//! Signed cookie values (`<id>.<base64url tag>`): the verifier sees every
//! cookie a client makes up. The seed corpus holds a value signed with
//! [`FUZZ_KEY`], so mutations start from a valid tag.
//!
//! Invariant: a request reaches the store only if it carries the one valid
//! signed value exactly; any other accepted value would be a forgery or a
//! malleable encoding of the tag.
#![no_main]

use std::sync::{LazyLock, Mutex};

use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use offstate_fuzz::{Setup, Target};

/// A valid signed value for FUZZ_KEY (also in the seed corpus).
const VALID: &str = include_str!("../corpus/signed_cookie/valid");

static TARGET: LazyLock<Mutex<Target>> = LazyLock::new(|| {
    Mutex::new(Target::new(Setup {
        header: false,
        signed: true,
        max_value_len: 4096,
    }))
});

fuzz_target!(|data: &[u8]| {
    let mut cookie = b"__Host-offstate=".to_vec();
    cookie.extend_from_slice(data);
    let Ok(value) = HeaderValue::from_bytes(&cookie) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(COOKIE, value);
    let Ok(mut target) = TARGET.lock() else {
        return;
    };
    let (_, counts) = target.send(headers);
    if counts.load > 0 {
        let sent = String::from_utf8_lossy(data);
        assert!(
            sent.contains(VALID.trim()),
            "a value other than the one valid signature was accepted: {sent:?}"
        );
    }
});
