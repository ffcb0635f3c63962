//! Headless bots: many sessions in one process, each with its own UDP socket, playing with
//! simple AI, and one report at the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arena_shared::identity::{TokenRequest, mint_token, random_client_id};
use arena_shared::netcode::Key;
use arena_shared::protocol::{NetEntityKind, Snapshot};
use arena_shared::sim::{Buttons, PlayerInput};
use glam::Vec2;
use hdrhistogram::Histogram;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::Serialize;

use crate::clock::Clock;
use crate::conditioner::LinkSpec;
use crate::driver::SessionSocket;
use crate::session::Session;

/// How a bot plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Behavior {
    /// Walks in random directions, turning every few seconds, firing now and then.
    Wander,
    /// Runs at the nearest player it sees and fires when close; wanders if it sees none.
    Chase,
    /// Stands still and sends empty inputs (pure protocol load).
    Idle,
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
    /// Seeds every bot's choices (bot i uses seed + i).
    pub seed: u64,
    /// How they play.
    pub behavior: Behavior,
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

/// Runs the bots to the end and reports.
pub async fn run_bots(config: BotsConfig) -> anyhow::Result<BotsReport> {
    let config = Arc::new(config);
    let mut tasks = Vec::with_capacity(config.count);
    // Connect in small waves so a thousand handshakes do not land in one tick.
    for index in 0..config.count {
        let config = Arc::clone(&config);
        tasks.push(tokio::spawn(async move { run_bot(&config, index).await }));
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

async fn run_bot(config: &BotsConfig, index: usize) -> BotResult {
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
        rtt_us: new_histogram(),
    };
    if let Err(error) = play(config, index, &mut result).await {
        result.error = Some(format!("bot {index}: {error:#}"));
    }
    result
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant digits: constant, valid bounds.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

async fn play(config: &BotsConfig, index: usize, result: &mut BotResult) -> anyhow::Result<()> {
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
    let mut session = Session::new(start, &token, config.tick_hz);
    let mut brain = Brain::new(config.behavior, config.seed.wrapping_add(index as u64));
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
                for snapshot in session.take_snapshots() {
                    brain.observe(&snapshot);
                }
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
    session.disconnect(now);
    socket.flush_direct(&mut session).await;
    Ok(())
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

/// A bot's mind: what it saw last, and where it wants to go.
pub struct Brain {
    behavior: Behavior,
    rng: Pcg64Mcg,
    own: Option<Vec2>,
    target: Option<Vec2>,
    heading: Vec2,
    turn_in_ticks: u32,
}

impl Brain {
    /// A bot that plays as `behavior` with its own seeded choices.
    pub fn new(behavior: Behavior, seed: u64) -> Self {
        Self {
            behavior,
            rng: Pcg64Mcg::seed_from_u64(seed),
            own: None,
            target: None,
            heading: Vec2::X,
            turn_in_ticks: 0,
        }
    }

    /// Takes in a snapshot: own position and the nearest other player.
    pub fn observe(&mut self, snapshot: &Snapshot) {
        let own_id = snapshot.your_entity;
        self.own = snapshot
            .entities
            .iter()
            .find(|e| Some(e.id) == own_id)
            .map(|e| e.position());
        self.target = None;
        if let Some(own) = self.own {
            self.target = snapshot
                .entities
                .iter()
                .filter(|e| e.kind == NetEntityKind::Player && Some(e.id) != own_id && e.health > 0)
                .map(|e| e.position())
                .min_by(|a, b| a.distance_squared(own).total_cmp(&b.distance_squared(own)));
        }
    }

    /// This tick's input.
    pub fn decide(&mut self) -> PlayerInput {
        match self.behavior {
            Behavior::Idle => PlayerInput::default(),
            Behavior::Chase => match (self.own, self.target) {
                (Some(own), Some(target)) => {
                    let to = target - own;
                    let mut input = input_towards(to, to);
                    if to.length() < 15.0 {
                        input.buttons |= Buttons::FIRE;
                    }
                    input
                }
                _ => self.wander(),
            },
            Behavior::Wander => self.wander(),
        }
    }

    fn wander(&mut self) -> PlayerInput {
        if self.turn_in_ticks == 0 {
            let angle = self.rng.random_range(0.0..std::f32::consts::TAU);
            self.heading = Vec2::from_angle(angle);
            self.turn_in_ticks = self.rng.random_range(60..180);
        }
        self.turn_in_ticks -= 1;
        let mut input = input_towards(self.heading, self.heading);
        if self.rng.random_bool(0.05) {
            input.buttons |= Buttons::FIRE;
        }
        input
    }
}

/// Buttons that move roughly along `direction`, aiming along `aim`.
fn input_towards(direction: Vec2, aim: Vec2) -> PlayerInput {
    let mut buttons = 0;
    if direction.x > 0.3 * direction.length() {
        buttons |= Buttons::RIGHT;
    }
    if direction.x < -0.3 * direction.length() {
        buttons |= Buttons::LEFT;
    }
    if direction.y > 0.3 * direction.length() {
        buttons |= Buttons::UP;
    }
    if direction.y < -0.3 * direction.length() {
        buttons |= Buttons::DOWN;
    }
    PlayerInput {
        buttons,
        aim: PlayerInput::aim_from_direction(aim),
    }
}
