//! How the session ID travels: in a cookie (browsers) or in a header (APIs),
//! and the cookie's attributes.
//!
//! The defaults are the safe ones for a browser app: `Secure`, `HttpOnly`,
//! `SameSite=Lax`, `Path=/`, and a `Max-Age` that follows the session's
//! expiry. Change them only with a reason (plain-HTTP development needs
//! `with_secure(false)`).

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
        }
    }
}

impl CookieConfig {
    /// Sets the cookie name (default `offstate`). It must be an HTTP token
    /// (letters, digits and ``!#$%&'*+-.^_`|~``); a name that is not makes
    /// every response that sets the cookie fail with 500, loudly.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the `Domain` attribute (default: none, a host-only cookie).
    #[must_use]
    pub fn with_domain(mut self, domain: impl Into<Cow<'static, str>>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Sets the `Path` attribute (default `/`).
    #[must_use]
    pub fn with_path(mut self, path: impl Into<Cow<'static, str>>) -> Self {
        self.path = path.into();
        self
    }

    /// Sets the `Secure` attribute (default on). Turn it off only for
    /// plain-HTTP development.
    #[must_use]
    pub fn with_secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Sets the `HttpOnly` attribute (default on: scripts cannot read it).
    #[must_use]
    pub fn with_http_only(mut self, http_only: bool) -> Self {
        self.http_only = http_only;
        self
    }

    /// Sets the `SameSite` attribute (default [`SameSite::Lax`]).
    #[must_use]
    pub fn with_same_site(mut self, same_site: SameSite) -> Self {
        self.same_site = same_site;
        self
    }

    /// Whether the cookie carries a `Max-Age` that follows the session's
    /// expiry (default on). Off, it is a browser-session cookie (no
    /// `Max-Age`, no `Expires`) that the browser drops when it closes; the
    /// session still expires in the store on its own deadlines.
    #[must_use]
    pub fn with_persistent(mut self, persistent: bool) -> Self {
        self.persistent = persistent;
        self
    }

    /// The cookie name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
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
