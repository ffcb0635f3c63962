//! The server's Agones SDK client against a fake sidecar on loopback: each lifecycle call
//! reaches its path, the health task pings only while the tick loop is alive and
//! self-allocates once, and a missing sidecar is reported as unreachable.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arena_server::agones::{Agones, AgonesError, Probe, keep_healthy};
use arena_tests::agones_fake::FakeSidecar;
use tokio::sync::watch;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
}

fn block_on<F: Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

fn sdk_for(sidecar: &FakeSidecar) -> Agones {
    Agones::at(sidecar.addr())
}

#[test]
fn each_lifecycle_call_reaches_its_path_in_order() {
    let sidecar = FakeSidecar::start();
    let sdk = sdk_for(&sidecar);
    assert_eq!(sdk.address(), format!("127.0.0.1:{}", sidecar.port()));
    block_on(async {
        for (name, outcome) in [
            ("ready", sdk.ready().await),
            ("health", sdk.health().await),
            ("allocate", sdk.allocate().await),
            ("shutdown", sdk.shutdown().await),
        ] {
            if let Err(e) = outcome {
                panic!("{name} against the fake sidecar: {e}");
            }
        }
    });
    assert_eq!(sidecar.calls(), ["ready", "health", "allocate", "shutdown"]);
    assert!(
        sidecar.timed_calls().iter().all(|c| c.method == "POST"),
        "every lifecycle call is a POST: {:?}",
        sidecar.timed_calls()
    );
}

#[test]
fn a_refusing_sidecar_is_reported_with_the_call_and_its_status() {
    let sidecar = FakeSidecar::start();
    sidecar.answer_with(503);
    let outcome = block_on(sdk_for(&sidecar).ready());
    let Err(AgonesError::Refused { call, status, body }) = outcome else {
        panic!("a 503 must be a refusal, got {outcome:?}");
    };
    assert_eq!((call, status, body.as_str()), ("ready", 503, "{}"));
}

#[test]
fn a_sidecar_that_is_not_listening_is_unreachable() {
    // A port that was just free: bound by us, then released.
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("a bound socket has no address: {e}"))
    };
    let outcome = block_on(Agones::at(addr).health());
    let Err(AgonesError::Unreachable(why)) = outcome else {
        panic!("no listener must be unreachable, got {outcome:?}");
    };
    assert!(
        why.contains(&addr.to_string()),
        "the error names the sidecar's address {addr}: {why}"
    );
}

#[test]
fn health_pings_stop_while_the_tick_loop_is_stuck_and_allocate_goes_once() {
    let sidecar = FakeSidecar::start();
    let alive = Arc::new(AtomicBool::new(true));
    let players = Arc::new(AtomicBool::new(false));
    let probe = {
        let (alive, players) = (Arc::clone(&alive), Arc::clone(&players));
        move || Probe {
            loop_alive: alive.load(Ordering::SeqCst),
            has_players: players.load(Ordering::SeqCst),
        }
    };
    let runtime = runtime();
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = runtime.spawn(keep_healthy(sdk_for(&sidecar), probe, stop_rx));

    // Alive, no players: pings, no allocate.
    assert!(
        sidecar.wait_for("health", 2, Duration::from_secs(5)),
        "two health pings within 5 s: {:?}",
        sidecar.calls()
    );
    assert_eq!(sidecar.count("allocate"), 0, "no players, no allocate");

    // Players arrive: one allocate, however many seconds pass.
    players.store(true, Ordering::SeqCst);
    assert!(
        sidecar.wait_for("allocate", 1, Duration::from_secs(5)),
        "an allocate within 5 s of players arriving: {:?}",
        sidecar.calls()
    );
    let pings_then = sidecar.count("health");
    assert!(
        sidecar.wait_for("health", pings_then + 2, Duration::from_secs(5)),
        "pings go on after the allocate: {:?}",
        sidecar.calls()
    );
    assert_eq!(sidecar.count("allocate"), 1, "allocate goes exactly once");

    // The tick loop stops: after at most one ping already under way, no more for 2.5 s
    // (two and a half intervals).
    alive.store(false, Ordering::SeqCst);
    let before = sidecar.count("health");
    let more = sidecar.wait_for("health", before + 2, Duration::from_millis(2500));
    assert!(
        !more,
        "a stuck tick loop must stop the health pings: {:?}",
        sidecar.calls()
    );
    let stuck = sidecar.count("health");
    assert!(stuck <= before + 1, "at most one ping raced the flip");

    // It recovers: pings resume.
    alive.store(true, Ordering::SeqCst);
    assert!(
        sidecar.wait_for("health", stuck + 1, Duration::from_secs(5)),
        "pings resume when the loop does: {:?}",
        sidecar.calls()
    );
    assert_eq!(sidecar.count("allocate"), 1, "still a single allocate");

    // Stop ends the task.
    let _ = stop_tx.send(true);
    let ended =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    assert!(
        matches!(ended, Ok(Ok(()))),
        "keep_healthy ends within 5 s of stop"
    );
}

#[test]
fn the_health_task_survives_a_missing_sidecar_and_ends_when_its_stop_sender_goes() {
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind a loopback port: {e}"));
        listener
            .local_addr()
            .unwrap_or_else(|e| panic!("a bound socket has no address: {e}"))
    };
    let runtime = runtime();
    let (stop_tx, stop_rx) = watch::channel(false);
    let probe = || Probe {
        loop_alive: true,
        has_players: true,
    };
    let mut task = runtime.spawn(keep_healthy(Agones::at(addr), probe, stop_rx));
    // Failing calls every second (health and allocate, 2.5 intervals) do not end it...
    let early = runtime
        .block_on(async { tokio::time::timeout(Duration::from_millis(2500), &mut task).await });
    assert!(early.is_err(), "keep_healthy must not end on failed calls");
    // ...dropping the stop sender does.
    drop(stop_tx);
    let ended =
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(5), task).await });
    assert!(
        matches!(ended, Ok(Ok(()))),
        "keep_healthy ends within 5 s of its stop sender going"
    );
}

#[test]
fn the_public_address_is_the_one_agones_gave_the_game_server() {
    let sidecar = FakeSidecar::start();
    let sdk = sdk_for(&sidecar);
    let address = block_on(sdk.public_address("default"))
        .unwrap_or_else(|e| panic!("gameserver: {e}"))
        .unwrap_or_else(|| panic!("no address"));
    // The fake's GameServer: status.address 127.0.0.1, port "default" 7777.
    assert_eq!(
        address,
        "127.0.0.1:7777".parse().unwrap_or_else(|e| panic!("{e}"))
    );
    assert_eq!(sidecar.calls(), vec!["gameserver".to_owned()]);
}
