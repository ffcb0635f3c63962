//! arena-bots' front door.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn bots() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arena-bots"))
}

#[test]
fn help_lists_the_flags() {
    let out = bots().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--server",
        "--admin",
        "--count",
        "--duration",
        "--seed",
        "--behavior",
        "--key-file",
        "--protocol-id",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn an_unreachable_admin_api_is_a_clear_failure() {
    // A TCP port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = bots()
        .args([
            "--admin",
            &format!("http://127.0.0.1:{port}"),
            "--count",
            "2",
            "--duration",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("a JSON report still");
    assert_eq!(report["connect_failures"], 2);
}

#[test]
fn a_bad_key_file_is_refused() {
    let file = tempfile::Builder::new()
        .prefix("arena-bots-key-")
        .tempfile()
        .unwrap();
    std::fs::write(file.path(), "1234").unwrap();
    let out = bots()
        .args(["--key-file", file.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("64 hex characters"));
}
