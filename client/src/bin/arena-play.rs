//! `arena-play`: play Arena's built-in shooter in a terminal.

use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use arena_client::clock::Clock;
use arena_client::conditioner::LinkSpec;
use arena_client::driver::{ASSUMED_TICK_HZ, SessionSocket, pacer, token_server};
use arena_client::http::fetch_token_with;
use arena_client::play::{Game, Key, describe_failure, screen_text};
use arena_client::session::Session;
use arena_shared::sim::Shooter;
use clap::Parser;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::{Backend, CrosstermBackend, TestBackend};
use tokio::sync::mpsc;

/// Play Arena in the terminal: WASD or arrows move, space fires where you last moved,
/// Tab shows the scores, q or Esc quits.
///
/// The connect token from the admin API names the server to play on (its UDP address,
/// then its standbys'), and the server tells its tick rate and view radius: the admin
/// API's address is all a player needs.
#[derive(Debug, Parser)]
#[command(name = "arena-play", version)]
struct Args {
    /// The server's admin API, where the connect token comes from (POST /token).
    #[arg(long, default_value = "http://127.0.0.1:7700")]
    admin: String,
    /// Bearer token for that admin API, when the server runs with --admin-token.
    #[arg(long, env = "ARENA_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Your name on the scoreboard.
    #[arg(long, default_value = "player")]
    name: String,
    /// Watch the whole arena without joining.
    #[arg(long)]
    spectate: bool,
    /// Play over a worse network, e.g. "loss=5%,latency=80ms,jitter=20ms" (each way).
    #[arg(long)]
    simulate: Option<LinkSpec>,
    /// Draw into an in-memory screen instead of the terminal (tests, scripts).
    #[arg(long)]
    headless: bool,
    /// With --headless: frames to draw before leaving.
    #[arg(long, default_value_t = 120)]
    frames: u64,
    /// With --headless: the in-memory screen's size, COLUMNSxROWS.
    #[arg(long, default_value = "80x24", value_parser = parse_screen)]
    screen: (u16, u16),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("arena-play: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Everything that can fail plainly happens before the terminal changes.
        let token = fetch_token_with(
            &args.admin,
            &args.name,
            args.spectate,
            args.admin_token.as_deref(),
        )
        .await
        .context("cannot get a connect token")?;
        let socket = SessionSocket::bind(token_server(&token), args.simulate, 1).await?;
        let clock = Clock::start();
        let session = Session::<Shooter>::new(clock.now(), &token, ASSUMED_TICK_HZ);
        let game = Game::new(session, args.spectate);
        if args.headless {
            let (columns, rows) = args.screen;
            let mut terminal = Terminal::new(TestBackend::new(columns, rows))?;
            let outcome = play(game, &mut terminal, socket, clock, &args, None).await?;
            let screen = screen_text(terminal.backend().buffer());
            println!(
                "{}",
                serde_json::json!({
                    "connected": outcome.connected,
                    "frames": outcome.frames,
                    "snapshots": outcome.snapshots,
                    "rtt_ms": outcome.rtt_ms,
                    "max_correction_m": outcome.max_correction_m,
                    "screen": screen,
                })
            );
            return Ok(if outcome.connected {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        let guard = TerminalGuard::enter()?;
        let mut terminal = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
        let (keys, stop) = spawn_key_reader();
        let mut game = game;
        game.set_releases_reported(guard.releases_reported);
        let outcome = play(game, &mut terminal, socket, clock, &args, Some(keys)).await;
        stop.store(true, Ordering::Relaxed);
        drop(guard);
        let outcome = outcome?;
        if let Some(failure) = outcome.failure {
            bail!("{failure}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `COLUMNSxROWS`, each from 20 to 1000 (a screen the layout fits in).
fn parse_screen(text: &str) -> Result<(u16, u16), String> {
    let parse = |part: &str| {
        part.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (20..=1000).contains(n))
    };
    match text
        .split_once(['x', 'X'])
        .map(|(c, r)| (parse(c), parse(r)))
    {
        Some((Some(columns), Some(rows))) => Ok((columns, rows)),
        _ => Err(format!(
            "expected COLUMNSxROWS, each from 20 to 1000 (like 80x24), got {text:?}"
        )),
    }
}

/// How a game ended.
struct Outcome {
    connected: bool,
    frames: u64,
    snapshots: u64,
    rtt_ms: Option<u128>,
    max_correction_m: f32,
    failure: Option<String>,
}

/// What the key reader sends.
enum Input {
    Down(Key),
    Up(Key),
    Scores,
    Quit,
}

async fn play<B: Backend>(
    mut game: Game,
    terminal: &mut Terminal<B>,
    mut socket: SessionSocket,
    clock: Clock,
    args: &Args,
    mut keys: Option<mpsc::UnboundedReceiver<Input>>,
) -> anyhow::Result<Outcome>
where
    B::Error: Send + Sync + 'static,
{
    let mut tick_hz = game.session.tick_hz();
    let mut ticker = pacer(tick_hz);
    let mut frames = 0;
    let mut ticks: u64 = 0;
    let mut connected = false;
    let mut failure = None;
    loop {
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    socket.receive(&mut game.session, || clock.now());
                }
            }
            Some(input) = async { match &mut keys { Some(k) => k.recv().await, None => std::future::pending().await } } => {
                let now = clock.now();
                match input {
                    Input::Down(key) => game.key_down(now, key),
                    Input::Up(key) => game.key_up(key),
                    Input::Scores => game.show_scores = !game.show_scores,
                    Input::Quit => break,
                }
            }
            _ = ticker.tick() => {
                let now = clock.now();
                socket.deliver_due(&mut game.session, now);
                game.session.update(now);
                // Inputs go at the server's rate, once it told it.
                if game.session.tick_hz() != tick_hz {
                    tick_hz = game.session.tick_hz();
                    ticker = pacer(tick_hz);
                }
                game.absorb_snapshots(now);
                game.absorb_events(now);
                if args.headless {
                    // Something to predict: walk right, fire now and then.
                    game.key_down(now, Key::Right);
                    if ticks.is_multiple_of(30) {
                        game.key_down(now, Key::Fire);
                    }
                }
                game.send_input(now);
                socket.flush(&mut game.session, now).await;
                connected |= game.session.latest_snapshot().is_some();
                if game.session.is_lost() {
                    failure = Some(match game.session.connect_failure() {
                        Some(why) => why.to_string(),
                        None => describe_failure(game.session.state()).to_owned(),
                    });
                    break;
                }
                // Draw at half the tick rate: plenty for a terminal.
                if ticks.is_multiple_of(2) {
                    terminal.draw(|frame| game.draw(frame, now))?;
                    frames += 1;
                    if args.headless && frames >= args.frames {
                        break;
                    }
                }
                ticks += 1;
            }
        }
    }
    let now = clock.now();
    game.session.disconnect(now);
    // Goodbyes go straight out, not through the simulated link.
    socket.flush_direct(&mut game.session).await;
    Ok(Outcome {
        connected,
        frames,
        snapshots: game.session.stats().snapshots,
        rtt_ms: game.session.rtt().map(|r| r.as_millis()),
        max_correction_m: game.predictor.max_correction_m,
        failure: if connected && failure.as_deref() == Some("disconnected") {
            None
        } else {
            failure
        },
    })
}

/// Reads keys on a thread of its own (crossterm's reader blocks) until `stop` is set.
fn spawn_key_reader() -> (mpsc::UnboundedReceiver<Input>, Arc<AtomicBool>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = Arc::clone(&stop);
    std::thread::spawn(move || {
        while !stopping.load(Ordering::Relaxed) {
            let Ok(true) = event::poll(Duration::from_millis(50)) else {
                continue;
            };
            let Ok(Event::Key(key)) = event::read() else {
                continue;
            };
            let quit = matches!(key.code, KeyCode::Esc | KeyCode::Char('q'))
                || (key.code == KeyCode::Char('c')
                    && key.modifiers.contains(KeyModifiers::CONTROL));
            let mapped = match key.code {
                KeyCode::Char('w' | 'W') | KeyCode::Up => Some(Key::Up),
                KeyCode::Char('s' | 'S') | KeyCode::Down => Some(Key::Down),
                KeyCode::Char('a' | 'A') | KeyCode::Left => Some(Key::Left),
                KeyCode::Char('d' | 'D') | KeyCode::Right => Some(Key::Right),
                KeyCode::Char(' ') => Some(Key::Fire),
                _ => None,
            };
            let input = match (key.kind, mapped) {
                (KeyEventKind::Release, Some(k)) => Input::Up(k),
                (KeyEventKind::Release, None) => continue,
                (_, Some(k)) => Input::Down(k),
                (_, None) if quit => Input::Quit,
                (_, None) if key.code == KeyCode::Tab => Input::Scores,
                _ => continue,
            };
            if tx.send(input).is_err() {
                break;
            }
        }
    });
    (rx, stop)
}

/// Raw mode and the alternate screen while alive; the terminal as it was afterwards, even
/// after a panic.
struct TerminalGuard {
    releases_reported: bool,
}

impl TerminalGuard {
    fn enter() -> anyhow::Result<Self> {
        use crossterm::event::{KeyboardEnhancementFlags, PushKeyboardEnhancementFlags};
        crossterm::terminal::enable_raw_mode().context("this terminal cannot do raw mode")?;
        let mut out = std::io::stdout();
        crossterm::execute!(
            out,
            crossterm::terminal::EnterAlternateScreen,
            crossterm::cursor::Hide
        )?;
        // Terminals that report key releases let a held key mean "held".
        let releases_reported = matches!(
            crossterm::terminal::supports_keyboard_enhancement(),
            Ok(true)
        ) && crossterm::execute!(
            out,
            PushKeyboardEnhancementFlags(KeyboardEnhancementFlags::REPORT_EVENT_TYPES)
        )
        .is_ok();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal(true);
            previous(info);
        }));
        Ok(Self { releases_reported })
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal(self.releases_reported);
    }
}

fn restore_terminal(pop_enhancement: bool) {
    let mut out = std::io::stdout();
    if pop_enhancement {
        let _ = crossterm::execute!(out, crossterm::event::PopKeyboardEnhancementFlags);
    }
    let _ = crossterm::execute!(
        out,
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = out.flush();
}
