//! Headless bots for any [`Game`]: many sessions in one process, each with its own UDP
//! socket, each played by a [`Bot`], and one report at the end.
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

use crate::clock::Clock;
use crate::conditioner::LinkSpec;
use crate::driver::SessionSocket;
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
    /// `POST /token` on this admin API base URL.
    Admin(String),
    /// Minted locally with the fleet's private key.
    Local {
        /// The private key.
        key: Key,
        /// The protocol id.
        protocol_id: u64,
    },
}

/// A bot run.
#[derive(Debug, Clone)]
pub struct BotsConfig {
    /// The game server's UDP address.
    pub server: SocketAddr,
    /// Where tokens come from.
    pub tokens: TokenSource,
    /// How many bots.
    pub count: usize,
    /// How long they play once started.
    pub duration: Duration,
    /// Seeds every bot's choices (bot i's [`Bot`] is made from seed + i).
    pub seed: u64,
    /// Inputs per second (the server's tick rate).
    pub tick_hz: u32,
    /// A simulated bad network between each bot and the server (both ways).
    pub link: Option<LinkSpec>,
}

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
    /// Bots connected when the run ended.
    pub connected: usize,
    /// Bots that never connected.
    pub connect_failures: usize,
    /// Bots that lost their connection during the run.
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
    /// The first error a bot met, if any.
    pub first_error: Option<String>,
}

/// Runs the bots to the end and reports. Bot `i` plays with `brain(seed + i)`.
pub async fn run_bots<G: Game, B: Bot<G>>(
    config: BotsConfig,
    brain: impl Fn(u64) -> B + Send + Sync + 'static,
) -> anyhow::Result<BotsReport> {
    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(config.count);
    // Connect in small waves so a thousand handshakes do not land in one tick.
    for index in 0..config.count {
        let config = Arc::clone(&config);
        let bot = brain(config.seed.wrapping_add(index as u64));
        tasks.push(tokio::spawn(async move {
            run_bot::<G, B>(&config, index, bot).await
        }));
        if index % 50 == 49 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut results = Vec::with_capacity(tasks.len());
    for task in tasks {
        results.push(task.await.context("a bot task panicked")?);
    }
    Ok(report(&results))
}

async fn run_bot<G: Game, B: Bot<G>>(config: &BotsConfig, index: usize, bot: B) -> BotResult {
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
    if let Err(error) = play::<G, B>(config, index, bot, &mut result).await {
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
) -> anyhow::Result<()> {
    let name = format!("bot-{index}");
    let token = match &config.tokens {
        TokenSource::Admin(url) => crate::http::fetch_token(url, &name).await?,
        TokenSource::Local { key, protocol_id } => {
            local_token(config.server, *key, *protocol_id, &name)?
        }
    };
    let seed = config.seed.wrapping_add(index as u64).wrapping_mul(2);
    let mut socket = SessionSocket::bind(config.server, config.link, seed).await?;
    let clock = Clock::start();
    let start = clock.now();
    let mut session = Session::<G>::new(start, &token, config.tick_hz);
    let period = Duration::from_secs_f64(1.0 / f64::from(config.tick_hz.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut connected_at = None;
    let mut play_until = None;
    // Bounded: a bot ends at its play time plus one second of draining, or 10 s of failing
    // to connect, whichever first; the loop cannot outlive that.
    let hard_stop = start + config.duration + Duration::from_secs(15);
    let mut draining_until = None;
    loop {
        tokio::select! {
            ready = socket.readable() => {
                if ready.is_ok() {
                    socket.receive(&mut session, || clock.now());
                }
            }
            _ = ticker.tick() => {
                let now = clock.now();
                socket.deliver_due(&mut session, now);
                session.update(now);
                if session.is_connected() && connected_at.is_none() {
                    connected_at = Some(now);
                    play_until = Some(now + config.duration);
                    result.connected_ever = true;
                }
                // Moving to another server (a handoff or a reconnect) is not losing it.
                if result.connected_ever && session.is_lost() {
                    result.lost_connection = true;
                    break;
                }
                if !result.connected_ever && (session.state().is_error() || now >= start + Duration::from_secs(10)) {
                    anyhow::bail!("could not connect: {:?}", session.state());
                }
                observe(&mut session, &mut brain);
                match (play_until, draining_until) {
                    (Some(until), None) if now < until => {
                        let input = brain.decide();
                        let _ = session.send_input(now, input);
                    }
                    (Some(_), None) => draining_until = Some(now + Duration::from_secs(1)),
                    (_, Some(until)) => {
                        if session.unapplied_inputs() == 0 || now >= until {
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
    result.connected_at_end = session.is_connected();
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
