//! Determinism: the same world and the same inputs give the same hash, bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use arena_shared::sim::{Buttons, PlayerId, PlayerInput, World, WorldConfig};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

const PLAYERS: u32 = 24;

/// Runs a world for `ticks` with inputs drawn from `input_seed`; players join and leave.
fn run(ticks: u64, input_seed: u64) -> (u64, u64) {
    let mut world = World::new(WorldConfig {
        max_players: 32,
        tick_hz: 60,
        seed: 7,
    });
    let mut rng = Pcg64Mcg::seed_from_u64(input_seed);
    for id in 1..=PLAYERS {
        world.add_player(PlayerId(id));
    }
    let mut kills = 0;
    let mut inputs = BTreeMap::new();
    for tick in 0..ticks {
        inputs.clear();
        for id in 1..=PLAYERS {
            // Some players send nothing some ticks: their last input repeats.
            if rng.random_bool(0.9) {
                let buttons = rng.random_range(0..32u8)
                    | if rng.random_bool(0.3) {
                        Buttons::FIRE
                    } else {
                        0
                    };
                inputs.insert(
                    PlayerId(id),
                    PlayerInput {
                        buttons,
                        aim: rng.random(),
                    },
                );
            }
        }
        if tick % 1000 == 500 {
            let leaving = PlayerId(rng.random_range(1..=PLAYERS));
            world.remove_player(leaving);
            world.add_player(leaving);
        }
        kills += world
            .step(&inputs)
            .iter()
            .filter(|e| matches!(e, arena_shared::sim::GameEvent::Killed { .. }))
            .count() as u64;
    }
    (world.hash(), kills)
}

#[test]
fn same_world_and_inputs_give_the_same_hash_after_10000_ticks() {
    let (a, kills) = run(10_000, 99);
    let (b, _) = run(10_000, 99);
    assert_eq!(a, b);
    assert!(kills > 10, "only {kills} kills: the game was not exercised");
    // And the hash does see the inputs: other inputs, another hash.
    let (c, _) = run(10_000, 100);
    assert_ne!(a, c);
}
