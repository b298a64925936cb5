//! Property tests for the item decoder, which reads whatever a `GetItem`
//! returns. It is tested here with proptest instead of the libFuzzer
//! targets in fuzz/: building the AWS SDK with coverage instrumentation
//! would take most of CI's fuzzing budget.
//!
//! Properties: no item makes the decoder panic; every record survives
//! encode → decode; a decoded item re-encodes to an item that decodes to
//! the same record (no data is silently merged or dropped).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use offstate_core::{Deadlines, Record, Timestamp, Version};
use offstate_dynamodb::aws_sdk_dynamodb::primitives::Blob;
use offstate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use offstate_dynamodb::{AttributeNames, decode_item, encode_item};
use proptest::prelude::*;

fn names() -> AttributeNames {
    AttributeNames::default()
}

/// Session keys biased towards the escape character and the empty key.
fn session_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[~a-z.]{0,5}",
        any::<String>().prop_map(|s| s.chars().take(12).collect()),
    ]
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    any::<u64>().prop_map(Timestamp::from_millis)
}

fn record() -> impl Strategy<Value = Record> {
    (
        any::<u64>(),
        timestamp(),
        proptest::option::of(timestamp()),
        proptest::option::of(timestamp()),
        proptest::option::of(any::<String>()),
        proptest::collection::btree_map(
            session_key(),
            proptest::collection::vec(any::<u8>(), 0..32),
            0..6,
        ),
    )
        .prop_map(|(version, created, idle, absolute, principal, data)| {
            let mut record = Record::new(created, {
                let mut d = offstate_core::Deadlines::none();
                d.idle = idle;
                d.absolute = absolute;
                d
            });
            record.version = Version::new(version);
            record.principal = principal;
            record.data = data;
            record
        })
}

/// Any attribute value, of every type the decoder may meet.
fn value() -> impl Strategy<Value = AttributeValue> {
    let leaf = prop_oneof![
        any::<String>().prop_map(AttributeValue::S),
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i64>().prop_map(|n| n.to_string()),
            "[0-9eE.+-]{0,25}",
        ]
        .prop_map(AttributeValue::N),
        proptest::collection::vec(any::<u8>(), 0..16).prop_map(|b| AttributeValue::B(Blob::new(b))),
        any::<bool>().prop_map(AttributeValue::Bool),
        any::<bool>().prop_map(AttributeValue::Null),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::hash_map(session_key(), inner.clone(), 0..4)
                .prop_map(AttributeValue::M),
            proptest::collection::vec(inner, 0..4).prop_map(AttributeValue::L),
        ]
    })
}

/// Items that mix the layout's attribute names with strangers, each with
/// a value of any type: a corrupted or foreign table.
fn item() -> impl Strategy<Value = HashMap<String, AttributeValue>> {
    let n = names();
    let name = prop_oneof![
        Just(n.key),
        Just(n.data),
        Just(n.version),
        Just(n.created),
        Just(n.idle),
        Just(n.absolute),
        Just(n.ttl),
        Just(n.principal),
        "[a-z_]{1,8}",
    ];
    proptest::collection::hash_map(name, value(), 0..10)
}

/// A well-formed item with a hostile data map: entry names of any shape,
/// escaped or not.
fn item_with_hostile_data() -> impl Strategy<Value = HashMap<String, AttributeValue>> {
    (
        record(),
        proptest::collection::hash_map(
            session_key(),
            proptest::collection::vec(any::<u8>(), 0..8),
            0..6,
        ),
    )
        .prop_map(|(record, entries)| {
            let mut item = encode_item(&names(), "pk", &record);
            let map = entries
                .into_iter()
                .map(|(k, v)| (k, AttributeValue::B(Blob::new(v))))
                .collect();
            item.insert(names().data, AttributeValue::M(map));
            item
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn records_round_trip_through_items(record in record()) {
        let item = encode_item(&names(), "pk", &record);
        prop_assert_eq!(decode_item(&names(), &item).unwrap(), record);
    }

    #[test]
    fn no_item_panics_the_decoder_and_what_decodes_is_stable(item in item()) {
        if let Ok(record) = decode_item(&names(), &item) {
            let again = encode_item(&names(), "pk", &record);
            prop_assert_eq!(decode_item(&names(), &again).unwrap(), record);
        }
    }

    #[test]
    fn data_maps_decode_without_losing_or_merging_entries(item in item_with_hostile_data()) {
        let Some(AttributeValue::M(map)) = item.get(&names().data) else {
            unreachable!("the strategy always sets the data map")
        };
        if let Ok(record) = decode_item(&names(), &item) {
            // Every stored entry is one session key; none collapses into another.
            prop_assert_eq!(record.data.len(), map.len());
            let again = encode_item(&names(), "pk", &record);
            prop_assert_eq!(decode_item(&names(), &again).unwrap(), record);
        }
    }
}

#[test]
fn wrongly_typed_data_entries_are_refused_not_skipped() {
    let record = Record::new(Timestamp::from_millis(1), Deadlines::default());
    let mut item = encode_item(&names(), "pk", &record);
    let map = BTreeMap::from([("cart".to_owned(), AttributeValue::S("x".into()))]);
    item.insert(names().data, AttributeValue::M(map.into_iter().collect()));
    assert!(decode_item(&names(), &item).is_err());
}

/// Found by `data_maps_decode_without_losing_or_merging_entries`: entries
/// `""` and `"~"` both decoded to session key `""`, and whichever the map
/// iterated last won. Names the store never writes are now corrupt.
#[test]
fn regression_entries_that_collapse_onto_one_key_are_refused() {
    let record = Record::new(Timestamp::from_millis(0), Deadlines::default());
    for (a, b) in [("", "~"), ("~x", "x"), ("~~", "~x")] {
        let mut item = encode_item(&names(), "pk", &record);
        let map = HashMap::from([
            (a.to_owned(), AttributeValue::B(Blob::new(b"a".to_vec()))),
            (b.to_owned(), AttributeValue::B(Blob::new(b"b".to_vec()))),
        ]);
        item.insert(names().data, AttributeValue::M(map));
        let decoded = decode_item(&names(), &item);
        let collapsed = entry_collapses(a) || entry_collapses(b);
        assert_eq!(decoded.is_err(), collapsed, "entries {a:?} and {b:?}");
    }
}

/// Whether the store would never write this entry name.
fn entry_collapses(name: &str) -> bool {
    name.is_empty() || (name.starts_with('~') && name.len() > 1 && !name[1..].starts_with('~'))
}
