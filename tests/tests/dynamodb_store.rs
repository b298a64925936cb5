//! DynamoDB-specific behaviour beyond the conformance suite: expired items
//! stay in the table but are never served, the item size limit, keys of
//! any shape, key prefixes sharing a table, table creation, and building
//! a store through aws-config.

use std::time::Duration;

use offstate_core::{
    Change, Clock, CreateOutcome, Deadlines, ManualClock, PrincipalChange, Record, SaveOutcome,
    SessionId, SessionStore, StoreError, Version,
};
use offstate_dynamodb::aws_sdk_dynamodb::config::{BehaviorVersion, Credentials};
use offstate_dynamodb::aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
use offstate_dynamodb::{DYNAMODB_MAX_ITEM_BYTES, DynamoDbConfig, DynamoDbStore};
use offstate_testing::DynamoDb;
use offstate_testing::dynamodb::{REGION, unique};

const HOUR: Duration = Duration::from_secs(3600);

/// The moto shared by this binary's tests (each test keeps it alive).
#[allow(clippy::expect_used)] // A test helper: a failure here fails the test.
async fn moto() -> DynamoDb {
    offstate_testing::dynamodb()
        .shared()
        .await
        .expect("moto (scripts/setup.sh installs it)")
}

#[allow(clippy::expect_used)] // A test helper: a failure here fails the test.
async fn store_on(moto: &DynamoDb, tag: &str) -> DynamoDbStore {
    moto.store_with(DynamoDbConfig::new(unique(tag)))
        .await
        .expect("table")
}

fn record(clock: &ManualClock, idle: Duration) -> Record {
    let now = clock.now();
    Record::new(now, Deadlines::idle_at(now.saturating_add(idle)))
}

#[tokio::test]
async fn an_expired_item_is_still_in_the_table_but_never_served() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = store_on(&moto, "expired").await;
    let key = SessionId::generate().key();
    let mut rec = record(&clock, Duration::from_millis(60_500));
    rec.data.insert("cart".into(), b"[1]".to_vec());
    store.create(&key, &rec, clock.now()).await.expect("create");

    clock.advance(Duration::from_secs(61));
    assert!(
        store.load(&key, clock.now()).await.expect("load").is_none(),
        "served an expired session"
    );

    let raw = store
        .client()
        .get_item()
        .table_name(store.table())
        .key("pk", AttributeValue::S(store.store_key(&key)))
        .consistent_read(true)
        .send()
        .await
        .expect("raw get");
    let item = raw
        .item
        .expect("moto, like DynamoDB before its TTL sweep, keeps the item");
    let idle = rec.deadlines.idle.expect("idle");
    assert_eq!(
        item.get("ttl"),
        Some(&AttributeValue::N(idle.as_secs_ceil().to_string())),
        "TTL is the deadline in epoch seconds, rounded up"
    );
    assert_eq!(
        item.get("idle_ms"),
        Some(&AttributeValue::N(idle.as_millis().to_string()))
    );
    assert!(matches!(item.get("data"), Some(AttributeValue::M(_))));
    assert!(
        !item.contains_key("principal"),
        "no principal attribute without a principal"
    );

    // Nor can it be written or touched back to life; a create may reuse the key.
    let mut change = Change::new(
        Version::INITIAL,
        Deadlines::idle_at(clock.now().saturating_add(HOUR)),
    );
    change.set.insert("cart".into(), b"[2]".to_vec());
    assert_eq!(
        store.save(&key, &change, clock.now()).await.expect("save"),
        SaveOutcome::Gone
    );
    assert!(
        !store.delete(&key, clock.now()).await.expect("delete"),
        "deleting an expired item reports no live session"
    );
}

#[tokio::test]
async fn an_over_limit_save_is_too_large_and_leaves_the_session_as_it_was() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = store_on(&moto, "size").await;
    let key = SessionId::generate().key();
    let mut rec = record(&clock, HOUR);
    rec.data.insert("a".into(), vec![b'a'; 250_000]);
    assert_eq!(
        store.create(&key, &rec, clock.now()).await.expect("create"),
        CreateOutcome::Created
    );

    // Over the limit by the change alone: refused before any request.
    let mut change = Change::new(Version::INITIAL, rec.deadlines);
    change.set.insert("c".into(), vec![b'c'; 500_000]);
    assert!(matches!(
        store.save(&key, &change, clock.now()).await,
        Err(StoreError::TooLarge { .. })
    ));
    let stored = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("live");
    assert!(*stored == rec, "a refused save changed the stored session");

    // 250 KB stored + 200 KB more: only DynamoDB knows the total, and
    // refuses the update. (Real DynamoDB refuses it atomically; moto leaves
    // the new map entry in place, at the old version: see the crate docs.)
    let mut change = Change::new(Version::INITIAL, rec.deadlines);
    change.set.insert("b".into(), vec![b'b'; 200_000]);
    match store.save(&key, &change, clock.now()).await {
        Err(StoreError::TooLarge { limit, .. }) => assert_eq!(limit, DYNAMODB_MAX_ITEM_BYTES),
        other => panic!("an item over 400 KB must be TooLarge, got {other:?}"),
    }
    let stored = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(
        stored.version,
        Version::INITIAL,
        "a refused save moved the version"
    );

    // A create over the limit writes nothing.
    let big = SessionId::generate().key();
    let mut huge = record(&clock, HOUR);
    huge.data
        .insert("x".into(), vec![0; DYNAMODB_MAX_ITEM_BYTES]);
    assert!(matches!(
        store.create(&big, &huge, clock.now()).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert!(store.load(&big, clock.now()).await.expect("load").is_none());
}

#[tokio::test]
async fn a_configured_item_limit_is_checked_before_writing() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = moto
        .store_with(DynamoDbConfig::new(unique("limit")).with_max_item_bytes(10_000))
        .await
        .expect("table");
    let key = SessionId::generate().key();
    let mut rec = record(&clock, HOUR);
    rec.data.insert("x".into(), vec![1; 12_000]);
    match store.create(&key, &rec, clock.now()).await {
        Err(StoreError::TooLarge { size, limit }) => {
            assert_eq!(limit, 10_000);
            assert!(size > 12_000);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(store.load(&key, clock.now()).await.expect("load").is_none());

    let small = record(&clock, HOUR);
    store
        .create(&key, &small, clock.now())
        .await
        .expect("create");
    let mut change = Change::new(Version::INITIAL, small.deadlines);
    change.set.insert("x".into(), vec![1; 12_000]);
    assert!(matches!(
        store.save(&key, &change, clock.now()).await,
        Err(StoreError::TooLarge { .. })
    ));
    assert_eq!(
        store
            .load(&key, clock.now())
            .await
            .expect("load")
            .expect("live")
            .as_ref(),
        &small
    );
}

#[tokio::test]
async fn session_keys_of_any_shape_are_map_paths_of_their_own() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = store_on(&moto, "paths").await;
    let key = SessionId::generate().key();
    let odd = [
        "a.b",
        "#x",
        ":y",
        "",
        "with space",
        "[0]",
        "ünï©ødé",
        "data",
        "pk",
        "SET",
        "~",
        "~~x",
    ];
    let mut rec = record(&clock, HOUR);
    rec.data.insert("keep".into(), b"1".to_vec());
    rec.data.insert("drop".into(), b"2".to_vec());
    store.create(&key, &rec, clock.now()).await.expect("create");

    let mut change = Change::new(Version::INITIAL, rec.deadlines);
    for (n, k) in odd.iter().enumerate() {
        change
            .set
            .insert((*k).to_owned(), vec![u8::try_from(n).expect("small")]);
    }
    change.remove.insert("drop".into());
    // Removed and set in one change: the set wins, as in `Change::apply_to`.
    change.remove.insert("a.b".into());
    change.principal = PrincipalChange::Set("p.q #r".into());
    assert_eq!(
        store.save(&key, &change, clock.now()).await.expect("save"),
        SaveOutcome::Saved(Version::new(2))
    );
    let stored = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(*stored, change.apply_to(&rec));

    let mut clear = Change::new(Version::new(2), Deadlines::default());
    clear.principal = PrincipalChange::Clear;
    clear.remove.extend(odd.iter().map(|k| (*k).to_owned()));
    store.save(&key, &clear, clock.now()).await.expect("save");
    let stored = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(*stored, clear.apply_to(&change.apply_to(&rec)));
    assert_eq!(
        stored.deadlines,
        Deadlines::default(),
        "deadlines can be removed"
    );
}

#[tokio::test]
async fn key_prefixes_share_a_table_without_meeting() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let table = unique("shared");
    let a = moto
        .store_with(DynamoDbConfig::new(table.clone()).with_key_prefix("app-a:"))
        .await
        .expect("table");
    let b = moto
        .store_with(DynamoDbConfig::new(table).with_key_prefix("app-b:"))
        .await
        .expect("table");
    let principal = unique("user");
    let key = SessionId::generate().key();
    let mut rec = record(&clock, HOUR);
    rec.principal = Some(principal.clone());
    a.create(&key, &rec, clock.now()).await.expect("create");
    b.create(&key, &rec, clock.now())
        .await
        .expect("create in b");

    assert_eq!(
        a.list_principal(&principal, clock.now())
            .await
            .expect("list"),
        vec![key.clone()]
    );
    assert_eq!(
        b.revoke_principal(&principal, clock.now())
            .await
            .expect("revoke"),
        1
    );
    assert!(b.load(&key, clock.now()).await.expect("load").is_none());
    assert!(
        a.load(&key, clock.now()).await.expect("load").is_some(),
        "a revoke in b reached a"
    );
    assert_eq!(
        a.list_principal(&principal, clock.now())
            .await
            .expect("list"),
        vec![key]
    );
}

#[tokio::test]
async fn listing_and_revoking_skip_expired_sessions() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = store_on(&moto, "pages").await;
    let principal = unique("many");
    // Every third session expires; the index projects the deadlines, so
    // the listing drops them without reading the table.
    let mut live = Vec::new();
    for n in 0..30 {
        let key = SessionId::generate().key();
        let idle = if n % 3 == 0 {
            Duration::from_secs(10)
        } else {
            HOUR
        };
        let mut rec = record(&clock, idle);
        rec.principal = Some(principal.clone());
        store.create(&key, &rec, clock.now()).await.expect("create");
        if n % 3 != 0 {
            live.push(key);
        }
    }
    clock.advance(Duration::from_secs(11));
    live.sort();
    assert_eq!(
        store
            .list_principal(&principal, clock.now())
            .await
            .expect("list"),
        live
    );
    assert_eq!(
        store
            .revoke_principal(&principal, clock.now())
            .await
            .expect("revoke"),
        live.len()
    );
    assert!(
        store
            .list_principal(&principal, clock.now())
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn ensure_table_is_idempotent_and_sets_up_ttl_and_the_index() {
    let moto = moto().await;
    let table = unique("ensure");
    let store = DynamoDbStore::from_client(moto.client(), DynamoDbConfig::new(table.clone()));
    store.ensure_table().await.expect("first ensure_table");
    store.ensure_table().await.expect("second ensure_table");
    // A second instance racing the first is fine too.
    let other = DynamoDbStore::from_client(moto.client(), DynamoDbConfig::new(table.clone()));
    other
        .ensure_table()
        .await
        .expect("ensure_table from another instance");

    let client = store.client();
    let described = client
        .describe_table()
        .table_name(&table)
        .send()
        .await
        .expect("describe");
    let description = described.table.expect("table");
    let indexes = description.global_secondary_indexes.unwrap_or_default();
    assert_eq!(indexes.len(), 1);
    assert_eq!(indexes[0].index_name.as_deref(), Some("principal-index"));
    let ttl = client
        .describe_time_to_live()
        .table_name(&table)
        .send()
        .await
        .expect("describe ttl")
        .time_to_live_description
        .expect("ttl description");
    assert_eq!(ttl.attribute_name.as_deref(), Some("ttl"));
    assert_eq!(ttl.time_to_live_status, Some(TimeToLiveStatus::Enabled));
}

#[tokio::test]
async fn ensure_table_refuses_a_table_without_the_principal_index() {
    let moto = moto().await;
    let table = unique("bare");
    let client = moto.client();
    use offstate_dynamodb::aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .expect("definition"),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
                .build()
                .expect("key"),
        )
        .send()
        .await
        .expect("create bare table");
    let store = DynamoDbStore::from_client(client, DynamoDbConfig::new(table));
    match store.ensure_table().await {
        Err(StoreError::Backend(error)) => {
            assert!(error.to_string().contains("principal-index"), "{error}")
        }
        other => panic!("a table without the index must be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_goes_through_aws_config_with_an_endpoint_override() {
    let moto = moto().await;
    let credentials = Credentials::new("test", "test", None, None, "offstate-tests");
    let config = DynamoDbConfig::new(unique("connect"))
        .with_endpoint_url(moto.endpoint())
        .with_region(REGION)
        .with_max_attempts(2)
        .with_command_timeout(Duration::from_secs(10));
    let store = DynamoDbStore::connect_with(
        aws_config_loader().credentials_provider(credentials),
        config,
    )
    .await
    .expect("connect");
    store.ensure_table().await.expect("ensure_table");
    let key = SessionId::generate().key();
    let clock = ManualClock::new();
    let store = store;
    store
        .create(&key, &record(&clock, HOUR), clock.now())
        .await
        .expect("create");
    assert!(store.load(&key, clock.now()).await.expect("load").is_some());
}

fn aws_config_loader() -> offstate_dynamodb::aws_config::ConfigLoader {
    offstate_dynamodb::aws_config::defaults(BehaviorVersion::latest())
}

/// A save that changes more keys than one 4 KB update expression can name
/// (DynamoDB refuses longer ones; moto does not check) writes the whole data
/// map instead, still conditional on the version.
#[tokio::test]
async fn a_save_of_hundreds_of_keys_writes_the_whole_map_under_the_same_condition() {
    let moto = moto().await;
    let clock = ManualClock::new();
    let store = store_on(&moto, "manykeys").await;
    let key = SessionId::generate().key();
    let mut rec = record(&clock, HOUR);
    for n in 0..50 {
        rec.data.insert(format!("old-{n}"), b"0".to_vec());
    }
    store.create(&key, &rec, clock.now()).await.expect("create");

    let mut change = Change::new(Version::INITIAL, rec.deadlines);
    for n in 0..400 {
        change
            .set
            .insert(format!("key-{n:03}"), n.to_string().into_bytes());
    }
    for n in 0..10 {
        change.remove.insert(format!("old-{n}"));
    }
    let stale = change.clone();
    assert_eq!(
        store.save(&key, &change, clock.now()).await.expect("save"),
        SaveOutcome::Saved(Version::new(2))
    );
    let loaded = store
        .load(&key, clock.now())
        .await
        .expect("load")
        .expect("live");
    assert_eq!(loaded.data.len(), 400 + 40);
    assert_eq!(
        loaded.data.get("key-399").map(Vec::as_slice),
        Some(&b"399"[..])
    );
    assert!(!loaded.data.contains_key("old-0"));
    assert!(loaded.data.contains_key("old-10"));

    // The same change again, at the version it no longer has: a conflict
    // that returns the current record, and nothing written.
    match store.save(&key, &stale, clock.now()).await.expect("save") {
        SaveOutcome::Conflict(current) => assert_eq!(current.version, Version::new(2)),
        other => panic!("a stale whole-map save must conflict, got {other:?}"),
    }
}
