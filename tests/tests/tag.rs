//! The second game, tag, on the very same machinery as the shooter: `tag-server` (the
//! generic runner with `Tag`) and `tag-bots` (the generic bot runner with a tag brain), as
//! real processes on loopback. The match is handed off mid-game, then its new owner is
//! killed and a watching standby takes it over: the world hash continues across both, every
//! input is accounted for, and every bot stays.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use arena_shared::game::Game;
use arena_shared::snapshot;
use arena_tag::Tag;
use arena_tests::procs::{
    ServerProcess, assert_accounted, bots_program_against, bots_report, example_path, get_json,
    log_field, post_json, temp_dir, wait_status,
};

const BOTS: u64 = 8;

/// The tick and world hash of a "frozen for a handoff" or "match loaded" log line.
fn tick_and_hash(line: &str) -> (u64, String) {
    let tick = log_field(line, "tick")
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no tick in {line}"));
    let hash = log_field(line, "world_hash").unwrap_or_else(|| panic!("no hash in {line}"));
    (tick, hash)
}

/// The newest snapshot of match `default` in a file store's data dir, decoded as tag:
/// its tick and world hash.
fn newest_snapshot(data_dir: &Path) -> (u64, String) {
    let dir = data_dir.join("matches").join("default");
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("snapshot-") && name.ends_with(".bin")
        })
        .max()
        .expect("a snapshot");
    let bytes = std::fs::read(&newest).unwrap();
    let (header, state) = snapshot::decode::<Tag>(&bytes, "default")
        .unwrap_or_else(|e| panic!("{}: {e}", newest.display()));
    assert_eq!(header.game, "tag");
    (header.tick.0, format!("{:016x}", Tag::hash(&state.world)))
}

#[test]
fn tag_is_played_handed_off_and_survives_the_new_owner_dying() {
    let dir = temp_dir("tag");
    let server = example_path("tag-server");
    let limit = Duration::from_secs(20);
    // C watches the match and takes it over if its owner dies; B receives the handoff and
    // lists C in its clients' reconnect tokens; A starts the match, full at 8 players.
    let watcher =
        ServerProcess::start_program(&server, &dir, &["--standby", "--watch", "default"], &[]);
    let c_udp = watcher.udp.to_string();
    let receiver =
        ServerProcess::start_program(&server, &dir, &["--standby", "--peer", &c_udp], &[]);
    let owner = ServerProcess::start_program(
        &server,
        &dir,
        &["--max-players", "8", "--peer", &c_udp],
        &[],
    );
    let bots = bots_program_against(&example_path("tag-bots"), &owner, BOTS as u32, 14.0, &[]);
    wait_status(&owner, "all bots playing", |s| s["players"] == BOTS);
    wait_status(&owner, "a few seconds of tag", |s| {
        s["tick"].as_u64() > Some(180)
    });
    let status = get_json(&format!("{}/status", owner.admin_url()));
    assert!(
        status["game_events"].as_u64() > Some(0),
        "nobody was ever it: {status}"
    );

    // The handoff: B starts from exactly the state A froze.
    let (code, answer) = post_json(
        &format!("{}/handoff", owner.admin_url()),
        &format!("{{\"to\": \"{}\"}}", receiver.admin),
    );
    assert_eq!(code, 200, "{answer}");
    let frozen = tick_and_hash(&owner.wait_log("frozen for a handoff", limit));
    let loaded = tick_and_hash(&receiver.wait_log("match loaded", limit));
    assert_eq!(frozen, loaded, "the world B loaded is not the one A froze");
    let status = wait_status(&receiver, "bots on the new owner", |s| s["players"] == BOTS);
    assert_eq!(
        status["max_players"], BOTS,
        "the match's capacity travels: {status}"
    );
    wait_status(&receiver, "the new owner snapshots past the handoff", |s| {
        s["last_snapshot_tick"].as_u64() > Some(frozen.0 + 30)
    });

    // B dies; C restores B's newest snapshot, which continued A's world.
    receiver.kill();
    let written = newest_snapshot(&dir);
    assert!(
        written.0 > frozen.0,
        "{written:?} is not past the handoff at {frozen:?}"
    );
    let restored = tick_and_hash(&watcher.wait_log("match loaded", limit));
    assert_eq!(restored, written, "C did not continue B's world");
    let status = wait_status(&watcher, "standby took over", |s| s["role"] == "owner");
    assert_eq!(status["restores"], 1, "{status}");
    wait_status(&watcher, "bots back on the standby", |s| {
        s["players"] == BOTS
    });
    wait_status(&watcher, "tag goes on", |s| {
        s["tick"].as_u64() > Some(written.0 + 60)
    });

    let report = bots_report(bots);
    assert_eq!(report["bots"], BOTS, "{report}");
    assert_eq!(report["connected"], BOTS, "{report}");
    assert_eq!(report["disconnects"], 0, "{report}");
    assert_eq!(report["bots_handed_off"], BOTS, "{report}");
    assert!(report["reconnects"].as_u64() >= Some(BOTS), "{report}");
    assert_accounted(&report);
    assert!(owner.wait_exit(Duration::from_secs(15)).success());
    watcher.terminate();
}
