//! The policies a [`Sessions`](crate::Sessions) applies to every handle:
//! what a plain insert does on a conflict, what happens when the store is
//! down, and how large a session may grow.

use crate::error::LimitError;

/// What a plain [`Session::insert`](crate::Session::insert) does when a
/// concurrent request changed the same key since this request loaded the
/// session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WritePolicy {
    /// This request's value replaces the other one (other keys are kept).
    #[default]
    LastWriterWins,
    /// The save fails with [`SessionError::Conflict`](crate::SessionError::Conflict);
    /// use [`Session::update`](crate::Session::update) for values that must merge.
    Reject,
}

/// What to do when the store is down (times out or cannot be reached).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OutagePolicy {
    /// Reads fail with a typed error (middleware answers 503). The default:
    /// a shop should not pretend a basket is empty.
    #[default]
    FailClosed,
    /// Reads see an empty, anonymous session. Its writes are refused with an
    /// error, so it never replaces the real session, whose cookie is kept.
    FailOpen,
}

/// Size and count limits, checked before anything is written.
///
/// The defaults keep a record under DynamoDB's 400 KB item limit.
///
/// ```
/// use offstate_core::Limits;
///
/// let limits = Limits::default().with_max_keys(64).with_max_value_bytes(16 * 1024);
/// assert_eq!(limits.max_keys, 64);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Most keys one session may hold.
    pub max_keys: usize,
    /// Largest encoded value, in bytes.
    pub max_value_bytes: usize,
    /// Largest record ([`Record::size`](crate::Record::size)), in bytes.
    pub max_record_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_keys: 512,
            max_value_bytes: 256 * 1024,
            max_record_bytes: 384 * 1024,
        }
    }
}

impl Limits {
    /// Sets the most keys one session may hold.
    #[must_use]
    pub fn with_max_keys(mut self, n: usize) -> Self {
        self.max_keys = n;
        self
    }

    /// Sets the largest encoded value.
    #[must_use]
    pub fn with_max_value_bytes(mut self, n: usize) -> Self {
        self.max_value_bytes = n;
        self
    }

    /// Sets the largest record.
    #[must_use]
    pub fn with_max_record_bytes(mut self, n: usize) -> Self {
        self.max_record_bytes = n;
        self
    }

    pub(crate) fn check_value(&self, key: &str, size: usize) -> Result<(), LimitError> {
        if key.starts_with(crate::record::RESERVED_KEY_PREFIX) {
            return Err(LimitError::ReservedKey {
                key: key.to_owned(),
            });
        }
        if size > self.max_value_bytes {
            return Err(LimitError::ValueTooLarge {
                key: key.to_owned(),
                size,
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }

    /// Checks a record's shape: `keys` entries, `size` bytes as
    /// [`Record::size`](crate::Record::size) counts them.
    pub(crate) fn check_record(&self, keys: usize, size: usize) -> Result<(), LimitError> {
        if keys > self.max_keys {
            return Err(LimitError::TooManyKeys {
                count: keys,
                limit: self.max_keys,
            });
        }
        if size > self.max_record_bytes {
            return Err(LimitError::RecordTooLarge {
                size,
                limit: self.max_record_bytes,
            });
        }
        Ok(())
    }
}
