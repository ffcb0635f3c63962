//! The sans-IO server: one match, its connections, and the tick.
//!
//! # Calling order
//!
//! The driver reads the clock once per wake-up and then:
//! 1. [`ServerCore::handle_datagram`] for every datagram waiting on the socket (all of
//!    them: the socket is drained between ticks);
//! 2. [`ServerCore::tick`] when a tick is due;
//! 3. [`ServerCore::poll_transmit`] until it returns `None`, sending each datagram.
//!
//! Inputs arrive tagged with a sequence and the tick they are for. They wait in a bounded
//! per-client buffer and are applied in sequence order at their tick; a client with no
//! input for a tick repeats its last one; frames that arrive after their tick are applied
//! at the next one (merged, fire kept) and counted as late. Nothing is skipped unless the
//! client itself gave up on it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::game::{Game, InputFrame, MatchConfig, PlayerId, Seen, Tick, Viewer};
use arena_shared::identity::{TokenRequest, is_spectator, mint_token, name_from_user_data};
use arena_shared::netcode::{self, ClientIndex, DisconnectReason, ServerEvent, Transmit};
use arena_shared::protocol::messages::{
    MAX_BODY_BYTES, TOKEN_PART_BYTES, TOKEN_PARTS, encoded_len, net_id_len,
};
use arena_shared::protocol::reliable::Outbox;
use arena_shared::protocol::{
    AckTracker, ClientMessage, Replicated, ScoreEntry, ServerMessage, Snapshot, TokenPart,
    TokenPurpose, decode_client, encode,
};
use arena_shared::snapshot::{MatchState, RosterEntry};

/// Input frames held per client ahead of their tick; more are dropped and counted.
pub const MAX_PENDING_INPUTS: usize = 128;
/// The most ticks between a client's snapshots when the server sheds load (15 Hz at 60).
pub const MAX_SNAPSHOT_EVERY: u32 = 4;
/// Frames queued beyond this are applied even if early: a client whose clock runs ahead
/// gets bounded extra latency, not an ever-growing queue.
const MAX_INPUT_LEAD_FRAMES: usize = 8;

/// How the core is set up.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Names the match in logs, status and (later) snapshots.
    pub match_id: String,
    /// The transport: protocol id, private key, slots, own addresses.
    pub netcode: netcode::ServerConfig,
    /// The match's settings (a new match; a restored one keeps its own).
    pub world: MatchConfig,
    /// How far a player sees, metres.
    pub view_radius_m: f32,
    /// The tokens this server hands its clients.
    pub tokens: TokenConfig,
}

/// What goes into the reconnect and redirect tokens a server gives its clients.
#[derive(Debug, Clone)]
pub struct TokenConfig {
    /// This server's address as clients reach it.
    pub own_address: SocketAddr,
    /// Standbys that may take the match over (`--peer`), tried after this server.
    pub peers: Vec<SocketAddr>,
    /// Seconds of silence before a connection drops.
    pub timeout_s: i32,
    /// Seconds a token stays usable; tokens are refreshed at half of it.
    pub expire_s: u64,
}

/// Reconnect tokens minted per tick at most (the rest wait for the next ticks: at 60 Hz,
/// a thousand clients have theirs within a second).
const MAX_TOKEN_MINTS_PER_TICK: usize = 16;

/// How often an unacknowledged token part is sent again.
const TOKEN_RESEND: Duration = Duration::from_millis(100);

/// A token on its way to a client, in parts, resent until each part is acknowledged.
#[derive(Debug)]
struct OutgoingToken {
    purpose: TokenPurpose,
    id: u32,
    bytes: Vec<u8>,
    minted_at: Duration,
    acked: [bool; TOKEN_PARTS as usize],
    /// Which of our packets carried which part (the newest few).
    in_flight: Vec<(u16, u8)>,
    last_sent: Option<Duration>,
}

impl OutgoingToken {
    /// How often its unacknowledged parts go out again. A redirect goes out every time
    /// (each tick period): every lost copy would cost the player 100 ms of standing still.
    fn resend_every(&self) -> Duration {
        match self.purpose {
            TokenPurpose::Reconnect | TokenPurpose::Prepare => TOKEN_RESEND,
            TokenPurpose::Redirect => Duration::ZERO,
        }
    }

    /// Whether `part` still needs sending. A redirect is resent until the client leaves,
    /// acknowledged or not: it is the last thing this server has to say.
    fn needs(&self, part: u8) -> bool {
        self.purpose == TokenPurpose::Redirect || !self.acked[usize::from(part)]
    }

    fn on_ack(&mut self, sequence: u16) {
        for &(sent, part) in &self.in_flight {
            if sent == sequence {
                self.acked[usize::from(part)] = true;
            }
        }
    }
}

/// Counters the core keeps besides netcode's (also the game part of `/status`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CoreStats {
    /// Input frames applied.
    pub inputs_applied: u64,
    /// Input frames applied after the tick they were for.
    pub inputs_late: u64,
    /// Input frames refused because the client's buffer was full.
    pub inputs_dropped: u64,
    /// Input frames the client gave up on before they arrived.
    pub inputs_skipped: u64,
    /// Payloads that were not a valid game message.
    pub bad_messages: u64,
    /// Snapshots sent.
    pub snapshots_sent: u64,
    /// Entities in view that did not fit their client's datagram.
    pub entities_deferred: u64,
    /// Game events the steps produced.
    pub game_events: u64,
    /// Game events queued for clients to hear reliably.
    pub events_queued: u64,
    /// Game events a client did not get because it had too many unacknowledged.
    pub events_dropped: u64,
}

/// How long a player whose connection timed out keeps its place, in seconds: enough to
/// reconnect after a crash of the server or a lost network.
pub const RECONNECT_GRACE_S: u64 = 10;

/// What one step was fed, for replaying a match (see [`ServerCore::record_inputs`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TickRecord<G: Game> {
    /// The tick stepped to.
    pub tick: Tick,
    /// The players in the world before the step.
    pub players: Vec<PlayerId>,
    /// The inputs given to the step.
    pub inputs: BTreeMap<PlayerId, G::Input>,
}

/// One connected client's game-side state.
#[derive(Debug)]
struct ClientSlot<G: Game> {
    client_id: u64,
    /// `None` for a spectator.
    player: Option<PlayerId>,
    acks: AckTracker,
    /// Frames received and not yet applied, by sequence.
    pending: BTreeMap<u32, InputFrame<G::Input>>,
    /// Newest sequence applied; all older ones were applied (or skipped by the client).
    last_applied: u32,
    /// Input frames of this player the match applied, ever (told to the client).
    inputs_applied: u64,
    tokens: SlotTokens,
    /// The match's shared data, names and events, on their way reliably.
    outbox: Outbox<G>,
    /// Players whose names this client was told.
    named: BTreeSet<PlayerId>,
}

/// The tokens on their way to one client.
#[derive(Debug, Default)]
struct SlotTokens {
    /// The newest reconnect token for this client.
    reconnect: Option<OutgoingToken>,
    /// Where this client must go, once the match has moved.
    redirect: Option<OutgoingToken>,
    /// Where the match is about to move (phase one of a handoff).
    prepare: Option<OutgoingToken>,
}

impl SlotTokens {
    fn iter_mut(&mut self) -> impl Iterator<Item = &mut OutgoingToken> {
        [
            self.reconnect.as_mut(),
            self.redirect.as_mut(),
            self.prepare.as_mut(),
        ]
        .into_iter()
        .flatten()
    }
}

impl<G: Game> ClientSlot<G> {
    /// A fresh connection for `player` (`None`: a spectator) whose inputs up to
    /// `last_applied` are already in the world. Its first notice is the match's shared
    /// data.
    fn new(
        client_id: u64,
        player: Option<PlayerId>,
        (last_applied, inputs_applied): (u32, u64),
        shared: &G::Shared,
    ) -> Self {
        let mut outbox = Outbox::default();
        outbox.push_shared(shared);
        Self {
            client_id,
            player,
            acks: AckTracker::default(),
            pending: BTreeMap::new(),
            last_applied,
            inputs_applied,
            tokens: SlotTokens::default(),
            outbox,
            named: BTreeSet::new(),
        }
    }
}

/// One match of the game `G` and its connections. See the module docs for the calling
/// order.
pub struct ServerCore<G: Game> {
    config: CoreConfig,
    netcode: netcode::Server,
    world: G::State,
    /// Indexed by netcode slot.
    clients: Vec<Option<ClientSlot<G>>>,
    /// Every player in the match, by client id, connected or not.
    roster: BTreeMap<u64, RosterEntry>,
    /// Players with no connection, and the tick they lost it: removed after the grace.
    detached: BTreeMap<u64, Tick>,
    next_player_id: u32,
    /// Ids for tokens sent to clients (a newer id replaces an older token).
    next_token_id: u32,
    stats: CoreStats,
    /// Reused each tick: entities in one client's view.
    seen: Vec<Seen<G::Entity>>,
    /// Reused each tick: the inputs for the step.
    inputs: BTreeMap<PlayerId, G::Input>,
    /// Reused each tick: the step's events.
    events: Vec<G::Event>,
    /// When on (tests), what every step was fed: to replay a match and compare hashes.
    input_log: Option<Vec<TickRecord<G>>>,
    /// Each client gets a snapshot every this many ticks (1 normally). Under load the
    /// driver raises it: clients are updated less often, the simulation keeps its rate.
    snapshot_every: u32,
    /// The tick this match was restored from after its owner died (told to clients).
    restored_from_tick: Option<Tick>,
    /// Clients are being sent elsewhere (a handoff's commit, or a stop): their goodbyes
    /// do not remove their players.
    moving: bool,
    /// The process this match was handed over from: listed last in reconnect tokens (it
    /// takes the match back if we die before serving), never a stop's destination.
    fallback_peer: Option<SocketAddr>,
}

impl<G: Game> ServerCore<G> {
    /// A new match with no players.
    pub fn new(config: CoreConfig) -> Self {
        let world = G::new_state(&config.world);
        Self::with_state(
            config,
            MatchState {
                world,
                roster: Vec::new(),
                next_player_id: 1,
            },
        )
    }

    /// A match restored from a snapshot. Its players wait, detached, for their clients to
    /// reconnect; those that do not come back within the grace are removed.
    pub fn with_state(config: CoreConfig, state: MatchState<G>) -> Self {
        let transport = netcode::Server::new(config.netcode.clone());
        Self::with_transport(config, state, transport)
    }

    /// A match restored from a snapshot onto a transport that already has connections:
    /// a standby's, whose clients connected ahead of the handoff (make before break).
    /// Their `ClientConnected` events are still queued in `transport`; the first tick
    /// attaches them to their players.
    pub fn with_transport(
        config: CoreConfig,
        state: MatchState<G>,
        mut transport: netcode::Server,
    ) -> Self {
        transport.set_admitting(true);
        // The match's capacity, not the process's: a standby with more slots than the
        // match it received admits only as many players as the match was made for.
        transport.set_capacity(G::config(&state.world).max_players as usize);
        let slots = config.netcode.max_clients.max(transport.num_slots());
        let tick = G::tick(&state.world);
        let roster: BTreeMap<u64, RosterEntry> = state
            .roster
            .into_iter()
            .map(|entry| (entry.client_id, entry))
            .collect();
        Self {
            netcode: transport,
            world: state.world,
            clients: (0..slots).map(|_| None).collect(),
            detached: roster.keys().map(|&id| (id, tick)).collect(),
            roster,
            next_player_id: state.next_player_id,
            next_token_id: 0,
            stats: CoreStats::default(),
            seen: Vec::new(),
            inputs: BTreeMap::new(),
            events: Vec::new(),
            snapshot_every: 1,
            restored_from_tick: None,
            moving: false,
            fallback_peer: None,
            input_log: None,
            config,
        }
    }

    /// Marks this match as restored from a snapshot after a crash: clients are told the
    /// tick, so each can count exactly what it lost.
    pub fn mark_restored(&mut self) {
        self.restored_from_tick = Some(G::tick(&self.world));
    }

    /// The whole match as it stands, for a snapshot (connections are not part of it).
    pub fn match_state(&self) -> MatchState<G> {
        let mut roster = self.roster.clone();
        for slot in self.clients.iter().flatten() {
            if let Some(entry) = roster.get_mut(&slot.client_id) {
                entry.last_applied_input = slot.last_applied;
                entry.inputs_applied = slot.inputs_applied;
            }
        }
        MatchState {
            world: self.world.clone(),
            roster: roster.into_values().collect(),
            next_player_id: self.next_player_id,
        }
    }

    /// Takes one datagram from the socket.
    pub fn handle_datagram(&mut self, now: Duration, from: SocketAddr, datagram: &mut [u8]) {
        let Some((client, payload)) = self.netcode.handle_packet(now, from, datagram) else {
            return;
        };
        let Some(slot) = self
            .clients
            .get_mut(client.0 as usize)
            .and_then(Option::as_mut)
        else {
            return;
        };
        let (header, message) = match decode_client::<G>(payload) {
            Ok(decoded) => decoded,
            Err(error) => {
                self.stats.bad_messages += 1;
                tracing::trace!(client_id = slot.client_id, %error, "bad game message");
                return;
            }
        };
        let ClientSlot {
            acks,
            tokens,
            outbox,
            ..
        } = slot;
        let fresh = acks.on_receive(now, header, |sequence| {
            for token in tokens.iter_mut() {
                token.on_ack(sequence);
            }
            outbox.on_ack(sequence);
        });
        if !fresh {
            return;
        }
        match message {
            ClientMessage::Inputs { frames } => {
                receive_inputs(slot, &frames, &mut self.stats);
            }
        }
    }

    /// Runs one tick: connection upkeep, inputs, the simulation step, and a snapshot for
    /// every client. Returns the step's game events (also queued, reliably, for the
    /// clients that hear them).
    pub fn tick(&mut self, now: Duration) -> &[G::Event] {
        self.netcode.update(now);
        self.handle_connection_events();
        self.remove_expired_detached();
        let tick = G::tick(&self.world).next();
        self.gather_inputs(tick);
        self.events.clear();
        G::step(&mut self.world, &self.inputs, &mut self.events);
        self.stats.game_events += self.events.len() as u64;
        self.announce_events();
        // Clients are spread over the ticks of one period, so the work stays even.
        let every = u64::from(self.snapshot_every);
        for index in 0..self.clients.len() {
            if (tick.0 + index as u64).is_multiple_of(every) {
                self.send_snapshot(now, index);
            }
        }
        self.send_tokens(now, true);
        self.send_scoreboards(now, tick);
        self.send_notices(now);
        &self.events
    }

    /// Queues this tick's events for every client that hears them, with the names of the
    /// players they mention first (once per client).
    fn announce_events(&mut self) {
        if self.events.is_empty() {
            return;
        }
        let names: BTreeMap<PlayerId, &str> = self
            .roster
            .values()
            .map(|e| (e.player, e.name.as_str()))
            .collect();
        let mut mentioned = Vec::new();
        for slot in self.clients.iter_mut().flatten() {
            for event in &self.events {
                if !G::heard_by(&self.world, event, slot.player) {
                    continue;
                }
                mentioned.clear();
                G::mentions(event, &mut mentioned);
                for &player in &mentioned {
                    if let Some(name) = names.get(&player)
                        && slot.named.insert(player)
                    {
                        slot.outbox.push_name(player, name);
                    }
                }
                if slot.outbox.push_event(event.clone()) {
                    self.stats.events_queued += 1;
                } else {
                    self.stats.events_dropped += 1;
                }
            }
        }
    }

    /// Sends every client the reliable notices that are new or due again.
    fn send_notices(&mut self, now: Duration) {
        for index in 0..self.clients.len() {
            let Some(slot) = self.clients[index].as_mut() else {
                continue;
            };
            let Some(reliable) = slot.outbox.poll(now) else {
                continue;
            };
            let header = slot.acks.next_header(now);
            slot.outbox.sent(header.sequence, &reliable);
            let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
            match encode(header, &ServerMessage::<G>::Reliable(reliable), &mut out) {
                Ok(len) => {
                    let _ = self
                        .netcode
                        .send_payload(now, ClientIndex(index as u32), &out[..len]);
                }
                Err(error) => {
                    tracing::error!(%error, "notices did not fit; this is a bug in the budget");
                }
            }
        }
    }

    /// Once a second per client (spread over the ticks): the top ten and the client's line.
    fn send_scoreboards(&mut self, now: Duration, tick: Tick) {
        let hz = u64::from(G::config(&self.world).tick_hz.max(1));
        let due: Vec<usize> = (0..self.clients.len())
            .filter(|&i| self.clients[i].is_some() && (tick.0 + i as u64).is_multiple_of(hz))
            .collect();
        if due.is_empty() {
            return;
        }
        // Standings of every player, without copying names: (standing, player, client).
        let mut table: Vec<(G::Standing, PlayerId, u64)> = self
            .roster
            .values()
            .filter_map(|e| Some((G::standing(&self.world, e.player)?, e.player, e.client_id)))
            .collect();
        // The game's best first, then the older player.
        table.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let line =
            |roster: &BTreeMap<u64, RosterEntry>, t: &(G::Standing, PlayerId, u64)| ScoreEntry {
                player: t.1,
                name: roster.get(&t.2).map(|e| e.name.clone()).unwrap_or_default(),
                standing: t.0.clone(),
                you: false,
            };
        let top: Vec<(PlayerId, ScoreEntry<G>)> = table
            .iter()
            .take(10)
            .map(|t| (t.1, line(&self.roster, t)))
            .collect();
        for index in due {
            let Some(slot) = self.clients[index].as_mut() else {
                continue;
            };
            let mut entries: Vec<ScoreEntry<G>> = top
                .iter()
                .map(|(player, entry)| ScoreEntry {
                    you: Some(*player) == slot.player,
                    ..entry.clone()
                })
                .collect();
            if let Some(own) = slot.player
                && !entries.iter().any(|e| e.you)
                && let Some(t) = table.iter().find(|t| t.1 == own)
            {
                entries.push(ScoreEntry {
                    you: true,
                    ..line(&self.roster, t)
                });
            }
            let header = slot.acks.next_header(now);
            let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
            if let Ok(len) = encode(header, &ServerMessage::<G>::Scoreboard(entries), &mut out) {
                let _ = self
                    .netcode
                    .send_payload(now, ClientIndex(index as u32), &out[..len]);
            }
        }
    }

    /// Tells every client to move to `to` (the match was handed over there): each gets a
    /// token for it, resent until it leaves. The world is no longer ticked after this;
    /// call [`ServerCore::serve_redirects`] instead of `tick` until the clients are gone.
    pub fn redirect_all(&mut self, now: Duration, to: SocketAddr) {
        let own = self.config.tokens.own_address;
        let mut addresses = vec![to];
        addresses.extend(
            self.config
                .tokens
                .peers
                .iter()
                .filter(|&&p| p != to && p != own),
        );
        // Last: this server, which takes the match back if the successor dies before
        // serving (and denies connections until then).
        addresses.push(own);
        addresses.truncate(netcode::MAX_SERVERS_PER_CONNECT);
        self.redirect_to(now, &addresses);
    }

    /// A stop whose match a watching standby took over: sends every client to the
    /// standbys (`--peer`), in order; those that do not own the match deny at once.
    pub fn redirect_to_peers(&mut self, now: Duration) {
        let own = self.config.tokens.own_address;
        let mut addresses: Vec<SocketAddr> = self
            .config
            .tokens
            .peers
            .iter()
            .copied()
            .filter(|&p| p != own)
            .collect();
        addresses.truncate(netcode::MAX_SERVERS_PER_CONNECT);
        if !addresses.is_empty() {
            self.redirect_to(now, &addresses);
        }
    }

    /// Adds the address of the process this match came from to the reconnect tokens
    /// (after this server's own standbys): if this server dies before its first
    /// snapshot, the old owner takes the match back and its clients find it there.
    pub fn add_fallback_peer(&mut self, address: SocketAddr) {
        self.fallback_peer = Some(address);
    }

    /// Replaces the standbys listed in reconnect tokens after this server (`--peer`, and
    /// the free standbys the store lists): every client gets a fresh reconnect token
    /// with them over the next few ticks, so it finds whichever standby takes the match
    /// over if this server dies.
    pub fn set_peers(&mut self, peers: Vec<SocketAddr>) {
        if peers == self.config.tokens.peers {
            return;
        }
        self.config.tokens.peers = peers;
        for slot in self.clients.iter_mut().flatten() {
            slot.tokens.reconnect = None;
        }
    }

    /// Whether this server knows standbys (`--peer`) to send its clients to.
    pub fn has_peers(&self) -> bool {
        !self.config.tokens.peers.is_empty()
    }

    /// The match came back (its successor died before serving): stop the redirects,
    /// the clients still here play on.
    pub fn cancel_redirects(&mut self) {
        self.moving = false;
        for slot in self.clients.iter_mut().flatten() {
            slot.tokens.redirect = None;
        }
    }

    fn redirect_to(&mut self, now: Duration, addresses: &[SocketAddr]) {
        self.moving = true;
        for index in 0..self.clients.len() {
            let Some(slot) = &self.clients[index] else {
                continue;
            };
            let client_id = slot.client_id;
            if let Some(token) = self.mint(now, client_id, addresses, TokenPurpose::Redirect)
                && let Some(slot) = self.clients[index].as_mut()
            {
                slot.tokens.redirect = Some(token);
            }
        }
        tracing::info!(
            match_id = %self.config.match_id,
            tick = G::tick(&self.world).0,
            to = ?addresses,
            players = self.num_players(),
            "redirecting every client"
        );
    }

    /// Phase one of a handoff: tells every client that the match is about to move to
    /// `to`, with a connect token for it. Clients connect there ahead of time and keep
    /// playing here; nothing else changes until [`ServerCore::redirect_all`] (the
    /// commit) or [`ServerCore::cancel_prepare`] (an abort). Returns how many clients
    /// were told.
    pub fn prepare_all(&mut self, now: Duration, to: SocketAddr) -> usize {
        let addresses = [to];
        let mut told = 0;
        for index in 0..self.clients.len() {
            let Some(slot) = &self.clients[index] else {
                continue;
            };
            let client_id = slot.client_id;
            if let Some(token) = self.mint(now, client_id, &addresses, TokenPurpose::Prepare)
                && let Some(slot) = self.clients[index].as_mut()
            {
                slot.tokens.prepare = Some(token);
                told += 1;
            }
        }
        tracing::info!(
            match_id = %self.config.match_id,
            tick = G::tick(&self.world).0,
            %to,
            players = told,
            "clients told to connect ahead to the standby"
        );
        told
    }

    /// An aborted handoff: stops sending prepare tokens. Clients drop their connection
    /// to the standby when it denies or times them out; their play here is unchanged.
    pub fn cancel_prepare(&mut self) {
        for slot in self.clients.iter_mut().flatten() {
            slot.tokens.prepare = None;
        }
    }

    /// Whether new connections are admitted (an owner: yes; retired or fenced: denied,
    /// so clients move to the next address of their token at once).
    pub fn set_admitting(&mut self, admitting: bool) {
        self.netcode.set_admitting(admitting);
    }

    /// After [`ServerCore::redirect_all`]: keeps connections alive and resends redirects.
    pub fn serve_redirects(&mut self, now: Duration) {
        self.netcode.update(now);
        self.handle_connection_events();
        self.send_tokens(now, false);
    }

    /// Mints reconnect tokens when due and sends unacknowledged token parts.
    fn send_tokens(&mut self, now: Duration, refresh_reconnect: bool) {
        let refresh_after = Duration::from_secs(self.config.tokens.expire_s / 2);
        let own = self.reconnect_addresses();
        // Minting is the costly part (a sealed token, two datagrams): spread it, so a
        // tick that gains many clients at once (a handoff's first) stays short.
        let mut mints_left = MAX_TOKEN_MINTS_PER_TICK;
        for index in 0..self.clients.len() {
            let Some(slot) = &self.clients[index] else {
                continue;
            };
            let stale = slot
                .tokens
                .reconnect
                .as_ref()
                .is_none_or(|t| now.saturating_sub(t.minted_at) >= refresh_after);
            if refresh_reconnect && stale && slot.tokens.redirect.is_none() && mints_left > 0 {
                mints_left -= 1;
                let client_id = slot.client_id;
                let token = self.mint(now, client_id, &own, TokenPurpose::Reconnect);
                if let Some(slot) = self.clients[index].as_mut() {
                    slot.tokens.reconnect = token;
                }
            }
            self.send_token_parts(now, index);
        }
    }

    /// This server first, then its standbys.
    fn reconnect_addresses(&self) -> Vec<SocketAddr> {
        let own = self.config.tokens.own_address;
        let mut addresses = vec![own];
        addresses.extend(self.config.tokens.peers.iter().filter(|&&p| p != own));
        // The old owner last: it takes the match back if this server dies before serving.
        if let Some(old) = self.fallback_peer
            && !addresses.contains(&old)
        {
            addresses.push(old);
        }
        addresses.truncate(netcode::MAX_SERVERS_PER_CONNECT);
        addresses
    }

    fn mint(
        &mut self,
        now: Duration,
        client_id: u64,
        addresses: &[SocketAddr],
        purpose: TokenPurpose,
    ) -> Option<OutgoingToken> {
        let name = self
            .roster
            .get(&client_id)
            .map(|e| e.name.clone())
            .unwrap_or_default();
        let minted = mint_token(
            &TokenRequest {
                protocol_id: self.config.netcode.protocol_id,
                server_addresses: addresses.to_vec(),
                client_id,
                name,
                now_unix_s: now.as_secs(),
                expire_s: self.config.tokens.expire_s,
                timeout_s: self.config.tokens.timeout_s,
                // Players are in the roster; spectators are not.
                spectator: !self.roster.contains_key(&client_id),
            },
            &self.config.netcode.private_key,
        )
        .and_then(|token| token.write());
        match minted {
            Ok(bytes) => {
                self.next_token_id += 1;
                Some(OutgoingToken {
                    purpose,
                    id: self.next_token_id,
                    bytes: bytes.to_vec(),
                    minted_at: now,
                    acked: [false; TOKEN_PARTS as usize],
                    in_flight: Vec::new(),
                    last_sent: None,
                })
            }
            Err(error) => {
                tracing::error!(%error, client_id, "could not mint a token");
                None
            }
        }
    }

    fn send_token_parts(&mut self, now: Duration, index: usize) {
        let Some(slot) = self.clients[index].as_mut() else {
            return;
        };
        let mut datagrams = Vec::new();
        let ClientSlot { acks, tokens, .. } = slot;
        for token in tokens.iter_mut() {
            let due = token
                .last_sent
                .is_none_or(|at| now.saturating_sub(at) >= token.resend_every());
            let parts: Vec<u8> = (0..TOKEN_PARTS).filter(|&p| token.needs(p)).collect();
            if !due || parts.is_empty() {
                continue;
            }
            token.last_sent = Some(now);
            for part in parts {
                let start = usize::from(part) * TOKEN_PART_BYTES;
                let message = ServerMessage::<G>::TokenPart(TokenPart {
                    purpose: token.purpose,
                    token_id: token.id,
                    part,
                    bytes: token.bytes[start..start + TOKEN_PART_BYTES].to_vec(),
                });
                let header = acks.next_header(now);
                if token.in_flight.len() >= 16 {
                    token.in_flight.remove(0);
                }
                token.in_flight.push((header.sequence, part));
                let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
                if let Ok(len) = encode(header, &message, &mut out) {
                    datagrams.push(out[..len].to_vec());
                }
            }
        }
        for datagram in datagrams {
            let _ = self
                .netcode
                .send_payload(now, ClientIndex(index as u32), &datagram);
        }
    }

    /// Starts keeping a record of every step's inputs (tests; it grows without bound).
    pub fn record_inputs(&mut self) {
        self.input_log = Some(Vec::new());
    }

    /// The record kept since [`ServerCore::record_inputs`] (or the last take).
    pub fn take_input_log(&mut self) -> Vec<TickRecord<G>> {
        self.input_log
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// Sends each client a snapshot every `ticks` ticks (clamped to 1..=MAX_SNAPSHOT_EVERY).
    pub fn set_snapshot_every(&mut self, ticks: u32) {
        self.snapshot_every = ticks.clamp(1, MAX_SNAPSHOT_EVERY);
    }

    /// How many ticks apart each client's snapshots are.
    pub fn snapshot_every(&self) -> u32 {
        self.snapshot_every
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.netcode.poll_transmit()
    }

    /// Disconnects everyone (10 disconnect packets each); for shutdown.
    pub fn disconnect_all(&mut self, now: Duration) {
        self.netcode.disconnect_all(now);
        self.handle_connection_events();
    }

    /// The match's id.
    pub fn match_id(&self) -> &str {
        &self.config.match_id
    }

    /// The world (read-only: the core is its one owner).
    pub fn world(&self) -> &G::State {
        &self.world
    }

    /// Players the match admits (its own capacity, which a process with more slots
    /// keeps to).
    pub fn max_players(&self) -> usize {
        self.netcode.capacity()
    }

    /// Connected players.
    pub fn num_players(&self) -> usize {
        self.netcode.num_connected()
    }

    /// Game-side counters.
    pub fn stats(&self) -> &CoreStats {
        &self.stats
    }

    /// Transport counters (drops by reason, traffic).
    pub fn netcode_stats(&self) -> &netcode::ServerStats {
        self.netcode.stats()
    }

    fn handle_connection_events(&mut self) {
        while let Some(event) = self.netcode.poll_event() {
            match event {
                ServerEvent::ClientConnected {
                    client,
                    client_id,
                    address,
                    user_data,
                } => {
                    let name = name_from_user_data(&user_data);
                    if is_spectator(&user_data) {
                        self.attach_spectator(client, client_id, address, &name);
                    } else {
                        self.attach(client, client_id, address, &name);
                    }
                }
                ServerEvent::ClientDisconnected {
                    client,
                    client_id,
                    reason,
                } => self.detach(client, client_id, reason),
            }
        }
    }

    /// Gives a newly connected client its player: the one it had (after a reconnect, a
    /// handoff or a restore), or a new one.
    fn attach(&mut self, client: ClientIndex, client_id: u64, address: SocketAddr, name: &str) {
        let tick = G::tick(&self.world).0;
        let returning = self.roster.contains_key(&client_id);
        let entry = self.roster.entry(client_id).or_insert_with(|| {
            let player = PlayerId(self.next_player_id);
            self.next_player_id += 1;
            RosterEntry {
                client_id,
                player,
                name: name.to_owned(),
                last_applied_input: 0,
                inputs_applied: 0,
            }
        });
        let (player, last_applied, applied) =
            (entry.player, entry.last_applied_input, entry.inputs_applied);
        self.detached.remove(&client_id);
        G::join(&mut self.world, player);
        tracing::info!(
            match_id = %self.config.match_id,
            tick,
            client_id,
            player = player.0,
            %address,
            name,
            returning,
            "player joined"
        );
        if let Some(slot) = self.clients.get_mut(client.0 as usize) {
            let shared = G::shared(&self.world);
            *slot = Some(ClientSlot::new(
                client_id,
                Some(player),
                (last_applied, applied),
                &shared,
            ));
        }
    }

    /// A spectator: a connection with no player, seeing the whole arena.
    fn attach_spectator(
        &mut self,
        client: ClientIndex,
        client_id: u64,
        address: SocketAddr,
        name: &str,
    ) {
        tracing::info!(
            match_id = %self.config.match_id,
            tick = G::tick(&self.world).0,
            client_id,
            %address,
            name,
            "spectator joined"
        );
        if let Some(slot) = self.clients.get_mut(client.0 as usize) {
            let shared = G::shared(&self.world);
            *slot = Some(ClientSlot::new(client_id, None, (0, 0), &shared));
        }
    }

    /// A client left: a clean goodbye removes its player; a timeout keeps the player for
    /// the grace, so the client can come back.
    fn detach(&mut self, client: ClientIndex, client_id: u64, reason: DisconnectReason) {
        let Some(slot) = self
            .clients
            .get_mut(client.0 as usize)
            .and_then(Option::take)
        else {
            return;
        };
        let tick = G::tick(&self.world);
        let Some(player) = slot.player else {
            tracing::info!(match_id = %self.config.match_id, tick = tick.0, client_id, ?reason, "spectator left");
            return;
        };
        if let Some(entry) = self.roster.get_mut(&client_id) {
            entry.last_applied_input = slot.last_applied;
            entry.inputs_applied = slot.inputs_applied;
        }
        // A goodbye removes the player, unless the match is moving: then the client is
        // leaving for the successor, and the player waits here in case the match comes back.
        if reason == DisconnectReason::ClientDisconnected && !self.moving {
            G::leave(&mut self.world, player);
            self.roster.remove(&client_id);
        } else {
            self.detached.insert(client_id, tick);
        }
        tracing::info!(
            match_id = %self.config.match_id,
            tick = tick.0,
            client_id,
            player = player.0,
            ?reason,
            "player left"
        );
    }

    fn remove_expired_detached(&mut self) {
        let grace = RECONNECT_GRACE_S * u64::from(G::config(&self.world).tick_hz);
        let now = G::tick(&self.world).0;
        let expired: Vec<u64> = self
            .detached
            .iter()
            .filter(|&(_, &since)| now.saturating_sub(since.0) >= grace)
            .map(|(&id, _)| id)
            .collect();
        for client_id in expired {
            self.detached.remove(&client_id);
            if let Some(entry) = self.roster.remove(&client_id) {
                G::leave(&mut self.world, entry.player);
                tracing::info!(
                    match_id = %self.config.match_id,
                    tick = now,
                    client_id,
                    player = entry.player.0,
                    "player did not come back; removed"
                );
            }
        }
    }

    fn gather_inputs(&mut self, tick: Tick) {
        self.inputs.clear();
        for slot in self.clients.iter_mut().flatten() {
            if let Some(input) = take_due_input(slot, tick, &mut self.stats)
                && let Some(player) = slot.player
            {
                self.inputs.insert(player, input);
            }
        }
        // A player waiting for its client stands still rather than repeating its last move.
        for client_id in self.detached.keys() {
            if let Some(entry) = self.roster.get(client_id) {
                self.inputs.insert(entry.player, G::Input::default());
            }
        }
        if let Some(log) = &mut self.input_log {
            log.push(TickRecord {
                tick,
                players: G::players(&self.world),
                inputs: self.inputs.clone(),
            });
        }
    }

    fn send_snapshot(&mut self, now: Duration, index: usize) {
        let Some(slot) = self.clients[index].as_mut() else {
            return;
        };
        let viewer = Viewer {
            player: slot.player,
            radius: self.config.view_radius_m,
        };
        self.seen.clear();
        G::view(&self.world, &viewer, &mut self.seen);
        // Most important first; the id breaks ties so the order is deterministic.
        self.seen
            .sort_unstable_by(|a, b| a.priority.total_cmp(&b.priority).then(a.id.cmp(&b.id)));
        let (own, you) = match slot.player {
            Some(id) => (
                G::body_of(&self.world, id),
                G::status(&self.world, id).unwrap_or_default(),
            ),
            None => (None, G::Status::default()),
        };
        let mut snapshot = Snapshot::<G> {
            tick: G::tick(&self.world),
            baseline_tick: None,
            config: *G::config(&self.world),
            your_entity: own,
            last_applied_input: slot.last_applied,
            inputs_applied: slot.inputs_applied,
            restored_from_tick: self.restored_from_tick,
            you,
            entities: Vec::new(),
            deferred: u16::MAX,
        };
        // Fixed part at its largest (deferred at max, a 3-byte vector length), then as
        // many entities as fit.
        let fixed =
            encoded_len(&ServerMessage::Snapshot(snapshot.clone())).unwrap_or(MAX_BODY_BYTES) + 2;
        let mut used = fixed;
        for seen in &self.seen {
            let len = net_id_len(seen.id) + G::entity_len(&seen.state);
            if used + len > MAX_BODY_BYTES {
                break;
            }
            used += len;
            snapshot.entities.push(Replicated {
                id: seen.id,
                state: seen.state.clone(),
            });
        }
        let deferred = self.seen.len() - snapshot.entities.len();
        snapshot.deferred = deferred.min(usize::from(u16::MAX)) as u16;
        self.stats.entities_deferred += deferred as u64;

        let header = slot.acks.next_header(now);
        let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
        match encode(header, &ServerMessage::Snapshot(snapshot), &mut out) {
            Ok(len) => {
                if self
                    .netcode
                    .send_payload(now, ClientIndex(index as u32), &out[..len])
                    .is_ok()
                {
                    self.stats.snapshots_sent += 1;
                }
            }
            Err(error) => {
                tracing::error!(%error, "snapshot did not fit; this is a bug in the budget");
            }
        }
    }
}

/// Files received frames; notices when the client gave up on older ones.
fn receive_inputs<G: Game>(
    slot: &mut ClientSlot<G>,
    frames: &[InputFrame<G::Input>],
    stats: &mut CoreStats,
) {
    // The client sends its oldest unapplied frames first. If even the oldest is past the
    // next one we expect, the client dropped the ones between from its bounded buffer.
    if let Some(first) = frames.first()
        && first.sequence > slot.last_applied.saturating_add(1)
        && slot.pending.is_empty()
    {
        stats.inputs_skipped += u64::from(first.sequence - slot.last_applied - 1);
        slot.last_applied = first.sequence - 1;
    }
    for frame in frames {
        if frame.sequence <= slot.last_applied || slot.pending.contains_key(&frame.sequence) {
            continue;
        }
        if slot.pending.len() >= MAX_PENDING_INPUTS {
            stats.inputs_dropped += 1;
            continue;
        }
        slot.pending.insert(frame.sequence, *frame);
    }
}

/// The input to apply for `tick`: the next frame in sequence if it is due, merged (by
/// [`Game::merge_late`]) with any further frames that are already late. `None`: the
/// player sent nothing for this tick.
fn take_due_input<G: Game>(
    slot: &mut ClientSlot<G>,
    tick: Tick,
    stats: &mut CoreStats,
) -> Option<G::Input> {
    let mut merged: Option<G::Input> = None;
    while let Some((&sequence, frame)) = slot.pending.first_key_value() {
        if sequence != slot.last_applied.wrapping_add(1) {
            // A gap: the missing frame is on its way (the client resends until applied).
            break;
        }
        let due = frame.tick <= tick || slot.pending.len() > MAX_INPUT_LEAD_FRAMES;
        // After the first, only frames already behind schedule are merged in.
        let late = frame.tick < tick;
        if !due || (merged.is_some() && !late) {
            break;
        }
        let frame = *frame;
        slot.pending.remove(&sequence);
        slot.last_applied = sequence;
        slot.inputs_applied += 1;
        stats.inputs_applied += 1;
        if late {
            stats.inputs_late += 1;
        }
        merged = Some(match merged {
            Some(earlier) => G::merge_late(earlier, frame.input),
            None => frame.input,
        });
    }
    merged
}
