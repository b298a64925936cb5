//! The subscriber's RESP reader: every instance reads the invalidation
//! subscription's bytes, and a cache hit peeks at them, so whatever the
//! server (or whatever answers on its address) sends must be read without
//! a panic, each frame within the bytes and never taken for a shorter one.
//! The input is the socket's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    offstate_redis::read_frames(data, b"offstate:invalidations");
});
