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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::game::{Game, InputFrame, MatchConfig, PlayerId, Seen, Tick, Viewer};
use arena_shared::identity::{TokenRequest, is_spectator, mint_token, name_from_user_data};
use arena_shared::netcode::{self, ClientIndex, DisconnectReason, ServerEvent, Transmit};
use arena_shared::protocol::messages::{TOKEN_PART_BYTES, TOKEN_PARTS, decode_inputs, encoded_len};
use arena_shared::protocol::reliable::Outbox;
use arena_shared::protocol::{
    AckTracker, EncodeError, Reliable, ScoreEntry, ServerMessage, SnapshotHead, TokenPart,
    TokenPurpose, encode,
};

use crate::fanout::fan_out;
use crate::replication::{MIN_SNAPSHOT_BYTES, Replicator, Scratch, Written};
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
    /// Each client's snapshot budget, bytes a second (`--client-bytes-per-s`).
    pub client_bytes_per_s: u32,
    /// Threads that build the clients' snapshots each tick (`--workers`; at least 1).
    pub workers: usize,
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
    /// Snapshots sent whole: the client had acknowledged no baseline young enough.
    pub snapshots_full: u64,
    /// Snapshots a client was due but not sent: its byte budget was spent.
    pub snapshots_throttled: u64,
    /// Bytes of the snapshots sent (netcode payloads, less the notices riding in them).
    /// In `/status` as `snapshot_bytes_sent`: `snapshot_bytes` there is the stored
    /// snapshot's size.
    #[serde(rename = "snapshot_bytes_sent")]
    pub snapshot_bytes: u64,
    /// Entities in view that snapshots brought up to date (sent, or unchanged since the
    /// baseline), summed over clients.
    pub entity_updates: u64,
    /// Entities in view that a snapshot did not bring up to date: the byte budget left
    /// them for a later one (they go first then).
    pub entities_deferred: u64,
    /// Game events the steps produced.
    pub game_events: u64,
    /// Game events queued for clients to hear reliably.
    pub events_queued: u64,
    /// Game events a client did not get because it had too many unacknowledged.
    pub events_dropped: u64,
    /// Datagrams of reliable notices that rode in a snapshot's datagram.
    pub notices_riding: u64,
    /// Datagrams of reliable notices sent on their own (too big to ride, or no snapshot
    /// went that tick).
    pub notices_alone: u64,
}

/// One connected client as `GET /clients` shows it ([`ServerCore::report_clients`]).
///
/// Gathered by the loop when it publishes its status (every half second), never per tick.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ClientInfo {
    /// The name in its connect token.
    pub name: String,
    /// The client id in its connect token.
    pub client_id: u64,
    /// Where its packets come from (`ip:port`).
    pub address: String,
    /// Its player in the match; `null` for a spectator.
    pub player: Option<u32>,
    /// Whether it watches without a player.
    pub spectator: bool,
    /// Smoothed round-trip time, ms (`null` until the first acknowledgement): from the
    /// time the server queued one of its packets (a snapshot, mostly) to the time the
    /// client's packet acknowledging it was read, each sample folded in with weight 1/10
    /// (TCP's SRTT uses 1/8). It includes what the client adds before it answers (up to
    /// one of its send intervals) and the server's own latency in reading the socket, so
    /// it is what an input's round trip costs, a little more than the network's.
    pub rtt_ms: Option<f64>,
    /// Share (0 to 1) of the server's packets to this client (snapshots, notices,
    /// scoreboards, token parts) that were never acknowledged, smoothed with weight
    /// 1/20 per packet. A packet is judged when it leaves the 256-packet ack window
    /// (about 4 s at 60 snapshots a second), so a change shows with that delay; a packet
    /// whose acknowledgement was lost on the way back counts as lost too.
    pub loss: f64,
    /// The server's packets to it acknowledged, ever.
    pub packets_acked: u64,
    /// The server's packets to it judged lost (left the window unacknowledged), ever.
    pub packets_lost: u64,
    /// Seconds since its last game packet arrived (netcode keep-alives, which a client
    /// sends only when it has nothing else to send, are not seen here).
    pub idle_s: f64,
    /// Seconds since it connected to this process.
    pub connected_s: f64,
    /// Bytes of its packets that reached the game (whole netcode packets, sealed).
    pub bytes_in: u64,
    /// Bytes of the packets the game sent it (whole netcode packets, sealed: snapshots,
    /// notices, scoreboards, token parts; not netcode's own keep-alives and disconnects).
    pub bytes_out: u64,
    /// Snapshots sent to it, ever.
    pub snapshots_sent: u64,
    /// Snapshots sent to it per second since the previous report (half a second before,
    /// or since it connected).
    pub snapshot_rate: f64,
    /// Its input frames the match applied, ever (carried across handoffs).
    pub inputs_applied: u64,
    /// Its input frames received and waiting for their tick.
    pub inputs_pending: usize,
    /// Share (0 to 1) of its input frames received here that arrived after the tick they
    /// were for had run (ever; `null` before the first). The client adapts its lead to keep
    /// this under 1%.
    pub inputs_late_ratio: Option<f64>,
    /// The least margin, in ticks, by which its input frames received since the previous
    /// report arrived before their tick (negative: late; `null` if none arrived): the lead
    /// the client keeps, as the server sees it.
    pub input_margin_ticks: Option<i8>,
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
    /// Frames received and not yet applied, in sequence order (at most
    /// [`MAX_PENDING_INPUTS`]; kept, with its capacity, for the connection's life).
    pending: VecDeque<InputFrame<G::Input>>,
    /// Newest sequence applied; all older ones were applied (or skipped by the client).
    last_applied: u32,
    /// Input frames of this player the match applied, ever (told to the client).
    inputs_applied: u64,
    tokens: SlotTokens,
    /// The match's shared data, names and events, on their way reliably.
    outbox: Outbox<G>,
    /// What this client was sent and acknowledged, its priorities and its byte budget.
    replicator: Replicator<G>,
    /// The least margin, in ticks, of the input frames first received since the last
    /// snapshot (told to the client, so it can adapt its lead).
    input_margin: Option<i8>,
    /// Input frames first received since the last snapshot after their tick had run.
    inputs_arrived_late: u8,
    /// Notices polled this tick to ride in its snapshot's datagram
    /// ([`ServerMessage::NoticesAndSnapshot`]); sent on their own if no snapshot goes.
    riding: Option<ServerMessage<G>>,
    /// This tick's snapshot, built (by a worker) and not sent yet: its outcome, and the
    /// datagram (capacity kept for the connection's life).
    built: Option<Result<Option<Written>, EncodeError>>,
    payload: Vec<u8>,
    /// Players whose names this client was told.
    named: BTreeSet<PlayerId>,
    /// The name in its connect token (for `/clients`; set when it connects).
    name: String,
    /// When it connected, and when its last game packet arrived (driver time).
    connected_at: Duration,
    last_packet_at: Duration,
    /// Netcode packets from it that reached the game, in bytes as they arrived
    /// (sealed); and every packet the game sent it, sealed (see [`ClientInfo`]).
    bytes_in: u64,
    bytes_out: u64,
    /// Snapshots sent to it.
    snapshots_sent: u64,
    /// When [`ServerCore::report_clients`] last looked, and `snapshots_sent` then: the
    /// start of the window its snapshot rate is measured over.
    reported: Option<(Duration, u64)>,
    /// Input frames first received here, and those of them that arrived after their tick
    /// had run, ever (for `/clients`).
    inputs_received: u64,
    inputs_received_late: u64,
    /// The least margin of the frames first received since the last report.
    margin_since_report: Option<i8>,
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
    /// `last_applied` are already in the world. Its first notices are the match's settings
    /// and its shared data.
    fn new(
        client_id: u64,
        player: Option<PlayerId>,
        (last_applied, inputs_applied): (u32, u64),
        (config, shared): (&MatchConfig, &G::Shared),
        bytes_per_s: u32,
        view_radius_m: f32,
    ) -> Self {
        let mut outbox = Outbox::default();
        outbox.push_config(*config, view_radius_m);
        outbox.push_shared(shared);
        Self {
            client_id,
            player,
            acks: AckTracker::default(),
            pending: VecDeque::with_capacity(MAX_PENDING_INPUTS),
            last_applied,
            inputs_applied,
            tokens: SlotTokens::default(),
            outbox,
            replicator: Replicator::new(bytes_per_s, config.tick_hz),
            input_margin: None,
            inputs_arrived_late: 0,
            riding: None,
            built: None,
            payload: Vec::with_capacity(netcode::MAX_PAYLOAD_BYTES),
            named: BTreeSet::new(),
            name: String::new(),
            connected_at: Duration::ZERO,
            last_packet_at: Duration::ZERO,
            bytes_in: 0,
            bytes_out: 0,
            snapshots_sent: 0,
            reported: None,
            inputs_received: 0,
            inputs_received_late: 0,
            margin_since_report: None,
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
    /// What each snapshot-building thread reuses (one per `--workers`).
    workers: Vec<Worker<G::Entity>>,
    /// Reused per datagram: the input frames it carried.
    frames: Vec<InputFrame<G::Input>>,
    /// Reused each tick: the inputs for the step, before they go into `inputs`.
    gathered: Vec<(PlayerId, G::Input)>,
    /// Reused each tick: clients due a scoreboard, and every player's standing.
    score_due: Vec<usize>,
    score_table: Vec<(G::Standing, PlayerId, u64)>,
    /// Reused: the scoreboard a client is sent (its names' buffers too).
    scoreboard: Vec<ScoreEntry<G>>,
    /// Reused each tick: one datagram's payload.
    out: Box<[u8; netcode::MAX_PAYLOAD_BYTES]>,
    /// The longest an entity in view waited, over this tick's snapshots, in ticks.
    wait_ticks_max: u32,
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
            workers: (0..config.workers.max(1))
                .map(|_| Worker::default())
                .collect(),
            frames: Vec::new(),
            gathered: Vec::new(),
            score_due: Vec::new(),
            score_table: Vec::new(),
            scoreboard: Vec::new(),
            out: Box::new([0; netcode::MAX_PAYLOAD_BYTES]),
            wait_ticks_max: 0,
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
        let sealed_len = datagram.len() as u64;
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
        slot.bytes_in += sealed_len;
        slot.last_packet_at = now;
        let header = match decode_inputs::<G>(payload, &mut self.frames) {
            Ok(header) => header,
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
            replicator,
            ..
        } = slot;
        let fresh = acks.on_receive(now, header, |sequence| {
            for token in tokens.iter_mut() {
                token.on_ack(sequence);
            }
            outbox.on_ack(sequence);
            replicator.on_ack(sequence);
        });
        if !fresh {
            return;
        }
        let next_tick = G::tick(&self.world).next();
        receive_inputs(slot, &self.frames, next_tick, &mut self.stats);
    }

    /// Runs one tick: connection upkeep, inputs, the simulation step, and a snapshot for
    /// every client. Returns the step's game events (also queued, reliably, for the
    /// clients that hear them).
    pub fn tick(&mut self, now: Duration) -> &[G::Event] {
        self.netcode.update(now);
        self.handle_connection_events(now);
        self.remove_expired_detached();
        let tick = G::tick(&self.world).next();
        self.gather_inputs(tick);
        self.events.clear();
        G::step(&mut self.world, &self.inputs, &mut self.events);
        self.stats.game_events += self.events.len() as u64;
        self.announce_events();
        // Clients are spread over the ticks of one period, so the work stays even.
        let every = u64::from(self.snapshot_every);
        // Notices first: a new client's first is the match's settings, which it needs to
        // read its first snapshot.
        self.send_notices(now, tick, every);
        self.wait_ticks_max = 0;
        for slot in self.clients.iter_mut().flatten() {
            slot.replicator.refill();
        }
        // Built while the world is read-only, on `--workers` threads; then sealed and
        // sent here, in client order.
        let (world, radius, restored) = (
            &self.world,
            self.config.view_radius_m,
            self.restored_from_tick,
        );
        fan_out(
            &mut self.clients,
            &mut self.workers,
            |index, slot, worker| {
                if let Some(slot) = slot
                    && (tick.0 + index as u64).is_multiple_of(every)
                {
                    build_snapshot(world, radius, restored, slot, worker);
                }
            },
        );
        for index in 0..self.clients.len() {
            self.send_snapshot(now, index);
            // Notices whose snapshot did not go (throttled) go on their own.
            if let Some(slot) = self.clients[index].as_mut()
                && let Some(ServerMessage::NoticesAndSnapshot(reliable)) = slot.riding.take()
            {
                send_notices_alone(&mut self.netcode, now, index, slot, reliable);
                self.stats.notices_alone += 1;
            }
        }
        self.send_tokens(now, true);
        self.send_scoreboards(now, tick);
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

    /// Sends every client the reliable notices that are new or due again: in the
    /// datagram of the snapshot it is due this tick (`tick`, one in `every` per client)
    /// when they are small, else on their own.
    fn send_notices(&mut self, now: Duration, tick: Tick, every: u64) {
        for index in 0..self.clients.len() {
            let Some(slot) = self.clients[index].as_mut() else {
                continue;
            };
            let Some(reliable) = slot.outbox.poll(now) else {
                continue;
            };
            let snapshot_due = (tick.0 + index as u64).is_multiple_of(every);
            // Small, and leaving the snapshot the room it may start with (else it would not
            // fit its budget at all).
            let rides = encoded_len(&reliable).is_some_and(|len| {
                len <= MAX_RIDING_NOTICE_BYTES && len + MIN_SNAPSHOT_BYTES <= slot.replicator.room()
            });
            if snapshot_due && rides {
                slot.riding = Some(ServerMessage::NoticesAndSnapshot(reliable));
            } else {
                send_notices_alone(&mut self.netcode, now, index, slot, reliable);
                self.stats.notices_alone += 1;
            }
        }
    }

    /// Once a second per client (spread over the ticks): the top ten and the client's line.
    fn send_scoreboards(&mut self, now: Duration, tick: Tick) {
        let hz = u64::from(G::config(&self.world).tick_hz.max(1));
        self.score_due.clear();
        self.score_due.extend(
            (0..self.clients.len())
                .filter(|&i| self.clients[i].is_some() && (tick.0 + i as u64).is_multiple_of(hz)),
        );
        if self.score_due.is_empty() {
            return;
        }
        // Standings of every player, without copying names: (standing, player, client).
        self.score_table.clear();
        let world = &self.world;
        self.score_table.extend(
            self.roster
                .values()
                .filter_map(|e| Some((G::standing(world, e.player)?, e.player, e.client_id))),
        );
        // The game's best first, then the older player.
        self.score_table
            .sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let top = self.score_table.len().min(10);
        // The lines are written over the last scoreboard's (their names' buffers reused),
        // then sent to each due client with its own line marked (or appended).
        let mut entries = std::mem::take(&mut self.scoreboard);
        entries.truncate(top + 1);
        for (i, t) in self.score_table[..top].iter().enumerate() {
            set_line(&mut entries, i, &self.roster, t);
        }
        for &index in &self.score_due {
            let Some(slot) = self.clients[index].as_mut() else {
                continue;
            };
            let mut len = top;
            let own = slot
                .player
                .and_then(|own| self.score_table.iter().position(|t| t.1 == own));
            for (i, entry) in entries[..top].iter_mut().enumerate() {
                entry.you = Some(i) == own;
            }
            if let Some(at) = own.filter(|&at| at >= top) {
                set_line(&mut entries, top, &self.roster, &self.score_table[at]);
                entries[top].you = true;
                len += 1;
            }
            // At most one line beyond `len` (the own line's place), kept aside.
            let spare = if entries.len() > len {
                entries.pop()
            } else {
                None
            };
            let header = slot.acks.next_header(now);
            let message = ServerMessage::<G>::Scoreboard(entries);
            if let Ok(bytes) = encode(header, &message, &mut self.out) {
                let _ = send_counted(
                    &mut self.netcode,
                    now,
                    index,
                    &self.out[..bytes],
                    &mut slot.bytes_out,
                );
            }
            let ServerMessage::Scoreboard(back) = message else {
                unreachable!("built as a scoreboard above")
            };
            entries = back;
            entries.extend(spare);
        }
        self.scoreboard = entries;
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

    /// Whether new connections are admitted (an owner: yes; draining, retired or fenced:
    /// denied, so clients move to the next address of their token at once). A valid
    /// request that is refused gets netcode's connection-denied packet and is counted
    /// as `not_admitting`; connected clients are not touched.
    pub fn set_admitting(&mut self, admitting: bool) {
        self.netcode.set_admitting(admitting);
    }

    /// Whether new connections are admitted.
    pub fn is_admitting(&self) -> bool {
        self.netcode.is_admitting()
    }

    /// After [`ServerCore::redirect_all`]: keeps connections alive and resends redirects.
    pub fn serve_redirects(&mut self, now: Duration) {
        self.netcode.update(now);
        self.handle_connection_events(now);
        self.send_tokens(now, false);
    }

    /// Mints reconnect tokens when due and sends unacknowledged token parts.
    fn send_tokens(&mut self, now: Duration, refresh_reconnect: bool) {
        let refresh_after = Duration::from_secs(self.config.tokens.expire_s / 2);
        // Made only on a tick that mints.
        let mut own: Option<Vec<SocketAddr>> = None;
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
                let own = own.get_or_insert_with(|| self.reconnect_addresses());
                let token = self.mint(now, client_id, own, TokenPurpose::Reconnect);
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
        let ClientSlot {
            acks,
            tokens,
            bytes_out,
            ..
        } = slot;
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
            let _ = send_counted(&mut self.netcode, now, index, &datagram, bytes_out);
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

    /// Takes back a sent datagram's buffer for reuse ([`netcode::Server::recycle`]).
    pub fn recycle(&mut self, contents: Vec<u8>) {
        self.netcode.recycle(contents);
    }

    /// Disconnects everyone (10 disconnect packets each); for shutdown.
    pub fn disconnect_all(&mut self, now: Duration) {
        self.netcode.disconnect_all(now);
        self.handle_connection_events(now);
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

    /// Every connected client, in slot order, as of `now`. Each report starts the
    /// window of the next one's `snapshot_rate`: call it from one place, at a steady
    /// pace (the driver does when it publishes its status). Allocates the list: not for
    /// the per-tick path.
    pub fn report_clients(&mut self, now: Duration) -> Vec<ClientInfo> {
        let mut report = Vec::with_capacity(self.netcode.num_connected());
        for (index, slot) in self.clients.iter_mut().enumerate() {
            let Some(slot) = slot else {
                continue;
            };
            let (since, sent_then) = slot.reported.unwrap_or((slot.connected_at, 0));
            let window_s = now.saturating_sub(since).as_secs_f64();
            let sent = slot.snapshots_sent.saturating_sub(sent_then);
            slot.reported = Some((now, slot.snapshots_sent));
            let (packets_acked, packets_lost) = slot.acks.totals();
            report.push(ClientInfo {
                name: slot.name.clone(),
                client_id: slot.client_id,
                address: self
                    .netcode
                    .client_address(ClientIndex(index as u32))
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                player: slot.player.map(|p| p.0),
                spectator: slot.player.is_none(),
                rtt_ms: slot.acks.rtt().map(|rtt| rtt.as_secs_f64() * 1000.0),
                loss: f64::from(slot.acks.loss()),
                packets_acked,
                packets_lost,
                idle_s: now.saturating_sub(slot.last_packet_at).as_secs_f64(),
                connected_s: now.saturating_sub(slot.connected_at).as_secs_f64(),
                bytes_in: slot.bytes_in,
                bytes_out: slot.bytes_out,
                snapshots_sent: slot.snapshots_sent,
                snapshot_rate: if window_s > 0.0 {
                    sent as f64 / window_s
                } else {
                    0.0
                },
                inputs_applied: slot.inputs_applied,
                inputs_pending: slot.pending.len(),
                inputs_late_ratio: (slot.inputs_received > 0)
                    .then(|| slot.inputs_received_late as f64 / slot.inputs_received as f64),
                input_margin_ticks: slot.margin_since_report.take(),
            });
        }
        report
    }

    fn handle_connection_events(&mut self, now: Duration) {
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
                    if let Some(slot) = self
                        .clients
                        .get_mut(client.0 as usize)
                        .and_then(Option::as_mut)
                    {
                        slot.name = name;
                        slot.connected_at = now;
                        slot.last_packet_at = now;
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
                (G::config(&self.world), &shared),
                self.config.client_bytes_per_s,
                self.config.view_radius_m,
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
            *slot = Some(ClientSlot::new(
                client_id,
                None,
                (0, 0),
                (G::config(&self.world), &shared),
                self.config.client_bytes_per_s,
                self.config.view_radius_m,
            ));
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
        self.gathered.clear();
        for slot in self.clients.iter_mut().flatten() {
            if let Some(input) = take_due_input(slot, tick, &mut self.stats)
                && let Some(player) = slot.player
            {
                self.gathered.push((player, input));
            }
        }
        // A player waiting for its client stands still rather than repeating its last move.
        for client_id in self.detached.keys() {
            if let Some(entry) = self.roster.get(client_id) {
                self.gathered.push((entry.player, G::Input::default()));
            }
        }
        // Into the step's map without clearing it: a player that sends every tick keeps
        // its entry, so a steady match allocates no map nodes.
        self.gathered.sort_unstable_by_key(|&(player, _)| player);
        let gathered = &self.gathered;
        self.inputs
            .retain(|player, _| gathered.binary_search_by_key(player, |&(p, _)| p).is_ok());
        for &(player, input) in gathered {
            self.inputs.insert(player, input);
        }
        if let Some(log) = &mut self.input_log {
            log.push(TickRecord {
                tick,
                players: G::players(&self.world),
                inputs: self.inputs.clone(),
            });
        }
    }

    /// Seals and sends the snapshot [`build_snapshot`] made for client `index`, if any.
    fn send_snapshot(&mut self, now: Duration, index: usize) {
        let Some(slot) = self.clients[index].as_mut() else {
            return;
        };
        match slot.built.take() {
            None => {}
            Some(Ok(Some(written))) => {
                // The header peeked when it was built: nothing was sent to this client since.
                let header = slot.acks.next_header(now);
                // The notices riding in it are not snapshot bytes (their tag is the one a
                // snapshot alone would have).
                let mut notice_bytes = 0;
                if let Some(ServerMessage::NoticesAndSnapshot(reliable)) = slot.riding.take() {
                    slot.outbox.sent(header.sequence, &reliable);
                    self.stats.notices_riding += 1;
                    notice_bytes = encoded_len(&reliable).unwrap_or(0);
                }
                slot.input_margin = None;
                slot.inputs_arrived_late = 0;
                self.wait_ticks_max = self.wait_ticks_max.max(written.wait_max);
                self.stats.entities_deferred += written.stale as u64;
                if send_counted(
                    &mut self.netcode,
                    now,
                    index,
                    &slot.payload,
                    &mut slot.bytes_out,
                )
                .is_ok()
                {
                    slot.snapshots_sent += 1;
                    self.stats.snapshots_sent += 1;
                    self.stats.snapshots_full += u64::from(written.full);
                    self.stats.snapshot_bytes += written.len.saturating_sub(notice_bytes) as u64;
                    self.stats.entity_updates += written.carried as u64;
                }
            }
            Some(Ok(None)) => self.stats.snapshots_throttled += 1,
            Some(Err(error)) => {
                tracing::error!(%error, "snapshot did not fit; this is a bug in the budget");
            }
        }
    }

    /// The events of the latest tick.
    pub fn events(&self) -> &[G::Event] {
        &self.events
    }

    /// The longest an entity in view waited for an update, over this tick's snapshots, in
    /// ticks.
    pub fn wait_ticks_max(&self) -> u32 {
        self.wait_ticks_max
    }
}

/// Notices this small or smaller ride in a snapshot's datagram (a kill and a name or two;
/// the match's shared data, in 900-byte parts, goes on its own).
const MAX_RIDING_NOTICE_BYTES: usize = 160;

/// Sends `reliable` to client `index` in a datagram of its own.
fn send_notices_alone<G: Game>(
    netcode: &mut netcode::Server,
    now: Duration,
    index: usize,
    slot: &mut ClientSlot<G>,
    reliable: Reliable<G>,
) {
    let header = slot.acks.next_header(now);
    slot.outbox.sent(header.sequence, &reliable);
    let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
    match encode(header, &ServerMessage::<G>::Reliable(reliable), &mut out) {
        Ok(len) => {
            let _ = send_counted(netcode, now, index, &out[..len], &mut slot.bytes_out);
        }
        Err(error) => {
            tracing::error!(%error, "notices did not fit; this is a bug in the budget");
        }
    }
}

/// Queues `payload` for client `index` and adds what that put on the wire to
/// `bytes_out`: the sealed packet, and the keep-alive netcode sends before it while the
/// client has not yet confirmed its slot.
fn send_counted(
    netcode: &mut netcode::Server,
    now: Duration,
    index: usize,
    payload: &[u8],
    bytes_out: &mut u64,
) -> Result<(), netcode::SendError> {
    let before = netcode.stats().bytes_sent;
    let sent = netcode.send_payload(now, ClientIndex(index as u32), payload);
    *bytes_out += netcode.stats().bytes_sent.saturating_sub(before);
    sent
}

/// What one snapshot-building thread reuses from tick to tick.
#[derive(Debug)]
struct Worker<E> {
    /// The entities in one client's view.
    seen: Vec<Seen<E>>,
    /// The replicator's working lists, datagram and remembered entity updates.
    scratch: Scratch<E>,
}

impl<E> Default for Worker<E> {
    fn default() -> Self {
        Self {
            seen: Vec::new(),
            scratch: Scratch::default(),
        }
    }
}

/// Builds and encodes `slot`'s snapshot of `world` (its view, as a delta within its
/// budget) into `slot.payload`, leaving the outcome in `slot.built` for
/// [`ServerCore::send_snapshot`]. Reads the world only: safe to run for many clients at
/// once.
fn build_snapshot<G: Game>(
    world: &G::State,
    radius: f32,
    restored_from_tick: Option<Tick>,
    slot: &mut ClientSlot<G>,
    worker: &mut Worker<G::Entity>,
) {
    let viewer = Viewer {
        player: slot.player,
        radius,
    };
    let seen = &mut worker.seen;
    seen.clear();
    G::view(world, &viewer, seen);
    // The delta walks views in index order; an index the game listed twice counts once.
    seen.sort_unstable_by_key(|s| s.id.index);
    seen.dedup_by_key(|s| s.id.index);
    let (own, you) = match slot.player {
        Some(id) => (
            G::body_of(world, id),
            G::status(world, id).unwrap_or_default(),
        ),
        None => (None, G::Status::default()),
    };
    let head = SnapshotHead::<G> {
        tick: G::tick(world),
        baseline_ticks: 0,
        your_entity: own,
        last_applied_input: slot.last_applied,
        inputs_applied: slot.inputs_applied,
        restored_from_tick,
        input_margin: slot.input_margin,
        inputs_arrived_late: slot.inputs_arrived_late,
        you,
    };
    // The header's sequence is taken only when the snapshot goes: a throttled one uses
    // none.
    let header = slot.acks.peek_header();
    let built = slot.replicator.write(
        G::config(world),
        header,
        slot.riding.as_ref(),
        head,
        seen,
        own,
        &mut worker.scratch,
    );
    slot.payload.clear();
    if let Ok(Some(written)) = &built {
        slot.payload
            .extend_from_slice(worker.scratch.payload(written.len));
    }
    slot.built = Some(built);
}

/// Writes the scoreboard line of `t` at `entries[i]` (pushing one if there are fewer),
/// reusing the allocation of the name it replaces.
fn set_line<G: Game>(
    entries: &mut Vec<ScoreEntry<G>>,
    i: usize,
    roster: &BTreeMap<u64, RosterEntry>,
    t: &(G::Standing, PlayerId, u64),
) {
    let name = roster.get(&t.2).map_or("", |e| e.name.as_str());
    if i == entries.len() {
        entries.push(ScoreEntry {
            player: t.1,
            name: name.to_owned(),
            standing: t.0.clone(),
            you: false,
        });
        return;
    }
    let entry = &mut entries[i];
    entry.player = t.1;
    entry.name.clear();
    entry.name.push_str(name);
    entry.standing = t.0.clone();
    entry.you = false;
}

/// Files received frames; notices when the client gave up on older ones.
fn receive_inputs<G: Game>(
    slot: &mut ClientSlot<G>,
    frames: &[InputFrame<G::Input>],
    next_tick: Tick,
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
        if frame.sequence <= slot.last_applied {
            continue;
        }
        let Err(at) = slot
            .pending
            .binary_search_by_key(&frame.sequence, |f| f.sequence)
        else {
            continue; // already here
        };
        if slot.pending.len() >= MAX_PENDING_INPUTS {
            stats.inputs_dropped += 1;
            continue;
        }
        // A frame's tick is the client's word: any u64, so the difference is taken wide.
        let margin = (i128::from(frame.tick.0) - i128::from(next_tick.0)).clamp(-128, 127) as i8;
        slot.input_margin = Some(slot.input_margin.map_or(margin, |m| m.min(margin)));
        slot.margin_since_report = Some(slot.margin_since_report.map_or(margin, |m| m.min(margin)));
        slot.inputs_received += 1;
        if margin < 0 {
            slot.inputs_arrived_late = slot.inputs_arrived_late.saturating_add(1);
            slot.inputs_received_late += 1;
        }
        slot.pending.insert(at, *frame);
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
    while let Some(frame) = slot.pending.front() {
        let sequence = frame.sequence;
        if sequence != slot.last_applied.wrapping_add(1) {
            // A gap: the missing frame is on its way (the client resends until applied).
            break;
        }
        let due = frame.tick <= tick || slot.pending.len() > MAX_INPUT_LEAD_FRAMES;
        let late = frame.tick < tick;
        // After the first, every frame due by this tick is merged in: a late frame must not
        // push the one on time for this tick to the next (and so on, each one late).
        if !due || (merged.is_some() && frame.tick > tick) {
            break;
        }
        let frame = *frame;
        slot.pending.pop_front();
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

#[cfg(test)]
mod tests {
    use arena_shared::sim::{PlayerInput, Shooter, WorldConfig};

    use super::*;

    #[test]
    fn a_frame_for_any_tick_is_filed_with_a_clamped_margin() {
        let config = WorldConfig {
            max_players: 2,
            tick_hz: 60,
            seed: 1,
        };
        let world = Shooter::new_state(&config);
        let shared = Shooter::shared(&world);
        let mut slot = ClientSlot::<Shooter>::new(
            7,
            Some(PlayerId(1)),
            (0, 0),
            (&config, &shared),
            16_000,
            30.0,
        );
        let mut stats = CoreStats::default();
        let frame = |sequence, tick| InputFrame {
            sequence,
            tick: Tick(tick),
            input: PlayerInput::default(),
        };
        // Far in the future and far in the past: the client's word, never an overflow.
        receive_inputs(&mut slot, &[frame(1, u64::MAX)], Tick(1_000), &mut stats);
        assert_eq!(slot.input_margin, Some(127));
        receive_inputs(&mut slot, &[frame(2, 0)], Tick(1_000), &mut stats);
        assert_eq!(slot.input_margin, Some(-128));
        assert_eq!(slot.inputs_arrived_late, 1);
        assert_eq!(slot.pending.len(), 2);
    }
}
