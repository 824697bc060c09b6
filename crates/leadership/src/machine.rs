//! The leadership state machine: pure, deterministic, no I/O, no clock.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, trace, warn};

use crate::config::Config;
use crate::fence::Fence;
use crate::protocol::{Action, Input, Message, RoleChange, Start, StepDown, StepDownReason};
use crate::store::PersistedLeadership;
use crate::types::{Epoch, LogPosition, MemberId, Term, Time};

/// The role a device plays right now, for status displays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoleKind {
    /// Follows a leader, or waits for one.
    Follower,
    /// Stands in an election.
    Candidate,
    /// Leads; may sequence.
    Leader,
}

/// What one device knows about leadership (see [`Leadership::status`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This device.
    pub me: MemberId,
    /// Its role.
    pub role: RoleKind,
    /// The term it leads or follows now (`None` while it waits for or runs an election).
    pub leader: Option<Term>,
    /// The highest epoch it has seen or claimed.
    pub max_epoch: Epoch,
    /// The highest epoch known to be saved durably.
    pub durable_epoch: Epoch,
    /// Its log position.
    pub position: LogPosition,
    /// Whether it is a member of the library (non-members never claim or lead).
    pub member: bool,
    /// Whether it leads but is paused: it heard no other member for
    /// [`Config::isolation`], so it sequences nothing until it hears one.
    pub paused: bool,
    /// When it last heard any other member (`None`: never, since it started).
    pub last_heard: Option<Time>,
}

impl Status {
    /// The fence matching this status.
    pub fn fence(&self) -> Fence {
        Fence::new(self.me, self.max_epoch, self.leader).with_paused(self.paused)
    }

    /// The term to stamp sequenced entries with, if this device leads.
    pub fn can_sequence(&self) -> Option<Term> {
        self.fence().can_sequence()
    }
}

/// Election preference: most caught-up first, then the highest device id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    position: LogPosition,
    device: MemberId,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The candidacy's epoch is being saved; nothing is sent before the acknowledgement.
    Persisting { deadline: Time, founding: bool },
    /// The claim is out; rival claims are collected until `window_end`.
    Claiming { window_end: Time },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// `leader` (always of `max_epoch`) is followed; `awaiting` is the better candidate
    /// deferred to, if any.
    Follower { leader: Option<Term>, awaiting: Option<MemberId>, lease_until: Time },
    /// Always for `max_epoch`.
    Candidate { epoch: Epoch, stage: Stage },
    /// Always of `max_epoch`; `epoch` was saved before the role was taken. `paused`: no
    /// other member heard for [`Config::isolation`]; nothing is sequenced.
    Leader { epoch: Epoch, next_heartbeat: Time, paused: bool },
}

/// The leadership state machine of one device.
///
/// Feed it [`Input`]s with the current [`Time`] through [`Leadership::handle`], execute the
/// returned [`Action`]s in order, and call it again with [`Input::Tick`] at
/// [`Leadership::next_wakeup`]. It performs no I/O and reads no clock, so the same inputs at
/// the same times always give the same actions. The rules it implements are listed in the
/// [crate documentation](crate).
///
/// ```
/// use std::time::Duration;
/// use leadership::{Action, RoleChange, Config, MemberId, Epoch, Input, Leadership, Start, Time};
///
/// let me = MemberId::from_u128(1);
/// let (mut machine, actions) =
///     Leadership::start(Config::default(), me, [me], Start::Create, Time::ZERO);
/// // Epoch 1 must be saved before the creator leads it.
/// let Action::Persist(record) = &actions[0] else { panic!("persist first") };
/// assert_eq!(record.max_epoch, Epoch(1));
/// assert_eq!(machine.status().leader, None);
///
/// let now = Time::ZERO + Duration::from_millis(3);
/// let actions = machine.handle(now, Input::Persisted(record.clone()));
/// assert!(actions.iter().any(|a| matches!(a, Action::RoleChange(RoleChange::BecomeLeader { .. }))));
/// assert_eq!(machine.status().can_sequence().map(|t| t.epoch), Some(Epoch(1)));
/// ```
#[derive(Clone, Debug)]
pub struct Leadership {
    config: Config,
    me: MemberId,
    members: BTreeSet<MemberId>,
    position: LogPosition,
    max_epoch: Epoch,
    durable_epoch: Epoch,
    last_leader: Option<Term>,
    /// The record of the last `Persist` emitted.
    emitted: PersistedLeadership,
    /// Since when the current record has been waiting for its acknowledgement.
    unsaved_since: Option<Time>,
    /// Re-emit the record at the end of this step (the save is overdue).
    retry_save: bool,
    role: Role,
    /// When each other member was last heard from (any message from it).
    heard: BTreeMap<MemberId, Time>,
    /// A leader's silence is counted from here at the earliest (taking the lead, a change of
    /// membership): a grace of one isolation time.
    quiet_base: Time,
    /// When a non-leader next announces its presence.
    next_presence: Time,
    /// Its lease lapsed while it heard no other member, so it did not claim: the next member
    /// it hears gives it a fresh lease (a leader gets one lease to show up).
    stranded: bool,
}

impl Leadership {
    /// Starts the machine of device `me`, member list `members`, at time `now`.
    ///
    /// Returns the machine and the first actions to execute. With [`Start::Create`], `me` is
    /// added to `members` if missing (the creator is a member by definition).
    pub fn start(
        config: Config,
        me: MemberId,
        members: impl IntoIterator<Item = MemberId>,
        start: Start,
        now: Time,
    ) -> (Self, Vec<Action>) {
        let mut machine = Self {
            config,
            me,
            members: members.into_iter().collect(),
            position: LogPosition::default(),
            max_epoch: Epoch::ZERO,
            durable_epoch: Epoch::ZERO,
            last_leader: None,
            emitted: PersistedLeadership::default(),
            unsaved_since: None,
            retry_save: false,
            role: Role::Follower {
                leader: None,
                awaiting: None,
                lease_until: now + config.lease(),
            },
            heard: BTreeMap::new(),
            quiet_base: now,
            next_presence: now + config.heartbeat(),
            stranded: false,
        };
        let mut out = Vec::new();
        match start {
            Start::Create => {
                machine.members.insert(me);
                machine.max_epoch = Epoch::FIRST;
                machine.role = Role::Candidate {
                    epoch: Epoch::FIRST,
                    stage: Stage::Persisting { deadline: now + config.heartbeat(), founding: true },
                };
                info!(device = %me, "created the library: leading epoch 1 once it is saved");
            }
            Start::Join => {
                info!(device = %me, "joined: waiting one lease for a leader");
            }
            Start::Resume(record) => {
                machine.max_epoch = record.max_epoch;
                machine.durable_epoch = record.max_epoch;
                machine.last_leader = record.last_leader;
                machine.emitted = record;
                info!(device = %me, max_epoch = %machine.max_epoch,
                    "restarted as a follower: waiting one lease for a leader");
            }
        }
        machine.on_timers(now, &mut out);
        machine.finish(now, &mut out);
        (machine, out)
    }

    /// Applies one input at time `now`, fires the timers due at `now`, and returns the actions
    /// to execute, in order.
    ///
    /// Order within one batch: a [`RoleChange::StepDown`] comes first (stop sequencing before
    /// anything else), then at most one [`Action::Persist`], then messages and other changes.
    pub fn handle(&mut self, now: Time, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match input {
            Input::Tick => {}
            Input::Received { from, message } => self.on_message(now, from, message, &mut out),
            Input::Observed(term) => {
                if term.leader != self.me && self.members.contains(&term.leader) {
                    self.on_leader_seen(now, term, &mut out);
                }
            }
            Input::Persisted(record) => self.on_persisted(now, &record, &mut out),
            Input::LogPosition(position) => self.position = position,
            Input::Membership(members) => self.on_membership(now, members, &mut out),
        }
        self.on_timers(now, &mut out);
        self.finish(now, &mut out);
        out
    }

    /// When the machine next needs an [`Input::Tick`] (`None`: only inputs can change
    /// anything).
    pub fn next_wakeup(&self) -> Option<Time> {
        let retry = self.unsaved_since.map(|since| since + self.config.heartbeat());
        let role = match self.role {
            Role::Follower { lease_until, .. } => self.is_member().then(|| {
                if self.has_others() { lease_until.min(self.next_presence) } else { lease_until }
            }),
            Role::Candidate { stage: Stage::Persisting { deadline, .. }, .. } => Some(deadline),
            Role::Candidate { stage: Stage::Claiming { window_end }, .. } => Some(window_end),
            Role::Leader { next_heartbeat, paused: false, .. } => {
                Some(self.pause_deadline().map_or(next_heartbeat, |p| p.min(next_heartbeat)))
            }
            Role::Leader { next_heartbeat, paused: true, .. } => Some(next_heartbeat),
        };
        match (role, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What this device knows about leadership now.
    pub fn status(&self) -> Status {
        let paused = matches!(self.role, Role::Leader { paused: true, .. });
        let (role, leader) = match self.role {
            Role::Follower { leader, .. } => (RoleKind::Follower, leader),
            Role::Candidate { .. } => (RoleKind::Candidate, None),
            Role::Leader { epoch, .. } => (RoleKind::Leader, Some(Term::new(epoch, self.me))),
        };
        Status {
            me: self.me,
            role,
            leader,
            max_epoch: self.max_epoch,
            durable_epoch: self.durable_epoch,
            position: self.position,
            member: self.is_member(),
            paused,
            last_heard: self.last_heard(),
        }
    }

    /// The fence for messages arriving now.
    pub fn fence(&self) -> Fence {
        self.status().fence()
    }

    /// The record as it should be persisted now.
    pub fn record(&self) -> PersistedLeadership {
        PersistedLeadership { max_epoch: self.max_epoch, last_leader: self.last_leader }
    }

    /// This device.
    pub fn me(&self) -> MemberId {
        self.me
    }

    /// The timing parameters.
    pub fn config(&self) -> &Config {
        &self.config
    }

    fn is_member(&self) -> bool {
        self.members.contains(&self.me)
    }

    /// Whether the library has members besides this device.
    fn has_others(&self) -> bool {
        self.members.iter().any(|&m| m != self.me)
    }

    /// When any other member was last heard.
    fn last_heard(&self) -> Option<Time> {
        self.heard
            .iter()
            .filter(|(d, _)| **d != self.me && self.members.contains(d))
            .map(|(_, t)| *t)
            .max()
    }

    /// Whether some other member was heard during the `span` before `now`.
    fn heard_within(&self, now: Time, span: std::time::Duration) -> bool {
        self.last_heard().is_some_and(|t| now < t + span)
    }

    /// When a leader that hears nobody pauses (`None`: it is the only member).
    fn pause_deadline(&self) -> Option<Time> {
        if !self.has_others() {
            return None;
        }
        let base = self.last_heard().map_or(self.quiet_base, |t| t.max(self.quiet_base));
        Some(base + self.config.isolation())
    }

    fn presence(&self) -> Message {
        let leader = match self.role {
            Role::Follower { leader, .. } => leader,
            _ => None,
        };
        Message::Presence { device: self.me, epoch: self.max_epoch, leader }
    }

    fn rank(&self) -> Rank {
        Rank { position: self.position, device: self.me }
    }

    fn broadcast(&self, message: Message, out: &mut Vec<Action>) {
        for &to in self.members.iter().filter(|&&m| m != self.me) {
            out.push(Action::Send { to, message });
        }
    }

    fn heartbeat(&self, epoch: Epoch) -> Message {
        Message::Heartbeat { term: Term::new(epoch, self.me), position: self.position }
    }

    /// Raises the highest epoch seen; the caller sets the new role.
    fn raise_epoch(&mut self, epoch: Epoch) {
        debug_assert!(epoch > self.max_epoch);
        self.max_epoch = epoch;
    }

    /// Puts at most one `Persist` right after the step-downs, if the record changed or its
    /// save is overdue.
    fn finish(&mut self, now: Time, out: &mut Vec<Action>) {
        let retry = std::mem::take(&mut self.retry_save);
        let record = self.record();
        if record != self.emitted || retry {
            if retry || self.unsaved_since.is_none() {
                self.unsaved_since = Some(now);
            }
            self.emitted = record.clone();
            let at = out
                .iter()
                .take_while(|a| matches!(a, Action::RoleChange(RoleChange::StepDown(_))))
                .count();
            out.insert(at, Action::Persist(record));
        }
    }

    fn step_down(
        &mut self,
        new_leader: Option<Term>,
        reason: StepDownReason,
        out: &mut Vec<Action>,
    ) {
        if let Role::Leader { epoch, .. } = self.role {
            let term = Term::new(epoch, self.me);
            info!(device = %self.me, %term, ?reason, "stepping down");
            out.push(Action::RoleChange(RoleChange::StepDown(StepDown {
                term,
                new_leader,
                reason,
            })));
        }
    }

    fn follow(&mut self, now: Time, term: Term, out: &mut Vec<Action>) {
        debug_assert_eq!(term.epoch, self.max_epoch);
        let known = matches!(self.role, Role::Follower { leader: Some(l), .. } if l == term);
        self.role = Role::Follower {
            leader: Some(term),
            awaiting: None,
            lease_until: now + self.config.lease(),
        };
        if !known {
            info!(device = %self.me, %term, "following");
            self.last_leader = Some(term);
            out.push(Action::RoleChange(RoleChange::Follow { term }));
        }
    }

    fn defer(&mut self, now: Time, to: MemberId) {
        debug!(device = %self.me, better = %to, epoch = %self.max_epoch, "deferring to a better claim");
        self.role = Role::Follower {
            leader: None,
            awaiting: Some(to),
            lease_until: now + self.config.lease(),
        };
    }

    fn on_message(&mut self, now: Time, from: MemberId, message: Message, out: &mut Vec<Action>) {
        if from == self.me {
            return;
        }
        if message.sender() != from {
            warn!(device = %self.me, %from, claimed = %message.sender(), "dropping a message whose sender is not the peer");
            return;
        }
        if !self.members.contains(&from) {
            debug!(device = %self.me, %from, "ignoring a message from a non-member");
            return;
        }
        let was_stranded = std::mem::take(&mut self.stranded);
        // A member that follows nobody: there is no leader to protect by waiting.
        let leaderless = matches!(message, Message::Presence { leader: None, .. });
        self.heard.insert(from, now);
        match message {
            Message::Heartbeat { term, .. } => {
                trace!(device = %self.me, %term, "heartbeat");
                self.on_leader_seen(now, term, out);
            }
            Message::Claim { epoch, device, position } => {
                self.on_claim(now, epoch, Rank { position, device }, out)
            }
            Message::Presence { epoch, leader, .. } => self.on_presence(now, epoch, leader, out),
        }
        match self.role {
            // Back in touch after a silence with a member that follows nobody either: nobody
            // leads that this device could depose, so it stands now (both sides of a healed
            // cut would otherwise wait a whole lease for each other).
            Role::Follower { leader: None, awaiting, lease_until }
                if was_stranded && leaderless =>
            {
                let lease_until = lease_until.min(now);
                self.role = Role::Follower { leader: None, awaiting, lease_until };
            }
            // Back in touch after a silence: give a leader one lease to show up before
            // standing, so a returning device never deposes a healthy leader.
            Role::Follower { leader, awaiting, lease_until } if was_stranded => {
                let lease_until = lease_until.max(now + self.config.lease());
                self.role = Role::Follower { leader, awaiting, lease_until };
            }
            // A member that does not follow a higher term is reachable: sequence again.
            Role::Leader { epoch, next_heartbeat, paused: true } => {
                let term = Term::new(epoch, self.me);
                info!(device = %self.me, %term, %from, "heard a member again: resuming sequencing");
                self.role = Role::Leader { epoch, next_heartbeat, paused: false };
                out.push(Action::RoleChange(RoleChange::Resume { term }));
            }
            _ => {}
        }
    }

    /// A member's presence: proof that it is reachable, and what it has seen.
    fn on_presence(
        &mut self,
        now: Time,
        epoch: Epoch,
        leader: Option<Term>,
        out: &mut Vec<Action>,
    ) {
        match leader {
            // It follows a term: that term was led (a device follows only a leader it heard).
            // (The term already known is no news: a fellow follower must not renew the lease
            // of a leader that may be gone.)
            Some(term)
                if term.epoch == epoch
                    && term.epoch >= self.max_epoch
                    && Some(term) != self.status().leader
                    && term.leader != self.me
                    && self.members.contains(&term.leader) =>
            {
                self.on_leader_seen(now, term, out);
            }
            _ if epoch > self.max_epoch => {
                // An election this device has not heard of: whatever it leads is over.
                debug!(device = %self.me, %epoch, "a member has seen a higher epoch");
                self.step_down(None, StepDownReason::Election(epoch), out);
                self.raise_epoch(epoch);
                if !matches!(self.role, Role::Follower { .. }) {
                    self.role = Role::Follower {
                        leader: None,
                        awaiting: None,
                        lease_until: now + self.config.lease(),
                    };
                } else if let Role::Follower { leader: Some(_), lease_until, .. } = self.role {
                    self.role = Role::Follower { leader: None, awaiting: None, lease_until };
                }
            }
            _ => {}
        }
    }

    /// A heartbeat, or any other proof that `term` is led.
    fn on_leader_seen(&mut self, now: Time, term: Term, out: &mut Vec<Action>) {
        if term.epoch < self.max_epoch {
            // Stale: tell a lagging leader (or candidate) about our term, if we lead.
            if let Role::Leader { epoch, .. } = self.role {
                out.push(Action::Send { to: term.leader, message: self.heartbeat(epoch) });
            }
            return;
        }
        if term.epoch > self.max_epoch {
            self.step_down(Some(term), StepDownReason::HigherTerm(term), out);
            self.raise_epoch(term.epoch);
            self.follow(now, term, out);
            return;
        }
        match self.role {
            Role::Leader { epoch, .. } => {
                if term.leader > self.me {
                    self.step_down(Some(term), StepDownReason::HigherTerm(term), out);
                    self.follow(now, term, out);
                } else {
                    // Same epoch, lower id: our heartbeat makes it step down.
                    out.push(Action::Send { to: term.leader, message: self.heartbeat(epoch) });
                }
            }
            // The epoch is taken: follow whoever leads it.
            Role::Candidate { .. } | Role::Follower { leader: None, .. } => {
                self.follow(now, term, out);
            }
            Role::Follower { leader: Some(current), .. } => {
                if term.leader >= current.leader {
                    self.follow(now, term, out);
                }
            }
        }
    }

    fn on_claim(&mut self, now: Time, epoch: Epoch, theirs: Rank, out: &mut Vec<Action>) {
        if epoch <= self.max_epoch {
            match self.role {
                // The epoch is taken (or over): our heartbeat tells the claimant.
                Role::Leader { epoch: ours, .. } => {
                    out.push(Action::Send { to: theirs.device, message: self.heartbeat(ours) })
                }
                Role::Candidate { epoch: ours, .. } if ours == epoch && theirs > self.rank() => {
                    self.defer(now, theirs.device);
                }
                _ => {}
            }
            return;
        }
        // A new election: take part in it.
        debug!(device = %self.me, %epoch, claimant = %theirs.device, "election started by a peer");
        self.step_down(None, StepDownReason::Election(epoch), out);
        self.raise_epoch(epoch);
        if self.is_member() && self.rank() > theirs {
            self.stand(now, epoch, false);
        } else {
            self.defer(now, theirs.device);
        }
    }

    /// Becomes a candidate for `epoch` (== `max_epoch`); the claim goes out once it is saved.
    fn stand(&mut self, now: Time, epoch: Epoch, founding: bool) {
        debug!(device = %self.me, %epoch, "standing for election");
        self.role = Role::Candidate {
            epoch,
            stage: Stage::Persisting { deadline: now + self.config.heartbeat(), founding },
        };
    }

    fn retry_save_due(&self, now: Time) -> bool {
        self.unsaved_since.is_some_and(|since| now >= since + self.config.heartbeat())
    }

    fn on_persisted(&mut self, now: Time, record: &PersistedLeadership, out: &mut Vec<Action>) {
        self.durable_epoch = self.durable_epoch.max(record.max_epoch);
        if *record == self.record() {
            self.unsaved_since = None;
        }
        if let Role::Candidate { epoch, stage: Stage::Persisting { founding, .. } } = self.role
            && self.durable_epoch >= epoch
        {
            if founding {
                self.become_leader(now, epoch, out);
            } else {
                self.role = Role::Candidate {
                    epoch,
                    stage: Stage::Claiming { window_end: now + self.config.claim_window() },
                };
                debug!(device = %self.me, %epoch, "claiming");
                self.broadcast(
                    Message::Claim { epoch, device: self.me, position: self.position },
                    out,
                );
            }
        }
    }

    fn become_leader(&mut self, now: Time, epoch: Epoch, out: &mut Vec<Action>) {
        if self.durable_epoch < epoch {
            // Unreachable by construction; never lead an epoch that is not saved.
            warn!(device = %self.me, %epoch, "refusing to lead an unsaved epoch");
            self.role = Role::Follower {
                leader: None,
                awaiting: None,
                lease_until: now + self.config.lease(),
            };
            return;
        }
        let term = Term::new(epoch, self.me);
        info!(device = %self.me, %term, "became leader");
        self.role =
            Role::Leader { epoch, next_heartbeat: now + self.config.heartbeat(), paused: false };
        self.quiet_base = now;
        self.last_leader = Some(term);
        out.push(Action::RoleChange(RoleChange::BecomeLeader { term }));
        self.broadcast(self.heartbeat(epoch), out);
    }

    fn on_timers(&mut self, now: Time, out: &mut Vec<Action>) {
        if self.retry_save_due(now) {
            warn!(device = %self.me, "leadership record not saved after a heartbeat interval: saving again");
            self.retry_save = true;
        }
        if matches!(self.role, Role::Follower { .. })
            && self.is_member()
            && self.has_others()
            && now >= self.next_presence
        {
            let mut next = self.next_presence + self.config.heartbeat();
            if next <= now {
                next = now + self.config.heartbeat();
            }
            self.next_presence = next;
            self.broadcast(self.presence(), out);
        }
        match self.role {
            Role::Follower { leader, lease_until, .. }
                if self.is_member()
                    && now >= lease_until
                    && self.has_others()
                    && !self.heard_within(now, self.config.reach()) =>
            {
                // Nobody else is reachable: claiming would only start a second history.
                // Wait (a returning device gets a fresh lease when it hears someone).
                if !self.stranded {
                    info!(device = %self.me, ?leader, "lease lapsed but no other member heard for a lease: not claiming");
                }
                self.stranded = true;
                self.role = Role::Follower {
                    leader: None,
                    awaiting: None,
                    lease_until: now + self.config.lease(),
                };
            }
            Role::Follower { leader, lease_until, .. }
                if self.is_member() && (now >= lease_until || !self.has_others()) =>
            {
                let Some(next) = self.max_epoch.0.checked_add(1) else {
                    // The epoch space is exhausted (a peer announced `u64::MAX`, or a record
                    // says so): no new epoch exists, and reusing one is never allowed. Stay a
                    // follower that can still learn a leader of the last epoch.
                    warn!(device = %self.me, epoch = %self.max_epoch, "no epoch left to stand for: not electing");
                    self.role = Role::Follower {
                        leader: None,
                        awaiting: None,
                        lease_until: now + self.config.lease(),
                    };
                    return;
                };
                let epoch = Epoch(next);
                info!(device = %self.me, ?leader, %epoch, "lease lapsed: starting an election");
                self.raise_epoch(epoch);
                self.stand(now, epoch, false);
            }
            Role::Follower { .. } => {}
            Role::Candidate { epoch, stage: Stage::Persisting { deadline, .. } }
                if now >= deadline =>
            {
                warn!(device = %self.me, %epoch, "epoch not saved in time: giving the candidacy up");
                self.role = Role::Follower {
                    leader: None,
                    awaiting: None,
                    lease_until: now + self.config.lease(),
                };
            }
            Role::Candidate { epoch, stage: Stage::Claiming { window_end } }
                if now >= window_end =>
            {
                self.become_leader(now, epoch, out)
            }
            Role::Candidate { .. } => {}
            Role::Leader { epoch, next_heartbeat, paused } => {
                let mut next_heartbeat = next_heartbeat;
                if now >= next_heartbeat {
                    next_heartbeat = next_heartbeat + self.config.heartbeat();
                    if next_heartbeat <= now {
                        next_heartbeat = now + self.config.heartbeat();
                    }
                    self.broadcast(self.heartbeat(epoch), out);
                }
                let term = Term::new(epoch, self.me);
                let silent = self.pause_deadline().is_some_and(|at| now >= at);
                let paused = match (paused, silent) {
                    (false, true) => {
                        warn!(device = %self.me, %term, "heard no other member: pausing sequencing");
                        out.push(Action::RoleChange(RoleChange::Pause { term }));
                        true
                    }
                    (true, false) if !self.has_others() => {
                        info!(device = %self.me, %term, "the only member: resuming sequencing");
                        out.push(Action::RoleChange(RoleChange::Resume { term }));
                        false
                    }
                    (p, _) => p,
                };
                self.role = Role::Leader { epoch, next_heartbeat, paused };
            }
        }
    }

    fn on_membership(&mut self, now: Time, members: BTreeSet<MemberId>, out: &mut Vec<Action>) {
        let was_member = self.is_member();
        self.members = members;
        self.heard.retain(|d, _| self.members.contains(d));
        self.quiet_base = now;
        if !self.is_member() {
            if was_member {
                info!(device = %self.me, "no longer a member: leaving leadership");
            }
            self.step_down(None, StepDownReason::Removed, out);
            if !matches!(self.role, Role::Follower { .. }) {
                self.role = Role::Follower {
                    leader: None,
                    awaiting: None,
                    lease_until: now + self.config.lease(),
                };
            }
            return;
        }
        match self.role {
            Role::Follower { leader, awaiting, lease_until } => {
                let lost = leader
                    .map(|t| t.leader)
                    .or(awaiting)
                    .is_some_and(|l| !self.members.contains(&l));
                let lease_until = if lost {
                    info!(device = %self.me, "the leader was removed from the library: treating it as lost");
                    now
                } else if !was_member {
                    // Newly a member: give a leader one lease to show up.
                    now + self.config.lease()
                } else {
                    lease_until
                };
                self.role = Role::Follower {
                    leader: if lost { None } else { leader },
                    awaiting: if lost { None } else { awaiting },
                    lease_until,
                };
            }
            Role::Candidate { .. } | Role::Leader { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests;
