//! Reading what the scripts answer: their arrays, integers and strings,
//! the session a conflict returns, and when a saved or touched session
//! ends.

use offstate_core::{Record, SessionKey, StoreError, Timestamp};
use redis::Value;

use crate::codec;
use crate::error::UnexpectedReply;

/// When a session ends, as the save and touch scripts answer it: ms since
/// the epoch, 0 (or anything that is not a number) for never.
pub(crate) fn ends_at(value: Option<Value>) -> Option<Timestamp> {
    match value {
        Some(Value::Int(ms)) => u64::try_from(ms).ok(),
        other => text(other).parse().ok(),
    }
    .filter(|ms| *ms != 0)
    .map(Timestamp::from_millis)
}

/// A script's reply as an array, or an error naming the script.
pub(crate) fn array(value: Value, script: &str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(items) => Ok(items),
        other => Err(UnexpectedReply::store_error(format!("{script}: {other:?}"))),
    }
}

pub(crate) fn int(value: Option<&Value>) -> Option<i64> {
    match value {
        Some(Value::Int(n)) => Some(*n),
        _ => None,
    }
}

pub(crate) fn text(value: Option<Value>) -> String {
    value
        .and_then(|v| codec::bytes(v).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The session a conflict returns: its string, or the fields of a hash
/// stored by an earlier offstate.
pub(crate) fn decode_stored(value: Value) -> Result<Option<Record>, StoreError> {
    codec::decode_stored(value).map_err(StoreError::corrupt)
}

pub(crate) fn corrupt_here(key: &SessionKey) -> StoreError {
    StoreError::corrupt(codec::CorruptRecord(format!(
        "session {} has metadata that does not decode",
        key.as_str()
    )))
}
