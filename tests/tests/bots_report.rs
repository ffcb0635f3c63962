//! `arena-bots` tells the truth, with real processes on loopback: it joins any Arena
//! server (one whose admin API wants a token, one ticking at 30 Hz), says at once what is
//! likely wrong when it cannot connect, prints its report when stopped by a signal, and
//! counts the bots that lost their server mid-run. Processes are stopped by their ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test driver: it times how long the bots take to stop or to give up.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use arena_tests::procs::{
    BotsRun, ServerProcess, bots_against, one_at_a_time, run_bots, signal, spawn_bots,
    spawn_bots_with_env, temp_dir, wait_status,
};
use serde_json::Value;

const BOTS: u64 = 5;

/// The bots' exit status, report and stderr, waited for at most `limit`.
fn finish(run: BotsRun, limit: Duration) -> (Option<i32>, Value, String) {
    let (status, stdout, stderr) = run.wait(limit);
    let report = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("no JSON report ({e}): {stdout}\n{stderr}"));
    (status.code(), report, stderr)
}

#[test]
fn sigterm_and_sigint_stop_the_bots_with_their_report_and_the_signals_code() {
    let _one = one_at_a_time();
    let dir = temp_dir("bots-signal");
    let server = ServerProcess::start(&dir, &["--max-players", "16"]);
    for (name, code) in [("TERM", 143), ("INT", 130)] {
        let bots = bots_against(&server, BOTS as u32, 60.0, &[]);
        wait_status(&server, "every bot playing", |s| s["players"] == BOTS);
        let started = Instant::now();
        signal(bots.pid(), name);
        let (exit, report, stderr) = finish(bots, Duration::from_secs(10));
        assert_eq!(exit, Some(code), "SIG{name}: {report}\n{stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(report["bots"], BOTS, "{report}");
        assert_eq!(report["connected"], BOTS, "{report}");
        assert_eq!(report["disconnects"], 0, "{report}");
        assert_eq!(report["first_error"], Value::Null, "{report}");
        assert!(report["inputs_sent"].as_u64() > Some(0), "{report}");
        // The bots left cleanly: the server sees them go.
        wait_status(&server, "the bots left", |s| s["players"] == 0);
    }
    server.terminate();
}

#[test]
fn bots_whose_server_dies_mid_run_report_it_and_exit_3() {
    let _one = one_at_a_time();
    for stop in ["kill", "terminate"] {
        let dir = temp_dir("bots-lost");
        let server = ServerProcess::start(&dir, &[]);
        let bots = bots_against(&server, BOTS as u32, 2.5, &[]);
        wait_status(&server, "every bot playing", |s| s["players"] == BOTS);
        let udp = server.udp;
        if stop == "kill" {
            server.kill();
        } else {
            assert!(server.terminate().success());
        }
        let (exit, report, stderr) = finish(bots, Duration::from_secs(30));
        assert_eq!(exit, Some(3), "{stop}: {report}\n{stderr}");
        assert_eq!(report["disconnects"], BOTS, "{stop}: {report}");
        assert_eq!(report["connected"], 0, "{stop}: {report}");
        assert_eq!(report["connect_failures"], 0, "{stop}: {report}");
        let error = report["first_error"].as_str().unwrap_or_default();
        let expected = if stop == "kill" {
            format!("server {udp} stopped answering")
        } else {
            format!("server {udp} disconnected this client")
        };
        assert!(error.contains(&expected), "{stop}: {error}");
        assert!(error.contains("lost the match"), "{stop}: {error}");
        assert!(stderr.contains(&expected), "{stop}: {stderr}");
    }
}

#[test]
fn bots_pace_their_inputs_at_a_30_hz_servers_rate() {
    let _one = one_at_a_time();
    let dir = temp_dir("bots-30hz");
    let server = ServerProcess::start(&dir, &["--tick-hz", "30"]);
    let seconds = 3.0;
    let (exit, report, stderr) = finish(
        bots_against(&server, BOTS as u32, seconds, &[]),
        Duration::from_secs(30),
    );
    assert_eq!(exit, Some(0), "{report}\n{stderr}");
    let late = report["inputs_late_ratio"].as_f64().unwrap();
    assert!(late < 0.01, "{late} of the inputs late: {report}");
    // About 30 frames a second each, not 60.
    let sent = report["inputs_sent"].as_f64().unwrap();
    let expected = BOTS as f64 * 30.0 * seconds;
    assert!(
        sent > expected * 0.8 && sent < expected * 1.15,
        "{sent} frames, expected about {expected}: {report}"
    );
    let rate = report["snapshots_per_bot_per_s"].as_f64().unwrap();
    assert!(
        rate > 25.0 && rate < 35.0,
        "{rate} snapshots a second: {report}"
    );
    assert_eq!(report["inputs_lost"], 0, "{report}");
    server.terminate();
}

#[test]
fn a_wrong_key_or_protocol_id_fails_in_under_three_seconds_and_says_so() {
    let _one = one_at_a_time();
    let dir = temp_dir("bots-wrong-key");
    let server = ServerProcess::start(&dir, &[]);
    let udp = server.udp.to_string();
    let other_key = dir.join("other.key");
    std::fs::write(&other_key, "11".repeat(32)).unwrap();
    let right_key = dir.join("test.key");
    let other_key = other_key.display().to_string();
    let right_key = right_key.display().to_string();
    for (key, protocol_id) in [
        (&other_key, "0x4152454e41000001"),
        (&right_key, "0x4152454e41000002"),
    ] {
        let started = Instant::now();
        let (exit, stdout, stderr) = run_bots(
            &[
                "--server",
                &udp,
                "--key-file",
                key,
                "--protocol-id",
                protocol_id,
                "--count",
                "2",
                "--duration",
                "1",
            ],
            Duration::from_secs(20),
        );
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "{took:?}: {stderr}");
        assert_eq!(exit.code(), Some(2), "{stdout}\n{stderr}");
        let report: Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(report["connect_failures"], 2, "{report}");
        let error = report["first_error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!(
                "could not connect: no answer from {udp}: wrong key or protocol id, or the server is down"
            )),
            "{error}"
        );
    }
    // The right key and protocol id connect: it was the key, not the server.
    let (exit, stdout, stderr) = run_bots(
        &[
            "--server",
            &udp,
            "--key-file",
            &right_key,
            "--count",
            "2",
            "--duration",
            "1",
        ],
        Duration::from_secs(20),
    );
    assert!(exit.success(), "{stdout}\n{stderr}");
    server.terminate();
}

#[test]
fn an_admin_api_that_wants_a_token_gets_it_from_the_flag_or_the_environment() {
    let _one = one_at_a_time();
    let dir = temp_dir("bots-admin-token");
    let server = ServerProcess::start(&dir, &["--admin-token", "s3cret"]);
    let admin = server.admin_url();
    let base = ["--admin", admin.as_str(), "--count", "2", "--duration", "1"];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        [base, extra].concat()
    }

    let (exit, report, stderr) = finish(spawn_bots(&base), Duration::from_secs(20));
    assert_eq!(exit, Some(2), "{report}\n{stderr}");
    assert!(
        stderr.contains("the admin API wants a token: pass --admin-token or set ARENA_ADMIN_TOKEN"),
        "{stderr}"
    );
    let (exit, _, stderr) = finish(
        spawn_bots(&with(&base, &["--admin-token", "wrong"])),
        Duration::from_secs(20),
    );
    assert_eq!(exit, Some(2), "{stderr}");
    assert!(stderr.contains("refused the admin token"), "{stderr}");

    let (exit, report, stderr) = finish(
        spawn_bots(&with(&base, &["--admin-token", "s3cret"])),
        Duration::from_secs(20),
    );
    assert_eq!(exit, Some(0), "{report}\n{stderr}");
    assert_eq!(report["connected"], 2, "{report}");
    let (exit, report, stderr) = finish(
        spawn_bots_with_env(&base, &[("ARENA_ADMIN_TOKEN", "s3cret")]),
        Duration::from_secs(20),
    );
    assert_eq!(exit, Some(0), "{report}\n{stderr}");
    assert_eq!(report["connected"], 2, "{report}");
    server.terminate();
}

#[test]
fn flags_that_mean_nothing_are_refused_with_code_1() {
    // --server names the server only in locally minted tokens.
    let (exit, stdout, stderr) = run_bots(
        &["--server", "127.0.0.1:9", "--admin", "http://127.0.0.1:9"],
        Duration::from_secs(10),
    );
    assert_eq!(exit.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stderr.contains("--key-file"), "{stderr}");
    // The tick rate comes from the server now.
    let (exit, _, stderr) = run_bots(&["--tick-hz", "30"], Duration::from_secs(10));
    assert_eq!(exit.code(), Some(1), "{stderr}");
    // --help documents the exit codes and still exits 0.
    let (exit, stdout, _) = run_bots(&["--help"], Duration::from_secs(10));
    assert!(exit.success());
    assert!(
        stdout.contains("Exit codes") && stdout.contains("143"),
        "{stdout}"
    );
    assert!(stdout.contains("ARENA_ADMIN_TOKEN"), "{stdout}");
}
