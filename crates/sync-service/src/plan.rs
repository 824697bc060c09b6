//! Pure decisions, no I/O: who the members are, who dials, how long to wait before
//! redialling, what to do with a batch of entries, and the search for the last common seq
//! after a divergence. The async
//! loops in `engine` and `peer` only carry out what these say.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use iroh::{EndpointAddr, EndpointId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_log::{DeviceId, Seq};
use txn_manager::RosterEntry;

use crate::peer::Member;

/// Who belongs to the library, from its device rows and the members the host named.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    /// Everyone who may connect (this device excluded), in device order.
    pub members: Vec<Member>,
    /// This device's own row is tombstoned: it was removed from the library.
    pub removed: bool,
}

/// The membership rule. The device rows decide: a device with a live row holding an endpoint
/// id is a member with that id (the host's address for it is used as a hint when it names
/// the same id); a device whose row is tombstoned is not, whatever the host says (removal is
/// final: device rows are not revivable). A device the host names is a member while the rows
/// do not pair it yet (no row, or a row without an endpoint id): how a device being paired,
/// or one whose row has not synced yet, gets connected at all.
pub fn membership(
    me: DeviceId,
    named: &BTreeMap<DeviceId, Member>,
    rows: &[RosterEntry],
) -> Membership {
    let removed: BTreeSet<DeviceId> = rows.iter().filter(|r| r.removed).map(|r| r.device).collect();
    let mut members: BTreeMap<DeviceId, Member> = BTreeMap::new();
    for row in rows.iter().filter(|r| !r.removed && r.device != me) {
        let Some(id) = row.endpoint.and_then(|key| EndpointId::from_bytes(&key).ok()) else {
            continue;
        };
        let addr = named
            .get(&row.device)
            .filter(|m| m.addr.id == id)
            .map_or_else(|| EndpointAddr::new(id), |m| m.addr.clone());
        members.insert(row.device, Member { device: row.device, addr });
    }
    for (device, member) in named {
        if *device != me && !removed.contains(device) && !members.contains_key(device) {
            members.insert(*device, member.clone());
        }
    }
    Membership { members: members.into_values().collect(), removed: removed.contains(&me) }
}

/// Which side of a pair of members dials: the one with the lower device id. Both sides
/// compute the same answer, so a pair normally has one session; if both ends ever hold a
/// session at once (a reconnect racing the old connection's death, or a peer that dials
/// when it should not) the newer session replaces the older one.
pub fn dials(me: DeviceId, peer: DeviceId) -> bool {
    me < peer
}

/// Jittered, bounded exponential backoff between reconnect attempts.
///
/// Attempt `n` (from 0) waits a random time in `[d/2, d]` with `d = min(max, min · 2^n)`;
/// [`Backoff::reset`] after a session that worked. The random source is seeded, so a test
/// replays the same delays.
#[derive(Debug)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
    rng: StdRng,
}

impl Backoff {
    /// A backoff from `min` to `max`, jitter seeded by `seed`.
    pub fn new(min: Duration, max: Duration, seed: u64) -> Self {
        Self { min, max: max.max(min), attempt: 0, rng: StdRng::seed_from_u64(seed) }
    }

    /// The delay before the next attempt (and counts the attempt).
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        let d = self.min.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = d / 2;
        let span = (d - half).as_micros() as u64;
        half + Duration::from_micros(self.rng.random_range(0..=span))
    }

    /// A session worked: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// What a follower does with entries that start at `first` when its log ends at `head`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// They follow the head (or overlap it): store and apply.
    Apply,
    /// Entries are missing between the head and `first`: fetch after the head.
    Gap,
}

/// Classifies a batch (see [`Incoming`]).
pub fn classify(head: Seq, first: Seq) -> Incoming {
    if first.0 > head.0.saturating_add(1) { Incoming::Gap } else { Incoming::Apply }
}

/// The search for the last seq two logs share, by binary search over checksums.
///
/// `common` is a seq known to be shared (the floor, or a probe that matched), `differs` one
/// known not to be (where the chains first disagreed, or past the peer's head). Each probe
/// asks the peer for its entry at one seq (a `Fetch` of one entry) and compares checksums:
/// `O(log n)` round trips of one entry each, never the whole log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommonSearch {
    common: Seq,
    differs: Seq,
}

impl CommonSearch {
    /// A search between a shared seq and a differing one (`differs > common`; otherwise the
    /// answer is `differs - 1`, or `common` if lower).
    pub fn new(common: Seq, differs: Seq) -> Self {
        let differs = differs.max(common.next());
        Self { common, differs }
    }

    /// The next seq to probe, or `None` when the answer is known ([`CommonSearch::answer`]).
    pub fn probe(&self) -> Option<Seq> {
        (self.differs.0 - self.common.0 > 1)
            .then(|| Seq(self.common.0 + (self.differs.0 - self.common.0) / 2))
    }

    /// The probe at `seq` matched (`true`) or not.
    pub fn record(&mut self, seq: Seq, matched: bool) {
        if seq <= self.common || seq >= self.differs {
            return;
        }
        if matched {
            self.common = seq;
        } else {
            self.differs = seq;
        }
    }

    /// The last shared seq, once [`CommonSearch::probe`] is `None`.
    pub fn answer(&self) -> Seq {
        self.common
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> (EndpointId, [u8; 32]) {
        let id = iroh::SecretKey::from_bytes(&[n; 32]).public();
        (id, *id.as_bytes())
    }

    /// The rows decide membership: a paired live row is a member with the row's endpoint id
    /// (the host's address kept as a hint only when it names that id); a tombstoned row is
    /// never a member, even when the host names it; a device the host names is a member while
    /// no row pairs it; this device is never its own peer, and its own tombstone says it was
    /// removed.
    #[test]
    fn membership_follows_the_device_rows() {
        let d = |n: u128| DeviceId(uuid::Uuid::from_u128(n));
        let (me, a, b, c, e, f) = (d(1), d(2), d(3), d(4), d(5), d(6));
        let (ka, ka_bytes) = key(2);
        let (kb, _) = key(3);
        let (kc, _) = key(4);
        let (_, kf_bytes) = key(6);
        let hinted = EndpointAddr::new(ka).with_ip_addr("127.0.0.1:4000".parse().unwrap());
        let named: BTreeMap<DeviceId, Member> = [
            (a, Member { device: a, addr: hinted.clone() }),
            (b, Member { device: b, addr: EndpointAddr::new(kb) }),
            (c, Member { device: c, addr: EndpointAddr::new(kc) }),
            (f, Member { device: f, addr: EndpointAddr::new(kb) }),
        ]
        .into();
        let rows = vec![
            RosterEntry::new(me, Some([9; 32]), false),
            RosterEntry::new(a, Some(ka_bytes), false),
            RosterEntry::new(b, Some(ka_bytes), true),
            RosterEntry::new(e, None, false),
            RosterEntry::new(f, Some(kf_bytes), false),
        ];
        let m = membership(me, &named, &rows);
        assert!(!m.removed);
        let by: BTreeMap<DeviceId, EndpointAddr> =
            m.members.iter().map(|m| (m.device, m.addr.clone())).collect();
        assert_eq!(by.get(&a), Some(&hinted), "row and hint agree: the hint is kept");
        assert!(!by.contains_key(&b), "tombstoned, though named");
        assert_eq!(by.get(&c), Some(&EndpointAddr::new(kc)), "named, no row yet");
        assert!(!by.contains_key(&e), "a row without an endpoint, not named");
        assert_eq!(by.get(&f).map(|a| a.id), Some(key(6).0), "the row's id wins a named one");
        assert!(!by.contains_key(&me));
        assert_eq!(m.members.len(), 3);

        let gone = membership(me, &named, &[RosterEntry::new(me, None, true)]);
        assert!(gone.removed);
    }

    /// The dialer rule is antisymmetric: exactly one side of every pair dials.
    #[test]
    fn exactly_one_side_dials() {
        let a = DeviceId::new_v7();
        let b = DeviceId::new_v7();
        assert!(dials(a, b) ^ dials(b, a));
        assert!(!dials(a, a));
    }

    /// Backoff doubles up to the bound, stays within `[d/2, d]`, and starts over on reset;
    /// the same seed gives the same delays.
    #[test]
    fn backoff_is_jittered_bounded_and_replayable() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        let mut b = Backoff::new(min, max, 7);
        let mut expected = min;
        let mut delays = Vec::new();
        for _ in 0..10 {
            let d = b.next_delay();
            assert!(d >= expected / 2 && d <= expected, "{d:?} vs {expected:?}");
            delays.push(d);
            expected = (expected * 2).min(max);
        }
        b.reset();
        assert!(b.next_delay() <= min);
        let mut again = Backoff::new(min, max, 7);
        let replay: Vec<_> = (0..10).map(|_| again.next_delay()).collect();
        assert_eq!(delays, replay);
    }

    /// Entries right after the head (or overlapping it) are applied; a hole means a fetch.
    #[test]
    fn a_batch_after_a_hole_is_a_gap() {
        assert_eq!(classify(Seq(10), Seq(11)), Incoming::Apply);
        assert_eq!(classify(Seq(10), Seq(5)), Incoming::Apply);
        assert_eq!(classify(Seq(10), Seq(12)), Incoming::Gap);
    }

    /// The binary search finds the last common seq of two logs for every split point, in at
    /// most ⌈log2(n)⌉ + 1 probes.
    #[test]
    fn the_search_finds_the_last_common_seq_in_logarithmic_probes() {
        for n in 1..200u64 {
            for split in 0..n {
                let mut s = CommonSearch::new(Seq(0), Seq(n));
                let mut probes = 0;
                while let Some(p) = s.probe() {
                    probes += 1;
                    s.record(p, p.0 <= split);
                }
                assert_eq!(s.answer(), Seq(split), "n {n} split {split}");
                assert!(probes <= 64 - n.leading_zeros() + 1);
            }
        }
    }
}
