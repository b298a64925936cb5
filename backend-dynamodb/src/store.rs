//! `DynamoDbStore`: the handle on one sessions table, and how it is built
//! (from aws-config's chain, a custom loader, or an existing client).

use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, ConfigLoader};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::Region;
use offstate_core::SessionKey;

use crate::config::{AttributeNames, DynamoDbConfig};
use crate::error::ConnectError;

/// Sessions in a DynamoDB table. Clones share the client and settings.
///
/// See the [crate documentation](crate) for the table layout and the
/// semantics of each operation.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use offstate_dynamodb::{DynamoDbConfig, DynamoDbStore};
///
/// let store = DynamoDbStore::connect(DynamoDbConfig::new("sessions")).await?;
/// store.ensure_table().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct DynamoDbStore {
    pub(crate) client: Client,
    pub(crate) settings: Arc<Settings>,
}

/// What the operations need from the configuration, once resolved.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) table: String,
    pub(crate) prefix: String,
    pub(crate) names: AttributeNames,
    pub(crate) consistent_reads: bool,
    pub(crate) max_item_bytes: usize,
    /// The bound reported in [`StoreError::Timeout`](offstate_core::StoreError::Timeout).
    pub(crate) timeout: Duration,
    pub(crate) table_wait: Duration,
    /// `host[:port]` of the endpoint, for traces' `server.address`.
    pub(crate) address: Option<String>,
}

impl DynamoDbStore {
    /// Connects through aws-config's default chain (environment, shared
    /// config and credentials files, container and instance metadata), with
    /// the region, profile, endpoint, retry and timeout settings of
    /// `config` on top.
    ///
    /// # Errors
    ///
    /// [`ConnectError::NoRegion`] when no region is configured anywhere.
    pub async fn connect(config: DynamoDbConfig) -> Result<Self, ConnectError> {
        Self::connect_with(aws_config::defaults(BehaviorVersion::latest()), config).await
    }

    /// Like [`connect`](Self::connect), from a loader you prepared (static
    /// credentials, a custom HTTP client, ...). The settings of `config`
    /// that are set override the loader's.
    ///
    /// # Errors
    ///
    /// [`ConnectError::NoRegion`] when no region is configured anywhere.
    pub async fn connect_with(
        loader: ConfigLoader,
        config: DynamoDbConfig,
    ) -> Result<Self, ConnectError> {
        let mut loader = loader
            .retry_config(config.effective_retry())
            .timeout_config(config.effective_timeouts());
        if let Some(profile) = &config.profile {
            loader = loader.profile_name(profile);
        }
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(ConnectError::NoRegion);
        }
        Ok(Self::build(Client::new(&sdk), config))
    }

    /// Uses an existing client. The endpoint, region, retry and timeout
    /// settings of `config` are applied on top of the client's own when
    /// they were set explicitly; the profile cannot be (the client's
    /// credentials are already resolved). A client without an operation
    /// timeout gets the default ones: every store call has a bound, so a
    /// dead endpoint is a timeout, never a hang.
    #[must_use]
    pub fn from_client(client: Client, mut config: DynamoDbConfig) -> Self {
        let unbounded = operation_timeout(&client).is_none();
        if unbounded && config.timeouts.is_none() {
            config.timeouts = Some(config.effective_timeouts());
        }
        let overrides = config.endpoint_url.is_some()
            || config.region.is_some()
            || config.retry.is_some()
            || config.timeouts.is_some();
        let client = if overrides {
            let mut builder = client.config().to_builder();
            if let Some(url) = &config.endpoint_url {
                builder.set_endpoint_url(Some(url.clone()));
            }
            if let Some(region) = &config.region {
                builder.set_region(Some(Region::new(region.clone())));
            }
            if let Some(retry) = &config.retry {
                builder.set_retry_config(Some(retry.clone()));
            }
            if let Some(timeouts) = &config.timeouts {
                builder.set_timeout_config(Some(timeouts.clone()));
            }
            Client::from_conf(builder.build())
        } else {
            client
        };
        Self::build(client, config)
    }

    fn build(client: Client, config: DynamoDbConfig) -> Self {
        let timeout = operation_timeout(&client).unwrap_or(Duration::ZERO);
        // The endpoint we set (a client's own custom endpoint is not
        // readable back), else the region's.
        let address = match (config.endpoint_url.as_deref(), client.config().region()) {
            (Some(url), _) => Some(host_of(url).to_owned()),
            (None, Some(region)) => Some(format!("dynamodb.{region}.amazonaws.com")),
            (None, None) => None,
        };
        Self {
            client,
            settings: Arc::new(Settings {
                table: config.table,
                prefix: config.key_prefix,
                names: config.attributes,
                consistent_reads: config.consistent_reads,
                max_item_bytes: config.max_item_bytes,
                timeout,
                table_wait: config.table_wait,
                address,
            }),
        }
    }

    /// The SDK client, for anything the store does not do itself.
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The table name.
    #[must_use]
    pub fn table(&self) -> &str {
        &self.settings.table
    }

    /// The attribute names in use.
    #[must_use]
    pub fn attributes(&self) -> &AttributeNames {
        &self.settings.names
    }

    /// The partition key value a session is stored under: the prefix plus
    /// the hashed session key.
    #[must_use]
    pub fn store_key(&self, key: &SessionKey) -> String {
        format!("{}{}", self.settings.prefix, key.as_str())
    }
}

/// The bound a client puts on one operation (or one attempt), if any.
fn operation_timeout(client: &Client) -> Option<Duration> {
    client.config().timeout_config().and_then(|t| {
        t.operation_timeout()
            .or_else(|| t.operation_attempt_timeout())
    })
}

/// The `host[:port]` of an endpoint URL: no scheme, no credentials, no path.
fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

#[cfg(test)]
mod tests {
    use offstate_core::SessionStore as _;

    use super::*;

    #[test]
    fn the_address_is_the_endpoint_host_without_scheme_credentials_or_path() {
        assert_eq!(host_of("http://127.0.0.1:8000"), "127.0.0.1:8000");
        assert_eq!(
            host_of("https://user:secret@ddb.local:443/x?y"),
            "ddb.local:443"
        );
        assert_eq!(host_of("ddb.local"), "ddb.local");
    }

    #[test]
    fn the_store_reports_its_endpoint_or_the_regional_one() {
        let sdk = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .build();
        let client = Client::from_conf(sdk);
        let store = DynamoDbStore::from_client(client.clone(), DynamoDbConfig::new("t"));
        assert_eq!(
            store.server_address(),
            Some("dynamodb.eu-west-1.amazonaws.com")
        );
        let local = DynamoDbStore::from_client(
            client,
            DynamoDbConfig::new("t").with_endpoint_url("http://127.0.0.1:8000"),
        );
        assert_eq!(local.server_address(), Some("127.0.0.1:8000"));
    }
}
