//! Errors: what a store can fail with, and what the session handle reports.

use std::time::Duration;

/// A boxed error kept as the source of an offstate error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A store operation failed. Conflicts are not errors: they are answers
/// ([`SaveOutcome::Conflict`](crate::SaveOutcome::Conflict)).
///
/// Ask [`StoreError::is_outage`] to decide between the outage policy and a
/// plain error, without matching strings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The store did not answer within the configured bound.
    #[error("session store did not answer within {0:?}")]
    Timeout(Duration),
    /// The store could not be reached or dropped the connection.
    #[error("session store unavailable")]
    Unavailable(#[source] BoxError),
    /// A stored record could not be decoded. Only that session is affected.
    #[error("stored session record is corrupt")]
    Corrupt(#[source] BoxError),
    /// The record is larger than the store can hold; nothing was written.
    #[error("session record of {size} bytes exceeds the store's limit of {limit} bytes")]
    TooLarge {
        /// Size of the record that was refused.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// The store cannot do this (memcached cannot list keys, for example).
    #[error("this session store does not support {0}")]
    Unsupported(&'static str),
    /// Any other failure reported by the store's client or server.
    #[error("session store failed")]
    Backend(#[source] BoxError),
}

impl StoreError {
    /// Wraps a client error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }

    /// Wraps a decoding error as [`StoreError::Corrupt`].
    pub fn corrupt(error: impl Into<BoxError>) -> Self {
        Self::Corrupt(error.into())
    }

    /// Wraps any other error as [`StoreError::Backend`].
    pub fn backend(error: impl Into<BoxError>) -> Self {
        Self::Backend(error.into())
    }

    /// True for a timeout.
    #[must_use]
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout(_))
    }

    /// True when the store is down or slow rather than the request being bad:
    /// the case an outage policy (fail closed or fail open) is for.
    #[must_use]
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Timeout(_) | Self::Unavailable(_))
    }
}

/// A session operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A value could not be serialized or deserialized.
    #[error("session value {key:?} could not be encoded or decoded")]
    Codec {
        /// The session key whose value failed.
        key: String,
        /// The codec's error.
        #[source]
        source: BoxError,
    },
    /// Under [`WritePolicy::Reject`](crate::WritePolicy::Reject), another
    /// request changed a key this request also set.
    #[error("session value {key:?} was changed by a concurrent request")]
    Conflict {
        /// The contested key.
        key: String,
    },
    /// Every write attempt met a newer version; the changes were not saved.
    #[error("session write still conflicted after {attempts} attempts")]
    RetriesExhausted {
        /// How many attempts were made.
        attempts: u32,
    },
    /// The session was deleted, revoked or expired while this request used
    /// it. Its changes were dropped rather than bring it back.
    #[error("the session ended while the request was using it")]
    Gone,
    /// A configured size or count limit would be exceeded; nothing was written.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// The session has no principal, so there is nothing to revoke.
    #[error("the session has no principal")]
    NoPrincipal,
}

impl SessionError {
    /// True when the cause is a store outage (timeout or unreachable).
    #[must_use]
    pub fn is_outage(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_outage())
    }
}

/// A configured limit that a session write would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// Too many keys in one session.
    #[error("session would hold {count} keys; the limit is {limit}")]
    TooManyKeys {
        /// Keys the session would hold.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// One value is too large.
    #[error("session value {key:?} has {size} bytes; the limit is {limit}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value's encoded size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The whole record is too large.
    #[error("session record would have {size} bytes; the limit is {limit}")]
    RecordTooLarge {
        /// The record's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The key begins with [`RESERVED_KEY_PREFIX`](crate::RESERVED_KEY_PREFIX):
    /// offstate keeps those for itself.
    #[error(
        "session key {key:?} is reserved: keys beginning with \"offstate.\" belong to offstate"
    )]
    ReservedKey {
        /// The key.
        key: String,
    },
}
