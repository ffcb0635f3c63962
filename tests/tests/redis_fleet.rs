//! The fleet through Redis, with the real binaries on loopback and a real redis-server:
//! processes that share only Redis and the key (each its own `--data-dir`, as on two
//! machines) hand a match over, take it over after a crash, fence a paused owner in
//! Redis itself, ride out Redis going away, and tell a fake Agones sidecar what they do.
//!
//! Redis comes from `ARENA_TEST_REDIS` (started by `.ci/run`, one namespace per test) or a
//! `redis-server` of the test's own; without either, the tests fail and say how to get
//! one. The test that kills Redis always runs its own.
//!
//! The tests run one at a time (they share two cores with their servers and bots).

#![allow(clippy::unwrap_used, clippy::expect_used)]
// A test is a driver: it reads the clock to bound and time what it watches.
#![allow(clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arena_tests::agones_fake::FakeSidecar;
use arena_tests::procs::{
    ServerProcess, TempDir, assert_accounted, bots_against, bots_report, one_at_a_time, post_json,
    signal, status, temp_dir, wait_status, wait_status_for,
};
use arena_tests::redis::{TestRedis, test_redis};
use redis::Commands;
use serde_json::Value;

const BOTS: u32 = 100;

/// `--store` and `--store-namespace` for `redis`.
fn store_args(redis: &TestRedis) -> [String; 4] {
    [
        "--store".into(),
        redis.url.clone(),
        "--store-namespace".into(),
        redis.namespace.clone(),
    ]
}

/// A server on its own data dir ("its own machine") using `redis`, plus `extra` flags.
fn start(redis: &TestRedis, dir: &Path, extra: &[&str]) -> ServerProcess {
    start_with(redis, dir, extra, &[])
}

fn start_with(
    redis: &TestRedis,
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &Path)],
) -> ServerProcess {
    let store = store_args(redis);
    let mut args: Vec<&str> = store.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    ServerProcess::start_with(dir, &args, env)
}

/// Two data dirs under a fresh temp dir: two "machines" that share only Redis and the key.
/// Both go when the returned guard is dropped (declare it before the processes).
fn two_machines(label: &str) -> (TempDir, PathBuf, PathBuf) {
    let base = temp_dir(label);
    let (a, b) = (base.join("a"), base.join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    (base, a, b)
}

/// The match's key `<ns>:match:default:<what>`.
fn key(redis: &TestRedis, what: &str) -> String {
    format!("{}:match:default:{what}", redis.namespace)
}

/// The match's entry in Redis's directory.
fn directory_entry(redis: &TestRedis, match_id: &str) -> Value {
    let entry: String = redis
        .connection()
        .hget(format!("{}:directory", redis.namespace), match_id)
        .unwrap();
    serde_json::from_str(&entry).unwrap()
}

/// The standbys registered as free in Redis.
fn registered_standbys(redis: &TestRedis) -> Vec<String> {
    redis
        .connection()
        .zrange(format!("{}:standbys", redis.namespace), 0, -1)
        .unwrap()
}

/// The snapshot names Redis holds for the match, oldest first.
fn snapshot_names(redis: &TestRedis) -> Vec<String> {
    redis
        .connection()
        .zrange(key(redis, "snapshots"), 0, -1)
        .unwrap()
}

/// Polls (every 20 ms, at most `limit`) until `done` holds for the server's status;
/// returns the status and when it first held.
fn time_until(
    server: &ServerProcess,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Option<(Value, Instant)> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let s = status(server);
        if done(&s) {
            return Some((s, Instant::now()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// kill -9 of the owner; a watching standby on another data dir, sharing only Redis and
/// the key, takes over; every bot is back within 2 s of the takeover and every input is
/// accounted for as the ownership issue defines (lost = rolled back + given up +
/// unacknowledged).
#[test]
fn a_crash_across_machines_is_taken_over_through_redis() {
    let _one = one_at_a_time();
    let redis = test_redis("crash");
    let (_machines, machine_a, machine_b) = two_machines("redis-crash");
    let standby = start(&redis, &machine_b, &["--standby", "--watch", "default"]);
    let peer = standby.udp.to_string();
    let owner = start(
        &redis,
        &machine_a,
        &["--peer", &peer, "--max-players", &BOTS.to_string()],
    );
    let first = status(&owner);
    assert_eq!(first["store"], "redis", "{first}");
    assert_eq!(first["store_address"], redis.url, "{first}");
    let bots = bots_against(&owner, BOTS, 10.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    // The directory says where the match lives.
    let entry = directory_entry(&redis, "default");
    assert_eq!(entry["udp"], owner.udp.to_string(), "{entry}");
    assert_eq!(entry["admin"], owner.admin.to_string(), "{entry}");

    let killed = Instant::now();
    owner.kill();
    let (took, took_at) = time_until(&standby, Duration::from_secs(10), |s| s["role"] == "owner")
        .expect("the standby took the match over within 10 s");
    let (_, back_at) = time_until(&standby, Duration::from_secs(10), |s| s["players"] == BOTS)
        .expect("every bot came back within 10 s");
    let takeover = took_at - killed;
    let back = back_at.saturating_duration_since(took_at);
    eprintln!("redis crash: takeover {takeover:?} after kill -9, bots back {back:?} after");
    assert_eq!(took["epoch"], 2, "{took}");
    assert_eq!(took["restores"], 1, "{took}");
    assert!(back < Duration::from_secs(2), "bots back after {back:?}");
    let entry = directory_entry(&redis, "default");
    assert_eq!(entry["udp"], standby.udp.to_string(), "{entry}");

    let report = bots_report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert!(
        report["max_snapshot_gap_ms"].as_f64().unwrap() < 3000.0,
        "{report}"
    );
    assert_accounted(&report);
    standby.terminate();
}

/// SIGTERM with `--handoff-to auto`: the owner finds the free standby in Redis, hands the
/// match over (two phases), and 100 bots follow with no input lost.
#[test]
fn a_planned_handoff_to_auto_finds_the_standby_in_redis_and_loses_nothing() {
    let _one = one_at_a_time();
    let redis = test_redis("auto");
    let (_machines, machine_a, machine_b) = two_machines("redis-auto");
    let standby = start(&redis, &machine_b, &["--standby"]);
    let owner = start(
        &redis,
        &machine_a,
        &["--handoff-to", "auto", "--max-players", &BOTS.to_string()],
    );
    // The standby is registered as free.
    let registered = registered_standbys(&redis);
    assert_eq!(registered.len(), 1, "{registered:?}");
    let bots = bots_against(&owner, BOTS, 8.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    signal(owner.pid(), "TERM");
    let took = wait_status(&standby, "the standby owns the match", |s| {
        s["role"] == "owner" && s["players"] == BOTS
    });
    assert_eq!(took["epoch"], 2, "{took}");
    assert_eq!(took["handoffs"], 1, "{took}");
    assert!(owner.wait_exit(Duration::from_secs(15)).success());
    let report = bots_report(bots);
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["inputs_lost"], 0, "{report}");
    assert_eq!(report["handoffs_followed"], u64::from(BOTS), "{report}");
    assert_accounted(&report);
    // It owns a match now: no longer offered as free.
    let registered = registered_standbys(&redis);
    assert!(registered.is_empty(), "{registered:?}");
    standby.terminate();
}

/// SIGSTOP the owner past its lease; the standby takes over; SIGCONT: the old owner writes
/// nothing more (Redis holds no snapshot of its epoch newer than before, and counts the
/// writes it refused) and exits 3.
#[test]
fn a_paused_owner_is_fenced_in_redis_itself() {
    let _one = one_at_a_time();
    let redis = test_redis("fence");
    let (_machines, machine_a, machine_b) = two_machines("redis-fence");
    let standby = start(&redis, &machine_b, &["--standby", "--watch", "default"]);
    // Snapshots every 0.1 s: a paused owner has one due the moment it wakes.
    let owner = start(&redis, &machine_a, &["--snapshot-every", "0.1"]);
    wait_status(&owner, "snapshots written", |s| {
        s["last_snapshot_tick"].as_u64() > Some(10)
    });
    signal(owner.pid(), "STOP");
    wait_status(&standby, "the standby took over", |s| s["role"] == "owner");
    wait_status(&standby, "the new owner snapshots", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    let epoch_one = |names: &[String]| -> Vec<String> {
        names
            .iter()
            .filter(|n| n.starts_with("00000000000000000001-"))
            .cloned()
            .collect()
    };
    let before = epoch_one(&snapshot_names(&redis));
    let fenced_before: u64 = redis
        .connection()
        .get::<_, Option<u64>>(key(&redis, "fenced"))
        .unwrap()
        .unwrap_or(0);
    signal(owner.pid(), "CONT");
    let exit = owner.wait_exit(Duration::from_secs(15));
    assert_eq!(exit.code(), Some(3), "{exit:?}");
    // In Redis: nothing of epoch 1 was added, the refusals were counted, and the lease is
    // the standby's at epoch 2.
    let after = epoch_one(&snapshot_names(&redis));
    assert!(
        after.iter().all(|n| before.contains(n)),
        "the old owner wrote {after:?} (before: {before:?})"
    );
    let fenced_after: u64 = redis
        .connection()
        .get::<_, Option<u64>>(key(&redis, "fenced"))
        .unwrap()
        .unwrap_or(0);
    assert!(
        fenced_after > fenced_before,
        "Redis refused nothing: {fenced_before} -> {fenced_after}"
    );
    let epoch: u64 = redis.connection().get(key(&redis, "epoch")).unwrap();
    assert_eq!(epoch, 2);
    let last: String = redis.connection().get(key(&redis, "last")).unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert!(
        last["owner"]
            .as_str()
            .unwrap()
            .ends_with(&standby.admin.to_string()),
        "{last}"
    );
    assert_eq!(status(&standby)["role"], "owner");
    standby.terminate();
}

/// Redis killed for 3 s mid-match, then restarted (empty: no persistence): the owner stops
/// ticking before its lease could lapse, holds its clients, says so in `/status`, and
/// resumes when Redis is back; the watching standby takes nothing over at any moment.
#[test]
fn redis_down_for_3_s_never_makes_a_second_owner_and_the_match_resumes() {
    let _one = one_at_a_time();
    // This test kills Redis: always a server of its own.
    let mut redis = arena_tests::redis::own_redis("outage");
    let (_machines, machine_a, machine_b) = two_machines("redis-outage");
    let standby = start(&redis, &machine_b, &["--standby", "--watch", "default"]);
    let peer = standby.udp.to_string();
    let owner = start(&redis, &machine_a, &["--peer", &peer]);
    let bots = bots_against(&owner, 20, 12.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == 20);
    wait_status(&owner, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });

    let server = redis.own_server().expect("a Redis of our own");
    server.kill();
    let outage = Instant::now();
    let held = wait_status_for(&owner, "the owner holds", Duration::from_secs(5), |s| {
        s["lease_lapsed"] == true && s["store_error"].is_string()
    });
    let tick_held = held["tick"].as_u64().unwrap();
    // For the rest of the 3 s: exactly one owner, and it does not tick.
    let mut samples = 0;
    while outage.elapsed() < Duration::from_secs(3) {
        let (o, s) = (status(&owner), status(&standby));
        assert_eq!(o["role"], "owner", "{o}");
        assert_ne!(s["role"], "owner", "two owners during the outage: {s}");
        assert!(o["tick"].as_u64().unwrap() <= tick_held + 1, "ticked: {o}");
        samples += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(samples > 5);
    server.restart();
    let resumed = wait_status_for(&owner, "the match resumes", Duration::from_secs(10), |s| {
        s["lease_lapsed"] == false && s["tick"].as_u64().unwrap() > tick_held + 30
    });
    assert!(resumed["store_error"].is_null(), "{resumed}");
    assert_eq!(resumed["epoch"], 1, "{resumed}");
    assert_ne!(status(&standby)["role"], "owner");
    // Redis has the match again: its epoch, its lease, a new snapshot.
    wait_status(&owner, "a snapshot after the outage", |s| {
        s["last_snapshot_tick"].as_u64() > Some(tick_held)
    });
    let epoch: u64 = redis.connection().get(key(&redis, "epoch")).unwrap();
    assert_eq!(epoch, 1);
    let report = bots_report(bots);
    assert_eq!(report["connected"], 20, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_accounted(&report);
    assert_eq!(status(&owner)["players"], 20);
    assert_ne!(status(&standby)["role"], "owner");
    owner.terminate();
    standby.terminate();
}

/// The Agones calls, in order, for: start and first player (Ready, Health..., Allocate),
/// SIGTERM with a standby (the handoff, then Shutdown), and SIGTERM without one (a plain
/// stop, then Shutdown); a standby says Ready and stays so.
#[test]
fn agones_hears_ready_health_allocate_and_shutdown_in_order() {
    let _one = one_at_a_time();
    let redis = test_redis("agones");
    let (_machines, machine_a, machine_b) = two_machines("redis-agones");
    let owner_sdk = FakeSidecar::start();
    let standby_sdk = FakeSidecar::start();
    let owner_port = owner_sdk.port().to_string();
    let standby_port = standby_sdk.port().to_string();
    let standby = start_with(
        &redis,
        &machine_b,
        &["--standby", "--agones"],
        &[("AGONES_SDK_HTTP_PORT", Path::new(&standby_port))],
    );
    let owner = start_with(
        &redis,
        &machine_a,
        &["--agones"],
        &[("AGONES_SDK_HTTP_PORT", Path::new(&owner_port))],
    );
    let limit = Duration::from_secs(10);
    assert!(
        owner_sdk.wait_for("health", 2, limit),
        "{:?}",
        owner_sdk.calls()
    );
    assert!(
        standby_sdk.wait_for("health", 2, limit),
        "{:?}",
        standby_sdk.calls()
    );
    // No players yet: not allocated.
    assert_eq!(owner_sdk.count("allocate"), 0, "{:?}", owner_sdk.calls());
    let bots = bots_against(&owner, 5, 6.0, &[]);
    assert!(
        owner_sdk.wait_for("allocate", 1, limit),
        "{:?}",
        owner_sdk.calls()
    );
    // SIGTERM: under Agones that means hand off to a free standby (auto), then Shutdown.
    signal(owner.pid(), "TERM");
    let took = wait_status(&standby, "the standby owns the match", |s| {
        s["role"] == "owner" && s["players"] == 5
    });
    assert_eq!(took["handoffs"], 1, "{took}");
    assert!(owner.wait_exit(Duration::from_secs(15)).success());
    let calls = owner_sdk.calls();
    assert_eq!(
        calls.first().map(String::as_str),
        Some("ready"),
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("shutdown"),
        "{calls:?}"
    );
    assert_eq!(
        calls.iter().filter(|c| *c == "shutdown").count(),
        1,
        "{calls:?}"
    );
    let allocate = calls.iter().position(|c| c == "allocate").unwrap();
    let first_health = calls.iter().position(|c| c == "health").unwrap();
    assert!(first_health < allocate, "{calls:?}");
    assert_eq!(
        calls.iter().filter(|c| *c == "allocate").count(),
        1,
        "{calls:?}"
    );
    // The standby that received the match has players: it says Allocate too.
    assert!(
        standby_sdk.wait_for("allocate", 1, limit),
        "{:?}",
        standby_sdk.calls()
    );
    let report = bots_report(bots);
    assert_eq!(report["disconnects"], 0, "{report}");

    // SIGTERM with no standby left: a plain stop (final snapshot, lease released), then
    // Shutdown.
    signal(standby.pid(), "TERM");
    assert!(standby.wait_exit(Duration::from_secs(20)).success());
    let calls = standby_sdk.calls();
    assert_eq!(
        calls.first().map(String::as_str),
        Some("ready"),
        "{calls:?}"
    );
    assert_eq!(
        calls.last().map(String::as_str),
        Some("shutdown"),
        "{calls:?}"
    );
    let last: String = redis.connection().get(key(&redis, "last")).unwrap();
    let last: Value = serde_json::from_str(&last).unwrap();
    assert_eq!(last["released"], true, "{last}");
    assert_eq!(last["epoch"], 2, "{last}");
}

/// `POST /handoff` with `{"to": "auto"}` and no standby registered: a clear refusal, and
/// the match stays.
#[test]
fn auto_with_no_free_standby_says_so_and_keeps_the_match() {
    let _one = one_at_a_time();
    let redis = test_redis("nostandby");
    let dir = temp_dir("redis-nostandby");
    let owner = start(&redis, &dir, &[]);
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        r#"{"to": "auto"}"#,
    );
    assert_eq!(code, 502, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no free standby"),
        "{answer}"
    );
    // (Right after its start the role may read "starting" until the loop's first report.)
    wait_status(&owner, "the match stays here", |s| s["role"] == "owner");
    owner.terminate();
}

/// `--watch any`: a standby of the fleet, told no match, takes over whichever match's
/// owner crashed (found in Redis's directory), and leaves a match that was stopped on
/// purpose stopped.
#[test]
fn a_standby_watching_any_takes_over_a_crashed_match_and_leaves_a_stopped_one() {
    let _one = one_at_a_time();
    let redis = test_redis("any");
    let (_machines, machine_a, machine_b) = two_machines("redis-any");
    let machine_c = machine_a.with_file_name("c");
    std::fs::create_dir_all(&machine_c).unwrap();
    // The standby first: it watches while one match stops on purpose, and the owner of
    // the other finds it in the registry at its start, before any client connects, so
    // every reconnect token lists it.
    let standby = start(&redis, &machine_b, &["--standby", "--watch", "any"]);
    let stopped = start(&redis, &machine_c, &["--match-id", "stopped"]);
    wait_status(&stopped, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    assert!(stopped.terminate().success());
    let crashed = start(&redis, &machine_a, &["--match-id", "crashed"]);
    let bots = bots_against(&crashed, 10, 6.0, &[]);
    wait_status(&crashed, "all bots playing", |s| s["players"] == 10);
    wait_status(&crashed, "a snapshot written", |s| {
        s["last_snapshot_tick"].is_u64()
    });
    crashed.kill();
    let took = wait_status_for(
        &standby,
        "took the crashed match",
        Duration::from_secs(10),
        |s| s["role"] == "owner",
    );
    assert_eq!(took["match_id"], "crashed", "{took}");
    assert_eq!(took["restores"], 1, "{took}");
    let entry = directory_entry(&redis, "stopped");
    assert_eq!(entry["released"], true, "{entry}");
    let report = bots_report(bots);
    assert_eq!(report["connected"], 10, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_accounted(&report);
    standby.terminate();
}
