//! The real binaries on loopback: `arena-server` on OS-chosen ports, `arena-bots` against
//! it, the admin API, and a graceful stop by process id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use arena_tests::procs::{ServerProcess, get_json, http, run_bots, temp_dir};
use serde_json::Value;

#[test]
fn twenty_bots_play_against_the_real_server() {
    let dir = temp_dir("loopback");
    let server = ServerProcess::start(&dir, &["--max-players", "64", "--match-id", "loop"]);
    let admin = server.admin_url();
    let (status, stdout, stderr) = run_bots(
        &[
            "--admin",
            &admin,
            "--count",
            "20",
            "--duration",
            "3",
            "--behavior",
            "chase",
        ],
        Duration::from_secs(60),
    );
    assert!(status.success(), "arena-bots failed: {status:?}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line expected, got:\n{stdout}");
    let report: Value = serde_json::from_str(lines[0]).expect("JSON report");
    assert_eq!(report["bots"], 20);
    assert_eq!(report["connected"], 20, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    assert!(
        report["inputs_sent"].as_u64().unwrap() >= 20 * 3 * 50,
        "{report}"
    );
    let rate = report["snapshots_per_bot_per_s"].as_f64().unwrap();
    assert!(
        rate > 50.0 && rate < 65.0,
        "{rate} snapshots per second: {report}"
    );
    for field in [
        "rtt_ms_p50",
        "rtt_ms_p99",
        "down_bytes_per_bot_per_s",
        "up_bytes_per_bot_per_s",
        "max_snapshot_gap_ms",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }

    // The loop publishes its status every half second: wait (bounded) for the one that
    // covers the bots' last inputs.
    let applied = report["inputs_applied"].as_u64().unwrap();
    let mut status = get_json(&format!("{admin}/status"));
    for _ in 0..30 {
        if status["inputs_applied"].as_u64().unwrap() >= applied {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        status = get_json(&format!("{admin}/status"));
    }
    assert_eq!(status["match_id"], "loop");
    assert_eq!(status["tick_hz"], 60);
    assert!(status["tick"].as_u64().unwrap() > 60, "{status}");
    assert_eq!(status["max_players"], 64);
    assert_eq!(
        status["inputs_applied"].as_u64().unwrap(),
        applied,
        "{status}"
    );
    assert!(status["tick_us_p99"].as_u64().unwrap() > 0, "{status}");
    assert!(status["bytes_out_per_s"].as_f64().is_some(), "{status}");
    assert!(status["drops"]["replayed"].is_u64(), "{status}");

    let (code, body) = http(&format!("{admin}/metrics"), "GET", None);
    assert_eq!(code, 200);
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.contains("arena_tick_duration_seconds_count{match_id=\"loop\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "arena_inputs_applied_total{{match_id=\"loop\"}} {applied}"
        )),
        "{metrics}"
    );

    let exit = server.terminate();
    assert!(exit.success(), "server exit after SIGTERM: {exit:?}");
}

#[test]
fn the_token_endpoint_refuses_bad_bodies_with_a_reason() {
    let dir = temp_dir("token");
    let server = ServerProcess::start(&dir, &[]);
    let admin = server.admin_url();
    for body in [
        "not json",
        "{\"nom\": \"x\"}",
        "{\"name\": \"\"}",
        "{\"name\": 7}",
    ] {
        let (status, answer) = http(&format!("{admin}/token"), "POST", Some(body.into()));
        assert_eq!(status, 400, "{body}");
        let answer: Value = serde_json::from_slice(&answer).unwrap();
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}: {answer}"
        );
    }
    let (status, answer) = http(
        &format!("{admin}/token"),
        "POST",
        Some("{\"name\": \"ann\"}".into()),
    );
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let token = arena_shared::netcode::ConnectToken::read(&base64_decode(
        answer["token"].as_str().unwrap(),
    ))
    .expect("a standard 2048-byte token");
    assert_eq!(token.server_addresses, vec![server.udp]);
    assert_eq!(answer["expires_at"].as_u64(), Some(token.expire_timestamp));
    assert!(answer["client_id"].as_u64().is_some());
    server.kill();
}

fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
}
