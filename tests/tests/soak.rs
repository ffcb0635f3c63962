//! The soak runner, briefly (CI) and for long (opt-in: `cargo test -p arena-tests --test
//! soak -- --ignored`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use arena_tests::procs::bin_path;

fn soak(args: &[&str]) -> serde_json::Value {
    let out = Command::new(bin_path("arena-soak"))
        .args(args)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert!(out.status.success(), "soak failed: {report}");
    report
}

#[test]
fn a_short_soak_passes_its_checks() {
    let report = soak(&["--bots", "30", "--duration", "8"]);
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["bots_report"]["connected"], 30, "{report}");
    let server = &report["server"];
    assert!(server["status_samples"].as_u64().unwrap() >= 5, "{report}");
    assert!(server["rss_kb_max"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_short_soak_through_a_crash_loses_only_the_rollback() {
    let report = soak(&["--bots", "30", "--duration", "10", "--crashes", "1"]);
    assert_eq!(report["ok"], true, "{report}");
    let bots = &report["bots_report"];
    assert_eq!(bots["connected"], 30, "{report}");
    assert!(bots["reconnects"].as_u64().unwrap() >= 30, "{report}");
    assert_eq!(bots["inputs_lost"], bots["inputs_rolled_back"], "{report}");
}

#[test]
fn a_short_soak_through_two_handoffs_loses_nothing() {
    let report = soak(&["--bots", "30", "--duration", "10", "--handoffs", "2"]);
    assert_eq!(report["ok"], true, "{report}");
    let bots = &report["bots_report"];
    assert_eq!(bots["handoffs_prepared"], 30, "{report}");
    assert_eq!(bots["inputs_lost"], 0, "{report}");
}

#[test]
#[ignore = "ten minutes; run by hand"]
fn a_ten_minute_soak_with_200_bots_holds_steady() {
    let report = soak(&["--bots", "200", "--duration", "600"]);
    let server = &report["server"];
    // Memory settles once every player is in: no more than 20 % growth after warm-up.
    let warm = server["rss_kb_warm"].as_u64().unwrap();
    let max = server["rss_kb_max"].as_u64().unwrap();
    assert!(
        max * 5 <= warm * 6,
        "memory grew from {warm} to {max} KiB: {report}"
    );
}
