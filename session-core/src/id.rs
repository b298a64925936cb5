//! Session IDs, and the storage keys derived from them.
//!
//! An ID is what the client holds (in a cookie or a header). A [`SessionKey`]
//! is what a store files the session under: a SHA-256 of the ID. A dump of
//! the store therefore reveals no ID that could be replayed as a cookie.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// Number of random bytes in a session ID (192 bits; the floor is 128).
const ID_BYTES: usize = 24;

/// Length of an ID's text form: base64url without padding of its 24 bytes.
pub const SESSION_ID_LEN: usize = 32;

/// A session ID: 192 bits from the operating system's CSPRNG.
///
/// Its text form is always [`SESSION_ID_LEN`] URL-safe base64 characters, so
/// it fits in cookies, headers and URLs without escaping. `Debug` redacts it,
/// so it does not leak into logs by accident; `Display` writes it in full and
/// is meant for the cookie and header that carry it.
///
/// ```
/// use offstate_core::SessionId;
///
/// let id = SessionId::generate();
/// let parsed: SessionId = id.to_string().parse().unwrap();
/// assert_eq!(id, parsed);
/// assert!("not-an-id".parse::<SessionId>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// Draws a new random ID from the operating system's CSPRNG.
    ///
    /// # Panics
    ///
    /// Never in practice: if the OS has no entropy source at all, this aborts
    /// the process rather than hand out a guessable ID.
    #[must_use]
    pub fn generate() -> Self {
        let mut bytes = [0u8; ID_BYTES];
        if let Err(error) = getrandom::fill(&mut bytes) {
            // A predictable session ID is a security hole; refusing to run is
            // the only safe answer, and there is no error the caller could act on.
            tracing::error!(%error, "the operating system's random source failed");
            std::process::abort();
        }
        Self(bytes)
    }

    /// Parses the text form of an ID.
    ///
    /// # Errors
    ///
    /// [`IdError`] when the text is not exactly [`SESSION_ID_LEN`] URL-safe
    /// base64 characters. Nothing else is accepted: no padding, no whitespace.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        if text.len() != SESSION_ID_LEN {
            return Err(IdError::Length(text.len()));
        }
        // 32 characters of 6 bits are exactly the 24 bytes, with no
        // padding bits: each group of 4 characters gives 3 bytes. Decoded
        // here rather than by the base64 engine, since every request with
        // a cookie parses one.
        let mut bytes = [0u8; ID_BYTES];
        for (quad, out) in text
            .as_bytes()
            .chunks_exact(4)
            .zip(bytes.chunks_exact_mut(3))
        {
            let mut group = 0u32;
            for &c in quad {
                group = (group << 6) | u32::from(sextet(c).ok_or(IdError::Alphabet)?);
            }
            let [_, a, b, c] = group.to_be_bytes();
            out.copy_from_slice(&[a, b, c]);
        }
        Ok(Self(bytes))
    }

    /// The key a store files this session under: a hash, never the ID itself.
    #[must_use]
    pub fn key(&self) -> SessionKey {
        let digest = Sha256::digest(self.0);
        let mut text = [0u8; KEY_LEN];
        match URL_SAFE_NO_PAD.encode_slice(digest, &mut text) {
            Ok(KEY_LEN) => SessionKey(text),
            // 32 bytes always encode to 43 characters; should base64 ever
            // disagree, the owned encoding is the same text.
            _ => SessionKey::from_text(&URL_SAFE_NO_PAD.encode(digest)),
        }
    }
}

/// The value of a URL-safe base64 character.
fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; SESSION_ID_LEN];
        match URL_SAFE_NO_PAD.encode_slice(self.0, &mut buf) {
            Ok(_) => f.write_str(std::str::from_utf8(&buf).map_err(|_| fmt::Error)?),
            Err(_) => Err(fmt::Error),
        }
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(<redacted>)")
    }
}

impl FromStr for SessionId {
    type Err = IdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// Why a text is not a session ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The text has the wrong length.
    #[error("a session ID has {SESSION_ID_LEN} characters, this has {0}")]
    Length(usize),
    /// The text has characters outside URL-safe base64.
    #[error("a session ID uses only URL-safe base64 characters")]
    Alphabet,
}

/// Length of a key's text form: base64url without padding of a SHA-256.
const KEY_LEN: usize = 43;

/// The key a session is stored under: the SHA-256 of its [`SessionId`], in
/// URL-safe base64 (43 characters).
///
/// Stores add their own prefix or namespace in front of it. Revocation lists
/// return keys, not IDs: the store never learns an ID it could leak.
///
/// The text is kept inline (always 43 ASCII bytes), so a key is made and
/// cloned without allocating: the session layer clones it a few times per
/// request.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SessionKey([u8; KEY_LEN]);

impl std::hash::Hash for SessionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // As its text would (`str`'s hash: the bytes, then 0xff), not as
        // an array (a length prefix first): the memory store's hasher
        // takes the first bytes it is given.
        state.write(&self.0);
        state.write_u8(0xff);
    }
}

impl SessionKey {
    /// The key as text, ready to be prefixed and sent to a store.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only base64url characters are ever stored (see `key` and
        // `from_stored`), so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The key's bytes (its ASCII text).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A key from text already checked to be 43 base64url characters;
    /// anything else leaves the rest of the key zeroed (never the case).
    fn from_text(text: &str) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        for (to, from) in bytes.iter_mut().zip(text.bytes()) {
            *to = from;
        }
        Self(bytes)
    }

    /// Rebuilds a key that a store returned (from a principal index, say).
    ///
    /// # Errors
    ///
    /// [`IdError`] when the text is not a 43-character URL-safe base64 hash.
    pub fn from_stored(text: &str) -> Result<Self, IdError> {
        if text.len() != KEY_LEN {
            return Err(IdError::Length(text.len()));
        }
        if !text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(IdError::Alphabet);
        }
        Ok(Self::from_text(text))
    }
}

impl fmt::Display for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A key is a hash and cannot be replayed, but a short prefix is enough
        // to correlate log lines.
        let text = self.as_str();
        write!(f, "SessionKey({}…)", text.get(..8).unwrap_or(text))
    }
}

/// Hashes a [`SessionKey`] by its first bytes. The key is already the
/// output of a cryptographic hash of a server-generated ID, so hashing it
/// again (SipHash, on every lookup) buys nothing; clients cannot choose
/// the keys that get stored, so they cannot crowd one bucket either.
#[derive(Debug, Default)]
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        // Spread the key's text (a few bits of each byte carry entropy)
        // over all 64 bits, top bits included (the map uses them).
        let h = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        h ^ (h >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.0 == 0 && bytes.len() >= 8 {
            let mut first = [0_u8; 8];
            first.copy_from_slice(&bytes[..8]);
            self.0 = u64::from_le_bytes(first);
        } else {
            for b in bytes {
                self.0 = self.0.rotate_left(5) ^ u64::from(*b);
            }
        }
    }
}

/// Builds [`KeyHasher`]s, for maps keyed by [`SessionKey`].
pub(crate) type KeyHashing = std::hash::BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_round_trip_and_differ() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        assert_ne!(a, b);
        let text = a.to_string();
        assert_eq!(text.len(), SESSION_ID_LEN);
        assert_eq!(SessionId::parse(&text).unwrap(), a);
    }

    #[test]
    fn parse_decodes_as_the_base64_engine_does() {
        for _ in 0..64 {
            let id = SessionId::generate();
            let text = URL_SAFE_NO_PAD.encode(id.0);
            assert_eq!(SessionId::parse(&text).unwrap().0, id.0);
        }
        let every_character = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for window in every_character.as_bytes().windows(SESSION_ID_LEN) {
            let text = std::str::from_utf8(window).unwrap();
            let mut expected = [0u8; ID_BYTES];
            assert_eq!(
                URL_SAFE_NO_PAD.decode_slice(text, &mut expected),
                Ok(ID_BYTES)
            );
            assert_eq!(SessionId::parse(text).unwrap().0, expected);
        }
    }

    #[test]
    fn parse_rejects_anything_but_the_exact_form() {
        let good = SessionId::generate().to_string();
        assert_eq!(SessionId::parse(""), Err(IdError::Length(0)));
        assert!(SessionId::parse(&good[1..]).is_err());
        assert!(SessionId::parse(&format!("{good}A")).is_err());
        let mut bad = good.clone().into_bytes();
        bad[3] = b'+';
        assert_eq!(
            SessionId::parse(std::str::from_utf8(&bad).unwrap()),
            Err(IdError::Alphabet)
        );
        // Multi-byte UTF-8 of the right byte length must not panic.
        let tricky = "é".repeat(SESSION_ID_LEN / 2);
        assert!(SessionId::parse(&tricky).is_err());
    }

    #[test]
    fn key_is_a_hash_not_the_id() {
        let id = SessionId::generate();
        let key = id.key();
        assert_eq!(key.as_str().len(), 43);
        assert!(!key.as_str().contains(&id.to_string()));
        assert_eq!(key, id.key());
        assert_eq!(SessionKey::from_stored(key.as_str()).unwrap(), key);
    }

    #[test]
    fn debug_redacts_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_string()));
    }
}
