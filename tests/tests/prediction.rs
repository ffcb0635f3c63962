//! Prediction, reconciliation and interpolation on the simulated network.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arena_client::bots::shooter::Behavior;
use arena_shared::sim::{Buttons, PlayerInput};
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};

const TICK_HZ: u64 = 60;

/// How far the server put a wandering client's player after each input, compared with
/// where the client predicted it when it made the input (metres), over `seconds`.
fn corrections(seed: u64, link: LinkConfig, seconds: u64) -> Vec<f32> {
    let mut net = SimNet::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    let c = net.add_client(link, Behavior::Wander);
    net.add_client(link, Behavior::Wander);
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.run_ticks(TICK_HZ);
    let mut seen = Vec::new();
    for _ in 0..seconds * TICK_HZ {
        net.step();
        let predictor = &mut net.clients[c].predictor;
        if let Some(error) = predictor.last_prediction_error_m.take() {
            seen.push(error);
        }
    }
    assert!(
        seen.len() as u64 > seconds * TICK_HZ / 2,
        "seed {seed}: few comparisons"
    );
    seen.sort_by(f32::total_cmp);
    seen
}

#[test]
fn on_a_link_without_loss_prediction_needs_no_visible_correction() {
    let seed = 31;
    let seen = corrections(seed, LinkConfig::lossy(0.0, 40, 0), 20);
    let max = seen.last().copied().unwrap();
    println!("clean link: max prediction error {max} m");
    // Positions travel in 1/32 m steps: a correction below 5 cm is quantization, unseen.
    assert!(
        max < 0.05,
        "seed {seed}: a {max} m misprediction on a clean link"
    );
}

#[test]
fn under_loss_and_jitter_prediction_agrees_with_the_server_after_reconciliation() {
    let seed = 32;
    let seen = corrections(seed, LinkConfig::lossy(0.05, 80, 20), 30);
    let median = seen[seen.len() / 2];
    let p99 = seen[seen.len() * 99 / 100];
    let max = seen.last().copied().unwrap();
    println!("5% loss, 80 ± 20 ms: prediction error median {median} m, p99 {p99} m, max {max} m");
    assert!(
        median < 0.05,
        "seed {seed}: median misprediction {median} m"
    );
    assert!(p99 < 0.5, "seed {seed}: p99 misprediction {p99} m");
}

#[test]
fn interpolated_positions_never_jump_backwards() {
    let seed = 33;
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 4,
        view_radius_m: 100.0,
        ..SimConfig::default()
    });
    let link = LinkConfig::lossy(0.05, 80, 20);
    let observer = net.add_client(link, Behavior::Idle);
    let mover = net.add_client(link, Behavior::Idle);
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.run_ticks(TICK_HZ);
    net.clients[mover].fixed_input = Some(PlayerInput {
        buttons: Buttons::RIGHT,
        aim: 0,
    });
    let mover_id = net.clients[mover]
        .session
        .latest_snapshot()
        .unwrap()
        .your_entity
        .unwrap();
    let mut last_x: Option<f32> = None;
    let mut moved = 0.0;
    for _ in 0..3 * TICK_HZ {
        net.step();
        let now = net.now;
        let drawn = net.clients[observer].interpolator.sample(now, None);
        let Some(m) = drawn.iter().find(|d| d.id == mover_id) else {
            continue;
        };
        if let Some(x) = last_x {
            assert!(
                m.state.position().x >= x - 1e-4,
                "seed {seed}: drawn x went back from {x} to {}",
                m.state.position().x
            );
            moved += m.state.position().x - x;
        }
        last_x = Some(m.state.position().x);
    }
    assert!(
        moved > 5.0,
        "seed {seed}: the mover was drawn moving only {moved} m"
    );
}
