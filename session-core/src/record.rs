//! The stored form of a session: versioned data plus its deadlines.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// A point in wall-clock time, in milliseconds since the Unix epoch.
///
/// Milliseconds because that is what Redis `PEXPIREAT` takes; DynamoDB and
/// memcached get [`Timestamp::as_secs_ceil`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The system clock's current time (what [`SystemClock`](crate::SystemClock)
    /// reads), for calling a store directly from a tool or a test.
    #[must_use]
    pub fn now() -> Self {
        use crate::clock::Clock as _;
        crate::clock::SystemClock.now()
    }

    /// A timestamp from milliseconds since the Unix epoch.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self(millis)
    }

    /// Milliseconds since the Unix epoch.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Seconds since the Unix epoch, rounded up, so that a server-side TTL
    /// derived from it never fires before the library's own deadline.
    #[must_use]
    pub const fn as_secs_ceil(self) -> u64 {
        self.0.div_ceil(1000)
    }

    /// This time plus a duration, saturating.
    #[must_use]
    pub fn saturating_add(self, by: Duration) -> Self {
        let millis = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(millis))
    }

    /// How long from `earlier` until this time; zero if it is not later.
    #[must_use]
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// A record's version. It starts at 1 when the session is created and goes up
/// by one on every write of data, so a write can be made conditional on the
/// version the writer loaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(u64);

impl Version {
    /// The version of a freshly created record.
    pub const INITIAL: Self = Self(1);

    /// A version from its number.
    #[must_use]
    pub const fn new(number: u64) -> Self {
        Self(number)
    }

    /// The version's number.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The version a successful write after this one produces.
    #[must_use]
    pub const fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// When a session ends: the sliding idle deadline and the fixed absolute one.
/// `None` means that limit is not in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Deadlines {
    /// Ends the session after a period without activity; moved forward by
    /// writes and touches.
    pub idle: Option<Timestamp>,
    /// Ends the session a fixed time after it was created, whatever happens.
    pub absolute: Option<Timestamp>,
}

impl Deadlines {
    /// No deadline at all: the session lives until it is deleted.
    #[must_use]
    pub const fn none() -> Self {
        Self {
            idle: None,
            absolute: None,
        }
    }

    /// Only an idle deadline, at `at`.
    #[must_use]
    pub const fn idle_at(at: Timestamp) -> Self {
        Self::none().with_idle_at(at)
    }

    /// Only an absolute deadline, at `at`.
    #[must_use]
    pub const fn absolute_at(at: Timestamp) -> Self {
        Self::none().with_absolute_at(at)
    }

    /// The same deadlines with the idle one at `at`.
    #[must_use]
    pub const fn with_idle_at(mut self, at: Timestamp) -> Self {
        self.idle = Some(at);
        self
    }

    /// The same deadlines with the absolute one at `at`.
    #[must_use]
    pub const fn with_absolute_at(mut self, at: Timestamp) -> Self {
        self.absolute = Some(at);
        self
    }

    /// These deadlines after a write or touch that asks for the idle
    /// deadline `idle`: the later of the two idle deadlines (no idle
    /// deadline counts as the latest), and the same absolute deadline.
    /// This is how stores keep deadlines from ever moving backwards.
    #[must_use]
    pub fn extended_to(self, idle: Option<Timestamp>) -> Self {
        let idle = match (self.idle, idle) {
            (Some(stored), Some(asked)) => Some(stored.max(asked)),
            _ => None,
        };
        Self {
            idle,
            absolute: self.absolute,
        }
    }

    /// The earlier of the two deadlines, if any is set: when the session ends.
    #[must_use]
    pub fn expires_at(&self) -> Option<Timestamp> {
        match (self.idle, self.absolute) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the session has ended at `now`. A deadline is exclusive: at
    /// the deadline itself the session is already over.
    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|at| now >= at)
    }
}

/// Data keys beginning with this belong to offstate: a session handle
/// refuses to write them ([`LimitError::ReservedKey`](crate::LimitError::ReservedKey)).
pub const RESERVED_KEY_PREFIX: &str = "offstate.";

/// The data key that marks a retired record: an ID a login moved the
/// session away from (see the rotation in `session/save.rs`). Its value is
/// that login's token. A retired record is no session: a handle reads it as
/// absent, and it ends at its deadline or with the login's clean-up.
pub(crate) const RETIRED_KEY: &str = "offstate.retired";

/// A stored session: data, version, deadlines and the optional principal.
///
/// Data is one entry per key, each value already serialized (JSON unless the
/// app chose another [`Codec`](crate::Codec)). Stores that can apply per-key
/// deltas keep the entries apart, so a write touches only what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Record {
    /// Goes up on every write of data.
    pub version: Version,
    /// When the session was created.
    pub created_at: Timestamp,
    /// When it ends.
    pub deadlines: Deadlines,
    /// The user the session belongs to, if any; used to find and revoke all
    /// of a user's sessions.
    pub principal: Option<String>,
    /// Serialized values by key.
    pub data: BTreeMap<String, Vec<u8>>,
}

impl Record {
    /// An empty record at [`Version::INITIAL`].
    #[must_use]
    pub fn new(created_at: Timestamp, deadlines: Deadlines) -> Self {
        Self {
            version: Version::INITIAL,
            created_at,
            deadlines,
            principal: None,
            data: BTreeMap::new(),
        }
    }

    /// The token of the login that retired this record, if one did.
    pub(crate) fn retired_by(&self) -> Option<&[u8]> {
        self.data.get(RETIRED_KEY).map(Vec::as_slice)
    }

    /// Whether the record has ended at `now`.
    #[must_use]
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.deadlines.is_expired(now)
    }

    /// The bytes the record's contents take: keys, values and principal, plus
    /// a fixed allowance for version and deadlines. Stores compare this with
    /// their item limits before writing.
    #[must_use]
    pub fn size(&self) -> usize {
        const FIXED: usize = 64;
        let data: usize = self.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        FIXED + data + self.principal.as_ref().map_or(0, String::len)
    }
}
