//! The terminal client: drawing a real game into ratatui's TestBackend, and the real
//! binary in --headless mode against the real server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use arena_client::bots::shooter::Behavior;
use arena_client::play::{Game, screen_text};
use arena_client::session::Session;
use arena_shared::sim::Shooter;
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
    assert_eq!(text.matches('@').count(), 1, "own player once:\n{text}");
    assert!(text.matches('o').count() >= 3, "three others:\n{text}");
    for field in ["tick", "rtt", "loss", "snap/s", "hp 100", "q/Esc quit"] {
        assert!(text.contains(field), "HUD lacks {field:?}:\n{text}");
    }

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
        screen_text(small.backend().buffer()).matches('@').count(),
        1,
        "{}",
        screen_text(small.backend().buffer())
    );
}

#[test]
fn headless_play_connects_draws_and_leaves_cleanly() {
    let dir = temp_dir("play");
    let server = ServerProcess::start(&dir, &["--max-players", "16"]);
    let udp = server.udp.to_string();
    let admin = server.admin_url();
    // Idle bots: company that does not shoot, so the player is alive (drawn as '@') at
    // the last frame.
    let bots = spawn_bots(&[
        "--behavior",
        "idle",
        "--server",
        &udp,
        "--admin",
        &admin,
        "--count",
        "3",
        "--duration",
        "4",
    ]);
    let out = Command::new(bin_path("arena-play"))
        .args([
            "--server",
            &udp,
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
    let screen = report["screen"].as_str().unwrap();
    assert!(screen.contains('@') && screen.contains("rtt"), "{screen}");
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
