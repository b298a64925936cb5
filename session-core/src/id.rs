//! Session IDs, and the storage keys derived from them.
//!
//! An ID is what the client holds (in a cookie or a header). A [`SessionKey`]
//! is what a store files the session under: a SHA-256 of the ID. A dump of
//! the store therefore reveals no ID that could be replayed as a cookie.
//!
//! Why this file is long: IDs, keys and key prefixes share one alphabet,
//! its table decoder and encoder; half of it is tests of the exact forms
//! accepted and written.

use std::fmt;
use std::hash::Hasher;
use std::str::FromStr;

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
        fill_random(&mut bytes);
        Self(bytes)
    }

    /// Draws a new random ID whose [`key`](Self::key) starts with `prefix`:
    /// random IDs are drawn until one's key matches, so the result is
    /// uniform over the IDs that match (a prefix of `n` characters leaves
    /// 192 − 6·`n` bits unknown to someone who knows the prefix, and the
    /// prefix says nothing about the ID itself).
    ///
    /// It costs 64ⁿ draws on average (one SHA-256 of 24 bytes each, about
    /// 0.1 µs with SHA instructions): 64 for one character (30 µs), 4,096
    /// for two (1.5 ms, measured on a busy 2-core machine), spent on the
    /// calling thread. A store asks for it through
    /// [`SessionStore::key_prefix`](crate::SessionStore::key_prefix), to
    /// file a new session beside its principal's other data.
    ///
    /// ```
    /// use offstate_core::{KeyPrefix, SessionId};
    ///
    /// let prefix = KeyPrefix::new("Ab").unwrap();
    /// let id = SessionId::generate_with_key_prefix(&prefix);
    /// assert!(id.key().as_str().starts_with("Ab"));
    /// ```
    ///
    /// # Panics
    ///
    /// Never in practice, as [`generate`](Self::generate).
    #[must_use]
    pub fn generate_with_key_prefix(prefix: &KeyPrefix) -> Self {
        // Random bytes in batches: one system call per many candidates.
        const BATCH: usize = 64;
        let mut pool = [0u8; ID_BYTES * BATCH];
        loop {
            fill_random(&mut pool);
            for chunk in pool.chunks_exact(ID_BYTES) {
                if prefix.matches(&Sha256::digest(chunk)) {
                    let mut bytes = [0u8; ID_BYTES];
                    bytes.copy_from_slice(chunk);
                    return Self(bytes);
                }
            }
        }
    }

    /// Parses the text form of an ID.
    ///
    /// # Errors
    ///
    /// [`IdError`] when the text is not exactly [`SESSION_ID_LEN`] URL-safe
    /// base64 characters. Nothing else is accepted: no padding, no whitespace.
    pub fn parse(text: &str) -> Result<Self, IdError> {
        Self::parse_bytes(text.as_bytes())
    }

    /// Parses the text form of an ID given as bytes (a header value, say),
    /// as [`parse`](Self::parse) does: anything but exactly
    /// [`SESSION_ID_LEN`] URL-safe base64 characters is refused, so no
    /// separate UTF-8 check is needed first.
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse).
    pub fn parse_bytes(text: &[u8]) -> Result<Self, IdError> {
        if text.len() != SESSION_ID_LEN {
            return Err(IdError::Length(text.len()));
        }
        // 32 characters of 6 bits are exactly the 24 bytes, with no
        // padding bits: each group of 4 characters gives 3 bytes. Decoded
        // here, with a table, rather than by the base64 engine, since every
        // request with a cookie parses one.
        let mut bytes = [0u8; ID_BYTES];
        for (quad, out) in text.chunks_exact(4).zip(bytes.chunks_exact_mut(3)) {
            let mut group = 0u32;
            let mut invalid = 0u8;
            for &c in quad {
                let value = SEXTETS[usize::from(c)];
                invalid |= value;
                group = (group << 6) | u32::from(value & 0x3f);
            }
            if invalid & INVALID != 0 {
                return Err(IdError::Alphabet);
            }
            let [_, a, b, c] = group.to_be_bytes();
            out.copy_from_slice(&[a, b, c]);
        }
        Ok(Self(bytes))
    }

    /// The key a store files this session under: a hash, never the ID itself.
    #[must_use]
    pub fn key(&self) -> SessionKey {
        let digest: [u8; 32] = Sha256::digest(self.0).into();
        SessionKey(encode_url_safe(&digest))
    }

    /// The text form as ASCII bytes (what `Display` writes), with no
    /// allocation: for a middleware that writes the ID into a header.
    #[must_use]
    pub fn encoded(&self) -> [u8; SESSION_ID_LEN] {
        encode_url_safe(&self.0)
    }
}

/// The URL-safe base64 alphabet, by sextet value.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `input` as URL-safe base64 without padding; `OUT` is that length
/// (4 characters per 3 bytes, 2 or 3 more for a tail of 1 or 2 bytes;
/// a wrong `OUT` is a bug, caught by the tests of both users). Written
/// here with a table rather than by the base64 engine: every request
/// encodes a key, and every write an ID.
fn encode_url_safe<const IN: usize, const OUT: usize>(input: &[u8; IN]) -> [u8; OUT] {
    let sextet = |bits: u32, shift: u32| ALPHABET[(bits >> shift) as usize & 0x3f];
    let mut out = [0u8; OUT];
    let groups = input.chunks_exact(3);
    let tail = groups.remainder();
    let mut quads = out.chunks_exact_mut(4);
    for (group, quad) in groups.zip(&mut quads) {
        let bits = u32::from(group[0]) << 16 | u32::from(group[1]) << 8 | u32::from(group[2]);
        quad.copy_from_slice(&[
            sextet(bits, 18),
            sextet(bits, 12),
            sextet(bits, 6),
            sextet(bits, 0),
        ]);
    }
    // A tail of 1 or 2 bytes gives 2 or 3 characters.
    let rest = quads.into_remainder();
    let bits = tail.iter().enumerate().fold(0u32, |bits, (i, byte)| {
        bits | u32::from(*byte) << (16 - 8 * i)
    });
    for (i, slot) in rest.iter_mut().enumerate() {
        *slot = sextet(bits, 18 - 6 * i as u32);
    }
    debug_assert_eq!(
        rest.len(),
        if tail.is_empty() { 0 } else { tail.len() + 1 },
        "encode_url_safe: wrong output length"
    );
    out
}

/// Marks a byte that is not a URL-safe base64 character in [`SEXTETS`].
const INVALID: u8 = 0x80;

/// Every byte's value as a URL-safe base64 character, or [`INVALID`].
const SEXTETS: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut c = 0;
    while c < 256 {
        // `c < 256`, so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        if let Some(value) = sextet(c as u8) {
            table[c] = value;
        }
        c += 1;
    }
    table
};

/// The value of a URL-safe base64 character.
const fn sextet(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'-' => Some(62),
        b'_' => Some(63),
        _ => None,
    }
}

/// Fills `bytes` from the operating system's CSPRNG, or aborts.
fn fill_random(bytes: &mut [u8]) {
    if let Err(error) = getrandom::fill(bytes) {
        // A predictable session ID is a security hole; refusing to run is
        // the only safe answer, and there is no error the caller could act on.
        tracing::error!(%error, "the operating system's random source failed");
        std::process::abort();
    }
}

/// The longest [`KeyPrefix`]: two characters (12 bits, 4,096 draws per
/// ID). Each more character would multiply the cost of an ID by 64.
pub const MAX_KEY_PREFIX_LEN: usize = 2;

/// The first characters a [`SessionKey`] must start with: how a store asks
/// for a new session to be filed in a place of its choosing (a Redis
/// Cluster hash slot, say) without learning anything about the ID. Made of
/// 1 to [`MAX_KEY_PREFIX_LEN`] URL-safe base64 characters, the alphabet of
/// keys.
///
/// ```
/// use offstate_core::KeyPrefix;
///
/// assert!(KeyPrefix::new("x_").is_ok());
/// assert!(KeyPrefix::new("").is_err());
/// assert!(KeyPrefix::new("abc").is_err());
/// assert!(KeyPrefix::new("a+").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyPrefix {
    text: String,
    /// The prefix's bits, left-aligned in 24 bits (the first 3 bytes of a
    /// key's digest), and which of those bits it fixes.
    bits: u32,
    mask: u32,
}

impl KeyPrefix {
    /// Checks `text` and builds the prefix.
    ///
    /// # Errors
    ///
    /// [`IdError::Length`] for an empty text or one longer than
    /// [`MAX_KEY_PREFIX_LEN`]; [`IdError::Alphabet`] for a character
    /// outside URL-safe base64.
    pub fn new(text: &str) -> Result<Self, IdError> {
        if text.is_empty() || text.len() > MAX_KEY_PREFIX_LEN {
            return Err(IdError::Length(text.len()));
        }
        let mut bits = 0u32;
        for (i, byte) in text.bytes().enumerate() {
            let value = sextet(byte).ok_or(IdError::Alphabet)?;
            bits |= u32::from(value) << (18 - 6 * i);
        }
        let fixed = 6 * text.len() as u32;
        let mask = ((1u32 << fixed) - 1) << (24 - fixed);
        Ok(Self {
            text: text.to_owned(),
            bits,
            mask,
        })
    }

    /// The prefix as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a key with this SHA-256 digest starts with the prefix.
    fn matches(&self, digest: &[u8]) -> bool {
        let head = match digest {
            [a, b, c, ..] => u32::from_be_bytes([0, *a, *b, *c]),
            _ => return false,
        };
        head & self.mask == self.bits
    }
}

impl fmt::Display for KeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.encoded();
        f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?)
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
pub(crate) const KEY_LEN: usize = 43;

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

    /// Rebuilds a key that a store returned (from a principal index, say).
    ///
    /// # Errors
    ///
    /// [`IdError`] when the text is not a 43-character URL-safe base64 hash.
    pub fn from_stored(text: &str) -> Result<Self, IdError> {
        let bytes: [u8; KEY_LEN] = text
            .as_bytes()
            .try_into()
            .map_err(|_| IdError::Length(text.len()))?;
        // The decoder's table: every peer reads every write's key off the
        // invalidation channel.
        if bytes
            .iter()
            .any(|&b| SEXTETS[usize::from(b)] & INVALID != 0)
        {
            return Err(IdError::Alphabet);
        }
        Ok(Self(bytes))
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

/// Hashes a [`SessionKey`] by its first bytes, for maps keyed by session
/// keys ([`KeyHashing`]). The key is already the output of a cryptographic
/// hash of a server-generated ID, so hashing it again (SipHash, on every
/// lookup) buys nothing; clients cannot choose the keys that get stored,
/// so they cannot crowd one bucket either. Use it only for maps whose keys
/// are those of stored sessions (or bounded in number): anyone can compute
/// the key of an ID they make up.
#[derive(Debug, Default)]
pub struct KeyHasher(u64);

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

/// Builds [`KeyHasher`]s, for maps keyed by [`SessionKey`]:
/// `HashMap<SessionKey, V, KeyHashing>`.
pub type KeyHashing = std::hash::BuildHasherDefault<KeyHasher>;

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use std::collections::HashSet;

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
    fn parse_refuses_every_byte_outside_the_alphabet_in_every_position() {
        let valid = SessionId::generate().to_string();
        for byte in 0..=u8::MAX {
            let in_alphabet = byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_';
            for position in [0, 7, 13, SESSION_ID_LEN - 1] {
                let mut text = valid.clone().into_bytes();
                text[position] = byte;
                let parsed = SessionId::parse_bytes(&text);
                if in_alphabet {
                    assert!(parsed.is_ok(), "byte {byte:#04x} at {position}");
                } else {
                    assert_eq!(
                        parsed,
                        Err(IdError::Alphabet),
                        "byte {byte:#04x} at {position}"
                    );
                }
            }
        }
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
    fn ids_and_keys_encode_as_the_base64_engine_does() {
        // Every byte value in every position of a group, then random IDs.
        let mut inputs: Vec<[u8; ID_BYTES]> = (0..=u8::MAX)
            .map(|b| std::array::from_fn(|i| b.wrapping_add(i as u8)))
            .collect();
        inputs.extend((0..64).map(|_| SessionId::generate().0));
        for bytes in inputs {
            let id = SessionId(bytes);
            let expected = URL_SAFE_NO_PAD.encode(bytes);
            assert_eq!(id.encoded(), expected.as_bytes());
            assert_eq!(id.to_string(), expected);
            let digest = Sha256::digest(bytes);
            assert_eq!(id.key().as_str(), URL_SAFE_NO_PAD.encode(digest));
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
    fn key_hasher_spreads_keys_over_the_bits_a_map_uses() {
        use std::hash::BuildHasher as _;

        let hashing = KeyHashing::default();
        let hashes: Vec<u64> = (0..4096)
            .map(|_| hashing.hash_one(SessionId::generate().key()))
            .collect();
        // A table of 4096 buckets indexes by the low 12 bits: random
        // hashes fill about 1 - 1/e of them (2589).
        let buckets: HashSet<u64> = hashes.iter().map(|h| h & 0xfff).collect();
        assert!(buckets.len() > 2400, "{} buckets of 4096", buckets.len());
        // The map's tag is the top 7 bits: every value shows up.
        let tags: HashSet<u64> = hashes.iter().map(|h| h >> 57).collect();
        assert_eq!(tags.len(), 128);
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
    fn ids_drawn_for_a_prefix_have_keys_that_start_with_it() {
        for text in ["A", "_", "zz", "-9", "Ab"] {
            let prefix = KeyPrefix::new(text).unwrap();
            for _ in 0..3 {
                let id = SessionId::generate_with_key_prefix(&prefix);
                assert!(id.key().as_str().starts_with(text), "{text}");
            }
        }
    }

    #[test]
    fn every_prefix_character_maps_to_its_bits() {
        // Each character of the alphabet, in either position, matches the
        // key that starts with it and no other.
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        for id in std::iter::repeat_with(SessionId::generate).take(200) {
            let digest = Sha256::digest(id.0);
            let key = id.key();
            for (i, c) in alphabet.chars().enumerate() {
                let one = KeyPrefix::new(&c.to_string()).unwrap();
                assert_eq!(one.matches(&digest), key.as_str().starts_with(c), "{i}");
            }
            let two = KeyPrefix::new(&key.as_str()[..2]).unwrap();
            assert!(two.matches(&digest));
        }
    }

    #[test]
    fn key_prefixes_refuse_bad_text() {
        assert_eq!(KeyPrefix::new(""), Err(IdError::Length(0)));
        assert_eq!(KeyPrefix::new("abc"), Err(IdError::Length(3)));
        assert_eq!(KeyPrefix::new("a="), Err(IdError::Alphabet));
        assert_eq!(KeyPrefix::new("é"), Err(IdError::Alphabet));
        assert_eq!(KeyPrefix::new("Q").unwrap().as_str(), "Q");
    }

    #[test]
    fn debug_redacts_the_id() {
        let id = SessionId::generate();
        assert!(!format!("{id:?}").contains(&id.to_string()));
    }
}
