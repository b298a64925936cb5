//! The item form of a [`Record`]: encoding, decoding and size estimates.
//!
//! Decoding is strict: an attribute of the wrong type, a number that is not
//! a `u64`, or a data entry that is not binary makes the whole item
//! [`StoreError::Corrupt`](offstate_core::StoreError::Corrupt), so a record
//! is never served half-read.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use offstate_core::{Deadlines, Record, Timestamp, Version};

use crate::config::AttributeNames;

/// An item as the SDK hands it over.
pub(crate) type Item = HashMap<String, AttributeValue>;

/// Why an item is not a valid session record.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// A required attribute is missing.
    #[error("attribute {0:?} is missing")]
    Missing(String),
    /// An attribute has another type than the layout says.
    #[error("attribute {name:?} should be of type {expected}")]
    WrongType {
        /// The attribute.
        name: String,
        /// The DynamoDB type it should have.
        expected: &'static str,
    },
    /// A data map entry name that the store never writes (empty, or a
    /// single `~` escape before a key that needs none).
    #[error("data map entry {0:?} is not a name this store writes")]
    BadEntryName(String),
    /// A number attribute does not hold a whole number of the right range.
    #[error("attribute {name:?} holds {value:?}, not an unsigned whole number")]
    BadNumber {
        /// The attribute.
        name: String,
        /// What it holds.
        value: String,
    },
}

/// The escape that starts a map entry name standing for an empty or
/// `~`-initial session key.
const ESCAPE: char = '~';

/// The data map entry name for a session key. DynamoDB refuses empty
/// expression attribute names, so `""` cannot be a map path: it is stored
/// as `"~"`, and a key starting with `~` gets one more `~` in front.
pub(crate) fn entry_name(key: &str) -> std::borrow::Cow<'_, str> {
    if key.is_empty() || key.starts_with(ESCAPE) {
        format!("{ESCAPE}{key}").into()
    } else {
        key.into()
    }
}

/// The session key a data map entry name stands for.
pub(crate) fn key_of_entry(name: &str) -> &str {
    name.strip_prefix(ESCAPE).unwrap_or(name)
}

/// Encodes `record` as a full item under partition key `pk`.
pub(crate) fn encode(names: &AttributeNames, pk: &str, record: &Record) -> Item {
    let mut item = Item::new();
    item.insert(names.key.clone(), AttributeValue::S(pk.to_owned()));
    let data = record
        .data
        .iter()
        .map(|(k, v)| {
            (
                entry_name(k).into_owned(),
                AttributeValue::B(Blob::new(v.clone())),
            )
        })
        .collect();
    item.insert(names.data.clone(), AttributeValue::M(data));
    item.insert(names.version.clone(), number(record.version.get()));
    item.insert(names.created.clone(), number(record.created_at.as_millis()));
    if let Some(idle) = record.deadlines.idle {
        item.insert(names.idle.clone(), number(idle.as_millis()));
    }
    if let Some(absolute) = record.deadlines.absolute {
        item.insert(names.absolute.clone(), number(absolute.as_millis()));
    }
    if let Some(at) = record.deadlines.expires_at() {
        item.insert(names.ttl.clone(), number(at.as_secs_ceil()));
    }
    if let Some(principal) = &record.principal {
        item.insert(
            names.principal.clone(),
            AttributeValue::S(principal.clone()),
        );
    }
    item
}

/// Decodes a full item.
pub(crate) fn decode(names: &AttributeNames, item: &Item) -> Result<Record, DecodeError> {
    let data = match item.get(&names.data) {
        None => return Err(DecodeError::Missing(names.data.clone())),
        Some(AttributeValue::M(map)) => {
            let mut data = BTreeMap::new();
            for (k, v) in map {
                match v {
                    // Only the names `entry_name` writes are accepted: `""`
                    // and `"~x"` would otherwise collapse onto the keys of
                    // `"~"` and `"x"`, and one value would silently win.
                    AttributeValue::B(_) if entry_name(key_of_entry(k)) != k.as_str() => {
                        return Err(DecodeError::BadEntryName(k.clone()));
                    }
                    AttributeValue::B(blob) => {
                        data.insert(key_of_entry(k).to_owned(), blob.as_ref().to_vec());
                    }
                    _ => {
                        return Err(DecodeError::WrongType {
                            name: format!("{}.{k}", names.data),
                            expected: "B",
                        });
                    }
                }
            }
            data
        }
        Some(_) => {
            return Err(DecodeError::WrongType {
                name: names.data.clone(),
                expected: "M",
            });
        }
    };
    let version = required_number(item, &names.version)?;
    let created = required_number(item, &names.created)?;
    let principal = match item.get(&names.principal) {
        None | Some(AttributeValue::Null(true)) => None,
        Some(AttributeValue::S(p)) => Some(p.clone()),
        Some(_) => {
            return Err(DecodeError::WrongType {
                name: names.principal.clone(),
                expected: "S",
            });
        }
    };
    let mut record = Record::new(Timestamp::from_millis(created), deadlines(names, item)?);
    record.version = Version::new(version);
    record.principal = principal;
    record.data = data;
    Ok(record)
}

/// [`decode`] for the property tests: what the store does with an item a
/// read returned. Not part of the API.
///
/// # Errors
///
/// [`DecodeError`] for an item that is not a valid record.
#[doc(hidden)]
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code, unreachable_pub))]
pub fn decode_item(
    names: &AttributeNames,
    item: &HashMap<String, AttributeValue>,
) -> Result<Record, DecodeError> {
    decode(names, item)
}

/// [`encode`] for the property tests. Not part of the API.
#[doc(hidden)]
#[must_use]
#[cfg_attr(not(feature = "fuzzing"), allow(dead_code, unreachable_pub))]
pub fn encode_item(
    names: &AttributeNames,
    pk: &str,
    record: &Record,
) -> HashMap<String, AttributeValue> {
    encode(names, pk, record)
}

/// Decodes only the deadlines (enough to tell whether an item is live).
pub(crate) fn deadlines(names: &AttributeNames, item: &Item) -> Result<Deadlines, DecodeError> {
    let idle = optional_number(item, &names.idle)?.map(Timestamp::from_millis);
    let absolute = optional_number(item, &names.absolute)?.map(Timestamp::from_millis);
    let mut deadlines = Deadlines::none();
    deadlines.idle = idle;
    deadlines.absolute = absolute;
    Ok(deadlines)
}

/// A number attribute value.
pub(crate) fn number(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

fn required_number(item: &Item, name: &str) -> Result<u64, DecodeError> {
    optional_number(item, name)?.ok_or_else(|| DecodeError::Missing(name.to_owned()))
}

fn optional_number(item: &Item, name: &str) -> Result<Option<u64>, DecodeError> {
    match item.get(name) {
        None | Some(AttributeValue::Null(true)) => Ok(None),
        Some(AttributeValue::N(text)) => {
            text.parse().map(Some).map_err(|_| DecodeError::BadNumber {
                name: name.to_owned(),
                value: text.clone(),
            })
        }
        Some(_) => Err(DecodeError::WrongType {
            name: name.to_owned(),
            expected: "N",
        }),
    }
}

/// DynamoDB's accounting of an item's size, rounded up: attribute names
/// plus values (UTF-8 strings, raw binaries, numbers at their worst case of
/// 21 bytes, 3 bytes per map or list plus one per element).
pub(crate) fn item_size(item: &Item) -> usize {
    item.iter().map(|(k, v)| k.len() + value_size(v)).sum()
}

/// The size of one attribute value, as [`item_size`] counts it.
pub(crate) fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::N(_) => NUMBER_BYTES,
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        AttributeValue::Ss(set) => set.iter().map(String::len).sum(),
        AttributeValue::Ns(set) => set.len() * NUMBER_BYTES,
        AttributeValue::Bs(set) => set.iter().map(|b| b.as_ref().len()).sum(),
        _ => 1,
    }
}

/// The most a number takes in DynamoDB's size accounting.
pub(crate) const NUMBER_BYTES: usize = 21;

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> AttributeNames {
        AttributeNames::default()
    }

    #[test]
    fn a_record_round_trips_through_an_item() {
        let mut record = Record::new(
            Timestamp::from_millis(1_700_000_000_123),
            Deadlines::idle_at(Timestamp::from_millis(1_700_000_060_001))
                .with_absolute_at(Timestamp::from_millis(1_700_000_900_000)),
        );
        record.principal = Some("alice".into());
        record.data.insert("cart".into(), b"[1,2]".to_vec());
        record.data.insert("".into(), Vec::new());
        record.data.insert("~".into(), b"t".to_vec());
        record.data.insert("~~x".into(), b"tt".to_vec());
        let item = encode(&names(), "p:key", &record);
        assert_eq!(
            item.get("ttl"),
            Some(&AttributeValue::N("1700000061".into())),
            "ttl is the earlier deadline in seconds, rounded up"
        );
        assert_eq!(decode(&names(), &item).expect("decodes"), record);
    }

    #[test]
    fn entry_names_escape_empty_and_tilde_keys_injectively() {
        for key in ["", "~", "~~", "~a", "a~", "a", "data.x"] {
            assert_eq!(key_of_entry(&entry_name(key)), key);
        }
        assert_eq!(entry_name(""), "~");
        assert_eq!(entry_name("~"), "~~");
        assert_eq!(entry_name("a"), "a");
    }

    #[test]
    fn absent_optional_attributes_decode_as_none() {
        let record = Record::new(Timestamp::from_millis(5), Deadlines::default());
        let item = encode(&names(), "k", &record);
        assert!(!item.contains_key("ttl"));
        assert!(!item.contains_key("principal"));
        assert_eq!(decode(&names(), &item).expect("decodes"), record);
    }

    #[test]
    fn wrong_types_are_decode_errors() {
        let record = Record::new(Timestamp::from_millis(5), Deadlines::default());
        let mut item = encode(&names(), "k", &record);
        item.insert("data".into(), AttributeValue::S("garbage".into()));
        assert!(matches!(
            decode(&names(), &item),
            Err(DecodeError::WrongType { .. })
        ));
        let mut item = encode(&names(), "k", &record);
        item.insert("version".into(), AttributeValue::N("-3".into()));
        assert!(matches!(
            decode(&names(), &item),
            Err(DecodeError::BadNumber { .. })
        ));
        let mut item = encode(&names(), "k", &record);
        item.remove("version");
        assert!(matches!(
            decode(&names(), &item),
            Err(DecodeError::Missing(_))
        ));
    }

    #[test]
    fn size_counts_names_and_values() {
        let mut record = Record::new(Timestamp::from_millis(5), Deadlines::default());
        record.data.insert("k".into(), vec![0; 1000]);
        let size = item_size(&encode(&names(), "key", &record));
        assert!(size > 1000 + "data".len() + "k".len());
        assert!(size < 1200);
    }
}
