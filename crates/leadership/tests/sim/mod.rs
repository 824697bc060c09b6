//! A deterministic simulation of N devices running the leadership machine.
//!
//! Virtual time, a seeded random source, an in-process network with per-message delays, cuts
//! in either direction and partitions, saves with latency, crashes and restarts on the saved
//! record. Invariants are checked after every event; a failing run prints its seed and the
//! tail of its trace, and `Sim::new` with that seed replays it exactly.

#![allow(dead_code, unreachable_pub)]

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::fmt::Write as _;
use std::time::Duration;

use leadership::{
    Action, Config, Epoch, Input, Leadership, LeadershipStore, LogPosition, MemberId, MemoryStore,
    Message, RoleChange, Start, Term, Time,
};

/// SplitMix64: tiny, seedable, and stable forever (unlike a library RNG's stream).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo).as_micros() as u64 + 1;
        lo + Duration::from_micros(self.next_u64() % span)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// Knobs of one simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub config: Config,
    /// One-way message delay range.
    pub delay: (Duration, Duration),
    /// Save latency range.
    pub save: (Duration, Duration),
    /// Timers fire up to this late.
    pub timer_jitter: Duration,
    /// The leader's position grows by one per wake-up, followers catch up from heartbeats.
    pub advance_positions: bool,
    pub seed: u64,
}

impl SimConfig {
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            config: Config::default(),
            delay: (Duration::from_millis(1), Duration::from_millis(100)),
            save: (Duration::ZERO, Duration::from_millis(10)),
            timer_jitter: Duration::from_millis(20),
            advance_positions: true,
            seed,
        }
    }

    /// How long two leaders that can hear each other may coexist: the higher one's next
    /// heartbeat (at most `H` plus timer lateness away) plus one message delay.
    pub fn coexistence_bound(&self) -> Duration {
        self.config.heartbeat() + self.timer_jitter + self.delay.1
    }
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Deliver { to: usize, from: usize, message: MessageKey },
    SaveDone { node: usize, incarnation: u64, max_epoch: Epoch, record_id: usize },
    Wake { node: usize, incarnation: u64, key: Time },
}

/// `Message` is not `Ord`; events refer to it by index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct MessageKey(usize);

/// One line of the trace.
#[derive(Clone, Debug)]
pub struct Traced {
    pub at: Time,
    pub node: usize,
    pub what: String,
}

/// A role change seen in the simulation.
#[derive(Clone, Debug)]
pub struct Seen {
    pub at: Time,
    pub node: usize,
    pub change: RoleChange,
}

struct Node {
    machine: Option<Leadership>,
    store: MemoryStore,
    incarnation: u64,
    wake_at: Option<Time>,
    /// Term led and since when.
    leading: Option<(Term, Time)>,
    /// Every epoch this device ever led, across restarts.
    led: Vec<Epoch>,
    /// Saves complete one after the other, as in the driver.
    saves_busy_until: Time,
}

pub struct Sim {
    pub cfg: SimConfig,
    pub now: Time,
    pub ids: Vec<MemberId>,
    rng: Rng,
    nodes: Vec<Node>,
    queue: BinaryHeap<Reverse<(Time, u64, Event)>>,
    seq: u64,
    messages: Vec<Message>,
    records: Vec<leadership::PersistedLeadership>,
    /// `cut[from][to]`: messages from `from` to `to` are lost.
    cut: Vec<Vec<bool>>,
    /// Since when both directions between two nodes have been open.
    open_since: Vec<Vec<Time>>,
    pub changes: Vec<Seen>,
    pub trace: Vec<Traced>,
    pub violations: Vec<String>,
    /// Start of the fault-free period, and when the cluster last became converged in it.
    calm_since: Option<Time>,
    converged_at: Option<Time>,
    pub messages_sent: u64,
    /// The first time two devices could sequence at once, and which (any two leaders that
    /// are not paused: the only way two histories start).
    pub first_overlap: Option<(Time, Vec<usize>)>,
}

impl Sim {
    /// N nodes, all members; node 0 creates the library, the others join at time 0.
    /// Node `i` has device id `i + 1`, so a higher index is a higher id.
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.nodes;
        let ids: Vec<MemberId> = (0..n).map(|i| MemberId::from_u128(i as u128 + 1)).collect();
        let mut sim = Self {
            rng: Rng::new(cfg.seed),
            cfg,
            now: Time::ZERO,
            ids,
            nodes: (0..n)
                .map(|_| Node {
                    machine: None,
                    store: MemoryStore::new(),
                    incarnation: 0,
                    wake_at: None,
                    leading: None,
                    led: Vec::new(),
                    saves_busy_until: Time::ZERO,
                })
                .collect(),
            queue: BinaryHeap::new(),
            seq: 0,
            messages: Vec::new(),
            records: Vec::new(),
            cut: vec![vec![false; n]; n],
            open_since: vec![vec![Time::ZERO; n]; n],
            changes: Vec::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            calm_since: None,
            converged_at: None,
            messages_sent: 0,
            first_overlap: None,
        };
        for i in 0..n {
            let start = if i == 0 { Start::Create } else { Start::Join };
            sim.boot(i, start);
        }
        sim
    }

    fn members(&self) -> BTreeSet<MemberId> {
        self.ids.iter().copied().collect()
    }

    fn push(&mut self, at: Time, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, event)));
    }

    fn note(&mut self, node: usize, what: String) {
        self.trace.push(Traced { at: self.now, node, what });
    }

    fn boot(&mut self, i: usize, start: Start) {
        let members = self.members();
        let (machine, actions) =
            Leadership::start(self.cfg.config, self.ids[i], members, start, self.now);
        self.nodes[i].machine = Some(machine);
        self.nodes[i].wake_at = None;
        self.after_step(i, actions);
    }

    // ---- faults -------------------------------------------------------------------------

    /// The node stops; saves in flight are lost; its saved record stays.
    pub fn crash(&mut self, i: usize) {
        if self.nodes[i].machine.take().is_some() {
            self.nodes[i].incarnation += 1;
            self.nodes[i].wake_at = None;
            self.nodes[i].leading = None;
            self.note(i, "CRASH".into());
            self.fault();
        }
    }

    /// The node starts again from its saved record.
    pub fn restart(&mut self, i: usize) {
        if self.nodes[i].machine.is_none() {
            let start = match self.nodes[i].store.load() {
                Ok(Some(record)) => Start::Resume(record),
                _ => Start::Join,
            };
            self.note(i, format!("RESTART {start:?}"));
            self.boot(i, start);
            self.fault();
        }
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].machine.is_some()
    }

    fn set_cut(&mut self, from: usize, to: usize, cut: bool) {
        if from == to || self.cut[from][to] == cut {
            return;
        }
        let was_open = !self.cut[from][to] && !self.cut[to][from];
        self.cut[from][to] = cut;
        let open = !self.cut[from][to] && !self.cut[to][from];
        if open && !was_open {
            self.open_since[from][to] = self.now;
            self.open_since[to][from] = self.now;
        }
        self.fault();
    }

    pub fn cut_oneway(&mut self, from: usize, to: usize) {
        self.set_cut(from, to, true);
    }

    pub fn cut(&mut self, a: usize, b: usize) {
        self.set_cut(a, b, true);
        self.set_cut(b, a, true);
    }

    pub fn heal(&mut self, a: usize, b: usize) {
        self.set_cut(a, b, false);
        self.set_cut(b, a, false);
    }

    /// Only nodes in the same group can talk.
    pub fn partition(&mut self, groups: &[&[usize]]) {
        let n = self.cfg.nodes;
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for a in 0..n {
            for b in 0..n {
                let same = group_of(a).is_some() && group_of(a) == group_of(b);
                self.set_cut(a, b, !same);
            }
        }
        self.note(usize::MAX, format!("PARTITION {groups:?}"));
    }

    pub fn isolate(&mut self, i: usize) {
        for j in 0..self.cfg.nodes {
            self.cut(i, j);
        }
        self.note(i, "ISOLATED".into());
    }

    pub fn heal_all(&mut self) {
        for a in 0..self.cfg.nodes {
            for b in 0..self.cfg.nodes {
                self.set_cut(a, b, false);
            }
        }
        self.note(usize::MAX, "HEAL ALL".into());
    }

    pub fn set_position(&mut self, i: usize, position: u64) {
        self.input(i, Input::LogPosition(LogPosition(position)));
    }

    pub fn set_members(&mut self, i: usize, members: BTreeSet<MemberId>) {
        self.input(i, Input::Membership(members));
    }

    /// Feeds an input to a running node now.
    pub fn input(&mut self, i: usize, input: Input) {
        if let Some(machine) = self.nodes[i].machine.as_mut() {
            let actions = machine.handle(self.now, input);
            self.after_step(i, actions);
        }
    }

    /// Any fault restarts the calm period.
    fn fault(&mut self) {
        self.calm_since = None;
        self.converged_at = None;
    }

    /// From now on no more faults come (the caller heals and restarts first).
    pub fn begin_calm(&mut self) {
        self.calm_since = Some(self.now);
        self.converged_at = None;
        self.check_convergence();
    }

    // ---- running ------------------------------------------------------------------------

    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    pub fn run_until(&mut self, end: Time) {
        self.run_until_or(end, |_| false);
    }

    /// Runs until `end`, or until `stop` holds after some event (then `now` is that event's
    /// time). Returns whether `stop` held.
    pub fn run_until_or(&mut self, end: Time, mut stop: impl FnMut(&Sim) -> bool) -> bool {
        while let Some(Reverse((at, _, _))) = self.queue.peek() {
            if *at > end {
                break;
            }
            let Some(Reverse((at, _, event))) = self.queue.pop() else {
                break;
            };
            self.now = at;
            self.dispatch(event);
            self.check_sequencers();
            self.check_coexistence();
            self.check_convergence();
            if stop(self) {
                return true;
            }
        }
        self.now = end;
        self.check_coexistence();
        false
    }

    fn dispatch(&mut self, event: Event) {
        match event {
            Event::Deliver { to, from, message } => {
                let message = self.messages[message.0];
                if self.cut[from][to] || self.nodes[to].machine.is_none() {
                    return;
                }
                let Some(machine) = self.nodes[to].machine.as_mut() else {
                    return;
                };
                let actions =
                    machine.handle(self.now, Input::Received { from: self.ids[from], message });
                self.after_step(to, actions);
                // A follower catches up with the leader it follows.
                if self.cfg.advance_positions
                    && let Message::Heartbeat { term, position } = message
                    && let Some(m) = self.nodes[to].machine.as_mut()
                    && m.status().leader == Some(term)
                    && position > m.status().position
                {
                    let actions = m.handle(self.now, Input::LogPosition(position));
                    self.after_step(to, actions);
                }
                self.check_fenced(to, message);
            }
            Event::SaveDone { node, incarnation, record_id, .. } => {
                if self.nodes[node].incarnation != incarnation {
                    return; // crashed before the save completed: it never landed
                }
                let record = self.records[record_id].clone();
                if self.nodes[node].store.save(&record).is_err() {
                    return;
                }
                self.input(node, Input::Persisted(record));
            }
            Event::Wake { node, incarnation, key } => {
                if self.nodes[node].incarnation != incarnation
                    || self.nodes[node].wake_at != Some(key)
                {
                    return;
                }
                self.nodes[node].wake_at = None;
                if self.cfg.advance_positions
                    && let Some(m) = self.nodes[node].machine.as_ref()
                    && m.status().can_sequence().is_some()
                {
                    let next = m.status().position.0 + 1;
                    self.set_position(node, next);
                }
                self.input(node, Input::Tick);
            }
        }
    }

    fn after_step(&mut self, i: usize, actions: Vec<Action>) {
        let incarnation = self.nodes[i].incarnation;
        for action in actions {
            match action {
                Action::Persist(record) => {
                    let latency = self.rng.between(self.cfg.save.0, self.cfg.save.1);
                    let save_at = self.nodes[i].saves_busy_until.max(self.now) + latency;
                    self.nodes[i].saves_busy_until = save_at;
                    self.records.push(record.clone());
                    let record_id = self.records.len() - 1;
                    self.push(
                        save_at,
                        Event::SaveDone {
                            node: i,
                            incarnation,
                            max_epoch: record.max_epoch,
                            record_id,
                        },
                    );
                }
                Action::Send { to, message } => {
                    let Some(to) = self.ids.iter().position(|id| *id == to) else {
                        continue;
                    };
                    self.messages_sent += 1;
                    if let Message::Claim { epoch, .. } = message {
                        // Persist before acting: a claim goes out only for a saved epoch.
                        let saved = self.saved(i).map(|r| r.max_epoch).unwrap_or_default();
                        if saved < epoch {
                            self.violation(format!(
                                "node {i} claims {epoch} but only {saved} is saved"
                            ));
                        }
                    }
                    if self.cut[i][to] {
                        continue;
                    }
                    let delay = self.rng.between(self.cfg.delay.0, self.cfg.delay.1);
                    self.messages.push(message);
                    let key = MessageKey(self.messages.len() - 1);
                    if let Message::Claim { epoch, .. } = message {
                        self.note(i, format!("claim {epoch} -> {to}"));
                    }
                    self.push(self.now + delay, Event::Deliver { to, from: i, message: key });
                }
                Action::RoleChange(change) => self.on_change(i, change),
            }
        }
        // Reschedule the wake-up.
        if let Some(machine) = self.nodes[i].machine.as_ref() {
            let next = machine.next_wakeup();
            if next != self.nodes[i].wake_at {
                self.nodes[i].wake_at = next;
                if let Some(key) = next {
                    let late = self.rng.between(Duration::ZERO, self.cfg.timer_jitter);
                    let at = key.max(self.now) + late;
                    self.push(at, Event::Wake { node: i, incarnation, key });
                }
            }
        }
    }

    fn on_change(&mut self, i: usize, change: RoleChange) {
        self.note(i, format!("{change:?}"));
        match &change {
            RoleChange::BecomeLeader { term } => {
                // Persist before acting: the epoch is in the store.
                let saved = self.nodes[i]
                    .store
                    .load()
                    .ok()
                    .flatten()
                    .map(|r| r.max_epoch)
                    .unwrap_or_default();
                if saved < term.epoch {
                    self.violation(format!("node {i} leads {term} but only {saved} is saved"));
                }
                // A device never leads the same epoch twice, even across restarts.
                if let Some(last) = self.nodes[i].led.last()
                    && *last >= term.epoch
                {
                    self.violation(format!(
                        "node {i} leads {} after having led {last}",
                        term.epoch
                    ));
                }
                self.nodes[i].led.push(term.epoch);
                self.nodes[i].leading = Some((*term, self.now));
            }
            RoleChange::StepDown(_) => self.nodes[i].leading = None,
            _ => {}
        }
        self.changes.push(Seen { at: self.now, node: i, change });
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 5 {
            let line = format!("[seed {}] at {}: {what}", self.cfg.seed, self.now);
            self.violations.push(line);
        }
    }

    // ---- invariants ---------------------------------------------------------------------

    /// A leader that heard a higher term (heartbeat) or a higher epoch (claim) no longer leads.
    fn check_fenced(&mut self, i: usize, message: Message) {
        let Some((ours, _)) = self.nodes[i].leading else {
            return;
        };
        let deposed = match message {
            Message::Heartbeat { term, .. } => term > ours,
            Message::Claim { epoch, .. } | Message::Presence { epoch, .. } => epoch > ours.epoch,
            _ => false,
        };
        if deposed {
            self.violation(format!("node {i} still leads {ours} after hearing {message:?}"));
        }
    }

    /// Records the first moment at which two devices may sequence at once.
    fn check_sequencers(&mut self) {
        if self.first_overlap.is_some() {
            return;
        }
        let sequencing: Vec<usize> = (0..self.cfg.nodes)
            .filter(|&i| self.status(i).is_some_and(|s| s.can_sequence().is_some()))
            .collect();
        if sequencing.len() > 1 {
            self.first_overlap = Some((self.now, sequencing));
        }
    }

    /// How many role changes of this kind node `i` announced.
    pub fn count_changes(&self, i: usize, pred: impl Fn(&RoleChange) -> bool) -> usize {
        self.changes.iter().filter(|s| s.node == i && pred(&s.change)).count()
    }

    /// Two leaders that can hear each other coexist for at most one heartbeat and a delay.
    fn check_coexistence(&mut self) {
        let bound = self.cfg.coexistence_bound();
        let leaders: Vec<(usize, Term, Time)> = (0..self.cfg.nodes)
            .filter_map(|i| self.nodes[i].leading.map(|(t, since)| (i, t, since)))
            .collect();
        for (x, &(a, ta, sa)) in leaders.iter().enumerate() {
            for &(b, tb, sb) in &leaders[x + 1..] {
                if self.cut[a][b] || self.cut[b][a] {
                    continue;
                }
                let since = sa.max(sb).max(self.open_since[a][b]);
                if self.now.saturating_since(since) > bound {
                    self.violation(format!(
                        "leaders {ta} (node {a}) and {tb} (node {b}) can hear each other and \
                         coexist since {since}"
                    ));
                }
            }
        }
    }

    /// The single leader every live member follows, if the cluster is converged.
    pub fn converged_leader(&self) -> Option<Term> {
        let live: Vec<&Leadership> = self.nodes.iter().filter_map(|n| n.machine.as_ref()).collect();
        let leaders: Vec<Term> = live.iter().filter_map(|m| m.status().can_sequence()).collect();
        let [leader] = leaders[..] else {
            return None;
        };
        live.iter().all(|m| m.status().leader == Some(leader)).then_some(leader)
    }

    fn check_convergence(&mut self) {
        if self.calm_since.is_none() {
            return;
        }
        match (self.converged_leader(), self.converged_at) {
            (Some(_), None) => self.converged_at = Some(self.now),
            (None, Some(_)) => self.converged_at = None,
            _ => {}
        }
    }

    /// How long after the calm began the cluster converged (for good), if it did.
    pub fn convergence_delay(&self) -> Option<Duration> {
        Some(self.converged_at?.saturating_since(self.calm_since?))
    }

    // ---- observations -------------------------------------------------------------------

    pub fn status(&self, i: usize) -> Option<leadership::Status> {
        self.nodes[i].machine.as_ref().map(|m| m.status())
    }

    pub fn leaders(&self) -> Vec<(usize, Term)> {
        (0..self.cfg.nodes).filter_map(|i| self.status(i)?.can_sequence().map(|t| (i, t))).collect()
    }

    pub fn saved(&self, i: usize) -> Option<leadership::PersistedLeadership> {
        self.nodes[i].store.snapshot()
    }

    /// The highest epoch any device has seen (live or saved).
    pub fn max_epoch(&self) -> Epoch {
        (0..self.cfg.nodes)
            .map(|i| {
                let live = self.status(i).map(|s| s.max_epoch).unwrap_or_default();
                let saved = self.saved(i).map(|r| r.max_epoch).unwrap_or_default();
                live.max(saved)
            })
            .max()
            .unwrap_or_default()
    }

    /// Distinct epochs at which some device became leader.
    pub fn elected_epochs(&self) -> BTreeSet<Epoch> {
        self.changes
            .iter()
            .filter_map(|s| match s.change {
                RoleChange::BecomeLeader { term } => Some(term.epoch),
                _ => None,
            })
            .collect()
    }

    pub fn become_leader_count(&self) -> usize {
        self.changes.iter().filter(|s| matches!(s.change, RoleChange::BecomeLeader { .. })).count()
    }

    pub fn step_downs(&self) -> Vec<&Seen> {
        self.changes.iter().filter(|s| matches!(s.change, RoleChange::StepDown(_))).collect()
    }

    /// The seed and the last lines of the trace, for failure messages.
    pub fn report(&self) -> String {
        let mut out = format!(
            "seed {} (replay with SimConfig {{ seed: {}, .. }}), now {}\n",
            self.cfg.seed, self.cfg.seed, self.now
        );
        for v in &self.violations {
            let _ = writeln!(out, "VIOLATION {v}");
        }
        let start = self.trace.len().saturating_sub(60);
        for t in &self.trace[start..] {
            let _ = writeln!(out, "  {:>8} n{:<2} {}", t.at.to_string(), t.node as i64, t.what);
        }
        for i in 0..self.cfg.nodes {
            let _ = writeln!(out, "  node {i}: {:?} saved {:?}", self.status(i), self.saved(i));
        }
        out
    }

    /// Panics with the report if any invariant broke.
    pub fn assert_ok(&self) {
        assert!(self.violations.is_empty(), "{}", self.report());
    }
}
