//! Key naming: where a session's hash and a principal's index live.
//!
//! Every key carries a cluster hash tag (`{...}`) around its identifying
//! part, so that everything belonging to one session maps to one slot (and
//! so does everything of one principal's index). Principals are hashed in
//! their tag: a name may contain braces, and a dump of the keyspace should
//! not list user names.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use offstate_core::SessionKey;
use sha2::{Digest, Sha256};

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

    /// The hash holding one session: `<prefix>s:{<session key>}`.
    pub(crate) fn session(&self, key: &SessionKey) -> String {
        // Built by hand: this runs on every store call, and `format!` costs
        // several times the copying.
        let key = key.as_str();
        let mut name = String::with_capacity(self.prefix.len() + key.len() + 4);
        name.push_str(&self.prefix);
        name.push_str("s:{");
        name.push_str(key);
        name.push('}');
        name
    }

    /// The sorted set indexing one principal's sessions:
    /// `<prefix>principal:{<sha256 of the name>}`.
    pub(crate) fn principal(&self, principal: &str) -> String {
        let digest = Sha256::digest(principal.as_bytes());
        format!(
            "{}principal:{{{}}}",
            self.prefix,
            URL_SAFE_NO_PAD.encode(digest)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use offstate_core::SessionId;

    #[test]
    fn keys_carry_one_hash_tag() {
        let keys = KeySpace::new("offstate:");
        let key = SessionId::generate().key();
        let session = keys.session(&key);
        assert_eq!(session, format!("offstate:s:{{{}}}", key.as_str()));
        let principal = keys.principal("a{b}c");
        assert!(principal.starts_with("offstate:principal:{"));
        assert_eq!(principal.matches('{').count(), 1);
        assert_ne!(principal, keys.principal("a{b}d"));
    }
}
