//! The sans-IO client session: connect with a token, send inputs, receive snapshots.
//!
//! # Calling order
//!
//! Like the server core: on each wake-up the driver reads the clock once, feeds every
//! datagram to [`Session::handle_datagram`], calls [`Session::update`], then
//! [`Session::send_input`] once per tick when connected, and drains
//! [`Session::poll_transmit`].
//!
//! Inputs are kept until the server reports them applied (`last_applied_input` in each
//! snapshot) and every packet carries the oldest unapplied ones, so a lost packet loses
//! nothing: the next packet repeats it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::netcode::{self, ClientState, Transmit};
use arena_shared::protocol::messages::{MAX_INPUT_FRAMES_PER_PACKET, TOKEN_PARTS};
use arena_shared::protocol::{
    AckTracker, ClientMessage, ScoreEntry, ServerMessage, Snapshot, TokenPart, TokenPurpose,
    decode_server, encode,
};
use arena_shared::sim::{InputFrame, PlayerInput, Tick};

/// Unapplied input frames a client keeps (two seconds at 60 Hz). Past this the oldest is
/// given up and counted as lost: the server notices the gap and moves on.
pub const MAX_UNAPPLIED_INPUTS: usize = 120;
/// Ticks of margin so inputs arrive just before the tick they are for.
const INPUT_LEAD_TICKS: f64 = 2.0;
/// Silence from a connected server after which the session reconnects with its reconnect
/// token (the server may have died; a standby may hold the match now).
pub const SILENCE_BEFORE_RECONNECT: Duration = Duration::from_millis(1000);
/// Reconnect attempts (each tries the token's addresses) before the session gives up.
const MAX_RECONNECT_ATTEMPTS: u32 = 5;

/// Counters a session keeps.
#[derive(Debug, Clone, Default)]
pub struct SessionStats {
    /// Snapshots received (newer than the previous one).
    pub snapshots: u64,
    /// UDP payload bytes received (whole netcode packets).
    pub bytes_in: u64,
    /// UDP payload bytes sent.
    pub bytes_out: u64,
    /// Input frames made.
    pub inputs_sent: u64,
    /// Input frames given up because too many were unapplied.
    pub inputs_given_up: u64,
    /// Longest time between two snapshots while connected.
    pub max_snapshot_gap: Duration,
    /// Payloads that were not a valid game message.
    pub bad_messages: u64,
    /// Redirects followed (the match was handed to another server).
    pub handoffs_followed: u64,
    /// Reconnections after the server went silent.
    pub reconnects: u64,
    /// The most ticks a new server was behind the old one (a crash's rollback).
    pub max_rollback_ticks: u64,
}

/// The session moved to another server (a handoff or a reconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The server it left.
    pub from: Option<SocketAddr>,
    /// Whether it was told to (a handoff) or found the server silent (a reconnect).
    pub redirected: bool,
    /// When it started moving.
    pub at: Duration,
    /// When the first snapshot from the new server arrived (`None`: not yet).
    pub done_at: Option<Duration>,
}

/// A token arriving in parts.
#[derive(Debug, Default)]
struct IncomingToken {
    id: u32,
    parts: [Option<Vec<u8>>; TOKEN_PARTS as usize],
}

impl IncomingToken {
    /// Files a part; returns the whole token when the last part arrives.
    fn add(&mut self, part: TokenPart) -> Option<Vec<u8>> {
        if part.token_id != self.id {
            if part.token_id < self.id {
                return None; // An older token's late part.
            }
            *self = Self {
                id: part.token_id,
                ..Self::default()
            };
        }
        let slot = self.parts.get_mut(usize::from(part.part))?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(part.bytes);
        if self.parts.iter().all(Option::is_some) {
            Some(self.parts.iter().flatten().flatten().copied().collect())
        } else {
            None
        }
    }
}

/// One client's connection to a match. See the module docs for the calling order.
#[derive(Debug)]
pub struct Session {
    netcode: netcode::Client,
    tick_hz: u32,
    acks: AckTracker,
    /// Frames made and not yet applied by the server, oldest first.
    unapplied: VecDeque<InputFrame>,
    next_input_sequence: u32,
    /// Highest input sequence the server reports applied.
    last_applied: u32,
    /// Tick the newest frame was for: frame ticks never go backwards.
    last_input_tick: Tick,
    latest: Option<Snapshot>,
    /// When the newest snapshot arrived.
    latest_at: Duration,
    /// When the current server was last heard from, or the current transport started:
    /// the silence that triggers a reconnect is measured from here.
    last_heard: Duration,
    /// Snapshots not yet taken by the caller (bounded).
    fresh: VecDeque<Snapshot>,
    stats: SessionStats,
    tokens: [IncomingToken; 2],
    /// The newest complete reconnect token.
    reconnect_token: Option<Vec<u8>>,
    reconnect_attempts: u32,
    /// Datagrams a replaced transport still had to send (its disconnect packets).
    outbox: VecDeque<Transmit>,
    moved: Option<Moved>,
    scoreboard: Vec<ScoreEntry>,
    /// Set when the transport changes server: its first snapshot is taken whatever its tick.
    awaiting_new_server: bool,
}

impl Session {
    /// A session that starts connecting with a 2048-byte connect token.
    pub fn new(now: Duration, token: &[u8], tick_hz: u32) -> Self {
        Self {
            netcode: netcode::Client::new(now, token),
            tick_hz: tick_hz.max(1),
            acks: AckTracker::default(),
            unapplied: VecDeque::new(),
            next_input_sequence: 1,
            last_applied: 0,
            last_input_tick: Tick(0),
            latest: None,
            latest_at: now,
            last_heard: now,
            fresh: VecDeque::new(),
            stats: SessionStats::default(),
            tokens: [IncomingToken::default(), IncomingToken::default()],
            reconnect_token: None,
            reconnect_attempts: 0,
            outbox: VecDeque::new(),
            moved: None,
            scoreboard: Vec::new(),
            awaiting_new_server: false,
        }
    }

    /// Takes one datagram from the socket.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        self.stats.bytes_in += datagram.len() as u64;
        let Some(payload) = self.netcode.handle_packet(now, from, datagram) else {
            return;
        };
        let (header, message) = match decode_server(payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.bad_messages += 1;
                tracing::trace!(%error, "bad message from server");
                return;
            }
        };
        if !self.acks.on_receive(now, header, |_| {}) {
            return;
        }
        match message {
            ServerMessage::Snapshot(snapshot) => self.receive_snapshot(now, snapshot),
            ServerMessage::TokenPart(part) => self.receive_token_part(now, part),
            ServerMessage::Scoreboard(entries) => self.scoreboard = entries,
        }
    }

    fn receive_token_part(&mut self, now: Duration, part: TokenPart) {
        let purpose = part.purpose;
        let index = match purpose {
            TokenPurpose::Reconnect => 0,
            TokenPurpose::Redirect => 1,
        };
        let Some(token) = self.tokens[index].add(part) else {
            return;
        };
        match purpose {
            TokenPurpose::Reconnect => self.reconnect_token = Some(token),
            TokenPurpose::Redirect => {
                tracing::info!(from = ?self.server_address(), "match moved: following the redirect");
                self.stats.handoffs_followed += 1;
                self.replace_transport(now, &token, 0, true);
            }
        }
    }

    /// Connects again with `token`, starting at address `first`. Unapplied inputs, the
    /// newest snapshot and the statistics carry over; the ack state starts afresh, as
    /// the new server's does.
    fn replace_transport(&mut self, now: Duration, token: &[u8], first: usize, say_goodbye: bool) {
        let from = self.netcode.server_address();
        if say_goodbye {
            self.netcode.disconnect(now);
            while let Some(t) = self.netcode.poll_transmit() {
                self.outbox.push_back(t);
            }
        }
        self.netcode = match netcode::ConnectToken::read(token) {
            Ok(parsed) => netcode::Client::with_token_from(now, parsed, first),
            Err(_) => netcode::Client::new(now, token),
        };
        self.acks = AckTracker::default();
        self.awaiting_new_server = true;
        // Token ids are per server: the next server numbers its tokens afresh.
        self.tokens = [IncomingToken::default(), IncomingToken::default()];
        self.moved = Some(Moved {
            from,
            redirected: say_goodbye,
            at: now,
            done_at: None,
        });
    }

    fn receive_snapshot(&mut self, now: Duration, snapshot: Snapshot) {
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|latest| snapshot.tick > latest.tick);
        if self.awaiting_new_server {
            // The first word from a new server is the truth, even an older tick: a server
            // restored after a crash resumes from its last snapshot.
            self.awaiting_new_server = false;
            if let Some(latest) = &self.latest
                && latest.tick > snapshot.tick
            {
                let rollback = latest.tick.0 - snapshot.tick.0;
                self.stats.max_rollback_ticks = self.stats.max_rollback_ticks.max(rollback);
                tracing::info!(
                    rollback_ticks = rollback,
                    "the new server resumed from an earlier tick"
                );
            }
        } else if !newer {
            return; // Older or duplicate: a newer one already arrived.
        }
        if self.latest.is_some() {
            let gap = now.saturating_sub(self.latest_at);
            self.stats.max_snapshot_gap = self.stats.max_snapshot_gap.max(gap);
        }
        self.stats.snapshots += 1;
        self.last_applied = self.last_applied.max(snapshot.last_applied_input);
        while self
            .unapplied
            .front()
            .is_some_and(|f| f.sequence <= self.last_applied)
        {
            self.unapplied.pop_front();
        }
        if self.fresh.len() >= 64 {
            self.fresh.pop_front();
        }
        self.fresh.push_back(snapshot.clone());
        self.latest = Some(snapshot);
        self.latest_at = now;
        self.last_heard = now;
        self.reconnect_attempts = 0;
        if let Some(moved) = &mut self.moved
            && moved.done_at.is_none()
        {
            moved.done_at = Some(now);
        }
    }

    /// Runs the transport's timers; reconnects when the server has gone silent.
    pub fn update(&mut self, now: Duration) {
        self.netcode.update(now);
        let silent = self.netcode.is_connected()
            && self.latest.is_some()
            && now.saturating_sub(self.last_heard) >= SILENCE_BEFORE_RECONNECT;
        let failed = self.netcode.state().is_error();
        if !(silent || failed) || self.reconnect_attempts >= MAX_RECONNECT_ATTEMPTS {
            return;
        }
        let Some(token) = self.reconnect_token.clone() else {
            return;
        };
        // After silence, skip the server that went quiet; after a failed round, start over.
        let first = if silent {
            let current = self.netcode.server_address();
            let addresses = netcode::ConnectToken::read(&token)
                .map(|t| t.server_addresses)
                .unwrap_or_default();
            let at = addresses.iter().position(|a| Some(*a) == current);
            at.map_or(0, |i| (i + 1) % addresses.len().max(1))
        } else {
            0
        };
        tracing::info!(server = ?self.netcode.server_address(), ?silent, "reconnecting");
        self.reconnect_attempts += 1;
        self.stats.reconnects += 1;
        self.replace_transport(now, &token, first, false);
        // The new transport must not inherit the silence that triggered this.
        self.last_heard = now;
    }

    /// Makes this tick's input frame and sends it with every other unapplied one; returns
    /// the frame. Does nothing before the first snapshot (the server's tick is not known).
    pub fn send_input(&mut self, now: Duration, input: PlayerInput) -> Option<InputFrame> {
        if !self.netcode.is_connected() || self.latest.is_none() {
            return None;
        }
        let tick = self.target_tick(now);
        self.last_input_tick = tick;
        if self.unapplied.len() >= MAX_UNAPPLIED_INPUTS {
            self.unapplied.pop_front();
            self.stats.inputs_given_up += 1;
        }
        let frame = InputFrame {
            sequence: self.next_input_sequence,
            tick,
            input,
        };
        self.unapplied.push_back(frame);
        self.next_input_sequence += 1;
        self.stats.inputs_sent += 1;
        self.send_unapplied(now);
        Some(frame)
    }

    /// Sends the unapplied frames again without making a new one (while draining).
    pub fn resend_inputs(&mut self, now: Duration) {
        if self.netcode.is_connected() && !self.unapplied.is_empty() {
            self.send_unapplied(now);
        }
    }

    fn send_unapplied(&mut self, now: Duration) {
        let frames: Vec<InputFrame> = self
            .unapplied
            .iter()
            .take(MAX_INPUT_FRAMES_PER_PACKET)
            .copied()
            .collect();
        let header = self.acks.next_header(now);
        let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
        match encode(header, &ClientMessage::Inputs { frames }, &mut out) {
            Ok(len) => {
                let _ = self.netcode.send_payload(now, &out[..len]);
            }
            Err(error) => tracing::error!(%error, "input message did not fit"),
        }
    }

    /// The tick the server will be at when an input sent now arrives, plus a margin.
    fn target_tick(&self, now: Duration) -> Tick {
        let Some(latest) = &self.latest else {
            return self.last_input_tick;
        };
        let rtt = self.acks.rtt().unwrap_or_default().as_secs_f64();
        let since = now.saturating_sub(self.latest_at).as_secs_f64();
        let ahead = (since + rtt) * f64::from(self.tick_hz) + INPUT_LEAD_TICKS;
        let estimate = Tick(latest.tick.0 + ahead.round().max(0.0) as u64);
        estimate.max(self.last_input_tick)
    }

    /// Leaves cleanly (disconnect packets).
    pub fn disconnect(&mut self, now: Duration) {
        self.netcode.disconnect(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self
            .outbox
            .pop_front()
            .or_else(|| self.netcode.poll_transmit())?;
        self.stats.bytes_out += transmit.contents.len() as u64;
        Some(transmit)
    }

    /// The snapshots that arrived since the last call, oldest first.
    pub fn take_snapshots(&mut self) -> impl Iterator<Item = Snapshot> + '_ {
        self.fresh.drain(..)
    }

    /// The transport state.
    pub fn state(&self) -> ClientState {
        self.netcode.state()
    }

    /// Whether payloads flow.
    pub fn is_connected(&self) -> bool {
        self.netcode.is_connected()
    }

    /// Whether the session has given up: the transport failed and no reconnect is left.
    pub fn is_lost(&self) -> bool {
        let state = self.netcode.state();
        (state.is_error() || state == ClientState::Disconnected)
            && (self.reconnect_token.is_none() || self.reconnect_attempts >= MAX_RECONNECT_ATTEMPTS)
    }

    /// Whether a reconnect token has arrived.
    pub fn has_reconnect_token(&self) -> bool {
        self.reconnect_token.is_some()
    }

    /// The last move to another server, if any.
    pub fn moved(&self) -> Option<Moved> {
        self.moved
    }

    /// The server being tried or connected to.
    pub fn server_address(&self) -> Option<SocketAddr> {
        self.netcode.server_address()
    }

    /// The newest snapshot.
    pub fn latest_snapshot(&self) -> Option<&Snapshot> {
        self.latest.as_ref()
    }

    /// Smoothed round-trip time.
    pub fn rtt(&self) -> Option<Duration> {
        self.acks.rtt()
    }

    /// The newest RTT sample, once (for percentile reports).
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.acks.take_rtt_sample()
    }

    /// Smoothed packet loss towards the server (0..1).
    pub fn loss(&self) -> f32 {
        self.acks.loss()
    }

    /// Highest input sequence the server applied.
    pub fn last_applied_input(&self) -> u32 {
        self.last_applied
    }

    /// Input frames made and not yet applied.
    pub fn unapplied_inputs(&self) -> usize {
        self.unapplied.len()
    }

    /// The unapplied frames themselves, oldest first (for prediction).
    pub fn unapplied_frames(&self) -> impl Iterator<Item = &InputFrame> {
        self.unapplied.iter()
    }

    /// The newest scoreboard.
    pub fn scoreboard(&self) -> &[ScoreEntry] {
        &self.scoreboard
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }
}
