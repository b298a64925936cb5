//! The stored session: one Redis string, a fixed header, the principal
//! and index names, then the data.
//!
//! | bytes      | what                                                      |
//! |------------|-----------------------------------------------------------|
//! | 1          | layout, [`LAYOUT`]                                        |
//! | 8          | version, big-endian IEEE 754 double                       |
//! | 8          | creation time, ms since the epoch (double)                |
//! | 8          | idle deadline, ms (double; 0: none)                       |
//! | 8          | absolute deadline, ms (double; 0: none)                   |
//! | 4          | principal length P, big-endian (0: none)                  |
//! | 4          | index name length X (`ix`: the principal's index key, standalone Redis only; written and read by the scripts, not part of the record) |
//! | P, X       | principal, index name                                     |
//! | rest       | one `<length>:<key><length>:<value>` pair per data key     |
//!
//! Why this shape: a read is a plain `GET`, the cheapest command Redis has
//! (a script to read cost Redis about 3 µs of CPU more per read, and a
//! hash's many short strings cost the client's reply parser over ten
//! thousand instructions), and the write scripts read the header with one
//! `struct.unpack` (a C function of Redis's Lua) instead of parsing text
//! in Lua, which cost more than the script's own commands. Doubles hold
//! every version and millisecond time exactly (below 2^53). A write sends
//! the whole new data when the writer read the version it writes over
//! (the data of a version never changes, so the stored data is the one it
//! read), and otherwise only the changed keys, which the save script
//! merges into the stored pairs.
//!
//! Earlier versions of offstate stored the fields as a Redis hash
//! (`version`, `created`, `idle`, `abs`, `principal`, `ix`, `d:<key>`); a
//! hash is still read (`HGETALL`, see [`decode_hash`]) and becomes a
//! string at its first save or touch.

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

/// The layout byte that starts every session string this version writes.
pub(crate) const LAYOUT: u8 = 1;

/// Bytes before the principal: layout, four doubles, two lengths.
pub(crate) const HEADER_LEN: usize = 1 + 4 * 8 + 2 * 4;

/// Appends one `<length>:<bytes>` item.
fn push_item(out: &mut Vec<u8>, item: &[u8]) {
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(item.len()).as_bytes());
    out.push(b':');
    out.extend_from_slice(item);
}

/// The size `data` takes packed, within a few bytes per key.
pub(crate) fn data_size<'a>(data: impl Iterator<Item = (&'a String, &'a Vec<u8>)>) -> usize {
    data.map(|(k, v)| k.len() + v.len() + 12).sum()
}

/// A time or version as the header stores it: a double, exact below 2^53.
#[allow(clippy::cast_precision_loss)] // Versions and ms times stay far below 2^53.
fn double(n: u64) -> [u8; 8] {
    (n as f64).to_be_bytes()
}

/// The stored string of `record`; `ix` is the name of its principal's
/// index when the scripts keep that index in step.
pub(crate) fn pack(record: &Record, ix: Option<&str>) -> Vec<u8> {
    let principal = record.principal.as_deref().unwrap_or("");
    let ix = ix.unwrap_or("");
    let mut out =
        Vec::with_capacity(HEADER_LEN + principal.len() + ix.len() + data_size(record.data.iter()));
    out.extend_from_slice(&header(record, principal, ix));
    out.extend_from_slice(principal.as_bytes());
    out.extend_from_slice(ix.as_bytes());
    push_all(&mut out, record.data.iter());
    out
}

/// The fixed header of `record`'s string with this principal and index
/// name: what [`pack`] writes first, and what a save compares with the
/// stored header to find the session as it read it.
pub(crate) fn header(record: &Record, principal: &str, ix: &str) -> [u8; HEADER_LEN] {
    let mut out = [0; HEADER_LEN];
    out[0] = LAYOUT;
    let numbers = [
        record.version.get(),
        record.created_at.as_millis(),
        record.deadlines.idle.map_or(0, Timestamp::as_millis),
        record.deadlines.absolute.map_or(0, Timestamp::as_millis),
    ];
    for (at, n) in numbers.into_iter().enumerate() {
        out[1 + 8 * at..9 + 8 * at].copy_from_slice(&double(n));
    }
    for (at, part) in [principal, ix].into_iter().enumerate() {
        let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
        out[33 + 4 * at..37 + 4 * at].copy_from_slice(&len.to_be_bytes());
    }
    out
}

/// The data of `record` packed, as a save sends it.
pub(crate) fn pack_data<'a>(
    data: impl Iterator<Item = (&'a String, &'a Vec<u8>)> + Clone,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(data_size(data.clone()));
    push_all(&mut out, data);
    out
}

/// Appends every pair of `data`.
fn push_all<'a>(out: &mut Vec<u8>, data: impl Iterator<Item = (&'a String, &'a Vec<u8>)>) {
    for (key, value) in data {
        push_item(out, key.as_bytes());
        push_item(out, value);
    }
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
        fields.push((format!("{DATA_PREFIX}{key}").into_bytes(), value.clone()));
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
/// one). No value is no record.
pub(crate) fn decode_packed(value: Value) -> Result<Option<Record>, CorruptRecord> {
    match value {
        Value::BulkString(bytes) => decode_string(&bytes).map(Some),
        Value::Nil => Ok(None),
        other => Err(CorruptRecord(format!("not a session string: {other:?}"))),
    }
}

/// Decodes a stored session as a script returns it: its string, or the
/// fields of a hash stored by an earlier offstate.
pub(crate) fn decode_stored(value: Value) -> Result<Option<Record>, CorruptRecord> {
    match value {
        Value::Array(_) | Value::Map(_) => decode_hash(value),
        other => decode_packed(other),
    }
}

/// Decodes the bytes of a session string.
pub(crate) fn decode_string(bytes: &[u8]) -> Result<Record, CorruptRecord> {
    let corrupt = |what: &str| CorruptRecord(format!("session string: {what}"));
    let (header, rest) = bytes
        .split_first_chunk::<HEADER_LEN>()
        .ok_or_else(|| corrupt("shorter than its header"))?;
    if header[0] != LAYOUT {
        return Err(corrupt("unknown layout"));
    }
    let number = |at: usize, what: &str| {
        let mut be = [0; 8];
        be.copy_from_slice(&header[at..at + 8]);
        whole(f64::from_be_bytes(be)).ok_or_else(|| corrupt(what))
    };
    let version = number(1, "version")?;
    let created = number(9, "creation time")?;
    let deadline =
        |at, what| number(at, what).map(|ms| (ms != 0).then(|| Timestamp::from_millis(ms)));
    let mut deadlines = Deadlines::none();
    deadlines.idle = deadline(17, "idle deadline")?;
    deadlines.absolute = deadline(25, "absolute deadline")?;
    let length = |at: usize| {
        let mut be = [0; 4];
        be.copy_from_slice(&header[at..at + 4]);
        usize::try_from(u32::from_be_bytes(be)).unwrap_or(usize::MAX)
    };
    let (principal_len, ix_len) = (length(33), length(37));
    let principal = rest
        .get(..principal_len)
        .ok_or_else(|| corrupt("principal past the end"))?;
    let mut data_bytes = rest
        .get(principal_len.saturating_add(ix_len)..)
        .ok_or_else(|| corrupt("index name past the end"))?;
    let mut data = BTreeMap::new();
    while !data_bytes.is_empty() {
        let (key, rest) = split_item(data_bytes).ok_or_else(|| corrupt("a data key"))?;
        let (value, rest) = split_item(rest).ok_or_else(|| corrupt("a data value"))?;
        let key = std::str::from_utf8(key).map_err(|_| corrupt("a data key is not UTF-8"))?;
        data.insert(key.to_owned(), value.to_vec());
        data_bytes = rest;
    }
    let mut record = Record::new(Timestamp::from_millis(created), deadlines);
    record.version = Version::new(version);
    if !principal.is_empty() {
        record.principal = Some(
            std::str::from_utf8(principal)
                .map_err(|_| corrupt("the principal is not UTF-8"))?
                .to_owned(),
        );
    }
    record.data = data;
    Ok(record)
}

/// A double that holds a whole number from 0 to 2^53, as that number.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // Checked first.
#[allow(clippy::cast_precision_loss)] // 2^53 is exact.
fn whole(n: f64) -> Option<u64> {
    (n.fract() == 0.0 && (0.0..=EXACT_LIMIT as f64).contains(&n)).then_some(n as u64)
}

/// The largest whole number a double holds with every smaller one: 2^53.
const EXACT_LIMIT: u64 = 1 << 53;

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
    decode_stored(reply).map_err(|error| error.to_string())
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

/// Parses a decimal metadata field: a whole number up to 2^53, as the
/// session string's header (and the scripts' Lua numbers) hold exactly, so
/// that a hash of an earlier version that decodes also survives becoming a
/// string.
pub(crate) fn number(field: &str, value: &[u8]) -> Result<u64, CorruptRecord> {
    decimal(value)
        .filter(|n| *n <= EXACT_LIMIT)
        .ok_or_else(|| CorruptRecord(format!("field {field:?} is not a number up to 2^53")))
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
    fn records_round_trip_through_the_session_string() {
        let mut record = Record::new(
            Timestamp::from_millis(1_795_915_797_000),
            Deadlines::idle_at(Timestamp::from_millis(1_795_917_597_000)),
        );
        record.version = Version::new(3);
        record.principal = Some("alice".into());
        record.data.insert("k:1".into(), b"a:b\x00".to_vec());
        record.data.insert("empty".into(), Vec::new());
        record.data.insert(String::new(), b"12:34".to_vec());
        for ix in [None, Some("offstate:principal:{ab}cd")] {
            let packed = pack(&record, ix);
            assert_eq!(packed[0], LAYOUT);
            let decoded = decode_packed(Value::BulkString(packed.clone())).unwrap();
            assert_eq!(decoded.as_ref(), Some(&record));
            // Every cut short of the whole is corrupt, never another record.
            for end in 0..packed.len() {
                let cut = decode_packed(Value::BulkString(packed[..end].to_vec()));
                assert!(
                    cut.is_err() || end >= HEADER_LEN + 5 + ix.map_or(0, str::len),
                    "{end}"
                );
                assert_ne!(cut.ok().flatten().as_ref(), Some(&record), "{end}");
            }
        }
        assert_eq!(decode_packed(Value::Nil).unwrap(), None);
        let mut other = pack(&record, None);
        other[0] = 2;
        assert!(
            decode_packed(Value::BulkString(other)).is_err(),
            "unknown layout"
        );
        let mut fraction = pack(&record, None);
        fraction[1..9].copy_from_slice(&2.5_f64.to_be_bytes());
        assert!(
            decode_packed(Value::BulkString(fraction)).is_err(),
            "a fractional version"
        );
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

    #[test]
    fn a_hash_decodes_only_numbers_its_string_can_hold() {
        // Found by fuzz/redis_hash: a creation time past 2^53 decoded from
        // a hash but not from the string that hash becomes.
        let hash = |created: u64| {
            vec![
                (b"version".to_vec(), b"5".to_vec()),
                (b"created".to_vec(), created.to_string().into_bytes()),
            ]
        };
        let at_limit = decode(hash(EXACT_LIMIT)).unwrap().unwrap();
        assert_eq!(decode_string(&pack(&at_limit, None)).unwrap(), at_limit);
        assert!(decode(hash(2_910_849_811_632_772_536)).is_err());
        assert!(decode(hash(EXACT_LIMIT + 1)).is_err());
    }
}
