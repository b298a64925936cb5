//! The invalidation channel: how caches on different instances tell each
//! other that a session changed or ended, so no instance serves it stale.
//!
//! A channel carries [`Invalidation`]s. offstate-redis implements it on
//! Redis pub/sub; [`LocalChannel`] connects caches inside one process.
//! Delivery is at most once and may stop: subscribers are told with
//! [`ChannelEvent::Disconnected`] and must then stop trusting what they
//! cached until [`ChannelEvent::Connected`] comes back.

use std::future::Future;

use tokio::sync::{broadcast, mpsc};

use crate::error::StoreError;
use crate::id::{KEY_LEN, SessionKey};
use crate::record::Version;

/// A message on the channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Invalidation {
    /// The session under `key` was written (`version` is the new one) or
    /// deleted (`version` is `None`).
    Key {
        /// The session's key.
        key: SessionKey,
        /// The version written, or `None` for a delete.
        version: Option<Version>,
    },
    /// Every session of this principal was revoked.
    Principal(String),
}

/// Why a channel message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed invalidation message")]
pub struct MalformedInvalidation;

impl Invalidation {
    /// The wire form every channel uses: `k <key> <version>`, `k <key> -`
    /// or `p <principal>`.
    #[must_use]
    pub fn encode(&self) -> String {
        match self {
            Self::Key {
                key,
                version: Some(v),
            } => format!("k {} {}", key.as_str(), v.get()),
            Self::Key { key, version: None } => format!("k {} -", key.as_str()),
            Self::Principal(p) => format!("p {p}"),
        }
    }

    /// Parses the wire form.
    ///
    /// # Errors
    ///
    /// [`MalformedInvalidation`] for anything [`Invalidation::encode`] does
    /// not produce.
    pub fn decode(text: &str) -> Result<Self, MalformedInvalidation> {
        if let Some(principal) = text.strip_prefix("p ") {
            return Ok(Self::Principal(principal.to_owned()));
        }
        let rest = text.strip_prefix("k ").ok_or(MalformedInvalidation)?;
        // A key is a fixed number of characters, none of them a space.
        let (key, version) = rest
            .split_at_checked(KEY_LEN)
            .ok_or(MalformedInvalidation)?;
        let version = version.strip_prefix(' ').ok_or(MalformedInvalidation)?;
        let key = SessionKey::from_stored(key).map_err(|_| MalformedInvalidation)?;
        let version = match version {
            "-" => None,
            n => Some(Version::new(n.parse().map_err(|_| MalformedInvalidation)?)),
        };
        Ok(Self::Key { key, version })
    }

    /// Whether this message makes `copy` stale: a delete of its key, a
    /// write of its key at a version newer than the copy's, or a revoke of
    /// its principal. A write at the copy's own version (this instance's
    /// write coming back) or an older one does not.
    #[must_use]
    pub fn concerns(&self, copy: &CachedCopy<'_>) -> bool {
        match self {
            Self::Key { key, version } => {
                key == copy.key && version.is_none_or(|version| version > copy.version)
            }
            Self::Principal(principal) => copy.principal == Some(principal.as_str()),
        }
    }
}

/// A cached copy of a session that a cache is about to serve: what
/// [`InvalidationChannel::in_transit`] asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CachedCopy<'a> {
    /// The session's key.
    pub key: &'a SessionKey,
    /// The session's principal, if it has one.
    pub principal: Option<&'a str>,
    /// The version the copy holds.
    pub version: Version,
}

impl<'a> CachedCopy<'a> {
    /// The copy of `key` at `version`, owned by `principal`.
    #[must_use]
    pub fn new(key: &'a SessionKey, principal: Option<&'a str>, version: Version) -> Self {
        Self {
            key,
            principal,
            version,
        }
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelEvent {
    /// The subscription is live: messages from now on will arrive.
    Connected,
    /// The subscription dropped: messages may be missed until `Connected`.
    Disconnected,
    /// A peer's invalidation.
    Message(Invalidation),
}

/// A publish/subscribe channel for [`Invalidation`]s between instances.
pub trait InvalidationChannel: Send + Sync + 'static {
    /// Sends a message to every subscriber (this instance's included).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the channel is down.
    fn publish(
        &self,
        message: &Invalidation,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts a subscription. The implementation keeps it alive (and
    /// reconnects) for as long as the receiver is held, and reports its
    /// state with [`ChannelEvent::Connected`] and
    /// [`ChannelEvent::Disconnected`]; the first event is one of those two.
    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent>;

    /// Whether a message that [concerns](Invalidation::concerns) `copy`
    /// may have reached this process without being in a subscriber's
    /// receiver yet (unread on a socket, or in the channel's own tasks).
    /// Bytes that cannot be read as a message, or not yet, count as
    /// concerning every copy. A cache asks on every hit and, if so, asks
    /// the backend instead, so keep it cheap. The default, `false`, is for
    /// channels that cannot tell, or that hand messages over at once.
    fn in_transit(&self, copy: &CachedCopy<'_>) -> bool {
        let _ = copy;
        false
    }
}

/// An in-process channel: caches in one process (or one test) invalidate
/// each other. Clones share the channel.
#[derive(Debug, Clone)]
pub struct LocalChannel {
    sender: broadcast::Sender<Invalidation>,
}

impl Default for LocalChannel {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalChannel {
    /// A new channel.
    #[must_use]
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self { sender }
    }
}

impl InvalidationChannel for LocalChannel {
    async fn publish(&self, message: &Invalidation) -> Result<(), StoreError> {
        // No subscribers is not an error: nobody has anything cached.
        let _ = self.sender.send(message.clone());
        Ok(())
    }

    fn subscribe(&self) -> mpsc::Receiver<ChannelEvent> {
        let mut incoming = self.sender.subscribe();
        let (tx, rx) = mpsc::channel(1024);
        let forward = async move {
            if tx.send(ChannelEvent::Connected).await.is_err() {
                return;
            }
            loop {
                let event = match incoming.recv().await {
                    Ok(message) => ChannelEvent::Message(message),
                    // Missed messages: the subscriber must distrust its cache.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if tx.send(ChannelEvent::Disconnected).await.is_err() {
                            return;
                        }
                        ChannelEvent::Connected
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(forward);
            }
            Err(_) => {
                tracing::error!(
                    "LocalChannel::subscribe needs a tokio runtime; the subscription is closed"
                );
            }
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SessionId;

    #[test]
    fn wire_form_round_trips() {
        let key = SessionId::generate().key();
        for message in [
            Invalidation::Key {
                key: key.clone(),
                version: Some(Version::new(42)),
            },
            Invalidation::Key { key, version: None },
            Invalidation::Principal("alice smith".into()),
        ] {
            assert_eq!(Invalidation::decode(&message.encode()), Ok(message));
        }
    }

    #[test]
    fn only_the_exact_wire_form_decodes() {
        let key = SessionId::generate().key();
        let key = key.as_str();
        let short = &key[1..];
        let malformed = [
            String::new(),
            "k".into(),
            format!("k {key}"),
            format!("k {key} "),
            format!("k {key}  5"),
            format!("k {key} 5 "),
            format!("k {key} x"),
            format!("k {key} -1"),
            format!("k {key}5"),
            format!("k {key}A 5"),
            format!("k {short} 5"),
            format!("k  {key} 5"),
            format!("k {}= 5", &key[1..]),
            format!("k {}é 5", &key[2..]),
            format!("K {key} 5"),
            format!("x {key} 5"),
        ];
        for text in malformed {
            assert_eq!(
                Invalidation::decode(&text),
                Err(MalformedInvalidation),
                "{text:?}"
            );
        }
        assert!(matches!(
            Invalidation::decode(&format!("k {key} 18446744073709551615")),
            Ok(Invalidation::Key { version: Some(v), .. }) if v.get() == u64::MAX
        ));
        assert_eq!(
            Invalidation::decode("p "),
            Ok(Invalidation::Principal(String::new()))
        );
    }

    #[test]
    fn a_message_concerns_the_copies_it_makes_stale() {
        let key = SessionId::generate().key();
        let other = SessionId::generate().key();
        let copy = CachedCopy::new(&key, Some("alice"), Version::new(3));
        let about = |key: &SessionKey, version: Option<u64>| Invalidation::Key {
            key: key.clone(),
            version: version.map(Version::new),
        };
        assert!(about(&key, None).concerns(&copy));
        assert!(about(&key, Some(4)).concerns(&copy));
        // This instance's own write coming back, or an older one.
        assert!(!about(&key, Some(3)).concerns(&copy));
        assert!(!about(&key, Some(2)).concerns(&copy));
        assert!(!about(&other, None).concerns(&copy));
        assert!(Invalidation::Principal("alice".into()).concerns(&copy));
        assert!(!Invalidation::Principal("bob".into()).concerns(&copy));
        let anonymous = CachedCopy::new(&key, None, Version::new(3));
        assert!(!Invalidation::Principal("alice".into()).concerns(&anonymous));
    }

    #[test]
    fn garbage_is_rejected() {
        for text in ["", "k", "k short 1", "x y", "k AAAA -", "k  1"] {
            assert_eq!(Invalidation::decode(text), Err(MalformedInvalidation));
        }
    }

    #[tokio::test]
    async fn local_channel_delivers_to_every_subscriber() {
        let channel = LocalChannel::new();
        let mut a = channel.subscribe();
        let mut b = channel.subscribe();
        assert_eq!(a.recv().await, Some(ChannelEvent::Connected));
        assert_eq!(b.recv().await, Some(ChannelEvent::Connected));
        let message = Invalidation::Principal("bob".into());
        channel.publish(&message).await.unwrap();
        assert_eq!(a.recv().await, Some(ChannelEvent::Message(message.clone())));
        assert_eq!(b.recv().await, Some(ChannelEvent::Message(message)));
    }
}
