//! Chaos tests of the real binaries on loopback: each fault that once lost a match, hit
//! on purpose (fault hooks, `ARENA_TEST_FAULT_DIR`, arm the dangerous windows instead of
//! sleeping and hoping), with its bound asserted: the match is never lost, exactly one
//! process owns it, clients are back within 2 s, every input is accounted for.
//!
//! The tests run one at a time (they share two cores with their servers and bots).

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test is a driver: it reads the clock to bound and time what it watches.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arena_tests::procs::{
    ServerProcess, assert_accounted, bots_against, bots_report, one_at_a_time, post_json, signal,
    status, temp_dir, wait_status, wait_status_for,
};
use serde_json::Value;

const BOTS: u32 = 20;

/// A directory for one process's fault hooks.
fn fault_dir(dir: &Path, name: &str) -> PathBuf {
    let faults = dir.join(format!("faults-{name}"));
    std::fs::create_dir_all(&faults).unwrap();
    faults
}

/// A standby whose fault hook `hook` is armed; returns it and its fault directory.
fn standby_with_hook(dir: &Path, hook: &str) -> (ServerProcess, PathBuf) {
    let faults = fault_dir(dir, "standby");
    arm(&faults, hook);
    let standby =
        ServerProcess::start_with(dir, &["--standby"], &[("ARENA_TEST_FAULT_DIR", &faults)]);
    (standby, faults)
}

fn arm(faults: &Path, hook: &str) {
    std::fs::write(faults.join(hook), b"").unwrap();
}

fn disarm(faults: &Path, hook: &str) {
    let _ = std::fs::remove_file(faults.join(hook));
}

fn handoff(owner: &ServerProcess, to: &ServerProcess) -> (u16, Value) {
    post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"{}\"}}", to.admin),
    )
}

/// Temp files anywhere in the match's store directory.
fn temp_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("matches/default")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp"))
        .collect()
}

/// Waits (at most 10 s) until one of `candidates` owns the match with every bot on it.
fn wait_for_one_owner_with_every_bot(candidates: &[&ServerProcess]) {
    for _ in 0..200 {
        let found = candidates.iter().any(|p| {
            let s = status(p);
            s["role"] == "owner" && s["players"] == BOTS
        });
        if found {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let roles: Vec<Value> = candidates.iter().map(|p| status(p)).collect();
    panic!("no owner with all {BOTS} bots within 10 s: {roles:?}");
}

fn max_gap_ms(report: &Value) -> f64 {
    report["max_snapshot_gap_ms"].as_f64().unwrap()
}

/// Case 1: SIGTERM with `--handoff-to` a standby that is down: the owner stops as a
/// plain stop does (final snapshot, lease released) and exits 0; a restart resumes the
/// match at once with nothing rolled back.
#[test]
fn sigterm_with_a_dead_standby_stops_and_a_restart_rolls_back_nothing() {
    let _one = one_at_a_time();
    let dir = temp_dir("dead-standby");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let to = format!("127.0.0.1:{port}");
    let owner = ServerProcess::start(&dir, &["--handoff-to", &to]);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    let started = Instant::now();
    let exit = owner.terminate();
    assert!(exit.success(), "{exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));

    let again = ServerProcess::start(&dir, &[]);
    let resumed = wait_status(&again, "resumed", |s| s["epoch"].as_u64() >= Some(1));
    assert_eq!(resumed["role"], "owner");
    assert_eq!(resumed["restores"], 1, "{resumed}");
    assert_eq!(resumed["rollback_ticks"], 0, "{resumed}");
    assert_eq!(resumed["epoch"], 2, "{resumed}");
    again.terminate();
}

/// Case 1, the second signal: a stop that hangs (its handoff's standby is paused) is cut
/// short by a second SIGTERM.
#[test]
fn a_second_sigterm_exits_at_once() {
    let _one = one_at_a_time();
    let dir = temp_dir("second-sigterm");
    let faults = fault_dir(&dir, "standby");
    let standby =
        ServerProcess::start_with(&dir, &["--standby"], &[("ARENA_TEST_FAULT_DIR", &faults)]);
    arm(&faults, "standby-pauses-on-commit");
    let target = standby.admin.to_string();
    let owner = ServerProcess::start(&dir, &["--handoff-to", &target]);
    wait_status(&owner, "ticking", |s| s["tick"].as_u64() > Some(30));
    signal(owner.pid(), "TERM");
    // The handoff gets stuck on the paused standby (the commit waits up to 2 s): seen
    // in the standby's process state, "T" (stopped).
    let paused = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{}/stat", standby.pid()))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("T"))
    });
    assert!(paused, "the standby never paused on the commit");
    let started = Instant::now();
    signal(owner.pid(), "TERM");
    let exit = owner.wait_exit(Duration::from_secs(5));
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(exit.code(), Some(130), "{exit:?}");
    signal(standby.pid(), "CONT");
    standby.kill();
}

/// Case 2: the standby dies right after it took the lease, before it answered. The old
/// owner reads the store, redirects, sees the successor's lease lapse with no snapshot
/// of its own, and takes the match back at e+2 from the frozen world.
#[test]
fn a_standby_that_dies_after_taking_the_lease_does_not_lose_the_match() {
    let _one = one_at_a_time();
    let dir = temp_dir("dies-after-lease");
    let (standby, _faults) = standby_with_hook(&dir, "standby-dies-after-lease");
    let owner = ServerProcess::start(&dir, &[]);
    let bots = bots_against(&owner, BOTS, 7.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let (code, answer) = handoff(&owner, &standby);
    // The answer may say either: the outcome is the store's.
    assert!(code == 200 || code == 502, "{code} {answer}");
    let back = wait_status_for(
        &owner,
        "the owner took the match back",
        Duration::from_secs(10),
        |s| s["role"] == "owner" && s["epoch"] == 3,
    );
    assert_eq!(back["takebacks"], 1, "{back}");
    wait_status_for(&owner, "every bot back", Duration::from_secs(5), |s| {
        s["players"] == BOTS
    });
    let report = bots_report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_accounted(&report);
    owner.terminate();
    drop(standby);
}

/// Case 2, later: the standby took the match and died before its first tick. With a
/// second standby watching, exactly one of the two rescuers owns the match, and every bot
/// is back within 2 s of the takeover.
#[test]
fn a_standby_that_dies_before_serving_is_replaced_and_the_bots_find_the_match() {
    let _one = one_at_a_time();
    let dir = temp_dir("dies-before-tick");
    let (standby, _faults) = standby_with_hook(&dir, "standby-dies-before-first-tick");
    let watcher = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let watcher_udp = watcher.udp.to_string();
    let owner = ServerProcess::start(&dir, &["--peer", &watcher_udp]);
    let bots = bots_against(&owner, BOTS, 8.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let (code, answer) = handoff(&owner, &standby);
    assert!(code == 200 || code == 502, "{code} {answer}");
    wait_for_one_owner_with_every_bot(&[&owner, &watcher]);
    let report = bots_report(bots);
    let owners = [&owner, &watcher]
        .iter()
        .filter(|p| status(p)["role"] == "owner")
        .count();
    assert_eq!(owners, 1, "exactly one owner");
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_accounted(&report);
    // The successor's lease (1 s) must lapse before anyone may take the match back.
    assert!(max_gap_ms(&report) < 1000.0 + 2000.0, "{report}");
    drop(standby);
}

/// Case 3: the standby is paused (SIGSTOP) as the commit reaches it and resumed 7 s
/// later. The owner reads the store, finds no new owner, takes e+1 itself and resumes;
/// the woken standby refuses the stale request. Nobody is fenced, no input lost.
#[test]
fn a_standby_paused_during_the_commit_never_acts_on_the_stale_request() {
    let _one = one_at_a_time();
    let dir = temp_dir("paused-standby");
    let (standby, faults) = standby_with_hook(&dir, "standby-pauses-on-commit");
    let owner = ServerProcess::start(&dir, &[]);
    let bots = bots_against(&owner, BOTS, 12.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let (code, answer) = handoff(&owner, &standby);
    assert_eq!(code, 502, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("resumes here"),
        "{answer}"
    );
    let resumed = wait_status(&owner, "resumed at e+1", |s| {
        s["epoch"] == 2 && s["role"] == "owner"
    });
    assert_eq!(resumed["handoffs_aborted"], 1, "{resumed}");
    disarm(&faults, "standby-pauses-on-commit");
    std::thread::sleep(Duration::from_secs(7));
    signal(standby.pid(), "CONT");
    // The standby wakes, acts on nothing, and stays a standby.
    wait_status_for(
        &standby,
        "the standby awake",
        Duration::from_secs(10),
        |s| s["role"] == "standby",
    );
    let after = wait_status_for(
        &owner,
        "every bot still here",
        Duration::from_secs(5),
        |s| s["players"] == BOTS,
    );
    let report = bots_report(bots);
    assert_eq!(after["role"], "owner", "{after}");
    assert_eq!(after["epoch"], 2, "{after}");
    assert_eq!(status(&standby)["role"], "standby");
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(
        report["inputs_lost"], report["inputs_unacknowledged"],
        "{report}"
    );
    assert_accounted(&report);
    owner.terminate();
    standby.terminate();
}

/// A caller that hangs up on `POST /handoff` after the freeze (an HTTP client's timeout)
/// does not leave the match frozen: the handoff runs to its outcome, and the match
/// resumes here when the standby never takes it.
#[test]
fn a_handoff_whose_caller_hangs_up_still_comes_to_an_end() {
    use std::io::Write;
    let _one = one_at_a_time();
    let dir = temp_dir("hang-up");
    let (standby, faults) = standby_with_hook(&dir, "standby-pauses-on-commit");
    let owner = ServerProcess::start(&dir, &[]);
    wait_status(&owner, "ticking", |s| s["tick"].as_u64() > Some(30));
    let body = format!("{{\"to\": \"{}\"}}", standby.admin);
    let mut stream = std::net::TcpStream::connect(owner.admin).unwrap();
    write!(
        stream,
        "POST /handoff HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        owner.admin,
        body.len()
    )
    .unwrap();
    // Hang up once the commit is stuck on the paused standby (it is stopped: "T").
    let paused = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        std::fs::read_to_string(format!("/proc/{}/stat", standby.pid()))
            .is_ok_and(|stat| stat.split_whitespace().nth(2) == Some("T"))
    });
    assert!(paused, "the standby never paused on the commit");
    drop(stream);
    let resumed = wait_status_for(&owner, "the match resumed", Duration::from_secs(10), |s| {
        s["epoch"] == 2 && s["role"] == "owner"
    });
    assert_eq!(resumed["handoffs_aborted"], 1, "{resumed}");
    let tick = resumed["tick"].as_u64().unwrap();
    wait_status(&owner, "ticking again", |s| {
        s["tick"].as_u64() > Some(tick + 30)
    });
    disarm(&faults, "standby-pauses-on-commit");
    signal(standby.pid(), "CONT");
    owner.terminate();
    standby.terminate();
}

/// Case 4: the newest snapshot is truncated, then the owner is killed: the watching
/// standby refuses it (logged, counted) and restores the next older one.
#[test]
fn a_truncated_newest_snapshot_falls_back_to_an_older_one() {
    let _one = one_at_a_time();
    let dir = temp_dir("truncated");
    let watcher = ServerProcess::start(
        &dir,
        &["--standby", "--watch", "default", "--snapshot-every", "0.2"],
    );
    let owner = ServerProcess::start(&dir, &["--snapshot-every", "0.2"]);
    wait_status(&owner, "three snapshots", |s| {
        s["last_snapshot_tick"].as_u64() > Some(30)
    });
    signal(owner.pid(), "STOP");
    let store = dir.join("matches/default");
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    snapshots.sort();
    assert!(snapshots.len() >= 3, "{snapshots:?}");
    let newest = snapshots.last().unwrap();
    let bytes = std::fs::read(newest).unwrap();
    std::fs::write(newest, &bytes[..bytes.len() / 2]).unwrap();
    owner.kill();
    let took = wait_status_for(
        &watcher,
        "the watcher took over",
        Duration::from_secs(10),
        |s| s["role"] == "owner",
    );
    assert_eq!(took["snapshots_refused"], 1, "{took}");
    assert_eq!(took["restores"], 1, "{took}");
    watcher.terminate();
}

/// Cases 5 and D: the owner dies; its tokens list a standby that watches nothing (it must
/// deny at once), then two watchers (exactly one wins). Every bot is back within 2 s of
/// the takeover, and none is dropped.
#[test]
fn two_watchers_one_wins_and_clients_skip_a_denying_standby() {
    let _one = one_at_a_time();
    let dir = temp_dir("two-watchers");
    let idle = ServerProcess::start(&dir, &["--standby"]);
    let first = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let second = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let peers: Vec<String> = [&idle, &first, &second]
        .iter()
        .map(|p| p.udp.to_string())
        .collect();
    let owner = ServerProcess::start(
        &dir,
        &[
            "--peer", &peers[0], "--peer", &peers[1], "--peer", &peers[2],
        ],
    );
    let bots = bots_against(&owner, BOTS, 8.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    owner.kill();
    wait_for_one_owner_with_every_bot(&[&first, &second]);
    let report = bots_report(bots);
    let roles: Vec<Value> = [&idle, &first, &second]
        .iter()
        .map(|p| status(p)["role"].clone())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| *r == "owner").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(roles[0], "standby", "{roles:?}");
    assert!(status(&idle)["drops"]["not_admitting"].as_u64() > Some(0));
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    // Silence is noticed after 1 s; the lease lapses after 1 s; then 2 s at most to be back.
    assert!(max_gap_ms(&report) < 3000.0, "{report}");
    assert_accounted(&report);
    assert_eq!(
        report["inputs_lost"].as_u64().unwrap(),
        report["inputs_rolled_back"].as_u64().unwrap()
            + report["inputs_given_up"].as_u64().unwrap()
            + report["inputs_unacknowledged"].as_u64().unwrap(),
        "{report}"
    );
}

/// Case 6: a plain SIGTERM writes its final snapshot, releases the lease, and sends the
/// clients to the watching standby, which takes over at once, rolling back nothing.
#[test]
fn sigterm_without_handoff_hands_the_final_tick_to_the_watcher() {
    let _one = one_at_a_time();
    let dir = temp_dir("plain-stop");
    let watcher = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let peer = watcher.udp.to_string();
    let owner = ServerProcess::start(&dir, &["--peer", &peer]);
    let bots = bots_against(&owner, BOTS, 6.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let owner_pid = owner.pid();
    let started = Instant::now();
    assert!(owner.terminate().success());
    let stop_took = started.elapsed();
    let took = wait_status_for(
        &watcher,
        "the watcher took over",
        Duration::from_secs(5),
        |s| s["role"] == "owner",
    );
    assert_eq!(took["rollback_ticks"], 0, "{took}");
    // The stopped owner left no write half done (the new owner may be mid-write of its
    // own snapshot: its temp files carry its pid).
    let left = temp_files(&dir);
    let owners = format!(".tmp-{owner_pid}-");
    assert!(!left.iter().any(|n| n.contains(&owners)), "{left:?}");
    let report = bots_report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["inputs_rolled_back"], 0, "{report}");
    assert_eq!(
        report["inputs_lost"], report["inputs_unacknowledged"],
        "{report}"
    );
    assert_accounted(&report);
    assert!(stop_took < Duration::from_secs(5), "{stop_took:?}");
    watcher.terminate();
}

/// Case 7: an owner and a standby started at the same instant without `--key-file`
/// create one key between them (a handoff between them works, so they share it).
#[test]
fn an_owner_and_a_standby_started_together_share_one_generated_key() {
    let _one = one_at_a_time();
    for round in 0..3 {
        let dir = temp_dir(&format!("key-race-{round}"));
        let standby = ServerProcess::spawn(&dir, &["--standby".into()], &[]);
        let owner = ServerProcess::spawn(&dir, &[], &[]);
        let standby = standby.wait_serving();
        let owner = owner.wait_serving();
        let keys: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("key"))
            .collect();
        assert_eq!(keys, vec!["private.key".to_owned()], "round {round}");
        if round == 2 {
            let (code, answer) = handoff(&owner, &standby);
            assert_eq!(code, 200, "{answer}");
            wait_status(&standby, "the standby owns it", |s| s["role"] == "owner");
            standby.terminate();
        }
    }
}

/// Case 8: a full disk. Snapshots fail (counted, logged, the rollback a crash would cost
/// shown) but the match keeps ticking and the lease holds, so the watcher takes nothing;
/// no temp file stays. When lease writes fail too, the owner stops ticking before its
/// lease could lapse: the watcher takes over, never two owners.
#[test]
fn a_full_disk_keeps_the_match_ticking_and_never_makes_two_owners() {
    let _one = one_at_a_time();
    let dir = temp_dir("full-disk");
    let faults = fault_dir(&dir, "owner");
    let watcher = ServerProcess::start(&dir, &["--standby", "--watch", "default"]);
    let owner = ServerProcess::start_with(&dir, &[], &[("ARENA_TEST_FAULT_DIR", &faults)]);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    arm(&faults, "snapshot-write-fails");
    let failing = wait_status(&owner, "snapshots failing", |s| {
        s["snapshot_write_errors"].as_u64() >= Some(2)
    });
    let later = wait_status(&owner, "still ticking", |s| {
        s["tick"].as_u64() > Some(failing["tick"].as_u64().unwrap() + 120)
    });
    assert_eq!(later["role"], "owner");
    assert_eq!(later["lease_lapsed"], false, "{later}");
    assert!(
        later["rollback_bound_ticks"].as_u64() > Some(120),
        "{later}"
    );
    assert_eq!(status(&watcher)["role"], "standby");
    assert!(temp_files(&dir).is_empty(), "{:?}", temp_files(&dir));
    disarm(&faults, "snapshot-write-fails");
    let last = later["last_snapshot_tick"].as_u64().unwrap();
    wait_status(&owner, "snapshots again", |s| {
        s["last_snapshot_tick"].as_u64() > Some(last)
    });

    arm(&faults, "lease-write-fails");
    let took = wait_status_for(
        &watcher,
        "the watcher took over",
        Duration::from_secs(10),
        |s| s["role"] == "owner",
    );
    assert_eq!(took["epoch"], 2);
    // The old owner never ticked past its lease: it is held, then fenced.
    disarm(&faults, "lease-write-fails");
    let exit = owner.wait_exit(Duration::from_secs(10));
    assert_eq!(exit.code(), Some(3), "{exit:?}");
    watcher.terminate();
}

/// Cases 9 and 10: a planned handoff under 40 ms of one-way latency, with make before
/// break: nothing is lost, every bot switched over a connection it opened ahead, and the
/// worst gap any bot saw stays near the pause plus one trip plus one snapshot interval.
#[test]
fn a_handoff_under_latency_loses_nothing_and_switches_over_open_connections() {
    let _one = one_at_a_time();
    let dir = temp_dir("mbb");
    let standby = ServerProcess::start(&dir, &["--standby"]);
    let owner = ServerProcess::start(&dir, &[]);
    let bots = bots_against(&owner, BOTS, 6.0, &["--simulate", "latency=40ms"]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    let (code, answer) = handoff(&owner, &standby);
    assert_eq!(code, 200, "{answer}");
    let report = bots_report(bots);
    let moved = status(&standby);
    assert_eq!(moved["role"], "owner");
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["handoffs_prepared"], BOTS, "{report}");
    assert_eq!(report["prepares_abandoned"], 0, "{report}");
    assert_eq!(report["inputs_rolled_back"], 0, "{report}");
    assert_eq!(
        report["inputs_lost"], report["inputs_unacknowledged"],
        "{report}"
    );
    assert_accounted(&report);
    let pause = moved["handoff_pause_ms"].as_f64().unwrap();
    // Pause + 40 ms + one 16.7 ms interval, with room for two shared cores.
    assert!(
        max_gap_ms(&report) < pause + 40.0 + 17.0 + 60.0,
        "pause {pause}: {report}"
    );
    assert!(owner.wait_exit(Duration::from_secs(20)).success());
    standby.terminate();
}

/// Case 11: a sealed snapshot cannot be replayed, redirected, or used late. One is made
/// here with the fleet key (as a captured one would be) and offered to a standby.
#[test]
fn replayed_stale_and_misdirected_sealed_snapshots_are_refused() {
    use arena_server::handoff::{Commit, PrepareRequest, seal};
    let _one = one_at_a_time();
    let dir = temp_dir("replay");
    let standby = ServerProcess::start(&dir, &["--standby"]);
    let owner = ServerProcess::start(&dir, &[]);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(dir.join("matches/default"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "bin"))
        .collect();
    snapshots.sort();
    let bytes = std::fs::read(snapshots.last().unwrap()).unwrap();
    let key = arena_shared::identity::parse_private_key(arena_tests::procs::TEST_KEY_HEX).unwrap();
    let instance = format!("pid{}@{}", standby.pid(), standby.admin);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let post = |commit: &Commit| {
        let (code, body) = arena_tests::procs::post_bytes(
            &format!("{}/match", standby.admin_url()),
            seal(&key, commit, &bytes),
        );
        (code, String::from_utf8_lossy(&body).into_owned())
    };
    let commit = Commit {
        recipient: instance.clone(),
        match_id: "default".into(),
        epoch: 1,
        handoff_id: 7,
        deadline_unix_ms: now_ms + 60_000,
        from_udp: owner.udp,
    };
    // No prepare under way: a replay.
    let (code, body) = post(&commit);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("being prepared"), "{body}");
    // Sealed for someone else.
    let (code, body) = post(&Commit {
        recipient: "pid1@127.0.0.1:1".into(),
        ..commit.clone()
    });
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("sealed for"), "{body}");
    // Late.
    let (code, body) = post(&Commit {
        deadline_unix_ms: now_ms - 1000,
        ..commit.clone()
    });
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("deadline passed"), "{body}");
    // A prepare that was real, but the match has since moved on (handed to another
    // standby, epoch 2): the store refuses the old epoch's snapshot.
    let request = PrepareRequest {
        match_id: "default".into(),
        epoch: 1,
        tick: 0,
        players: 0,
        snapshot_format: arena_shared::snapshot::FORMAT_VERSION,
        from_udp: owner.udp,
    };
    let (code, prepared) = post_json(
        &format!("{}/handoff/prepare", standby.admin_url()),
        &serde_json::to_string(&request).unwrap(),
    );
    assert_eq!(code, 200, "{prepared}");
    let other = ServerProcess::start(&dir, &["--standby"]);
    let (code, answer) = handoff(&owner, &other);
    assert_eq!(code, 200, "{answer}");
    let stale = Commit {
        handoff_id: prepared["handoff_id"].as_u64().unwrap(),
        ..commit
    };
    let (code, body) = post(&stale);
    assert_eq!(code, 409, "{body}");
    let moved = wait_status(&other, "the other standby ticks", |s| {
        s["epoch"].as_u64() >= Some(1)
    });
    assert_eq!(moved["role"], "owner");
    assert_eq!(moved["epoch"], 2);
    assert_eq!(status(&standby)["role"], "standby");
    other.terminate();
    standby.terminate();
}
