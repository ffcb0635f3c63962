//! `GET /metrics` of a real server that bots played against, checked by Prometheus's own
//! linter, `promtool check metrics`.
//!
//! promtool comes from Debian's `prometheus` package (`.ci/run` installs it when missing);
//! `ARENA_TEST_PROMTOOL` names another binary. Without one these tests fail and say so:
//! nothing is skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use arena_tests::procs::{
    ServerProcess, bots_against, bots_report, one_at_a_time, temp_dir, wait_status,
};

#[test]
fn a_real_servers_metrics_pass_promtool_after_bots_played() {
    let _one = one_at_a_time();
    let promtool = promtool();
    let dir = temp_dir("metrics");
    let server = ServerProcess::start(&dir, &["--match-id", "scraped", "--max-players", "16"]);
    let report = bots_report(bots_against(&server, 4, 2.0, &[]));
    let applied = report["inputs_applied"].as_u64().unwrap();
    assert!(applied > 0, "{report}");
    // The loop publishes every half second: wait for the status that has the bots' inputs.
    wait_status(&server, "the bots' inputs counted", |s| {
        s["inputs_applied"].as_u64() >= Some(applied)
    });

    let (content_type, text) = get_with_headers(&server, "/metrics");
    assert_eq!(content_type, arena_server::metrics::CONTENT_TYPE);
    assert_eq!(
        content_type, "text/plain; version=0.0.4; charset=utf-8",
        "the text format promtool reads"
    );

    // Counters the bots moved, typed counter.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    let m = "{match_id=\"scraped\"}";
    for counter in [
        "arena_inputs_applied_total",
        "arena_snapshots_sent_total",
        "arena_snapshot_bytes_total",
        "arena_entity_updates_total",
        "arena_udp_received_bytes_total",
        "arena_udp_sent_datagrams_total",
        "arena_loop_busy_seconds_total",
    ] {
        assert!(value(&format!("{counter}{m}")) > 0.0, "{counter}:\n{text}");
        assert!(
            text.contains(&format!("# TYPE {counter} counter\n")),
            "{counter}:\n{text}"
        );
    }
    assert!(value(&format!("arena_inputs_applied_total{m}")) >= applied as f64);
    assert_eq!(value(&format!("arena_owner{m}")), 1.0);
    assert_eq!(
        value("arena_role{match_id=\"scraped\",role=\"owner\"}"),
        1.0
    );
    assert!(text.contains("# TYPE arena_tick_duration_seconds histogram\n"));
    let ticks = value(&format!("arena_tick_duration_seconds_count{m}"));
    assert!(ticks > 60.0, "{ticks} ticks in 2 s of play:\n{text}");
    assert_eq!(
        value("arena_tick_duration_seconds_bucket{match_id=\"scraped\",le=\"+Inf\"}"),
        ticks
    );
    assert!(text.contains("arena_build_info{version=\""), "{text}");

    let (ok, output) = check_metrics(&promtool, &text);
    assert!(
        ok && output.is_empty(),
        "promtool check metrics found problems:\n{output}\nin:\n{text}"
    );

    let exit = server.terminate();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn promtool_does_flag_what_the_server_must_not_serve() {
    // The test above counts any output as a failure: prove the linter speaks up.
    let promtool = promtool();
    let (ok, output) = check_metrics(
        &promtool,
        "# HELP arena_ticks Ticks.\n# TYPE arena_ticks counter\narena_ticks 3\n",
    );
    assert!(!ok || !output.is_empty(), "promtool said nothing");
    assert!(output.contains("_total"), "{output}");
}

/// promtool: `ARENA_TEST_PROMTOOL`, else the first on `PATH`; a test failure without one.
fn promtool() -> PathBuf {
    if let Some(path) = std::env::var_os("ARENA_TEST_PROMTOOL") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "ARENA_TEST_PROMTOOL={} is not a file",
            path.display()
        );
        return path;
    }
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("promtool"))
            .find(|path| path.is_file())
    });
    let Some(path) = found else {
        panic!(
            "promtool not found (on PATH or in ARENA_TEST_PROMTOOL): install Debian's \
             `prometheus` package (`apt-get install prometheus`), as .ci/run does"
        );
    };
    path
}

/// `promtool check metrics` with `text` on its standard input: whether it exited 0, and
/// everything it printed.
fn check_metrics(promtool: &PathBuf, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool.display()));
    let Some(mut stdin) = child.stdin.take() else {
        panic!("promtool has no stdin");
    };
    stdin.write_all(text.as_bytes()).unwrap();
    drop(stdin);
    // promtool reads to the end of its input and exits; the output is small.
    let Ok(output) = child.wait_with_output() else {
        panic!("promtool did not finish");
    };
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed.trim().to_owned())
}

/// `GET path` over a plain HTTP/1.1 connection to the admin API (the client library's
/// helper hides the headers): the `Content-Type` and the body.
fn get_with_headers(server: &ServerProcess, path: &str) -> (String, String) {
    let mut stream = TcpStream::connect(server.admin).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.admin
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let Some((head, body)) = response.split_once("\r\n\r\n") else {
        panic!("no end of headers in:\n{response}");
    };
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let header = |name: &str| {
        head.lines().skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    };
    assert_eq!(header("transfer-encoding"), None, "{head}");
    let Some(content_type) = header("content-type") else {
        panic!("no Content-Type in:\n{head}");
    };
    (content_type, body.to_owned())
}
