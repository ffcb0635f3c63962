//! The server's hot path allocates nothing in steady state: with every client connected
//! and its player running about, a tick (inputs, step, every client's snapshot built as a
//! delta, encoded and sealed), every datagram received and every datagram sent, measured
//! under a counting global allocator. One test in this binary: the counters are global.
//!
//! What does allocate, and is left out here: game events (a kill or a hit goes reliably to
//! each client that hears it, in a packet of notices), a client's reconnect token (minted
//! every half token lifetime, 30 s by default), connects and disconnects.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::alloc::System;
use std::sync::atomic::{AtomicUsize, Ordering};

use arena_client::bots::shooter::Behavior;
use arena_shared::sim::{Buttons, PlayerInput};
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations (and reallocations) made inside the server's calls.
static SERVER_ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// Calls into the server measured.
static SERVER_CALLS: AtomicUsize = AtomicUsize::new(0);

fn counted(work: &mut dyn FnMut()) {
    let before = GLOBAL.stats();
    work();
    let after = GLOBAL.stats();
    let made =
        (after.allocations - before.allocations) + (after.reallocations - before.reallocations);
    SERVER_ALLOCATIONS.fetch_add(made, Ordering::Relaxed);
    SERVER_CALLS.fetch_add(1, Ordering::Relaxed);
}

#[test]
fn a_steady_tick_allocates_nothing_on_the_server() {
    let seed = 31;
    let clients = 32;
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: clients,
        ..SimConfig::default()
    });
    for _ in 0..clients {
        net.add_client(LinkConfig::lossy(0.02, 10, 3), Behavior::Idle);
    }
    // Every player runs, changing direction every half second, and never fires (a shot
    // is a game event: see the module docs).
    let directions = [
        Buttons::UP,
        Buttons::UP | Buttons::RIGHT,
        Buttons::RIGHT,
        Buttons::DOWN | Buttons::RIGHT,
        Buttons::DOWN,
        Buttons::DOWN | Buttons::LEFT,
        Buttons::LEFT,
        Buttons::UP | Buttons::LEFT,
    ];
    let run = |net: &mut SimNet, ticks: u64| {
        for t in 0..ticks {
            if t % 30 == 0 {
                for (i, client) in net.clients.iter_mut().enumerate() {
                    let turn = (i as u64 + t / 30) as usize;
                    client.fixed_input = Some(PlayerInput {
                        buttons: directions[turn % directions.len()],
                        aim: 0,
                    });
                }
            }
            net.step();
        }
    };
    assert!(net.run_until(600, SimNet::all_connected), "seed {seed}");
    // Warm up: buffers grow to their working size, scoreboards and tokens go out.
    run(&mut net, 300);
    let updates_before = net.server().stats().entity_updates;
    net.set_server_meter(counted);
    let ticks = 240;
    run(&mut net, ticks);
    let allocations = SERVER_ALLOCATIONS.load(Ordering::Relaxed);
    let calls = SERVER_CALLS.load(Ordering::Relaxed);
    let client_ticks = ticks as usize * clients as usize;
    assert!(calls > client_ticks, "seed {seed}: {calls} calls measured");
    let updates = net.server().stats().entity_updates - updates_before;
    assert!(
        updates > client_ticks as u64,
        "seed {seed}: entities in view moved"
    );
    assert_eq!(
        allocations, 0,
        "seed {seed}: {allocations} allocations in {calls} server calls over {client_ticks} client-ticks"
    );
}
