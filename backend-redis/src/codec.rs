//! The stored session: one Redis string of `<byte length>:<bytes>` items,
//! field/value pairs, the metadata first and then one pair per data key.
//!
//! | field        | value                                   |
//! |--------------|-----------------------------------------|
//! | `version`    | decimal version                         |
//! | `created`    | creation time, ms since the epoch       |
//! | `idle`       | idle deadline in ms (absent: none)      |
//! | `abs`        | absolute deadline in ms (absent: none)  |
//! | `principal`  | the principal's name (absent: none)     |
//! | `ix`         | its index key (standalone Redis only; written and read by the scripts, not part of the record) |
//! | `d:<key>`    | the serialized value of data key `<key>`|
//!
//! Why one string: a read is then a plain `GET`, the cheapest command Redis
//! has (a script to read costs Redis about 3 µs of CPU more per read, and
//! a hash's many short strings cost the client's reply parser over ten
//! thousand instructions), and a small session takes less memory than the
//! same fields in a hash. A write still changes only what it changed: the
//! save script keeps the stored pairs it was not given.
//!
//! Data fields are prefixed so no data key can collide with metadata, and
//! every data field comes after every metadata field, so the scripts read
//! the metadata without walking the data. Fields this version does not
//! know are ignored by the client and kept by the scripts, so a later
//! version may add some; a known field that does not decode makes the
//! record corrupt.
//!
//! Earlier versions of offstate stored the same fields as a Redis hash; a
//! hash is still read (`HGETALL`, see [`decode_hash`]) and becomes a string
//! at its first save.

use std::collections::BTreeMap;

use offstate_core::{Deadlines, Record, Timestamp, Version};
use redis::Value;

pub(crate) const VERSION: &str = "version";
pub(crate) const CREATED: &str = "created";
pub(crate) const IDLE: &str = "idle";
pub(crate) const ABSOLUTE: &str = "abs";
pub(crate) const PRINCIPAL: &str = "principal";
pub(crate) const DATA_PREFIX: &str = "d:";

/// A hash's field/value pairs.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// Why a stored session is not a record.
#[derive(Debug, thiserror::Error)]
#[error("stored session does not decode: {0}")]
pub(crate) struct CorruptRecord(pub(crate) String);

/// The field of a data key.
pub(crate) fn data_field(key: &str) -> String {
    format!("{DATA_PREFIX}{key}")
}

/// Appends one `<length>:<bytes>` item.
pub(crate) fn push_item(out: &mut Vec<u8>, item: &[u8]) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(item.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(item);
}

/// Appends the pair of data key `key`.
pub(crate) fn push_data(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(DATA_PREFIX.len() + key.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(DATA_PREFIX.as_bytes());
    out.extend_from_slice(key.as_bytes());
    push_item(out, value);
}

/// The stored string of `record`; `ix` is the name of its principal's
/// index when the scripts keep that index in step.
pub(crate) fn pack(record: &Record, ix: Option<&str>) -> Vec<u8> {
    let size = record
        .data
        .iter()
        .map(|(k, v)| k.len() + v.len() + 16)
        .sum::<usize>()
        + record.principal.as_ref().map_or(0, String::len)
        + ix.map_or(0, str::len)
        + 96;
    let mut out = Vec::with_capacity(size);
    let mut digits = itoa::Buffer::new();
    let mut number = |out: &mut Vec<u8>, field: &str, n: u64| {
        push_item(out, field.as_bytes());
        push_item(out, digits.format(n).as_bytes());
    };
    number(&mut out, VERSION, record.version.get());
    number(&mut out, CREATED, record.created_at.as_millis());
    if let Some(idle) = record.deadlines.idle {
        number(&mut out, IDLE, idle.as_millis());
    }
    if let Some(abs) = record.deadlines.absolute {
        number(&mut out, ABSOLUTE, abs.as_millis());
    }
    if let Some(principal) = &record.principal {
        push_item(&mut out, PRINCIPAL.as_bytes());
        push_item(&mut out, principal.as_bytes());
    }
    if let Some(ix) = ix {
        push_item(&mut out, b"ix");
        push_item(&mut out, ix.as_bytes());
    }
    for (key, value) in &record.data {
        push_data(&mut out, key, value);
    }
    out
}

/// All fields of a record, as field/value pairs (the hash of earlier
/// versions, and the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn encode(record: &Record) -> Fields {
    let mut fields = Vec::with_capacity(record.data.len() + 5);
    fields.push((
        VERSION.into(),
        record.version.get().to_string().into_bytes(),
    ));
    fields.push((
        CREATED.into(),
        record.created_at.as_millis().to_string().into_bytes(),
    ));
    if let Some(idle) = record.deadlines.idle {
        fields.push((IDLE.into(), idle.as_millis().to_string().into_bytes()));
    }
    if let Some(abs) = record.deadlines.absolute {
        fields.push((ABSOLUTE.into(), abs.as_millis().to_string().into_bytes()));
    }
    if let Some(principal) = &record.principal {
        fields.push((PRINCIPAL.into(), principal.clone().into_bytes()));
    }
    for (key, value) in &record.data {
        fields.push((data_field(key).into_bytes(), value.clone()));
    }
    fields
}

/// Decodes a hash's field/value pairs. An empty hash is no record.
#[cfg(test)]
pub(crate) fn decode(pairs: Fields) -> Result<Option<Record>, CorruptRecord> {
    decode_pairs(pairs.into_iter().map(Ok))
}

/// Decodes an `HGETALL` reply (or a script's copy of one) straight into a
/// record, without collecting the pairs first. An empty hash is no record.
pub(crate) fn decode_hash(value: Value) -> Result<Option<Record>, CorruptRecord> {
    match value {
        Value::Nil => Ok(None),
        Value::Map(entries) => {
            decode_pairs(entries.into_iter().map(|(k, v)| Ok((bytes(k)?, bytes(v)?))))
        }
        Value::Array(items) => {
            if items.len() % 2 != 0 {
                return Err(CorruptRecord("odd number of hash items".into()));
            }
            let mut items = items.into_iter();
            decode_pairs(std::iter::from_fn(|| {
                let (k, v) = (items.next()?, items.next()?);
                Some(bytes(k).and_then(|k| Ok((k, bytes(v)?))))
            }))
        }
        other => Err(CorruptRecord(format!("not a hash: {other:?}"))),
    }
}

/// Decodes a stored session string (a `GET` reply, or a script's copy of
/// one): fields and values as `<length>:<bytes>`, one after the other. No
/// value or an empty string is no record.
pub(crate) fn decode_packed(value: Value) -> Result<Option<Record>, CorruptRecord> {
    let packed = match value {
        Value::BulkString(bytes) => bytes,
        Value::Nil => return Ok(None),
        other => return Err(CorruptRecord(format!("not a session string: {other:?}"))),
    };
    let mut items = Packed(packed.as_slice());
    decode_pairs(std::iter::from_fn(|| {
        let field = items.next()?;
        Some(field.and_then(|field| {
            let value = items
                .next()
                .unwrap_or_else(|| Err(CorruptRecord("odd number of hash items".into())))?;
            Ok((field, value))
        }))
    }))
}

/// The items of a session string, `<length>:<bytes>` each.
struct Packed<'a>(&'a [u8]);

impl<'a> Iterator for Packed<'a> {
    type Item = Result<&'a [u8], CorruptRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        match split_item(self.0) {
            Some((item, rest)) => {
                self.0 = rest;
                Some(Ok(item))
            }
            None => {
                self.0 = &[];
                Some(Err(CorruptRecord(
                    "a session string item does not decode".into(),
                )))
            }
        }
    }
}

/// The first `<length>:<bytes>` item of `packed`, and what follows it.
fn split_item(packed: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = packed.iter().position(|&b| b == b':')?;
    let len = usize::try_from(decimal(packed.get(..colon)?)?).ok()?;
    let end = colon.checked_add(1)?.checked_add(len)?;
    Some((packed.get(colon + 1..end)?, packed.get(end..)?))
}

/// Builds a record from field/value pairs; values owned
/// (`Vec<u8>`, moved into the record) or borrowed (copied once).
fn decode_pairs<F, V>(
    pairs: impl Iterator<Item = Result<(F, V), CorruptRecord>>,
) -> Result<Option<Record>, CorruptRecord>
where
    F: AsRef<[u8]>,
    V: AsRef<[u8]> + Into<Vec<u8>>,
{
    let mut any = false;
    let mut version = None;
    let mut created = None;
    let mut deadlines = Deadlines::default();
    let mut principal = None;
    let mut data = BTreeMap::new();
    for pair in pairs {
        let (field, value) = pair?;
        any = true;
        let name = std::str::from_utf8(field.as_ref())
            .map_err(|_| CorruptRecord("a field name is not UTF-8".into()))?;
        if let Some(key) = name.strip_prefix(DATA_PREFIX) {
            data.insert(key.to_owned(), value.into());
            continue;
        }
        let value = value.as_ref();
        match name {
            VERSION => version = Some(Version::new(number(name, value)?)),
            CREATED => created = Some(Timestamp::from_millis(number(name, value)?)),
            IDLE => deadlines.idle = Some(Timestamp::from_millis(number(name, value)?)),
            ABSOLUTE => deadlines.absolute = Some(Timestamp::from_millis(number(name, value)?)),
            PRINCIPAL => {
                principal = Some(
                    std::str::from_utf8(value)
                        .map_err(|_| CorruptRecord("the principal is not UTF-8".into()))?
                        .to_owned(),
                );
            }
            _ => {}
        }
    }
    if !any {
        return Ok(None);
    }
    let version = version.ok_or_else(|| CorruptRecord("no version field".into()))?;
    let created = created.ok_or_else(|| CorruptRecord("no created field".into()))?;
    let mut record = Record::new(created, deadlines);
    record.version = version;
    record.principal = principal;
    record.data = data;
    Ok(Some(record))
}

/// How the store reads a stored session (a `GET` reply: the string; or an
/// `HGETALL` reply: the hash of an earlier version), for the fuzz targets
/// in fuzz/: the record, `None` for none, or why the reply is corrupt. Not
/// part of the API.
///
/// # Errors
///
/// The corruption's description, for a reply that is not a session.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub fn decode_reply(reply: Value) -> Result<Option<Record>, String> {
    match reply {
        Value::Array(_) | Value::Map(_) => decode_hash(reply),
        other => decode_packed(other),
    }
    .map_err(|error| error.to_string())
}

/// The string the store writes for `record`, for the fuzz targets. Not
/// part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[must_use]
pub fn encode_stored(record: &Record) -> Vec<u8> {
    pack(record, None)
}

/// The field/value pairs the store writes for `record`, for the fuzz
/// targets. Not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
#[must_use]
pub fn encode_fields(record: &Record) -> Vec<(Vec<u8>, Vec<u8>)> {
    encode(record)
}

/// Parses a decimal metadata field.
pub(crate) fn number(field: &str, value: &[u8]) -> Result<u64, CorruptRecord> {
    decimal(value).ok_or_else(|| CorruptRecord(format!("field {field:?} is not a number")))
}

/// A `u64` in decimal, as `str::parse` reads it (an optional `+`, digits,
/// no overflow), straight from the bytes: no UTF-8 pass first.
fn decimal(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.strip_prefix(b"+").unwrap_or(bytes);
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d <= 9)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The bytes of a string reply.
pub(crate) fn bytes(value: Value) -> Result<Vec<u8>, CorruptRecord> {
    match value {
        Value::BulkString(b) => Ok(b),
        Value::SimpleString(s) => Ok(s.into_bytes()),
        Value::Okay => Ok(b"OK".to_vec()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        other => Err(CorruptRecord(format!("not a string: {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_fields() {
        let mut record = Record::new(
            Timestamp::from_millis(5),
            Deadlines::idle_at(Timestamp::from_millis(10)),
        );
        record.version = Version::new(7);
        record.principal = Some("alice".into());
        record
            .data
            .insert("version".into(), b"not metadata".to_vec());
        record.data.insert("d:x".into(), vec![0, 255]);
        let decoded = decode(encode(&record)).unwrap();
        assert_eq!(decoded, Some(record));
    }

    #[test]
    fn packed_hashes_decode_like_field_pairs() {
        let mut record = Record::new(
            Timestamp::from_millis(5),
            Deadlines::idle_at(Timestamp::from_millis(10)),
        );
        record.version = Version::new(3);
        record.data.insert("k:1".into(), b"a:b\x00".to_vec());
        record.data.insert("empty".into(), Vec::new());
        let mut packed = Vec::new();
        for (field, value) in encode(&record) {
            for item in [field, value] {
                packed.extend_from_slice(format!("{}:", item.len()).as_bytes());
                packed.extend_from_slice(&item);
            }
        }
        let decoded = decode_packed(Value::BulkString(packed.clone())).unwrap();
        assert_eq!(decoded, Some(record));
        assert_eq!(decode_packed(Value::BulkString(Vec::new())).unwrap(), None);
        assert!(decode_packed(Value::BulkString(packed[..packed.len() - 1].to_vec())).is_err());
        assert!(decode_packed(Value::BulkString(b"7:version".to_vec())).is_err());
        assert!(decode_packed(Value::BulkString(b"x:".to_vec())).is_err());
        assert!(decode_packed(Value::Int(1)).is_err());
    }

    #[test]
    fn decimals_parse_as_str_parse_does() {
        let texts = [
            "0",
            "+7",
            "0042",
            "18446744073709551615",
            "18446744073709551616",
            "",
            "+",
            "-1",
            "1a",
            " 1",
            "++1",
        ];
        for text in texts {
            assert_eq!(decimal(text.as_bytes()), text.parse().ok(), "{text:?}");
        }
    }

    #[test]
    fn bad_metadata_is_corrupt() {
        let pairs = vec![
            (b"version".to_vec(), b"notanumber".to_vec()),
            (b"created".to_vec(), b"1".to_vec()),
        ];
        assert!(decode(pairs).is_err());
        assert!(decode(vec![(b"d:k".to_vec(), b"1".to_vec())]).is_err());
        assert_eq!(decode(Vec::new()).unwrap(), None);
    }
}
