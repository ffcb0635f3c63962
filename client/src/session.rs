//! The sans-IO client session: connect with a token, send inputs, receive snapshots.
//!
//! # Calling order
//!
//! Like the server core: on each wake-up the driver reads the clock once, feeds every
//! datagram to [`Session::handle_datagram`] (with the address it came from), calls
//! [`Session::update`], then [`Session::send_input`] once per tick when connected, and
//! drains [`Session::poll_transmit`].
//!
//! Inputs are kept until the server reports them applied (`last_applied_input` in each
//! snapshot) and every packet carries the oldest unapplied ones, so a lost packet loses
//! nothing: the next packet repeats it.
//!
//! # Moving between servers
//!
//! - *Make before break*: a `Prepare` token names the server the match is about to move
//!   to. The session opens a second connection there and keeps playing where it is; it
//!   switches as soon as that server's first snapshot arrives (the new owner is ticking),
//!   or when the redirect arrives if that is first. The switch needs no handshake, so the
//!   player waits only for the handoff's pause and one one-way trip. A prepared
//!   connection that fails is dropped; play goes on where it was.
//! - A `Redirect` to a server with no prepared connection connects afresh there.
//! - A server silent for [`SILENCE_BEFORE_RECONNECT`] is left for the next address of the
//!   reconnect token.
//!
//! # Counting inputs
//!
//! Every frame sent ends in exactly one of: applied (as the current server counts them,
//! [`SessionStats::inputs_applied`]), rolled back by a crash restore
//! ([`SessionStats::inputs_rolled_back`]), given up by this client and never applied
//! ([`SessionStats::inputs_given_up`]), or not known yet
//! ([`Session::inputs_unacknowledged`]). Their sum is [`SessionStats::inputs_sent`] as long
//! as the server applies in order and skips only frames it never received.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::netcode::{self, ClientState, Transmit};
use arena_shared::protocol::messages::{MAX_INPUT_FRAMES_PER_PACKET, TOKEN_PARTS};
use arena_shared::protocol::{
    AckTracker, ClientMessage, PacketHeader, ScoreEntry, ServerMessage, Snapshot, TokenPart,
    TokenPurpose, decode_server, encode,
};
use arena_shared::sim::{InputFrame, PlayerInput, Tick};

/// Unapplied input frames a client keeps (two seconds at 60 Hz). Past this the oldest is
/// given up: the server notices the gap and moves on.
pub const MAX_UNAPPLIED_INPUTS: usize = 120;
/// Ticks of margin so inputs arrive just before the tick they are for.
const INPUT_LEAD_TICKS: f64 = 2.0;
/// Silence from a connected server after which the session reconnects with its reconnect
/// token (the server may have died; a standby may hold the match now). Measured from the
/// newest snapshot or from when the connection was made, whichever is later.
pub const SILENCE_BEFORE_RECONNECT: Duration = Duration::from_millis(1000);
/// The silence tolerated instead while a connection opened ahead of a handoff is up: the
/// owner is expected to go quiet for the commit, after which either the new owner's first
/// snapshot arrives on that connection or, if the handoff is called off, the owner resumes.
/// Reconnecting in between would only get in the way of both.
pub const SILENCE_DURING_HANDOFF: Duration = Duration::from_millis(3000);
/// How long a reconnect or a redirect waits for an answer from one address before it
/// tries the token's next one: a dead standby must not cost the token's whole timeout.
pub const MOVE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long the session keeps reconnecting without a snapshot before it gives up. It
/// must outlast a server's hold on the connection that went silent (the token's timeout,
/// 5 s): a server that was only frozen refuses this client until it has timed it out.
pub const RECONNECT_FOR: Duration = Duration::from_secs(15);
/// After a reconnect round in which every address answered no (denied: a standby that
/// has not taken the match over yet), the next round waits this long.
pub const RETRY_AFTER_REFUSAL: Duration = Duration::from_millis(100);
/// For this long after a server went silent, reconnect rounds start after it in the
/// token's list: it is likely dead, and each try of a dead address costs a second. The
/// standby that will take over denies until it does, so rounds go on quickly meanwhile.
pub const SKIP_SILENT_SERVER_FOR: Duration = Duration::from_secs(3);
/// Given-up frames whose fate is remembered (far more than a session gives up between
/// two snapshots; past it the oldest stay counted as given up).
const MAX_GIVEN_UP_TRACKED: usize = 4096;

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
    /// Input frames of this player the current server reports applied, as the match
    /// counts them (carried through handoffs; it goes down after a crash restore).
    pub inputs_applied: u64,
    /// Input frames a server applied that a crash then undid: the server that took over
    /// restored the match from before them.
    pub inputs_rolled_back: u64,
    /// Input frames given up because too many were unapplied, and never applied (one
    /// that reached the server before it was given up is counted as applied instead).
    pub inputs_given_up: u64,
    /// Longest time between two snapshots while connected.
    pub max_snapshot_gap: Duration,
    /// Payloads that were not a valid game message.
    pub bad_messages: u64,
    /// Handoffs followed (the match was handed to another server), prepared or not.
    pub handoffs_followed: u64,
    /// Of those, switches to a connection opened ahead (make before break).
    pub handoffs_prepared: u64,
    /// Connections opened ahead that failed or were not used; play stayed where it was.
    pub prepares_abandoned: u64,
    /// Times the session set out to reconnect (the server went silent or dropped it); the
    /// rounds of one such episode, until a snapshot arrives, count once.
    pub reconnects: u64,
    /// The most ticks the match went back when it moved: for a server that restored it
    /// after a crash, the newest tick seen from the old server minus the restored tick.
    pub max_rollback_ticks: u64,
}

/// The session moved to another server (a handoff or a reconnect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Moved {
    /// The server it left.
    pub from: Option<SocketAddr>,
    /// Whether it was told to (a handoff) or found the server silent (a reconnect).
    pub redirected: bool,
    /// When it started moving. For a switch to a connection opened ahead: when the old
    /// server's last snapshot arrived, so `done_at - at` is the wait the player saw.
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

/// The tokens arriving from one server, one slot per purpose (token ids are per server).
#[derive(Debug, Default)]
struct TokenInbox([IncomingToken; 3]);

impl TokenInbox {
    /// Files a part; returns the whole token and its purpose when the last part arrives.
    fn add(&mut self, part: TokenPart) -> Option<(TokenPurpose, Vec<u8>)> {
        let purpose = part.purpose;
        let slot = match purpose {
            TokenPurpose::Reconnect => 0,
            TokenPurpose::Redirect => 1,
            TokenPurpose::Prepare => 2,
        };
        self.0[slot].add(part).map(|token| (purpose, token))
    }
}

/// A second connection, opened ahead of a handoff to the server the match is about to
/// move to (make before break). Until it is promoted it carries netcode keep-alives only.
#[derive(Debug)]
struct Prepared {
    netcode: netcode::Client,
    acks: AckTracker,
    tokens: TokenInbox,
    /// The new server's reconnect token, if it arrived before the switch.
    reconnect_token: Option<Vec<u8>>,
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
    /// Highest input sequence the current server reports applied.
    last_applied: u32,
    /// Sequences given up whose fate is not known yet (above `resolved_through`).
    given_up: VecDeque<u32>,
    /// Highest sequence any server reported applied: every frame up to it is accounted
    /// for (a restored server may report less; that is counted as a rollback).
    resolved_through: u32,
    /// Tick the newest frame was for: frame ticks never go backwards.
    last_input_tick: Tick,
    latest: Option<Snapshot>,
    /// When the newest snapshot arrived.
    latest_at: Duration,
    /// When the current server was last heard from, or the current transport started:
    /// with the connection's own start, the silence that triggers a reconnect is
    /// measured from here.
    last_heard: Duration,
    /// Snapshots not yet taken by the caller (bounded).
    fresh: VecDeque<Snapshot>,
    stats: SessionStats,
    tokens: TokenInbox,
    /// The newest complete reconnect token.
    reconnect_token: Option<Vec<u8>>,
    /// When the current run of reconnects began (`None`: a snapshot arrived since).
    reconnecting_since: Option<Duration>,
    /// Reconnecting went on for [`RECONNECT_FOR`] without a snapshot.
    gave_up: bool,
    /// The server whose silence started the reconnects, and when.
    went_silent: Option<(SocketAddr, Duration)>,
    /// After a refused round: when the next may start.
    retry_at: Option<Duration>,
    /// [`Session::disconnect`] was called: the session reconnects no more.
    leaving: bool,
    /// The connection opened ahead of a handoff, if one is.
    next: Option<Prepared>,
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
            given_up: VecDeque::new(),
            resolved_through: 0,
            last_input_tick: Tick(0),
            latest: None,
            latest_at: now,
            last_heard: now,
            fresh: VecDeque::new(),
            stats: SessionStats::default(),
            tokens: TokenInbox::default(),
            reconnect_token: None,
            reconnecting_since: None,
            gave_up: false,
            went_silent: None,
            retry_at: None,
            leaving: false,
            next: None,
            outbox: VecDeque::new(),
            moved: None,
            scoreboard: Vec::new(),
            awaiting_new_server: false,
        }
    }

    /// Takes one datagram from the socket; `from` is where it came from (datagrams from
    /// the server a connection was opened ahead to go to that connection).
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        self.stats.bytes_in += datagram.len() as u64;
        if self.is_from_prepared(from) {
            self.handle_prepared_datagram(now, from, datagram);
            return;
        }
        let Some(payload) = self.netcode.handle_packet(now, from, datagram) else {
            return;
        };
        let Some((header, message)) = decode_message(&mut self.stats, payload) else {
            return;
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

    fn is_from_prepared(&self, from: SocketAddr) -> bool {
        self.netcode.server_address() != Some(from)
            && self
                .next
                .as_ref()
                .is_some_and(|next| next.netcode.server_address() == Some(from))
    }

    /// A datagram on the connection opened ahead. The new owner's first snapshot means
    /// the match has moved: switch at once, without waiting for the old owner's redirect.
    fn handle_prepared_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        let Some(next) = self.next.as_mut() else {
            return;
        };
        let Some(payload) = next.netcode.handle_packet(now, from, datagram) else {
            return;
        };
        let Some((header, message)) = decode_message(&mut self.stats, payload) else {
            return;
        };
        if !next.acks.on_receive(now, header, |_| {}) {
            return;
        }
        match message {
            ServerMessage::Snapshot(snapshot) => {
                self.promote_prepared(now);
                self.receive_snapshot(now, snapshot);
            }
            // Kept for the switch: the new owner's reconnect token may come first.
            ServerMessage::TokenPart(part) => {
                if let Some((TokenPurpose::Reconnect, token)) = next.tokens.add(part) {
                    next.reconnect_token = Some(token);
                }
            }
            ServerMessage::Scoreboard(_) => {}
        }
    }

    fn receive_token_part(&mut self, now: Duration, part: TokenPart) {
        let Some((purpose, token)) = self.tokens.add(part) else {
            return;
        };
        match purpose {
            TokenPurpose::Reconnect => self.reconnect_token = Some(token),
            TokenPurpose::Redirect => self.follow_redirect(now, &token),
            TokenPurpose::Prepare => self.open_prepared(now, &token),
        }
    }

    /// Phase one of a handoff: connects ahead to the server the match is about to move
    /// to, and keeps playing here.
    fn open_prepared(&mut self, now: Duration, token: &[u8]) {
        let parsed = match netcode::ConnectToken::read(token) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::debug!(%error, "prepare token refused");
                return;
            }
        };
        let Some(to) = parsed.server_addresses.first().copied() else {
            return;
        };
        let already_there = self.netcode.server_address() == Some(to)
            || self.next.as_ref().is_some_and(|next| {
                next.netcode.server_address() == Some(to) && !next.netcode.state().is_error()
            });
        if already_there {
            return;
        }
        if self.close_prepared(now) {
            self.stats.prepares_abandoned += 1;
        }
        tracing::info!(%to, "the match is about to move: connecting there ahead");
        self.next = Some(Prepared {
            netcode: netcode::Client::with_token(now, parsed),
            acks: AckTracker::default(),
            tokens: TokenInbox::default(),
            reconnect_token: None,
        });
    }

    /// The commit of a handoff. A redirect to the server a connection was opened ahead to
    /// switches to it at once; any other goes through a new handshake.
    fn follow_redirect(&mut self, now: Duration, token: &[u8]) {
        let first = netcode::ConnectToken::read(token)
            .ok()
            .and_then(|t| t.server_addresses.first().copied());
        let prepared = first.is_some()
            && self.next.as_ref().is_some_and(|next| {
                next.netcode.is_connected() && next.netcode.server_address() == first
            });
        if prepared {
            self.promote_prepared(now);
            return;
        }
        tracing::info!(from = ?self.server_address(), "match moved: following the redirect");
        self.stats.handoffs_followed += 1;
        self.replace_transport(now, token, 0, true);
    }

    /// Makes the connection opened ahead the current one: the match moved there.
    fn promote_prepared(&mut self, now: Duration) {
        let Some(next) = self.next.take() else {
            return;
        };
        let from = self.netcode.server_address();
        tracing::info!(?from, to = ?next.netcode.server_address(), "match moved: switching to the connection opened ahead");
        self.say_goodbye(now);
        self.netcode = next.netcode;
        self.acks = next.acks;
        self.tokens = next.tokens;
        if next.reconnect_token.is_some() {
            self.reconnect_token = next.reconnect_token;
        }
        self.stats.handoffs_followed += 1;
        self.stats.handoffs_prepared += 1;
        // The player has been waiting since the old server's last snapshot.
        let waiting_since = self.latest_at.min(now);
        self.begin_new_server(now, from, true, waiting_since);
    }

    /// Closes the connection opened ahead, if any (disconnect packets when connected, so
    /// its server frees the slot). Returns whether there was one.
    fn close_prepared(&mut self, now: Duration) -> bool {
        let Some(mut next) = self.next.take() else {
            return false;
        };
        next.netcode.disconnect(now);
        while let Some(t) = next.netcode.poll_transmit() {
            self.outbox.push_back(t);
        }
        true
    }

    /// Disconnect packets on the current transport, queued ahead of its replacement's.
    fn say_goodbye(&mut self, now: Duration) {
        self.netcode.disconnect(now);
        while let Some(t) = self.netcode.poll_transmit() {
            self.outbox.push_back(t);
        }
    }

    /// Connects again with `token`, starting at address `first`. Unapplied inputs, the
    /// newest snapshot and the statistics carry over; the ack state starts afresh, as
    /// the new server's does.
    fn replace_transport(&mut self, now: Duration, token: &[u8], first: usize, say_goodbye: bool) {
        let from = self.netcode.server_address();
        if say_goodbye {
            self.say_goodbye(now);
        }
        // A connection opened ahead to the same server would block the new handshake
        // there (one connection per address); to another server it is of no use now.
        if self.close_prepared(now) {
            self.stats.prepares_abandoned += 1;
        }
        let mut client = match netcode::ConnectToken::read(token) {
            Ok(parsed) => netcode::Client::with_token_from(now, parsed, first),
            Err(_) => netcode::Client::new(now, token),
        };
        client.set_attempt_timeout(MOVE_ATTEMPT_TIMEOUT);
        self.netcode = client;
        self.acks = AckTracker::default();
        // Token ids are per server: the next server numbers its tokens afresh.
        self.tokens = TokenInbox::default();
        self.begin_new_server(now, from, say_goodbye, now);
    }

    /// The transport now leads to another server: its first snapshot is the truth.
    fn begin_new_server(
        &mut self,
        now: Duration,
        from: Option<SocketAddr>,
        redirected: bool,
        at: Duration,
    ) {
        self.awaiting_new_server = true;
        // The new transport must not inherit the silence of the old one.
        self.last_heard = now;
        self.moved = Some(Moved {
            from,
            redirected,
            at,
            done_at: None,
        });
    }

    fn receive_snapshot(&mut self, now: Duration, snapshot: Snapshot) {
        let from_new_server = std::mem::take(&mut self.awaiting_new_server);
        if from_new_server {
            // The first word from a new server is the truth, even an older tick: a server
            // restored after a crash resumes from its last snapshot.
            self.measure_rollback(&snapshot);
        } else if self
            .latest
            .as_ref()
            .is_some_and(|latest| snapshot.tick <= latest.tick)
        {
            return; // Older or duplicate: a newer one already arrived.
        }
        if self.latest.is_some() {
            let gap = now.saturating_sub(self.latest_at);
            self.stats.max_snapshot_gap = self.stats.max_snapshot_gap.max(gap);
        }
        self.stats.snapshots += 1;
        self.account_inputs(&snapshot, from_new_server);
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
        self.reconnecting_since = None;
        self.went_silent = None;
        self.retry_at = None;
        if let Some(moved) = &mut self.moved
            && moved.done_at.is_none()
        {
            moved.done_at = Some(now);
        }
    }

    /// How far back the match went, from a new server's first snapshot. A server that
    /// restored the match after a crash says from which tick, which is exact; otherwise
    /// the tick it is at now is the best bound (it may have ticked on since).
    fn measure_rollback(&mut self, snapshot: &Snapshot) {
        let Some(latest) = &self.latest else {
            return;
        };
        let rollback = match snapshot.restored_from_tick {
            // A restore this session has not seen yet (the old server's snapshots named
            // another one, or none).
            Some(restored) if latest.restored_from_tick != Some(restored) => {
                latest.tick.0.saturating_sub(restored.0)
            }
            _ => latest.tick.0.saturating_sub(snapshot.tick.0),
        };
        if rollback > 0 {
            self.stats.max_rollback_ticks = self.stats.max_rollback_ticks.max(rollback);
            tracing::info!(
                rollback_ticks = rollback,
                "the new server resumed from an earlier tick"
            );
        }
    }

    /// Takes in what a snapshot says about this player's inputs, keeping every frame sent
    /// accounted for (see the module docs).
    fn account_inputs(&mut self, snapshot: &Snapshot, from_new_server: bool) {
        let told = self.stats.inputs_applied;
        let applied = snapshot.inputs_applied;
        if from_new_server && applied < told {
            // Restored from before frames the old server had applied: they are undone.
            self.stats.inputs_rolled_back += told - applied;
        }
        let newest = snapshot.last_applied_input;
        if newest > self.resolved_through {
            self.resolve_given_up(newest, applied.saturating_sub(told));
        }
        self.stats.inputs_applied = applied;
        // A new server's word stands even if lower (a restore): taking the maximum would
        // hide the rollback and keep frames it never applied out of the resend.
        self.last_applied = if from_new_server {
            newest
        } else {
            self.last_applied.max(newest)
        };
    }

    /// Every frame up to `newest` now has a known fate; `gained` is how many the server
    /// applied since its previous report. Each frame in the range was either still held
    /// (so applied: the server applies in order and skips only frames it never got) or
    /// given up. If the server applied more than were held, given-up frames had reached
    /// it before they were given up: they were applied, not lost.
    fn resolve_given_up(&mut self, newest: u32, gained: u64) {
        let range = u64::from(newest - self.resolved_through);
        let mut given_up = 0u64;
        while self.given_up.front().is_some_and(|&s| s <= newest) {
            self.given_up.pop_front();
            given_up += 1;
        }
        let held = range.saturating_sub(given_up);
        let applied_anyway = gained.saturating_sub(held).min(given_up);
        self.stats.inputs_given_up = self.stats.inputs_given_up.saturating_sub(applied_anyway);
        self.resolved_through = newest;
    }

    /// Runs the transports' timers; reconnects when the server has gone silent.
    pub fn update(&mut self, now: Duration) {
        self.netcode.update(now);
        self.update_prepared(now);
        let silent = self.is_silent(now);
        // A server that disconnected us may be stopping: a standby may hold the match.
        let state = self.netcode.state();
        let failed = state.is_error() || state == ClientState::Disconnected;
        if !(silent || failed) || self.leaving || self.gave_up {
            return;
        }
        let Some(token) = self.reconnect_token.clone() else {
            return;
        };
        // A round that failed waits a moment before the next: its "no" was quick.
        if failed && !silent {
            let at = *self.retry_at.get_or_insert(now + RETRY_AFTER_REFUSAL);
            if now < at {
                return;
            }
            self.retry_at = None;
        }
        // Bounded by time, not rounds: a round over dead addresses costs a second each.
        let first_round = self.reconnecting_since.is_none();
        let since = *self.reconnecting_since.get_or_insert(now);
        if now.saturating_sub(since) >= RECONNECT_FOR {
            tracing::warn!("no server answered for {RECONNECT_FOR:?}: giving up");
            self.gave_up = true;
            return;
        }
        // Start after the server that went quiet (for a while), else from the top.
        if silent && let Some(current) = self.netcode.server_address() {
            self.went_silent = Some((current, now));
        }
        let first = match self.went_silent {
            Some((quiet, at)) if now.saturating_sub(at) < SKIP_SILENT_SERVER_FOR => {
                address_after(&token, quiet)
            }
            _ => 0,
        };
        if first_round {
            tracing::info!(server = ?self.netcode.server_address(), ?silent, "reconnecting");
            self.stats.reconnects += 1;
        } else {
            tracing::debug!(first, "reconnecting: another round");
        }
        self.replace_transport(now, &token, first, false);
    }

    /// Whether the connected server has been quiet too long. Measured from the newest
    /// snapshot or from when the connection was made, whichever is later: a handshake
    /// that took a while must not count as silence the moment it succeeds.
    fn is_silent(&self, now: Duration) -> bool {
        let quiet_since = self
            .netcode
            .connected_at()
            .map_or(self.last_heard, |at| at.max(self.last_heard));
        let patience = if self.is_prepared() {
            SILENCE_DURING_HANDOFF
        } else {
            SILENCE_BEFORE_RECONNECT
        };
        self.netcode.is_connected()
            && self.latest.is_some()
            && now.saturating_sub(quiet_since) >= patience
    }

    /// Keeps the connection opened ahead alive; drops it if it failed (denied, timed out,
    /// disconnected): the handoff was called off, and play goes on here.
    fn update_prepared(&mut self, now: Duration) {
        let Some(next) = &mut self.next else {
            return;
        };
        next.netcode.update(now);
        let state = next.netcode.state();
        if state.is_error() || state == ClientState::Disconnected {
            tracing::debug!(server = ?next.netcode.server_address(), ?state, "the connection opened ahead failed; staying here");
            self.next = None;
            self.stats.prepares_abandoned += 1;
        }
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
            self.give_up_oldest();
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

    /// Stops resending the oldest unapplied frame. Its fate is settled when a server
    /// reports a newer sequence applied (it may have arrived before it was given up).
    fn give_up_oldest(&mut self) {
        let Some(frame) = self.unapplied.pop_front() else {
            return;
        };
        self.stats.inputs_given_up += 1;
        if self.given_up.len() >= MAX_GIVEN_UP_TRACKED {
            self.given_up.pop_front();
        }
        self.given_up.push_back(frame.sequence);
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

    /// Leaves cleanly (disconnect packets), the connection opened ahead too.
    pub fn disconnect(&mut self, now: Duration) {
        self.leaving = true;
        self.netcode.disconnect(now);
        self.close_prepared(now);
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let transmit = self
            .outbox
            .pop_front()
            .or_else(|| self.netcode.poll_transmit())
            .or_else(|| self.next.as_mut()?.netcode.poll_transmit())?;
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

    /// Whether the session has given up: the transport failed and it will not reconnect
    /// (no reconnect token, [`RECONNECT_FOR`] spent without a snapshot, or it left).
    pub fn is_lost(&self) -> bool {
        let state = self.netcode.state();
        (state.is_error() || state == ClientState::Disconnected)
            && (self.reconnect_token.is_none() || self.gave_up || self.leaving)
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

    /// The server a connection is open (or opening) to ahead of a handoff, if any.
    pub fn prepared_server(&self) -> Option<SocketAddr> {
        self.next.as_ref()?.netcode.server_address()
    }

    /// Whether the connection opened ahead of a handoff is established.
    pub fn is_prepared(&self) -> bool {
        self.next
            .as_ref()
            .is_some_and(|next| next.netcode.is_connected())
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

    /// Highest input sequence the current server applied.
    pub fn last_applied_input(&self) -> u32 {
        self.last_applied
    }

    /// Input frames made and not yet applied.
    pub fn unapplied_inputs(&self) -> usize {
        self.unapplied.len()
    }

    /// Input frames sent whose fate is not known yet: neither reported applied nor given
    /// up. With [`SessionStats`]: `inputs_sent == inputs_applied + inputs_rolled_back +
    /// inputs_given_up + inputs_unacknowledged()`.
    pub fn inputs_unacknowledged(&self) -> u64 {
        self.unapplied.len() as u64
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

/// Decodes a game message, counting one that is not valid.
/// The index in `token`'s addresses after `server`'s (0 if it is not listed).
fn address_after(token: &[u8], server: SocketAddr) -> usize {
    let addresses = netcode::ConnectToken::read(token)
        .map(|t| t.server_addresses)
        .unwrap_or_default();
    let at = addresses.iter().position(|a| *a == server);
    at.map_or(0, |i| (i + 1) % addresses.len().max(1))
}

fn decode_message(
    stats: &mut SessionStats,
    payload: &[u8],
) -> Option<(PacketHeader, ServerMessage)> {
    match decode_server(payload) {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            stats.bad_messages += 1;
            tracing::trace!(%error, "bad message from server");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    //! The session against small fake servers: real netcode and real messages, a virtual
    //! clock, and links with a fixed latency.

    use std::collections::VecDeque;

    use arena_shared::identity::{ARENA_PROTOCOL_ID, TokenRequest, mint_token};
    use arena_shared::netcode::{ClientIndex, Key, ServerEvent};
    use arena_shared::protocol::messages::TOKEN_PART_BYTES;
    use arena_shared::protocol::{PlayerStatus, decode_client};
    use arena_shared::sim::WorldConfig;

    use super::*;

    const KEY: Key = [3; 32];
    const START: Duration = Duration::from_secs(1_800_000_000);
    const STEP: Duration = Duration::from_millis(10);
    const ME: SocketAddr = SocketAddr::new(
        std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 1, 0, 1)),
        40000,
    );

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, n], 7777))
    }

    fn token(now: Duration, addresses: &[SocketAddr]) -> Vec<u8> {
        mint_token(
            &TokenRequest {
                protocol_id: ARENA_PROTOCOL_ID,
                server_addresses: addresses.to_vec(),
                client_id: 77,
                name: "ann".into(),
                now_unix_s: now.as_secs(),
                expire_s: 600,
                timeout_s: 5,
                spectator: false,
            },
            &KEY,
        )
        .unwrap()
        .write()
        .unwrap()
        .to_vec()
    }

    /// A datagram on its way: when it arrives, from, to, bytes.
    type InFlight = (Duration, SocketAddr, SocketAddr, Vec<u8>);

    /// A minimal game server for one player: it applies inputs in order as they arrive
    /// (skipping only frames the client gave up) and, while ticking, sends a snapshot
    /// every step.
    struct FakeServer {
        addr: SocketAddr,
        netcode: netcode::Server,
        acks: AckTracker,
        client: Option<ClientIndex>,
        /// Receives and answers at all (false: dead, datagrams vanish).
        alive: bool,
        /// Owns the match: ticks, applies inputs and sends snapshots.
        ticking: bool,
        /// Applies inputs but keeps reporting the old counts (an ack that never arrives).
        stale_reports: bool,
        latency: Duration,
        tick: u64,
        last_applied: u32,
        inputs_applied: u64,
        reported: (u32, u64),
        restored_from: Option<Tick>,
        payloads_received: u64,
        connects: u64,
    }

    impl FakeServer {
        fn new(addr: SocketAddr) -> Self {
            Self {
                addr,
                netcode: netcode::Server::new(netcode::ServerConfig {
                    protocol_id: ARENA_PROTOCOL_ID,
                    private_key: KEY,
                    max_clients: 4,
                    addresses: vec![addr],
                }),
                acks: AckTracker::default(),
                client: None,
                alive: true,
                ticking: false,
                stale_reports: false,
                latency: Duration::from_millis(20),
                tick: 100,
                last_applied: 0,
                inputs_applied: 0,
                reported: (0, 0),
                restored_from: None,
                payloads_received: 0,
                connects: 0,
            }
        }

        /// Takes over `other`'s match as it stands (a planned handoff).
        fn take_match_of(&mut self, other: &Self) {
            self.tick = other.tick;
            self.last_applied = other.last_applied;
            self.inputs_applied = other.inputs_applied;
            self.reported = other.reported;
        }

        fn receive(&mut self, now: Duration, from: SocketAddr, bytes: &mut [u8]) {
            let Some((_, payload)) = self.netcode.handle_packet(now, from, bytes) else {
                return;
            };
            self.payloads_received += 1;
            let Ok((header, ClientMessage::Inputs { frames })) = decode_client(payload) else {
                return;
            };
            self.acks.on_receive(now, header, |_| {});
            if !self.ticking {
                return; // Frozen: inputs wait at the client.
            }
            if let Some(first) = frames.first()
                && first.sequence > self.last_applied + 1
            {
                self.last_applied = first.sequence - 1; // The client gave those up.
            }
            for frame in frames {
                if frame.sequence == self.last_applied + 1 {
                    self.last_applied += 1;
                    self.inputs_applied += 1;
                }
            }
        }

        /// Like a real core: a client that connected since the last tick gets its first
        /// snapshot a tick after netcode's keep-alive told it it is connected.
        fn update(&mut self, now: Duration) {
            self.netcode.update(now);
            self.tick_once(now);
            while let Some(event) = self.netcode.poll_event() {
                match event {
                    ServerEvent::ClientConnected { client, .. } => {
                        self.client = Some(client);
                        self.connects += 1;
                    }
                    ServerEvent::ClientDisconnected { .. } => self.client = None,
                }
            }
        }

        fn tick_once(&mut self, now: Duration) {
            if self.ticking {
                self.tick += 1;
                if !self.stale_reports {
                    self.reported = (self.last_applied, self.inputs_applied);
                }
                let snapshot = Snapshot {
                    tick: Tick(self.tick),
                    baseline_tick: None,
                    world: WorldConfig {
                        max_players: 8,
                        tick_hz: 60,
                        seed: 1,
                    },
                    your_entity: None,
                    last_applied_input: self.reported.0,
                    inputs_applied: self.reported.1,
                    restored_from_tick: self.restored_from,
                    you: PlayerStatus::default(),
                    entities: Vec::new(),
                    deferred: 0,
                };
                self.send(now, &ServerMessage::Snapshot(snapshot));
            }
        }

        fn send(&mut self, now: Duration, message: &ServerMessage) {
            let Some(client) = self.client else {
                return;
            };
            let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
            let len = encode(self.acks.next_header(now), message, &mut out).unwrap();
            let _ = self.netcode.send_payload(now, client, &out[..len]);
        }

        fn send_token(&mut self, now: Duration, purpose: TokenPurpose, id: u32, token: &[u8]) {
            for part in 0..TOKEN_PARTS {
                let start = usize::from(part) * TOKEN_PART_BYTES;
                self.send(
                    now,
                    &ServerMessage::TokenPart(TokenPart {
                        purpose,
                        token_id: id,
                        part,
                        bytes: token[start..start + TOKEN_PART_BYTES].to_vec(),
                    }),
                );
            }
        }
    }

    /// One session and its servers at a virtual time.
    struct Net {
        now: Duration,
        session: Session,
        servers: Vec<FakeServer>,
        playing: bool,
        wire: VecDeque<InFlight>,
    }

    impl Net {
        /// A session connected to server 0 (ticking), with servers `1..count` idle.
        fn new(count: u8) -> Self {
            let servers: Vec<FakeServer> = (1..=count).map(|n| FakeServer::new(addr(n))).collect();
            let mut net = Self {
                now: START,
                session: Session::new(START, &token(START, &[addr(1)]), 60),
                servers,
                playing: true,
                wire: VecDeque::new(),
            };
            net.servers[0].ticking = true;
            assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_connected()));
            net.run(Duration::from_millis(300));
            net
        }

        fn step(&mut self) {
            self.now += STEP;
            let now = self.now;
            self.deliver(now);
            for server in self.servers.iter_mut().filter(|s| s.alive) {
                server.update(now);
                while let Some(t) = server.netcode.poll_transmit() {
                    self.wire.push_back((
                        now + server.latency,
                        server.addr,
                        t.destination,
                        t.contents,
                    ));
                }
            }
            self.deliver(now);
            self.session.update(now);
            if self.playing {
                let _ = self.session.send_input(now, PlayerInput::default());
            } else {
                self.session.resend_inputs(now);
            }
            while let Some(t) = self.session.poll_transmit() {
                let latency = self
                    .servers
                    .iter()
                    .find(|s| s.addr == t.destination)
                    .map_or(Duration::ZERO, |s| s.latency);
                self.wire
                    .push_back((now + latency, ME, t.destination, t.contents));
            }
        }

        /// Delivers what has arrived by `now`, in arrival order.
        fn deliver(&mut self, now: Duration) {
            let mut due: Vec<InFlight> = Vec::new();
            self.wire.retain(|d| {
                if d.0 <= now {
                    due.push(d.clone());
                    false
                } else {
                    true
                }
            });
            due.sort_by_key(|d| d.0);
            for (at, from, to, mut bytes) in due {
                if to == ME {
                    self.session.handle_datagram(at, from, &mut bytes);
                } else if let Some(server) =
                    self.servers.iter_mut().find(|s| s.addr == to && s.alive)
                {
                    server.receive(at, from, &mut bytes);
                }
            }
        }

        fn run(&mut self, time: Duration) {
            let end = self.now + time;
            while self.now < end {
                self.step();
            }
        }

        fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
            let end = self.now + limit;
            while self.now < end {
                if done(self) {
                    return true;
                }
                self.step();
            }
            done(self)
        }

        fn on(&self, n: usize) -> bool {
            self.session.is_connected()
                && self.session.server_address() == Some(self.servers[n].addr)
        }

        /// Server `from` tells the client to connect ahead to server `to`.
        fn prepare(&mut self, from: usize, to: usize, id: u32) {
            let now = self.now;
            let token = token(now, &[self.servers[to].addr]);
            self.servers[from].send_token(now, TokenPurpose::Prepare, id, &token);
        }

        fn send_reconnect_token(&mut self, from: usize, addresses: &[SocketAddr]) {
            let now = self.now;
            let token = token(now, addresses);
            self.servers[from].send_token(now, TokenPurpose::Reconnect, 1, &token);
            self.run(Duration::from_millis(100));
            assert!(self.session.has_reconnect_token());
        }

        /// Stops playing and waits until every frame is acknowledged.
        fn drain(&mut self) {
            self.playing = false;
            assert!(self.run_until(
                Duration::from_secs(2),
                |n| n.session.inputs_unacknowledged() == 0
            ));
        }

        /// Every frame sent has exactly one fate.
        fn assert_accounted(&self) {
            let s = self.session.stats();
            assert_eq!(
                s.inputs_sent,
                s.inputs_applied
                    + s.inputs_rolled_back
                    + s.inputs_given_up
                    + self.session.inputs_unacknowledged(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_connection_opened_ahead_takes_over_at_the_new_servers_first_snapshot() {
        let mut net = Net::new(2);
        net.prepare(0, 1, 1);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        assert_eq!(net.session.prepared_server(), Some(addr(2)));
        // Play goes on where it was; nothing but keep-alives goes to the standby.
        net.run(Duration::from_millis(300));
        assert!(net.on(0));
        assert_eq!(net.servers[1].payloads_received, 0);
        let before = net.session.stats().inputs_sent;
        assert!(before > 30);

        // The handoff: 0 freezes, 1 takes the match as it stands and ticks at once.
        net.servers[0].ticking = false;
        let frozen = std::mem::replace(&mut net.servers[0], FakeServer::new(addr(1)));
        net.servers[0] = frozen;
        let (a, b) = net.servers.split_at_mut(1);
        b[0].take_match_of(&a[0]);
        b[0].ticking = true;
        assert!(net.run_until(Duration::from_millis(200), |n| n.on(1)));
        let stats = net.session.stats().clone();
        assert_eq!((stats.handoffs_followed, stats.handoffs_prepared), (1, 1));
        assert_eq!(stats.prepares_abandoned, 0);
        assert_eq!(net.servers[1].connects, 1, "no second handshake");
        // The wait: one step of pause plus the standby's one-way trip, no handshake.
        assert!(
            stats.max_snapshot_gap <= Duration::from_millis(40),
            "{stats:?}"
        );
        let moved = net.session.moved().unwrap();
        assert!(moved.redirected);
        assert_eq!(moved.from, Some(addr(1)));
        // The old owner heard the goodbye.
        net.run(Duration::from_millis(100));
        assert_eq!(net.servers[0].netcode.num_connected(), 0);
        // The frames the frozen owner never applied went to the new one: nothing lost.
        net.run(Duration::from_millis(300));
        net.drain();
        assert!(net.servers[1].inputs_applied > before);
        let stats = net.session.stats();
        assert_eq!(stats.inputs_applied, stats.inputs_sent, "{stats:?}");
        assert_eq!(stats.inputs_rolled_back + stats.inputs_given_up, 0);
        net.assert_accounted();
    }

    #[test]
    fn a_redirect_to_the_prepared_server_switches_at_once() {
        let mut net = Net::new(2);
        net.prepare(0, 1, 1);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        net.servers[0].ticking = false;
        let now = net.now;
        let redirect = token(now, &[addr(2), addr(3)]);
        net.servers[0].send_token(now, TokenPurpose::Redirect, 1, &redirect);
        // Switched as soon as the redirect arrived (one way, 20 ms), before any snapshot.
        net.run(Duration::from_millis(40));
        assert!(net.on(1));
        assert_eq!(net.session.stats().handoffs_prepared, 1);
        assert!(net.session.moved().unwrap().done_at.is_none());
        // The new owner starts ticking; its first snapshot is taken and inputs flow.
        let (a, b) = net.servers.split_at_mut(1);
        b[0].take_match_of(&a[0]);
        b[0].ticking = true;
        net.run(Duration::from_millis(200));
        assert!(net.session.moved().unwrap().done_at.is_some());
        assert_eq!(net.servers[1].connects, 1);
        assert_eq!(net.session.stats().handoffs_followed, 1);
        net.drain();
        assert_eq!(
            net.session.stats().inputs_applied,
            net.session.stats().inputs_sent
        );
        net.assert_accounted();
    }

    #[test]
    fn the_owners_pause_during_a_prepared_handoff_is_waited_out() {
        // Called off: the owner is quiet for 2 s (longer than the usual silence), then
        // resumes; the client never left it.
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        net.prepare(0, 1, 1);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        net.servers[0].alive = false;
        net.run(Duration::from_secs(2));
        net.servers[0].alive = true;
        net.run(Duration::from_millis(200));
        assert!(net.on(0));
        assert_eq!(net.session.stats().reconnects, 0);
        net.drain();
        net.assert_accounted();

        // Committed late: the owner is quiet for 2 s, then the new owner ticks.
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        net.prepare(0, 1, 1);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        net.servers[0].ticking = false;
        net.run(Duration::from_secs(2));
        let (a, b) = net.servers.split_at_mut(1);
        b[0].take_match_of(&a[0]);
        b[0].ticking = true;
        assert!(net.run_until(Duration::from_millis(200), |n| n.on(1)));
        let stats = net.session.stats();
        assert_eq!((stats.reconnects, stats.handoffs_prepared), (0, 1));
    }

    #[test]
    fn a_refused_prepare_is_dropped_and_play_goes_on() {
        let mut net = Net::new(2);
        net.servers[1].netcode.set_admitting(false);
        net.prepare(0, 1, 1);
        assert!(net.run_until(
            Duration::from_secs(1),
            |n| n.session.stats().prepares_abandoned == 1
        ));
        assert_eq!(net.session.prepared_server(), None);
        net.run(Duration::from_millis(500));
        assert!(net.on(0));
        let stats = net.session.stats();
        assert_eq!((stats.handoffs_followed, stats.reconnects), (0, 0));
        assert!(stats.max_snapshot_gap <= 2 * STEP, "{stats:?}");
        // A standby that accepted and then went away: dropped too, after its timeout.
        net.servers[1].netcode.set_admitting(true);
        net.prepare(0, 1, 2);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        net.servers[1].alive = false;
        assert!(net.run_until(
            Duration::from_secs(6),
            |n| n.session.stats().prepares_abandoned == 2
        ));
        assert!(net.on(0));
        assert!(net.session.stats().max_snapshot_gap <= 2 * STEP);
        net.drain();
        assert_eq!(
            net.session.stats().inputs_applied,
            net.session.stats().inputs_sent
        );
        net.assert_accounted();
    }

    #[test]
    fn a_redirect_elsewhere_closes_the_prepared_connection_and_connects_afresh() {
        let mut net = Net::new(3);
        net.prepare(0, 1, 1);
        assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
        net.servers[0].ticking = false;
        let now = net.now;
        let redirect = token(now, &[addr(3)]);
        net.servers[0].send_token(now, TokenPurpose::Redirect, 1, &redirect);
        let (a, c) = net.servers.split_at_mut(2);
        c[0].take_match_of(&a[0]);
        c[0].ticking = true;
        assert!(net.run_until(Duration::from_secs(1), |n| n.on(2)));
        net.run(Duration::from_millis(100));
        let stats = net.session.stats();
        assert_eq!((stats.handoffs_followed, stats.handoffs_prepared), (1, 0));
        assert_eq!(stats.prepares_abandoned, 1);
        // The standby was told goodbye, not left to time out.
        assert_eq!(net.servers[1].netcode.num_connected(), 0);
    }

    #[test]
    fn after_a_crash_the_standby_is_retried_until_it_takes_over_and_the_dead_owner_skipped() {
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        // The owner dies; the standby denies until it takes the match over, 400 ms after
        // the client noticed the silence.
        net.servers[1].netcode.set_admitting(false);
        net.servers[0].alive = false;
        let died = net.now;
        assert!(
            net.run_until(Duration::from_secs(2), |n| n.session.stats().reconnects
                == 1)
        );
        net.run(Duration::from_millis(400));
        net.servers[1].netcode.set_admitting(true);
        net.servers[1].ticking = true;
        let took_over = net.now;
        assert!(net.run_until(Duration::from_secs(3), |n| n.on(1)));
        // Within a refusal pause (and a round trip) of the takeover, not a second spent on
        // the dead owner's address.
        assert!(
            net.now - took_over <= RETRY_AFTER_REFUSAL + Duration::from_millis(100),
            "{:?} after the takeover",
            net.now - took_over
        );
        assert!(net.now - died < Duration::from_millis(1700));
        assert_eq!(net.session.stats().reconnects, 1);
    }

    #[test]
    fn a_handshake_that_took_over_a_second_is_kept() {
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        // The standby is far: its handshake (two round trips) takes 1.6 s, each answer
        // within the per-address limit.
        net.servers[1].latency = Duration::from_millis(400);
        net.servers[1].ticking = true;
        net.servers[0].alive = false;
        assert!(
            net.run_until(Duration::from_secs(2), |n| n.session.stats().reconnects
                == 1)
        );
        let started = net.now;
        assert!(net.run_until(Duration::from_secs(3), |n| n.on(1)));
        assert!(
            net.now - started >= Duration::from_millis(1500),
            "{:?}",
            net.now - started
        );
        // Connected after more than a second of trying, and kept.
        net.run(Duration::from_secs(2));
        assert!(net.on(1));
        assert_eq!(net.session.stats().reconnects, 1);
    }

    #[test]
    fn a_server_that_disconnects_the_client_is_left_for_the_next_address() {
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        net.servers[1].ticking = true;
        // The owner stops: it admits nobody and says goodbye.
        let now = net.now;
        net.servers[0].netcode.set_admitting(false);
        net.servers[0].netcode.disconnect_all(now);
        net.servers[0].ticking = false;
        assert!(net.run_until(Duration::from_secs(1), |n| n.on(1)));
        assert_eq!(net.session.stats().reconnects, 1);
        assert!(!net.session.is_lost());
        // Leaving on purpose is not a reason to reconnect.
        let now = net.now;
        net.session.disconnect(now);
        net.run(Duration::from_millis(200));
        assert!(net.session.is_lost());
        assert_eq!(net.session.stats().reconnects, 1);
    }

    #[test]
    fn a_reconnect_spends_a_second_not_the_token_timeout_on_a_dead_address() {
        let mut net = Net::new(3);
        net.send_reconnect_token(0, &[addr(1), addr(2), addr(3)]);
        net.servers[1].alive = false;
        net.servers[2].ticking = true;
        net.servers[0].alive = false;
        assert!(
            net.run_until(Duration::from_secs(2), |n| n.session.stats().reconnects
                == 1)
        );
        let started = net.now;
        assert!(net.run_until(Duration::from_secs(3), |n| n.on(2)));
        let took = net.now - started;
        assert!(
            took < MOVE_ATTEMPT_TIMEOUT + Duration::from_millis(200),
            "{took:?}"
        );
        assert_eq!(net.session.stats().reconnects, 1);
    }

    #[test]
    fn a_crash_restore_counts_the_rollback_and_its_inputs_exactly() {
        let mut net = Net::new(2);
        net.send_reconnect_token(0, &[addr(1), addr(2)]);
        // The standby holds the owner's snapshot from now.
        let (a, b) = net.servers.split_at_mut(1);
        b[0].take_match_of(&a[0]);
        b[0].restored_from = Some(Tick(b[0].tick));
        let restored_tick = b[0].tick;
        let applied_at_snapshot = b[0].inputs_applied;
        net.run(Duration::from_millis(500));
        // The owner dies; what it had sent still arrives.
        net.servers[0].alive = false;
        net.run(Duration::from_millis(100));
        let told = net.session.stats().inputs_applied;
        let newest_tick = net.session.latest_snapshot().unwrap().tick.0;
        let last_applied = net.session.last_applied_input();
        assert!(told > applied_at_snapshot + 20);
        // The standby restores and ticks on before the client is back.
        net.servers[1].ticking = true;
        assert!(net.run_until(Duration::from_secs(3), |n| n.on(1)
            && n.session.stats().snapshots > 0
            && n.session.moved().unwrap().done_at.is_some()));
        let stats = net.session.stats().clone();
        assert_eq!(stats.reconnects, 1);
        assert_eq!(
            stats.max_rollback_ticks,
            newest_tick - restored_tick,
            "{stats:?}"
        );
        assert_eq!(
            stats.inputs_rolled_back,
            told - applied_at_snapshot,
            "{stats:?}"
        );
        // The client follows the restored server's word down, and nothing else is lost.
        assert!(net.session.last_applied_input() < last_applied);
        net.run(Duration::from_millis(500));
        net.drain();
        let stats = net.session.stats();
        assert_eq!(stats.inputs_given_up, 0);
        assert_eq!(stats.inputs_applied, net.servers[1].inputs_applied);
        net.assert_accounted();
    }

    #[test]
    fn given_up_frames_are_counted_only_if_never_applied() {
        // A server that stops applying for 2.5 s: the client gives up the oldest frames,
        // and the server skips them when it resumes.
        let mut net = Net::new(1);
        net.servers[0].ticking = true;
        let mut deaf = true;
        let end = net.now + Duration::from_millis(2500);
        while net.now < end {
            // Snapshots keep coming (no reconnect) but report nothing new.
            net.servers[0].stale_reports = deaf;
            let (applied, last) = (net.servers[0].inputs_applied, net.servers[0].last_applied);
            net.step();
            net.servers[0].inputs_applied = applied;
            net.servers[0].last_applied = last;
        }
        deaf = false;
        net.servers[0].stale_reports = deaf;
        net.drain();
        let given_up = net.session.stats().inputs_given_up;
        assert!(given_up > 20, "{:?}", net.session.stats());
        assert_eq!(net.session.stats().reconnects, 0);
        net.assert_accounted();

        // The same, but the server applied everything and only its reports were stale:
        // the frames given up were applied after all, and are not counted lost.
        let mut net = Net::new(1);
        net.servers[0].stale_reports = true;
        net.run(Duration::from_millis(2500));
        net.servers[0].stale_reports = false;
        net.drain();
        let stats = net.session.stats();
        assert_eq!(stats.inputs_given_up, 0, "{stats:?}");
        assert_eq!(stats.inputs_applied, stats.inputs_sent);
        net.assert_accounted();
    }
}
