//! `arena-soak`: runs the real server with many bots for a set time, watches it, and
//! prints one JSON report. CI runs it for seconds; people run it for hours.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use arena_tests::procs::{ServerProcess, get_json, spawn_bots, temp_dir};
use clap::Parser;
use serde_json::{Value, json};

/// Soak test: an arena-server and N bots on loopback for a while; one JSON line out.
/// Exits non-zero if a bot failed to connect or was disconnected, an input was lost, the
/// server fell behind its tick more than --max-overruns times, or it did not stop cleanly.
#[derive(Debug, Parser)]
#[command(name = "arena-soak")]
struct Args {
    /// Bots.
    #[arg(long, default_value_t = 100)]
    bots: u32,
    /// Seconds of play.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Bot behaviour: wander, chase or idle.
    #[arg(long, default_value = "wander")]
    behavior: String,
    /// A simulated network for the bots, e.g. "loss=2%,latency=30ms,jitter=5ms".
    #[arg(long)]
    simulate: Option<String>,
    /// Tick overruns tolerated (a shared machine has hiccups).
    #[arg(long, default_value_t = 5)]
    max_overruns: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (report, ok) = soak(&args);
    println!("{report}");
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// A driver: it reads the wall clock to pace its watching.
#[allow(clippy::disallowed_methods)]
fn soak(args: &Args) -> (Value, bool) {
    let dir = temp_dir("soak");
    let server = ServerProcess::start(&dir, &["--max-players", &args.bots.max(16).to_string()]);
    let status_url = format!("{}/status", server.admin_url());
    let rss_start = rss_kb(server.pid());
    let mut bot_args = vec![
        "--server".to_owned(),
        server.udp.to_string(),
        "--admin".to_owned(),
        server.admin_url(),
        "--count".to_owned(),
        args.bots.to_string(),
        "--duration".to_owned(),
        args.duration.to_string(),
        "--behavior".to_owned(),
        args.behavior.clone(),
    ];
    if let Some(spec) = &args.simulate {
        bot_args.extend(["--simulate".to_owned(), spec.clone()]);
    }
    let bot_args: Vec<&str> = bot_args.iter().map(String::as_str).collect();
    let bots = spawn_bots(&bot_args);

    // Watch the server once a second while the bots play (bounded by the duration).
    let started = Instant::now();
    let mut rss_max = rss_start;
    // Memory once the match has warmed up (a quarter in): growth after it is the suspect.
    let mut rss_warm = None;
    let mut tick_us_p99_max = 0;
    let mut samples = 0;
    while started.elapsed() < Duration::from_secs(args.duration) {
        std::thread::sleep(Duration::from_secs(1));
        let status = get_json(&status_url);
        tick_us_p99_max = tick_us_p99_max.max(status["tick_us_p99"].as_u64().unwrap_or(0));
        let rss = rss_kb(server.pid());
        rss_max = rss_max.max(rss);
        if rss_warm.is_none() && started.elapsed() >= Duration::from_secs(args.duration) / 4 {
            rss_warm = Some(rss);
        }
        samples += 1;
    }
    let (bots_exit, stdout, stderr) = bots.wait(Duration::from_secs(args.duration + 60));
    let rss_end = rss_kb(server.pid());
    let status = get_json(&status_url);
    let rss_warm = rss_warm.unwrap_or(rss_start);
    let server_exit = server.terminate();
    let bots_report: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);

    let overruns = status["tick_overruns"].as_u64().unwrap_or(u64::MAX);
    let checks = [
        ("bots exited cleanly", bots_exit.success()),
        ("every bot connected", bots_report["connect_failures"] == 0),
        ("no bot was disconnected", bots_report["disconnects"] == 0),
        ("no input lost", bots_report["inputs_lost"] == 0),
        ("tick overruns within bound", overruns <= args.max_overruns),
        ("server stopped cleanly", server_exit.success()),
    ];
    let failed: Vec<&str> = checks
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| *what)
        .collect();
    let report = json!({
        "duration_s": args.duration,
        "bots": args.bots,
        "ok": failed.is_empty(),
        "failed": failed,
        "server": {
            "rss_kb_start": rss_start,
            "rss_kb_warm": rss_warm,
            "rss_kb_max": rss_max,
            "rss_kb_end": rss_end,
            "tick_us_p99_max": tick_us_p99_max,
            "status_samples": samples,
            "tick": status["tick"],
            "tick_overruns": status["tick_overruns"],
            "ticks_skipped": status["ticks_skipped"],
            "snapshot_every_ticks": status["snapshot_every_ticks"],
            "inputs_applied": status["inputs_applied"],
            "inputs_late": status["inputs_late"],
            "drops": status["drops"],
        },
        "bots_report": bots_report,
        "bots_stderr": if bots_exit.success() { Value::Null } else { Value::String(stderr) },
    });
    let ok = failed.is_empty();
    (report, ok)
}

/// Resident memory of a process, KiB (0 if unknown).
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
