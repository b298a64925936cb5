//! The middleware's carrier: the `Cookie` header(s) and the session-ID
//! header, through the real request path. The first byte picks the
//! transport and signing; the rest is `\n`-separated header values.
//!
//! Invariants: the answer is 200, 400 (conflicting IDs) or 431 (too long);
//! a read-only request costs at most one load per distinct ID, at most 4,
//! and never a write; with
//! signing on, no load unless the input carries the one ID the seed corpus
//! signed (the fuzzer cannot forge a tag).
#![no_main]

use std::sync::{LazyLock, Mutex};

use http::header::COOKIE;
use http::{HeaderMap, HeaderName, StatusCode};
use libfuzzer_sys::fuzz_target;
use offstate_fuzz::{HEADER, SIGNED_SEED_ID, Setup, Target, values};

static TARGETS: LazyLock<Vec<Mutex<Target>>> = LazyLock::new(|| {
    let mut all = Vec::new();
    for header in [false, true] {
        for signed in [false, true] {
            all.push(Mutex::new(Target::new(Setup {
                header,
                signed,
                max_value_len: 256,
            })));
        }
    }
    all
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let header = mode & 1 != 0;
    let signed = mode & 2 != 0;
    let Some(target) = TARGETS.get(usize::from(mode & 3)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    let name = if header {
        HeaderName::from_static(HEADER)
    } else {
        COOKIE
    };
    for value in values(rest) {
        headers.append(name.clone(), value);
    }
    let Ok(mut target) = target.lock() else {
        return;
    };
    let (status, counts) = target.send(headers);
    assert!(
        [
            StatusCode::OK,
            StatusCode::BAD_REQUEST,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ]
        .contains(&status),
        "unexpected status {status}"
    );
    assert_eq!(counts.writes(), 0, "a read-only request wrote");
    // Several cookies may each carry an ID (a tossed cookie beside the
    // real one): each distinct one is loaded, up to the carrier's cap.
    assert!(counts.load <= 4, "more loads than the carrier's cap of 4 IDs");
    if signed && !rest.windows(SIGNED_SEED_ID.len()).any(|w| w == SIGNED_SEED_ID.as_bytes()) {
        assert_eq!(counts.load, 0, "an unsigned or forged ID reached the store");
    }
    if status != StatusCode::OK {
        assert_eq!(counts.total(), 0, "a refused request reached the store");
    }
});
