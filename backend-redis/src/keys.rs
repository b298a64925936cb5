//! Key naming: where a session and a principal's index live.
//!
//! Every key carries a cluster hash tag (`{...}`), and the tag is short: two
//! characters, 4,096 tags over Redis Cluster's 16,384 slots.
//!
//! - A session is `<prefix>s:{<first 2 characters of the session
//!   key>}<the other 41>`.
//! - A principal's index is `<prefix>principal:{<first 2>}<the other 41>`
//!   of the base64url SHA-256 of the principal's name (hashed: a name may
//!   contain braces, and a dump of the keyspace should not list user
//!   names).
//!
//! Both tags come from the same alphabet, so a session whose key starts
//! with its principal's tag is in the same slot as that principal's index:
//! a login asks for such a key
//! ([`SessionStore::key_prefix`](offstate_core::SessionStore::key_prefix)),
//! and the store then writes the session and its index entry in one script,
//! and a master that restarts empty loses the principal's index and its
//! sessions together, never one without the other. Anonymous sessions and
//! sessions placed elsewhere (created through the store directly) spread
//! over the 4,096 tags.
//!
//! **Legacy names.** Before the short tags, the whole key was the tag:
//! `<prefix>s:{<session key>}` and `<prefix>principal:{<sha256>}`. Sessions
//! written then live under those names until they end; see
//! `RedisStore::with_legacy_names`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use offstate_core::{KeyPrefix, SessionKey};
use sha2::{Digest, Sha256};

/// How many characters of a key (or of a principal's digest) form the hash
/// tag.
pub(crate) const TAG_LEN: usize = 2;

/// The name of a Redis key and its hash tag (two names are in one slot
/// when their tags are equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Name {
    pub(crate) name: String,
    tag: std::ops::Range<usize>,
}

impl Name {
    fn tagged(prefix: &str, kind: &str, text: &str, tag_len: usize) -> Self {
        // Built by hand: this runs on every store call, and `format!` costs
        // several times the copying.
        let mut name = String::with_capacity(prefix.len() + kind.len() + text.len() + 2);
        name.push_str(prefix);
        name.push_str(kind);
        name.push('{');
        let start = name.len();
        let (tag, rest) = text.split_at(tag_len.min(text.len()));
        name.push_str(tag);
        let end = name.len();
        name.push('}');
        name.push_str(rest);
        Self {
            name,
            tag: start..end,
        }
    }

    /// The hash tag.
    pub(crate) fn tag(&self) -> &str {
        &self.name[self.tag.clone()]
    }

    /// Whether `other` is certainly in the same cluster slot.
    pub(crate) fn same_slot(&self, other: &Self) -> bool {
        self.tag() == other.tag()
    }
}

/// Builds the Redis keys of one store from its prefix.
#[derive(Debug, Clone)]
pub(crate) struct KeySpace {
    prefix: String,
}

impl KeySpace {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The string holding one session: `<prefix>s:{<2>}<41>`.
    pub(crate) fn session(&self, key: &SessionKey) -> Name {
        Name::tagged(&self.prefix, "s:", key.as_str(), TAG_LEN)
    }

    /// The name a session had before the short tags: `<prefix>s:{<key>}`.
    pub(crate) fn legacy_session(&self, key: &SessionKey) -> Name {
        let key = key.as_str();
        Name::tagged(&self.prefix, "s:", key, key.len())
    }

    /// The sorted set indexing one principal's sessions:
    /// `<prefix>principal:{<2>}<41>` of the SHA-256 of the name.
    pub(crate) fn principal(&self, principal: &str) -> Name {
        Name::tagged(&self.prefix, "principal:", &digest(principal), TAG_LEN)
    }

    /// The index's name before the short tags:
    /// `<prefix>principal:{<sha256 of the name>}`.
    pub(crate) fn legacy_principal(&self, principal: &str) -> Name {
        let digest = digest(principal);
        Name::tagged(&self.prefix, "principal:", &digest, digest.len())
    }

    /// The key prefix that puts a session in its principal's index's slot.
    pub(crate) fn placement(principal: &str) -> Option<KeyPrefix> {
        let digest = digest(principal);
        KeyPrefix::new(digest.get(..TAG_LEN)?).ok()
    }
}

/// The base64url SHA-256 of a principal's name.
fn digest(principal: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(principal.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use offstate_core::SessionId;

    #[test]
    fn keys_carry_one_short_hash_tag() {
        let keys = KeySpace::new("offstate:");
        let key = SessionId::generate().key();
        let session = keys.session(&key);
        let text = key.as_str();
        assert_eq!(
            session.name,
            format!("offstate:s:{{{}}}{}", &text[..2], &text[2..])
        );
        assert_eq!(session.tag(), &text[..2]);
        let principal = keys.principal("a{b}c");
        assert!(principal.name.starts_with("offstate:principal:{"));
        assert_eq!(principal.name.matches('{').count(), 1);
        assert_eq!(principal.tag().len(), TAG_LEN);
        assert_ne!(principal, keys.principal("a{b}d"));
    }

    #[test]
    fn legacy_names_tag_the_whole_key() {
        let keys = KeySpace::new("offstate:");
        let key = SessionId::generate().key();
        let legacy = keys.legacy_session(&key);
        assert_eq!(legacy.name, format!("offstate:s:{{{}}}", key.as_str()));
        assert!(!legacy.same_slot(&keys.session(&key)));
        let principal = keys.legacy_principal("alice");
        assert_eq!(principal.tag().len(), 43);
        assert_eq!(
            principal.name.replace(['{', '}'], ""),
            keys.principal("alice").name.replace(['{', '}'], "")
        );
    }

    #[test]
    fn a_placed_session_shares_its_principals_slot() {
        let keys = KeySpace::new("p:");
        let prefix = KeySpace::placement("bob").expect("a prefix");
        let key = SessionId::generate_with_key_prefix(&prefix).key();
        assert!(keys.session(&key).same_slot(&keys.principal("bob")));
        let elsewhere = SessionId::generate().key();
        assert_eq!(
            keys.session(&elsewhere).same_slot(&keys.principal("bob")),
            elsewhere.as_str().starts_with(prefix.as_str())
        );
    }
}
