//! Unit tests of single rules, one machine at a time.

use std::time::Duration;

use super::*;
use crate::Verdict;

const A: MemberId = MemberId::from_u128(0xa);
const B: MemberId = MemberId::from_u128(0xb);
const C: MemberId = MemberId::from_u128(0xc);
const STRANGER: MemberId = MemberId::from_u128(0xfff);

fn ms(n: u64) -> Time {
    Time::from_millis(n)
}

fn term(epoch: u64, leader: MemberId) -> Term {
    Term::new(Epoch(epoch), leader)
}

fn heartbeat(epoch: u64, leader: MemberId) -> Input {
    Input::Received {
        from: leader,
        message: Message::Heartbeat { term: term(epoch, leader), position: LogPosition(0) },
    }
}

fn claim(epoch: u64, device: MemberId, position: u64) -> Input {
    Input::Received {
        from: device,
        message: Message::Claim { epoch: Epoch(epoch), device, position: LogPosition(position) },
    }
}

/// The driver's part: the current record was saved.
fn ack(m: &mut Leadership, now: Time) {
    m.handle(now, Input::Persisted(m.record()));
}

/// An acknowledgement of a save that does not match the current record.
fn saved_at(epoch: u64) -> Input {
    Input::Persisted(PersistedLeadership { max_epoch: Epoch(epoch), last_leader: None })
}

fn changes(actions: &[Action]) -> Vec<RoleChange> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::RoleChange(c) => Some(c.clone()),
            _ => None,
        })
        .collect()
}

fn persisted(actions: &[Action]) -> Option<PersistedLeadership> {
    actions.iter().find_map(|a| match a {
        Action::Persist(r) => Some(r.clone()),
        _ => None,
    })
}

/// Messages sent, presence announcements left out.
fn sent(actions: &[Action]) -> Vec<(MemberId, Message)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { message: Message::Presence { .. }, .. } => None,
            Action::Send { to, message } => Some((*to, *message)),
            _ => None,
        })
        .collect()
}

/// The actions without presence announcements.
fn quiet(actions: Vec<Action>) -> Vec<Action> {
    actions
        .into_iter()
        .filter(|a| !matches!(a, Action::Send { message: Message::Presence { .. }, .. }))
        .collect()
}

/// A presence announcement from `from`, which has seen `epoch` and follows `leader`.
fn presence(from: MemberId, epoch: u64, leader: Option<Term>) -> Input {
    Input::Received {
        from,
        message: Message::Presence { device: from, epoch: Epoch(epoch), leader },
    }
}

/// `m` hears `from` (a presence that tells it nothing new).
fn hear(m: &mut Leadership, now: Time, from: MemberId) {
    let epoch = m.status().max_epoch.0;
    m.handle(now, presence(from, epoch, None));
}

/// Some member other than `me`.
fn other(me: MemberId) -> MemberId {
    if me == A { B } else { A }
}

fn joined(me: MemberId) -> Leadership {
    Leadership::start(Config::default(), me, [A, B, C], Start::Join, ms(0)).0
}

/// Makes `me` the leader of `epoch` by way of a lapsed lease and an uncontested claim.
fn leader_at(me: MemberId, epoch: u64) -> (Leadership, Time) {
    let record = PersistedLeadership { max_epoch: Epoch(epoch - 1), last_leader: None };
    let (mut m, _) =
        Leadership::start(Config::default(), me, [A, B, C], Start::Resume(record), ms(0));
    hear(&mut m, ms(0), other(me));
    hear(&mut m, ms(4_000), other(me));
    let mut now = ms(5_000);
    m.handle(now, Input::Tick);
    m.handle(now, Input::Persisted(m.record()));
    now = now + Duration::from_millis(250);
    let actions = m.handle(now, Input::Tick);
    assert_eq!(changes(&actions), vec![RoleChange::BecomeLeader { term: term(epoch, me) }]);
    ack(&mut m, now);
    (m, now)
}

#[test]
fn creator_leads_epoch_one_only_after_it_is_saved() {
    let (mut m, actions) = Leadership::start(Config::default(), A, [A, B], Start::Create, ms(0));
    assert_eq!(
        actions,
        vec![Action::Persist(PersistedLeadership { max_epoch: Epoch(1), last_leader: None })]
    );
    assert_eq!(m.status().role, RoleKind::Candidate);
    // Time passing or a stale ack changes nothing.
    assert!(changes(&m.handle(ms(100), saved_at(0))).is_empty());
    let actions = m.handle(ms(200), Input::Persisted(m.record()));
    assert_eq!(changes(&actions), vec![RoleChange::BecomeLeader { term: term(1, A) }]);
    // The status record (leader = me) is saved before the change is announced.
    assert!(matches!(&actions[0], Action::Persist(r) if r.last_leader == Some(term(1, A))));
    assert_eq!(
        sent(&actions),
        vec![(B, Message::Heartbeat { term: term(1, A), position: LogPosition(0) })]
    );
    assert_eq!(m.status().can_sequence(), Some(term(1, A)));
    ack(&mut m, ms(200));
    assert_eq!(m.next_wakeup(), Some(ms(1_200)));
}

#[test]
fn leader_heartbeats_every_interval() {
    let (mut m, start) = leader_at(B, 3);
    let mut beats = 0;
    let mut now = start;
    for _ in 0..10 {
        now = m.next_wakeup().unwrap();
        // A follower's presence is heard now and then, so the leader never pauses.
        beats += sent(&m.handle(now, presence(A, 3, Some(term(3, B))))).len();
    }
    assert_eq!(beats, 20, "one heartbeat to each of two peers per interval");
    assert_eq!(now, start + Duration::from_secs(10));
    assert_eq!(m.status().can_sequence(), Some(term(3, B)));
}

#[test]
fn a_lapsed_lease_starts_an_election_that_claims_only_after_saving() {
    let mut m = joined(B);
    let actions = m.handle(ms(10), heartbeat(4, A));
    assert_eq!(changes(&actions), vec![RoleChange::Follow { term: term(4, A) }]);
    ack(&mut m, ms(10));
    // Renewed by each heartbeat: no election at 5.01 s.
    m.handle(ms(3_000), heartbeat(4, A));
    assert!(quiet(m.handle(ms(5_010), Input::Tick)).is_empty());
    // C is heard (its presence): B is not alone, so the lapsed lease is worth an election.
    hear(&mut m, ms(7_000), C);
    assert!(quiet(m.handle(ms(7_999), Input::Tick)).is_empty(), "the lease runs to 8 s");
    let actions = quiet(m.handle(ms(8_000), Input::Tick));
    assert_eq!(
        actions,
        vec![Action::Persist(PersistedLeadership {
            max_epoch: Epoch(5),
            last_leader: Some(term(4, A))
        })]
    );
    assert_eq!(m.status().leader, None);
    let actions = m.handle(ms(8_005), Input::Persisted(m.record()));
    assert_eq!(sent(&actions).len(), 2);
    assert!(sent(&actions).iter().all(|(_, msg)| matches!(
        msg,
        Message::Claim { epoch: Epoch(5), device, .. } if *device == B
    )));
    assert!(m.handle(ms(8_100), Input::Tick).is_empty());
    let actions = m.handle(ms(8_255), Input::Tick);
    assert_eq!(changes(&actions), vec![RoleChange::BecomeLeader { term: term(5, B) }]);
}

#[test]
fn a_failed_save_gives_the_candidacy_up_and_never_leads() {
    let mut m = joined(C);
    hear(&mut m, ms(0), A);
    hear(&mut m, ms(4_000), A);
    m.handle(ms(5_000), Input::Tick);
    assert_eq!(m.status().role, RoleKind::Candidate);
    // No acknowledgement: after H the candidacy is given up, without a claim or a leader.
    let actions = m.handle(ms(6_000), Input::Tick);
    assert!(sent(&actions).is_empty() && changes(&actions).is_empty());
    assert_eq!(m.status().role, RoleKind::Follower);
    // A late acknowledgement does not revive it.
    assert!(changes(&m.handle(ms(6_001), Input::Persisted(m.record()))).is_empty());
    // The next attempt, a lease later, uses a new epoch.
    hear(&mut m, ms(8_000), A);
    hear(&mut m, ms(10_000), A);
    let actions = m.handle(ms(11_000), Input::Tick);
    assert_eq!(persisted(&actions).map(|r| r.max_epoch), Some(Epoch(2)));
}

#[test]
fn an_unacknowledged_save_is_asked_for_again() {
    let mut m = joined(B);
    let actions = m.handle(ms(10), heartbeat(2, A));
    let first = persisted(&actions).unwrap();
    // No acknowledgement: one heartbeat interval later the same record is saved again.
    assert!(quiet(m.handle(ms(1_000), Input::Tick)).is_empty(), "not before H");
    let actions = m.handle(ms(1_010), Input::Tick);
    assert_eq!(quiet(actions), vec![Action::Persist(first)]);
    ack(&mut m, ms(1_020));
    assert!(m.handle(ms(2_500), Input::Tick).iter().all(|a| !matches!(a, Action::Persist(_))));
}

#[test]
fn a_restarted_leader_comes_back_as_a_follower_and_never_reuses_its_epoch() {
    let record = PersistedLeadership { max_epoch: Epoch(7), last_leader: Some(term(7, C)) };
    let (mut m, actions) =
        Leadership::start(Config::default(), C, [A, B, C], Start::Resume(record), ms(0));
    assert!(actions.is_empty(), "nothing changed, nothing to save, nothing sent yet");
    let status = m.status();
    assert_eq!(status.role, RoleKind::Follower);
    assert_eq!(status.leader, None);
    assert_eq!(status.can_sequence(), None);
    assert_eq!(status.durable_epoch, Epoch(7));
    // A claim for its old epoch is stale; its own next claim is for epoch 8.
    assert!(m.handle(ms(10), claim(7, A, 100)).is_empty());
    hear(&mut m, ms(4_000), A);
    let actions = m.handle(ms(5_010), Input::Tick);
    assert_eq!(persisted(&actions).map(|r| r.max_epoch), Some(Epoch(8)));
}

#[test]
fn a_higher_epoch_deposes_a_leader_at_once() {
    let (mut m, now) = leader_at(C, 3);
    let actions = m.handle(now, heartbeat(4, A));
    assert_eq!(
        actions[0],
        Action::RoleChange(RoleChange::StepDown(StepDown {
            term: term(3, C),
            new_leader: Some(term(4, A)),
            reason: StepDownReason::HigherTerm(term(4, A)),
        }))
    );
    assert!(matches!(&actions[1], Action::Persist(r) if r.max_epoch == Epoch(4)));
    assert_eq!(changes(&actions)[1], RoleChange::Follow { term: term(4, A) });
    assert_eq!(m.status().can_sequence(), None);
}

#[test]
fn same_epoch_leaders_resolve_to_the_higher_device_id() {
    let (mut low, now) = leader_at(A, 3);
    let (mut high, _) = leader_at(C, 3);
    // The higher one answers the lower one's heartbeat and stays.
    let actions = high.handle(now, heartbeat(3, A));
    assert!(changes(&actions).is_empty());
    assert_eq!(sent(&actions)[0].0, A);
    assert_eq!(high.status().can_sequence(), Some(term(3, C)));
    // The lower one steps down on the first heartbeat it hears.
    let actions = low.handle(now, heartbeat(3, C));
    assert!(matches!(
        &changes(&actions)[0],
        RoleChange::StepDown(StepDown { reason: StepDownReason::HigherTerm(t), .. }) if *t == term(3, C)
    ));
    assert_eq!(low.status().leader, Some(term(3, C)));
}

#[test]
fn a_stale_heartbeat_gets_an_answer_from_the_leader() {
    let (mut m, now) = leader_at(B, 6);
    let actions = m.handle(now, heartbeat(5, A));
    assert_eq!(
        sent(&actions),
        vec![(A, Message::Heartbeat { term: term(6, B), position: LogPosition(0) })]
    );
    assert!(changes(&actions).is_empty());
}

#[test]
fn a_claim_for_a_higher_epoch_makes_the_leader_stand_again_if_better() {
    let (mut m, now) = leader_at(B, 2);
    m.handle(now, Input::LogPosition(LogPosition(50)));
    // A less caught-up member claims epoch 3: the leader steps down and stands (better rank).
    let actions = m.handle(now, claim(3, C, 10));
    assert!(matches!(
        &actions[0],
        Action::RoleChange(RoleChange::StepDown(StepDown {
            reason: StepDownReason::Election(Epoch(3)),
            new_leader: None,
            ..
        }))
    ));
    assert!(matches!(&actions[1], Action::Persist(r) if r.max_epoch == Epoch(3)));
    assert!(sent(&actions).is_empty(), "no claim before the epoch is saved");
    assert_eq!(m.status().role, RoleKind::Candidate);
    let actions = m.handle(now, Input::Persisted(m.record()));
    assert_eq!(sent(&actions).len(), 2);
}

#[test]
fn a_claim_for_a_higher_epoch_from_a_better_device_is_deferred_to() {
    let mut m = joined(C);
    m.handle(ms(0), Input::LogPosition(LogPosition(5)));
    let actions = m.handle(ms(10), claim(1, A, 9));
    assert_eq!(persisted(&actions).map(|r| r.max_epoch), Some(Epoch(1)));
    assert!(sent(&actions).is_empty());
    assert_eq!(m.status().role, RoleKind::Follower);
    // The winner's heartbeat is followed.
    let actions = m.handle(ms(300), heartbeat(1, A));
    assert_eq!(changes(&actions), vec![RoleChange::Follow { term: term(1, A) }]);
}

#[test]
fn rank_is_position_first_then_device_id() {
    // Equal positions: the higher id wins.
    let mut b = joined(B);
    b.handle(ms(5_000), Input::Tick);
    b.handle(ms(5_000), Input::Persisted(b.record()));
    b.handle(ms(5_010), claim(1, A, 0));
    assert_eq!(b.status().role, RoleKind::Candidate, "A ranks below B");
    b.handle(ms(5_020), claim(1, C, 0));
    assert_eq!(b.status().role, RoleKind::Follower, "C ranks above B");

    // A more caught-up lower id beats a higher id.
    let mut c = joined(C);
    c.handle(ms(5_000), Input::Tick);
    c.handle(ms(5_000), Input::Persisted(c.record()));
    c.handle(ms(5_010), claim(1, A, 1));
    assert_eq!(c.status().role, RoleKind::Follower);
}

#[test]
fn a_candidate_follows_a_leader_of_its_own_epoch() {
    let mut m = joined(C);
    m.handle(ms(5_000), Input::Tick);
    m.handle(ms(5_000), Input::Persisted(m.record()));
    let actions = m.handle(ms(5_100), heartbeat(1, A));
    assert_eq!(changes(&actions), vec![RoleChange::Follow { term: term(1, A) }]);
    assert!(changes(&m.handle(ms(5_300), Input::Tick)).is_empty());
}

#[test]
fn a_leader_answers_a_claim_for_its_own_epoch() {
    let (mut m, now) = leader_at(A, 4);
    let actions = m.handle(now, claim(4, C, 99));
    assert_eq!(sent(&actions)[0].0, C);
    assert_eq!(m.status().can_sequence(), Some(term(4, A)));
}

#[test]
fn non_members_and_spoofed_senders_are_ignored() {
    let mut m = joined(B);
    assert!(m.handle(ms(10), heartbeat(9, STRANGER)).is_empty());
    let spoof = Input::Received {
        from: C,
        message: Message::Heartbeat { term: term(9, A), position: LogPosition(0) },
    };
    assert!(m.handle(ms(20), spoof).is_empty());
    assert!(m.handle(ms(30), Input::Observed(term(9, B))).is_empty());
    assert_eq!(m.status().max_epoch, Epoch(0));
}

#[test]
fn removing_the_leader_starts_an_election_at_once() {
    let mut m = joined(B);
    m.handle(ms(10), heartbeat(2, A));
    hear(&mut m, ms(15), C);
    let actions = m.handle(ms(20), Input::Membership([B, C].into()));
    assert_eq!(persisted(&actions).map(|r| r.max_epoch), Some(Epoch(3)));
    assert_eq!(m.status().role, RoleKind::Candidate);
    // Its heartbeats no longer count.
    m.handle(ms(21), Input::Persisted(m.record()));
    m.handle(ms(30), heartbeat(3, A));
    assert_eq!(m.status().role, RoleKind::Candidate);
}

#[test]
fn a_removed_leader_steps_down_and_never_stands() {
    let (mut m, now) = leader_at(C, 2);
    let actions = m.handle(now, Input::Membership([A, B].into()));
    assert!(matches!(
        &changes(&actions)[0],
        RoleChange::StepDown(StepDown { reason: StepDownReason::Removed, .. })
    ));
    assert_eq!(m.next_wakeup(), None);
    assert!(m.handle(now + Duration::from_secs(60), Input::Tick).is_empty(), "not even presence");
    assert!(sent(&m.handle(now, claim(9, A, 0))).is_empty());
    assert_eq!(m.status().role, RoleKind::Follower);
}

#[test]
fn the_fence_follows_the_status() {
    let mut m = joined(B);
    m.handle(ms(10), heartbeat(3, C));
    let fence = m.fence();
    assert_eq!(fence.check(term(3, C)), Verdict::Accept);
    assert!(matches!(fence.check(term(3, A)), Verdict::RefuseStale { .. }));
    assert!(matches!(fence.check(term(2, C)), Verdict::RefuseStale { .. }));
    assert_eq!(fence.check(term(4, A)), Verdict::NewerTerm { theirs: term(4, A) });
    // Feeding the newer term, as the service does, moves the fence.
    m.handle(ms(20), Input::Observed(term(4, A)));
    assert_eq!(m.fence().check(term(4, A)), Verdict::Accept);
    assert!(matches!(m.fence().check(term(3, C)), Verdict::RefuseStale { .. }));
}
