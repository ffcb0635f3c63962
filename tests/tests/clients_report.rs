//! What `GET /clients` says about each client, checked against a simulated network whose
//! latency and loss are known: the round trip, the share not acknowledged, the bytes and
//! the snapshot rate the core reports ([`ServerCore::report_clients`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use arena_client::bots::shooter::Behavior;
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};

#[test]
fn the_clients_report_matches_the_network_they_play_over() {
    let seed = 12;
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 8,
        ..SimConfig::default()
    });
    // 40 ms each way, clean; and 20% loss each way, no delay.
    let far = net.add_client(LinkConfig::lossy(0.0, 40, 0), Behavior::Wander);
    let lossy = net.add_client(LinkConfig::lossy(0.2, 0, 0), Behavior::Wander);
    assert!(net.run_until(600, SimNet::all_connected), "seed {seed}");
    // Long enough for a few hundred packets each to leave the 256-packet ack window.
    net.run_ticks(60 * 10);
    let now = net.now;
    let first = net.server_mut().report_clients(now);
    net.run_ticks(30);
    let now = net.now;
    let report = net.server_mut().report_clients(now);
    assert_eq!(first.len(), 2, "seed {seed}");
    assert_eq!(report.len(), 2, "seed {seed}");
    let by_id = |n: usize| {
        let addr = net.clients[n].addr.to_string();
        report
            .iter()
            .find(|c| c.address == addr)
            .unwrap_or_else(|| panic!("client {n} not listed: {report:?}"))
    };
    let far = by_id(far);
    let lossy = by_id(lossy);

    // 80 ms of network, plus what the client waits before it answers (up to one of its
    // 60 Hz ticks) and what the simulation's step adds.
    let rtt = far.rtt_ms.expect("acknowledged");
    println!(
        "rtt over 2 x 40 ms: {rtt:.1} ms; loss over 20% each way: {:.3}",
        lossy.loss
    );
    assert!((80.0..=110.0).contains(&rtt), "rtt {rtt}: {far:?}");
    assert!(far.loss < 0.02, "{far:?}");
    assert_eq!(far.packets_lost, 0, "{far:?}");
    // A fifth of the server's packets are lost on the way; an acknowledgement rides in
    // each of the next 32 packets back, so lost acks hardly count.
    assert!(
        (0.08..=0.35).contains(&lossy.loss),
        "loss {}: {lossy:?}",
        lossy.loss
    );
    // The totals lean low: the newest 256 packets are counted once acknowledged, but
    // judged lost only once they leave the window.
    let judged = (lossy.packets_acked + lossy.packets_lost) as f64;
    let lost_share = lossy.packets_lost as f64 / judged;
    assert!(
        (0.05..=0.3).contains(&lost_share),
        "{lost_share}: {lossy:?}"
    );

    for client in [far, lossy] {
        // One snapshot a tick at 60 Hz, over the half second since the first report.
        assert!(
            (50.0..=62.0).contains(&client.snapshot_rate),
            "rate: {client:?}"
        );
        assert!(client.bytes_in > 0 && client.bytes_out > 0, "{client:?}");
        assert!(client.idle_s < 0.5, "{client:?}");
        assert!(client.connected_s > 10.0, "{client:?}");
        assert!(!client.name.is_empty(), "{client:?}");
        assert!(client.player.is_some() && !client.spectator, "{client:?}");
        // The client keeps its inputs in time (its lead adapts to 99% of them), and the
        // server sees the lead: the least margin of the last half second, not late.
        let late = client.inputs_late_ratio.expect("inputs arrived");
        println!(
            "{}: {late:.4} late, margin {:?} ticks",
            client.address, client.input_margin_ticks
        );
        // Ever, so the first second (while the lead adapts) is in it: 0.96% and 0.94%
        // here (seeded).
        assert!(late < 0.02, "{late} late: {client:?}");
        let margin = client
            .input_margin_ticks
            .expect("inputs in the last half second");
        assert!(margin >= 0, "margin {margin}: {client:?}");
    }
    // The margin is of the frames since the previous report: a report right after has
    // seen none.
    let now = net.now;
    let again = net.server_mut().report_clients(now);
    assert!(
        again.iter().all(|c| c.input_margin_ticks.is_none()),
        "{again:?}"
    );
    // What the clients were sent and sent is (nearly) all the traffic: the rest is the
    // handshakes and netcode's own keep-alives.
    let stats = net.server().netcode_stats();
    let out: u64 = report.iter().map(|c| c.bytes_out).sum();
    let into: u64 = report.iter().map(|c| c.bytes_in).sum();
    assert!(out <= stats.bytes_sent && out as f64 > 0.95 * stats.bytes_sent as f64);
    assert!(into <= stats.bytes_received && into as f64 > 0.9 * stats.bytes_received as f64);
}
