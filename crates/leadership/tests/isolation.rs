//! Leadership that diverges only when it must (design rule 5), in simulated time.
//!
//! A device that has heard no other member for a lease does not claim; a leader that has
//! heard no other member for `I = L - H` pauses (sequences nothing) and resumes when it hears
//! one; a library with one member is led by it. The effect, checked here over many seeds: a
//! partition that cuts off a single device never lets two devices sequence at the same time,
//! so it cannot start a second history; only two sides with two or more devices each can.
//!
//! Every run also checks the simulation's invariants after each event (see `sim`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::time::Duration;

use leadership::{Epoch, RoleChange, RoleKind, Term};
use sim::{Rng, Sim, SimConfig};

const L: Duration = Duration::from_secs(5);
const H: Duration = Duration::from_secs(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn steady(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.run_for(secs(10));
    assert_eq!(sim.leaders(), vec![(0, Term::new(Epoch(1), sim.ids[0]))], "{}", sim.report());
    sim
}

fn is_claim_or_lead(change: &RoleChange) -> bool {
    matches!(change, RoleChange::BecomeLeader { .. })
}

/// An isolated follower never claims: cut off from every member for 2–120 s (40 seeds, 3 and
/// 4 devices), it stands for no epoch, the cluster's epoch stays 1, no two devices can ever
/// sequence at once, and on return it follows the same leader within one heartbeat and a
/// delay of hearing it, without any election.
#[test]
fn an_isolated_follower_never_claims_and_rejoins_without_an_election() {
    for seed in 0..40u64 {
        let n = 3 + (seed as usize % 2);
        let mut sim = steady(n, 500 + seed);
        let follower = 1 + (seed as usize % (n - 1));
        let hold = Rng::new(seed).between(secs(2), secs(120));
        sim.isolate(follower);
        sim.run_for(hold);
        assert_eq!(sim.max_epoch(), Epoch(1), "seed {seed}: nobody claimed\n{}", sim.report());
        assert_eq!(sim.status(follower).unwrap().role, RoleKind::Follower);
        let healed = sim.now;
        sim.heal_all();
        sim.begin_calm();
        sim.run_for(secs(20));
        sim.assert_ok();
        assert_eq!(sim.max_epoch(), Epoch(1), "seed {seed}: no election\n{}", sim.report());
        assert_eq!(sim.converged_leader(), Some(Term::new(Epoch(1), sim.ids[0])));
        let back = sim
            .changes
            .iter()
            .find(|s| {
                s.node == follower
                    && s.at >= healed
                    && matches!(s.change, RoleChange::Follow { .. })
            })
            .map(|s| s.at.saturating_since(healed));
        if let Some(back) = back {
            assert!(back <= H + Duration::from_millis(250), "seed {seed}: {back:?}");
        }
        assert_eq!(sim.first_overlap, None, "seed {seed}: two sequencers\n{}", sim.report());
    }
}

/// An isolated leader pauses before anyone else can lead: cut off alone for 6–120 s (40
/// seeds, 3 and 4 devices), it announces `Pause` and stops sequencing, the others elect one
/// new leader at epoch 2 only after that, and at no moment can two devices sequence at once.
/// On return it steps down to the new leader without ever resuming its old term (it never
/// sequences again at epoch 1) and no further election happens.
#[test]
fn an_isolated_leader_pauses_before_the_others_elect_and_never_resumes_a_replaced_term() {
    for seed in 0..40u64 {
        let n = 3 + (seed as usize % 2);
        let mut sim = steady(n, 600 + seed);
        let cut_at = sim.now;
        let hold = Rng::new(seed).between(secs(6), secs(120));
        sim.isolate(0);
        sim.run_for(hold);
        let report = sim.report();
        let status = sim.status(0).unwrap();
        assert!(status.paused && status.can_sequence().is_none(), "seed {seed}\n{report}");
        let paused_at = sim
            .changes
            .iter()
            .find(|s| s.node == 0 && matches!(s.change, RoleChange::Pause { .. }))
            .map(|s| s.at)
            .expect("paused");
        let elected = sim
            .changes
            .iter()
            .find(|s| s.at > cut_at && is_claim_or_lead(&s.change))
            .map(|s| s.at)
            .expect("the others elected");
        assert!(
            paused_at < elected,
            "seed {seed}: paused {paused_at}, elected {elected}\n{report}"
        );
        assert!(paused_at.saturating_since(cut_at) <= L, "seed {seed}: paused late\n{report}");
        assert_eq!(sim.first_overlap, None, "seed {seed}: two sequencers\n{report}");
        let healed = sim.now;
        sim.heal_all();
        sim.begin_calm();
        sim.run_for(secs(20));
        sim.assert_ok();
        assert_eq!(sim.max_epoch(), Epoch(2), "seed {seed}\n{}", sim.report());
        assert_eq!(sim.converged_leader().map(|t| t.epoch), Some(Epoch(2)));
        let resumed = sim.changes.iter().any(|s| {
            s.node == 0 && s.at >= healed && matches!(s.change, RoleChange::Resume { .. })
        });
        assert!(!resumed, "seed {seed}: resumed a replaced term\n{}", sim.report());
        assert_eq!(sim.first_overlap, None, "seed {seed}\n{}", sim.report());
    }
}

/// A leader that hears no member pauses and resumes its own term when one comes back: in a
/// library of 2 and of 3, every follower crashes for 10–60 s; the leader pauses within
/// `I = L - H` (plus a heartbeat and a delay) and sequences nothing; when the followers
/// restart it resumes the same term (epoch 1, no election at all).
#[test]
fn a_leader_that_hears_nobody_pauses_and_resumes_its_term_when_a_member_returns() {
    for seed in 0..20u64 {
        let n = 2 + (seed as usize % 2);
        let mut sim = steady(n, 700 + seed);
        let down_at = sim.now;
        for i in 1..n {
            sim.crash(i);
        }
        sim.run_for(Rng::new(seed).between(secs(10), secs(60)));
        let status = sim.status(0).unwrap();
        assert!(status.paused, "seed {seed}\n{}", sim.report());
        let paused_at = sim
            .changes
            .iter()
            .find(|s| s.node == 0 && s.at > down_at && matches!(s.change, RoleChange::Pause { .. }))
            .map(|s| s.at)
            .unwrap();
        assert!(paused_at.saturating_since(down_at) <= L - H + H + Duration::from_millis(150));
        let position = status.position;
        sim.run_for(secs(5));
        assert_eq!(sim.status(0).unwrap().position, position, "a paused leader sequences nothing");
        for i in 1..n {
            sim.restart(i);
        }
        sim.begin_calm();
        sim.run_for(secs(20));
        sim.assert_ok();
        assert_eq!(sim.max_epoch(), Epoch(1), "seed {seed}: no election\n{}", sim.report());
        assert_eq!(sim.converged_leader(), Some(Term::new(Epoch(1), sim.ids[0])));
        assert!(sim.count_changes(0, |c| matches!(c, RoleChange::Resume { .. })) >= 1);
    }
}

/// A library with one member is led by it: its creator leads for a simulated hour without
/// pausing; restarted, it leads again (a new epoch) within a claim window and a save, not a
/// lease; and when the other member of a two-device library is removed, the remaining one
/// leads, whether it was the leader (it resumes) or the follower (it is elected at once).
#[test]
fn a_library_with_one_member_is_led_by_it() {
    let mut sim = Sim::new(SimConfig::new(1, 1));
    sim.run_for(secs(3600));
    sim.assert_ok();
    assert_eq!(sim.leaders(), vec![(0, Term::new(Epoch(1), sim.ids[0]))]);
    assert_eq!(sim.count_changes(0, |c| matches!(c, RoleChange::Pause { .. })), 0);

    sim.crash(0);
    sim.restart(0);
    let restarted = sim.now;
    sim.run_for(secs(2));
    sim.assert_ok();
    assert_eq!(sim.leaders(), vec![(0, Term::new(Epoch(2), sim.ids[0]))]);
    let led = sim.changes.iter().rfind(|s| is_claim_or_lead(&s.change)).unwrap().at;
    assert!(led.saturating_since(restarted) < H, "led after {led}");

    for removed in [1usize, 0] {
        let mut sim = steady(2, 80 + removed as u64);
        let keep = 1 - removed;
        let members: std::collections::BTreeSet<_> = [sim.ids[keep]].into();
        sim.set_members(keep, members);
        sim.crash(removed);
        sim.run_for(secs(30));
        sim.assert_ok();
        let leaders = sim.leaders();
        assert_eq!(leaders.len(), 1, "{}", sim.report());
        assert_eq!(leaders[0].0, keep, "{}", sim.report());
        assert!(!sim.status(keep).unwrap().paused);
    }
}

/// Only two sides with two devices or more can diverge: in a 2|2 split both sides elect and
/// both may sequence (the simulation sees two sequencers at once), and on heal exactly one
/// leader remains within one heartbeat and a delay. A 1|3 split of the same cluster, with
/// either the leader or a follower alone, never has two sequencers.
#[test]
fn only_a_split_with_two_devices_on_each_side_has_two_sequencers() {
    let mut sim = steady(4, 91);
    sim.partition(&[&[0, 1], &[2, 3]]);
    sim.run_for(secs(20));
    assert!(sim.first_overlap.is_some(), "{}", sim.report());
    sim.heal_all();
    sim.begin_calm();
    sim.run_for(secs(20));
    sim.assert_ok();
    assert!(sim.convergence_delay().unwrap() <= sim.cfg.coexistence_bound());

    for alone in [0usize, 2] {
        let mut sim = steady(4, 92 + alone as u64);
        let rest: Vec<usize> = (0..4).filter(|&i| i != alone).collect();
        sim.partition(&[&[alone], &rest]);
        sim.run_for(secs(30));
        sim.heal_all();
        sim.begin_calm();
        sim.run_for(secs(20));
        sim.assert_ok();
        assert_eq!(sim.first_overlap, None, "{} alone\n{}", alone, sim.report());
        assert_eq!(sim.leaders().len(), 1);
    }
}
