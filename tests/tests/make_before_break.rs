//! Make before break on the simulated network: clients open their connection to the
//! standby while they keep playing on the owner, so the commit of a handoff costs them
//! only the pause, not a handshake after it; and a prepare that is called off costs them
//! nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use arena_client::bots::shooter::Behavior;
use arena_tests::simnet::{LinkConfig, ServerMode, SimConfig, SimNet};

const TICK_HZ: u64 = 60;
const CLIENTS: usize = 20;
const ONE_WAY: Duration = Duration::from_millis(40);
const OWNER: usize = 0;
const STANDBY: usize = 1;

/// An owner with 20 clients playing over clean 40 ms links, and a standby that is down.
fn playing(seed: u64) -> SimNet {
    let mut net = SimNet::new(SimConfig {
        seed,
        servers: 2,
        ..SimConfig::default()
    });
    for _ in 0..CLIENTS {
        net.add_client(LinkConfig::lossy(0.0, 40, 0), Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}: connect"
    );
    net.run_ticks(2 * TICK_HZ);
    net
}

/// Phase one: the standby opens its lobby, the owner tells every client to connect
/// there ahead, and the harness waits (bounded) until all of them have.
fn prepare(net: &mut SimNet, seed: u64) {
    net.open_lobby(STANDBY);
    let now = net.now;
    let standby = net.servers[STANDBY].addr;
    let told = net.core_mut(OWNER).prepare_all(now, standby);
    assert_eq!(told, CLIENTS, "seed {seed}");
    assert!(
        net.run_until(2 * TICK_HZ, |n| n.connected_ahead_to(STANDBY) == CLIENTS),
        "seed {seed}: only {} of {CLIENTS} connected ahead",
        net.connected_ahead_to(STANDBY)
    );
    // Play went on at the owner throughout.
    assert_eq!(net.connected_to(OWNER), CLIENTS, "seed {seed}");
}

/// Stops playing and waits until every client's frames are acknowledged.
fn drain(net: &mut SimNet, seed: u64) {
    net.stop_playing();
    let settled = net.run_until(3 * TICK_HZ, |n| {
        n.clients
            .iter()
            .all(|c| c.session.inputs_unacknowledged() == 0)
    });
    assert!(settled, "seed {seed}: inputs still unacknowledged");
}

/// No input lost: every frame sent was applied, none rolled back or given up, and what
/// the clients were told adds up to what the servers applied.
fn assert_nothing_lost(net: &SimNet, servers: &[usize], seed: u64) {
    let mut told = 0;
    for client in &net.clients {
        let stats = client.session.stats();
        assert_eq!(
            stats.inputs_sent,
            stats.inputs_applied
                + stats.inputs_rolled_back
                + stats.inputs_given_up
                + client.session.inputs_unacknowledged(),
            "seed {seed}: {stats:?}"
        );
        assert_eq!(stats.inputs_rolled_back, 0, "seed {seed}: {stats:?}");
        assert_eq!(stats.inputs_given_up, 0, "seed {seed}: {stats:?}");
        assert_eq!(
            stats.inputs_applied, stats.inputs_sent,
            "seed {seed}: {stats:?}"
        );
        told += stats.inputs_applied;
    }
    let applied: u64 = servers
        .iter()
        .map(|&n| net.core(n).stats().inputs_applied)
        .sum();
    assert_eq!(told, applied, "seed {seed}");
    for &n in servers {
        let stats = net.core(n).stats();
        assert_eq!(
            stats.inputs_skipped + stats.inputs_dropped,
            0,
            "seed {seed}"
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The worst snapshot gap any client saw.
fn worst_gap(net: &SimNet) -> Duration {
    net.clients
        .iter()
        .map(|c| c.session.stats().max_snapshot_gap)
        .max()
        .unwrap_or_default()
}

/// The commit: the owner has just finished tick T (the step that ended now); it freezes,
/// the standby takes the match as it stands and ticks T+1 at the next step. Returns the
/// pause between the owner's tick T and the standby's tick T+1.
fn commit(net: &mut SimNet, prepared: bool, seed: u64) -> Duration {
    let frozen_tick = net.core(OWNER).world().tick();
    let frozen_at = net.now;
    if prepared {
        net.hand_off_prepared(OWNER, STANDBY);
    } else {
        net.hand_off(OWNER, STANDBY);
    }
    net.step();
    assert_eq!(
        net.core(STANDBY).world().tick(),
        frozen_tick.next(),
        "seed {seed}: the standby did not tick T+1 at once"
    );
    net.now - frozen_at
}

#[test]
fn a_prepared_handoff_costs_the_pause_and_no_handshake() {
    let seed = 31;

    // Before: a redirect only, so every client handshakes with the new owner after the
    // freeze.
    let mut net = playing(seed);
    let pause = commit(&mut net, false, seed);
    assert!(
        net.run_until(3 * TICK_HZ, |n| n.connected_to(STANDBY) == CLIENTS),
        "seed {seed}: redirect only"
    );
    net.run_ticks(TICK_HZ);
    let before = worst_gap(&net);
    println!(
        "redirect only: pause {:.1} ms, worst snapshot gap {:.1} ms",
        ms(pause),
        ms(before)
    );
    assert!(
        before > Duration::from_millis(150),
        "seed {seed}: the redirect-only gap was {before:?}; the contrast is gone"
    );

    // After: the same with the connections opened ahead.
    let mut net = playing(seed);
    prepare(&mut net, seed);
    let pause = commit(&mut net, true, seed);
    assert!(
        net.run_until(TICK_HZ, |n| n.connected_to(STANDBY) == CLIENTS),
        "seed {seed}: only {} switched",
        net.connected_to(STANDBY)
    );
    net.run_ticks(2 * TICK_HZ);
    let after = worst_gap(&net);
    println!(
        "make before break: pause {:.1} ms, worst snapshot gap {:.1} ms",
        ms(pause),
        ms(after)
    );
    // The goal: the pause, one one-way trip and one snapshot interval.
    let interval = Duration::from_secs_f64(1.0 / TICK_HZ as f64);
    let bound = pause + ONE_WAY + interval + Duration::from_millis(5);
    assert!(after < bound, "seed {seed}: gap {after:?}, bound {bound:?}");
    assert!(
        after < Duration::from_millis(80),
        "seed {seed}: gap {after:?}"
    );
    for client in &net.clients {
        let stats = client.session.stats();
        assert_eq!(stats.handoffs_followed, 1, "seed {seed}: {stats:?}");
        assert_eq!(stats.handoffs_prepared, 1, "seed {seed}: {stats:?}");
        assert_eq!(stats.prepares_abandoned, 0, "seed {seed}: {stats:?}");
        assert_eq!(stats.reconnects, 0, "seed {seed}: {stats:?}");
    }
    // The clients said goodbye to the old owner.
    assert_eq!(net.core(OWNER).num_players(), 0, "seed {seed}");

    // Nothing lost: the frames the frozen owner never applied went to the new one.
    drain(&mut net, seed);
    assert_eq!(net.connected_to(STANDBY), CLIENTS, "seed {seed}");
    assert_nothing_lost(&net, &[OWNER, STANDBY], seed);
}

/// What a called-off prepare must leave: every client on the owner, play uninterrupted,
/// nothing lost, the connection opened ahead dropped.
fn assert_undisturbed(net: &mut SimNet, seed: u64) {
    assert_eq!(net.connected_to(OWNER), CLIENTS, "seed {seed}");
    let interval = Duration::from_secs_f64(1.0 / TICK_HZ as f64);
    let gap = worst_gap(net);
    assert!(gap <= 2 * interval, "seed {seed}: gap {gap:?}");
    for client in &net.clients {
        let stats = client.session.stats();
        assert_eq!(stats.prepares_abandoned, 1, "seed {seed}: {stats:?}");
        assert_eq!(client.session.prepared_server(), None, "seed {seed}");
        assert_eq!(
            (stats.handoffs_followed, stats.reconnects),
            (0, 0),
            "seed {seed}: {stats:?}"
        );
    }
    drain(net, seed);
    assert_nothing_lost(net, &[OWNER], seed);
}

#[test]
fn a_prepare_the_standby_calls_off_leaves_every_client_playing_on_the_owner() {
    let seed = 32;
    let mut net = playing(seed);
    prepare(&mut net, seed);
    // The standby says no after all: it admits nobody and closes what it had.
    let now = net.now;
    net.core_mut(OWNER).cancel_prepare();
    let lobby = net.servers[STANDBY].lobby.as_mut().unwrap();
    lobby.set_admitting(false);
    lobby.disconnect_all(now);
    assert!(
        net.run_until(TICK_HZ, |n| n
            .clients
            .iter()
            .all(|c| c.session.prepared_server().is_none())),
        "seed {seed}: prepared connections not dropped"
    );
    net.run_ticks(TICK_HZ);
    assert_undisturbed(&mut net, seed);
}

#[test]
fn a_standby_that_vanishes_during_prepare_costs_the_clients_nothing() {
    let seed = 33;
    let mut net = playing(seed);
    prepare(&mut net, seed);
    // The standby dies: the connections opened ahead time out (the token's 5 s).
    net.servers[STANDBY].mode = ServerMode::Down;
    net.core_mut(OWNER).cancel_prepare();
    assert!(
        net.run_until(7 * TICK_HZ, |n| n
            .clients
            .iter()
            .all(|c| c.session.prepared_server().is_none())),
        "seed {seed}: prepared connections not dropped"
    );
    assert_undisturbed(&mut net, seed);
}
