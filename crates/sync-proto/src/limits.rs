//! Decode limits: no input, however hostile, makes the decoder allocate without bound.
//!
//! Two mechanisms, both needed:
//!
//! - **A byte budget proportional to the frame.** bincode allocates a string or byte buffer as
//!   soon as it has read its length prefix, before checking that that many bytes follow. Its
//!   limit is a budget of *claimed* bytes: every decoded integer claims its in-memory size (a
//!   `u64` claims 8 bytes even when its varint took 1) and every string or byte buffer claims
//!   its length. A valid payload therefore claims at most 8 bytes per byte it holds. The limit
//!   is a compile-time constant, so the frame decoder picks the smallest of a few budgets (powers of
//!   4 from 64 KiB) that is at least 8 × the payload's length: a valid payload is never
//!   refused, and a lying length prefix can make the decoder allocate at most the budget —
//!   under `max(64 KiB, 32 × payload length)`. (The buffer is zero-allocated and freed as
//!   soon as the bytes are found missing, so in practice its pages are never even touched.)
//! - **Caps on element counts where an element is much larger in memory than on the wire.**
//!   An empty string is one byte on the wire and 24 in memory; a list of names is therefore
//!   capped at [`MAX_MODEL_NAMES`]. Every other list in a message holds elements whose
//!   in-memory size is a small multiple of their smallest encoding, and serde pre-allocates at
//!   most 1 MiB for a list whatever length it announces.

use serde::de::{DeserializeOwned, Deserializer, Error as _, SeqAccess, Visitor};
use sync_log::codec;

/// The most model names a [`Hello`](crate::Hello) or [`HelloAck`](crate::HelloAck) may list.
pub const MAX_MODEL_NAMES: usize = 1024;

/// The largest value [`FrameConfig::max_frame_size`](crate::FrameConfig) may take: 256 MiB.
pub const MAX_FRAME_SIZE_CEILING: u32 = 256 * 1024 * 1024;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

/// The most bytes a valid payload claims per byte of encoding (a one-byte varint `u64`).
const CLAIM_PER_BYTE: usize = 8;

/// The budget for the largest frames (saturating on targets with a 32-bit `usize`).
const CEILING_BUDGET: usize = {
    let budget = MAX_FRAME_SIZE_CEILING as u64 * CLAIM_PER_BYTE as u64;
    if budget > usize::MAX as u64 { usize::MAX } else { budget as usize }
};

/// Decodes a payload with the smallest budget of claimed bytes that a valid payload of its
/// length can need (see the module docs).
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, sync_log::Error> {
    match bytes.len().saturating_mul(CLAIM_PER_BYTE) {
        n if n <= 64 * KIB => codec::decode_with_limit::<T, { 64 * KIB }>(bytes),
        n if n <= 256 * KIB => codec::decode_with_limit::<T, { 256 * KIB }>(bytes),
        n if n <= MIB => codec::decode_with_limit::<T, MIB>(bytes),
        n if n <= 4 * MIB => codec::decode_with_limit::<T, { 4 * MIB }>(bytes),
        n if n <= 16 * MIB => codec::decode_with_limit::<T, { 16 * MIB }>(bytes),
        n if n <= 64 * MIB => codec::decode_with_limit::<T, { 64 * MIB }>(bytes),
        n if n <= 256 * MIB => codec::decode_with_limit::<T, { 256 * MIB }>(bytes),
        n if n <= 1024 * MIB => codec::decode_with_limit::<T, { 1024 * MIB }>(bytes),
        _ => codec::decode_with_limit::<T, CEILING_BUDGET>(bytes),
    }
}

/// Deserializes a list of model names, refusing more than [`MAX_MODEL_NAMES`] before
/// allocating for them.
pub(crate) fn model_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Names;

    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_MODEL_NAMES} model names")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let hint = seq.size_hint().unwrap_or(0);
            if hint > MAX_MODEL_NAMES {
                return Err(A::Error::invalid_length(hint, &self));
            }
            let mut names = Vec::with_capacity(hint);
            while let Some(name) = seq.next_element::<String>()? {
                if names.len() == MAX_MODEL_NAMES {
                    return Err(A::Error::invalid_length(MAX_MODEL_NAMES + 1, &self));
                }
                names.push(name);
            }
            Ok(names)
        }
    }

    d.deserialize_seq(Names)
}

/// Serde for a [`Bytes`](bytes::Bytes) field: encoded as a length-prefixed byte string, and
/// decoded from the frame buffer in place (the length is checked against the bytes present
/// before anything is allocated, then the bytes are copied once).
pub(crate) mod bytes_field {
    use bytes::Bytes;
    use serde::Serializer;
    use serde::de::{Deserializer, Visitor};

    pub(crate) fn serialize<S: Serializer>(bytes: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        struct Raw;

        impl<'de> Visitor<'de> for Raw {
            type Value = Bytes;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a byte string")
            }

            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
                Ok(Bytes::copy_from_slice(v))
            }

            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
                Ok(Bytes::from(v))
            }
        }

        d.deserialize_bytes(Raw)
    }
}
