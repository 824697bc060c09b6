//! How leadership messages travel over a sync session, and the id conversions between the
//! `leadership` crate (which depends on no workspace crate) and `sync-log`.
//!
//! A leader's heartbeat is the protocol's `Heartbeat` (epoch, leader, newest seq). The
//! protocol has no kind for a claim or a presence announcement yet (asked of the protocol's
//! owners in `/work/requests-from-service.md`); until it has, they travel in a `Ping` whose
//! nonce is [`LEADERSHIP_NONCE`] and whose payload is the message in the log's codec, at most
//! [`MAX_LEADERSHIP_PAYLOAD`] bytes. A peer that does not know this answers with a `Pong`,
//! which is harmless. This module is the only place that knows it.

use bytes::Bytes;
use leadership::{LogPosition as LPosition, Message as LMessage, Term};
use sync_log::{DeviceId, Epoch, Seq};
use sync_proto::{Heartbeat, Message, Ping};

/// Marks a `Ping` that carries a leadership message ("LEADSHIP" in ASCII).
pub const LEADERSHIP_NONCE: u64 = u64::from_be_bytes(*b"LEADSHIP");
/// Largest encoded leadership message accepted (a claim or presence is about 60 bytes).
pub const MAX_LEADERSHIP_PAYLOAD: usize = 256;

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

/// Encodes a leadership message for the wire.
pub fn encode(message: &LMessage) -> Option<Message> {
    match *message {
        LMessage::Heartbeat { term, position } => Some(Message::Heartbeat(Heartbeat {
            epoch: Epoch(term.epoch.0),
            leader: from_l(term.leader),
            seq: Seq(position.0),
        })),
        other => {
            let payload = sync_log::codec::encode(&other).ok()?;
            Some(Message::Ping(Ping { nonce: LEADERSHIP_NONCE, payload: Bytes::from(payload) }))
        }
    }
}

/// Decodes a wire message into a leadership message, if it is one. A malformed leadership
/// ping is `Some(Err(..))`.
pub fn decode(message: &Message) -> Option<Result<LMessage, String>> {
    match message {
        Message::Heartbeat(hb) => Some(Ok(LMessage::Heartbeat {
            term: Term::new(leadership::Epoch(hb.epoch.0), to_l(hb.leader)),
            position: LPosition(hb.seq.0),
        })),
        Message::Ping(ping) if ping.nonce == LEADERSHIP_NONCE => {
            if ping.payload.len() > MAX_LEADERSHIP_PAYLOAD {
                return Some(Err(format!("leadership payload of {} bytes", ping.payload.len())));
            }
            Some(sync_log::codec::decode::<LMessage>(&ping.payload).map_err(|e| e.to_string()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every leadership message survives the trip through the wire encoding.
    #[test]
    fn leadership_messages_round_trip() {
        let a = leadership::MemberId::from_u128(7);
        let term = Term::new(leadership::Epoch(3), a);
        for m in [
            LMessage::Heartbeat { term, position: LPosition(9) },
            LMessage::Claim { epoch: leadership::Epoch(4), device: a, position: LPosition(2) },
            LMessage::Presence { device: a, epoch: leadership::Epoch(3), leader: Some(term) },
        ] {
            let wire = encode(&m).unwrap();
            assert_eq!(decode(&wire).unwrap().unwrap(), m);
        }
    }

    /// An oversized or garbled leadership ping is an error, never a panic; other pings are
    /// not leadership messages.
    #[test]
    fn bad_leadership_pings_are_refused() {
        let big =
            Message::Ping(Ping { nonce: LEADERSHIP_NONCE, payload: Bytes::from(vec![0; 300]) });
        assert!(decode(&big).unwrap().is_err());
        let junk =
            Message::Ping(Ping { nonce: LEADERSHIP_NONCE, payload: Bytes::from(vec![0xff; 5]) });
        assert!(decode(&junk).unwrap().is_err());
        let rtt = Message::Ping(Ping { nonce: 1, payload: Bytes::new() });
        assert!(decode(&rtt).is_none());
    }
}
