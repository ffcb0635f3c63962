//! The terminal client: drawing a real game into ratatui's TestBackend, and the real
//! binary in --headless mode against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use arena_client::bots::shooter::Behavior;
use arena_client::play::{Game, LEGEND, screen_text};
use arena_client::session::Session;
use arena_shared::sim::{GameEvent, PlayerInput, Shooter};
use arena_tests::procs::{ServerProcess, bin_path, spawn_bots, temp_dir};
use arena_tests::simnet::{LinkConfig, SimConfig, SimNet};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

const TICK_HZ: u64 = 60;

#[test]
fn a_frame_shows_the_player_the_others_and_the_hud() {
    let seed = 41;
    // A small arena, so everyone is in view.
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 4,
        ..SimConfig::default()
    });
    let me = net.add_client(LinkConfig::clean(), Behavior::Idle);
    for _ in 0..3 {
        net.add_client(LinkConfig::clean(), Behavior::Idle);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.run_ticks(TICK_HZ);
    let now = net.now;
    let client = &mut net.clients[me];
    let session = std::mem::replace(&mut client.session, Session::<Shooter>::new(now, &[], 60));
    let mut game = Game::new(session, false);
    game.predictor = std::mem::take(&mut client.predictor);
    game.interpolator = std::mem::take(&mut client.interpolator);

    let mut terminal = Terminal::new(TestBackend::new(100, 30)).unwrap();
    terminal.draw(|frame| game.draw(frame, now)).unwrap();
    let text = screen_text(terminal.backend().buffer());
    // The arena: below the status line and the legend, above the bottom line.
    let arena = |text: &str| {
        let lines: Vec<&str> = text.lines().collect();
        lines[2..lines.len() - 1].concat()
    };
    assert_eq!(
        arena(&text).matches('@').count(),
        1,
        "own player once:\n{text}"
    );
    assert!(
        arena(&text).matches('o').count() >= 3,
        "three others:\n{text}"
    );
    for field in ["tick", "rtt", "loss", "snap/s", "hp 100", "q/Esc quit"] {
        assert!(text.contains(field), "HUD lacks {field:?}:\n{text}");
    }

    // A standard 80x24 terminal: the own standing first, the legend whole.
    let mut standard = Terminal::new(TestBackend::new(80, 24)).unwrap();
    standard.draw(|frame| game.draw(frame, now)).unwrap();
    let text = screen_text(standard.backend().buffer());
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("hp 100 · kills 0 · deaths 0 │ rtt "),
        "{text}"
    );
    assert_eq!(lines[1].trim_end(), LEGEND, "{text}");
    assert_eq!(arena(&text).matches('@').count(), 1, "{text}");

    // Tab: the scoreboard, with every player.
    game.show_scores = true;
    terminal.draw(|frame| game.draw(frame, now)).unwrap();
    let text = screen_text(terminal.backend().buffer());
    assert!(
        text.contains("kills") && text.matches("sim-").count() == 4,
        "{text}"
    );

    // A smaller terminal (resized) still draws, the player still in it.
    game.show_scores = false;
    let mut small = Terminal::new(TestBackend::new(40, 12)).unwrap();
    small.draw(|frame| game.draw(frame, now)).unwrap();
    assert_eq!(
        arena(&screen_text(small.backend().buffer()))
            .matches('@')
            .count(),
        1,
        "{}",
        screen_text(small.backend().buffer())
    );
}

#[test]
fn the_screen_says_who_shot_you_and_the_kill_feed_names_both_players() {
    let seed = 43;
    let mut net = SimNet::new(SimConfig {
        seed,
        max_players: 4,
        ..SimConfig::default()
    });
    // The player stands still; three bots hunt.
    let me = net.add_client(LinkConfig::clean(), Behavior::Idle);
    net.clients[me].fixed_input = Some(PlayerInput::default());
    for _ in 0..3 {
        net.add_client(LinkConfig::clean(), Behavior::Chase);
    }
    assert!(
        net.run_until(3 * TICK_HZ, SimNet::all_connected),
        "seed {seed}"
    );
    net.run_ticks(TICK_HZ);
    let Some(own) = net.clients[me]
        .session
        .scoreboard()
        .iter()
        .find(|e| e.you)
        .map(|e| e.player)
    else {
        panic!("no own line on the scoreboard (seed {seed})");
    };
    let killed_me = |net: &SimNet| {
        net.kills.iter().find_map(|e| match *e {
            GameEvent::Killed { victim, by } if victim == own => Some(by),
            _ => None,
        })
    };
    assert!(
        net.run_until(60 * TICK_HZ, |net| killed_me(net).is_some()),
        "nobody shot the player in a minute (seed {seed})"
    );
    let Some(killer) = killed_me(&net) else {
        panic!("seed {seed}");
    };
    // The kill reaches the client reliably; the body is down for two seconds.
    net.run_ticks(TICK_HZ / 4);
    let now = net.now;
    let client = &mut net.clients[me];
    let session = std::mem::replace(&mut client.session, Session::<Shooter>::new(now, &[], 60));
    let killer_name = session.name(killer).unwrap().to_owned();
    let own_name = session.name(own).unwrap().to_owned();
    let mut game = Game::new(session, false);
    game.absorb_snapshots(now);
    game.absorb_events(now);
    let mut terminal = Terminal::new(TestBackend::new(80, 24)).unwrap();
    terminal.draw(|frame| game.draw(frame, now)).unwrap();
    let text = screen_text(terminal.backend().buffer());
    assert!(
        text.contains(&format!("{killer_name} shot {own_name}")),
        "the kill feed names both:\n{text}"
    );
    assert!(
        text.contains(&format!("{killer_name} shot you")),
        "who shot you:\n{text}"
    );
    assert!(
        text.lines()
            .next()
            .unwrap()
            .starts_with("hp 0 · kills 0 · deaths 1"),
        "{text}"
    );
}

#[test]
fn headless_play_connects_draws_and_leaves_cleanly() {
    let dir = temp_dir("play");
    let server = ServerProcess::start(&dir, &["--max-players", "16"]);
    let admin = server.admin_url();
    // Idle bots: company that does not shoot, so the player is alive (drawn as '@') at
    // the last frame.
    let bots = spawn_bots(&[
        "--behavior",
        "idle",
        "--admin",
        &admin,
        "--count",
        "3",
        "--duration",
        "4",
    ]);
    let out = Command::new(bin_path("arena-play"))
        .args([
            "--admin",
            &admin,
            "--name",
            "tester",
            "--headless",
            "--frames",
            "60",
        ])
        .args(["--simulate", "loss=5%,latency=40ms,jitter=10ms"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["connected"], true);
    assert_eq!(report["frames"], 60);
    assert!(report["snapshots"].as_u64().unwrap() > 30, "{report}");
    // The default screen is a standard 80x24 terminal: the own standing first, then the
    // connection; the legend below it.
    let screen = report["screen"].as_str().unwrap();
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(lines.len(), 24, "{screen}");
    assert!(lines.iter().all(|l| l.chars().count() == 80), "{screen}");
    assert!(lines[0].starts_with("hp "), "{screen}");
    for field in [" · kills ", " · deaths ", "rtt"] {
        assert!(lines[0].contains(field), "no {field:?}:\n{screen}");
    }
    assert_eq!(lines[1].trim_end(), LEGEND, "{screen}");
    assert!(
        screen.matches('@').count() >= 2,
        "the player and the legend's:\n{screen}"
    );
    let (status, _, stderr) = bots.wait(Duration::from_secs(60));
    assert!(status.success(), "{stderr}");
    server.terminate();
}

#[test]
fn an_unreachable_server_is_a_message_not_a_trace() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(bin_path("arena-play"))
        .args(["--admin", &format!("http://127.0.0.1:{port}"), "--headless"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot get a connect token"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn a_protected_admin_api_takes_the_players_token_and_the_servers_tick_rate_applies() {
    let dir = temp_dir("play-token");
    // A 30 Hz server whose admin API wants a bearer token: the player passes neither
    // the address of the game socket nor the tick rate, only the admin API and its token.
    let server = ServerProcess::start(
        &dir,
        &[
            "--max-players",
            "4",
            "--tick-hz",
            "30",
            "--admin-token",
            "s3cret",
        ],
    );
    let admin = server.admin_url();
    let refused = Command::new(bin_path("arena-play"))
        .args(["--admin", &admin, "--headless", "--frames", "10"])
        .env_remove("ARENA_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--admin-token"), "{stderr}");
    let out = Command::new(bin_path("arena-play"))
        .args(["--admin", &admin, "--headless", "--frames", "45"])
        .env("ARENA_ADMIN_TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["connected"], true, "{report}");
    // 45 frames are drawn every other tick: 90 ticks, 3 s at the server's 30 Hz. The
    // player's inputs went at the server's rate, so it applied them in time.
    let status = arena_tests::procs::get_json(&format!("{admin}/status"));
    let applied = status["inputs_applied"].as_u64().unwrap();
    let late = status["inputs_late"].as_u64().unwrap();
    assert!(applied > 30, "{status}");
    assert!(late * 100 <= applied, "{late} of {applied} late: {status}");
    server.terminate();
}
