//! The `offstate` binary against real servers: ping, sessions, revoke and
//! stats on Redis, DynamoDB (moto) and memcached; bad URLs and unreachable
//! stores give a one-line reason and the documented exit code, never a
//! panic.

// Test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use offstate_admin::{RevokedAll, SessionList};
use offstate_core::{SessionId, Sessions};
use serde_json::Value;

/// Runs the built binary with `args` and no `OFFSTATE_STORE` from outside.
fn offstate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offstate"))
        .args(args)
        .env_remove("OFFSTATE_STORE")
        // moto takes any credentials; the tool reads them as on AWS.
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .output()
        .expect("run offstate")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Exit code `code`, one line on stderr that starts with `offstate:` and
/// contains `says`, and no panic.
fn assert_fails(output: &Output, code: i32, says: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    assert!(err.starts_with("offstate: "), "{err}");
    assert!(err.contains(says), "expected {says:?} in {err}");
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "stderr: {}", stderr(output));
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", &SessionId::generate().to_string()[..10])
}

async fn login(sessions: &Sessions, principal: &str) -> SessionId {
    let session = sessions.new_session();
    session.insert("cart", &vec!["secret-apple"]).await.unwrap();
    session.set_principal(principal).await.unwrap();
    session.save().await.unwrap();
    session.id().expect("saved")
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// sessions, revoke (by key, by user, from a file) and stats on a store
/// that can list, through `url`.
async fn sessions_and_revoke(sessions: &Sessions, url: &str) {
    let alice = unique("alice");
    let bob = unique("bob");
    let first = login(sessions, &alice).await;
    let second = login(sessions, &alice).await;
    let bobs = login(sessions, &bob).await;

    let out = offstate(&["--store", url, "--json", "sessions", "--user", &alice]);
    let text = stdout(&out);
    assert!(!text.contains("secret-apple") && !text.contains(&first.to_string()));
    let list: SessionList = serde_json::from_value(json(&out)).unwrap();
    let mut keys: Vec<_> = list.sessions.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    let mut expected = vec![first.key().to_string(), second.key().to_string()];
    expected.sort();
    assert_eq!(keys, expected);
    assert!(list.sessions.iter().all(|s| s.keys == ["cart"]));

    // One page at a time: --limit, then the --cursor the page gave.
    let out = offstate(&[
        "--store", url, "--json", "sessions", "--user", &alice, "--limit", "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let page: SessionList = serde_json::from_value(json(&out)).unwrap();
    assert_eq!(page.sessions.len(), 1);
    let cursor = page.next_cursor.expect("a second page");
    let out = offstate(&[
        "--store", url, "--json", "sessions", "--user", &alice, "--limit", "1", "--cursor", &cursor,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let last: SessionList = serde_json::from_value(json(&out)).unwrap();
    assert!(last.next_cursor.is_none());
    let paged = vec![page.sessions[0].key.clone(), last.sessions[0].key.clone()];
    assert_eq!(paged, expected, "two pages of one, in key order");
    let out = offstate(&["--store", url, "sessions", "--user", &alice, "--limit", "1"]);
    assert!(
        stdout(&out).contains(&format!("more: --limit <n> --cursor {cursor}")),
        "{}",
        stdout(&out)
    );
    assert_fails(
        &offstate(&["--store", url, "sessions", "--user", &alice, "--limit", "0"]),
        2,
        "1 to 1000",
    );

    // Text output for people: a header and one row per session.
    let out = offstate(&["--store", url, "sessions", "--user", &alice]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).starts_with("2 live session(s)"),
        "{}",
        stdout(&out)
    );

    let key = first.key().to_string();
    let out = offstate(&["--store", url, "revoke", "--key", &key]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("revoked session"));
    assert!(sessions.load(&first).await.unwrap().is_none());
    assert!(sessions.load(&second).await.unwrap().is_some());

    let out = offstate(&["--store", url, "--json", "revoke", "--user", &alice]);
    let revoked: RevokedAll = serde_json::from_value(json(&out)).unwrap();
    assert_eq!(revoked.revoked, Some(1));
    assert!(sessions.load(&second).await.unwrap().is_none());
    assert!(sessions.load(&bobs).await.unwrap().is_some());

    // An incident's list of users from a file.
    let dir = std::env::temp_dir().join(unique("offstate-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("users.txt");
    std::fs::write(&file, format!("# compromised\n{bob}\n\n{alice}\n")).unwrap();
    let out = offstate(&[
        "--store",
        url,
        "--json",
        "revoke",
        "--users-from",
        file.to_str().unwrap(),
    ]);
    let all: Vec<RevokedAll> = serde_json::from_value(json(&out)).unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(
        (all[0].principal.as_str(), all[0].revoked),
        (bob.as_str(), Some(1))
    );
    assert!(sessions.load(&bobs).await.unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();

    let out = offstate(&["--store", url, "--json", "revoke", "--key", "short"]);
    assert_fails(&out, 2, "not a session key");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_sessions_revoke_stats_ping() {
    let redis = offstate_testing::redis().await.expect("redis");
    let url = redis.url().to_owned();
    let sessions = Sessions::new(redis.store().clone());
    sessions_and_revoke(&sessions, &url).await;

    login(&sessions, &unique("carol")).await;
    let stats = json(&offstate(&["--store", &url, "--json", "stats"]));
    assert_eq!(stats["store"], "redis");
    assert!(
        stats["figures"]["sessions"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["figures"]["used_memory"].as_u64().is_some(),
        "{stats}"
    );

    let out = offstate(&["ping", "--store", &url]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).starts_with("ok: the redis store answered"));
}

#[tokio::test(flavor = "multi_thread")]
async fn dynamodb_sessions_revoke_stats_ping() {
    let moto = offstate_testing::dynamodb().shared().await.expect("moto");
    let host = moto.endpoint().trim_start_matches("http://");
    let url = format!("dynamodb://{host}/{}", moto.config().table());
    let sessions = Sessions::new(moto.store().clone());
    sessions_and_revoke(&sessions, &url).await;

    let stats = json(&offstate(&["--store", &url, "--json", "stats"]));
    assert_eq!(stats["store"], "dynamodb");
    assert_eq!(stats["figures"]["table"], moto.config().table());
    let health = json(&offstate(&["--store", &url, "--json", "ping"]));
    assert_eq!(health["status"], "up");

    // A table that does not exist: the tool never creates one, and says so.
    let missing = format!("dynamodb://{host}/{}", unique("no-such-table"));
    let out = offstate(&["--store", &missing, "ping"]);
    assert_fails(&out, 1, "does not answer");
}

/// Memcached cannot list: `sessions` exits 3 and says why; revoking a
/// user still works (through the principal's epoch), and stats reads
/// every node.
#[tokio::test(flavor = "multi_thread")]
async fn memcached_revokes_without_listing() {
    let memcached = offstate_testing::memcached_cluster(2)
        .await
        .expect("memcached");
    let url = format!("memcached://{}", memcached.addresses().join(","));
    let sessions = Sessions::new(memcached.store().clone());
    let alice = unique("alice");
    let first = login(&sessions, &alice).await;
    let second = login(&sessions, &alice).await;

    let out = offstate(&["--store", &url, "sessions", "--user", &alice]);
    assert_fails(&out, 3, "cannot list");

    let out = offstate(&["--store", &url, "revoke", "--user", &alice]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("does not count them"),
        "{}",
        stdout(&out)
    );
    assert!(sessions.load(&first).await.unwrap().is_none());
    assert!(sessions.load(&second).await.unwrap().is_none());

    let stats = json(&offstate(&["--store", &url, "--json", "stats"]));
    assert!(
        stats["figures"]["total.curr_items"].as_u64().is_some(),
        "{stats}"
    );
    for node in memcached.addresses() {
        assert!(
            stats["figures"][format!("node.{node}.bytes")].is_u64(),
            "{stats}"
        );
    }
    let out = offstate(&["--store", &url, "ping"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn bad_urls_are_usage_errors() {
    assert_fails(&offstate(&["ping"]), 2, "no store");
    assert_fails(
        &offstate(&["--store", "postgres://db", "ping"]),
        2,
        "unknown store scheme",
    );
    assert_fails(
        &offstate(&["--store", "localhost:6379", "ping"]),
        2,
        "has no scheme",
    );
    assert_fails(
        &offstate(&["--store", "memcached://", "ping"]),
        2,
        "bad memcached:// store URL",
    );
    assert_fails(
        &offstate(&["--store", "dynamodb://h:1", "stats"]),
        2,
        "bad dynamodb:// store URL",
    );
    // clap's own usage errors exit 2 too.
    let out = offstate(&["sessions"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains("panicked"));
}

#[test]
fn unreachable_stores_exit_1_with_a_reason() {
    let port = closed_port();
    let started = std::time::Instant::now();
    let out = offstate(&["--store", &format!("redis://127.0.0.1:{port}"), "ping"]);
    assert_fails(&out, 1, "redis");
    let out = offstate(&["--store", &format!("memcached://127.0.0.1:{port}"), "ping"]);
    assert_fails(&out, 1, "does not answer");
    let out = offstate(&["--store", &format!("memcached://127.0.0.1:{port}"), "stats"]);
    assert_fails(&out, 1, "does not answer");
    let out = offstate(&["--store", &format!("dynamodb://127.0.0.1:{port}/t"), "ping"]);
    assert_fails(&out, 1, "does not answer");
    let out = offstate(&[
        "--store",
        &format!("redis://127.0.0.1:{port}"),
        "revoke",
        "--user",
        "a",
    ]);
    assert_fails(&out, 1, "redis");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the tool hung on a dead store: {:?}",
        started.elapsed()
    );
}

#[test]
fn memory_store_pings_and_has_nothing_to_list() {
    let out = offstate(&["--store", "memory://", "ping"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list = json(&offstate(&[
        "--store",
        "memory://",
        "--json",
        "sessions",
        "--user",
        "a",
    ]));
    assert_eq!(list["sessions"], Value::Array(vec![]));
}

/// Keys and cursors are base64url, so one in 32 starts with '-'; such a
/// value (and a user name like it) is a value, not an unknown option.
#[test]
fn values_that_start_with_a_dash_are_values() {
    let key = format!("-{}", "A".repeat(42));
    let out = offstate(&["--store", "memory://", "revoke", "--key", &key]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("no live session"), "{}", stdout(&out));

    let list = json(&offstate(&[
        "--store",
        "memory://",
        "--json",
        "sessions",
        "--user",
        "-z",
        "--limit",
        "1",
        "--cursor",
        &key,
    ]));
    assert_eq!(list["sessions"], Value::Array(vec![]));

    let out = offstate(&["--store", "memory://", "revoke", "--user", "-mallory"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A Redis cluster through one seed URL: the same sessions and revokes;
/// stats reads one node's INFO and says so instead of counting keys.
#[tokio::test(flavor = "multi_thread")]
async fn redis_cluster_sessions_revoke_stats() {
    let redis = offstate_testing::redis_cluster()
        .await
        .expect("redis cluster");
    let url = redis.url().to_owned();
    let sessions = Sessions::new(redis.store().clone());
    sessions_and_revoke(&sessions, &url).await;

    let stats = json(&offstate(&["--store", &url, "--json", "stats"]));
    assert!(
        stats["figures"]["total.used_memory"].as_u64().is_some(),
        "{stats}"
    );
    for url in redis.urls() {
        let node = url.trim_start_matches("redis://").trim_end_matches('/');
        assert!(
            stats["figures"][format!("node.{node}.used_memory")].is_u64(),
            "no figures for {node}: {stats}"
        );
    }
    assert!(stats["figures"]["sessions"].is_null(), "{stats}");
    assert!(
        stats["notes"][0].as_str().unwrap().starts_with("cluster"),
        "{stats}"
    );
}
