//! SDK errors mapped to [`StoreError`], keeping the SDK error as the source.
//!
//! Timeouts become [`StoreError::Timeout`]; failures to reach the endpoint,
//! broken responses, throttling that outlived the SDK's retries and
//! server-side 5xx become [`StoreError::Unavailable`] (an outage, for the
//! session handle's outage policy); everything else is
//! [`StoreError::Backend`].

use std::error::Error;
use std::time::Duration;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use offstate_core::StoreError;

/// A store that cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// No AWS region in the environment, the profile or the configuration.
    #[error(
        "no AWS region configured: set AWS_REGION, a profile region, or DynamoDbConfig::with_region"
    )]
    NoRegion,
}

/// Error codes DynamoDB uses for throttling and server-side trouble.
const OUTAGE_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
];

/// Maps an SDK error. `timeout` is the bound to report for a timeout.
pub(crate) fn map_sdk<E, R>(error: SdkError<E, R>, timeout: Duration) -> StoreError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    match &error {
        SdkError::TimeoutError(_) => StoreError::Timeout(timeout),
        SdkError::DispatchFailure(failure) if failure.is_timeout() => StoreError::Timeout(timeout),
        SdkError::DispatchFailure(failure) if failure.is_user() => StoreError::backend(error),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => StoreError::unavailable(error),
        SdkError::ServiceError(service)
            if OUTAGE_CODES.contains(&service.err().code().unwrap_or_default()) =>
        {
            StoreError::unavailable(error)
        }
        _ => StoreError::backend(error),
    }
}

/// Maps a service error already taken out of its [`SdkError`]: throttling
/// and server-side trouble are an outage, the rest a backend error.
pub(crate) fn map_service<E>(error: E) -> StoreError
where
    E: ProvideErrorMetadata + Error + Send + Sync + 'static,
{
    if OUTAGE_CODES.contains(&error.code().unwrap_or_default()) {
        StoreError::unavailable(error)
    } else {
        StoreError::backend(error)
    }
}

/// Whether a service error says the item would exceed DynamoDB's size
/// limit (a `ValidationException` with no dedicated code).
pub(crate) fn is_item_too_large<E: ProvideErrorMetadata>(error: &E) -> bool {
    error.code() == Some("ValidationException")
        && error
            .message()
            .is_some_and(|m| m.to_ascii_lowercase().contains("item size"))
}
