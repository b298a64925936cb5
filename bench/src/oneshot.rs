//! One request through a router in process, with tower `oneshot`: no
//! socket, no HTTP parsing, just the router, its layers and the handler.

use axum::Router;
use axum::body::Body;
use http_body_util::BodyExt as _;
use hyper::header::{COOKIE, SET_COOKIE};
use hyper::{Method, Request};
use tower::ServiceExt as _;

use crate::BenchError;

/// Sends `method path` (with `cookie` as the `Cookie` header, if any)
/// through `app`, reads the whole body, and returns the `name=value` part
/// of the `Set-Cookie` the response carries, if any.
///
/// # Errors
///
/// [`BenchError::Status`] when the app answers anything but 2xx.
pub async fn call(
    app: &Router,
    method: Method,
    path: &str,
    cookie: Option<&str>,
) -> Result<Option<String>, BenchError> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = app.clone().oneshot(request.body(Body::empty())?).await?;
    let status = response.status();
    let set = response
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        return Err(BenchError::Status {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    Ok(set)
}
