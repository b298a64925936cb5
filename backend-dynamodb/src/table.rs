//! `ensure_table`: creates the sessions table with its TTL and principal
//! index if it is not there, and checks it once it is.
//!
//! The same table as code, for operators, is the CloudFormation resource in
//! the [crate documentation](crate#the-table-as-code).

use aws_sdk_dynamodb::client::Waiters;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::create_table::CreateTableError;
use aws_sdk_dynamodb::operation::update_time_to_live::UpdateTimeToLiveError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification, TimeToLiveStatus,
};
use offstate_core::StoreError;

use crate::error::map_sdk;
use crate::store::DynamoDbStore;

impl DynamoDbStore {
    /// Creates the table if it does not exist: on-demand billing
    /// (`PAY_PER_REQUEST`), the string partition key, TTL on the TTL
    /// attribute, and the principal index (partition key the principal,
    /// sort key the session's partition key, projecting the deadlines).
    /// Waits until the table is active. Calling it again, or on a table
    /// created as code, is fine.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when a request fails, when the table does not become
    /// active within the configured wait
    /// ([`StoreError::Timeout`]), or when an existing table has no
    /// principal index or TTL on another attribute ([`StoreError::Backend`]).
    pub async fn ensure_table(&self) -> Result<(), StoreError> {
        let s = &self.settings;
        let names = &s.names;
        let string_attr = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(StoreError::backend)
        };
        let key = |name: &str, kind: KeyType| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(StoreError::backend)
        };
        let index = GlobalSecondaryIndex::builder()
            .index_name(&names.principal_index)
            .key_schema(key(&names.principal, KeyType::Hash)?)
            .key_schema(key(&names.key, KeyType::Range)?)
            .projection(
                Projection::builder()
                    .projection_type(ProjectionType::Include)
                    .non_key_attributes(&names.idle)
                    .non_key_attributes(&names.absolute)
                    .build(),
            )
            .build()
            .map_err(StoreError::backend)?;
        let created = self
            .client
            .create_table()
            .table_name(&s.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(string_attr(&names.key)?)
            .attribute_definitions(string_attr(&names.principal)?)
            .key_schema(key(&names.key, KeyType::Hash)?)
            .global_secondary_indexes(index)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table = %s.table, "created the sessions table"),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), CreateTableError::ResourceInUseException(_)) => {}
            Err(e) => return Err(map_sdk(e, s.timeout)),
        }

        let described = self
            .client
            .wait_until_table_exists()
            .table_name(&s.table)
            .wait(s.table_wait)
            .await
            .map_err(|e| match e {
                aws_sdk_dynamodb::waiters::table_exists::WaitUntilTableExistsError::ExceededMaxWait(_) => {
                    StoreError::Timeout(s.table_wait)
                }
                other => StoreError::backend(other),
            })?
            .into_result()
            .map_err(|e| map_sdk(e, s.timeout))?;
        let has_index = described
            .table
            .as_ref()
            .and_then(|t| t.global_secondary_indexes.as_ref())
            .is_some_and(|indexes| {
                indexes
                    .iter()
                    .any(|i| i.index_name.as_deref() == Some(names.principal_index.as_str()))
            });
        if !has_index {
            return Err(StoreError::backend(format!(
                "table {} has no global secondary index {:?} on {:?}",
                s.table, names.principal_index, names.principal
            )));
        }

        let ttl = self
            .client
            .describe_time_to_live()
            .table_name(&s.table)
            .send()
            .await
            .map_err(|e| map_sdk(e, s.timeout))?;
        if let Some(description) = ttl.time_to_live_description {
            let on = matches!(
                description.time_to_live_status,
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            );
            match description.attribute_name {
                Some(attr) if on && attr == names.ttl => return Ok(()),
                Some(attr) if on => {
                    return Err(StoreError::backend(format!(
                        "table {} has TTL on {attr:?}, not on {:?}",
                        s.table, names.ttl
                    )));
                }
                _ => {}
            }
        }
        let spec = TimeToLiveSpecification::builder()
            .enabled(true)
            .attribute_name(&names.ttl)
            .build()
            .map_err(StoreError::backend)?;
        let enabled = self
            .client
            .update_time_to_live()
            .table_name(&s.table)
            .time_to_live_specification(spec)
            .send()
            .await;
        match enabled {
            Ok(_) => Ok(()),
            // Another instance enabled it between our describe and update.
            Err(SdkError::ServiceError(e)) if ttl_already_enabled(e.err()) => Ok(()),
            Err(e) => Err(map_sdk(e, s.timeout)),
        }
    }
}

fn ttl_already_enabled(error: &UpdateTimeToLiveError) -> bool {
    use aws_sdk_dynamodb::error::ProvideErrorMetadata;
    error
        .message()
        .is_some_and(|m| m.to_ascii_lowercase().contains("already enabled"))
}
