//! Scenarios on the simulated network: the real server core and client sessions, lossy
//! links, virtual time. Each prints its seed if it fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arena_client::bots::shooter::Behavior;
use arena_server::replication::DATAGRAM_OVERHEAD;
use arena_shared::netcode::MAX_PAYLOAD_BYTES;
use arena_shared::sim::GameEvent;
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};

const TICK_HZ: u64 = 60;

/// Connects `count` clients, plays `seconds`, then lets every unapplied input drain.
fn play(seed: u64, count: usize, link: LinkConfig, seconds: u64) -> SimNet {
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 128,
        ..SimConfig::default()
    });
    for _ in 0..count {
        net.add_client(link, Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}: not every client connected within 3 s"
    );
    net.run_ticks(seconds * TICK_HZ);
    net.stop_playing();
    net.run_until(2 * TICK_HZ, |n| n.inputs_unapplied() == 0);
    net
}

#[test]
fn a_hundred_clients_play_a_minute_on_a_clean_link_and_every_input_is_applied() {
    let seed = 11;
    let mut net = play(seed, 100, LinkConfig::clean(), 60);
    assert!(net.all_connected(), "seed {seed}: someone was disconnected");
    // The kill feed: every client heard the kills exactly once and in order (those of the
    // last moments may still be on their way).
    let kills = net.kills.clone();
    for (i, client) in net.clients.iter_mut().enumerate() {
        let heard: Vec<_> = client
            .session
            .take_events()
            .filter(|e| matches!(e, GameEvent::Killed { .. }))
            .collect();
        assert!(
            heard.len() + 10 >= kills.len() && heard[..] == kills[..heard.len()],
            "seed {seed}: client {i} heard {} of {} kills, or out of order",
            heard.len(),
            kills.len()
        );
    }
    assert_eq!(net.inputs_unapplied(), 0, "seed {seed}");
    let stats = net.server().stats();
    // The kills rode in snapshots' datagrams; only what is too big (the shared data at
    // joining) or found no snapshot went alone.
    let (riding, alone) = (stats.notices_riding, stats.notices_alone);
    assert!(
        riding > 1000 && alone * 10 < riding,
        "seed {seed}: {riding} notice datagrams rode in snapshots, {alone} went alone"
    );
    let sent: u64 = net
        .clients
        .iter()
        .map(|c| c.session.stats().inputs_sent)
        .sum();
    assert!(
        sent >= 100 * 60 * TICK_HZ,
        "seed {seed}: only {sent} inputs made"
    );
    assert_eq!(stats.inputs_applied, sent, "seed {seed}");
    assert_eq!(
        stats.inputs_skipped + stats.inputs_dropped,
        0,
        "seed {seed}"
    );
    // Bots firing at each other for a minute: the game is being played.
    assert!(
        !net.kills.is_empty(),
        "seed {seed}: no kills in a minute of play"
    );
    assert_eq!(stats.events_dropped, 0, "seed {seed}");
    assert!(
        stats.events_queued > 0,
        "seed {seed}: no event reached a client"
    );
    for client in &net.clients {
        let s = client.session.stats();
        assert!(
            s.snapshots >= 60 * TICK_HZ - 5,
            "seed {seed}: {} snapshots",
            s.snapshots
        );
        assert!(
            s.max_snapshot_gap.as_millis() <= 20,
            "seed {seed}: gap {:?}",
            s.max_snapshot_gap
        );
    }
}

#[test]
fn under_5_percent_loss_and_80ms_latency_every_input_is_still_applied() {
    let seed = 12;
    let net = play(seed, 100, LinkConfig::lossy(0.05, 80, 20), 60);
    assert!(net.all_connected(), "seed {seed}: someone was disconnected");
    assert_eq!(
        net.inputs_unapplied(),
        0,
        "seed {seed}: inputs never applied"
    );
    let stats = net.server().stats();
    assert_eq!(
        stats.inputs_skipped + stats.inputs_dropped,
        0,
        "seed {seed}"
    );
    let lost: u64 = net.clients.iter().map(|c| c.up.lost()).sum();
    assert!(
        lost > 1000,
        "seed {seed}: the link lost only {lost} datagrams"
    );
    let rtt = net.clients[0].session.rtt().expect("rtt measured");
    assert!(
        (0.150..0.230).contains(&rtt.as_secs_f64()),
        "seed {seed}: rtt {rtt:?} is not about 160 ms plus a tick"
    );
}

#[test]
fn a_silent_client_times_out_and_its_entity_is_removed() {
    let seed = 13;
    let mut net = SimNet::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..3 {
        net.add_client(LinkConfig::clean(), Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    assert_eq!(net.server().world().players().len(), 3);
    let bodies = net.server().world().entities().len();
    net.clients[1].running = false;
    // The token's timeout is 5 s; the slot and the body go within a tick of it.
    net.run_ticks(5 * TICK_HZ - 5);
    assert_eq!(
        net.server().num_players(),
        3,
        "seed {seed}: timed out early"
    );
    net.run_ticks(10);
    assert_eq!(net.server().num_players(), 2, "seed {seed}");
    // Its body stays for the reconnect grace, standing still, then goes.
    assert_eq!(net.server().world().players().len(), 3, "seed {seed}");
    let grace = arena_server::core::RECONNECT_GRACE_S * TICK_HZ;
    net.run_ticks(grace - 15);
    assert_eq!(
        net.server().world().players().len(),
        3,
        "seed {seed}: removed before the grace"
    );
    net.run_ticks(20);
    assert_eq!(net.server().world().players().len(), 2, "seed {seed}");
    assert!(net.server().world().entities().len() < bodies + 50);
    assert!(net.clients[0].session.is_connected() && net.clients[2].session.is_connected());
}

#[test]
fn a_view_of_500_players_fills_in_within_the_budget_and_then_costs_nothing() {
    let seed = 14;
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 500,
        // The whole arena in view: every client sees all 500.
        view_radius_m: 1000.0,
        ..SimConfig::default()
    });
    for _ in 0..500 {
        net.add_client(LinkConfig::clean(), Behavior::Idle);
    }
    assert!(
        net.run_until(5 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    let before = net.server().stats().clone();
    net.run_ticks(10);
    let stats = net.server().stats().clone();
    // Every client got a snapshot every tick, within its budget: what its bucket held
    // (at most a full datagram's worth) and ten ticks' refills.
    assert_eq!(
        stats.snapshots_sent - before.snapshots_sent,
        500 * 10,
        "seed {seed}"
    );
    let per_tick = f64::from(SimConfig::default().client_bytes_per_s) / TICK_HZ as f64;
    let bound = ((MAX_PAYLOAD_BYTES + DATAGRAM_OVERHEAD) as f64 + 10.0 * per_tick) / 10.0;
    let per_snapshot = (stats.snapshot_bytes - before.snapshot_bytes) as f64 / 5000.0;
    assert!(
        per_snapshot + DATAGRAM_OVERHEAD as f64 <= bound,
        "seed {seed}: {per_snapshot:.0} bytes a snapshot"
    );
    assert!(
        stats.entities_deferred > before.entities_deferred,
        "seed {seed}: 500 players do not fit in one snapshot"
    );
    // The players stand still: once each client holds all of them, nothing is deferred
    // and a snapshot is a few bytes.
    net.run_ticks(3 * TICK_HZ);
    let settled = net.server().stats().clone();
    net.run_ticks(TICK_HZ);
    let after = net.server().stats().clone();
    assert_eq!(
        after.entities_deferred, settled.entities_deferred,
        "seed {seed}"
    );
    let per_snapshot = (after.snapshot_bytes - settled.snapshot_bytes) as f64
        / (after.snapshots_sent - settled.snapshots_sent) as f64;
    assert!(
        per_snapshot < 40.0,
        "seed {seed}: {per_snapshot:.0} bytes a snapshot"
    );
    for client in &net.clients {
        let snapshot = client.session.latest_snapshot().expect("snapshots arrive");
        assert_eq!(snapshot.entities.len(), 500);
        assert_eq!(snapshot.deferred, 0);
        assert!(snapshot.own_entity().is_some());
        assert_eq!(client.session.stats().snapshots_no_baseline, 0);
        assert_eq!(client.session.stats().snapshots_malformed, 0);
    }
}

#[test]
fn shedding_load_halves_snapshots_but_keeps_the_tick_rate_and_every_input() {
    let seed = 15;
    let mut net = SimNet::new(SimConfig {
        seed,
        ..SimConfig::default()
    });
    for _ in 0..10 {
        net.add_client(LinkConfig::clean(), Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.server_mut().set_snapshot_every(2);
    let before: Vec<u64> = net
        .clients
        .iter()
        .map(|c| c.session.stats().snapshots)
        .collect();
    let tick_before = net.server().world().tick().0;
    net.run_ticks(10 * TICK_HZ);
    assert_eq!(net.server().world().tick().0 - tick_before, 10 * TICK_HZ);
    for (client, before) in net.clients.iter().zip(before) {
        let got = client.session.stats().snapshots - before;
        assert!(
            (295..=305).contains(&got),
            "seed {seed}: {got} snapshots in 10 s at every=2"
        );
    }
    net.stop_playing();
    net.run_until(2 * TICK_HZ, |n| n.inputs_unapplied() == 0);
    assert_eq!(net.inputs_unapplied(), 0, "seed {seed}");
}

#[test]
fn snapshots_built_on_several_workers_are_the_ones_one_worker_builds() {
    let seed = 16;
    let play = |workers: usize| {
        let mut net = SimNet::new(SimConfig {
            seed,
            max_players: 40,
            workers,
            ..SimConfig::default()
        });
        for _ in 0..40 {
            net.add_client(LinkConfig::lossy(0.05, 20, 5), Behavior::Wander);
        }
        net.run_ticks(6 * TICK_HZ);
        let stats = net.server().stats().clone();
        let views: Vec<_> = net
            .clients
            .iter()
            .map(|c| {
                c.session
                    .latest_snapshot()
                    .map(|s| (s.tick, s.entities.clone()))
            })
            .collect();
        (
            stats.snapshots_sent,
            stats.snapshot_bytes,
            stats.entity_updates,
            views,
        )
    };
    let one = play(1);
    assert!(one.0 > 40 * 5 * TICK_HZ, "seed {seed}: {} snapshots", one.0);
    assert_eq!(play(3), one, "seed {seed}");
}
