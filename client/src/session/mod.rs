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
//! # Aiming inputs
//!
//! Each frame is for the tick the server will be about to run when it arrives: the
//! server's tick now (from the snapshot of the last [`CLOCK_WINDOW`] that arrived
//! quickest, and the time since), plus a round trip, plus a lead that [`InputLead`]
//! adapts to the margins the server reports (`input_margin` in each snapshot), so that at
//! least 99% are applied in time with as little lead as that takes. The server applies
//! one frame per tick, in order, so frame ticks go up by exactly one from frame to frame,
//! and the lead changes by changing that pace instead:
//!
//! - to lengthen it, a frame skips ticks (the game goes on without this player's input
//!   there: the shooter repeats the previous one);
//! - to shorten it, [`Session::send_input`] makes no frame for one call in a few: the
//!   input is held and merged into the next frame ([`Game::merge_late`]);
//! - after a frame reached the server too late (it is merged into the next tick's, which
//!   the server applies with it), the next frame skips one tick when a snapshot shows the
//!   oldest unapplied frame's tick already run, and the pace then closes the gap. (Servers
//!   before the merge of every frame due by a tick applied each frame behind a late one a
//!   tick late; the skip ends such a run too.)
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
//! # Reliable notices
//!
//! The server tells the game's shared data (the map), players' names and the game's events
//! reliably ([`ServerMessage::Reliable`]); the session's [`Inbox`] delivers them once, in
//! order ([`Session::shared`], [`Session::name`], [`Session::take_events`]). Their numbering
//! is per connection: a new handshake (a reconnect, a redirect) starts it afresh. The
//! connection opened ahead of a handoff has an inbox of its own, since its packets are
//! acknowledged by its own ack tracker (dropping what it received would lose it for good);
//! the session's inbox takes it over when that connection is promoted.
//!
//! # Counting inputs
//!
//! Every frame sent ends in exactly one of: applied (as the current server counts them,
//! [`SessionStats::inputs_applied`]), rolled back by a crash restore
//! ([`SessionStats::inputs_rolled_back`]), given up by this client and never applied
//! ([`SessionStats::inputs_given_up`]), or not known yet
//! ([`Session::inputs_unacknowledged`]). Their sum is [`SessionStats::inputs_sent`] as long
//! as the server applies in order and skips only frames it never received.
//!
//! # The server's settings
//!
//! A server tells each connection the match's settings and its view radius first
//! ([`Session::match_config`], [`Session::view_radius`]). Until then the session assumes
//! the tick rate it was made with; from then on it aims its inputs by the server's
//! ([`Session::tick_hz`]), and a driver paces them by it too.
//!
//! # What went wrong
//!
//! The first connect gives up on an address after [`CONNECT_ATTEMPT_TIMEOUT`] of silence
//! and [`Session::connect_failure`] says what is likely wrong (a wrong key or protocol id
//! looks exactly like a server that is down: netcode servers do not answer). Once
//! connected, [`Session::interruption`] says what broke the connection (silence,
//! disconnect packets, a timeout) until a snapshot arrives again; a handoff is not an
//! interruption, and a reconnect that finds the match clears it.
//!
//! # Layout
//!
//! - this file: the session, its timers and reconnects, and what it reports;
//! - `ahead`: the connection opened ahead of a handoff (make before break);
//! - `accounting`: what each snapshot says about this player's inputs and rollbacks;
//! - `lead`: choosing the input lead from the margins the server reports;
//! - `tokens`: tokens arriving in parts;
//! - [`trouble`]: why a connect failed, why a connection was lost, in words.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::game::{Game, InputFrame, MatchConfig, PlayerId, Tick};
use arena_shared::netcode::{self, ClientState, Transmit};
use arena_shared::protocol::baselines::{Baselines, DeltaError};
use arena_shared::protocol::messages::MAX_INPUT_FRAMES_PER_PACKET;
use arena_shared::protocol::reliable::{Inbox, InboxStats};
use arena_shared::protocol::{
    AckTracker, ClientMessage, ScoreEntry, ServerMessage, Snapshot, TokenPart, TokenPurpose,
    decode_server, encode,
};

mod accounting;
mod ahead;
pub mod lead;
#[cfg(test)]
mod tests;
mod tokens;
pub mod trouble;

use ahead::Prepared;
pub use lead::InputLead;
use tokens::TokenInbox;
pub use trouble::{ConnectFailure, Interruption, InterruptionCause};

/// Unapplied input frames a client keeps (two seconds at 60 Hz). Past this the oldest is
/// given up: the server notices the gap and moves on.
pub const MAX_UNAPPLIED_INPUTS: usize = 120;
/// While the frames run ahead of their aim by a tick or more, one call in this many to
/// [`Session::send_input`] makes no frame (its input goes into the next one).
const HOLD_ONE_INPUT_IN: u32 = 4;
/// The server's tick is read from the quickest snapshot of this long: a late one does
/// not pull the inputs' aim back and forth.
pub const CLOCK_WINDOW: Duration = Duration::from_secs(1);
/// Silence from a connected server after which the session reconnects with its reconnect
/// token (the server may have died; a standby may hold the match now). Measured from the
/// newest snapshot or from when the connection was made, whichever is later.
pub const SILENCE_BEFORE_RECONNECT: Duration = Duration::from_millis(1000);
/// The silence tolerated instead while a connection opened ahead of a handoff is up: the
/// owner is expected to go quiet for the commit, after which either the new owner's first
/// snapshot arrives on that connection or, if the handoff is called off, the owner resumes.
/// Reconnecting in between would only get in the way of both.
pub const SILENCE_DURING_HANDOFF: Duration = Duration::from_millis(3000);
/// How long the first connect waits for an answer from one address before it tries the
/// token's next one or gives up (instead of the token's timeout, 5 to 10 s): a server
/// answers a request at once, and silence means a wrong key or protocol id, or a server
/// that is down (see [`trouble`]).
pub const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
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
    /// Snapshots refused: a delta against a baseline this client does not hold (it was
    /// lost, or belonged to another connection). Not acknowledged, so never a baseline.
    pub snapshots_no_baseline: u64,
    /// Snapshots refused: their entities did not read as a valid delta.
    pub snapshots_malformed: u64,
    /// Snapshots refused because the match's settings had not arrived yet (they are the
    /// first notice on a connection; a snapshot can overtake them).
    pub snapshots_before_config: u64,
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
    /// Input frames that reached the server after their tick had run, as the snapshots
    /// taken report them (those of a lost snapshot go uncounted).
    pub inputs_arrived_late: u64,
    /// Calls to [`Session::send_input`] that made no frame, to shorten the lead: their
    /// input went into the next frame.
    pub inputs_held: u64,
    /// Ticks left without a frame to lengthen the lead, or to end a run of frames
    /// applied late.
    pub input_ticks_skipped: u64,
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

/// One client's connection to a match of `G`. See the module docs for the calling order.
#[derive(Debug)]
pub struct Session<G: Game> {
    netcode: netcode::Client,
    /// The tick rate inputs are aimed by: the one the session was made with until the
    /// server tells its own.
    tick_hz: u32,
    /// The transport was connected at least once (a failure after it is not a failure
    /// to connect).
    connected_once: bool,
    /// What broke the connection, since the last snapshot.
    interruption: Option<Interruption>,
    acks: AckTracker,
    /// The views the current connection's snapshots left (the baselines its deltas name).
    baselines: Baselines<G>,
    /// The current connection's reliable notices, and what they told.
    inbox: Inbox<G>,
    /// Frames made and not yet applied by the server, oldest first.
    unapplied: VecDeque<InputFrame<G::Input>>,
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
    /// How far ahead of the round trip frames are aimed.
    lead: InputLead,
    /// An input held back (no frame made for it, to shorten the lead), for the next frame.
    held_input: Option<G::Input>,
    /// Calls to `send_input` since one made no frame.
    since_held: u32,
    /// The next frame skips a tick: the server is applying frames late (see the docs).
    skip_tick: bool,
    /// The tick the last such skip left out: until a snapshot of it arrives, older ones
    /// still show the frames late and must not skip again.
    skipped_tick: Option<Tick>,
    /// When the current server's snapshots of the last [`CLOCK_WINDOW`] arrived, and
    /// their ticks.
    arrivals: VecDeque<(Duration, Tick)>,
    latest: Option<Snapshot<G>>,
    /// When the newest snapshot arrived.
    latest_at: Duration,
    /// When the current server was last heard from, or the current transport started:
    /// with the connection's own start, the silence that triggers a reconnect is
    /// measured from here.
    last_heard: Duration,
    /// Snapshots not yet taken by the caller (bounded).
    fresh: VecDeque<Snapshot<G>>,
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
    next: Option<Prepared<G>>,
    /// Datagrams a replaced transport still had to send (its disconnect packets).
    outbox: VecDeque<Transmit>,
    moved: Option<Moved>,
    scoreboard: Vec<ScoreEntry<G>>,
    /// Set when the transport changes server: its first snapshot is taken whatever its tick.
    awaiting_new_server: bool,
}

impl<G: Game> Session<G> {
    /// A session that starts connecting with a 2048-byte connect token. `tick_hz` is the
    /// rate assumed until the server tells its own (the match's settings arrive before
    /// the first snapshot, so no input is aimed by the guess).
    pub fn new(now: Duration, token: &[u8], tick_hz: u32) -> Self {
        let mut netcode = netcode::Client::new(now, token);
        netcode.set_attempt_timeout(CONNECT_ATTEMPT_TIMEOUT);
        Self {
            netcode,
            tick_hz: tick_hz.max(1),
            connected_once: false,
            interruption: None,
            acks: AckTracker::default(),
            baselines: Baselines::default(),
            inbox: Inbox::default(),
            unapplied: VecDeque::new(),
            next_input_sequence: 1,
            last_applied: 0,
            given_up: VecDeque::new(),
            resolved_through: 0,
            last_input_tick: Tick(0),
            lead: InputLead::new(tick_hz),
            held_input: None,
            since_held: 0,
            skip_tick: false,
            skipped_tick: None,
            arrivals: VecDeque::new(),
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
        let layers = Layers {
            netcode: &mut self.netcode,
            acks: &mut self.acks,
            baselines: &mut self.baselines,
            inbox: &mut self.inbox,
            config: None,
        };
        let message = receive_message(layers, &mut self.stats, now, from, datagram);
        self.connected_once |= self.netcode.is_connected();
        let Some(message) = message else {
            return;
        };
        match message {
            Received::Snapshot(snapshot) => self.receive_snapshot(now, snapshot),
            Received::Message(ServerMessage::TokenPart(part)) => {
                self.receive_token_part(now, part);
            }
            Received::Message(ServerMessage::Scoreboard(entries)) => self.scoreboard = entries,
            Received::Message(ServerMessage::Reliable(reliable)) => self.inbox.handle(reliable),
            // Resolved into a `Received::Snapshot` by `receive_message`.
            Received::Message(ServerMessage::Snapshot | ServerMessage::NoticesAndSnapshot(_)) => {}
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
        // Baselines are per connection: the new server's first snapshot is a full one.
        self.baselines = Baselines::default();
        // Token ids and notice numbers are per connection: the next server starts afresh.
        self.tokens = TokenInbox::default();
        self.inbox.restart();
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

    fn receive_snapshot(&mut self, now: Duration, snapshot: Snapshot<G>) {
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
        let gap = now.saturating_sub(self.latest_at);
        if self.latest.is_some() {
            self.stats.max_snapshot_gap = self.stats.max_snapshot_gap.max(gap);
        }
        // The match's own rate (bounded by the decoder): inputs are aimed by it.
        let tick_hz = snapshot.config.tick_hz.max(1);
        if tick_hz != self.tick_hz {
            self.tick_hz = tick_hz;
            self.lead.set_tick_hz(tick_hz);
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
        self.observe_margin(now, gap, &snapshot, from_new_server);
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
        self.interruption = None;
        if let Some(moved) = &mut self.moved
            && moved.done_at.is_none()
        {
            moved.done_at = Some(now);
        }
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
        if self.connected_once && self.interruption.is_none() {
            self.interruption = Some(self.interruption_now(now, silent, state));
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

    /// What went wrong, noticed at `now`: silence, or the transport's failure.
    fn interruption_now(&self, now: Duration, silent: bool, state: ClientState) -> Interruption {
        let cause = if silent {
            InterruptionCause::Silent(now.saturating_sub(self.quiet_since()))
        } else {
            match state {
                ClientState::Disconnected => InterruptionCause::Disconnected,
                ClientState::ConnectionTimedOut => InterruptionCause::TimedOut,
                other => InterruptionCause::Failed(other),
            }
        };
        Interruption {
            server: self.netcode.server_address(),
            cause,
            at: now,
        }
    }

    /// Since when the connected server has been quiet: the newest snapshot or the
    /// connection's start, whichever is later.
    fn quiet_since(&self) -> Duration {
        self.netcode
            .connected_at()
            .map_or(self.last_heard, |at| at.max(self.last_heard))
    }

    /// Whether the connected server has been quiet too long. Measured from the newest
    /// snapshot or from when the connection was made, whichever is later: a handshake
    /// that took a while must not count as silence the moment it succeeds.
    fn is_silent(&self, now: Duration) -> bool {
        let quiet_since = self.quiet_since();
        let patience = if self.is_prepared() {
            SILENCE_DURING_HANDOFF
        } else {
            SILENCE_BEFORE_RECONNECT
        };
        self.netcode.is_connected()
            && self.latest.is_some()
            && now.saturating_sub(quiet_since) >= patience
    }

    /// What a snapshot says about how early this client's inputs arrive: the lead adapts
    /// to it, and frames applied late make the next frame skip a tick.
    fn observe_margin(
        &mut self,
        now: Duration,
        gap: Duration,
        snapshot: &Snapshot<G>,
        from_new_server: bool,
    ) {
        self.stats.inputs_arrived_late += u64::from(snapshot.inputs_arrived_late);
        if from_new_server {
            self.lead.new_server(now);
            self.skipped_tick = None;
            self.arrivals.clear();
        }
        self.arrivals.push_back((now, snapshot.tick));
        while self
            .arrivals
            .front()
            .is_some_and(|&(at, _)| now.saturating_sub(at) > CLOCK_WINDOW)
        {
            self.arrivals.pop_front();
        }
        let age = self.acks.rtt().unwrap_or_default() + gap;
        self.lead.observe(
            now,
            age,
            snapshot.input_margin,
            snapshot.inputs_arrived_late,
        );
        // The oldest frame not applied was for a tick that has run: it and those after
        // it are being applied late, until a frame leaves a tick out.
        let behind = self
            .unapplied
            .front()
            .is_some_and(|f| f.tick <= snapshot.tick);
        if behind && self.skipped_tick.is_none_or(|t| snapshot.tick >= t) {
            self.skip_tick = true;
        }
    }

    /// Makes this tick's input frame and sends it with every other unapplied one; returns
    /// the frame. Does nothing before the first snapshot (the server's tick is not known).
    /// While the session shortens its lead, a call now and then makes no frame: its input
    /// is held for the next one, the unapplied frames are sent again, and it returns
    /// `None` (see the module docs).
    pub fn send_input(&mut self, now: Duration, input: G::Input) -> Option<InputFrame<G::Input>> {
        if !self.netcode.is_connected() || self.latest.is_none() {
            return None;
        }
        let input = match self.held_input.take() {
            Some(held) => G::merge_late(held, input),
            None => input,
        };
        let Some(tick) = self.target_tick(now) else {
            self.held_input = Some(input);
            self.since_held = 0;
            self.stats.inputs_held += 1;
            self.resend_inputs(now);
            return None;
        };
        self.since_held = self.since_held.saturating_add(1);
        if self.next_input_sequence > 1 && tick.0 > self.last_input_tick.0 + 1 {
            // Any skip ends a run of frames applied late.
            self.stats.input_ticks_skipped += tick.0 - self.last_input_tick.0 - 1;
            self.skipped_tick = Some(Tick(tick.0 - 1));
            self.skip_tick = false;
        }
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

    /// Sends the unapplied frames again without making a new one (while draining).
    pub fn resend_inputs(&mut self, now: Duration) {
        if self.netcode.is_connected() && !self.unapplied.is_empty() {
            self.send_unapplied(now);
        }
    }

    fn send_unapplied(&mut self, now: Duration) {
        let frames: Vec<InputFrame<G::Input>> = self
            .unapplied
            .iter()
            .take(MAX_INPUT_FRAMES_PER_PACKET)
            .copied()
            .collect();
        let header = self.acks.next_header(now);
        let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
        match encode(header, &ClientMessage::<G>::Inputs { frames }, &mut out) {
            Ok(len) => {
                let _ = self.netcode.send_payload(now, &out[..len]);
            }
            Err(error) => tracing::error!(%error, "input message did not fit"),
        }
    }

    /// The tick for a frame made now: the one after the previous frame's, unless the aim
    /// (the tick the server will be about to run when it arrives, plus the lead) is half
    /// a tick or more past it, or the server is applying frames late: then it skips
    /// ticks. `None`: make no frame now, the frames run a tick or more ahead of the aim
    /// (at most one call in [`HOLD_ONE_INPUT_IN`]).
    fn target_tick(&self, now: Duration) -> Option<Tick> {
        let Some(latest) = &self.latest else {
            return Some(self.last_input_tick);
        };
        let hz = f64::from(self.tick_hz);
        let server_tick = |&(at, tick): &(Duration, Tick)| {
            tick.0 as f64 + now.saturating_sub(at).as_secs_f64() * hz
        };
        let server_now = self
            .arrivals
            .iter()
            .map(server_tick)
            .fold(server_tick(&(self.latest_at, latest.tick)), f64::max);
        let rtt = self.acks.rtt().unwrap_or_default().as_secs_f64();
        let aim = server_now + rtt * hz + self.lead.lead_ticks();
        if self.next_input_sequence == 1 {
            return Some(Tick(aim.round() as u64).max(self.last_input_tick));
        }
        let next = self.last_input_tick.0 + 1 + u64::from(self.skip_tick);
        let behind = aim - next as f64;
        if behind >= 0.5 {
            Some(Tick(aim.round() as u64))
        } else if behind <= -1.0 && self.since_held + 1 >= HOLD_ONE_INPUT_IN && !self.skip_tick {
            None
        } else {
            Some(Tick(next))
        }
    }

    /// The current input lead, in ticks: how far past the round trip frames are aimed.
    pub fn input_lead_ticks(&self) -> f64 {
        self.lead.lead_ticks()
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
    pub fn take_snapshots(&mut self) -> impl Iterator<Item = Snapshot<G>> + '_ {
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

    /// Why the session never connected, once it has given up trying (`None` while it
    /// tries, and once it has connected).
    pub fn connect_failure(&self) -> Option<ConnectFailure> {
        if self.connected_once {
            return None;
        }
        ConnectFailure::from_state(
            self.netcode.state(),
            self.netcode.server_address(),
            self.netcode.server_addresses().len(),
        )
    }

    /// Whether the transport was ever connected.
    pub fn was_connected(&self) -> bool {
        self.connected_once
    }

    /// What broke the connection, if something did since the last snapshot (see the
    /// module docs): kept while the session reconnects, cleared by the next snapshot.
    pub fn interruption(&self) -> Option<Interruption> {
        self.interruption
    }

    /// Whether the session gave up reconnecting ([`RECONNECT_FOR`] without a snapshot).
    pub fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// The tick rate inputs are aimed by: the server's, once its settings arrived,
    /// else the one the session was made with. A driver paces its inputs by it.
    pub fn tick_hz(&self) -> u32 {
        self.inbox
            .config()
            .map_or(self.tick_hz, |c| c.tick_hz.max(1))
    }

    /// The match's settings, once the server told them (before its first snapshot).
    pub fn match_config(&self) -> Option<&MatchConfig> {
        self.inbox.config()
    }

    /// How far a player sees on the server, metres (`arena-server --view-radius`), once
    /// it told (with the match's settings). A spectator sees the whole arena.
    pub fn view_radius(&self) -> Option<f32> {
        self.inbox.view_radius_m()
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
    pub fn latest_snapshot(&self) -> Option<&Snapshot<G>> {
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
    pub fn unapplied_frames(&self) -> impl Iterator<Item = &InputFrame<G::Input>> {
        self.unapplied.iter()
    }

    /// The newest scoreboard.
    pub fn scoreboard(&self) -> &[ScoreEntry<G>] {
        &self.scoreboard
    }

    /// The game's shared data (the map, for the shooter), once it arrived. A new server
    /// sends its own; until then the last one told stays.
    pub fn shared(&self) -> Option<&G::Shared> {
        self.inbox.shared()
    }

    /// Goes up each time shared data arrives: a client that derives something from it
    /// (a drawn map) rebuilds it when this changes.
    pub fn shared_version(&self) -> u64 {
        self.inbox.shared_version()
    }

    /// The game's events that arrived since the last call, oldest first, each once. Those
    /// not taken are kept up to a bound, then dropped oldest first (counted in
    /// [`InboxStats::events_dropped`]).
    pub fn take_events(&mut self) -> impl Iterator<Item = G::Event> + '_ {
        self.inbox.take_events()
    }

    /// A player's name, once the server told it (it does before the first event that
    /// names the player).
    pub fn name(&self, player: PlayerId) -> Option<&str> {
        self.inbox.name(player)
    }

    /// What the reliable notices delivered, repeated and refused.
    pub fn inbox_stats(&self) -> InboxStats {
        self.inbox.stats()
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }
}

/// The index in `token`'s addresses after `server`'s (0 if it is not listed).
fn address_after(token: &[u8], server: SocketAddr) -> usize {
    let addresses = netcode::ConnectToken::read(token)
        .map(|t| t.server_addresses)
        .unwrap_or_default();
    let at = addresses.iter().position(|a| *a == server);
    at.map_or(0, |i| (i + 1) % addresses.len().max(1))
}

/// One connection's layers, for [`receive_message`].
struct Layers<'a, G: Game> {
    netcode: &'a mut netcode::Client,
    acks: &'a mut AckTracker,
    baselines: &'a mut Baselines<G>,
    /// Where notices riding in a snapshot's datagram go.
    inbox: &'a mut Inbox<G>,
    /// The match's settings if the inbox has not been told them (a snapshot is not read
    /// before one or the other has them).
    config: Option<MatchConfig>,
}

/// What one datagram brought.
enum Received<G: Game> {
    /// A snapshot, its delta applied.
    Snapshot(Snapshot<G>),
    /// Any other message.
    Message(ServerMessage<G>),
}

/// One datagram through a connection's layers: netcode (decrypt, replay), the game
/// codec (a bad message is counted), a snapshot's delta against its baseline (refused
/// and counted if the baseline is not held), and the ack header (a stale packet is
/// dropped). A refused snapshot is not acknowledged, so the server never takes it for a
/// baseline. The current connection and the one opened ahead share it.
fn receive_message<G: Game>(
    layers: Layers<'_, G>,
    stats: &mut SessionStats,
    now: Duration,
    from: SocketAddr,
    datagram: &mut [u8],
) -> Option<Received<G>> {
    let payload = layers.netcode.handle_packet(now, from, datagram)?;
    let (header, message, section) = match decode_server::<G>(payload) {
        Ok(decoded) => decoded,
        Err(error) => {
            stats.bad_messages += 1;
            tracing::trace!(%error, "bad message from server");
            return None;
        }
    };
    let received = match message {
        ServerMessage::Snapshot | ServerMessage::NoticesAndSnapshot(_) => {
            // Notices first: the first a connection gets is the settings.
            if let ServerMessage::NoticesAndSnapshot(reliable) = message {
                layers.inbox.handle(reliable);
            }
            let Some(config) = layers.inbox.config().copied().or(layers.config) else {
                stats.snapshots_before_config += 1;
                return None;
            };
            match layers.baselines.resolve(&config, section) {
                Ok(snapshot) => Received::Snapshot(snapshot),
                Err(error) => {
                    match error {
                        DeltaError::NoBaseline(_) => stats.snapshots_no_baseline += 1,
                        DeltaError::Malformed(_) => stats.snapshots_malformed += 1,
                    }
                    tracing::trace!(%error, "snapshot refused");
                    return None;
                }
            }
        }
        other => Received::Message(other),
    };
    layers
        .acks
        .on_receive(now, header, |_| {})
        .then_some(received)
}
