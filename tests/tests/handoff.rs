//! Handoff and crash recovery on the simulated network: real cores, real sessions, a real
//! MatchSnapshot between them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use arena_client::bots::shooter::Behavior;
use arena_server::core::TickRecord;
use arena_shared::sim::{PlayerId, Shooter, World};
use arena_shared::snapshot;
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};

const TICK_HZ: u64 = 60;

fn net(seed: u64, clients: usize, link: LinkConfig) -> SimNet {
    let mut net = SimNet::new(SimConfig {
        seed,
        servers: 2,
        ..SimConfig::default()
    });
    for _ in 0..clients {
        net.add_client(link, Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}: connect"
    );
    // Play long enough for every client to hold a reconnect token.
    net.run_ticks(3 * TICK_HZ);
    assert!(
        net.clients.iter().all(|c| c.session.has_reconnect_token()),
        "seed {seed}: reconnect tokens did not arrive"
    );
    net
}

/// Steps `world` through what a server's steps were fed.
fn replay(world: &mut World, log: &[TickRecord<Shooter>]) {
    for record in log {
        let wanted: BTreeSet<PlayerId> = record.players.iter().copied().collect();
        let present: Vec<PlayerId> = world.players().keys().copied().collect();
        for id in present.iter().filter(|id| !wanted.contains(id)) {
            world.remove_player(*id);
        }
        for id in &record.players {
            world.add_player(*id);
        }
        assert_eq!(world.tick().next(), record.tick, "replay out of step");
        world.step(&record.inputs);
    }
}

#[test]
fn a_handoff_under_loss_loses_no_input_and_continues_the_same_world() {
    let seed = 21;
    let mut net = net(seed, 100, LinkConfig::lossy(0.05, 40, 10));
    let bytes = net.hand_off(0, 1);
    let (_, frozen) = snapshot::decode::<Shooter>(&bytes, "sim").unwrap();
    assert!(
        net.run_until(3 * TICK_HZ, |n| n.connected_to(1) == 100),
        "seed {seed}: only {} clients followed the redirect",
        net.connected_to(1)
    );
    net.run_ticks(5 * TICK_HZ);
    net.stop_playing();
    net.run_until(3 * TICK_HZ, |n| n.inputs_unapplied() == 0);

    assert_eq!(
        net.inputs_unapplied(),
        0,
        "seed {seed}: inputs lost in the handoff"
    );
    let b = net.core(1).stats();
    assert_eq!(b.inputs_skipped + b.inputs_dropped, 0, "seed {seed}");
    let mut gaps: Vec<u128> = Vec::new();
    for client in &net.clients {
        assert_eq!(client.session.stats().handoffs_followed, 1, "seed {seed}");
        gaps.push(client.session.stats().max_snapshot_gap.as_millis());
    }
    // Following a redirect costs a one-way trip for the redirect and netcode's handshake
    // with the new owner (request, challenge, response, keep-alive: two round trips), then
    // the next tick: at 40 ms one way about 200 ms plus tick waits. Under 5% loss each
    // lost handshake packet adds up to netcode's 100 ms resend, so a few wait longer.
    gaps.sort_unstable();
    println!(
        "snapshot gaps through the handoff, ms: median {} p90 {} max {}",
        gaps[50], gaps[90], gaps[99]
    );
    assert!(gaps[50] < 300, "seed {seed}: median gap {} ms", gaps[50]);
    assert!(gaps[99] < 1000, "seed {seed}: worst gap {} ms", gaps[99]);
    // The old owner saw everyone leave.
    assert_eq!(net.core(0).num_players(), 0, "seed {seed}");

    // The new owner's world is the frozen one stepped with exactly what the new owner
    // applied: nothing of the match was lost or changed in transit.
    let mut uninterrupted = frozen.world.clone();
    let log = net.core_mut(1).take_input_log();
    assert!(log.len() as u64 >= 5 * TICK_HZ);
    replay(&mut uninterrupted, &log);
    assert_eq!(
        uninterrupted.hash(),
        net.core(1).world().hash(),
        "seed {seed}"
    );
}

#[test]
fn after_a_crash_every_client_comes_back_to_the_standby_with_a_bounded_rollback() {
    let seed = 22;
    let mut net = net(seed, 50, LinkConfig::lossy(0.01, 20, 5));
    // The owner snapshots every second; it dies 0.75 s after its last one.
    let snapshot = net.snapshot_bytes(0, 1);
    let snapshot_tick = snapshot::read_header(&snapshot).unwrap().tick.0;
    let ids_before: Vec<_> = net.server().match_state().roster;
    net.run_ticks(45);
    let crash_tick = net.server().world().tick().0;
    net.crash(0);
    // The standby notices the lapsed lease about a second later and restores.
    net.run_ticks(TICK_HZ);
    net.restore(1, &snapshot);
    let restored_at = net.now;
    assert!(
        net.run_until(5 * TICK_HZ, |n| n.connected_to(1) == 50),
        "seed {seed}: only {} clients came back",
        net.connected_to(1)
    );
    let back_after = net.now - restored_at;
    assert!(
        back_after.as_secs_f64() < 1.5,
        "seed {seed}: clients took {back_after:?}"
    );
    let rollback = crash_tick - snapshot_tick;
    assert!(
        rollback <= TICK_HZ,
        "seed {seed}: rolled back {rollback} ticks"
    );
    // Everyone has their own player back: same ids, no new players.
    let ids_after: Vec<_> = net.core(1).match_state().roster;
    let key = |r: &[arena_shared::snapshot::RosterEntry]| -> Vec<(u64, PlayerId)> {
        r.iter().map(|e| (e.client_id, e.player)).collect()
    };
    assert_eq!(key(&ids_after), key(&ids_before), "seed {seed}");
    let mut saw_rollback = 0;
    for client in &net.clients {
        let stats = client.session.stats();
        assert!(stats.reconnects >= 1, "seed {seed}");
        // A client took the new server's snapshots at once, though older than what it had
        // seen (it did not wait for the tick to catch up), and saw the rollback.
        assert!(stats.max_rollback_ticks <= rollback, "seed {seed}");
        if stats.max_rollback_ticks > 0 {
            saw_rollback += 1;
        }
    }
    // (One whose handshake took longer than the rollback found the new server already past it.)
    assert!(
        saw_rollback >= 40,
        "seed {seed}: only {saw_rollback} of 50 saw the rollback"
    );
    // Others are drawn from the restored server's snapshots at once: the interpolator
    // started over at the restored tick instead of holding the dead owner's newer ones.
    net.run_ticks(20);
    let restored_tick = net.core(1).world().tick().0;
    assert!(
        restored_tick < crash_tick,
        "seed {seed}: the test needs the rollback visible"
    );
    for client in &net.clients {
        let newest = client.interpolator.newest_tick().unwrap();
        assert!(
            newest <= restored_tick,
            "seed {seed}: drawing tick {newest}, the match is at {restored_tick}"
        );
    }
    // And play goes on.
    net.run_ticks(2 * TICK_HZ);
    assert_eq!(net.connected_to(1), 50);
}

#[test]
fn two_handoffs_in_a_row_are_both_followed() {
    let seed = 23;
    let mut net = SimNet::new(SimConfig {
        seed,
        servers: 3,
        ..SimConfig::default()
    });
    for _ in 0..20 {
        net.add_client(LinkConfig::lossy(0.02, 20, 5), Behavior::Wander);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.run_ticks(2 * TICK_HZ);
    net.hand_off(0, 1);
    assert!(
        net.run_until(3 * TICK_HZ, |n| n.connected_to(1) == 20),
        "seed {seed}: first"
    );
    net.run_ticks(2 * TICK_HZ);
    // The second owner numbers its tokens afresh; clients must not take its redirect
    // for a stale one.
    net.hand_off(1, 2);
    assert!(
        net.run_until(3 * TICK_HZ, |n| n.connected_to(2) == 20),
        "seed {seed}: only {} followed the second handoff",
        net.connected_to(2)
    );
    net.stop_playing();
    net.run_until(3 * TICK_HZ, |n| n.inputs_unapplied() == 0);
    assert_eq!(net.inputs_unapplied(), 0, "seed {seed}");
    for client in &net.clients {
        assert_eq!(client.session.stats().handoffs_followed, 2, "seed {seed}");
    }
}
