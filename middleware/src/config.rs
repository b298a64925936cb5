//! How the session ID travels: in a cookie (browsers) or in a header (APIs),
//! and the cookie's attributes.
//!
//! The defaults are the safe ones for a browser app: `Secure`, `HttpOnly`,
//! `SameSite=Lax`, `Path=/`, no `Domain`, the `__Host-` name prefix, and a
//! `Max-Age` that follows the session's expiry. Change them only with a
//! reason (plain-HTTP development needs `with_secure(false)`).
//!
//! # The `__Host-` prefix
//!
//! A browser accepts a cookie named `__Host-…` only if it is `Secure`, has
//! `Path=/` and no `Domain`, and only from the host itself. So a sibling
//! subdomain (`evil.example.com`) cannot plant ("toss") a session cookie
//! of the same name for `shop.example.com`, neither to fix a session on a
//! victim nor to lock them out with a second value. The prefix is added
//! whenever the cookie qualifies; a cookie that does not (plain HTTP in
//! development, a `Domain` shared with subdomains, a narrower path) keeps
//! its plain name. [`CookieConfig::with_host_prefix`]`(false)` turns it
//! off, for an app that must keep reading cookies set under the plain name.

use std::borrow::Cow;

use http::HeaderName;

/// The cookie name used unless configured otherwise.
pub const DEFAULT_COOKIE_NAME: &str = "offstate";

/// The largest session cookie value or header value accepted, in bytes,
/// unless configured otherwise. Longer values are answered with 431.
pub const DEFAULT_MAX_VALUE_LEN: usize = 4096;

/// The cookie `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SameSite {
    /// Sent only on same-site requests.
    Strict,
    /// Sent on same-site requests and top-level cross-site navigations (the
    /// default: links into the site keep the user logged in, cross-site
    /// form posts do not carry the cookie).
    #[default]
    Lax,
    /// Sent on every request. Browsers require `Secure` with it.
    None,
}

impl SameSite {
    pub(crate) fn to_cookie(self) -> cookie::SameSite {
        match self {
            Self::Strict => cookie::SameSite::Strict,
            Self::Lax => cookie::SameSite::Lax,
            Self::None => cookie::SameSite::None,
        }
    }
}

/// The session cookie's name and attributes.
///
/// ```
/// use offstate_tower::{CookieConfig, SameSite};
///
/// let cookie = CookieConfig::default()
///     .with_name("sid")
///     .with_domain("example.com")
///     .with_same_site(SameSite::Strict);
/// assert_eq!(cookie.name(), "sid");
/// assert!(cookie.secure() && cookie.http_only());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    name: Cow<'static, str>,
    domain: Option<Cow<'static, str>>,
    path: Cow<'static, str>,
    secure: bool,
    http_only: bool,
    same_site: SameSite,
    persistent: bool,
    host_prefix: bool,
    /// The name the cookie travels under (with `__Host-` when it applies).
    wire_name: Cow<'static, str>,
    /// Whether `wire_name` is an HTTP token, checked once here rather than
    /// on every response.
    wire_name_ok: bool,
}

impl Default for CookieConfig {
    fn default() -> Self {
        Self {
            name: Cow::Borrowed(DEFAULT_COOKIE_NAME),
            domain: None,
            path: Cow::Borrowed("/"),
            secure: true,
            http_only: true,
            same_site: SameSite::Lax,
            persistent: true,
            host_prefix: true,
            wire_name: Cow::Borrowed(""),
            wire_name_ok: false,
        }
        .refreshed()
    }
}

impl CookieConfig {
    /// Sets the cookie name (default `offstate`). It must be an HTTP token
    /// (letters, digits and ``!#$%&'*+-.^_`|~``); a name that is not makes
    /// every response that sets the cookie fail with 500, loudly.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self.refreshed()
    }

    /// Sets the `Domain` attribute (default: none, a host-only cookie).
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        self.domain = Some(domain.into());
        self.refreshed()
    }

    /// Sets the `Path` attribute (default `/`).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.path = path.into();
        self.refreshed()
    }

    /// Sets the `Secure` attribute (default on). Turn it off only for
    /// plain-HTTP development.
    #[must_use]
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self.refreshed()
    }

    /// Sets the `HttpOnly` attribute (default on: scripts cannot read it).
    #[must_use]
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self.refreshed()
    }

    /// Sets the `SameSite` attribute (default [`SameSite::Lax`]).
    #[must_use]
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self.refreshed()
    }

    /// Whether the cookie carries a `Max-Age` that follows the session's
    /// expiry (default on). Off, it is a browser-session cookie (no
    /// `Max-Age`, no `Expires`) that the browser drops when it closes; the
    /// session still expires in the store on its own deadlines.
    #[must_use]
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self.refreshed()
    }

    /// Sets whether a cookie that qualifies (`Secure`, `Path=/`, no
    /// `Domain`) travels as `__Host-<name>` (default on; see the module
    /// docs for why).
    ///
    /// ```
    /// use offstate_tower::CookieConfig;
    ///
    /// assert_eq!(CookieConfig::default().wire_name(), "__Host-offstate");
    /// assert_eq!(CookieConfig::default().with_host_prefix(false).wire_name(), "offstate");
    /// assert_eq!(CookieConfig::default().with_secure(false).wire_name(), "offstate");
    /// ```
    #[must_use]
    pub fn with_host_prefix(mut self, on: bool) -> Self {
        self.host_prefix = on;
        self.refreshed()
    }

    fn refreshed(mut self) -> Self {
        let qualifies = self.host_prefix
            && self.secure
            && self.path == "/"
            && self.domain.is_none()
            && !self.name.starts_with("__Host-");
        self.wire_name = if qualifies {
            Cow::Owned(format!("__Host-{}", self.name))
        } else {
            self.name.clone()
        };
        self.wire_name_ok = crate::carrier::is_token(&self.wire_name);
        self
    }

    /// The cookie name as configured.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name the cookie is sent and read under: `__Host-<name>` when the
    /// prefix applies, else the name.
    #[must_use]
    pub fn wire_name(&self) -> &str {
        &self.wire_name
    }

    /// Whether the name sent is an HTTP token, as cookie names must be.
    pub(crate) fn wire_name_ok(&self) -> bool {
        self.wire_name_ok
    }

    /// Whether the `__Host-` prefix is used when the cookie qualifies.
    #[must_use]
    pub fn host_prefix(&self) -> bool {
        self.host_prefix
    }

    /// The `Domain` attribute.
    #[must_use]
    pub fn domain(&self) -> Option<&str> {
        self.domain.as_deref()
    }

    /// The `Path` attribute.
    #[must_use]
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The `Secure` attribute.
    #[must_use]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// The `HttpOnly` attribute.
    #[must_use]
    pub fn http_only(&self) -> bool {
        self.http_only
    }

    /// The `SameSite` attribute.
    #[must_use]
    pub fn same_site(&self) -> SameSite {
        self.same_site
    }

    /// Whether the cookie carries a `Max-Age`.
    #[must_use]
    pub fn persistent(&self) -> bool {
        self.persistent
    }
}

/// Where the session ID travels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// In a cookie (the default, for browsers).
    Cookie(CookieConfig),
    /// In a request header, for API clients. New and rotated IDs come back
    /// in the same response header; an empty value tells the client to
    /// forget its ID (the session ended).
    Header(HeaderName),
}

impl Default for Transport {
    fn default() -> Self {
        Self::Cookie(CookieConfig::default())
    }
}
