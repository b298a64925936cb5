//! Reading the session ID from a request and telling the client about
//! changes, for both transports. Everything here treats the request as
//! hostile: no input makes it panic.
//!
//! Decisions, documented in the crate root too:
//! - missing, garbage, non-UTF-8, wrongly signed: no session (anonymous),
//!   and the store is never asked;
//! - the session cookie (or header) several times with the same value: fine;
//!   with different values (a cookie tossed in by a sibling domain or an
//!   old path): every one that parses is a candidate, and the load keeps
//!   the one live session; several live ones are ambiguous and the request
//!   gets none. Nobody is locked out by a planted cookie;
//! - a value longer than the configured maximum: 431, with a removal cookie.

use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue, StatusCode};
use offstate_core::SessionId;
use offstate_core::middleware::ClientUpdate;
use offstate_core::telemetry::RefusedInput;

use crate::config::{CookieConfig, SameSite, Transport};
use crate::signing::SigningKey;

/// Everything the middleware needs to read and write the ID.
#[derive(Debug, Clone)]
pub(crate) struct Carrier {
    pub(crate) transport: Transport,
    pub(crate) signing: Option<SigningKey>,
    pub(crate) max_value_len: usize,
}

/// Most different values of the session cookie (or header) considered in
/// one request; more is abuse, and the rest are ignored.
const MAX_CANDIDATES: usize = 4;

/// Why a request's session input was refused outright.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The session cookie or header value is over the maximum length.
    TooLong,
}

impl Refusal {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Self::TooLong => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    pub(crate) fn message(self) -> &'static str {
        match self {
            Self::TooLong => "session identifier too large",
        }
    }
}

/// The header value could not be built (a misconfigured cookie name,
/// domain or path).
#[derive(Debug)]
pub(crate) struct BadHeader;

/// The usable IDs a request carries, in the order it carries them: a
/// fixed array, since nearly every request carries one (or none) and a
/// list would be allocated for it.
#[derive(Debug, Default)]
pub(crate) struct Presented([Option<SessionId>; MAX_CANDIDATES]);

impl IntoIterator for Presented {
    type Item = SessionId;
    type IntoIter = std::iter::Flatten<std::array::IntoIter<Option<SessionId>, MAX_CANDIDATES>>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter().flatten()
    }
}

/// The distinct values seen (kept inline: no allocation per request), or
/// why they are refused.
#[derive(Default)]
struct Seen<'a> {
    values: [&'a [u8]; MAX_CANDIDATES],
    len: usize,
    refusal: Option<Refusal>,
}

impl<'a> Seen<'a> {
    fn add(&mut self, value: &'a [u8], max: usize) {
        if value.len() > max {
            self.refusal = Some(Refusal::TooLong);
            return;
        }
        if self.len < MAX_CANDIDATES && !self.values().contains(&value) {
            self.values[self.len] = value;
            self.len += 1;
        }
    }

    fn values(&self) -> &[&'a [u8]] {
        self.values.get(..self.len).unwrap_or_default()
    }
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    bytes.get(start..end.max(start)).unwrap_or_default()
}

impl Carrier {
    /// The session IDs the request carries (none, one, or a few different
    /// ones to choose from), without the unusable ones; `Err` for input
    /// that is refused outright.
    pub(crate) fn read(&self, headers: &HeaderMap) -> Result<Presented, Refusal> {
        let mut seen = Seen::default();
        match &self.transport {
            Transport::Cookie(cookie) => {
                let name = cookie.wire_name().as_bytes();
                // HTTP/2 sends one Cookie header per cookie: read them all.
                for header in headers.get_all(COOKIE) {
                    // memchr: the pairs are split with SIMD, not byte by byte.
                    let bytes = header.as_bytes();
                    let mut start = 0;
                    let ends = memchr::memchr_iter(b';', bytes).chain([bytes.len()]);
                    for end in ends {
                        let pair = trim(bytes.get(start..end).unwrap_or_default());
                        start = end + 1;
                        let Some(eq) = memchr::memchr(b'=', pair) else {
                            continue;
                        };
                        let (key, value) = pair.split_at(eq);
                        if trim(key) == name {
                            seen.add(trim(value.get(1..).unwrap_or_default()), self.max_value_len);
                        }
                    }
                }
            }
            Transport::Header(header) => {
                for value in headers.get_all(header) {
                    seen.add(trim(value.as_bytes()), self.max_value_len);
                }
            }
        }
        if let Some(refusal) = seen.refusal {
            RefusedInput::TooLong.record();
            return Err(refusal);
        }
        let mut presented = Presented::default();
        let usable = seen
            .values()
            .iter()
            .copied()
            .filter(|value| !value.is_empty())
            .filter_map(|value| self.decode(value).map_err(|reason| reason.record()).ok());
        for (slot, id) in presented.0.iter_mut().zip(usable) {
            *slot = Some(id);
        }
        Ok(presented)
    }

    /// The ID in `value`, or why it is unusable (counted, then ignored).
    fn decode(&self, value: &[u8]) -> Result<SessionId, RefusedInput> {
        match &self.signing {
            Some(key) => {
                let text = std::str::from_utf8(value).map_err(|_| RefusedInput::NotUtf8)?;
                key.verify(text).ok_or(RefusedInput::BadSignature)
            }
            // An ID is ASCII: the parse refuses anything else.
            None => SessionId::parse_bytes(value).map_err(|_| {
                if std::str::from_utf8(value).is_err() {
                    RefusedInput::NotUtf8
                } else {
                    RefusedInput::Malformed
                }
            }),
        }
    }

    fn encode(&self, id: &SessionId) -> String {
        match &self.signing {
            Some(key) => key.sign(id),
            None => id.to_string(),
        }
    }

    /// Adds what the client must be told to the response headers.
    pub(crate) fn write(
        &self,
        headers: &mut HeaderMap,
        update: &ClientUpdate,
    ) -> Result<(), BadHeader> {
        if let Transport::Cookie(config) = &self.transport
            && !config.wire_name_ok()
        {
            return Err(BadHeader);
        }
        match (&self.transport, update) {
            (_, ClientUpdate::Unchanged) => Ok(()),
            (
                Transport::Cookie(config),
                ClientUpdate::Set {
                    id,
                    expires_at,
                    as_of,
                },
            ) => {
                let max_age = expires_at
                    .filter(|_| config.persistent())
                    .map(|at| at.saturating_since(*as_of).as_secs().max(1));
                let text = match &self.signing {
                    Some(key) => set_cookie(config, key.sign(id).as_bytes(), max_age),
                    None => set_cookie(config, &id.encoded(), max_age),
                };
                // The text becomes the header's bytes as it is: no copy.
                let value = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                    .map_err(|_| BadHeader)?;
                headers.append(SET_COOKIE, value);
                Ok(())
            }
            (Transport::Cookie(config), ClientUpdate::Remove) => {
                headers.append(SET_COOKIE, header_value(removal_cookie(config))?);
                Ok(())
            }
            (Transport::Header(name), ClientUpdate::Set { id, .. }) => {
                headers.insert(name.clone(), header_value(self.encode(id))?);
                Ok(())
            }
            (Transport::Header(name), ClientUpdate::Remove) => {
                headers.insert(name.clone(), HeaderValue::from_static(""));
                Ok(())
            }
            // ClientUpdate is non-exhaustive: a future variant changes nothing.
            (_, _) => Ok(()),
        }
    }
}

fn header_value(text: String) -> Result<HeaderValue, BadHeader> {
    HeaderValue::try_from(text).map_err(|_| BadHeader)
}

/// Whether `name` is an HTTP token (RFC 9110 `tchar`s), as cookie names must be.
pub(crate) fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn base_cookie(config: &CookieConfig, value: String) -> cookie::Cookie<'static> {
    let mut cookie = cookie::Cookie::new(config.wire_name().to_owned(), value);
    cookie.set_path(config.path().to_owned());
    if let Some(domain) = config.domain() {
        cookie.set_domain(domain.to_owned());
    }
    cookie.set_secure(config.secure());
    cookie.set_http_only(config.http_only());
    cookie.set_same_site(config.same_site().to_cookie());
    cookie
}

/// The `Set-Cookie` value that sends the ID (`value`, its text): the same
/// text the `cookie` crate writes for [`base_cookie`] (attributes in its
/// order), written straight into a buffer of exactly its length, since
/// every write and touch sends it; the header then takes the buffer.
fn set_cookie(config: &CookieConfig, value: &[u8], max_age_secs: Option<u64>) -> Vec<u8> {
    let mut digits = [0u8; 20];
    let max_age = max_age_secs.map(|secs| decimal(secs.min(i64::MAX as u64), &mut digits));
    let domain = config.domain().map(|d| d.strip_prefix('.').unwrap_or(d));
    let when = |on: bool, text: &'static str| if on { text } else { "" };
    let parts: [&[u8]; 12] = [
        config.wire_name().as_bytes(),
        b"=",
        value,
        when(config.http_only(), "; HttpOnly").as_bytes(),
        match config.same_site() {
            SameSite::Strict => b"; SameSite=Strict",
            SameSite::Lax => b"; SameSite=Lax",
            SameSite::None => b"; SameSite=None",
        },
        when(config.secure(), "; Secure").as_bytes(),
        b"; Path=",
        config.path().as_bytes(),
        when(domain.is_some(), "; Domain=").as_bytes(),
        domain.unwrap_or_default().as_bytes(),
        when(max_age.is_some(), "; Max-Age=").as_bytes(),
        max_age.unwrap_or_default(),
    ];
    let mut text = Vec::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        text.extend_from_slice(part);
    }
    text
}

/// `n` in decimal, written at the end of `digits` (20 hold any `u64`).
fn decimal(mut n: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut start = digits.len();
    loop {
        start -= 1;
        // `n % 10 < 10`: the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        if let Some(digit) = digits.get_mut(start) {
            *digit = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.get(start..).unwrap_or_default()
}

/// A cookie that makes the browser forget the session cookie: same name,
/// path and domain, empty value, `Max-Age=0` and an `Expires` in the past.
pub(crate) fn removal_cookie(config: &CookieConfig) -> String {
    let mut cookie = base_cookie(config, String::new());
    cookie.set_max_age(cookie::time::Duration::ZERO);
    cookie.set_expires(cookie::time::OffsetDateTime::UNIX_EPOCH);
    cookie.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie_crate(config: &CookieConfig, value: &str, max_age: Option<u64>) -> String {
        let mut cookie = base_cookie(config, value.to_owned());
        if let Some(secs) = max_age {
            cookie.set_max_age(cookie::time::Duration::seconds(
                i64::try_from(secs).unwrap_or(i64::MAX),
            ));
        }
        cookie.to_string()
    }

    #[test]
    fn set_cookie_writes_what_the_cookie_crate_writes() {
        let configs = [
            CookieConfig::default(),
            CookieConfig::default().with_secure(false),
            CookieConfig::default()
                .with_http_only(false)
                .with_same_site(SameSite::Strict)
                .with_domain(".example.com")
                .with_path("/app"),
            CookieConfig::default()
                .with_same_site(SameSite::None)
                .with_domain("example.com"),
            CookieConfig::default()
                .with_same_site(SameSite::None)
                .with_secure(false),
        ];
        for config in &configs {
            for max_age in [None, Some(0), Some(9), Some(10), Some(1800), Some(u64::MAX)] {
                let text = set_cookie(config, b"abc", max_age);
                assert_eq!(
                    std::str::from_utf8(&text).unwrap(),
                    with_cookie_crate(config, "abc", max_age),
                );
                assert_eq!(text.len(), text.capacity(), "no spare room to copy away");
            }
        }
    }
}
