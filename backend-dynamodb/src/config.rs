//! How a [`DynamoDbStore`](crate::DynamoDbStore) is set up: the table and its
//! attribute names, read consistency, the item size limit, and the SDK's
//! endpoint, region, retry and timeout settings.
//!
//! Everything has a default, so `DynamoDbConfig::new("sessions")` is a
//! working configuration; the AWS region and credentials come from
//! aws-config's normal chain (environment, profile, instance metadata).

use std::time::Duration;

use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;

/// The prefix in front of every partition key unless
/// [`DynamoDbConfig::with_key_prefix`] sets another, as on every backend.
pub const DEFAULT_KEY_PREFIX: &str = "offstate:";

/// DynamoDB's own limit on the size of one item: 400 KB.
pub const DYNAMODB_MAX_ITEM_BYTES: usize = 400 * 1024;

/// The names of the attributes a session item is made of, and of the
/// principal index. Change them to fit an existing table or a naming rule.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AttributeNames {
    /// The partition key (S): the optional prefix plus the hashed session key.
    pub key: String,
    /// The session data (M of B): one entry per session key.
    pub data: String,
    /// The record version (N).
    pub version: String,
    /// When the session was created (N, epoch milliseconds).
    pub created: String,
    /// The idle deadline (N, epoch milliseconds); absent when none.
    pub idle: String,
    /// The absolute deadline (N, epoch milliseconds); absent when none.
    pub absolute: String,
    /// DynamoDB's TTL attribute (N, epoch seconds, rounded up from the
    /// earlier deadline); absent when the session never expires.
    pub ttl: String,
    /// The principal (S); absent when the session has none.
    pub principal: String,
    /// The name of the global secondary index on the principal.
    pub principal_index: String,
}

impl Default for AttributeNames {
    fn default() -> Self {
        Self {
            key: "pk".into(),
            data: "data".into(),
            version: "version".into(),
            created: "created_ms".into(),
            idle: "idle_ms".into(),
            absolute: "absolute_ms".into(),
            ttl: "ttl".into(),
            principal: "principal".into(),
            principal_index: "principal-index".into(),
        }
    }
}

impl AttributeNames {
    /// Sets the partition key attribute's name.
    #[must_use]
    pub fn with_key(mut self, name: impl Into<String>) -> Self {
        self.key = name.into();
        self
    }

    /// Sets the data map attribute's name.
    #[must_use]
    pub fn with_data(mut self, name: impl Into<String>) -> Self {
        self.data = name.into();
        self
    }

    /// Sets the version attribute's name.
    #[must_use]
    pub fn with_version(mut self, name: impl Into<String>) -> Self {
        self.version = name.into();
        self
    }

    /// Sets the creation time attribute's name.
    #[must_use]
    pub fn with_created(mut self, name: impl Into<String>) -> Self {
        self.created = name.into();
        self
    }

    /// Sets the idle deadline attribute's name.
    #[must_use]
    pub fn with_idle(mut self, name: impl Into<String>) -> Self {
        self.idle = name.into();
        self
    }

    /// Sets the absolute deadline attribute's name.
    #[must_use]
    pub fn with_absolute(mut self, name: impl Into<String>) -> Self {
        self.absolute = name.into();
        self
    }

    /// Sets the TTL attribute's name.
    #[must_use]
    pub fn with_ttl(mut self, name: impl Into<String>) -> Self {
        self.ttl = name.into();
        self
    }

    /// Sets the principal attribute's name.
    #[must_use]
    pub fn with_principal(mut self, name: impl Into<String>) -> Self {
        self.principal = name.into();
        self
    }

    /// Sets the principal index's name.
    #[must_use]
    pub fn with_principal_index(mut self, name: impl Into<String>) -> Self {
        self.principal_index = name.into();
        self
    }
}

/// The configuration of a [`DynamoDbStore`](crate::DynamoDbStore).
///
/// ```
/// use std::time::Duration;
/// use offstate_dynamodb::DynamoDbConfig;
///
/// let config = DynamoDbConfig::new("sessions")
///     .with_key_prefix("shop:")
///     .with_endpoint_url("http://127.0.0.1:8000")
///     .with_region("us-east-1")
///     .with_max_attempts(5)
///     .with_command_timeout(Duration::from_secs(2));
/// assert_eq!(config.table(), "sessions");
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbConfig {
    pub(crate) table: String,
    pub(crate) key_prefix: String,
    pub(crate) attributes: AttributeNames,
    pub(crate) consistent_reads: bool,
    pub(crate) max_item_bytes: usize,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) profile: Option<String>,
    pub(crate) retry: Option<RetryConfig>,
    pub(crate) timeouts: Option<TimeoutConfig>,
    pub(crate) table_wait: Duration,
}

impl DynamoDbConfig {
    /// A configuration for sessions in `table`, with default attribute
    /// names, strongly consistent reads and DynamoDB's 400 KB item limit.
    #[must_use]
    pub fn new(table: impl Into<String>) -> Self {
        Self {
            table: table.into(),
            key_prefix: DEFAULT_KEY_PREFIX.to_owned(),
            attributes: AttributeNames::default(),
            consistent_reads: true,
            max_item_bytes: DYNAMODB_MAX_ITEM_BYTES,
            endpoint_url: None,
            region: None,
            profile: None,
            retry: None,
            timeouts: None,
            table_wait: Duration::from_secs(300),
        }
    }

    /// The table name.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Sets the table name.
    #[must_use]
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// Puts `prefix` in front of every partition key (default
    /// [`DEFAULT_KEY_PREFIX`]), so several apps (or tests) can share one
    /// table. Listing a principal only returns keys
    /// under this prefix.
    #[must_use]
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets the attribute and index names.
    #[must_use]
    pub fn with_attributes(mut self, attributes: AttributeNames) -> Self {
        self.attributes = attributes;
        self
    }

    /// Whether loads use strongly consistent reads (the default, `true`).
    /// Eventually consistent reads cost half as much, but a load right
    /// after a write on another instance may see the older version (the
    /// conditional write then conflicts and retries, so nothing is lost).
    #[must_use]
    pub fn with_consistent_reads(mut self, yes: bool) -> Self {
        self.consistent_reads = yes;
        self
    }

    /// The item size limit that writes are checked against before they are
    /// sent (default and maximum useful value: 400 KB).
    #[must_use]
    pub fn with_max_item_bytes(mut self, bytes: usize) -> Self {
        self.max_item_bytes = bytes;
        self
    }

    /// Sends requests to this endpoint instead of AWS's, for local
    /// emulators (DynamoDB Local, moto, LocalStack).
    #[must_use]
    pub fn with_endpoint_url(mut self, url: impl Into<String>) -> Self {
        self.endpoint_url = Some(url.into());
        self
    }

    /// Uses this region instead of the one aws-config finds.
    #[must_use]
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Uses this named profile from the shared AWS config files.
    #[must_use]
    pub fn with_profile(mut self, profile: impl Into<String>) -> Self {
        self.profile = Some(profile.into());
        self
    }

    /// Sets the SDK's retry configuration (throttling and transient errors
    /// are retried by the SDK, with backoff).
    #[must_use]
    pub fn with_retry_config(mut self, retry: RetryConfig) -> Self {
        self.retry = Some(retry);
        self
    }

    /// Sets the SDK's standard retry mode with at most `attempts` attempts
    /// per operation (1 disables retries).
    #[must_use]
    pub fn with_max_attempts(mut self, attempts: u32) -> Self {
        self.retry = Some(RetryConfig::standard().with_max_attempts(attempts.max(1)));
        self
    }

    /// Sets the SDK's timeout configuration.
    #[must_use]
    pub fn with_timeout_config(mut self, timeouts: TimeoutConfig) -> Self {
        self.timeouts = Some(timeouts);
        self
    }

    /// Bounds a whole operation, retries included: past it the store
    /// answers [`StoreError::Timeout`](offstate_core::StoreError::Timeout).
    /// Keeps the other timeouts of the configuration (or the defaults).
    #[must_use]
    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        let base = self.timeouts.take().unwrap_or_else(default_timeouts);
        self.timeouts = Some(base.to_builder().operation_timeout(timeout).build());
        self
    }

    /// Bounds connecting to the endpoint. Keeps the other timeouts of the
    /// configuration (or the defaults).
    #[must_use]
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        let base = self.timeouts.take().unwrap_or_else(default_timeouts);
        self.timeouts = Some(base.to_builder().connect_timeout(timeout).build());
        self
    }

    /// How long [`ensure_table`](crate::DynamoDbStore::ensure_table) waits for
    /// the table to become active (default five minutes).
    #[must_use]
    pub fn with_table_wait(mut self, wait: Duration) -> Self {
        self.table_wait = wait;
        self
    }

    /// The retry configuration a connected store uses.
    pub(crate) fn effective_retry(&self) -> RetryConfig {
        self.retry
            .clone()
            .unwrap_or_else(|| RetryConfig::standard().with_max_attempts(3))
    }

    /// The timeout configuration a connected store uses.
    pub(crate) fn effective_timeouts(&self) -> TimeoutConfig {
        self.timeouts.clone().unwrap_or_else(default_timeouts)
    }
}

/// Defaults sized for a request path: a session store that does not answer
/// within seconds is an outage, not something to wait for.
fn default_timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(2))
        .operation_attempt_timeout(Duration::from_secs(2))
        .operation_timeout(Duration::from_secs(5))
        .build()
}
