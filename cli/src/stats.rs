//! `offstate stats`: what the store's server says about itself, per
//! backend. Read-only: Redis `INFO` and a `SCAN` count of session keys,
//! DynamoDB `DescribeTable`, memcached `stats` on every node.

use std::collections::BTreeMap;
use std::time::Duration;

use indicatif::ProgressBar;
use offstate::connect::Backend;
use offstate_redis::redis;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};

/// How long one memcached node has to answer `stats`.
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// What `stats` prints.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The backend (`redis`, `dynamodb`, `memcached`, `memory`).
    store: &'static str,
    /// Figures by name; per-node figures are `node.<address>.<name>`.
    figures: BTreeMap<String, Value>,
    /// What the figures do not say.
    notes: Vec<String>,
}

/// Reads the statistics; an error is one line.
pub(crate) async fn collect(backend: &Backend, bar: &ProgressBar) -> Result<Report, String> {
    let mut report = Report {
        store: backend.scheme(),
        figures: BTreeMap::new(),
        notes: Vec::new(),
    };
    match backend {
        Backend::Memory(_) => report.notes.push(
            "a memory:// store lives inside one process; this tool's own is empty".to_owned(),
        ),
        Backend::Redis { store, config } => {
            let conn = store.connection();
            // One node answers text; a cluster fans INFO out to every
            // primary and answers a map of node to text.
            let info: redis::Value = conn
                .query(&redis::cmd("INFO"))
                .await
                .map_err(|e| offstate_admin::ops::error_line(&e))?;
            let nodes: Vec<(Option<String>, String)> =
                if let Ok(text) = redis::from_redis_value::<String>(info.clone()) {
                    vec![(None, text)]
                } else {
                    redis::from_redis_value::<BTreeMap<String, String>>(info)
                        .map_err(|e| format!("unexpected INFO answer: {e}"))?
                        .into_iter()
                        .map(|(node, text)| (Some(node), text))
                        .collect()
                };
            let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
            for (node, text) in &nodes {
                for (name, value) in text
                    .lines()
                    .filter_map(|line| line.trim().split_once(':'))
                    .filter(|(name, _)| REDIS_FIELDS.contains(name))
                {
                    let label = match node {
                        Some(node) => format!("node.{node}.{name}"),
                        None => (*name).to_owned(),
                    };
                    report.figures.insert(label, number(value));
                    if node.is_some()
                        && let Ok(n) = value.trim().parse::<u64>()
                        && let Some(field) = REDIS_FIELDS.iter().find(|f| **f == name)
                    {
                        *totals.entry(field).or_default() += n;
                    }
                }
            }
            for (name, total) in totals {
                if REDIS_SUMMED.contains(&name) {
                    report.figures.insert(format!("total.{name}"), json!(total));
                }
            }
            if conn.is_cluster() {
                report.notes.push(
                    "cluster: figures per primary and totals; session keys are not counted (SCAN is per node: redis-cli --cluster info counts keys)"
                        .to_owned(),
                );
            } else {
                let pattern = format!("{}s:*", config.key_prefix());
                let mut cursor = 0_u64;
                let mut count = 0_u64;
                loop {
                    let (next, keys): (u64, Vec<String>) = conn
                        .query(
                            redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(&pattern)
                                .arg("COUNT")
                                .arg(1000),
                        )
                        .await
                        .map_err(|e| offstate_admin::ops::error_line(&e))?;
                    count += keys.len() as u64;
                    bar.set_position(count);
                    cursor = next;
                    if cursor == 0 {
                        break;
                    }
                }
                report.figures.insert("sessions".to_owned(), json!(count));
            }
        }
        Backend::DynamoDb(store) => {
            let answer = store
                .client()
                .describe_table()
                .table_name(store.table())
                .send()
                .await
                .map_err(|e| offstate_admin::ops::error_line(&e))?;
            let table = answer.table.ok_or("DescribeTable returned no table")?;
            let figures = &mut report.figures;
            figures.insert("table".into(), json!(store.table()));
            figures.insert("items".into(), json!(table.item_count));
            figures.insert("table_size_bytes".into(), json!(table.table_size_bytes));
            figures.insert(
                "status".into(),
                json!(table.table_status.map(|s| s.as_str().to_owned())),
            );
            let billing = table
                .billing_mode_summary
                .and_then(|b| b.billing_mode)
                .map_or_else(|| "PROVISIONED".to_owned(), |m| m.as_str().to_owned());
            figures.insert("billing_mode".into(), json!(billing));
            if let Some(p) = table.provisioned_throughput {
                figures.insert("read_capacity_units".into(), json!(p.read_capacity_units));
                figures.insert("write_capacity_units".into(), json!(p.write_capacity_units));
            }
            for index in table.global_secondary_indexes.unwrap_or_default() {
                let name = index.index_name.unwrap_or_default();
                figures.insert(
                    format!("index.{name}.status"),
                    json!(index.index_status.map(|s| s.as_str().to_owned())),
                );
                figures.insert(format!("index.{name}.items"), json!(index.item_count));
            }
            report
                .notes
                .push("DynamoDB refreshes item counts and sizes about every six hours".to_owned());
        }
        Backend::Memcached(store) => {
            let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
            for node in store.config().nodes() {
                let stats = memcached_stats(node)
                    .await
                    .map_err(|e| format!("node {node}: {e}"))?;
                for name in MEMCACHED_FIELDS {
                    if let Some(value) = stats.get(*name) {
                        report
                            .figures
                            .insert(format!("node.{node}.{name}"), number(value));
                        if let Ok(n) = value.parse::<u64>() {
                            *totals.entry(name).or_default() += n;
                        }
                    }
                }
                bar.inc(1);
            }
            for (name, total) in totals {
                if name != "uptime" {
                    report.figures.insert(format!("total.{name}"), json!(total));
                }
            }
            report
                .notes
                .push("curr_items counts session records and per-principal epoch keys".to_owned());
        }
        _ => report.notes.push("no statistics for this store".to_owned()),
    }
    Ok(report)
}

/// The Redis `INFO` fields worth showing on call.
const REDIS_FIELDS: &[&str] = &[
    "redis_version",
    "redis_mode",
    "uptime_in_seconds",
    "connected_clients",
    "used_memory",
    "used_memory_peak",
    "maxmemory",
    "maxmemory_policy",
    "instantaneous_ops_per_sec",
    "total_commands_processed",
    "keyspace_hits",
    "keyspace_misses",
    "expired_keys",
    "evicted_keys",
    "rejected_connections",
];

/// The Redis figures that add up across a cluster's primaries.
const REDIS_SUMMED: &[&str] = &[
    "connected_clients",
    "used_memory",
    "instantaneous_ops_per_sec",
    "total_commands_processed",
    "keyspace_hits",
    "keyspace_misses",
    "expired_keys",
    "evicted_keys",
    "rejected_connections",
];

/// The memcached `stats` fields worth showing on call.
const MEMCACHED_FIELDS: &[&str] = &[
    "version",
    "uptime",
    "curr_connections",
    "curr_items",
    "bytes",
    "limit_maxbytes",
    "get_hits",
    "get_misses",
    "evictions",
    "cmd_get",
    "cmd_set",
];

/// One memcached node's `stats`.
async fn memcached_stats(node: &str) -> Result<BTreeMap<String, String>, String> {
    let work = async {
        let mut stream = tokio::net::TcpStream::connect(node)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"stats\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = BufReader::new(stream).lines();
        let mut stats = BTreeMap::new();
        while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
            if line == "END" {
                return Ok(stats);
            }
            let mut parts = line.splitn(3, ' ');
            if let (Some("STAT"), Some(name), Some(value)) =
                (parts.next(), parts.next(), parts.next())
            {
                stats.insert(name.to_owned(), value.to_owned());
            } else {
                return Err(format!("unexpected answer {line:?}"));
            }
        }
        Err("connection closed before END".to_owned())
    };
    tokio::time::timeout(NODE_TIMEOUT, work)
        .await
        .map_err(|_| format!("no answer within {NODE_TIMEOUT:?}"))?
}

/// A figure as a JSON number when it is one.
fn number(text: &str) -> Value {
    let text = text.trim();
    text.parse::<u64>()
        .map(Value::from)
        .or_else(|_| text.parse::<f64>().map(Value::from))
        .unwrap_or_else(|_| Value::from(text))
}

/// Prints a report as `name  value` lines.
pub(crate) fn print(report: &Report) {
    println!("store: {}", report.store);
    let width = report.figures.keys().map(String::len).max().unwrap_or(0);
    for (name, value) in &report.figures {
        let value = match value {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        println!("  {name:<width$}  {value}");
    }
    for note in &report.notes {
        println!("note: {note}");
    }
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS` UTC; `-` for none.
pub(crate) fn utc(ms: Option<u64>) -> String {
    let Some(ms) = ms else {
        return "-".to_owned();
    };
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(Some(0)), "1970-01-01 00:00:00");
        assert_eq!(utc(Some(1_709_210_096_000)), "2024-02-29 12:34:56");
        assert_eq!(utc(None), "-");
    }
}
