//! Cookie attributes, Max-Age, signed IDs, header mode and hostile input.

mod support;

use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use offstate_core::{ExpiryPolicy, SESSION_ID_LEN};
use offstate_tower::{CookieConfig, SameSite, SigningKey};
use support::*;

#[tokio::test]
async fn default_cookie_attributes() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let response = send(&app, request("POST", "/write", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(&response);
    let (name, value) = pair(&cookie)
        .split_once('=')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .unwrap();
    // Why: the __Host- prefix keeps sibling subdomains from tossing a
    // cookie of the same name in.
    assert_eq!(name, "__Host-offstate");
    assert_eq!(value.len(), SESSION_ID_LEN);
    assert_eq!(attribute(&cookie, "Path").as_deref(), Some("/"));
    assert_eq!(attribute(&cookie, "HttpOnly").as_deref(), Some(""));
    assert_eq!(attribute(&cookie, "Secure").as_deref(), Some(""));
    assert_eq!(attribute(&cookie, "SameSite").as_deref(), Some("Lax"));
    assert_eq!(attribute(&cookie, "Domain"), None);
    // Default expiry: 30 minutes idle, and the clock has not moved.
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1800"));
}

#[tokio::test]
async fn custom_cookie_attributes() {
    let fx = Fixture::new();
    let layer = fx.layer().with_cookie(
        CookieConfig::default()
            .with_name("sid")
            .with_domain("shop.example")
            .with_path("/app")
            .with_secure(false)
            .with_http_only(false)
            .with_same_site(SameSite::Strict),
    );
    let app = app(layer);
    let response = send(&app, request("POST", "/write", &[])).await;
    let cookie = set_cookie(&response);
    assert!(cookie.starts_with("sid="), "{cookie}");
    assert_eq!(
        attribute(&cookie, "Domain").as_deref(),
        Some("shop.example")
    );
    assert_eq!(attribute(&cookie, "Path").as_deref(), Some("/app"));
    assert_eq!(attribute(&cookie, "Secure"), None);
    assert_eq!(attribute(&cookie, "HttpOnly"), None);
    assert_eq!(attribute(&cookie, "SameSite").as_deref(), Some("Strict"));

    // The cookie under the custom name is read back.
    let response = send(&app, request("GET", "/read", &[&pair(&cookie)])).await;
    assert_eq!(body(response).await, "n=1");
}

#[tokio::test]
async fn browser_session_cookie_without_deadline_or_when_not_persistent() {
    let fx = Fixture::new();
    let app1 = app(fx
        .layer()
        .with_cookie(CookieConfig::default().with_persistent(false)));
    let cookie = set_cookie(&send(&app1, request("POST", "/write", &[])).await);
    assert_eq!(attribute(&cookie, "Max-Age"), None);
    assert_eq!(attribute(&cookie, "Expires"), None);

    let fx = Fixture::new();
    let sessions = fx.sessions.clone().with_expiry(ExpiryPolicy::never());
    let layer = offstate_tower::SessionLayer::new(sessions);
    let cookie = set_cookie(&send(&app(layer), request("POST", "/write", &[])).await);
    assert_eq!(attribute(&cookie, "Max-Age"), None);
    assert_eq!(attribute(&cookie, "Expires"), None);
}

#[tokio::test]
async fn max_age_follows_the_earliest_deadline() {
    let mut fx = Fixture::new();
    fx.sessions = fx.sessions.clone().with_expiry(
        ExpiryPolicy::default()
            .with_idle(Some(Duration::from_secs(30 * 60)))
            .with_absolute(Some(Duration::from_secs(3600))),
    );
    let app = app(fx.layer());
    let cookie = set_cookie(&send(&app, request("POST", "/write", &[])).await);
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1800"));
    let sent = pair(&cookie);

    // 10 minutes later a write slides the idle deadline: 30 minutes again.
    fx.clock.advance(Duration::from_secs(600));
    let cookie = set_cookie(&send(&app, request("POST", "/write", &[&sent])).await);
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1800"));
    assert_eq!(pair(&cookie), sent, "a write keeps the ID");

    // At 35 minutes the absolute deadline (60) comes before the idle one (65).
    fx.clock.advance(Duration::from_secs(25 * 60));
    let response = send(&app, request("POST", "/write", &[&sent])).await;
    let cookie = set_cookie(&response);
    assert_eq!(body(response).await, "n=3", "still the same session");
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1500"));

    // At 45 minutes a read touches (a quarter of the idle timeout has
    // passed): Max-Age counts from the touch, to the absolute deadline.
    fx.clock.advance(Duration::from_secs(10 * 60));
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    let cookie = set_cookie(&response);
    assert_eq!(body(response).await, "n=3");
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("900"));
}

#[allow(clippy::unwrap_used)]
fn key(byte: u8) -> SigningKey {
    SigningKey::new([byte; 32]).unwrap()
}

#[tokio::test]
async fn signed_cookies_round_trip_and_forgeries_never_reach_the_store() {
    let fx = Fixture::new();
    let app = app(fx.layer().with_signing_key(key(9)));
    let cookie = set_cookie(&send(&app, request("POST", "/write", &[])).await);
    let sent = pair(&cookie);
    let value = sent.strip_prefix("__Host-offstate=").unwrap();
    let (id, tag) = value.split_once('.').expect("signed form <id>.<tag>");
    assert_eq!(id.len(), SESSION_ID_LEN);
    assert_eq!(tag.len(), 43);

    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(body(response).await, "n=1");

    // Forgeries: the bare ID, a changed tag, another key's signature.
    let mut other_tag = tag.to_owned();
    let flipped = if other_tag.starts_with('A') { "B" } else { "A" };
    other_tag.replace_range(0..1, flipped);
    let other_key_app = support::app(fx.layer().with_signing_key(key(10)));
    let other_cookie = set_cookie(&send(&other_key_app, request("POST", "/write", &[])).await);
    let other_value = pair(&other_cookie)
        .strip_prefix("__Host-offstate=")
        .unwrap()
        .to_owned();
    let forged = [
        format!("__Host-offstate={id}"),
        format!("__Host-offstate={id}.{other_tag}"),
        format!("__Host-offstate={other_value}"),
        format!("__Host-offstate={id}.{tag}x"),
    ];
    for cookie in forged {
        fx.store.reset();
        let response = send(&app, request("GET", "/read", &[&cookie])).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(set_cookies(&response).is_empty());
        assert_eq!(body(response).await, "n=0", "{cookie}");
        assert_eq!(
            fx.store.counts().total(),
            0,
            "forged {cookie} reached the store"
        );
    }
}

#[tokio::test]
async fn signing_keys_must_be_long_enough() {
    assert!(SigningKey::new([0u8; 31]).is_err());
    assert!(SigningKey::new([0u8; 32]).is_ok());
}

#[tokio::test]
async fn header_mode_carries_ids_and_signals_removal() {
    let fx = Fixture::new();
    let name = HeaderName::from_static("x-session-id");
    let app = app(fx.layer().with_header(name.clone()));
    let response = send(&app, request("POST", "/write", &[])).await;
    assert!(
        set_cookies(&response).is_empty(),
        "header mode sets no cookie"
    );
    let id = response.headers()[&name].clone();
    assert_eq!(id.len(), SESSION_ID_LEN);

    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", id.clone())]),
    )
    .await;
    assert!(
        response.headers().get(&name).is_none(),
        "unchanged: no header"
    );
    assert_eq!(body(response).await, "n=1");

    // Login rotates: the new ID comes back in the header.
    let response = send(
        &app,
        request_with("POST", "/login", &[("x-session-id", id.clone())]),
    )
    .await;
    let rotated = response.headers()[&name].clone();
    assert_ne!(rotated, id);
    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", id.clone())]),
    )
    .await;
    assert_eq!(body(response).await, "n=0", "the old ID is dead");

    // Logout: the header comes back empty.
    let response = send(
        &app,
        request_with("POST", "/logout", &[("x-session-id", rotated.clone())]),
    )
    .await;
    assert_eq!(response.headers()[&name], "");
    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", rotated)]),
    )
    .await;
    assert_eq!(body(response).await, "n=0");
}

#[tokio::test]
async fn header_mode_hostile_input() {
    let fx = Fixture::new();
    let app = app(fx
        .layer()
        .with_header(HeaderName::from_static("x-session-id")));
    let not_utf8 = HeaderValue::from_bytes(b"\xff\xfe garbage").unwrap();
    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", not_utf8)]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "n=0");

    let long = HeaderValue::from_str(&"a".repeat(5000)).unwrap();
    let response = send(
        &app,
        request_with("GET", "/read", &[("x-session-id", long)]),
    )
    .await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    // Two different IDs that both parse: each is a candidate, neither live
    // here, so the request is anonymous; no 400 that would lock a client out.
    let a = HeaderValue::from_str(&"a".repeat(SESSION_ID_LEN)).unwrap();
    let b = HeaderValue::from_str(&"b".repeat(SESSION_ID_LEN)).unwrap();
    fx.store.reset();
    let response = send(
        &app,
        request_with(
            "GET",
            "/read",
            &[("x-session-id", a.clone()), ("x-session-id", b)],
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fx.store.counts().load, 2, "both candidates were looked up");
    fx.store.reset();
    let response = send(
        &app,
        request_with(
            "GET",
            "/read",
            &[("x-session-id", a.clone()), ("x-session-id", a)],
        ),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        fx.store.counts().total(),
        1,
        "an identical pair is one ID, loaded once"
    );
}

#[tokio::test]
async fn garbage_cookies_are_anonymous_and_never_reach_the_store() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let wrong_length = format!("__Host-offstate={}", "a".repeat(SESSION_ID_LEN + 1));
    let wrong_alphabet = format!("__Host-offstate={}", "!".repeat(SESSION_ID_LEN));
    let quoted = format!("__Host-offstate=\"{}\"", "a".repeat(SESSION_ID_LEN - 2));
    let cookies = [
        "__Host-offstate=garbage",
        "__Host-offstate=",
        "offstate",
        "=",
        ";;;",
        "",
        "  ;  __Host-offstate=%00%ff ; other=1",
        wrong_length.as_str(),
        wrong_alphabet.as_str(),
        quoted.as_str(),
    ];
    for cookie in cookies {
        let response = send(&app, request("GET", "/read", &[cookie])).await;
        assert_eq!(response.status(), StatusCode::OK, "{cookie:?}");
        assert_eq!(body(response).await, "n=0");
    }
    let not_utf8 = HeaderValue::from_bytes(b"__Host-offstate=\xff\xfe\xfd; x=\x80").unwrap();
    let response = send(&app, request_with("GET", "/read", &[("cookie", not_utf8)])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fx.store.counts().total(), 0);
}

#[tokio::test]
async fn our_cookie_is_found_among_others_and_in_split_cookie_headers() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let value = sent.strip_prefix("__Host-offstate=").unwrap();

    let single = format!("theme=dark; offstate2=x;__Host-offstate={value} ; lang=en");
    let response = send(&app, request("GET", "/read", &[&single])).await;
    assert_eq!(body(response).await, "n=1");

    // HTTP/2 splits cookies into several headers.
    let response = send(
        &app,
        request("GET", "/read", &["theme=dark", &sent, "lang=en"]),
    )
    .await;
    assert_eq!(body(response).await, "n=1");

    // The same value twice is fine.
    let response = send(
        &app,
        request("GET", "/read", &[&sent, &format!("a=b; {sent}")]),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "n=1");
}

#[tokio::test]
async fn a_tossed_garbage_cookie_does_not_lock_the_user_out() {
    // Why: a sibling subdomain (or an old path) can add a second cookie of
    // the same name that this app cannot remove; the user must keep working.
    let fx = Fixture::new();
    let app = app(fx.layer());
    let mine = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let tossed = format!("{mine}; __Host-offstate=garbage");
    let response = send(&app, request("GET", "/read", &[&tossed])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "n=1");
}

#[tokio::test]
async fn of_two_presented_sessions_the_live_one_is_kept() {
    // Why: a stale cookie left at another path must not hide the real one.
    let fx = Fixture::new();
    let app = app(fx.layer());
    let live = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let stale = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let response = send(&app, request("POST", "/logout", &[&stale])).await;
    assert_eq!(response.status(), StatusCode::OK);
    for cookies in [
        vec![format!("{stale}; {live}")],
        vec![live.clone(), stale.clone()],
    ] {
        let refs: Vec<&str> = cookies.iter().map(String::as_str).collect();
        let response = send(&app, request("GET", "/read", &refs)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(body(response).await, "n=1");
    }
}

#[tokio::test]
async fn two_live_sessions_presented_give_no_session_rather_than_either() {
    // Why: one of them may be an attacker's planted session; serving it
    // would log the victim into the attacker's account.
    let fx = Fixture::new();
    let app = app(fx.layer());
    let a = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let b = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let both = format!("{a}; {b}");
    let response = send(&app, request("GET", "/read", &[&both])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "n=0");
    // A write starts a session of its own, told to the client as usual.
    let response = send(&app, request("POST", "/write", &[&both])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let fresh = pair(&set_cookie(&response));
    assert!(fresh != a && fresh != b, "a write reused a presented ID");
}

#[tokio::test]
async fn a_cookie_that_cannot_carry_the_host_prefix_keeps_its_plain_name() {
    // Why: browsers drop __Host- cookies with a Domain, a narrower Path or
    // without Secure; sending one would silently lose the session.
    for config in [
        CookieConfig::default().with_secure(false),
        CookieConfig::default().with_domain("shop.example"),
        CookieConfig::default().with_path("/app"),
        CookieConfig::default().with_host_prefix(false),
    ] {
        let fx = Fixture::new();
        let app = app(fx.layer().with_cookie(config));
        let cookie = set_cookie(&send(&app, request("POST", "/write", &[])).await);
        assert!(pair(&cookie).starts_with("offstate="), "{cookie}");
    }
}

#[tokio::test]
async fn oversized_cookie_gets_431() {
    let fx = Fixture::new();
    let app = app(fx.layer().with_max_value_len(100));
    let big = format!("__Host-offstate={}", "a".repeat(101));
    let response = send(&app, request("GET", "/read", &[&big])).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(pair(&set_cookie(&response)), "__Host-offstate=");
    assert_eq!(body(response).await, "session identifier too large");

    // The default limit is 4096 bytes.
    let app = support::app(fx.layer());
    let big = format!("__Host-offstate={}", "a".repeat(4097));
    let response = send(&app, request("GET", "/read", &[&big])).await;
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Other cookies may be large; only ours is limited.
    let other = format!("other={}", "a".repeat(8000));
    let response = send(&app, request("GET", "/read", &[&other])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(fx.store.counts().total(), 0);
}

#[tokio::test]
async fn a_cookie_name_that_is_no_token_fails_loudly() {
    let fx = Fixture::new();
    let app = app(fx
        .layer()
        .with_cookie(CookieConfig::default().with_name("my session")));
    let response = send(&app, request("POST", "/write", &[])).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(set_cookies(&response).is_empty());
    assert_eq!(body(response).await, "session error");
}
