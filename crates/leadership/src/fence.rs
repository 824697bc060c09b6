//! Fencing: accept or refuse a message by the term it carries.

use crate::types::{Epoch, MemberId, Term};

/// A snapshot of what one device knows about leadership, used to fence messages.
///
/// Obtain it from [`Leadership::fence`](crate::Leadership::fence) or
/// [`Status::fence`](crate::Status::fence) (the driver publishes a fresh status after every
/// step). How the service uses it:
///
/// * **Pushes** (log entries from a leader) carry the pusher's [`Term`]: [`Fence::check`] it.
///   `Accept` → apply; `RefuseStale` → refuse and tell the sender our `current` term;
///   `NewerTerm` → feed [`Input::Observed`](crate::Input::Observed) to the machine, then check
///   again with the new snapshot — once: if the second check still says `NewerTerm` (the
///   machine ignored the term, e.g. its leader is not a member), refuse the push.
/// * **Sequencing** (on the leader): before committing each batch, read
///   [`Fence::can_sequence`] from the *latest* snapshot and sequence at the epoch of the term it
///   returns (pushes carry the whole term); if it returns `None`, stop and keep the batch
///   unsequenced.
///
/// ```
/// use leadership::{MemberId, Epoch, Fence, Term, Verdict};
///
/// let (a, b) = (MemberId::from_u128(1), MemberId::from_u128(2));
/// let fence = Fence::new(a, Epoch(3), Some(Term::new(Epoch(3), b)));
/// assert_eq!(fence.check(Term::new(Epoch(3), b)), Verdict::Accept);
/// assert!(matches!(fence.check(Term::new(Epoch(2), b)), Verdict::RefuseStale { .. }));
/// assert!(matches!(fence.check(Term::new(Epoch(4), a)), Verdict::RefuseStale { .. }));
/// assert_eq!(fence.check(Term::new(Epoch(4), b)), Verdict::NewerTerm { theirs: Term::new(Epoch(4), b) });
/// assert_eq!(fence.can_sequence(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    me: MemberId,
    highest_epoch: Epoch,
    current: Option<Term>,
    paused: bool,
}

/// The answer of [`Fence::check`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The message comes from the term this device currently follows or leads.
    Accept,
    /// The message comes from a term this device knows to be over (a lower epoch, or the same
    /// epoch led by a lower device id than the known leader), or it names this device as a
    /// leader it is not. Refuse it; `current` tells the sender where to go.
    RefuseStale {
        /// The highest epoch this device has seen.
        ours: Epoch,
        /// The term this device currently follows or leads, if any.
        current: Option<Term>,
        /// The term the message carried.
        theirs: Term,
    },
    /// The message carries a term this device has not yet acknowledged: a higher epoch, a
    /// higher device id at the same epoch, or a leader for an epoch whose election is still
    /// open here. Feed [`Input::Observed`](crate::Input::Observed) to the machine and check
    /// again.
    NewerTerm {
        /// The term the message carried.
        theirs: Term,
    },
}

impl Fence {
    /// A fence for device `me` that has seen `highest_epoch` and currently follows or leads
    /// `current` (whose epoch, when present, is `highest_epoch`).
    pub const fn new(me: MemberId, highest_epoch: Epoch, current: Option<Term>) -> Self {
        Self { me, highest_epoch, current, paused: false }
    }

    /// The same fence for a leader that is paused (`true`: it heard no other member for
    /// [`Config::isolation`](crate::Config::isolation)): [`Fence::can_sequence`] is `None`
    /// while paused; checking messages is unchanged.
    #[must_use]
    pub const fn with_paused(mut self, paused: bool) -> Self {
        self.paused = paused;
        self
    }

    /// Accept or refuse a message stamped with `theirs`.
    pub fn check(&self, theirs: Term) -> Verdict {
        let stale =
            Verdict::RefuseStale { ours: self.highest_epoch, current: self.current, theirs };
        if theirs.epoch < self.highest_epoch {
            return stale;
        }
        if theirs.leader == self.me {
            // Only this device knows what it leads.
            return if self.current == Some(theirs) { Verdict::Accept } else { stale };
        }
        if theirs.epoch > self.highest_epoch {
            return Verdict::NewerTerm { theirs };
        }
        match self.current {
            Some(current) if current == theirs => Verdict::Accept,
            Some(current) if current > theirs => stale,
            _ => Verdict::NewerTerm { theirs },
        }
    }

    /// The term to stamp sequenced entries with, if this device leads and is not paused;
    /// `None` otherwise.
    pub fn can_sequence(&self) -> Option<Term> {
        if self.paused {
            return None;
        }
        self.current.filter(|term| term.leader == self.me)
    }

    /// Whether this device leads but is paused (it heard no other member for a while).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// The highest epoch this device has seen.
    pub fn highest_epoch(&self) -> Epoch {
        self.highest_epoch
    }

    /// The term this device follows or leads, if any.
    pub fn current(&self) -> Option<Term> {
        self.current
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: MemberId = MemberId::from_u128(1);
    const B: MemberId = MemberId::from_u128(2);
    const C: MemberId = MemberId::from_u128(3);

    fn t(epoch: u64, leader: MemberId) -> Term {
        Term::new(Epoch(epoch), leader)
    }

    #[test]
    fn leader_fence_accepts_only_its_own_term() {
        let fence = Fence::new(B, Epoch(5), Some(t(5, B)));
        assert_eq!(fence.can_sequence(), Some(t(5, B)));
        assert_eq!(fence.check(t(5, B)), Verdict::Accept);
        assert!(matches!(fence.check(t(5, A)), Verdict::RefuseStale { .. }));
        assert_eq!(fence.check(t(5, C)), Verdict::NewerTerm { theirs: t(5, C) });
        assert_eq!(fence.check(t(6, A)), Verdict::NewerTerm { theirs: t(6, A) });
    }

    #[test]
    fn a_paused_leader_may_not_sequence_but_still_accepts_its_term() {
        let fence = Fence::new(B, Epoch(5), Some(t(5, B))).with_paused(true);
        assert!(fence.is_paused());
        assert_eq!(fence.can_sequence(), None);
        assert_eq!(fence.check(t(5, B)), Verdict::Accept);
        assert_eq!(fence.with_paused(false).can_sequence(), Some(t(5, B)));
    }

    #[test]
    fn open_election_learns_any_leader_of_its_epoch() {
        let fence = Fence::new(A, Epoch(5), None);
        assert_eq!(fence.can_sequence(), None);
        assert_eq!(fence.check(t(5, B)), Verdict::NewerTerm { theirs: t(5, B) });
        assert!(matches!(
            fence.check(t(4, C)),
            Verdict::RefuseStale { ours: Epoch(5), current: None, .. }
        ));
        // Nobody may tell a device that it leads.
        assert!(matches!(fence.check(t(5, A)), Verdict::RefuseStale { .. }));
    }
}
