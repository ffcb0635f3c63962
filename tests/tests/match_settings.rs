//! What shapes a match (its capacity, which sets the arena's size; its tick rate; its
//! seed) travels with the match: a restart resumes the stored match with its own settings
//! and refuses flags that conflict with them, `--new-match` starts a fresh one on purpose,
//! and a standby that receives a match keeps the match's capacity, not its own.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use arena_tests::procs::{
    ServerProcess, bin_path, post_json, run_bots, status, temp_dir, wait_bounded, wait_status,
};

/// Runs `arena-server` on `dir` with `args` expecting it to refuse to start: its exit
/// status and what it printed.
fn refused_start(dir: &std::path::Path, args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = Command::new(bin_path("arena-server"))
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--key-file")
        .arg(dir.join("test.key"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_bounded(&mut child, Duration::from_secs(20));
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        use std::io::Read;
        let _ = pipe.read_to_string(&mut stderr);
    }
    (status, stderr)
}

#[test]
fn a_restart_resumes_the_match_with_its_settings_and_refuses_conflicting_flags() {
    let dir = temp_dir("settings-restart");
    let first = ServerProcess::start(&dir, &["--max-players", "8", "--seed", "42"]);
    let started = wait_status(&first, "a snapshot written", |s| {
        s["last_snapshot_tick"].as_u64() > Some(5)
    });
    assert_eq!(started["max_players"], 8);
    assert!(first.terminate().success());

    // A flag that conflicts with the stored match: refused, naming the flag, the match's
    // value and the way out.
    let (exit, stderr) = refused_start(&dir, &["--max-players", "16"]);
    assert!(!exit.success(), "{stderr}");
    assert!(
        stderr.contains("--max-players 16 (the match has 8)"),
        "{stderr}"
    );
    assert!(stderr.contains("--new-match"), "{stderr}");
    let (exit, stderr) = refused_start(&dir, &["--seed", "7", "--tick-hz", "30"]);
    assert!(!exit.success(), "{stderr}");
    assert!(stderr.contains("--seed 7 (the match has 42)"), "{stderr}");
    assert!(
        stderr.contains("--tick-hz 30 (the match has 60)"),
        "{stderr}"
    );

    // No flags, or flags that agree: the match resumes as it was.
    let resumed = ServerProcess::start(&dir, &["--seed", "42"]);
    let again = wait_status(&resumed, "the match resumed", |s| s["role"] == "owner");
    assert_eq!(again["max_players"], 8, "{again}");
    assert_eq!(again["restores"], 1, "{again}");
    assert_eq!(again["rollback_ticks"], 0, "{again}");
    let resumed_tick = again["tick"].as_u64().unwrap();
    assert!(resumed_tick > 5, "{again}");
    assert!(resumed.terminate().success());

    // --new-match: a fresh match with the flags given, at the next epoch.
    let fresh = ServerProcess::start(&dir, &["--new-match", "--max-players", "16"]);
    let now = wait_status(&fresh, "the fresh match runs", |s| s["role"] == "owner");
    assert_eq!(now["max_players"], 16, "{now}");
    assert_eq!(now["restores"], 0, "{now}");
    assert_eq!(now["epoch"], 3, "{now}");
    assert!(now["tick"].as_u64().unwrap() < resumed_tick, "{now}");
    assert!(fresh.terminate().success());
}

#[test]
fn a_standby_with_more_slots_keeps_the_capacity_of_the_match_it_receives() {
    let dir = temp_dir("settings-handoff");
    let standby = ServerProcess::start(&dir, &["--standby"]);
    let owner = ServerProcess::start(&dir, &["--max-players", "4"]);
    wait_status(&owner, "the owner runs", |s| s["role"] == "owner");
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"{}\"}}", standby.admin),
    );
    assert_eq!(code, 200, "{answer}");
    let took = wait_status(&standby, "the standby owns the match", |s| {
        s["role"] == "owner"
    });
    assert_eq!(took["max_players"], 4, "{took}");
    // Five players try: four get in, the fifth is denied as by a full server.
    let admin = standby.admin_url();
    let (exit, stdout, stderr) = run_bots(
        &["--admin", &admin, "--count", "5", "--duration", "1"],
        Duration::from_secs(60),
    );
    assert!(
        !exit.success(),
        "one bot cannot connect: {stdout}\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(report["connected"], 4, "{report}");
    assert_eq!(report["connect_failures"], 1, "{report}");
    assert!(status(&standby)["drops"]["server_full"].as_u64() >= Some(1));
    standby.terminate();
}
