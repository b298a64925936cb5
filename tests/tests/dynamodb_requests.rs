//! How many DynamoDB requests each session operation costs, counted by an
//! SDK interceptor (one count per operation, retries aside): a read is one
//! `GetItem`, a write one `UpdateItem`, and a read-only request inside the
//! touch threshold writes nothing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeSerializationInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use offstate_core::{ExpiryPolicy, ManualClock, Sessions};
use offstate_dynamodb::DynamoDbStore;
use offstate_dynamodb::aws_sdk_dynamodb::Client;
use offstate_dynamodb::aws_sdk_dynamodb::config::{ConfigBag, RuntimeComponents};

/// Counts operations by name.
#[derive(Debug, Clone, Default)]
struct RequestCounter(Arc<Mutex<BTreeMap<String, u64>>>);

impl Intercept for RequestCounter {
    fn name(&self) -> &'static str {
        "RequestCounter"
    }

    // Not `read_before_execution`: for a client-level interceptor it runs
    // before the operation's config (and its `Metadata`) is in the bag.
    // This hook also runs once per operation, retries aside.
    fn read_before_serialization(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let name = cfg
            .load::<Metadata>()
            .map_or("unknown", Metadata::name)
            .to_owned();
        let mut counts = self.0.lock().map_err(|_| "poisoned counter")?;
        *counts.entry(name).or_default() += 1;
        Ok(())
    }
}

impl RequestCounter {
    /// The counts so far, then zero.
    #[allow(clippy::expect_used)] // A test helper: a failure here fails the test.
    fn take(&self) -> BTreeMap<String, u64> {
        std::mem::take(&mut *self.0.lock().expect("counter"))
    }
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

#[tokio::test]
async fn requests_per_session_operation() {
    let moto = offstate_testing::dynamodb()
        .shared()
        .await
        .expect("moto (scripts/setup.sh installs it)");
    let config = moto.config().clone();
    let counter = RequestCounter::default();
    let client = Client::from_conf(moto.client_config().interceptor(counter.clone()).build());
    let clock = ManualClock::new();
    let store = DynamoDbStore::from_client(client, config);
    let sessions = Sessions::new(store)
        .with_clock(Arc::new(clock.clone()))
        .with_expiry(
            ExpiryPolicy::never()
                .with_idle(Some(Duration::from_secs(100)))
                .with_touch_threshold(0.5),
        );
    let mut report = Vec::new();

    let session = sessions.new_session();
    session
        .insert("cart", &vec!["apple"])
        .await
        .expect("insert");
    session.save().await.expect("create");
    let id = session.id().expect("created");
    let create = counter.take();
    assert_eq!(create, counts(&[("PutItem", 1)]));
    report.push(("create", create));

    clock.advance(Duration::from_secs(10));
    let read = sessions.load(&id).await.expect("load").expect("live");
    read.get::<Vec<String>>("cart").await.expect("get");
    read.save().await.expect("save");
    let read_only = counter.take();
    assert_eq!(
        read_only,
        counts(&[("GetItem", 1)]),
        "a read inside the touch threshold writes nothing"
    );
    report.push(("read (inside touch threshold)", read_only));

    let write = sessions.load(&id).await.expect("load").expect("live");
    write.insert("lang", "en").await.expect("insert");
    write.save().await.expect("save");
    let written = counter.take();
    assert_eq!(written, counts(&[("GetItem", 1), ("UpdateItem", 1)]));
    report.push(("read + write", written));

    clock.advance(Duration::from_secs(60));
    let late = sessions.load(&id).await.expect("load").expect("live");
    late.get::<String>("lang").await.expect("get");
    late.save().await.expect("save");
    let touched = counter.take();
    assert_eq!(
        touched,
        counts(&[("GetItem", 1), ("UpdateItem", 1)]),
        "past the threshold: one touch"
    );
    report.push(("read past touch threshold", touched));

    let unused = offstate_core::middleware::open(&sessions, Some(id.clone()));
    unused.save().await.expect("save");
    let nothing = counter.take();
    assert!(
        nothing.is_empty(),
        "an untouched session made requests: {nothing:?}"
    );
    report.push(("session never used", nothing));

    let bye = sessions.load(&id).await.expect("load").expect("live");
    bye.delete().await.expect("delete");
    let deleted = counter.take();
    assert_eq!(deleted, counts(&[("DeleteItem", 1), ("GetItem", 1)]));
    report.push(("load + delete", deleted));

    for (what, counted) in report {
        println!("{what:32} {counted:?}");
    }
}
