//! How leadership messages travel over a sync session, and the id conversions between the
//! `leadership` crate (which depends on no workspace crate) and `sync-log`.
//!
//! Each leadership message has its own protocol kind (protocol version 2, see
//! `docs/protocol.md`): a leader's heartbeat is `Heartbeat` (epoch, leader, newest seq), a
//! candidate's claim is `Claim` (epoch, device, position) and a member's presence is
//! `Presence` (device, epoch, and whom it follows — explicitly nobody, or a term). The
//! protocol's decoder has already refused malformed frames, so the mapping back is total.

use leadership::{LogPosition as LPosition, Message as LMessage, Term};
use sync_log::{DeviceId, Epoch, Seq};
use sync_proto::{Claim, Heartbeat, Message, Presence};

/// A log device id as a leadership device id.
pub fn to_l(device: DeviceId) -> leadership::MemberId {
    leadership::MemberId(device.0)
}

/// A leadership device id as a log device id.
pub fn from_l(device: leadership::MemberId) -> DeviceId {
    DeviceId(device.0)
}

/// A leadership epoch as a log epoch.
pub fn epoch_from_l(epoch: leadership::Epoch) -> Epoch {
    Epoch(epoch.0)
}

/// A log epoch as a leadership epoch.
fn epoch_to_l(epoch: Epoch) -> leadership::Epoch {
    leadership::Epoch(epoch.0)
}

/// Encodes a leadership message for the wire (`None` for a kind of message this build does
/// not know how to send).
pub fn encode(message: &LMessage) -> Option<Message> {
    Some(match *message {
        LMessage::Heartbeat { term, position } => Message::Heartbeat(Heartbeat {
            epoch: epoch_from_l(term.epoch),
            leader: from_l(term.leader),
            seq: Seq(position.0),
        }),
        LMessage::Claim { epoch, device, position } => Message::Claim(Claim {
            epoch: epoch_from_l(epoch),
            device: from_l(device),
            position: Seq(position.0),
        }),
        LMessage::Presence { device, epoch, leader } => Message::Presence(Presence {
            device: from_l(device),
            epoch: epoch_from_l(epoch),
            follows: leader.map(|t| (epoch_from_l(t.epoch), from_l(t.leader))).into(),
        }),
        _ => return None,
    })
}

/// The leadership message a wire message carries, if it is one (`Heartbeat`, `Claim`,
/// `Presence`).
pub fn decode(message: &Message) -> Option<LMessage> {
    Some(match message {
        Message::Heartbeat(hb) => LMessage::Heartbeat {
            term: Term::new(epoch_to_l(hb.epoch), to_l(hb.leader)),
            position: LPosition(hb.seq.0),
        },
        Message::Claim(claim) => LMessage::Claim {
            epoch: epoch_to_l(claim.epoch),
            device: to_l(claim.device),
            position: LPosition(claim.position.0),
        },
        Message::Presence(presence) => LMessage::Presence {
            device: to_l(presence.device),
            epoch: epoch_to_l(presence.epoch),
            leader: presence.follows.term().map(|(e, l)| Term::new(epoch_to_l(e), to_l(l))),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use sync_proto::frame::{self, FrameConfig};
    use sync_proto::{FrameError, MessageKind, Ping};

    use super::*;

    fn every_message() -> Vec<LMessage> {
        let a = leadership::MemberId::from_u128(7);
        let b = leadership::MemberId::from_u128(u128::MAX);
        let term = Term::new(leadership::Epoch(3), a);
        vec![
            LMessage::Heartbeat { term, position: LPosition(9) },
            LMessage::Heartbeat {
                term: Term::new(leadership::Epoch(u64::MAX), b),
                position: LPosition(u64::MAX),
            },
            LMessage::Claim { epoch: leadership::Epoch(4), device: a, position: LPosition(2) },
            LMessage::Claim { epoch: leadership::Epoch(1), device: b, position: LPosition(0) },
            LMessage::Presence { device: a, epoch: leadership::Epoch(3), leader: Some(term) },
            LMessage::Presence { device: b, epoch: leadership::Epoch(0), leader: None },
            // Following a term whose fields are all zero is still following someone.
            LMessage::Presence {
                device: b,
                epoch: leadership::Epoch(9),
                leader: Some(Term::new(leadership::Epoch(0), leadership::MemberId::from_u128(0))),
            },
        ]
    }

    /// Every leadership message survives the trip through its own protocol kind and a whole
    /// frame (encode, frame, decode), and each kind is the one the protocol names for it.
    #[test]
    fn leadership_messages_round_trip() {
        for m in every_message() {
            let wire = encode(&m).unwrap();
            let kind = match m {
                LMessage::Heartbeat { .. } => MessageKind::Heartbeat,
                LMessage::Claim { .. } => MessageKind::Claim,
                _ => MessageKind::Presence,
            };
            assert_eq!(wire.kind(), kind, "{m:?}");
            let bytes = frame::encode_frame(&wire, &FrameConfig::default()).unwrap();
            let (back, _) = frame::decode_frame(&bytes, &FrameConfig::default()).unwrap();
            assert_eq!(decode(&back), Some(m));
        }
    }

    /// A malformed leadership frame — cut short anywhere, any byte flipped, or a presence that
    /// follows nobody but names a term — is a typed frame error or another valid message,
    /// never a panic; and pings (the old carrier) are not leadership messages.
    #[test]
    fn malformed_leadership_frames_are_errors() {
        let config = FrameConfig::default();
        for m in every_message() {
            let bytes = frame::encode_frame(&encode(&m).unwrap(), &config).unwrap();
            for cut in 0..bytes.len() {
                assert!(matches!(
                    frame::decode_frame(&bytes[..cut], &config),
                    Err(FrameError::Truncated { .. })
                ));
            }
            for at in 4..bytes.len() {
                for xor in [0x01, 0x80, 0xff] {
                    let mut flipped = bytes.clone();
                    flipped[at] ^= xor;
                    if let Ok((msg, _)) = frame::decode_frame(&flipped, &config) {
                        let _ = decode(&msg);
                    }
                }
            }
        }
        // Presence of device 7, epoch 5, following = false but naming epoch 3.
        let mut body = MessageKind::Presence.code().to_be_bytes().to_vec();
        body.push(16);
        body.extend_from_slice(&7u128.to_be_bytes());
        body.extend_from_slice(&[5, 0, 3, 16]);
        body.extend_from_slice(&[0; 16]);
        assert!(matches!(
            frame::decode_body(&body),
            Err(FrameError::Malformed { kind: MessageKind::Presence, .. })
        ));
        let rtt =
            Message::Ping(Ping { nonce: u64::from_be_bytes(*b"LEADSHIP"), payload: Bytes::new() });
        assert_eq!(decode(&rtt), None);
    }
}
