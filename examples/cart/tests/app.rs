//! The cart app driven through its router: adding items, logging in
//! (rotation keeps the cart), logging out, and logging out everywhere.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use http_body_util::BodyExt as _;
use offstate_core::{ManualClock, MemoryStore, Sessions};
use offstate_example_cart::{AppConfig, app};
use tower::ServiceExt as _;

struct Shop {
    router: Router,
    clock: ManualClock,
    store: MemoryStore,
}

fn shop() -> Shop {
    let clock = ManualClock::new();
    let store = MemoryStore::new();
    let sessions = Sessions::new(store.clone()).with_clock(Arc::new(clock.clone()));
    let config = AppConfig::new("test-instance");
    Shop {
        router: app(sessions, config),
        clock,
        store,
    }
}

async fn call(router: &Router, request: Request<Body>) -> Response<Body> {
    router.clone().oneshot(request).await.unwrap()
}

fn get(uri: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder = Request::get(uri);
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::empty()).unwrap()
}

fn post(uri: &str, form: &str, cookie: Option<&str>) -> Request<Body> {
    let mut builder =
        Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        builder = builder.header(header::COOKIE, cookie);
    }
    builder.body(Body::from(form.to_owned())).unwrap()
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// `name=value` of the response's one Set-Cookie, if any.
fn cookie(response: &Response<Body>) -> Option<String> {
    let mut all = response.headers().get_all(header::SET_COOKIE).iter();
    let first = all.next()?.to_str().unwrap();
    assert!(all.next().is_none(), "more than one Set-Cookie");
    Some(first.split(';').next().unwrap().to_owned())
}

fn redirects_home(response: &Response<Body>) {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[header::LOCATION], "/");
}

#[tokio::test]
async fn the_page_shows_an_empty_cart_and_the_instance_without_a_session() {
    let shop = shop();
    let response = call(&shop.router, get("/", None)).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CACHE_CONTROL], "no-store");
    assert!(cookie(&response).is_none(), "looking costs no session");
    let page = text(response).await;
    assert!(page.contains("Your cart is empty"));
    assert!(page.contains("<strong id=instance>test-instance</strong>"));
    assert!(page.contains("Not logged in"));
    assert!(page.contains("name=viewport"));
    assert!(shop.store.is_empty());
}

#[tokio::test]
async fn adding_items_shows_them_in_the_cart() {
    let shop = shop();
    let response = call(&shop.router, post("/cart/add", "item=apple", None)).await;
    redirects_home(&response);
    let session = cookie(&response).expect("the first add starts a session");
    assert!(session.starts_with("__Host-offstate="));

    for item in ["apple", "bread"] {
        let response = call(
            &shop.router,
            post("/cart/add", &format!("item={item}"), Some(&session)),
        )
        .await;
        redirects_home(&response);
    }
    shop.clock.advance(Duration::from_secs(60));
    let page = text(call(&shop.router, get("/", Some(&session))).await).await;
    assert!(page.contains("2 × Apple"), "{page}");
    assert!(page.contains("1 × Sourdough bread"));
    assert!(page.contains("<span id=count class=count>3</span> items"));
    assert!(page.contains("<span id=total>€5.10</span>"));
    assert!(page.contains("<span id=remaining>29m 00s</span>"), "{page}");

    let response = call(
        &shop.router,
        post("/cart/remove", "item=apple", Some(&session)),
    )
    .await;
    redirects_home(&response);
    let response = call(&shop.router, get("/api/cart", Some(&session))).await;
    assert_eq!(
        response.headers()[header::CACHE_CONTROL],
        "no-store",
        "one user's cart must not be cached"
    );
    let json = text(response).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["items"]["apple"], 1);
    assert_eq!(json["count"], 2);
    assert_eq!(json["instance"], "test-instance");

    let response = call(
        &shop.router,
        post("/cart/add", "item=caviar", Some(&session)),
    )
    .await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_adds_are_never_lost() {
    let shop = shop();
    let session = cookie(&call(&shop.router, post("/cart/add", "item=tea", None)).await).unwrap();
    let mut tasks = Vec::new();
    for i in 0..24 {
        let router = shop.router.clone();
        let session = session.clone();
        let item = if i % 2 == 0 { "apple" } else { "pear" };
        tasks.push(tokio::spawn(async move {
            let response = call(
                &router,
                post("/cart/add", &format!("item={item}"), Some(&session)),
            )
            .await;
            response.status()
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), StatusCode::SEE_OTHER);
    }
    let json = text(call(&shop.router, get("/api/cart", Some(&session))).await).await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["items"]["apple"], 12);
    assert_eq!(json["items"]["pear"], 12);
    assert_eq!(json["count"], 25);
}

#[tokio::test]
async fn login_rotates_the_cookie_and_keeps_the_cart() {
    let shop = shop();
    let before = cookie(&call(&shop.router, post("/cart/add", "item=cheese", None)).await).unwrap();

    let response = call(&shop.router, post("/login", "user=alice", Some(&before))).await;
    redirects_home(&response);
    let after = cookie(&response).expect("login sends a new cookie");
    assert_ne!(after, before);

    let page = text(call(&shop.router, get("/", Some(&after))).await).await;
    assert!(page.contains("Logged in as <strong id=user>alice</strong>"));
    assert!(page.contains("1 × Comté, 200 g"));

    // The old ID is dead: it shows an anonymous, empty cart.
    let page = text(call(&shop.router, get("/", Some(&before))).await).await;
    assert!(page.contains("Your cart is empty"));
    assert!(page.contains("Not logged in"));

    let response = call(&shop.router, post("/login", "user=%20%20", Some(&after))).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn logout_forgets_the_session() {
    let shop = shop();
    let session = cookie(&call(&shop.router, post("/login", "user=bob", None)).await).unwrap();
    let response = call(&shop.router, post("/logout", "", Some(&session))).await;
    redirects_home(&response);
    assert_eq!(cookie(&response).as_deref(), Some("__Host-offstate="));
    let page = text(call(&shop.router, get("/", Some(&session))).await).await;
    assert!(page.contains("Not logged in"));
    assert!(shop.store.is_empty());
}

#[tokio::test]
async fn logout_everywhere_ends_the_other_devices_too() {
    let shop = shop();
    let phone = cookie(&call(&shop.router, post("/login", "user=carol", None)).await).unwrap();
    let laptop = cookie(&call(&shop.router, post("/login", "user=carol", None)).await).unwrap();
    let other = cookie(&call(&shop.router, post("/login", "user=dave", None)).await).unwrap();
    call(
        &shop.router,
        post("/cart/add", "item=coffee", Some(&laptop)),
    )
    .await;

    let response = call(&shop.router, post("/logout-everywhere", "", Some(&phone))).await;
    redirects_home(&response);
    assert_eq!(cookie(&response).as_deref(), Some("__Host-offstate="));

    for device in [&phone, &laptop] {
        let page = text(call(&shop.router, get("/", Some(device))).await).await;
        assert!(page.contains("Not logged in"), "{page}");
        assert!(page.contains("Your cart is empty"));
    }
    let page = text(call(&shop.router, get("/", Some(&other))).await).await;
    assert!(page.contains("Logged in as <strong id=user>dave</strong>"));

    // Anonymous: nothing to revoke, just back to the page.
    let response = call(&shop.router, post("/logout-everywhere", "", None)).await;
    redirects_home(&response);
}

#[tokio::test]
async fn the_idle_timeout_flag_ends_a_quiet_session() {
    let settings = offstate_example_cart::config::Settings::parse(
        ["--idle-timeout", "60"].map(String::from),
        |_| None,
    )
    .unwrap();
    let clock = ManualClock::new();
    let sessions = Sessions::new(MemoryStore::new())
        .with_clock(Arc::new(clock.clone()))
        .with_expiry(settings.expiry());
    let router = app(sessions, AppConfig::new("test-instance"));
    let session = cookie(&call(&router, post("/cart/add", "item=tea", None)).await).unwrap();
    clock.advance(Duration::from_secs(59));
    let page = text(call(&router, get("/", Some(&session))).await).await;
    assert!(page.contains("1 × Green tea"), "{page}");
    clock.advance(Duration::from_secs(61));
    let page = text(call(&router, get("/", Some(&session))).await).await;
    assert!(
        !page.contains("Tea"),
        "the session outlived its idle timeout: {page}"
    );
}
