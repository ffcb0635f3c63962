//! The operator's API on real processes over loopback: health and readiness probes, the
//! connected clients, and a drain (alone, and with a handoff to a standby). The limits
//! (body sizes, deadlines, slow-loris heads, concurrency) are tested in-process in
//! `server/src/admin.rs`. Processes are stopped by their ids.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use arena_tests::procs::{
    ServerProcess, bots_against, bots_report, get_json, http, http_with, one_at_a_time, run_bots,
    temp_dir, wait_status,
};
use serde_json::Value;

const TOKEN: &str = "admin-api-test-token";

/// `method url` with the test's bearer token (or none): status and JSON (Null if none).
fn call(url: &str, method: &str, body: Option<&str>, bearer: Option<&str>) -> (u16, Value) {
    let (code, answer) = http_with(url, method, body.map(str::to_owned), bearer);
    (code, serde_json::from_slice(&answer).unwrap_or(Value::Null))
}

/// Polls `GET url` (every 50 ms, at most 10 s) until it answers `code`; returns the JSON.
fn wait_code(url: &str, code: u16) -> Value {
    let mut last = (0, Value::Null);
    for _ in 0..200 {
        last = call(url, "GET", None, None);
        if last.0 == code {
            return last.1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("GET {url}: expected {code}, last {last:?}");
}

#[test]
fn an_owner_is_healthy_and_ready_lists_its_clients_and_drains() {
    let _one = one_at_a_time();
    let dir = temp_dir("admin-drain");
    let owner = ServerProcess::start(&dir, &["--admin-token", TOKEN]);
    let admin = owner.admin_url();
    let health = wait_code(&format!("{admin}/healthz"), 200);
    assert_eq!(health["ok"], true, "{health}");
    let ready = wait_code(&format!("{admin}/readyz"), 200);
    assert_eq!(ready["role"], "owner", "{ready}");

    let playing = bots_against(&owner, 3, 4.0, &["--admin-token", TOKEN]);
    wait_status(&owner, "three bots playing", |s| s["players"] == 3);

    // The clients, as the loop last published them (within half a second).
    let (code, _) = call(&format!("{admin}/clients"), "GET", None, None);
    assert_eq!(code, 401, "/clients without the token");
    let mut clients = Value::Null;
    for _ in 0..40 {
        let (code, listed) = call(&format!("{admin}/clients"), "GET", None, Some(TOKEN));
        assert_eq!(code, 200, "{listed}");
        let settled = listed.as_array().is_some_and(|l| {
            l.len() == 3
                && l.iter()
                    .all(|c| c["rtt_ms"].is_f64() && c["snapshot_rate"].as_f64() > Some(0.0))
        });
        clients = listed;
        if settled {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = clients.as_array().expect("a list");
    assert_eq!(listed.len(), 3, "{clients}");
    for client in listed {
        let rtt = client["rtt_ms"].as_f64().unwrap_or(-1.0);
        assert!(rtt > 0.0 && rtt < 1000.0, "rtt {rtt}: {client}");
        assert!(
            client["name"].as_str().unwrap().starts_with("bot-"),
            "{client}"
        );
        assert!(client["client_id"].is_u64(), "{client}");
        assert!(
            client["address"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:"),
            "{client}"
        );
        assert!(client["player"].is_u64(), "{client}");
        assert_eq!(client["spectator"], false, "{client}");
        assert!(client["bytes_in"].as_u64().unwrap() > 0, "{client}");
        assert!(client["bytes_out"].as_u64().unwrap() > 0, "{client}");
        let loss = client["loss"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&loss), "{client}");
        assert!(client["idle_s"].as_f64().unwrap() < 1.0, "{client}");
        // 60 Hz, one snapshot a tick unless the budget defers one.
        let rate = client["snapshot_rate"].as_f64().unwrap();
        assert!(rate > 20.0 && rate < 70.0, "rate {rate}: {client}");
    }

    // Drain: the three keep playing, a fourth is turned away.
    let (code, _) = call(&format!("{admin}/drain"), "POST", None, None);
    assert_eq!(code, 401, "/drain without the token");
    let (code, drained) = call(&format!("{admin}/drain"), "POST", None, Some(TOKEN));
    assert_eq!(code, 200, "{drained}");
    assert_eq!(drained["draining"], true, "{drained}");
    let not_ready = wait_code(&format!("{admin}/readyz"), 503);
    assert_eq!(not_ready["ready"], false, "{not_ready}");
    assert!(
        not_ready["reason"].as_str().unwrap().contains("draining"),
        "{not_ready}"
    );
    wait_code(&format!("{admin}/healthz"), 200);
    let status = get_json(&format!("{admin}/status"));
    assert_eq!(status["draining"], true, "{status}");
    assert!(
        status["version"].as_str().is_some_and(|v| !v.is_empty()),
        "{status}"
    );

    let (late, stdout, stderr) = run_bots(
        &[
            "--admin",
            &admin,
            "--admin-token",
            TOKEN,
            "--count",
            "1",
            "--duration",
            "1",
        ],
        Duration::from_secs(30),
    );
    assert!(
        !late.success(),
        "a bot joined a draining server:\n{stdout}\n{stderr}"
    );
    let late: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);
    assert_eq!(late["connect_failures"], 1, "{stdout}\n{stderr}");
    let denied = wait_status(&owner, "the late bot denied", |s| {
        s["drops"]["not_admitting"].as_u64() > Some(0)
    });
    assert_eq!(denied["players"], 3, "{denied}");

    let report = bots_report(playing);
    assert_eq!(report["connected"], 3, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    let exit = owner.terminate();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn a_drain_with_a_handoff_moves_the_match_to_a_free_standby() {
    let _one = one_at_a_time();
    let dir = temp_dir("admin-drain-handoff");
    let standby = ServerProcess::start(&dir, &["--standby", "--admin-token", TOKEN]);
    let owner = ServerProcess::start(&dir, &["--admin-token", TOKEN]);
    // A free standby is ready: it can receive a match.
    let ready = wait_code(&format!("{}/readyz", standby.admin_url()), 200);
    assert_eq!(ready["role"], "standby", "{ready}");
    let bots = bots_against(&owner, 3, 4.0, &["--admin-token", TOKEN]);
    wait_status(&owner, "three bots playing", |s| s["players"] == 3);
    // The owner's store lists the standby (it registers on start): "auto" finds it.
    let (code, answer) = call(
        &format!("{}/drain", owner.admin_url()),
        "POST",
        Some(r#"{"handoff": true}"#),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{answer}\n{}", owner.logs());
    assert_eq!(answer["draining"], true, "{answer}");
    assert_eq!(
        answer["handoff"]["to"],
        standby.admin.to_string(),
        "{answer}"
    );
    assert_eq!(
        answer["handoff"]["udp"],
        standby.udp.to_string(),
        "{answer}"
    );
    assert_eq!(answer["handoff"]["epoch"], 2, "{answer}");
    let moved = wait_status(&standby, "the standby owns the match", |s| {
        s["role"] == "owner" && s["players"] == 3
    });
    assert_eq!(moved["draining"], false, "{moved}");
    wait_code(&format!("{}/readyz", standby.admin_url()), 200);
    let old = wait_code(&format!("{}/readyz", owner.admin_url()), 503);
    assert!(old["reason"].is_string(), "{old}");
    let report = bots_report(bots);
    assert_eq!(report["connected"], 3, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["bots_handed_off"], 3, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    assert!(owner.wait_exit(Duration::from_secs(15)).success());
    let (code, _) = http(&format!("{}/healthz", standby.admin_url()), "GET", None);
    assert_eq!(code, 200);
    standby.terminate();
}

#[test]
fn a_drain_says_what_it_expects() {
    let _one = one_at_a_time();
    let dir = temp_dir("admin-drain-bad");
    let owner = ServerProcess::start(&dir, &["--admin-token", TOKEN]);
    let url = format!("{}/drain", owner.admin_url());
    for body in [r#"{"handof": true}"#, r#"{"to": "127.0.0.1:1"}"#, "[]"] {
        let (code, answer) = call(&url, "POST", Some(body), Some(TOKEN));
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(answer["error"].is_string(), "{body}: {answer}");
    }
    // Nothing was drained by a refused request.
    let ready = wait_code(&format!("{}/readyz", owner.admin_url()), 200);
    assert_eq!(ready["ready"], true, "{ready}");
    // A handoff with no standby anywhere fails; the match goes on here, draining.
    let (code, answer) = call(&url, "POST", Some(r#"{"handoff": true}"#), Some(TOKEN));
    assert_eq!(code, 502, "{answer}");
    assert_eq!(answer["draining"], true, "{answer}");
    assert!(answer["handoff_error"].is_string(), "{answer}");
    let status = wait_status(&owner, "still owner", |s| s["role"] == "owner");
    assert_eq!(status["draining"], true, "{status}");
    owner.terminate();
}
