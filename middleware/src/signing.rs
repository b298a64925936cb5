//! Signed session IDs: an HMAC-SHA256 tag next to the ID, so that a forged
//! or guessed ID is refused before any store call.
//!
//! IDs are already 192 random bits, so signing is not needed to stop
//! guessing; it stops a flood of made-up IDs from reaching the store, and
//! lets an operator invalidate every outstanding ID by changing the key.
//! The signed form is `<id>.<base64url(HMAC-SHA256(key, id))>`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use offstate_core::SessionId;
use sha2::Sha256;

use crate::error::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// The shortest key accepted, in bytes.
pub const MIN_KEY_LEN: usize = 32;

/// Length of the base64url text of a 32-byte tag.
const TAG_TEXT_LEN: usize = 43;

/// A secret key for signing session IDs. `Debug` does not show it.
///
/// ```
/// use offstate_tower::SigningKey;
///
/// let key = SigningKey::new([7u8; 32]).unwrap();
/// assert!(SigningKey::new(b"too short").is_err());
/// # drop(key);
/// ```
#[derive(Clone)]
pub struct SigningKey {
    /// HMAC with the key already absorbed; cloned for each use.
    mac: HmacSha256,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A key from secret bytes (at least [`MIN_KEY_LEN`]; use random bytes
    /// from a secret store, not a password).
    ///
    /// # Errors
    ///
    /// [`ConfigError::KeyTooShort`] for fewer than [`MIN_KEY_LEN`] bytes.
    pub fn new(key: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let key = key.as_ref();
        if key.len() < MIN_KEY_LEN {
            return Err(ConfigError::KeyTooShort {
                len: key.len(),
                min: MIN_KEY_LEN,
            });
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|_| ConfigError::InvalidKey)?;
        Ok(Self { mac })
    }

    fn mac(&self) -> HmacSha256 {
        self.mac.clone()
    }

    /// The signed text form of `id`.
    pub(crate) fn sign(&self, id: &SessionId) -> String {
        let text = id.to_string();
        let mut mac = self.mac();
        mac.update(text.as_bytes());
        let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{text}.{tag}")
    }

    /// The ID in a signed text, if the tag verifies (in constant time).
    pub(crate) fn verify(&self, signed: &str) -> Option<SessionId> {
        let (text, tag) = signed.rsplit_once('.')?;
        if tag.len() != TAG_TEXT_LEN {
            return None;
        }
        let id = SessionId::parse(text).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        let mut mac = self.mac();
        mac.update(text.as_bytes());
        mac.verify_slice(&tag).ok()?;
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_ids_round_trip_and_forgeries_fail() {
        let key = SigningKey::new([1u8; 32]).unwrap();
        let other = SigningKey::new([2u8; 32]).unwrap();
        let id = SessionId::generate();
        let signed = key.sign(&id);
        assert_eq!(key.verify(&signed), Some(id.clone()));
        assert_eq!(other.verify(&signed), None);
        assert_eq!(key.verify(&id.to_string()), None);
        let (text, _) = signed.rsplit_once('.').unwrap();
        let forged = format!("{text}.{}", "A".repeat(TAG_TEXT_LEN));
        assert_eq!(key.verify(&forged), None);
        let swapped = format!(
            "{}.{}",
            SessionId::generate(),
            signed.rsplit_once('.').unwrap().1
        );
        assert_eq!(key.verify(&swapped), None);
        assert_eq!(key.verify("."), None);
        assert_eq!(key.verify(""), None);
    }
}
