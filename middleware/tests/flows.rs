//! Login (ID rotation), logout, log out everywhere, and wiring mistakes.

mod support;

use std::convert::Infallible;

use http::{Request, Response, StatusCode};
use offstate_tower::{Session, SessionLayer, SessionService};
use support::*;
use tower::{Layer as _, ServiceExt as _, service_fn};

#[tokio::test]
async fn login_rotates_the_id_keeps_the_data_and_kills_the_old_id() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let before = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));

    let response = send(&app, request("POST", "/login", &[&before])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(&response);
    let after = pair(&cookie);
    assert_ne!(after, before, "login must rotate the ID");
    assert_eq!(attribute(&cookie, "HttpOnly").as_deref(), Some(""));
    assert_eq!(attribute(&cookie, "Max-Age").as_deref(), Some("1800"));

    let response = send(&app, request("GET", "/read", &[&after])).await;
    assert_eq!(
        body(response).await,
        "n=1",
        "the data moved with the session"
    );
    let response = send(&app, request("GET", "/whoami", &[&after])).await;
    assert_eq!(body(response).await, "alice");

    fx.store.reset();
    let response = send(&app, request("GET", "/read", &[&before])).await;
    assert!(set_cookies(&response).is_empty());
    assert_eq!(body(response).await, "n=0", "the old ID is dead");
    assert_eq!(fx.store.counts().load, 1);
}

#[tokio::test]
async fn logout_sends_a_removal_cookie_with_the_same_name_path_and_domain() {
    let fx = Fixture::new();
    let cookie_config = offstate_tower::CookieConfig::default()
        .with_domain("shop.example")
        .with_path("/app");
    let app = app(fx.layer().with_cookie(cookie_config));
    let sent = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));

    let response = send(&app, request("POST", "/logout", &[&sent])).await;
    assert_eq!(response.status(), StatusCode::OK);
    let removal = set_cookie(&response);
    assert_eq!(pair(&removal), "offstate=");
    assert_eq!(attribute(&removal, "Max-Age").as_deref(), Some("0"));
    assert!(attribute(&removal, "Expires").unwrap().contains("1970"));
    assert_eq!(attribute(&removal, "Path").as_deref(), Some("/app"));
    assert_eq!(
        attribute(&removal, "Domain").as_deref(),
        Some("shop.example")
    );

    let response = send(&app, request("GET", "/read", &[&sent])).await;
    assert_eq!(body(response).await, "n=0");
    assert!(fx.memory.is_empty());
}

#[tokio::test]
async fn logout_everywhere_ends_every_session_of_the_user() {
    let fx = Fixture::new();
    let app = app(fx.layer());
    let mut phones = Vec::new();
    for _ in 0..3 {
        let anonymous = pair(&set_cookie(
            &send(&app, request("POST", "/write", &[])).await,
        ));
        let response = send(&app, request("POST", "/login", &[&anonymous])).await;
        phones.push(pair(&set_cookie(&response)));
    }
    let bystander = pair(&set_cookie(
        &send(&app, request("POST", "/write", &[])).await,
    ));

    let response = send(&app, request("POST", "/logout-everywhere", &[&phones[0]])).await;
    assert_eq!(pair(&set_cookie(&response)), "__Host-offstate=");
    assert_eq!(body(response).await, "revoked 3");
    for phone in &phones {
        let response = send(&app, request("GET", "/whoami", &[phone])).await;
        assert_eq!(body(response).await, "nobody");
    }
    let response = send(&app, request("GET", "/read", &[&bystander])).await;
    assert_eq!(
        body(response).await,
        "n=1",
        "other users keep their sessions"
    );

    // With no principal, a short 400.
    let response = send(&app, request("POST", "/logout-everywhere", &[&bystander])).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(body(response).await, "session has no user");
}

#[tokio::test]
async fn a_missing_layer_is_a_clear_500_and_option_session_is_none() {
    let app = routes();
    let response = send(&app, request("GET", "/read", &[])).await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        body(response)
            .await
            .contains("Perhaps you forgot to add SessionLayer?")
    );

    let response = send(&app, request("GET", "/optional", &[])).await;
    assert_eq!(body(response).await, "without");
    let fx = Fixture::new();
    let response = send(&support::app(fx.layer()), request("GET", "/optional", &[])).await;
    assert_eq!(body(response).await, "with");
}

#[tokio::test]
async fn plain_tower_services_find_the_handle_in_the_extensions() {
    let fx = Fixture::new();
    let handler = service_fn(|request: Request<String>| async move {
        let session = request.extensions().get::<Session>().cloned().unwrap();
        session.insert("plain", &true).await.unwrap();
        let seen: Option<bool> = session.get("plain").await.unwrap();
        Ok::<_, Infallible>(Response::new(format!("{seen:?}")))
    });
    let mut service: SessionService<_> = fx.layer().layer(handler);
    let _: &_ = service.get_ref();
    let _: &mut _ = service.get_mut();
    let response = service.oneshot(Request::new(String::new())).await.unwrap();
    assert!(response.headers().contains_key("set-cookie"));
    assert_eq!(response.body(), "Some(true)");
    assert_eq!(fx.store.counts().create, 1);

    // The plain constructor, and into_inner.
    let service = SessionService::new(
        service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::from("inner")))
        }),
        fx.sessions.clone(),
    );
    let inner = service.into_inner();
    let response = inner.oneshot(Request::new(String::new())).await.unwrap();
    assert_eq!(response.body(), "inner");
    let _ = SessionLayer::from_store(offstate_core::MemoryStore::new());
}
