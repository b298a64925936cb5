//! The Redis record decoder: the stored session as a `GET` reply (the
//! session string) or, as earlier versions stored it, an `HGETALL` reply
//! (RESP2 flat array or RESP3 map) comes back from a server that any client
//! with write access may have filled. The input is the raw reply bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offstate_redis::redis::{Value, parse_redis_value};
use offstate_redis::{decode_reply, encode_fields, encode_stored};

fuzz_target!(|data: &[u8]| {
    let Ok(reply) = parse_redis_value(data) else {
        return;
    };
    if let Ok(Some(record)) = decode_reply(reply) {
        // What decodes must survive the store's own write and read.
        let fields = encode_fields(&record);
        let again = Value::Array(
            fields
                .into_iter()
                .flat_map(|(k, v)| [Value::BulkString(k), Value::BulkString(v)])
                .collect(),
        );
        assert_eq!(decode_reply(again).as_ref(), Ok(&Some(record.clone())));
        let stored = Value::BulkString(encode_stored(&record));
        assert_eq!(decode_reply(stored), Ok(Some(record)));
    }
});
