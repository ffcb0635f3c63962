//! The input lead on the simulated network: clients adapt how early they aim their inputs
//! to the margins the server reports, so that (almost) every input is applied in time
//! with no more lead than that takes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arena_client::bots::shooter::Behavior;
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};

const TICK_HZ: u64 = 60;

/// What a run of `count` wandering clients over `link` showed in its second half.
struct Outcome {
    late: u64,
    applied: u64,
    leads: Vec<f64>,
}

impl Outcome {
    fn late_share(&self) -> f64 {
        self.late as f64 / self.applied.max(1) as f64
    }
}

/// Plays `seconds`: the first half lets the leads settle, the second is measured.
fn play(seed: u64, count: usize, link: LinkConfig, seconds: u64) -> Outcome {
    let mut net = SimNet::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..count {
        net.add_client(link, Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}: not every client connected within 3 s"
    );
    net.run_ticks(seconds * TICK_HZ / 2);
    let before = net.server().stats().clone();
    net.run_ticks(seconds * TICK_HZ - seconds * TICK_HZ / 2);
    let after = net.server().stats();
    assert!(net.all_connected(), "seed {seed}: someone was disconnected");
    let mut leads: Vec<f64> = net
        .clients
        .iter()
        .map(|c| c.session.input_lead_ticks())
        .collect();
    leads.sort_by(f64::total_cmp);
    let outcome = Outcome {
        late: after.inputs_late - before.inputs_late,
        applied: after.inputs_applied - before.inputs_applied,
        leads,
    };
    let arrived_late: u64 = net
        .clients
        .iter()
        .map(|c| c.session.stats().inputs_arrived_late)
        .sum();
    println!(
        "seed {seed}, {count} clients, {link:?}: {} of {} inputs applied late ({:.3}%) in the \
         second half, {arrived_late} arrived late in all; leads {:?} .. {:?}",
        outcome.late,
        outcome.applied,
        outcome.late_share() * 100.0,
        outcome.leads.first(),
        outcome.leads.last(),
    );
    outcome
}

#[test]
fn under_loss_and_jitter_fewer_than_one_input_in_a_hundred_is_applied_late() {
    let seed = 61;
    let outcome = play(seed, 50, LinkConfig::lossy(0.05, 20, 5), 25);
    assert!(
        outcome.applied > 50 * 10 * TICK_HZ,
        "seed {seed}: only {} inputs applied",
        outcome.applied
    );
    assert!(
        outcome.late_share() < 0.01,
        "seed {seed}: {} of {} inputs applied late",
        outcome.late,
        outcome.applied
    );
    // 20 ± 5 ms each way is a tick and a half; with a lost packet's frame a tick later
    // on top, a few ticks of lead do; ten would be absurd.
    let most = outcome.leads.last().copied().unwrap();
    assert!(most < 10.0, "seed {seed}: a lead of {most} ticks");
}

#[test]
fn on_a_clean_link_the_lead_comes_down_and_no_input_is_late() {
    let seed = 62;
    let outcome = play(seed, 20, LinkConfig::lossy(0.0, 10, 0), 10);
    assert_eq!(outcome.late, 0, "seed {seed}");
    // Margins that never vary need one tick to spare and no more.
    let most = outcome.leads.last().copied().unwrap();
    assert!(
        most < arena_client::session::lead::INITIAL_LEAD_TICKS,
        "seed {seed}: a lead of {most} ticks"
    );
}
