//! How session values become bytes. JSON by default; any serde format fits.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::BoxError;

/// Turns typed values into the bytes a [`Record`](crate::Record) stores.
///
/// Implement it to store values in another serde format (MessagePack,
/// CBOR, postcard) and use it through [`Session::get_with`](crate::Session::get_with)
/// and friends.
pub trait Codec: Send + Sync + 'static {
    /// Serializes a value.
    ///
    /// # Errors
    ///
    /// The format's serialization error.
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError>;

    /// Deserializes a value.
    ///
    /// # Errors
    ///
    /// The format's deserialization error.
    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError>;
}

/// JSON through `serde_json`: readable in the store, and the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, BoxError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}
