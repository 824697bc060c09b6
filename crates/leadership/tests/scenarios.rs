//! Scenario tests in simulated time. Each states the property it proves.
//!
//! Every run also checks the simulation's invariants after each event: a device leads an
//! epoch only once it is saved and never leads the same epoch twice (even across restarts); a
//! leader that hears a higher term stops leading at once; two leaders that can hear each other
//! never coexist for longer than one heartbeat plus one message delay.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sim;

use std::time::{Duration, Instant};

use leadership::{Epoch, RoleChange, RoleKind, StepDownReason, Term};
use sim::{Rng, Sim, SimConfig};

const L: Duration = Duration::from_secs(5);
const H: Duration = Duration::from_secs(1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A cluster of `n` running in steady state (node 0 leads epoch 1) after 10 s.
fn steady(n: usize, seed: u64) -> Sim {
    let mut sim = Sim::new(SimConfig::new(n, seed));
    sim.run_for(secs(10));
    assert_eq!(sim.leaders(), vec![(0, Term::new(Epoch(1), sim.ids[0]))]);
    sim.assert_ok();
    sim
}

/// Steady state: with jittered heartbeats (delays 1–300 ms, timers up to 200 ms late), the
/// creator leads epoch 1 for a whole simulated hour, every member follows it the whole time,
/// and no election ever starts.
#[test]
fn steady_state_one_leader_for_an_hour_without_elections() {
    let wall = Instant::now();
    let mut cfg = SimConfig::new(3, 1);
    cfg.delay = (Duration::from_millis(1), Duration::from_millis(300));
    cfg.timer_jitter = Duration::from_millis(200);
    let mut sim = Sim::new(cfg);
    sim.run_for(secs(2));
    sim.begin_calm();
    sim.run_for(secs(3600));
    sim.assert_ok();
    assert_eq!(sim.max_epoch(), Epoch(1), "no claim was ever made");
    assert_eq!(sim.become_leader_count(), 1);
    assert!(sim.step_downs().is_empty());
    assert_eq!(sim.converged_leader(), Some(Term::new(Epoch(1), sim.ids[0])));
    assert_eq!(sim.convergence_delay(), Some(Duration::ZERO), "converged all along");
    eprintln!(
        "steady state: 3600 s simulated, {} messages, in {:?}",
        sim.messages_sent,
        wall.elapsed()
    );
}

/// Leader loss: when the leader crashes, exactly one new leader (at epoch 2) is followed by
/// every survivor within L + H of the crash, and only one election happens — over 40 seeds
/// with random delays, save latencies and timer lateness.
#[test]
fn leader_loss_gives_exactly_one_new_leader_within_lease_plus_heartbeat() {
    let mut worst = Duration::ZERO;
    for seed in 0..40 {
        let mut sim = steady(3, seed);
        let crash_at = sim.now;
        sim.crash(0);
        sim.begin_calm();
        sim.run_for(secs(30));
        sim.assert_ok();
        let delay = sim.convergence_delay().expect("converged");
        worst = worst.max(delay);
        assert!(delay <= L + H, "seed {seed}: took {delay:?}\n{}", sim.report());
        let after: Vec<_> = sim
            .changes
            .iter()
            .filter(|s| s.at > crash_at && matches!(s.change, RoleChange::BecomeLeader { .. }))
            .collect();
        assert_eq!(after.len(), 1, "exactly one election win\n{}", sim.report());
        assert_eq!(sim.max_epoch(), Epoch(2), "one election, one epoch");
    }
    eprintln!("leader loss: new leader followed by all within {worst:?} (bound L + H = 6 s)");
}

/// Slow saves (300–600 ms, longer than the claim window): no device claims or leads an epoch
/// before it is saved, and leader loss still ends with exactly one leader, within
/// L + W + 3d + 2p + timer lateness of the crash (d: message delay, p: save time).
#[test]
fn slow_saves_delay_but_never_precede_leadership() {
    let mut worst = Duration::ZERO;
    for seed in 0..20 {
        let mut cfg = SimConfig::new(3, 200 + seed);
        cfg.save = (Duration::from_millis(300), Duration::from_millis(600));
        let mut sim = Sim::new(cfg.clone());
        sim.run_for(secs(10));
        sim.crash(0);
        sim.begin_calm();
        sim.run_for(secs(30));
        sim.assert_ok();
        assert_eq!(sim.leaders().len(), 1, "{}", sim.report());
        let bound =
            L + cfg.config.claim_window() + cfg.delay.1 * 3 + cfg.save.1 * 2 + cfg.timer_jitter;
        let delay = sim.convergence_delay().unwrap();
        assert!(delay <= bound, "{delay:?} > {bound:?}\n{}", sim.report());
        worst = worst.max(delay);
    }
    eprintln!("slow saves: new leader followed by all within {worst:?} of the crash");
}

/// Election preference: the most caught-up device wins even with a lower id; between equally
/// caught-up devices the highest id wins.
#[test]
fn elections_prefer_the_most_caught_up_then_the_highest_id() {
    for (positions, winner) in [([0, 10, 5], 1), ([0, 7, 7], 2), ([0, 3, 9], 2)] {
        let mut cfg = SimConfig::new(3, 7);
        cfg.advance_positions = false;
        let mut sim = Sim::new(cfg);
        sim.run_for(secs(3));
        for (i, p) in positions.into_iter().enumerate() {
            sim.set_position(i, p);
        }
        sim.crash(0);
        sim.run_for(secs(20));
        sim.assert_ok();
        assert_eq!(
            sim.leaders(),
            vec![(winner, Term::new(Epoch(2), sim.ids[winner]))],
            "positions {positions:?}\n{}",
            sim.report()
        );
    }
}

/// Flapping link: while the link between the leader and one follower goes down for up to
/// 2.5 s at a time but heartbeats get through now and then (up periods of 1.2–1.5 s, so at
/// least one heartbeat crosses each; the gap between two heard heartbeats stays under
/// 2.5 + 1.2 + H + delays < L), nothing ever starts an election over a simulated hour.
#[test]
fn flapping_link_with_heartbeats_getting_through_starts_no_election() {
    let mut sim = steady(3, 11);
    let mut rng = Rng::new(11);
    let end = sim.now + secs(3600);
    let mut flaps = 0;
    while sim.now < end {
        sim.cut(0, 2);
        sim.run_for(rng.between(Duration::from_millis(500), Duration::from_millis(2_500)));
        sim.heal(0, 2);
        sim.run_for(rng.between(Duration::from_millis(1200), Duration::from_millis(1500)));
        flaps += 1;
    }
    sim.assert_ok();
    assert_eq!(sim.max_epoch(), Epoch(1), "{}", sim.report());
    assert!(sim.step_downs().is_empty());
    eprintln!("flapping link: {flaps} flaps in an hour, 0 elections");
}

/// Flapping link, harsh: for an hour, the link between *the current leader* and a follower
/// (or the follower's every link) goes down for up to 12 s — often longer than the lease —
/// then comes back briefly. Elections stay bounded: an outage of length D costs at most
/// ⌈D / L⌉ epochs (at most one per lease of silence, never a storm), and a clean isolation
/// costs at most one. After the last outage exactly one leader is followed by all within L + H.
#[test]
fn flapping_link_with_long_outages_costs_at_most_one_epoch_per_lease_of_silence() {
    for (seed, isolate) in [(21, false), (22, true)] {
        let mut sim = steady(3, seed);
        let mut rng = Rng::new(seed);
        let end = sim.now + secs(3600);
        let (mut allowance, mut outages, mut worst) = (0, 0, 0);
        while sim.now < end {
            let down = rng.between(Duration::from_millis(100), secs(12));
            let leader = sim.leaders().first().map_or(0, |l| l.0);
            let follower = (leader + 1 + (outages % 2)) % 3;
            let before = sim.max_epoch().0;
            if isolate {
                sim.isolate(follower);
            } else {
                sim.cut(leader, follower);
            }
            sim.run_for(down);
            sim.heal_all();
            sim.run_for(rng.between(Duration::from_millis(50), Duration::from_millis(1500)));
            let cost = sim.max_epoch().0 - before;
            let allowed = if isolate { 1 } else { down.as_millis().div_ceil(L.as_millis()) as u64 };
            assert!(cost <= allowed, "{cost} epochs for {down:?}\n{}", sim.report());
            worst = worst.max(cost);
            allowance += allowed;
            outages += 1;
        }
        sim.begin_calm();
        sim.run_for(L + H);
        sim.run_for(secs(30));
        sim.assert_ok();
        let epochs = sim.max_epoch().0 - 1;
        let delay = sim.convergence_delay().expect("converged");
        assert!(delay <= L + H, "{}", sim.report());
        eprintln!(
            "flapping ({}): {outages} outages, {epochs} epochs in all (allowance {allowance}), \
             worst {worst} for one outage; converged {delay:?} after the last",
            if isolate { "isolated follower" } else { "leader-follower link" }
        );
    }
}

/// Partition and heal (different epochs): the side without the leader elects epoch 2 while
/// the old leader keeps epoch 1 on its side; on heal exactly one leader (the epoch-2 one)
/// remains within one heartbeat (plus a message delay), the other steps down, and no new
/// election happens.
#[test]
fn partition_with_leaders_on_both_sides_heals_to_one_leader_within_one_heartbeat() {
    let mut sim = steady(4, 31);
    sim.partition(&[&[0, 1], &[2, 3]]);
    sim.run_for(secs(20));
    let leaders = sim.leaders();
    assert_eq!(leaders.len(), 2, "{}", sim.report());
    assert!(leaders.contains(&(0, Term::new(Epoch(1), sim.ids[0]))));
    let (winner, term) = *leaders.iter().find(|(_, t)| t.epoch == Epoch(2)).unwrap();
    let heal_at = sim.now;
    sim.heal_all();
    sim.begin_calm();
    sim.run_for(secs(20));
    sim.assert_ok();
    let bound = sim.cfg.coexistence_bound();
    let delay = sim.convergence_delay().unwrap();
    assert!(delay <= bound, "{delay:?} > {bound:?}\n{}", sim.report());
    assert_eq!(sim.converged_leader(), Some(term));
    assert_eq!(sim.leaders(), vec![(winner, term)]);
    let downs = sim.step_downs();
    assert_eq!(downs.len(), 1);
    assert_eq!(downs[0].node, 0);
    assert!(downs[0].at > heal_at);
    assert_eq!(sim.max_epoch(), Epoch(2), "healing costs no epoch");
    eprintln!("partition (epochs 1 | 2): one leader {delay:?} after heal (bound {bound:?})");
}

/// Partition and heal (same epoch): the leader dies and the survivors split in two; each side
/// elects its own leader *at the same epoch 2* (no quorum). On heal the higher device id wins
/// within one heartbeat, the other steps down, and no new election happens.
#[test]
fn split_brain_at_the_same_epoch_heals_to_the_higher_device_id() {
    let mut cfg = SimConfig::new(5, 41);
    cfg.advance_positions = false;
    let mut sim = Sim::new(cfg);
    sim.run_for(secs(5));
    sim.crash(0);
    sim.partition(&[&[1, 2], &[3, 4]]);
    sim.run_for(secs(20));
    let two = Term::new(Epoch(2), sim.ids[2]);
    let four = Term::new(Epoch(2), sim.ids[4]);
    assert_eq!(sim.leaders(), vec![(2, two), (4, four)], "{}", sim.report());
    sim.heal_all();
    sim.begin_calm();
    sim.run_for(secs(20));
    sim.assert_ok();
    let bound = sim.cfg.coexistence_bound();
    let delay = sim.convergence_delay().unwrap();
    assert!(delay <= bound, "{delay:?}\n{}", sim.report());
    assert_eq!(sim.leaders(), vec![(4, four)]);
    let downs = sim.step_downs();
    assert_eq!(downs.len(), 1);
    assert_eq!(downs[0].node, 2);
    assert!(matches!(
        &downs[0].change,
        RoleChange::StepDown(s) if s.reason == StepDownReason::HigherTerm(four) && s.new_leader == Some(four)
    ));
    assert_eq!(sim.max_epoch(), Epoch(2));
    eprintln!("split brain at epoch 2: one leader {delay:?} after heal (bound {bound:?})");
}

/// Restart in the middle of an election (after the candidate saved its epoch): the restarted
/// device comes back with the saved epoch, as a follower; it never leads that epoch, and the
/// next election uses a higher one — which it may win.
#[test]
fn restart_mid_election_after_the_save_keeps_the_saved_epoch() {
    let mut cfg = SimConfig::new(3, 51);
    cfg.advance_positions = false;
    let mut sim = Sim::new(cfg);
    sim.run_for(secs(3));
    sim.set_position(2, 9);
    sim.crash(0);
    // Stop when node 2 has saved epoch 2 and sent its claim.
    let deadline = sim.now + secs(10);
    let hit = sim.run_until_or(deadline, |s| {
        s.status(2).is_some_and(|st| st.role == RoleKind::Candidate && st.durable_epoch == Epoch(2))
    });
    assert!(hit, "{}", sim.report());
    sim.crash(2);
    assert_eq!(sim.saved(2).unwrap().max_epoch, Epoch(2));
    sim.restart(2);
    let st = sim.status(2).unwrap();
    assert_eq!((st.role, st.max_epoch, st.leader), (RoleKind::Follower, Epoch(2), None));
    sim.run_for(secs(30));
    sim.assert_ok();
    // Node 1 deferred to node 2's claim, waited a lease, and opened epoch 3; node 2 won it.
    assert_eq!(sim.leaders(), vec![(2, Term::new(Epoch(3), sim.ids[2]))], "{}", sim.report());
    assert!(!sim.elected_epochs().contains(&Epoch(2)), "nobody led the abandoned epoch");
}

/// Restart in the middle of an election (before the save completed): the claim was never
/// sent, the restarted device keeps its old saved epoch, and exactly one leader emerges.
#[test]
fn restart_mid_election_before_the_save_sends_nothing_and_converges() {
    let mut cfg = SimConfig::new(3, 52);
    cfg.advance_positions = false;
    cfg.save = (Duration::from_millis(50), Duration::from_millis(50));
    let mut sim = Sim::new(cfg);
    sim.run_for(secs(3));
    sim.set_position(2, 9);
    sim.crash(0);
    let deadline = sim.now + secs(10);
    let hit = sim.run_until_or(deadline, |s| {
        s.status(2).is_some_and(|st| st.role == RoleKind::Candidate && st.durable_epoch < Epoch(2))
    });
    assert!(hit);
    sim.crash(2);
    assert_eq!(sim.saved(2).unwrap().max_epoch, Epoch(1), "the save never landed");
    sim.restart(2);
    sim.begin_calm();
    sim.run_for(secs(30));
    sim.assert_ok();
    assert_eq!(sim.leaders().len(), 1, "{}", sim.report());
    assert!(sim.convergence_delay().unwrap() <= L + H, "{}", sim.report());
}

/// A restarted leader does not come back believing it leads: it returns as a follower, its
/// old epoch is never led again, and leadership resumes only through a new epoch.
#[test]
fn a_restarted_leader_never_resumes_its_old_term() {
    for seed in 0..10 {
        let mut sim = steady(3, 60 + seed);
        sim.crash(0);
        sim.restart(0);
        assert_eq!(sim.status(0).unwrap().can_sequence(), None);
        assert_eq!(sim.status(0).unwrap().leader, None);
        sim.begin_calm();
        sim.run_for(secs(30));
        sim.assert_ok();
        let leaders = sim.leaders();
        assert_eq!(leaders.len(), 1, "{}", sim.report());
        assert_eq!(leaders[0].1.epoch, Epoch(2), "{}", sim.report());
        assert!(sim.convergence_delay().unwrap() <= L + H);
    }
}

/// Membership: removing the leader from the member list counts as losing it — the others
/// elect at once (not after a lease), the removed device steps down, and its heartbeats are
/// ignored.
#[test]
fn removing_the_leader_counts_as_leader_loss() {
    let mut sim = steady(3, 71);
    let members: std::collections::BTreeSet<_> = sim.ids[1..].iter().copied().collect();
    let removed_at = sim.now;
    for i in 0..3 {
        sim.set_members(i, members.clone());
    }
    sim.begin_calm();
    sim.run_for(secs(10));
    sim.assert_ok();
    let leaders = sim.leaders();
    assert_eq!(leaders.len(), 1);
    assert_ne!(leaders[0].0, 0);
    assert_eq!(leaders[0].1.epoch, Epoch(2));
    let won_at = sim
        .changes
        .iter()
        .find(|s| s.at > removed_at && matches!(s.change, RoleChange::BecomeLeader { .. }))
        .unwrap()
        .at;
    assert!(won_at.saturating_since(removed_at) < H, "elected without waiting a lease");
    assert!(matches!(
        &sim.step_downs()[0].change,
        RoleChange::StepDown(s) if s.reason == StepDownReason::Removed
    ));
}
