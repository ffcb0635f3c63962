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
use arena_shared::protocol::messages::MAX_INPUT_FRAMES_PER_PACKET;
use arena_shared::protocol::{
    AckTracker, ClientMessage, ServerMessage, Snapshot, decode_server, encode,
};
use arena_shared::sim::{InputFrame, PlayerInput, Tick};

/// Unapplied input frames a client keeps (two seconds at 60 Hz). Past this the oldest is
/// given up and counted as lost: the server notices the gap and moves on.
pub const MAX_UNAPPLIED_INPUTS: usize = 120;
/// Ticks of margin so inputs arrive just before the tick they are for.
const INPUT_LEAD_TICKS: f64 = 2.0;

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
    /// Snapshots not yet taken by the caller (bounded).
    fresh: VecDeque<Snapshot>,
    stats: SessionStats,
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
            fresh: VecDeque::new(),
            stats: SessionStats::default(),
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
        }
    }

    fn receive_snapshot(&mut self, now: Duration, snapshot: Snapshot) {
        if self
            .latest
            .as_ref()
            .is_some_and(|latest| latest.tick >= snapshot.tick)
        {
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
    }

    /// Runs the transport's timers.
    pub fn update(&mut self, now: Duration) {
        self.netcode.update(now);
    }

    /// Makes this tick's input frame and sends it with every other unapplied one.
    /// Does nothing before the first snapshot (the server's tick is not known yet).
    pub fn send_input(&mut self, now: Duration, input: PlayerInput) {
        if !self.netcode.is_connected() || self.latest.is_none() {
            return;
        }
        let tick = self.target_tick(now);
        self.last_input_tick = tick;
        if self.unapplied.len() >= MAX_UNAPPLIED_INPUTS {
            self.unapplied.pop_front();
            self.stats.inputs_given_up += 1;
        }
        self.unapplied.push_back(InputFrame {
            sequence: self.next_input_sequence,
            tick,
            input,
        });
        self.next_input_sequence += 1;
        self.stats.inputs_sent += 1;
        self.send_unapplied(now);
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
        let transmit = self.netcode.poll_transmit()?;
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

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }
}
