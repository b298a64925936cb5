//! How many store calls each kind of handler costs, and what happens when
//! the store fails (outage policy, typed errors, end-of-request saves).

mod support;

use std::time::Duration;

use http::StatusCode;
use offstate_core::{CallCounts, Limits, OutagePolicy};
use support::*;

fn counts(load: u64, create: u64, save: u64, touch: u64) -> (u64, u64, u64, u64) {
    (load, create, save, touch)
}

fn of(c: CallCounts) -> (u64, u64, u64, u64) {
    assert_eq!(c.delete + c.principal, 0, "unexpected calls: {c:?}");
    (c.load, c.create, c.save, c.touch)
}

#[tokio::test]
async fn untouched_handler_costs_nothing_even_with_a_cookie() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    fx.store.reset();
    for cookies in [vec![], vec![sent.as_str()]] {
        let response = send(&app, request("GET", "/untouched", &cookies)).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(set_cookies(&response).is_empty());
    }
    // Even long after, when a touch would be due.
    fx.clock.advance(Duration::from_secs(20 * 60));
    send(&app, request("GET", "/untouched", &[&sent])).await;
    assert_eq!(fx.store.counts().total(), 0);
}

#[tokio::test]
async fn new_session_costs_one_create_and_no_load() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let response = send(&app, request("POST", "/write", &[])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(of(fx.store.counts()), counts(0, 1, 0, 0));

    // Reading with no session costs nothing and sets nothing.
    fx.store.reset();
    let response = send(&app, request("GET", "/read", &[])).await;
    assert!(set_cookies(&response).is_empty());
    assert_eq!(fx.store.counts().total(), 0);
}

#[tokio::test]
async fn reads_cost_one_load_and_a_touch_only_past_the_threshold() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));

    fx.store.reset();
    fx.clock.advance(Duration::from_secs(60));
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert!(
        set_cookies(&response).is_empty(),
        "no touch, nothing to resend"
    );
    assert_eq!(body(response).await, "n=1");
    assert_eq!(of(fx.store.counts()), counts(1, 0, 0, 0));

    // Default threshold: a quarter of 30 minutes.
    fx.store.reset();
    fx.clock.advance(Duration::from_secs(8 * 60));
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    let cookie = set_cookie(&response);
    assert_eq!(pair(&cookie), sent, "a touch keeps the ID");
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1800"));
    assert_eq!(of(fx.store.counts()), counts(1, 0, 0, 1));
}

#[tokio::test]
async fn writes_cost_one_load_and_one_conditional_save() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    fx.store.reset();
    let response = send(&app, request("POST", "/write", &[&sent])).await;
    assert_eq!(pair(&set_cookie(&response)), sent);
    assert_eq!(body(response).await, "n=2");
    assert_eq!(of(fx.store.counts()), counts(1, 0, 1, 0));
}

#[tokio::test]
async fn a_handler_that_saves_itself_leaves_nothing_for_the_middleware() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    fx.store.reset();
    let response = send(&app, request("POST", "/save-myself", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(of(fx.store.counts()), counts(1, 0, 1, 0));

    // When its own save fails, its own answer stands.
    fx.flaky.fail_writes(true);
    let response = send(&app, request("POST", "/save-myself", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED, "{:?}", response);
    assert!(set_cookies(&response).is_empty());
}

#[tokio::test]
async fn fail_closed_read_outage_is_a_short_503() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    for timeout in [false, true] {
        fx.flaky.with_timeouts(timeout);
        fx.flaky.fail_reads(true);
        let response = send(&app, request("POST", "/write", &[&sent])).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            set_cookies(&response).is_empty(),
            "the cookie is left alone"
        );
        let text = body(response).await;
        assert_eq!(text, "session store unavailable");
    }
    fx.flaky.fail_reads(false);
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(body(response).await, "n=1", "nothing was lost");
}

#[tokio::test]
async fn fail_closed_save_failure_replaces_the_response() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    fx.flaky.fail_writes(true);
    let response = send(&app, request("POST", "/write", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookies(&response).is_empty());
    assert_eq!(body(response).await, "session store unavailable");

    // A new session that cannot be created: 503, and no cookie.
    let response = send(&app, request("POST", "/write", &[])).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookies(&response).is_empty());
}

#[tokio::test]
async fn limits_turn_into_413() {
    let fx = Fixture::new();
    // The value passes its own limit; the record does not.
    let sessions = fx
        .sessions
        .clone()
        .with_limits(Limits::default().with_max_record_bytes(1000));
    let app1 = app(offstate_tower::SessionLayer::new(sessions));
    let response = send(&app1, request("POST", "/big", &[])).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(set_cookies(&response).is_empty());
    assert_eq!(body(response).await, "session data too large");

    // A value over its limit fails in the handler, through `?`.
    let sessions = fx
        .sessions
        .clone()
        .with_limits(Limits::default().with_max_value_bytes(1000));
    let app2 = app(offstate_tower::SessionLayer::new(sessions));
    let response = send(&app2, request("POST", "/big", &[])).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(fx.store.counts().total(), 0);
}

#[tokio::test]
async fn fail_open_serves_an_empty_session_and_never_overwrites_the_real_one() {
    let mut fx = Fixture::new();
    fx.sessions = fx
        .sessions
        .clone()
        .with_outage_policy(OutagePolicy::FailOpen);
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    let response = send(&app, request("POST", "/write", &[&sent])).await;
    assert_eq!(body(response).await, "n=2");

    fx.flaky.fail_reads(true);
    fx.store.reset();
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(body(response).await, "n=0", "an empty stand-in");

    // A write on the stand-in: the handler's page stands, nothing is saved,
    // and the cookie is left as it is.
    let response = send(&app, request("POST", "/write", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        set_cookies(&response).is_empty(),
        "the user's cookie is untouched"
    );
    assert_eq!(body(response).await, "n=1");
    // Login on the stand-in must not mint a new session either.
    let response = send(&app, request("POST", "/login", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(set_cookies(&response).is_empty());
    let c = fx.store.counts();
    assert_eq!((c.create, c.save, c.touch, c.delete), (0, 0, 0, 0), "{c:?}");

    fx.flaky.fail_reads(false);
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(body(response).await, "n=2", "the real session is intact");
    let response = send(&app, request("GET", "/whoami", &[&sent])).await;
    assert_eq!(body(response).await, "nobody");
}

#[tokio::test]
async fn a_failed_touch_on_a_read_only_request_keeps_the_response() {
    // Why: the page a reader asked for is still right; only the idle
    // extension failed, and the next request will try again.
    let fx = Fixture::new();
    let app = app(fx.layer());
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));
    fx.clock.advance(Duration::from_secs(10 * 60));
    fx.flaky.fail_writes(true);
    fx.store.reset();
    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(response.status(), http::StatusCode::OK);
    assert!(
        set_cookies(&response).is_empty(),
        "no cookie for a failed touch"
    );
    assert_eq!(body(response).await, "n=1");
    assert_eq!(of(fx.store.counts()), counts(1, 0, 0, 1));
}
