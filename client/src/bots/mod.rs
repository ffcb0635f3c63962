//! Headless bots for any [`Game`]: many sessions in one process, each with its own UDP
//! socket, each played by a [`Bot`], and one report at the end.
//!
//! Each bot gets a token (from the admin API, or minted locally with the private key),
//! connects, and paces its inputs at the tick rate the server tells it on connecting. It
//! plays for the run's duration, then waits up to a second for its last inputs to be
//! applied. A bot whose server went silent or disconnected it follows the session's
//! reconnects (to a standby listed in its reconnect token); if it is still without a
//! server when its time is up (or the session gave up), it has lost its match: counted in
//! `disconnects`, with what happened in `first_error`. A stop (a signal) ends every bot at
//! once, each leaving cleanly, and the report is made of what they saw so far. The exit
//! codes of a bots binary are in [`cli`].
//!
//! # Layout
//!
//! - this file: the [`Bot`] trait, the runner ([`run_bots`]) and its report;
//! - [`shooter`]: the built-in shooter's bots ([`Brain`], playing as a [`Behavior`]);
//! - [`cli`]: the command line a bots binary shares (`arena-bots` is the shooter's).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arena_shared::game::Game;
use arena_shared::identity::{TokenRequest, mint_token, random_client_id};
use arena_shared::netcode::Key;
use arena_shared::protocol::Snapshot;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use crate::clock::Clock;
use crate::conditioner::LinkSpec;
use crate::driver::{ASSUMED_TICK_HZ, SessionSocket, pacer, token_server};
use crate::session::Session;

pub mod cli;
pub mod shooter;

/// The shooter's bots, where they always were (`bots::Behavior`, `bots::Brain`).
pub use shooter::{Behavior, Brain};

/// A bot's mind for a match of `G`: takes in what it sees, and decides each tick's input.
/// One is made per bot (from its seed) and lives on that bot's task.
pub trait Bot<G: Game>: Send + 'static {
    /// Takes in a snapshot, with the match's shared data once it arrived (the map).
    fn observe(&mut self, snapshot: &Snapshot<G>, shared: Option<&G::Shared>);
    /// This tick's input.
    fn decide(&mut self) -> G::Input;
}

/// Where bots get their connect tokens.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// `POST /token` on an admin API. The token lists the server's addresses.
    Admin {
        /// The admin API's base URL.
        url: String,
        /// Its bearer token (the server's `--admin-token`), if it has one.
        bearer: Option<String>,
    },
    /// Minted locally with the fleet's private key.
    Local {
        /// The game server's UDP address, written into the tokens.
        server: SocketAddr,
        /// The private key.
        key: Key,
        /// The protocol id.
        protocol_id: u64,
    },
}

/// A bot run.
#[derive(Debug, Clone)]
pub struct BotsConfig {
    /// Where tokens come from (and so which server the bots join).
    pub tokens: TokenSource,
    /// How many bots.
    pub count: usize,
    /// How long they play once started.
    pub duration: Duration,
    /// Seeds every bot's choices (bot i's [`Bot`] is made from seed + i).
    pub seed: u64,
    /// A simulated bad network between each bot and the server (both ways).
    pub link: Option<LinkSpec>,
}

/// How long a bot tries to connect at all (the session gives up sooner on silence or a
/// denial; this bounds a token listing many dead addresses).
const CONNECT_FOR: Duration = Duration::from_secs(10);
/// How long a bot that played its time waits for its last inputs to be applied (and,
/// mid-reconnect, for a server to take it back).
const DRAIN_FOR: Duration = Duration::from_secs(1);

/// What one bot saw.
#[derive(Debug)]
struct BotResult {
    connected_ever: bool,
    connected_at_end: bool,
    lost_connection: bool,
    error: Option<String>,
    connected_for: Duration,
    snapshots: u64,
    bytes_in: u64,
    bytes_out: u64,
    max_gap: Duration,
    inputs_sent: u64,
    inputs_applied: u64,
    inputs_rolled_back: u64,
    inputs_given_up: u64,
    inputs_unacknowledged: u64,
    handoffs_followed: u64,
    handoffs_prepared: u64,
    prepares_abandoned: u64,
    reconnects: u64,
    max_rollback_ticks: u64,
    inputs_arrived_late: u64,
    /// The session's input lead at the end, ticks.
    input_lead_ticks: f64,
    rtt_us: Histogram<u64>,
}

/// The one JSON line `arena-bots` prints.
#[derive(Debug, Clone, Serialize)]
pub struct BotsReport {
    /// Bots started.
    pub bots: usize,
    /// Bots in their match when the run ended: connected, and nothing broke since their
    /// last snapshot.
    pub connected: usize,
    /// Bots that never connected.
    pub connect_failures: usize,
    /// Bots that lost their match during the run: connected once, and without a server
    /// at the end (it stopped or died and no server took the match over in time, or the
    /// session gave up reconnecting). Following a handoff, or reconnecting to a standby
    /// after a crash, is not a loss.
    pub disconnects: usize,
    /// Snapshots received per bot per second connected.
    pub snapshots_per_bot_per_s: f64,
    /// Round trip (input packet to the first snapshot acknowledging it; includes waiting
    /// for the server's next tick), median, ms.
    pub rtt_ms_p50: f64,
    /// Same, 99th percentile.
    pub rtt_ms_p99: f64,
    /// UDP payload bytes received per bot per second connected.
    pub down_bytes_per_bot_per_s: f64,
    /// UDP payload bytes sent per bot per second connected.
    pub up_bytes_per_bot_per_s: f64,
    /// Longest time any bot went without a snapshot while connected, ms.
    pub max_snapshot_gap_ms: f64,
    /// Input frames the bots made.
    pub inputs_sent: u64,
    /// Input frames applied, as the servers count them: each bot's last server's count
    /// of its frames (the count travels with the player through handoffs and restores).
    pub inputs_applied: u64,
    /// Input frames applied by an owner that then crashed, undone by the restore.
    pub inputs_rolled_back: u64,
    /// Input frames sent and not applied, for any reason (`inputs_sent - inputs_applied`):
    /// it includes `inputs_rolled_back`, `inputs_given_up` and `inputs_unacknowledged`.
    pub inputs_lost: u64,
    /// Input frames the bots gave up on (too many unapplied) that no server applied.
    pub inputs_given_up: u64,
    /// Input frames whose fate was still unknown at the end, after the final drain.
    pub inputs_unacknowledged: u64,
    /// Input frames that reached a server after their tick had run, as the snapshots the
    /// bots took report them, over the frames applied (0 when none were). The server's
    /// own `inputs_late` is higher: it also counts the frames applied a tick late behind
    /// one that arrived late.
    pub inputs_late_ratio: f64,
    /// The bots' input lead at the end (how many ticks past the round trip they aim
    /// their inputs), median over the bots.
    pub input_lead_ticks_p50: f64,
    /// Same, the greatest.
    pub input_lead_ticks_max: f64,
    /// `inputs_lost - inputs_rolled_back - inputs_given_up - inputs_unacknowledged`:
    /// frames lost for no reason the bots can name. 0 unless something is wrong (a server
    /// skipped or dropped frames it had received): report a non-zero value as a bug.
    pub inputs_unaccounted: i64,
    /// Handoffs followed, over all bots (a handoff of the match counts once per bot).
    pub handoffs_followed: u64,
    /// Bots whose switch used a connection opened ahead of the handoff (make before
    /// break) at least once.
    pub handoffs_prepared: usize,
    /// Connections opened ahead of a handoff that failed or went unused, over all bots.
    pub prepares_abandoned: u64,
    /// Reconnections after the server went silent, over all bots.
    pub reconnects: u64,
    /// Bots that followed at least one handoff.
    pub bots_handed_off: usize,
    /// The most ticks any bot saw the match go back (exact for a server that restored a
    /// crashed owner's snapshot: the newest tick the bot saw minus the restored one).
    pub max_rollback_ticks: u64,
    /// The first error of the lowest-numbered bot that met one: why it could not connect
    /// (with what is likely wrong), or how it lost its match.
    pub first_error: Option<String>,
}

/// Runs the bots to the end and reports. Bot `i` plays with `brain(seed + i)`. When `stop`
/// turns true, every bot stops at once (leaving cleanly) and the report covers what
/// they did so far.
pub async fn run_bots<G: Game, B: Bot<G>>(
    config: BotsConfig,
    brain: impl Fn(u64) -> B + Send + Sync + 'static,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<BotsReport> {
    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(config.count);
    // Connect in small waves so a thousand handshakes do not land in one tick.
    for index in 0..config.count {
        let config = Arc::clone(&config);
        let bot = brain(config.seed.wrapping_add(index as u64));
        let bot_stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            run_bot::<G, B>(&config, index, bot, bot_stop).await
        }));
        if index % 50 == 49 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
                () = stopped(&mut stop) => break,
            }
        }
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a bot task panicked")?);
    }
    // Bots a stop kept from starting never connected.
    let mut report = report(&results);
    report.bots = config.count;
    report.connect_failures += config.count - results.len();
    Ok(report)
}

/// Resolves once `stop` says stop (never, if its sender is gone without saying so).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|&stop| stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn run_bot<G: Game, B: Bot<G>>(
    config: &BotsConfig,
    index: usize,
    bot: B,
    stop: watch::Receiver<bool>,
) -> BotResult {
    let mut result = BotResult {
        connected_ever: false,
        connected_at_end: false,
        lost_connection: false,
        error: None,
        connected_for: Duration::ZERO,
        snapshots: 0,
        bytes_in: 0,
        bytes_out: 0,
        max_gap: Duration::ZERO,
        inputs_sent: 0,
        inputs_applied: 0,
        inputs_rolled_back: 0,
        inputs_given_up: 0,
        inputs_unacknowledged: 0,
        handoffs_followed: 0,
        handoffs_prepared: 0,
        prepares_abandoned: 0,
        reconnects: 0,
        max_rollback_ticks: 0,
        inputs_arrived_late: 0,
        input_lead_ticks: 0.0,
        rtt_us: new_histogram(),
    };
    if let Err(error) = play::<G, B>(config, index, bot, &mut result, stop).await {
        result.error = Some(format!("bot {index}: {error:#}"));
    }
    result
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

async fn play<G: Game, B: Bot<G>>(
    config: &BotsConfig,
    index: usize,
    mut brain: B,
    result: &mut BotResult,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = format!("bot-{index}");
    let token = tokio::select! {
        token = fetch_token(&config.tokens, &name) => token?,
        () = stopped(&mut stop) => return Ok(()),
    };
    // The token names the server (an admin API's lists its standbys after it).
    let server = token_server(&token);
    let seed = config.seed.wrapping_add(index as u64).wrapping_mul(2);
    let mut socket = SessionSocket::bind(server, config.link, seed).await?;
    let clock = Clock::start();
    let start = clock.now();
    let mut session = Session::<G>::new(start, &token, ASSUMED_TICK_HZ);
    let mut tick_hz = session.tick_hz();
    let mut ticker = pacer(tick_hz);
    let mut connected_at = None;
    let mut play_until = None;
    // Bounded: a bot ends at its play time plus the drain, or when it fails to connect
    // (within CONNECT_FOR), whichever first; the loop cannot outlive this.
    let hard_stop = start + config.duration + CONNECT_FOR + DRAIN_FOR + Duration::from_secs(4);
    let mut draining_until = None;
    loop {
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    socket.receive(&mut session, || clock.now());
                }
            }
            () = stopped(&mut stop) => break,
            _ = ticker.tick() => {
                let now = clock.now();
                socket.deliver_due(&mut session, now);
                session.update(now);
                // Inputs go at the server's rate, once it told it.
                if session.tick_hz() != tick_hz {
                    tick_hz = session.tick_hz();
                    ticker = pacer(tick_hz);
                }
                if session.is_connected() && connected_at.is_none() {
                    connected_at = Some(now);
                    play_until = Some(now + config.duration);
                    result.connected_ever = true;
                }
                // Moving to another server (a handoff or a reconnect) is not losing it;
                // a session that gave up reconnecting has.
                if result.connected_ever && session.is_lost() {
                    break;
                }
                if !result.connected_ever {
                    if let Some(failure) = session.connect_failure() {
                        anyhow::bail!("could not connect: {failure}");
                    }
                    if now >= start + CONNECT_FOR {
                        anyhow::bail!(
                            "could not connect within {} s (still {:?})",
                            CONNECT_FOR.as_secs(),
                            session.state()
                        );
                    }
                }
                observe(&mut session, &mut brain);
                match (play_until, draining_until) {
                    (Some(until), None) if now < until => {
                        let input = brain.decide();
                        let _ = session.send_input(now, input);
                    }
                    (Some(_), None) => draining_until = Some(now + DRAIN_FOR),
                    (_, Some(until)) => {
                        let settled = session.unapplied_inputs() == 0 && is_playing(&session);
                        if settled || now >= until {
                            break;
                        }
                        session.resend_inputs(now);
                    }
                    _ => {}
                }
                while let Some(sample) = session.take_rtt_sample() {
                    let _ = result.rtt_us.record((sample.as_micros() as u64).max(1));
                }
                socket.flush(&mut session, now).await;
                if now >= hard_stop {
                    break;
                }
            }
        }
    }
    let now = clock.now();
    result.connected_at_end = is_playing(&session);
    if result.connected_ever && !result.connected_at_end {
        result.lost_connection = true;
        result.error = Some(format!("bot {index}: {}", lost_match(&session, now)));
    }
    result.connected_for = connected_at.map_or(Duration::ZERO, |at| now.saturating_sub(at));
    let stats = session.stats();
    result.snapshots = stats.snapshots;
    result.bytes_in = stats.bytes_in;
    result.bytes_out = stats.bytes_out;
    result.max_gap = stats.max_snapshot_gap;
    // Read after the final drain: what is still unacknowledged now is reported as such.
    result.inputs_sent = stats.inputs_sent;
    result.inputs_applied = stats.inputs_applied;
    result.inputs_rolled_back = stats.inputs_rolled_back;
    result.inputs_given_up = stats.inputs_given_up;
    result.inputs_unacknowledged = session.inputs_unacknowledged();
    result.handoffs_followed = stats.handoffs_followed;
    result.handoffs_prepared = stats.handoffs_prepared;
    result.prepares_abandoned = stats.prepares_abandoned;
    result.reconnects = stats.reconnects;
    result.max_rollback_ticks = stats.max_rollback_ticks;
    result.inputs_arrived_late = stats.inputs_arrived_late;
    result.input_lead_ticks = session.input_lead_ticks();
    session.disconnect(now);
    socket.flush_direct(&mut session).await;
    Ok(())
}

/// A token from where the run gets them.
async fn fetch_token(tokens: &TokenSource, name: &str) -> anyhow::Result<Vec<u8>> {
    match tokens {
        TokenSource::Admin { url, bearer } => {
            crate::http::fetch_token_with(url, name, false, bearer.as_deref()).await
        }
        TokenSource::Local {
            server,
            key,
            protocol_id,
        } => local_token(*server, *key, *protocol_id, name),
    }
}

/// Whether the session is in its match: connected, and nothing broke since its last
/// snapshot.
fn is_playing<G: Game>(session: &Session<G>) -> bool {
    session.is_connected() && session.interruption().is_none()
}

/// What a bot that lost its match says about it.
fn lost_match<G: Game>(session: &Session<G>, now: Duration) -> String {
    let Some(interruption) = session.interruption() else {
        return format!(
            "lost the match: the connection to {} ended ({:?})",
            session
                .server_address()
                .map_or_else(|| "the server".to_owned(), |s| s.to_string()),
            session.state()
        );
    };
    let after = if session.gave_up() {
        format!(
            "gave up reconnecting after {} s",
            crate::session::RECONNECT_FOR.as_secs()
        )
    } else if session.has_reconnect_token() {
        format!(
            "no server took it back in {:.1} s",
            now.saturating_sub(interruption.at).as_secs_f64()
        )
    } else {
        "no reconnect token to try another server with".to_owned()
    };
    format!("lost the match: {interruption}; {after}")
}

/// Shows the bot the snapshots that arrived. Bots do not read the game's events: they are
/// taken and dropped, so the session does not hold (and count as dropped) a backlog.
fn observe<G: Game, B: Bot<G>>(session: &mut Session<G>, brain: &mut B) {
    let fresh: Vec<Snapshot<G>> = session.take_snapshots().collect();
    for snapshot in &fresh {
        brain.observe(snapshot, session.shared());
    }
    session.take_events().for_each(drop);
}

/// Mints a token locally, as a backend holding the private key would.
pub fn local_token(
    server: SocketAddr,
    key: Key,
    protocol_id: u64,
    name: &str,
) -> anyhow::Result<Vec<u8>> {
    let token = mint_token(
        &TokenRequest {
            protocol_id,
            server_addresses: vec![server],
            client_id: random_client_id(),
            name: name.to_owned(),
            now_unix_s: Clock::start().now().as_secs(),
            expire_s: 60,
            timeout_s: 5,
            spectator: false,
        },
        &key,
    )?;
    Ok(token.write()?.to_vec())
}

fn report(results: &[BotResult]) -> BotsReport {
    let mut rtt = new_histogram();
    let mut connected_seconds = 0.0;
    let (mut snapshots, mut bytes_in, mut bytes_out) = (0u64, 0u64, 0u64);
    let inputs = InputTotals::of(results);
    let mut max_gap = Duration::ZERO;
    for r in results {
        let _ = rtt.add(&r.rtt_us);
        connected_seconds += r.connected_for.as_secs_f64();
        snapshots += r.snapshots;
        bytes_in += r.bytes_in;
        bytes_out += r.bytes_out;
        max_gap = max_gap.max(r.max_gap);
    }
    let per_second = |total: u64| {
        if connected_seconds > 0.0 {
            total as f64 / connected_seconds
        } else {
            0.0
        }
    };
    let ms = |us: u64| us as f64 / 1000.0;
    let late: u64 = results.iter().map(|r| r.inputs_arrived_late).sum();
    let mut leads: Vec<f64> = results
        .iter()
        .filter(|r| r.connected_ever)
        .map(|r| r.input_lead_ticks)
        .collect();
    leads.sort_by(f64::total_cmp);
    BotsReport {
        bots: results.len(),
        connected: results.iter().filter(|r| r.connected_at_end).count(),
        connect_failures: results.iter().filter(|r| !r.connected_ever).count(),
        disconnects: results.iter().filter(|r| r.lost_connection).count(),
        snapshots_per_bot_per_s: per_second(snapshots),
        rtt_ms_p50: ms(rtt.value_at_quantile(0.5)),
        rtt_ms_p99: ms(rtt.value_at_quantile(0.99)),
        down_bytes_per_bot_per_s: per_second(bytes_in),
        up_bytes_per_bot_per_s: per_second(bytes_out),
        max_snapshot_gap_ms: max_gap.as_secs_f64() * 1000.0,
        inputs_sent: inputs.sent,
        inputs_applied: inputs.applied,
        inputs_rolled_back: inputs.rolled_back,
        inputs_lost: inputs.sent.saturating_sub(inputs.applied),
        inputs_given_up: inputs.given_up,
        inputs_unacknowledged: inputs.unacknowledged,
        inputs_unaccounted: inputs.unaccounted(),
        inputs_late_ratio: if inputs.applied > 0 {
            late as f64 / inputs.applied as f64
        } else {
            0.0
        },
        input_lead_ticks_p50: leads.get(leads.len() / 2).copied().unwrap_or(0.0),
        input_lead_ticks_max: leads.last().copied().unwrap_or(0.0),
        handoffs_followed: results.iter().map(|r| r.handoffs_followed).sum(),
        handoffs_prepared: results.iter().filter(|r| r.handoffs_prepared > 0).count(),
        prepares_abandoned: results.iter().map(|r| r.prepares_abandoned).sum(),
        reconnects: results.iter().map(|r| r.reconnects).sum(),
        bots_handed_off: results.iter().filter(|r| r.handoffs_followed > 0).count(),
        max_rollback_ticks: results
            .iter()
            .map(|r| r.max_rollback_ticks)
            .max()
            .unwrap_or(0),
        first_error: results.iter().find_map(|r| r.error.clone()),
    }
}

/// The bots' input counts, summed.
#[derive(Debug, Default)]
struct InputTotals {
    sent: u64,
    applied: u64,
    rolled_back: u64,
    given_up: u64,
    unacknowledged: u64,
}

impl InputTotals {
    fn of(results: &[BotResult]) -> Self {
        let mut totals = Self::default();
        for r in results {
            totals.sent += r.inputs_sent;
            totals.applied += r.inputs_applied;
            totals.rolled_back += r.inputs_rolled_back;
            totals.given_up += r.inputs_given_up;
            totals.unacknowledged += r.inputs_unacknowledged;
        }
        totals
    }

    /// Sent frames none of the named fates accounts for (signed: a negative value would
    /// mean a frame counted twice).
    fn unaccounted(&self) -> i64 {
        let signed = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        signed(self.sent)
            .saturating_sub(signed(self.applied))
            .saturating_sub(signed(self.rolled_back))
            .saturating_sub(signed(self.given_up))
            .saturating_sub(signed(self.unacknowledged))
    }
}
