//! # leadership
//!
//! **One job:** decide which device of a library leads — the one that gives changes their
//! global sequence numbers — with epochs, leases and fencing, so that leadership moves when a
//! leader goes away and a split brain heals by itself.
//!
//! **Must not know:** diesel or any database (persistence is the [`LeadershipStore`] trait),
//! iroh or the network (messages leave through [`Transport`] / [`Action::Send`]), the clock (the
//! machine is given [`Time`]; only the [`driver`] reads `tokio::time`), or the log, models and
//! other crates of the workspace. It depends on none of them.
//!
//! ## Shape
//!
//! * [`Leadership`] is a pure state machine: [`Input`]s (ticks, heartbeats and claims heard from
//!   peers, save acknowledgements, position, membership) in, [`Action`]s (persist, send, role
//!   [`RoleChange`]s) out. Same inputs at the same times, same actions.
//! * [`driver::spawn`] runs one machine on tokio through three seams: [`LeadershipStore`],
//!   [`Transport`], [`Observer`]. It publishes a [`Status`] with a [`Fence`] after every step.
//! * [`Fence`] tells the service which pushes to accept and whether it may sequence.
//!
//! ## Rules
//!
//! With `H` the heartbeat interval (default 1 s), `L` the lease (default 5 s) and `W` the claim
//! window (default 250 ms), all in [`Config`]:
//!
//! 1. **Creation.** The library's creator leads epoch 1 as soon as epoch 1 is saved. A device
//!    that joins, or restarts, starts as a follower that knows no leader.
//! 2. **Heartbeats and lease.** The leader sends a heartbeat to every member every `H`. A
//!    follower holds the leader's lease for `L` after each heartbeat it hears.
//! 3. **Election.** When its lease lapses, a member that can reach another member (it heard
//!    one within `R = min(2H, L - H)`, see rule 9) stands for `max_epoch + 1` (the highest
//!    epoch it has seen, plus one). A member that hears a claim for an epoch above its own
//!    joins that election: it stands too if its own rank is better, and defers otherwise.
//!    Rank = most caught-up [`LogPosition`] first, then the highest [`MemberId`]. A candidate that
//!    hears a better claim for its epoch defers; one that hears no better claim for `W` after
//!    sending its claim leads. A deferring device waits one lease for the winner's heartbeat,
//!    then elects again (at a new epoch).
//! 4. **Persist before acting.** A new epoch is saved ([`Action::Persist`], acknowledged with
//!    [`Input::Persisted`]) before the device claims it, and therefore before it leads it. If the
//!    save does not complete within `H`, the candidacy is given up. Raising the epoch because a
//!    *peer* is ahead is saved too, but following needs no acknowledgement: stepping back is
//!    always safe.
//! 5. **Higher epoch wins at once.** A device that hears a heartbeat or claim with a higher
//!    epoch steps down at once (a leader emits [`RoleChange::StepDown`] before anything else).
//! 6. **Same epoch: higher device id.** Two leaders of one epoch (only possible across a
//!    partition) resolve to the higher device id as soon as one heartbeat crosses; a leader that
//!    hears a lower term answers it with an immediate heartbeat. A candidate that hears a leader
//!    of its own epoch follows it: the epoch is taken.
//! 7. **Restarts.** A restarted device resumes from its saved record: it never claims an epoch at
//!    or below the saved `max_epoch`, and never leads again without winning a new epoch.
//! 8. **Membership.** Messages from non-members are ignored; a non-member never claims or leads;
//!    removing the followed leader from the member list counts as losing it (an election starts
//!    at once).
//! 9. **Diverge only when unavoidable.** Every member that does not lead announces its
//!    presence ([`Message::Presence`]) to every other member every `H`.
//!    * A follower whose lease lapses while it heard no other member within `R` does **not**
//!      claim: alone, it could only start a second history. The next member it hears gives it
//!      a fresh lease, so a returning device never deposes a healthy leader — unless that
//!      member announces that it follows nobody either: then nobody leads and it stands at
//!      once (otherwise two devices that were both cut off would wait a lease for each other).
//!    * A leader that heard no other member for `I = L - H` ([`Config::isolation`]) **pauses**
//!      ([`RoleChange::Pause`]): it keeps its term and heartbeats, but sequences nothing
//!      ([`Fence::can_sequence`] is `None`; its writes wait in its outbox). `I < L`, so it has
//!      paused before the others' leases lapse. It **resumes** ([`RoleChange::Resume`]) when it hears
//!      a member that does not follow a higher term; a member that does deposes it instead.
//!    * A library with **one member** is led by it (no lease to wait for, never paused).
//!
//!    So a partition that isolates one device (a laptop on a train) never lets two devices
//!    sequence at once; only two sides with two or more devices each can diverge. What a
//!    leader sequenced in the `I` before it noticed that it was cut off reached nobody and can
//!    still be discarded and re-submitted by the log layer; nothing is lost.
//!
//! Without a quorum (personal devices), two sides of a partition can both elect, even at the
//! same epoch number; they hold different [`Term`]s `(epoch, device)`, and fencing compares
//! terms, never bare epochs. When the sides meet, the higher term wins within one heartbeat and
//! the loser hands over (see [`StepDown`]); the log's running checksum exposes the divergence
//! and the log layer repairs it (design-notes rule 5).
//!
//! ## Timing guarantees (proved by the simulation tests)
//!
//! With one-way message delays of at most `d`, saves of at most `p`, timers late by at most
//! `j`, and `W >= 2d + p` (so connected candidates see each other's claims before deciding):
//!
//! * **Leader loss, or faults stopping:** every live member follows one and the same leader
//!   within `L + W + 3d + 2p + j` (5.59 s with the defaults, `d = 100 ms`, `p = 10 ms`,
//!   `j = 20 ms`: below `L + H`).
//! * **Split brain:** two leaders that can hear each other coexist for at most `H + j + d`.
//! * **Elections per fault:** a crash or a clean partition costs at most one epoch. A cut that
//!   leaves connectivity non-transitive (A hears B, B hears C, A does not hear C) or one-way,
//!   lasting `D`, costs at most `ceil(D / L)` epochs: the cut-off device keeps losing sight of
//!   the leader the others pick. Never faster than one per lease: there is no epoch storm.
//!
//! ## Example
//!
//! ```
//! use leadership::{Action, Config, MemberId, Epoch, Input, Leadership, Message, Start, Term, Time};
//!
//! let (a, b, c) = (MemberId::from_u128(1), MemberId::from_u128(2), MemberId::from_u128(3));
//! let (mut follower, _) =
//!     Leadership::start(Config::default(), b, [a, b, c], Start::Join, Time::ZERO);
//! let heartbeat = Message::Heartbeat { term: Term::new(Epoch(1), a), position: Default::default() };
//! follower.handle(Time::from_millis(10), Input::Received { from: a, message: heartbeat });
//! assert_eq!(follower.status().leader, Some(Term::new(Epoch(1), a)));
//!
//! // The leader is silent for a lease, but c is still heard: b stands for epoch 2 — after
//! // saving it.
//! let presence = Message::Presence { device: c, epoch: Epoch(1), leader: None };
//! follower.handle(Time::from_millis(4_500), Input::Received { from: c, message: presence });
//! let actions = follower.handle(Time::from_millis(5_010), Input::Tick);
//! assert!(actions.iter().any(|a| matches!(a, Action::Persist(r) if r.max_epoch == Epoch(2))));
//! ```
#![deny(missing_docs)]

mod config;
pub mod driver;
mod error;
mod fence;
mod machine;
mod protocol;
mod store;
mod types;

pub use config::Config;
pub use driver::{DriverHandle, DriverParams, FirstStart, Observer, Transport};
pub use error::{Error, Result};
pub use fence::{Fence, Verdict};
pub use machine::{Leadership, RoleKind, Status};
pub use protocol::{Action, Input, Message, RoleChange, Start, StepDown, StepDownReason};
pub use store::{LeadershipStore, MemoryStore, PersistedLeadership, store_suite};
pub use types::{Epoch, LogPosition, MemberId, Term, Time};
