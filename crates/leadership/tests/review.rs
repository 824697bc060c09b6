//! Review tests: inputs at the edges of the epoch space.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use leadership::{
    Action, Config, Epoch, Input, Leadership, LogPosition, MemberId, Message, PersistedLeadership,
    RoleChange, RoleKind, Start, Term, Time,
};

const A: MemberId = MemberId::from_u128(0xa);
const B: MemberId = MemberId::from_u128(0xb);

/// Drives `m` from `from` for `span`, acknowledging every save at once; returns every action.
fn run(m: &mut Leadership, from: Time, span: Duration) -> Vec<Action> {
    let mut all = Vec::new();
    let end = from + span;
    let mut now = from;
    while now <= end {
        let mut actions = m.handle(now, Input::Tick);
        while let Some(record) = actions.iter().find_map(|a| match a {
            Action::Persist(r) => Some(r.clone()),
            _ => None,
        }) {
            all.append(&mut actions);
            actions = m.handle(now, Input::Persisted(record));
        }
        all.append(&mut actions);
        now = now + Duration::from_millis(100);
    }
    all
}

/// Asserts that nothing in `actions` stands for or leads an epoch `<= seen`.
fn never_reuses(actions: &[Action], seen: Epoch) {
    for action in actions {
        match action {
            Action::Send { message: Message::Claim { epoch, .. }, .. } => {
                assert!(*epoch > seen, "claimed {epoch}, already seen {seen}")
            }
            Action::RoleChange(RoleChange::BecomeLeader { term }) => {
                assert!(term.epoch > seen, "leads {term}, already seen {seen}")
            }
            _ => {}
        }
    }
}

/// A member that announces the last possible epoch (`u64::MAX`) cannot crash its peers: when
/// that leader goes silent, a follower neither panics (`max_epoch + 1` overflows) nor stands
/// for, claims or leads an epoch it has already seen (rule 7: epochs are never reused).
#[test]
fn heartbeat_at_the_last_epoch_neither_panics_nor_reuses_it() {
    let (mut b, _) = Leadership::start(Config::default(), B, [A, B], Start::Join, Time::ZERO);
    let last = Term::new(Epoch(u64::MAX), A);
    let now = Time::from_millis(10);
    let actions = b.handle(
        now,
        Input::Received {
            from: A,
            message: Message::Heartbeat { term: last, position: LogPosition(0) },
        },
    );
    assert_eq!(b.status().leader, Some(last));
    for action in actions {
        if let Action::Persist(record) = action {
            b.handle(now, Input::Persisted(record));
        }
    }
    // A goes silent: several leases pass.
    let actions = run(&mut b, now, Duration::from_secs(30));
    never_reuses(&actions, Epoch(u64::MAX));
    assert_ne!(b.status().role, RoleKind::Candidate);
    assert_ne!(b.status().role, RoleKind::Leader);
    assert_eq!(b.status().max_epoch, Epoch(u64::MAX));
}

/// A device restarting from a record at the last possible epoch does not panic when its
/// first lease lapses, and never claims or leads an epoch at or below the saved one.
#[test]
fn resume_at_the_last_epoch_neither_panics_nor_reuses_it() {
    let record = PersistedLeadership { max_epoch: Epoch(u64::MAX), last_leader: None };
    let (mut b, first) =
        Leadership::start(Config::default(), B, [A, B], Start::Resume(record), Time::ZERO);
    never_reuses(&first, Epoch(u64::MAX));
    let actions = run(&mut b, Time::ZERO, Duration::from_secs(30));
    never_reuses(&actions, Epoch(u64::MAX));
    assert_ne!(b.status().role, RoleKind::Candidate);
    assert_ne!(b.status().role, RoleKind::Leader);
    // It can still follow a leader of that epoch.
    let term = Term::new(Epoch(u64::MAX), A);
    b.handle(
        Time::from_millis(30_050),
        Input::Received { from: A, message: Message::Heartbeat { term, position: LogPosition(0) } },
    );
    assert_eq!(b.status().leader, Some(term));
}
