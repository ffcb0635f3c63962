//! Handoff and recovery with real processes on loopback: an owner, a standby and 50 bots.
//! Processes are stopped by their ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use arena_tests::procs::{
    ServerProcess, TempDir, get_json, post_json, signal, temp_dir, wait_status,
};
use serde_json::Value;

const BOTS: u64 = 50;

/// A standby watching match "default", then an owner that lists it as its peer, in a
/// directory removed when the returned guard is dropped (after both processes).
fn pair(label: &str) -> (TempDir, ServerProcess, ServerProcess) {
    let dir = temp_dir(label);
    let standby = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let peer = standby.udp.to_string();
    let owner = ServerProcess::start(&dir, &["--peer", &peer]);
    (dir, owner, standby)
}

fn bots_against(owner: &ServerProcess, seconds: &str) -> arena_tests::procs::BotsRun {
    arena_tests::procs::bots_against(owner, BOTS as u32, seconds.parse().unwrap(), &[])
}

fn report(run: arena_tests::procs::BotsRun) -> Value {
    arena_tests::procs::bots_report(run)
}

#[test]
fn a_handoff_by_post_moves_every_bot_and_loses_no_input() {
    let (_dir, owner, standby) = pair("handoff");
    let bots = bots_against(&owner, "6");
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"{}\"}}", standby.admin),
    );
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["udp"], standby.udp.to_string());
    // A retired owner hands nothing off again (its match is the standby's).
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"{}\"}}", standby.admin),
    );
    assert_eq!(code, 502, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("retired"),
        "{answer}"
    );
    let report = report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["bots_handed_off"], BOTS, "{report}");
    // Every bot switched over the connection it opened ahead (make before break).
    assert_eq!(report["handoffs_prepared"], BOTS, "{report}");
    assert_eq!(report["prepares_abandoned"], 0, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    assert_eq!(report["inputs_unaccounted"], 0, "{report}");
    let status = get_json(&format!("{}/status", standby.admin_url()));
    assert_eq!(status["role"], "owner");
    assert_eq!(status["epoch"], 2);
    assert_eq!(status["handoffs"], 1);
    assert!(status["handoff_pause_ms"].as_f64().is_some(), "{status}");
    // The old owner leaves once its players have.
    assert!(owner.wait_exit(Duration::from_secs(15)).success());
    standby.terminate();
}

#[test]
fn after_kill_9_every_bot_is_back_on_the_standby() {
    let (_dir, owner, standby) = pair("kill");
    let bots = bots_against(&owner, "8");
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    owner.kill();
    let status = wait_status(&standby, "standby took over", |s| s["role"] == "owner");
    assert_eq!(status["restores"], 1);
    // A crash: the ticks the owner ran after its last renewal are unknown, so the
    // exact figure is null with its reason, and a lower bound is given.
    assert!(status["rollback_ticks"].is_null(), "{status}");
    assert!(status["rollback_ticks_reason"].is_string(), "{status}");
    assert!(
        status["rollback_ticks_at_least"].as_u64().unwrap() <= 60 + 15,
        "{status}"
    );
    wait_status(&standby, "bots back", |s| s["players"] == BOTS);
    let report = report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert!(report["reconnects"].as_u64().unwrap() >= BOTS, "{report}");
    let gap = report["max_snapshot_gap_ms"].as_f64().unwrap();
    assert!(
        gap < 5000.0,
        "a bot went {gap} ms without a snapshot: {report}"
    );
    standby.terminate();
}

#[test]
fn an_owner_paused_past_its_lease_never_ticks_or_writes_again() {
    let (_dir, owner, standby) = pair("stop");
    let bots = bots_against(&owner, "8");
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    signal(owner.pid(), "STOP");
    wait_status(&standby, "standby took over", |s| s["role"] == "owner");
    wait_status(&standby, "bots back", |s| s["players"] == BOTS);
    let snapshot_before = wait_status(&standby, "the new owner snapshots", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    signal(owner.pid(), "CONT");
    // It finds itself fenced and exits with its own code, having ticked nothing.
    let exit = owner.wait_exit(Duration::from_secs(15));
    assert_eq!(exit.code(), Some(3), "{exit:?}");
    let report = report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    let status = get_json(&format!("{}/status", standby.admin_url()));
    assert_eq!(status["role"], "owner");
    assert_eq!(status["epoch"], 2);
    assert!(
        status["last_snapshot_tick"].as_u64() >= snapshot_before["last_snapshot_tick"].as_u64()
    );
    assert_eq!(status["snapshot_write_errors"], 0, "{status}");
    standby.terminate();
}

#[test]
fn a_handoff_to_an_unreachable_standby_fails_and_the_match_goes_on() {
    let dir = temp_dir("nohandoff");
    let owner = ServerProcess::start(&dir, &[]);
    let before = wait_status(&owner, "ticking", |s| s["tick"].as_u64() > Some(30));
    // A port that was free a moment ago: no standby listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"127.0.0.1:{port}\"}}"),
    );
    assert_eq!(code, 502, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("cannot reach"),
        "{answer}"
    );
    let tick = before["tick"].as_u64().unwrap();
    let after = wait_status(&owner, "still ticking", |s| {
        s["tick"].as_u64() > Some(tick + 60)
    });
    assert_eq!(after["role"], "owner");
    assert_eq!(after["epoch"], 1);
    owner.terminate();
}

#[test]
fn the_admin_token_guards_what_changes_things() {
    let dir = temp_dir("token-auth");
    let server = ServerProcess::start(&dir, &["--admin-token", "s3cret"]);
    let admin = server.admin_url();
    let (code, _) = post_json(&format!("{admin}/token"), "{\"name\": \"x\"}");
    assert_eq!(code, 401);
    let (code, _) = post_json(&format!("{admin}/handoff"), "{\"to\": \"127.0.0.1:1\"}");
    assert_eq!(code, 401);
    // Reading needs no token.
    wait_status(&server, "the match running", |s| s["role"] == "owner");
    let (code, _) = arena_tests::procs::http_with(
        &format!("{admin}/token"),
        "POST",
        Some("{\"name\": \"x\"}".into()),
        Some("s3cret"),
    );
    assert_eq!(code, 200);
    server.terminate();
}

#[test]
fn a_second_owner_of_a_live_match_refuses_to_start() {
    let dir = temp_dir("second-owner");
    let owner = ServerProcess::start(&dir, &[]);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    let out = std::process::Command::new(arena_tests::procs::bin_path("arena-server"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&*dir)
        .arg("--key-file")
        .arg(dir.join("test.key"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refusing to start a second owner"),
        "{stderr}"
    );
    owner.terminate();
}
