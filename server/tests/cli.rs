//! The binary's front door: flags and files that are wrong give one line and a non-zero
//! exit, never a panic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_arena-server"))
}

/// A fresh directory, removed when the returned guard is dropped.
fn temp_dir(label: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("arena-cli-{label}-"))
        .tempdir()
        .unwrap()
}

/// Runs the server expecting it to refuse; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = server()
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "{args:?} was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
    stderr
}

#[test]
fn help_explains_the_flags() {
    let out = server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--tick-hz",
        "--max-players",
        "--match-id",
        "--protocol-id",
        "--key-file",
        "--data-dir",
        "--admin",
    ] {
        assert!(help.contains(flag), "--help does not mention {flag}");
    }
}

#[test]
fn a_bad_key_file_is_one_clear_line() {
    let dir = temp_dir("badkey");
    let key = dir.path().join("bad.key");
    std::fs::write(&key, "not a key").unwrap();
    let stderr = refused(&[
        "--key-file",
        key.to_str().unwrap(),
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(stderr.contains("64 hex characters"), "{stderr}");
    let missing = refused(&["--key-file", "/nonexistent/arena.key"]);
    assert!(missing.contains("cannot read key file"), "{missing}");
}

#[test]
fn a_port_in_use_is_one_clear_line() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = temp_dir("port");
    let out = server()
        .args([
            "--listen",
            &addr,
            "--admin",
            "127.0.0.1:0",
            "--data-dir",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("cannot bind UDP {addr}")),
        "{stderr}"
    );
}

#[test]
fn bad_flags_are_refused() {
    assert!(refused(&["--tick-hz", "0"]).contains("--tick-hz"));
    assert!(refused(&["--protocol-id", "0xnope"]).contains("0x-hex"));
    assert!(refused(&["--listen", "nowhere"]).contains("--listen"));
}
