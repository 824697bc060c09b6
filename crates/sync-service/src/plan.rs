//! Pure decisions, no I/O: who dials, how long to wait before redialling, what to do with a
//! batch of entries, and the search for the last common seq after a divergence. The async
//! loops in `engine` and `peer` only carry out what these say.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sync_log::{DeviceId, Seq};

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
