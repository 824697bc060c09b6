//! The one place that knows the binary encoding (bincode 2, standard configuration).
//!
//! Payloads of syncable records and wire frames both go through here, so swapping the codec is
//! a change to this module alone. Decoding always takes a byte limit: no input can make the
//! decoder allocate more than the limit.

use serde::{Serialize, de::DeserializeOwned};

use crate::Error;

/// Upper bound on a payload decoded with [`decode`]: 16 MiB.
pub const DEFAULT_DECODE_LIMIT: usize = 16 * 1024 * 1024;

/// Encodes a value.
///
/// ```
/// let bytes = sync_log::codec::encode(&(1u32, "tag")).unwrap();
/// let back: (u32, String) = sync_log::codec::decode(&bytes).unwrap();
/// assert_eq!(back, (1, "tag".to_string()));
/// ```
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Error> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a whole buffer, allocating at most [`DEFAULT_DECODE_LIMIT`] bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    decode_with_limit::<T, DEFAULT_DECODE_LIMIT>(bytes)
}

/// Decodes a whole buffer, allocating at most `LIMIT` bytes; trailing bytes are an error.
pub fn decode_with_limit<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, Error> {
    let config = bincode::config::standard().with_limit::<LIMIT>();
    let (value, used) = bincode::serde::decode_from_slice(bytes, config)
        .map_err(|e| Error::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(Error::TrailingBytes(bytes.len() - used));
    }
    Ok(value)
}
