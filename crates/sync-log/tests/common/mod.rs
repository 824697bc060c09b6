//! Helpers shared by the sync-log integration tests.
#![allow(dead_code, unreachable_pub)]

use sync_log::{Change, ChangeType, DeviceId, Hlc, OriginKey};
use uuid::Uuid;

/// Device `n` (a fixed id, so tests are reproducible).
pub fn device(n: u128) -> DeviceId {
    DeviceId(Uuid::from_u128(n))
}

/// Change `origin_seq` of device `dev`: a distinct record, clock and payload of `payload_len`
/// bytes.
pub fn change(dev: u128, origin_seq: u64, payload_len: usize) -> Change {
    Change {
        origin: OriginKey { device: device(dev), seq: origin_seq },
        hlc: Hlc::new(1_700_000_000_000 + origin_seq, 0),
        model: "tag".into(),
        record: Uuid::from_u128(u128::from(origin_seq) << 8 | dev),
        change: ChangeType::Update,
        version: origin_seq,
        payload: vec![dev as u8; payload_len],
    }
}

/// The changes `range` of device `dev`.
pub fn changes(dev: u128, range: std::ops::Range<u64>, payload_len: usize) -> Vec<Change> {
    range.map(|s| change(dev, s, payload_len)).collect()
}
