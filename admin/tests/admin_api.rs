//! The admin API over real stores: refused without the app's guard, list
//! and revoke on every store that can list (memory, Redis, DynamoDB),
//! revoke without listing on memcached, and health up and down.

// Test code: a failing expect is a failing test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use http_body_util::BodyExt as _;
use offstate_admin::{AdminApi, Health, RevokedAll, RevokedOne, SessionList, Status};
use offstate_core::testing::{Call, Fault, FaultyStore};
use offstate_core::{CountingStore, MemoryStore, SessionId, SessionStore, Sessions};
use serde_json::Value;
use tower::ServiceExt as _;

const TOKEN: &str = "Bearer operator-token";

/// The app's guard in these tests: a bearer token.
async fn operators_only(request: Request, next: Next) -> Result<Response, StatusCode> {
    let auth = request.headers().get("authorization");
    if auth.and_then(|v| v.to_str().ok()) == Some(TOKEN) {
        Ok(next.run(request).await)
    } else {
        Err(StatusCode::UNAUTHORIZED)
    }
}

fn admin(sessions: Sessions) -> Router {
    Router::new().nest(
        "/admin",
        AdminApi::new(sessions)
            .guarded_by(middleware::from_fn(operators_only))
            .router(),
    )
}

/// Sends a request with or without the token; the status and JSON body.
async fn call(app: &Router, method: Method, path: &str, token: bool) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if token {
        request = request.header("authorization", TOKEN);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(format!("{bytes:?}")))
    };
    (status, body)
}

fn unique(tag: &str) -> String {
    format!("{tag}-{}", &SessionId::generate().to_string()[..10])
}

/// Logs `principal` in on a new session holding a secret value; its ID.
async fn login(sessions: &Sessions, principal: &str, secret: &str) -> SessionId {
    let session = sessions.new_session();
    session.insert("cart", &vec![secret]).await.unwrap();
    session.insert("lang", "en").await.unwrap();
    session.set_principal(principal).await.unwrap();
    session.save().await.unwrap();
    session.id().expect("saved")
}

#[tokio::test]
async fn refused_without_the_guard() {
    // Compile time: `AdminApi::new(sessions).router()` does not exist (the
    // compile_fail doc test on AdminApi). Run time: the guard runs before
    // every endpoint, and a refused request never reaches the store.
    let store = CountingStore::new(MemoryStore::new());
    let app = admin(Sessions::new(store.clone()));
    for (method, path) in [
        (Method::GET, "/admin/principals/alice/sessions"),
        (Method::DELETE, "/admin/principals/alice/sessions"),
        (
            Method::DELETE,
            "/admin/sessions/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        (Method::GET, "/admin/health"),
        (Method::GET, "/admin/no-such-endpoint"),
    ] {
        let (status, _) = call(&app, method.clone(), path, false).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    assert_eq!(
        store.counts().total(),
        0,
        "a refused request reached the store"
    );
    let (status, _) = call(&app, Method::GET, "/admin/health", true).await;
    assert_eq!(status, StatusCode::OK);
}

/// List, revoke one, revoke all, health, on a store that can list.
async fn list_and_revoke(sessions: Sessions) {
    let alice = unique("alice");
    let bob = unique("bob");
    let first = login(&sessions, &alice, "secret-apple").await;
    let second = login(&sessions, &alice, "secret-pear").await;
    let bobs = login(&sessions, &bob, "secret-fig").await;
    let app = admin(sessions.clone());

    let path = format!("/admin/principals/{alice}/sessions");
    let (status, body) = call(&app, Method::GET, &path, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.to_string();
    for never in [
        "secret-apple",
        "secret-pear",
        &first.to_string(),
        &second.to_string(),
    ] {
        assert!(!text.contains(never), "the listing shows {never:?}: {text}");
    }
    let list: SessionList = serde_json::from_value(body).unwrap();
    assert_eq!(list.principal, alice);
    assert_eq!(list.store, sessions.store_name());
    let mut keys: Vec<_> = list.sessions.iter().map(|s| s.key.clone()).collect();
    keys.sort();
    let mut expected = vec![first.key().to_string(), second.key().to_string()];
    expected.sort();
    assert_eq!(keys, expected);
    for summary in &list.sessions {
        assert_eq!(summary.keys, vec!["cart".to_owned(), "lang".to_owned()]);
        assert!(summary.size_bytes > 0);
        assert!(summary.idle_deadline_ms.is_some());
        assert!(summary.expires_at_ms.is_some());
        let last = summary.last_write_at_ms.expect("idle timeout is set");
        assert!(last >= summary.created_at_ms);
    }

    // Revoke one: it is gone, the other stays, Bob is untouched.
    let path_one = format!("/admin/sessions/{}", first.key());
    let (status, body) = call(&app, Method::DELETE, &path_one, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one: RevokedOne = serde_json::from_value(body).unwrap();
    assert!(one.revoked);
    assert!(sessions.load(&first).await.unwrap().is_none());
    assert!(sessions.load(&second).await.unwrap().is_some());
    let (_, body) = call(&app, Method::DELETE, &path_one, true).await;
    let again: RevokedOne = serde_json::from_value(body).unwrap();
    assert!(!again.revoked, "revoking twice is not an error and says so");

    let (_, body) = call(&app, Method::GET, &path, true).await;
    let list: SessionList = serde_json::from_value(body).unwrap();
    assert_eq!(list.sessions.len(), 1);
    assert_eq!(list.sessions[0].key, second.key().to_string());

    // Revoke all of Alice's.
    let (status, body) = call(&app, Method::DELETE, &path, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all: RevokedAll = serde_json::from_value(body).unwrap();
    assert_eq!(all.revoked, Some(1));
    assert!(sessions.load(&second).await.unwrap().is_none());
    assert!(
        sessions.load(&bobs).await.unwrap().is_some(),
        "Bob's session was ended"
    );
    let (_, body) = call(&app, Method::GET, &path, true).await;
    let list: SessionList = serde_json::from_value(body).unwrap();
    assert!(list.sessions.is_empty());

    // A malformed key is a 400, not a store call.
    let (status, body) = call(&app, Method::DELETE, "/admin/sessions/not-a-key", true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "bad_key");

    let (status, body) = call(&app, Method::GET, "/admin/health", true).await;
    assert_eq!(status, StatusCode::OK);
    let health: Health = serde_json::from_value(body).unwrap();
    assert_eq!(health.status, Status::Up);
    assert_eq!(health.store, sessions.store_name());
    assert!(health.capabilities.list_principal);
}

#[tokio::test]
async fn list_and_revoke_on_memory() {
    list_and_revoke(Sessions::new(MemoryStore::new())).await;
}

#[tokio::test]
async fn list_and_revoke_on_redis() {
    let redis = offstate_testing::redis().await.expect("redis");
    list_and_revoke(Sessions::new(redis.store().clone())).await;
}

#[tokio::test]
async fn list_and_revoke_on_redis_cluster() {
    let redis = offstate_testing::redis_cluster()
        .await
        .expect("redis cluster");
    list_and_revoke(Sessions::new(redis.store().clone())).await;
}

#[tokio::test]
async fn list_and_revoke_on_dynamodb() {
    let moto = offstate_testing::dynamodb().shared().await.expect("moto");
    list_and_revoke(Sessions::new(moto.store().clone())).await;
}

/// Pages of a listing: `limit` at most, each page's records read and no
/// others, the cursor leading through every session exactly once, and 400
/// for a limit or a cursor the API does not take.
async fn list_in_pages(store: impl SessionStore) {
    let counting = CountingStore::new(store);
    let sessions = Sessions::new(counting.clone());
    let alice = unique("alice");
    let mut expected = Vec::new();
    for n in 0..5 {
        let id = login(&sessions, &alice, &format!("secret-{n}")).await;
        expected.push(id.key().to_string());
    }
    expected.sort();
    let app = admin(sessions.clone());
    let path = format!("/admin/principals/{alice}/sessions");

    // The default page holds all five: no next page.
    let (status, body) = call(&app, Method::GET, &path, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["next_cursor"].is_null(), "{body}");
    let list: SessionList = serde_json::from_value(body).unwrap();
    assert_eq!(list.sessions.len(), 5);

    // Pages of two: 2, 2, 1, in key order, each read only its own records.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut sizes = Vec::new();
    loop {
        let query = match &cursor {
            Some(c) => format!("{path}?limit=2&cursor={c}"),
            None => format!("{path}?limit=2"),
        };
        counting.reset();
        let (status, body) = call(&app, Method::GET, &query, true).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page: SessionList = serde_json::from_value(body).unwrap();
        assert_eq!(counting.counts().load, page.sessions.len() as u64);
        assert_eq!(counting.counts().principal, 1);
        let created: Vec<u64> = page.sessions.iter().map(|s| s.created_at_ms).collect();
        assert!(created.is_sorted(), "a page is oldest first: {created:?}");
        let mut keys: Vec<String> = page.sessions.iter().map(|s| s.key.clone()).collect();
        keys.sort();
        if let Some(last) = seen.last() {
            assert!(keys[0] > *last, "pages follow the key order");
        }
        sizes.push(keys.len());
        seen.extend(keys);
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
        assert!(sizes.len() < 5, "the pages never end: {sizes:?}");
    }
    assert_eq!(sizes, [2, 2, 1]);
    assert_eq!(seen, expected, "every session once");

    // A session ended after the listing's cursor was given is left out,
    // and the page after it still ends the listing.
    let (_, body) = call(&app, Method::GET, &format!("{path}?limit=4"), true).await;
    let first: SessionList = serde_json::from_value(body).unwrap();
    let cursor = first.next_cursor.expect("a fifth session follows");
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/admin/sessions/{}", expected[4]),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, body) = call(
        &app,
        Method::GET,
        &format!("{path}?limit=4&cursor={cursor}"),
        true,
    )
    .await;
    let last: SessionList = serde_json::from_value(body).unwrap();
    assert!(last.sessions.is_empty() && last.next_cursor.is_none());

    for bad in ["limit=0", "limit=1001", "limit=lots", "limit=-1"] {
        counting.reset();
        let (status, body) = call(&app, Method::GET, &format!("{path}?{bad}"), true).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_limit", "{bad}");
        assert_eq!(counting.counts().total(), 0, "{bad} reached the store");
    }
    let (status, body) = call(&app, Method::GET, &format!("{path}?limit=1000"), true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = call(&app, Method::GET, &format!("{path}?cursor=page-2"), true).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "bad_cursor");
}

#[tokio::test]
async fn list_in_pages_on_memory() {
    list_in_pages(MemoryStore::new()).await;
}

#[tokio::test]
async fn list_in_pages_on_redis() {
    let redis = offstate_testing::redis().await.expect("redis");
    list_in_pages(redis.store().clone()).await;
}

/// Memcached cannot list keys: the listing is a 501 that says so, and
/// health says `list_principal: false`. It still revokes: one session by
/// its key, and all of a principal's through the principal's epoch (the
/// count is `null`: the store cannot know how many there were).
#[tokio::test]
async fn memcached_revokes_without_listing() {
    let memcached = offstate_testing::memcached().await.expect("memcached");
    let sessions = Sessions::new(memcached.store().clone());
    let alice = unique("alice");
    let first = login(&sessions, &alice, "secret-apple").await;
    let second = login(&sessions, &alice, "secret-pear").await;
    let third = login(&sessions, &alice, "secret-fig").await;
    let app = admin(sessions.clone());

    let path = format!("/admin/principals/{alice}/sessions");
    let (status, body) = call(&app, Method::GET, &path, true).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert_eq!(body["error"], "unsupported");

    let (_, body) = call(&app, Method::GET, "/admin/health", true).await;
    let health: Health = serde_json::from_value(body).unwrap();
    assert_eq!(health.status, Status::Up);
    assert!(!health.capabilities.list_principal);

    // One session by key (an operator has it from a log line or the app).
    let (status, body) = call(
        &app,
        Method::DELETE,
        &format!("/admin/sessions/{}", first.key()),
        true,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let one: RevokedOne = serde_json::from_value(body).unwrap();
    assert!(one.revoked);
    assert!(sessions.load(&first).await.unwrap().is_none());
    assert!(sessions.load(&second).await.unwrap().is_some());

    let (status, body) = call(&app, Method::DELETE, &path, true).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let all: RevokedAll = serde_json::from_value(body).unwrap();
    assert_eq!(all.revoked, None, "memcached cannot count what it revoked");
    assert!(sessions.load(&second).await.unwrap().is_none());
    assert!(sessions.load(&third).await.unwrap().is_none());
}

#[tokio::test]
async fn health_is_503_when_the_store_does_not_answer() {
    let store = FaultyStore::new(MemoryStore::new());
    store.inject(Call::Load, Fault::Unavailable);
    let app = admin(Sessions::new(store.clone()));
    let (status, body) = call(&app, Method::GET, "/admin/health", true).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let health: Health = serde_json::from_value(body).unwrap();
    assert_eq!(health.status, Status::Down);
    assert!(health.error.expect("a reason").contains("unavailable"));

    // And a listing through a failing store is a 503 with a code.
    store.inject(Call::ListPrincipal, Fault::Unavailable);
    let (status, body) = call(&app, Method::GET, "/admin/principals/a/sessions", true).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "store_unavailable");
    // A store that does not answer in time is a 504 with its own code.
    store.inject(Call::RevokePrincipal, Fault::TimeoutBefore);
    let (status, body) = call(&app, Method::DELETE, "/admin/principals/a/sessions", true).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body["error"], "store_timeout");
    // The probe is a read: nothing was written.
    assert!(
        store
            .get_ref()
            .ping(offstate_core::Timestamp::now())
            .await
            .is_ok()
    );
}
