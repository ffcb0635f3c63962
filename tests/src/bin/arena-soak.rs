//! `arena-soak`: runs the real server with many bots for a set time, watches it, and
//! prints one JSON report. CI runs it for seconds; people run it for hours.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use arena_tests::procs::{
    ServerProcess, TempDir, free_udp_addresses, get_json, post_json, signal, spawn_bots, temp_dir,
};
use clap::Parser;
use serde_json::{Value, json};

/// Soak test: an arena-server and N bots on loopback for a while; one JSON line out.
/// With --handoffs or --crashes, the match is moved to fresh standbys or its owner is
/// killed (SIGKILL) that many times, evenly spread, while the bots play.
/// Exits non-zero if a bot failed to connect or was disconnected, an input was lost (a
/// planned handoff loses nothing; a crash loses only its rollback, each within one
/// snapshot interval), the server fell behind its tick more than --max-overruns times,
/// or it did not stop cleanly.
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
    /// Planned handoffs during the run, each to a fresh standby.
    #[arg(long, default_value_t = 0)]
    handoffs: u32,
    /// Crashes during the run: the owner gets SIGKILL and a watching standby takes over.
    #[arg(long, default_value_t = 0, conflicts_with = "handoffs")]
    crashes: u32,
}

/// The processes of the match: the owner now, and the standbys waiting.
struct Fleet {
    owner: ServerProcess,
    standbys: Vec<ServerProcess>,
    max_players: String,
    /// Dropped last (fields drop in order): removed once every process is stopped.
    dir: TempDir,
}

impl Fleet {
    /// An owner, and for crashes a watching standby per crash, all listed in every
    /// token so that clients find whichever owns the match.
    fn start(args: &Args) -> Self {
        let dir = temp_dir("soak");
        let max_players = args.bots.max(16).to_string();
        // Every process lists every other, so that whichever standby takes over, its
        // clients' reconnect tokens name the rest.
        let addresses = free_udp_addresses(args.crashes as usize + 1);
        let args_for = |me: usize, role: &[&str]| -> Vec<String> {
            let mut list: Vec<String> = role.iter().map(|a| (*a).to_owned()).collect();
            list.extend([
                "--listen".to_owned(),
                addresses[me].to_string(),
                "--max-players".to_owned(),
                max_players.clone(),
            ]);
            for (other, address) in addresses.iter().enumerate() {
                if other != me {
                    list.extend(["--peer".to_owned(), address.to_string()]);
                }
            }
            list
        };
        let start = |list: Vec<String>| {
            let list: Vec<&str> = list.iter().map(String::as_str).collect();
            ServerProcess::start(&dir, &list)
        };
        let standbys = (1..addresses.len())
            .map(|me| start(args_for(me, &["--standby", "--watch", "default"])))
            .collect();
        let owner = start(args_for(0, &[]));
        Self {
            dir,
            owner,
            standbys,
            max_players,
        }
    }

    /// Moves the match to a fresh standby; false if the handoff failed.
    fn hand_off(&mut self) -> bool {
        let next = ServerProcess::start(
            &self.dir,
            &["--standby", "--max-players", &self.max_players],
        );
        let (code, _) = post_json(
            &format!("{}/handoff", self.owner.admin_url()),
            &format!("{{\"to\": \"{}\"}}", next.admin),
        );
        if code != 200 {
            return false;
        }
        let old = std::mem::replace(&mut self.owner, next);
        old.wait_exit(Duration::from_secs(30)).success()
    }

    /// Kills the owner; the standby that takes over (exactly one) becomes the owner.
    fn crash(&mut self) -> bool {
        signal(self.owner.pid(), "KILL");
        // Bounded: 100 looks, 100 ms apart.
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(100));
            if let Some(at) = self
                .standbys
                .iter()
                .position(|s| get_json(&format!("{}/status", s.admin_url()))["role"] == "owner")
            {
                let dead = std::mem::replace(&mut self.owner, self.standbys.remove(at));
                dead.kill();
                return true;
            }
        }
        false
    }
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
    let mut fleet = Fleet::start(args);
    let rss_start = rss_kb(fleet.owner.pid());
    let mut bot_args = vec![
        "--admin".to_owned(),
        fleet.owner.admin_url(),
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
    let events = args.handoffs + args.crashes;
    let event_every = Duration::from_secs(args.duration) / (events + 1);
    let mut events_done = 0;
    let mut events_failed = 0;
    while started.elapsed() < Duration::from_secs(args.duration) {
        std::thread::sleep(Duration::from_secs(1));
        if events_done < events && started.elapsed() >= event_every * (events_done + 1) {
            let ok = if args.handoffs > 0 {
                fleet.hand_off()
            } else {
                fleet.crash()
            };
            events_done += 1;
            events_failed += u32::from(!ok);
            continue;
        }
        let status = get_json(&format!("{}/status", fleet.owner.admin_url()));
        tick_us_p99_max = tick_us_p99_max.max(status["tick_us_p99"].as_u64().unwrap_or(0));
        let rss = rss_kb(fleet.owner.pid());
        rss_max = rss_max.max(rss);
        if rss_warm.is_none() && started.elapsed() >= Duration::from_secs(args.duration) / 4 {
            rss_warm = Some(rss);
        }
        samples += 1;
    }
    let (bots_exit, stdout, stderr) = bots.wait(Duration::from_secs(args.duration + 60));
    let rss_end = rss_kb(fleet.owner.pid());
    let status = get_json(&format!("{}/status", fleet.owner.admin_url()));
    let rss_warm = rss_warm.unwrap_or(rss_start);
    let server_exit = fleet.owner.terminate();
    let bots_report: Value = serde_json::from_str(stdout.trim()).unwrap_or(Value::Null);

    let overruns = status["tick_overruns"].as_u64().unwrap_or(u64::MAX);
    // Frames the server applied after the tick they were for, over all it applied (of
    // the last owner: a handoff or a crash starts the count afresh).
    let applied = status["inputs_applied"].as_u64().unwrap_or(0);
    let late = status["inputs_late"].as_u64().unwrap_or(0);
    let inputs_late_ratio = if applied > 0 {
        late as f64 / applied as f64
    } else {
        0.0
    };
    let count = |k: &str| bots_report[k].as_u64().unwrap_or(u64::MAX);
    // A crash rolls back at most one snapshot interval (60 ticks at the defaults), plus
    // the few ticks a snapshot takes to reach the disk.
    let rollback_bound = 60 + 15;
    let checks = [
        ("bots exited cleanly", bots_exit.success()),
        ("every bot connected", bots_report["connect_failures"] == 0),
        ("no bot was disconnected", bots_report["disconnects"] == 0),
        ("every handoff and crash went through", events_failed == 0),
        (
            "every input accounted for",
            bots_report["inputs_unaccounted"] == 0,
        ),
        (
            "no input lost but a crash's rollback",
            count("inputs_lost") == count("inputs_rolled_back"),
        ),
        (
            "each rollback within one snapshot interval",
            count("max_rollback_ticks") <= rollback_bound,
        ),
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
        "handoffs": args.handoffs,
        "crashes": args.crashes,
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
            "inputs_late_ratio": inputs_late_ratio,
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
