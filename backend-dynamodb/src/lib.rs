//! Sessions in Amazon DynamoDB, for offstate: any app instance can serve any
//! request, and every write is one conditional `UpdateItem` that changes
//! only the session keys the request changed.
//!
//! # Layout
//!
//! - [`DynamoDbConfig`] and [`AttributeNames`] (module `config`): table,
//!   attribute names, read consistency, item limit, and the SDK's endpoint,
//!   region, profile, retry and timeout settings.
//! - [`DynamoDbStore`] (module `store`): built from aws-config's chain
//!   ([`DynamoDbStore::connect`]), a prepared loader, or an existing client
//!   ([`DynamoDbStore::from_client`]).
//! - `ops`: the [`SessionStore`](offstate_core::SessionStore) operations.
//! - `table`: [`DynamoDbStore::ensure_table`].
//! - `item`: the item form of a record, its decoding ([`DecodeError`]) and
//!   size estimate; `error`: [`ConnectError`] and SDK errors mapped to
//!   [`StoreError`](offstate_core::StoreError).
//! - [`aws_sdk_dynamodb`] is re-exported, for raw access to the table, and
//!   [`aws_config`], for [`DynamoDbStore::connect_with`]'s loader.
//!
//! # Example
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use offstate_core::Sessions;
//! use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};
//!
//! // Region and credentials come from the environment or a profile.
//! let store = DynamoDbStore::connect(
//!     DynamoDbConfig::new("sessions").with_key_prefix("shop:"),
//! )
//! .await?;
//! store.ensure_table().await?; // or create it as code, see below
//!
//! let sessions = Sessions::new(store);
//! let session = sessions.new_session();
//! session.insert("cart", &vec!["apple"]).await?;
//! session.save().await?; // one PutItem
//! # Ok(()) }
//! ```
//!
//! # The table
//!
//! One item per session; the names are the defaults of [`AttributeNames`]:
//!
//! | attribute     | type | holds |
//! |---------------|------|-------|
//! | `pk`          | S    | partition key: key prefix + the session's hashed key (never the ID) |
//! | `data`        | M    | one entry per session key, each a B (the serialized value); always present, possibly empty. Entry names are the session keys, except that `""` is stored as `~` and a key starting with `~` gets one more `~` (DynamoDB refuses empty names in expressions) |
//! | `version`     | N    | goes up by one on every save |
//! | `created_ms`  | N    | creation time, epoch milliseconds |
//! | `idle_ms`     | N    | idle deadline, epoch milliseconds; absent when none |
//! | `absolute_ms` | N    | absolute deadline, epoch milliseconds; absent when none |
//! | `ttl`         | N    | DynamoDB TTL: the earlier deadline in epoch **seconds**, rounded up; absent when the session never expires |
//! | `principal`   | S    | the user the session belongs to; absent when none |
//!
//! The global secondary index `principal-index` has `principal` as its
//! partition key and `pk` as its sort key, and projects the two deadlines,
//! so listing a user's live sessions needs no read of the table. Sessions
//! without a principal are not in the index at all.
//!
//! # Semantics
//!
//! - **Load** is one `GetItem`, strongly consistent by default
//!   ([`DynamoDbConfig::with_consistent_reads`]). DynamoDB's TTL deletes
//!   expired items only eventually (typically within days), so the
//!   deadlines are checked on every read against the store's clock: an
//!   expired item is never served.
//! - **Create** is one `PutItem` conditioned on
//!   `attribute_not_exists(pk)` or the existing item having expired.
//! - **Save** is one `UpdateItem`: `SET data.#k = :v` and
//!   `REMOVE data.#k` for the changed keys only (each key through an
//!   expression attribute name, so any string works), the next version, the
//!   deadlines, the TTL and the principal (`SET` or `REMOVE`), conditioned on
//!   the item existing, having the expected version and no deadline having
//!   passed. `ReturnValuesOnConditionCheckFailure=ALL_OLD` brings the
//!   current item back with the failure: absent or expired is
//!   [`SaveOutcome::Gone`](offstate_core::SaveOutcome::Gone), another
//!   version is a conflict carrying the current record, with no extra read.
//! - **Touch** is one `UpdateItem` of the idle deadline and TTL, under the
//!   same existence and liveness condition. It sets the TTL from the new idle
//!   deadline; when the absolute deadline is earlier the item lingers until
//!   then (reads still end the session on time).
//! - **Delete** is one `DeleteItem`.
//! - **Principals**: listing is a `Query` on the index (all pages);
//!   revoking lists, then deletes each item conditioned on it still
//!   belonging to the principal. The index is eventually consistent, so
//!   [`Capabilities::consistent_principal_index`](offstate_core::Capabilities::consistent_principal_index)
//!   is `false`: a session attached a moment ago may be missed by a listing
//!   or a revoke issued at the same instant. No operation ever scans.
//! - **Size**: an item holds at most 400 KB. Creates are measured
//!   (attribute names plus values) and refused with
//!   [`StoreError::TooLarge`](offstate_core::StoreError::TooLarge) above
//!   [`DynamoDbConfig::with_max_item_bytes`]. A save only knows the entries it
//!   changes (the rest stays on the server, unread), so it is refused early
//!   when those alone exceed the limit, and otherwise DynamoDB's own
//!   400 KB check refuses it atomically, also as `TooLarge`. To hold
//!   sessions to a lower limit, set the session handle's `Limits`, which see
//!   the whole record. Nothing is written in either case.
//! - **Errors**: throttling and transient failures are retried by the SDK
//!   ([`DynamoDbConfig::with_max_attempts`], [`DynamoDbConfig::with_retry_config`]);
//!   timeouts ([`DynamoDbConfig::with_command_timeout`],
//!   [`DynamoDbConfig::with_timeout_config`]; by default 2 s per attempt,
//!   5 s per operation) become `StoreError::Timeout`, an unreachable
//!   endpoint `StoreError::Unavailable`, an undecodable item
//!   `StoreError::Corrupt` (for that session only).
//!
//! # The table as code
//!
//! [`DynamoDbStore::ensure_table`] creates the table below; operators can
//! create it with CloudFormation instead (same names as the defaults):
//!
//! ```yaml
//! SessionsTable:
//!   Type: AWS::DynamoDB::Table
//!   Properties:
//!     TableName: sessions
//!     BillingMode: PAY_PER_REQUEST
//!     AttributeDefinitions:
//!       - AttributeName: pk
//!         AttributeType: S
//!       - AttributeName: principal
//!         AttributeType: S
//!     KeySchema:
//!       - AttributeName: pk
//!         KeyType: HASH
//!     GlobalSecondaryIndexes:
//!       - IndexName: principal-index
//!         KeySchema:
//!           - AttributeName: principal
//!             KeyType: HASH
//!           - AttributeName: pk
//!             KeyType: RANGE
//!         Projection:
//!           ProjectionType: INCLUDE
//!           NonKeyAttributes: [idle_ms, absolute_ms]
//!     TimeToLiveSpecification:
//!       AttributeName: ttl
//!       Enabled: true
//! ```
//!
//! With a `KEYS_ONLY` projection instead, listings cannot see deadlines
//! and may include expired sessions until TTL removes them.
//!
//! # Moto and real DynamoDB
//!
//! The tests run against moto's server. Differences noticed:
//!
//! - moto's global secondary indexes are updated synchronously, so the
//!   eventual consistency of a real index is not exercised by the tests.
//! - moto never deletes expired items by TTL (real DynamoDB does, within
//!   days); both keep serving them to a raw `GetItem`, which is why the
//!   deadline check on every read matters.
//! - moto does not enforce throughput, so throttling is not exercised.
//! - moto's server handles requests on several threads without locking its
//!   tables, so two concurrent conditional writes on one item can both
//!   pass their condition (with plain boto3, 200 concurrent increments of
//!   one counter were all acknowledged and the counter ended at 191 to
//!   196). DynamoDB applies each conditional write atomically. **If you
//!   test your own code on a plain moto** (`moto_server` or its Docker
//!   image), concurrent updates of one session may be lost there and not
//!   in production: `offstate_testing::dynamodb()` runs moto behind one
//!   lock when it starts it as a process; test contention on that, or on
//!   real DynamoDB.
//! - An `UpdateItem` that would take an item over 400 KB is refused by both
//!   with the same `ValidationException`, but moto has already applied part
//!   of the update (the new map entry stays, at the old version); DynamoDB
//!   leaves the item untouched.
//! - moto accepts an empty map key and then returns broken JSON for the
//!   item; DynamoDB refuses empty expression attribute names. Session key
//!   `""` is escaped (see the table above), so neither case arises.

mod config;
mod error;
mod item;
mod ops;
mod store;
mod table;

/// aws-config, re-exported so that the loader passed to
/// [`DynamoDbStore::connect_with`] is of the version this crate uses.
pub use aws_config;
/// The DynamoDB SDK this crate is built on, re-exported for raw access to
/// the table and for building the `Client` given to
/// [`DynamoDbStore::from_client`] at the matching version.
pub use aws_sdk_dynamodb;
pub use config::{AttributeNames, DEFAULT_KEY_PREFIX, DYNAMODB_MAX_ITEM_BYTES, DynamoDbConfig};
pub use error::ConnectError;
pub use item::DecodeError;
// The item codec is internal; property tests, the fuzz targets and the
// capacity program reach it through the `fuzzing` feature (no semver
// promise).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub use item::{decode_item, encode_item};
pub use store::DynamoDbStore;
