//! Abuse and resource limits at the middleware: floods of anonymous or
//! made-up requests cost the store nothing (or one cheap miss), oversized
//! input is refused with 431, a signature wrong anywhere is refused before
//! the store, and no session ID, cookie value or session value reaches the
//! logs at DEBUG or above.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use axum::Router;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, StatusCode};
use offstate_core::SessionError;
use offstate_core::{CountingStore, MemoryStore, SessionId, Sessions};
use offstate_tower::{Session, SessionLayer, SigningKey};
use support::*;

const FLOOD: usize = 10_000;

fn key() -> SigningKey {
    SigningKey::new([9u8; 32]).unwrap()
}

/// A made-up cookie value: a well-formed ID, or an ID with a tag of the
/// right length that was never issued, or plain garbage; all random.
fn random_value(i: usize) -> String {
    let a = SessionId::generate().to_string();
    let b = SessionId::generate().to_string();
    match i % 3 {
        0 => a,
        1 => format!("{a}.{b}{}", &SessionId::generate().to_string()[..11]),
        _ => format!("{}{}", &a[..(i % 31) + 1], &b[..(i % 17)]),
    }
}

#[tokio::test]
async fn anonymous_flood_on_read_only_pages_stores_nothing() {
    let store = CountingStore::new(MemoryStore::new());
    let app = app(SessionLayer::new(Sessions::new(store.clone())));
    for i in 0..FLOOD {
        let uri = if i % 2 == 0 { "/read" } else { "/untouched" };
        let response = send(&app, request("GET", uri, &[])).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            set_cookies(&response).is_empty(),
            "an anonymous read was given a cookie"
        );
    }
    let counts = store.counts();
    assert_eq!(
        counts.total(),
        0,
        "anonymous reads must not reach the store: {counts:?}"
    );
    assert_eq!(store.get_ref().len(), 0, "no session may exist");
    // Data written is what creates a session, and only then.
    let response = send(&app, request("POST", "/write", &[])).await;
    assert_eq!(set_cookies(&response).len(), 1);
    assert_eq!(store.counts().create, 1);
    assert_eq!(store.get_ref().len(), 1);
}

#[tokio::test]
async fn random_cookies_make_no_store_call_when_signed() {
    let store = CountingStore::new(MemoryStore::new());
    let app = app(SessionLayer::new(Sessions::new(store.clone())).with_signing_key(key()));
    for i in 0..FLOOD {
        let cookie = format!("__Host-offstate={}", random_value(i));
        let response = send(&app, request("GET", "/read", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK, "for {cookie}");
    }
    assert_eq!(
        store.counts().total(),
        0,
        "unsigned or forged IDs reached the store"
    );
    // A genuinely signed ID still costs exactly one load.
    let issued = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    store.reset();
    let response = send(&app, request("GET", "/read", &[&issued])).await;
    assert_eq!(body(response).await, "n=1");
    assert_eq!(store.counts().load, 1);
}

#[tokio::test]
async fn random_cookies_cost_exactly_one_load_each_when_unsigned() {
    let store = CountingStore::new(MemoryStore::new());
    let app = app(SessionLayer::new(Sessions::new(store.clone())));
    for _ in 0..FLOOD {
        let cookie = format!("__Host-offstate={}", SessionId::generate());
        let response = send(&app, request("GET", "/read", &[&cookie])).await;
        assert_eq!(body(response).await, "n=0");
    }
    let counts = store.counts();
    assert_eq!(counts.load, FLOOD as u64, "one miss per made-up ID");
    assert_eq!(counts.total(), FLOOD as u64, "and nothing else: {counts:?}");
    assert_eq!(store.get_ref().len(), 0);
    // Values that are not even well-formed IDs cost nothing at all.
    store.reset();
    for i in 0..1000 {
        let cookie = format!(
            "__Host-offstate={}",
            &SessionId::generate().to_string()[..(i % 31) + 1]
        );
        send(&app, request("GET", "/read", &[&cookie])).await;
    }
    assert_eq!(store.counts().total(), 0);
}

#[tokio::test]
async fn oversized_cookie_or_header_is_431_with_no_store_call() {
    let store = CountingStore::new(MemoryStore::new());
    let layer = SessionLayer::new(Sessions::new(store.clone())).with_max_value_len(64);
    let app = app(layer.clone());
    let ok = format!("__Host-offstate={}", SessionId::generate());
    let response = send(&app, request("GET", "/read", &[&ok])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let long = format!("__Host-offstate={}", "A".repeat(65));
    let response = send(&app, request("GET", "/read", &[&long])).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(
        attribute(&set_cookie(&response), "Max-Age").as_deref(),
        Some("0")
    );

    let name = HeaderName::from_static("x-session-id");
    let app = app_with(layer.with_header(name));
    let value = HeaderValue::from_str(&"B".repeat(65)).unwrap();
    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", value)]),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(store.counts().load, 1, "only the well-sized request loaded");
}

fn app_with(layer: SessionLayer) -> Router {
    routes().layer(layer)
}

/// The URL-safe base64 alphabet of signature tags, in value order.
const TAG_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// A signed ID whose tag is wrong in any single place, or cut short, or
/// longer, is refused before any store call, like a random one: the whole
/// tag is checked, and a nearly right tag earns nothing. Each forgery
/// flips the top bit of one character's 6-bit group, a data bit even in
/// the last character. (That the check takes the same time however much of
/// the tag is right comes from `hmac`'s `verify_slice`, built on `subtle`;
/// timing belongs in a benchmark, not in a test.)
#[tokio::test]
async fn a_tag_wrong_in_any_one_place_is_refused_without_a_store_call() {
    let store = CountingStore::new(MemoryStore::new());
    let app = app(SessionLayer::new(Sessions::new(store.clone())).with_signing_key(key()));
    let issued = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let (id, tag) = issued.rsplit_once('.').unwrap();
    let mut forgeries = vec![
        format!("{id}.{}", &tag[..tag.len() - 1]),
        format!("{issued}A"),
        id.to_owned(),
    ];
    for (i, c) in tag.bytes().enumerate() {
        let value = TAG_ALPHABET.iter().position(|a| *a == c).unwrap();
        let flipped = char::from(TAG_ALPHABET[value ^ 32]);
        forgeries.push(format!("{id}.{}{flipped}{}", &tag[..i], &tag[i + 1..]));
    }
    store.reset();
    for forged in &forgeries {
        let response = send(&app, request("GET", "/read", &[forged])).await;
        assert_eq!(body(response).await, "n=0", "{forged} was accepted");
    }
    assert_eq!(store.counts().total(), 0, "a forged tag reached the store");
    let response = send(&app, request("GET", "/read", &[&issued])).await;
    assert_eq!(body(response).await, "n=1", "the genuine tag still works");
}

const SECRET_VALUE: &str = "card-4929-SECRET-7f3a9c";
const SECRET_PRINCIPAL: &str = "principal-SECRET-b81e";

async fn store_secret(session: Session) -> Result<&'static str, SessionError> {
    session.insert("card", &SECRET_VALUE).await?;
    Ok("stored")
}

async fn read_secret(session: Session) -> Result<String, SessionError> {
    let value: Option<String> = session.get("card").await?;
    Ok(if value.as_deref() == Some(SECRET_VALUE) {
        "present".into()
    } else {
        "absent".into()
    })
}

async fn login_secret(session: Session) -> Result<&'static str, SessionError> {
    session.set_principal(SECRET_PRINCIPAL).await?;
    session.cycle_id().await?;
    Ok("logged in")
}

#[tokio::test(flavor = "current_thread")]
async fn no_session_id_cookie_or_value_reaches_the_logs_at_debug() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(capture.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fx = Fixture::new();
    for signed in [false, true] {
        let mut layer = fx.layer();
        if signed {
            layer = layer.with_signing_key(key());
        }
        let app = routes()
            .route("/secret", post(store_secret))
            .route("/secret", get(read_secret))
            .route("/login-secret", post(login_secret))
            .layer(layer);
        let mut seen = Vec::new();
        let mut remember = |response: &http::Response<axum::body::Body>| {
            for cookie in set_cookies(response) {
                let value = pair(&cookie)
                    .split_once('=')
                    .map(|(_, v)| v.to_owned())
                    .unwrap_or_default();
                if !value.is_empty() {
                    seen.push(value);
                }
            }
        };

        // Create.
        let response = send(&app, request("POST", "/secret", &[])).await;
        remember(&response);
        let cookie = pair(&set_cookie(&response));
        // Read.
        let response = send(&app, request("GET", "/secret", &[&cookie])).await;
        assert_eq!(body(response).await, "present");
        // Write.
        let response = send(&app, request("POST", "/write", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK);
        remember(&response);
        // Login: new ID.
        let response = send(&app, request("POST", "/login-secret", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK);
        remember(&response);
        let cookie = pair(&set_cookie(&response));
        // Hostile input: conflicting and oversized values.
        let other = format!("__Host-offstate={}", SessionId::generate());
        send(&app, request("GET", "/read", &[&cookie, &other])).await;
        let huge = format!("__Host-offstate={}", "Z".repeat(5000));
        send(&app, request("GET", "/read", &[&huge])).await;
        // Store failures, reading and writing.
        fx.flaky.fail_writes(true);
        let response = send(&app, request("POST", "/write", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        fx.flaky.fail_writes(false);
        fx.flaky.fail_reads(true);
        let response = send(&app, request("GET", "/secret", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        fx.flaky.fail_reads(false);
        // Logout, and log out everywhere.
        let response = send(&app, request("POST", "/logout", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK);
        let response = send(&app, request("POST", "/login-secret", &[])).await;
        let cookie = pair(&set_cookie(&response));
        remember(&response);
        let response = send(&app, request("POST", "/logout-everywhere", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK);

        assert!(seen.len() >= 4, "the flow issued IDs: {seen:?}");
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        assert!(
            logs.contains("offstate.store")
                && logs.contains(r#"db.operation.name="load""#)
                && logs.contains(r#"db.operation.name="save""#)
                && logs.contains(r#"db.system="memory""#)
                && logs.contains("offstate.key="),
            "the capture saw the flow's spans"
        );
        assert!(
            logs.contains("WARN") || logs.contains("ERROR"),
            "the failures were logged"
        );
        for value in &seen {
            let id = value.split('.').next().unwrap();
            assert!(!logs.contains(value.as_str()), "a cookie value was logged");
            assert!(!logs.contains(id), "a session ID was logged");
        }
        assert!(!logs.contains(SECRET_VALUE), "a session value was logged");
        assert!(!logs.contains("SECRET"), "session data was logged");
    }
}
