//! `capacity`: what each kind of request costs the store, counted, for
//! `docs/capacity.md`. The cart example's own app (`offstate-example-cart`)
//! runs in process (tower `oneshot`) on each backend, without and with the
//! local cache, for the cart's typical session and a large one; every
//! figure is a count, not a timing:
//!
//! - store calls: a [`CountingStore`] right around the backend (inside the
//!   cache), so a cache hit counts nothing;
//! - round trips: Redis `INFO commandstats` (a Lua script counts once),
//!   memcached's `stats` request counters, DynamoDB requests by operation
//!   (an SDK interceptor, retries included);
//! - DynamoDB capacity units, from those operations and the item sizes
//!   measured on the stored records (DynamoDB's size rules, below).
//!
//! Run: `cargo run --release -p offstate-bench --bin capacity` (starts its
//! own redis-server, memcached and moto through offstate-testing's
//! process fixtures; `scripts/setup.sh` installs them).
//!
//! Why this file is long: one measuring program, its backends and its
//! report in one place, so the figures in docs/capacity.md have one source.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{Method, Request};
use http_body_util::BodyExt as _;
use offstate_bench::counts::memcached_requests;
use offstate_bench::redis_stats::{CommandStats, round_trips};
use offstate_cache::CachedStore;
use offstate_core::{
    CallCounts, CountingStore, ManualClock, SessionId, SessionStore, Sessions, Timestamp,
};
use offstate_dynamodb::aws_sdk_dynamodb::Client;
use offstate_dynamodb::aws_sdk_dynamodb::config::interceptors::BeforeTransmitInterceptorContextRef;
use offstate_dynamodb::aws_sdk_dynamodb::config::{ConfigBag, Intercept, RuntimeComponents};
use offstate_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use offstate_dynamodb::{DynamoDbStore, encode_item};
use offstate_example_cart::{AppConfig, app};
use offstate_redis::RedisInvalidationChannel;
use offstate_testing::Source;
use tower::ServiceExt as _;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Requests of each kind per measurement (figures are per request).
const N: u64 = 10;

/// The kinds of request measured, in table order.
const KINDS: &[&str] = &[
    "anonymous (GET /, no cookie)",
    "first add (creates the session)",
    "read (GET /, inside touch threshold)",
    "read past the touch threshold",
    "add (POST /cart/add)",
    "login (POST /login: rotate ID)",
    "logout (POST /logout)",
];

/// What a large session carries on top of the cart: an app's history or
/// preferences, 24 KiB of it.
const LARGE_EXTRA: usize = 24 * 1024;

/// Counts DynamoDB requests by operation, at transmit (retries count).
#[derive(Debug, Clone, Default)]
struct Ops(Arc<Mutex<BTreeMap<String, u64>>>);

impl Intercept for Ops {
    fn name(&self) -> &'static str {
        "capacity op counter"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Error> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("unknown")
            .rsplit('.')
            .next()
            .unwrap_or("unknown")
            .to_owned();
        *self
            .0
            .lock()
            .map_err(|_| "poisoned")?
            .entry(target)
            .or_default() += 1;
        Ok(())
    }
}

impl Ops {
    fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Where a backend's own request count comes from.
enum Counter {
    Redis(CommandStats),
    Memcached(Vec<String>),
    Dynamo(Ops),
}

impl Counter {
    /// Redis: calls per command name so far (other backends: empty).
    async fn detail(&mut self) -> Result<BTreeMap<String, u64>, Error> {
        Ok(match self {
            Self::Redis(stats) => stats.calls().await?,
            _ => BTreeMap::new(),
        })
    }

    async fn total(&mut self) -> Result<u64, Error> {
        Ok(match self {
            Self::Redis(stats) => round_trips(&stats.calls().await?),
            Self::Memcached(nodes) => memcached_requests(nodes).await?,
            Self::Dynamo(ops) => ops.snapshot().values().sum(),
        })
    }
}

/// One request of a kind, averaged over [`N`].
#[derive(Debug, Default, Clone)]
struct Row {
    calls: f64,
    call_detail: String,
    round_trips: f64,
    /// Redis: commands by name (scripts' inner commands included).
    commands: BTreeMap<String, f64>,
    ops: BTreeMap<String, f64>,
    /// DynamoDB: read and write capacity units per request.
    rcu: f64,
    wcu: f64,
    /// The record's size (offstate's count) and item size (DynamoDB's).
    record_bytes: usize,
    item_bytes: usize,
}

/// Sessions with the given size in the measured store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Size {
    Typical,
    Large,
}

/// A response's `Set-Cookie` `name=value`, if any.
async fn request(
    app: &Router,
    method: Method,
    path: &str,
    cookie: Option<&str>,
    form: Option<&str>,
) -> Result<Option<String>, Error> {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        builder = builder.header(COOKIE, cookie);
    }
    let body = match form {
        Some(form) => {
            builder = builder.header(CONTENT_TYPE, "application/x-www-form-urlencoded");
            Body::from(form.to_owned())
        }
        None => Body::empty(),
    };
    let response = app.clone().oneshot(builder.body(body)?).await?;
    let status = response.status();
    let set = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let bytes = response.into_body().collect().await?.to_bytes();
    if !(status.is_success() || status.is_redirection()) {
        return Err(format!("{path}: {status}: {}", String::from_utf8_lossy(&bytes)).into());
    }
    Ok(set)
}

/// The session ID in a `name=value` cookie.
fn id_of(cookie: &str) -> Option<SessionId> {
    SessionId::parse(cookie.split_once('=')?.1).ok()
}

/// DynamoDB's size of an attribute value, with numbers at their real
/// size (one byte per two significant digits, plus one).
fn value_size(value: &AttributeValue) -> usize {
    match value {
        AttributeValue::S(s) => s.len(),
        AttributeValue::B(b) => b.as_ref().len(),
        AttributeValue::N(n) => n.trim_start_matches('0').len().div_ceil(2) + 1,
        AttributeValue::M(map) => {
            3 + map
                .iter()
                .map(|(k, v)| k.len() + value_size(v) + 1)
                .sum::<usize>()
        }
        AttributeValue::L(list) => 3 + list.iter().map(|v| value_size(v) + 1).sum::<usize>(),
        _ => 1,
    }
}

/// Sizes of the record under `cookie`'s session: offstate's count, the
/// DynamoDB item size, and the principal index entry size (0 without a
/// principal). Not counted: read straight from the wrapped store, between
/// measurements.
async fn sizes<S: SessionStore>(
    store: &S,
    dynamo: Option<&DynamoDbStore>,
    cookie: &str,
    now: Timestamp,
) -> (usize, usize, usize) {
    let Some(key) = id_of(cookie).map(|id| id.key()) else {
        return (0, 0, 0);
    };
    let Ok(Some(record)) = store.load(&key, now).await else {
        return (0, 0, 0);
    };
    let Some(dynamo) = dynamo else {
        return (record.size(), 0, 0);
    };
    let names = dynamo.attributes();
    let item = encode_item(names, &dynamo.store_key(&key), &record);
    let item_bytes: usize = item.iter().map(|(k, v)| k.len() + value_size(v)).sum();
    // An index entry: its keys and projected attributes plus 100 bytes.
    let index_bytes = record.principal.as_ref().map_or(0, |_| {
        [&names.principal, &names.key, &names.idle, &names.absolute]
            .iter()
            .filter_map(|n| item.get(n.as_str()).map(|v| n.len() + value_size(v)))
            .sum::<usize>()
            + 100
    });
    (record.size(), item_bytes, index_bytes)
}

fn units(bytes: usize, per: usize) -> f64 {
    bytes.max(1).div_ceil(per) as f64
}

/// Capacity units of the operations one request made, from the sizes of
/// the record before and after it (strongly consistent reads: 1 RCU per
/// 4 KiB; writes: 1 WCU per KiB of the larger of before and after, plus
/// one index write per KiB of index entry when the item has a principal).
fn capacity(
    ops: &BTreeMap<String, u64>,
    before: (usize, usize, usize),
    after: (usize, usize, usize),
) -> (f64, f64) {
    let (_, item_before, index_before) = before;
    let (_, item_after, index_after) = after;
    let mut rcu = 0.0;
    let mut wcu = 0.0;
    for (op, n) in ops {
        let n = *n as f64;
        match op.as_str() {
            "GetItem" => rcu += n * units(item_before, 4096),
            "PutItem" => {
                wcu += n * units(item_after, 1024);
                if index_after > 0 {
                    wcu += n * units(index_after, 1024);
                }
            }
            "UpdateItem" => {
                wcu += n * units(item_before.max(item_after), 1024);
                if index_after > 0 {
                    wcu += n * units(index_after, 1024);
                }
            }
            "DeleteItem" => {
                wcu += n * units(item_before, 1024);
                if index_before > 0 {
                    wcu += n * units(index_before, 1024);
                }
            }
            // An eventually consistent index read: 0.5 RCU per 4 KiB.
            "Query" => rcu += n * 0.5,
            _ => {}
        }
    }
    (rcu, wcu)
}

/// Everything one backend needs for a run.
struct Rig<S: SessionStore> {
    counting: CountingStore<S>,
    sessions: Sessions,
    clock: ManualClock,
    counter: Counter,
    dynamo: Option<DynamoDbStore>,
    ops: Option<Ops>,
}

impl<S: SessionStore + Clone> Rig<S> {
    /// The app over `store` (counted), behind a cache if `cache`.
    fn new(
        store: S,
        counter: Counter,
        cache: Option<Box<dyn FnOnce(CountingStore<S>) -> Sessions>>,
        dynamo: Option<DynamoDbStore>,
        ops: Option<Ops>,
    ) -> Self {
        let counting = CountingStore::new(store);
        let clock = ManualClock::new();
        let sessions = match cache {
            Some(wrap) => wrap(counting.clone()),
            None => Sessions::new(counting.clone()),
        }
        .with_clock(Arc::new(clock.clone()));
        Self {
            counting,
            sessions,
            clock,
            counter,
            dynamo,
            ops,
        }
    }

    /// A session with a cart of three items (and, if large, 24 KiB more),
    /// made outside the measurement.
    async fn session(&mut self, app: &Router, size: Size) -> Result<String, Error> {
        let cookie = request(app, Method::POST, "/cart/add", None, Some("item=apple"))
            .await?
            .ok_or("no cookie")?;
        for item in ["pear", "bread"] {
            request(
                app,
                Method::POST,
                "/cart/add",
                Some(&cookie),
                Some(&format!("item={item}")),
            )
            .await?;
        }
        if size == Size::Large {
            let id = id_of(&cookie).ok_or("cookie holds no ID")?;
            let session = self.sessions.load(&id).await?.ok_or("gone")?;
            session.insert("history", &"x".repeat(LARGE_EXTRA)).await?;
            session.save().await?;
        }
        Ok(cookie)
    }

    fn now(&self) -> Timestamp {
        use offstate_core::Clock as _;
        self.clock.now()
    }

    /// Measures `N` requests of one kind; `step` makes one and returns the
    /// cookie it left (for sizes after).
    async fn measure(
        &mut self,
        app: &Router,
        mut prepare: Vec<Option<String>>,
        kind: &str,
    ) -> Result<Row, Error> {
        let mut row = Row::default();
        let mut calls = CallCounts::default();
        for cookie in prepare.drain(..) {
            let now = self.now();
            let before = match &cookie {
                Some(c) => sizes(self.counting.get_ref(), self.dynamo.as_ref(), c, now).await,
                None => (0, 0, 0),
            };
            if kind.starts_with("read past") {
                // Past a quarter of the 30-minute idle timeout.
                self.clock.advance(Duration::from_secs(8 * 60));
            }
            let ops_before = self.ops.as_ref().map(Ops::snapshot).unwrap_or_default();
            let counted = self.counting.counts();
            let trips = self.counter.total().await?;
            let commands_before = self.counter.detail().await?;
            let c = cookie.as_deref();
            let left = match kind {
                k if k.starts_with("anonymous") => {
                    request(app, Method::GET, "/", None, None).await?
                }
                k if k.starts_with("first add") => {
                    request(app, Method::POST, "/cart/add", None, Some("item=apple")).await?
                }
                k if k.starts_with("read") => request(app, Method::GET, "/", c, None).await?,
                k if k.starts_with("add") => {
                    request(app, Method::POST, "/cart/add", c, Some("item=tea")).await?
                }
                k if k.starts_with("login") => {
                    let user = format!("user={}", &SessionId::generate().to_string()[..12]);
                    request(app, Method::POST, "/login", c, Some(&user)).await?
                }
                _ => request(app, Method::POST, "/logout", c, None).await?,
            };
            row.round_trips += (self.counter.total().await? - trips) as f64;
            for (name, n) in self.counter.detail().await? {
                let d = n - commands_before.get(&name).copied().unwrap_or(0);
                if d > 0 && name != "info" && name != "config" {
                    *row.commands.entry(name).or_default() += d as f64;
                }
            }
            let after_counts = self.counting.counts();
            calls.load += after_counts.load - counted.load;
            calls.create += after_counts.create - counted.create;
            calls.save += after_counts.save - counted.save;
            calls.touch += after_counts.touch - counted.touch;
            calls.delete += after_counts.delete - counted.delete;
            calls.principal += after_counts.principal - counted.principal;
            let ops_after = self.ops.as_ref().map(Ops::snapshot).unwrap_or_default();
            let ops: BTreeMap<String, u64> = ops_after
                .iter()
                .map(|(k, v)| (k.clone(), v - ops_before.get(k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect();
            let after_cookie = left.or(cookie);
            let after = match &after_cookie {
                Some(c) => {
                    sizes(self.counting.get_ref(), self.dynamo.as_ref(), c, self.now()).await
                }
                None => (0, 0, 0),
            };
            let (rcu, wcu) = capacity(&ops, before, after);
            row.rcu += rcu;
            row.wcu += wcu;
            for (op, n) in ops {
                *row.ops.entry(op).or_default() += n as f64;
            }
            row.record_bytes = row.record_bytes.max(before.0.max(after.0));
            row.item_bytes = row.item_bytes.max(before.1.max(after.1));
        }
        let n = N as f64;
        row.round_trips /= n;
        row.rcu /= n;
        for v in row.commands.values_mut() {
            *v /= n;
        }
        row.wcu /= n;
        for v in row.ops.values_mut() {
            *v /= n;
        }
        row.calls = calls.total() as f64 / n;
        let mut detail = Vec::new();
        for (name, v) in [
            ("load", calls.load),
            ("create", calls.create),
            ("save", calls.save),
            ("touch", calls.touch),
            ("delete", calls.delete),
            ("principal", calls.principal),
        ] {
            if v > 0 {
                detail.push(format!("{} {name}", fmt(v as f64 / n)));
            }
        }
        row.call_detail = if detail.is_empty() {
            "none".into()
        } else {
            detail.join(" + ")
        };
        Ok(row)
    }

    /// All kinds, for sessions of `size`.
    async fn run(&mut self, size: Size) -> Result<Vec<Row>, Error> {
        let app = app(self.sessions.clone(), AppConfig::new("capacity"));
        let mut rows = Vec::new();
        for kind in KINDS {
            let cookies: Vec<Option<String>> = if kind.starts_with("anonymous")
                || kind.starts_with("first add")
            {
                vec![None; N as usize]
            } else if kind.starts_with("read") || kind.starts_with("add") {
                // One session, N requests on it.
                let cookie = self.session(&app, size).await?;
                // Warm the cache (if any) and let the first read be a read.
                request(&app, Method::GET, "/", Some(&cookie), None).await?;
                vec![Some(cookie); N as usize]
            } else if kind.starts_with("login") {
                let mut v = Vec::new();
                for _ in 0..N {
                    let cookie = self.session(&app, size).await?;
                    request(&app, Method::GET, "/", Some(&cookie), None).await?;
                    v.push(Some(cookie));
                }
                v
            } else {
                // Logout of a logged-in session.
                let mut v = Vec::new();
                for _ in 0..N {
                    let cookie = self.session(&app, size).await?;
                    let user = format!("user={}", &SessionId::generate().to_string()[..12]);
                    let cookie = request(&app, Method::POST, "/login", Some(&cookie), Some(&user))
                        .await?
                        .unwrap_or(cookie);
                    request(&app, Method::GET, "/", Some(&cookie), None).await?;
                    v.push(Some(cookie));
                }
                v
            };
            rows.push(self.measure(&app, cookies, kind).await?);
        }
        Ok(rows)
    }
}

fn fmt(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn print_table(title: &str, unit: &str, rows: &[Row], dynamo: bool) {
    println!("\n### {title}\n");
    let redis = rows.iter().any(|r| !r.commands.is_empty());
    if dynamo {
        println!("| request | store calls | {unit} | operations | RCU | WCU | item bytes |");
        println!("|---|---|---|---|---|---|---|");
    } else {
        let extra = if redis { " Redis commands |" } else { "" };
        let line = if redis { "---|" } else { "" };
        println!("| request | store calls | {unit} | record bytes |{extra}");
        println!("|---|---|---|---|{line}");
    }
    for (kind, row) in KINDS.iter().zip(rows) {
        if dynamo {
            let ops: Vec<String> = row
                .ops
                .iter()
                .map(|(op, n)| format!("{} {op}", fmt(*n)))
                .collect();
            println!(
                "| {kind} | {} | {} | {} | {} | {} | {} |",
                row.call_detail,
                fmt(row.round_trips),
                if ops.is_empty() {
                    "none".into()
                } else {
                    ops.join(" + ")
                },
                fmt(row.rcu),
                fmt(row.wcu),
                row.item_bytes
            );
        } else {
            let commands: Vec<String> = row
                .commands
                .iter()
                // `script|load`: no pipe inside a Markdown table cell.
                .map(|(c, n)| format!("{} {}", fmt(*n), c.replace('|', " ")))
                .collect();
            let commands = if redis {
                format!(" {} |", commands.join(" + "))
            } else {
                String::new()
            };
            println!(
                "| {kind} | {} | {} | {} |{commands}",
                row.call_detail,
                fmt(row.round_trips),
                row.record_bytes,
            );
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    println!(
        "Counted by `cargo run -p offstate-bench --bin capacity` (counts do not depend on the build); {N} requests of each kind, figures per request."
    );
    for cache in [false, true] {
        let label = if cache { ", local cache" } else { "" };
        for size in [Size::Typical, Size::Large] {
            let size_label = if size == Size::Typical {
                "typical session (3-item cart)"
            } else {
                "large session (cart + 24 KiB)"
            };

            // Redis: its own server, statistics reset.
            let redis = offstate_testing::redis().via(Source::Process).await?;
            let mut stats = CommandStats::connect(redis.url()).await?;
            stats.reset().await?;
            let config = redis.config().clone();
            let channel = if cache {
                Some(RedisInvalidationChannel::from_connection(
                    redis.store().connection().clone(),
                    &config,
                )?)
            } else {
                None
            };
            // With the cache, the write scripts announce themselves (one
            // round trip per write, no separate PUBLISH).
            let announcing = match &channel {
                Some(channel) => redis
                    .store()
                    .clone()
                    .with_announcements(channel.channel_name()),
                None => redis.store().clone(),
            };
            let wrap: Option<Box<dyn FnOnce(CountingStore<_>) -> Sessions>> =
                channel.map(|channel| -> Box<dyn FnOnce(CountingStore<_>) -> Sessions> {
                    Box::new(move |s| {
                        Sessions::new(CachedStore::builder(s).with_channel(channel).build())
                    })
                });
            let mut rig = Rig::new(announcing, Counter::Redis(stats), wrap, None, None);
            let rows = rig.run(size).await?;
            print_table(
                &format!("Redis, {size_label}{label}"),
                "round trips",
                &rows,
                false,
            );
            drop(rig);
            drop(redis);

            let memcached = offstate_testing::memcached().via(Source::Process).await?;
            let counter = Counter::Memcached(memcached.addresses().to_vec());
            let wrap: Option<Box<dyn FnOnce(CountingStore<_>) -> Sessions>> = if cache {
                Some(Box::new(|s| Sessions::new(CachedStore::builder(s).build())))
            } else {
                None
            };
            let mut rig = Rig::new(memcached.store().clone(), counter, wrap, None, None);
            let rows = rig.run(size).await?;
            print_table(
                &format!("memcached, {size_label}{label}"),
                "commands",
                &rows,
                false,
            );
            drop(rig);
            drop(memcached);

            let moto = offstate_testing::dynamodb().via(Source::Process).await?;
            let ops = Ops::default();
            let client_config = moto
                .client()
                .config()
                .to_builder()
                .interceptor(ops.clone())
                .build();
            let store =
                DynamoDbStore::from_client(Client::from_conf(client_config), moto.config().clone());
            let wrap: Option<Box<dyn FnOnce(CountingStore<_>) -> Sessions>> = if cache {
                Some(Box::new(|s| Sessions::new(CachedStore::builder(s).build())))
            } else {
                None
            };
            let mut rig = Rig::new(
                store.clone(),
                Counter::Dynamo(ops.clone()),
                wrap,
                Some(store),
                Some(ops),
            );
            let rows = rig.run(size).await?;
            print_table(
                &format!("DynamoDB, {size_label}{label}"),
                "requests",
                &rows,
                true,
            );
            drop(rig);
            drop(moto);
        }
    }
    Ok(())
}
