//! What goes in and out of the state machine: peer messages, inputs, actions.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::store::PersistedLeadership;
use crate::types::{Epoch, LogPosition, MemberId, Term};

/// A message one device's machine sends to another's.
///
/// The transport must deliver it with the id of the peer that *authenticated* the connection
/// ([`Input::Received::from`]); the machine drops a message whose claimed sender is not that
/// peer, and every message from a device outside the membership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// "I lead `term` and have applied up to `position`." Sent by a leader every `H`, and at
    /// once in reply to a peer that is behind.
    Heartbeat {
        /// The sender's term (`term.leader` is the sender).
        term: Term,
        /// The leader's log position.
        position: LogPosition,
    },
    /// "I stand for `epoch` with `position`." Sent by a candidate once its new epoch is saved.
    Claim {
        /// The epoch the candidate stands for (its highest epoch seen plus one, or the epoch
        /// of the election it joined).
        epoch: Epoch,
        /// The candidate (the sender).
        device: MemberId,
        /// How far the candidate has applied the log.
        position: LogPosition,
    },
    /// "I am here, I have seen `epoch`, and I follow `leader`." Sent by every member that does
    /// not lead, to every other member, every `H`. It is how a leader knows it is not alone
    /// (a leader that hears no member pauses, see [`RoleChange::Pause`]) and how followers know
    /// that someone else is reachable (a device that heard no other member for a lease does
    /// not claim).
    Presence {
        /// The sender.
        device: MemberId,
        /// The highest epoch the sender has seen.
        epoch: Epoch,
        /// The term the sender follows, if any.
        leader: Option<Term>,
    },
}

impl Message {
    /// The device that sent (and is named in) the message.
    pub fn sender(&self) -> MemberId {
        match self {
            Self::Heartbeat { term, .. } => term.leader,
            Self::Claim { device, .. } | Self::Presence { device, .. } => *device,
        }
    }

    /// The epoch the message is about.
    pub fn epoch(&self) -> Epoch {
        match self {
            Self::Heartbeat { term, .. } => term.epoch,
            Self::Claim { epoch, .. } | Self::Presence { epoch, .. } => *epoch,
        }
    }
}

/// How a machine starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Start {
    /// This device just created the library: it leads epoch 1 once that epoch is saved.
    /// Only valid when nothing was ever persisted for this device.
    Create,
    /// This device joined an existing library and has no persisted state: it follows, and waits
    /// one lease for a heartbeat before it may start an election.
    Join,
    /// This device restarts with the record it saved before. It starts as a follower that
    /// knows no leader (whatever the record says), never reuses an epoch at or below
    /// `max_epoch`, and waits one lease before it may start an election.
    Resume(PersistedLeadership),
}

/// One input to [`Leadership::handle`](crate::Leadership::handle).
///
/// Every input is handled at a [`Time`](crate::Time); timers that are due at that time
/// (lease lapse, end of a claim window, next heartbeat) fire after the input is applied, so
/// [`Input::Tick`] is only needed at [`Leadership::next_wakeup`](crate::Leadership::next_wakeup).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time has passed; fire due timers.
    Tick,
    /// A message arrived from the authenticated peer `from`.
    Received {
        /// The peer the transport authenticated.
        from: MemberId,
        /// What it sent.
        message: Message,
    },
    /// The service saw proof that `Term` is led (e.g. a log push stamped with it) — the fence
    /// answered [`Verdict::NewerTerm`](crate::Verdict::NewerTerm). Handled like a heartbeat.
    Observed(Term),
    /// The record of an [`Action::Persist`] has been saved durably.
    Persisted(PersistedLeadership),
    /// This device's log position changed (last applied sequence number).
    LogPosition(LogPosition),
    /// The library's member list changed. Messages from non-members are ignored; a device
    /// that is not a member never claims or leads; removing the current leader counts as
    /// losing it (an election follows at once).
    Membership(BTreeSet<MemberId>),
}

/// One thing the machine asks its driver to do. Execute them in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Save this record (the device row's `sync_leadership` field), then feed it back as
    /// [`Input::Persisted`]. The machine never claims or leads an epoch before that
    /// acknowledgement arrives. If the save fails, feed nothing: a candidacy waiting for it is
    /// given up after one heartbeat interval, and the machine asks for the save again.
    Persist(PersistedLeadership),
    /// Send `message` to the peer `to` (best effort; losing it is fine).
    Send {
        /// The recipient.
        to: MemberId,
        /// The message.
        message: Message,
    },
    /// Tell the service that this device's role changed.
    RoleChange(RoleChange),
}

/// A change of role the service must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RoleChange {
    /// This device now leads `term`: it may sequence, stamping entries with `term`. Its epoch
    /// was saved before this change was emitted.
    BecomeLeader {
        /// The term this device leads.
        term: Term,
    },
    /// This device led `term` and no longer does. See [`StepDown`].
    StepDown(StepDown),
    /// This device follows `term`: forward the outbox to `term.leader` and accept its pushes.
    Follow {
        /// The term followed.
        term: Term,
    },
    /// This device still leads `term` but has heard no other member for
    /// [`Config::isolation`](crate::Config::isolation): stop sequencing (local writes wait in
    /// the outbox) until [`RoleChange::Resume`]. The term is kept: a leader that was only briefly
    /// cut off goes on without an election, and one that the others replaced in the meantime
    /// steps down when it hears them, having sequenced nothing they lack.
    Pause {
        /// The term this device leads.
        term: Term,
    },
    /// A paused leader heard a member that does not follow a higher term: sequence again.
    Resume {
        /// The term this device leads.
        term: Term,
    },
}

/// A deposed leader's orders.
///
/// On receipt the service must, in this order:
/// 1. stop sequencing at once: commit no further batch stamped with `term` (re-check
///    [`Fence::can_sequence`](crate::Fence::can_sequence) before each batch as well);
/// 2. keep every unsequenced change — its own outbox rows and whatever followers forwarded to
///    it — and hand them to the winner: to `new_leader` if it is known, otherwise to the
///    leader of the next [`RoleChange::Follow`]. Forwarding is idempotent by origin key, so
///    re-sending what the winner already has is harmless;
/// 3. let the log layer compare positions with the winner: entries this device sequenced
///    under `term` that the winner does not share are discarded and re-submitted
///    (design-notes rule 5). Nothing is dropped here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepDown {
    /// The term this device led.
    pub term: Term,
    /// The winner, when already known.
    pub new_leader: Option<Term>,
    /// Why.
    pub reason: StepDownReason,
}

/// Why a leader stepped down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepDownReason {
    /// A leader of a higher term is alive: a higher epoch, or the same epoch and a higher
    /// device id (two sides of a healed partition).
    HigherTerm(Term),
    /// A member claimed a higher epoch: an election is under way and this device takes part.
    Election(Epoch),
    /// This device is no longer a member of the library.
    Removed,
}
