//! The `offstate.store` span of a store call on Redis says where the
//! store is: `server.address` is the configured node's `host:port` (for a
//! cluster, its first seed's), never the credentials of the URL, captured
//! by a tracing layer that keeps every span's fields.

// Test helpers: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use offstate_core::{SessionStore, Sessions, middleware};
use offstate_redis::RedisConfig;
use offstate_testing::{redis, redis_cluster};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::registry::Registry;

type Fields = BTreeMap<String, String>;

/// Every span's fields: the open ones by ID, the closed ones in order.
#[derive(Default)]
struct Spans {
    open: HashMap<u64, (String, Fields)>,
    closed: Vec<(String, Fields)>,
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Spans>>);

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        let name = attrs.metadata().name().to_owned();
        self.0
            .lock()
            .unwrap()
            .open
            .insert(id.into_u64(), (name, fields));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.0.lock().unwrap().open.get_mut(&id.into_u64()) {
            values.record(&mut Collect(fields));
        }
    }

    fn on_close(&self, id: Id, _: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(span) = spans.open.remove(&id.into_u64()) {
            spans.closed.push(span);
        }
    }
}

impl Capture {
    /// The fields of every closed `offstate.store` span.
    fn store_spans(&self) -> Vec<Fields> {
        let spans = self.0.lock().unwrap();
        spans
            .closed
            .iter()
            .filter(|(name, _)| name == "offstate.store")
            .map(|(_, fields)| fields.clone())
            .collect()
    }
}

/// `host:port` of a `redis://[user:password@]host:port[/db]` URL.
fn host_port(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, rest)| rest);
    rest.split('/').next().unwrap()
}

/// Creates a session and reads it back with `store` under the capture,
/// and returns the store spans it saw.
async fn traced_flow(store: impl SessionStore) -> Vec<Fields> {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(capture.clone()));
    let sessions = Sessions::new(store);
    let session = sessions.new_session();
    session.insert("cart", &["apple"]).await.unwrap();
    session.save().await.unwrap();
    let id = session.id().unwrap();
    let read = middleware::open(&sessions, [id]);
    assert!(read.exists().await.unwrap());
    drop(read);
    capture.store_spans()
}

fn assert_address(spans: &[Fields], want: &str, secret: Option<&str>) {
    let operations: Vec<&str> = spans
        .iter()
        .map(|f| f.get("db.operation.name").map_or("", String::as_str))
        .collect();
    assert!(
        operations.contains(&"create") && operations.contains(&"load"),
        "the flow's calls were traced: {spans:?}"
    );
    for fields in spans {
        assert_eq!(fields.get("db.system").map(String::as_str), Some("redis"));
        assert_eq!(
            fields.get("server.address").map(String::as_str),
            Some(want),
            "{fields:?}"
        );
        if let Some(secret) = secret {
            assert!(
                fields.values().all(|v| !v.contains(secret)),
                "a credential in a span: {fields:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_standalone_node_reports_its_host_and_port_without_credentials() {
    let server = redis().with_user("traced", "s3cret-pw").await.unwrap();
    let want = host_port(server.url()).to_owned();
    assert!(want.contains(':') && !want.contains("s3cret"), "{want}");
    // The credentials in the URL itself, where an address must not take them.
    let config = RedisConfig::new(format!("redis://traced:s3cret-pw@{want}"));
    let store = server.connect_with(config).await.unwrap();
    let spans = traced_flow(store).await;
    assert_address(&spans, &want, Some("s3cret"));
}

#[tokio::test]
async fn a_cluster_reports_its_first_seed() {
    let cluster = redis_cluster().await.unwrap();
    assert!(cluster.urls().len() > 1, "{:?}", cluster.urls());
    let want = host_port(&cluster.urls()[0]).to_owned();
    let spans = traced_flow(cluster.store().clone()).await;
    assert_address(&spans, &want, None);
}
