//! A simulated network: the real server core and real client sessions, joined by links
//! with seeded loss, latency, jitter and duplication, at a virtual time.
//!
//! Time advances a tick at a time; within a tick every datagram is delivered at its own
//! arrival time (the sans-IO cores take `now` as an argument), so latency and jitter are
//! exact and reordering happens whenever jitter exceeds the gap between two sends.
//! A minute of a hundred players runs in a few seconds.

use std::net::SocketAddr;
use std::time::Duration;

use arena_client::bots::shooter::{Behavior, Brain};
use arena_client::conditioner::{Conditioner, LinkSpec};
use arena_client::interpolation::Interpolator;
use arena_client::prediction::Predictor;
use arena_client::session::Session;
use arena_server::core::{CoreConfig, ServerCore, TokenConfig};
use arena_shared::identity::{ARENA_PROTOCOL_ID, TokenRequest, mint_token};
use arena_shared::netcode::{self, Key};
use arena_shared::sim::{GameEvent, PlayerInput, Shooter, WorldConfig};
use arena_shared::snapshot;

/// The fleet key every simulated server and token uses.
pub const KEY: Key = [0x42; 32];
/// Where the virtual clock starts (unix seconds: token timestamps must make sense).
pub const START_UNIX_S: u64 = 1_800_000_000;

/// What a link does to datagrams.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkConfig {
    /// Share of datagrams lost (0..1).
    pub loss: f64,
    /// One-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in ±jitter (never below zero).
    pub jitter: Duration,
    /// Share of datagrams delivered twice.
    pub duplicate: f64,
}

impl LinkConfig {
    /// A perfect link.
    pub fn clean() -> Self {
        Self::default()
    }

    /// Loss, latency and jitter.
    pub fn lossy(loss: f64, latency_ms: u64, jitter_ms: u64) -> Self {
        Self {
            loss,
            latency: Duration::from_millis(latency_ms),
            jitter: Duration::from_millis(jitter_ms),
            duplicate: 0.0,
        }
    }
}

/// One direction of a path: the client library's link conditioner, which knows each
/// datagram's arrival time.
#[derive(Debug)]
pub struct Link(Conditioner);

impl Link {
    /// A link with its own seeded randomness.
    pub fn new(config: LinkConfig, seed: u64) -> Self {
        Self(Conditioner::new(
            LinkSpec {
                loss: config.loss,
                latency: config.latency,
                jitter: config.jitter,
                duplicate: config.duplicate,
            },
            seed,
        ))
    }

    /// Puts a datagram on the wire at `now`; `server` is the server at the other end.
    pub fn send(&mut self, now: Duration, server: SocketAddr, bytes: Vec<u8>) {
        self.0.push(now, server, bytes);
    }

    /// The next datagram that has arrived by `now`: arrival time, server, bytes.
    pub fn receive(&mut self, now: Duration) -> Option<(Duration, SocketAddr, Vec<u8>)> {
        self.0.pop_timed(now)
    }

    /// When the next datagram arrives.
    pub fn next_arrival(&self) -> Option<Duration> {
        self.0.next_due()
    }

    /// Datagrams lost on purpose.
    pub fn lost(&self) -> u64 {
        self.0.dropped
    }
}

/// A simulated player: a session, its bot brain, and its two links.
pub struct SimClient {
    /// Its address as the server sees it.
    pub addr: SocketAddr,
    /// The real client session.
    pub session: Session<Shooter>,
    /// Decides inputs.
    pub brain: Brain,
    /// Client to server.
    pub up: Link,
    /// Server to client.
    pub down: Link,
    /// While false the client sends nothing and makes no inputs (a frozen process).
    pub running: bool,
    /// While false the client makes no new inputs but still resends (draining).
    pub playing: bool,
    /// When set, the client sends this every tick instead of its brain's choice.
    pub fixed_input: Option<PlayerInput>,
    /// Predicts the own player, as the terminal client does.
    pub predictor: Predictor<Shooter>,
    /// Interpolates the others, as the terminal client does.
    pub interpolator: Interpolator<Shooter>,
}

/// What a simulated server process is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMode {
    /// Owns the match and ticks it.
    Ticking,
    /// Handed the match over: keeps connections and resends redirects.
    Redirecting,
    /// A standby being prepared for a handoff: no match yet, but its transport (`lobby`)
    /// accepts the connections clients open ahead (make before break).
    Lobby,
    /// Running with no match (a standby), or killed: datagrams to it vanish.
    Down,
}

/// A server process on the simulated network.
pub struct SimServer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its core, once it has a match.
    pub core: Option<ServerCore<Shooter>>,
    /// Its transport while it has no match ([`ServerMode::Lobby`]): kept alive, its
    /// connection events left queued for the core that takes it over, payloads ignored.
    pub lobby: Option<netcode::Server>,
    /// What it is doing.
    pub mode: ServerMode,
}

/// Servers and clients on a simulated network.
pub struct SimNet {
    /// The virtual clock (since the unix epoch).
    pub now: Duration,
    /// Server processes; the first starts as the owner, the others as standbys.
    pub servers: Vec<SimServer>,
    /// The clients.
    pub clients: Vec<SimClient>,
    /// Ticks per second.
    pub tick_hz: u32,
    /// The kills the servers' steps produced, in order (every server's).
    pub kills: Vec<GameEvent>,
    seed: u64,
    config: SimConfig,
    /// Runs every call into a server core (see [`SimNet::set_server_meter`]).
    meter: Meter,
}

/// Runs one call into a server core: for a test that measures only the server's work
/// (its allocations, say).
pub type Meter = fn(&mut dyn FnMut());

fn unmetered(work: &mut dyn FnMut()) {
    work();
}

/// How to build a [`SimNet`].
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// Seeds everything (world, links, bots); printed on failure by the tests.
    pub seed: u64,
    /// Player slots.
    pub max_players: u32,
    /// View radius, metres.
    pub view_radius_m: f32,
    /// Ticks per second.
    pub tick_hz: u32,
    /// Server processes (1: no standby).
    pub servers: usize,
    /// Each client's snapshot budget, bytes a second.
    pub client_bytes_per_s: u32,
    /// Snapshot-building threads.
    pub workers: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            max_players: 128,
            view_radius_m: 30.0,
            tick_hz: 60,
            servers: 1,
            client_bytes_per_s: 16_000,
            workers: 1,
        }
    }
}

/// The address of simulated server number `n`.
pub fn server_address(n: usize) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1 + n as u8], 7777))
}

impl SimNet {
    /// An owner with no clients yet, and `config.servers - 1` standbys.
    pub fn new(config: SimConfig) -> Self {
        let mut net = Self {
            now: Duration::from_secs(START_UNIX_S),
            servers: Vec::new(),
            clients: Vec::new(),
            tick_hz: config.tick_hz,
            kills: Vec::new(),
            seed: config.seed,
            config,
            meter: unmetered,
        };
        for n in 0..config.servers.max(1) {
            net.servers.push(SimServer {
                addr: server_address(n),
                core: None,
                lobby: None,
                mode: ServerMode::Down,
            });
        }
        let owner = net.core_config(0);
        net.servers[0].core = Some(ServerCore::new(owner));
        net.servers[0].mode = ServerMode::Ticking;
        net
    }

    /// The configuration server `n` runs with (its peers are the other servers).
    pub fn core_config(&self, n: usize) -> CoreConfig {
        let addr = server_address(n);
        CoreConfig {
            match_id: "sim".into(),
            netcode: netcode::ServerConfig {
                protocol_id: ARENA_PROTOCOL_ID,
                private_key: KEY,
                max_clients: self.config.max_players as usize,
                addresses: vec![addr],
            },
            world: WorldConfig {
                max_players: self.config.max_players,
                tick_hz: self.config.tick_hz,
                seed: self.config.seed,
            },
            view_radius_m: self.config.view_radius_m,
            client_bytes_per_s: self.config.client_bytes_per_s,
            workers: self.config.workers,
            tokens: TokenConfig {
                own_address: addr,
                peers: (0..self.config.servers)
                    .map(server_address)
                    .filter(|&a| a != addr)
                    .collect(),
                timeout_s: 5,
                expire_s: 600,
            },
        }
    }

    /// The owner's core (server 0).
    pub fn server(&self) -> &ServerCore<Shooter> {
        self.core(0)
    }

    /// The owner's core, mutable.
    pub fn server_mut(&mut self) -> &mut ServerCore<Shooter> {
        self.core_mut(0)
    }

    /// Server `n`'s core; panics if it has no match (a test's mistake).
    pub fn core(&self, n: usize) -> &ServerCore<Shooter> {
        self.servers[n]
            .core
            .as_ref()
            .unwrap_or_else(|| panic!("server {n} has no match"))
    }

    /// Server `n`'s core, mutable.
    pub fn core_mut(&mut self, n: usize) -> &mut ServerCore<Shooter> {
        self.servers[n]
            .core
            .as_mut()
            .unwrap_or_else(|| panic!("server {n} has no match"))
    }

    /// A MatchSnapshot of server `n`'s match, as the owner would write it.
    pub fn snapshot_bytes(&self, n: usize, epoch: u64) -> Vec<u8> {
        snapshot::encode("sim", epoch, &self.core(n).match_state())
            .unwrap_or_else(|e| panic!("snapshot of server {n}: {e}"))
    }

    /// Server `to` restores `bytes` and starts ticking; it records every step's inputs.
    pub fn restore(&mut self, to: usize, bytes: &[u8]) {
        let (_, state) =
            snapshot::decode::<Shooter>(bytes, "sim").unwrap_or_else(|e| panic!("restore: {e}"));
        let mut core = ServerCore::with_state(self.core_config(to), state);
        core.record_inputs();
        self.servers[to].core = Some(core);
        self.servers[to].mode = ServerMode::Ticking;
    }

    /// A planned handoff at the current tick boundary: `from` freezes and snapshots, `to`
    /// restores and resumes, `from` redirects every client. Returns the snapshot.
    pub fn hand_off(&mut self, from: usize, to: usize) -> Vec<u8> {
        let bytes = self.snapshot_bytes(from, 1);
        self.restore(to, &bytes);
        let now = self.now;
        let target = self.servers[to].addr;
        self.core_mut(from).redirect_all(now, target);
        self.servers[from].mode = ServerMode::Redirecting;
        bytes
    }

    /// Server `n` becomes a lobby: a standby that accepts connections ahead of a handoff.
    pub fn open_lobby(&mut self, n: usize) {
        let config = self.core_config(n).netcode;
        self.servers[n].lobby = Some(netcode::Server::new(config));
        self.servers[n].mode = ServerMode::Lobby;
    }

    /// The commit of a handoff prepared with [`ServerCore::prepare_all`]: `to` builds its
    /// core on its lobby (keeping the connections clients opened ahead) from `from`'s
    /// match as it stands, and ticks from the next step; `from` redirects every client.
    pub fn hand_off_prepared(&mut self, from: usize, to: usize) {
        let state = self.core(from).match_state();
        let lobby = self.servers[to]
            .lobby
            .take()
            .unwrap_or_else(|| panic!("server {to} has no lobby"));
        let core = ServerCore::with_transport(self.core_config(to), state, lobby);
        self.servers[to].core = Some(core);
        self.servers[to].mode = ServerMode::Ticking;
        let now = self.now;
        let target = self.servers[to].addr;
        self.core_mut(from).redirect_all(now, target);
        self.servers[from].mode = ServerMode::Redirecting;
    }

    /// Clients with a connection established ahead to server `n`.
    pub fn connected_ahead_to(&self, n: usize) -> usize {
        let addr = self.servers[n].addr;
        self.clients
            .iter()
            .filter(|c| c.session.is_prepared() && c.session.prepared_server() == Some(addr))
            .count()
    }

    /// Server `n` dies: it ticks no more and datagrams to and from it vanish.
    pub fn crash(&mut self, n: usize) {
        self.servers[n].mode = ServerMode::Down;
    }

    /// Clients connected to server `n`.
    pub fn connected_to(&self, n: usize) -> usize {
        let addr = self.servers[n].addr;
        self.clients
            .iter()
            .filter(|c| c.session.is_connected() && c.session.server_address() == Some(addr))
            .count()
    }

    /// Adds a client that starts connecting now over links with `link` both ways.
    pub fn add_client(&mut self, link: LinkConfig, behavior: Behavior) -> usize {
        let n = self.clients.len() as u64;
        let addr = SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 40000));
        let token = mint_token(
            &TokenRequest {
                protocol_id: ARENA_PROTOCOL_ID,
                server_addresses: vec![server_address(0)],
                client_id: 1000 + n,
                name: format!("sim-{n}"),
                now_unix_s: self.now.as_secs(),
                expire_s: 600,
                timeout_s: 5,
                spectator: false,
            },
            &KEY,
        )
        .and_then(|t| t.write())
        .map(|bytes| bytes.to_vec())
        .unwrap_or_default();
        let seed = self.seed.wrapping_mul(1_000_003).wrapping_add(n);
        self.clients.push(SimClient {
            addr,
            session: Session::new(self.now, &token, self.tick_hz),
            brain: Brain::new(behavior, seed),
            up: Link::new(link, seed ^ 0xa5a5),
            down: Link::new(link, seed ^ 0x5a5a),
            running: true,
            playing: true,
            fixed_input: None,
            predictor: Predictor::default(),
            interpolator: Interpolator::default(),
        });
        self.clients.len() - 1
    }

    /// Every later call into a server core (datagrams in, the tick, datagrams out) runs
    /// inside `meter`; nothing else does.
    pub fn set_server_meter(&mut self, meter: Meter) {
        self.meter = meter;
    }

    /// One tick of virtual time: deliver what arrives, tick the servers, clients act.
    pub fn step(&mut self) {
        let end = self.now + self.tick_period();
        self.deliver_until(end);
        self.now = end;
        let now = self.now;
        for server in &mut self.servers {
            match (server.mode, server.core.as_mut()) {
                (ServerMode::Ticking, Some(core)) => {
                    (self.meter)(&mut || {
                        core.tick(now);
                    });
                    self.kills.extend(
                        core.events()
                            .iter()
                            .filter(|e| matches!(e, GameEvent::Killed { .. })),
                    );
                }
                (ServerMode::Redirecting, Some(core)) => core.serve_redirects(now),
                (ServerMode::Lobby, None) => {
                    if let Some(lobby) = server.lobby.as_mut() {
                        lobby.update(now);
                    }
                }
                _ => {}
            }
        }
        self.collect_server_transmits();
        let now = self.now;
        for client in &mut self.clients {
            if !client.running {
                continue;
            }
            client.session.update(now);
            let mut fresh = false;
            let snapshots: Vec<_> = client.session.take_snapshots().collect();
            for snapshot in &snapshots {
                client.brain.observe(snapshot);
                client.interpolator.on_snapshot(now, snapshot);
                fresh = true;
            }
            if fresh && let Some(latest) = client.session.latest_snapshot() {
                client.predictor.on_snapshot(
                    latest,
                    client.session.shared(),
                    client.session.unapplied_frames(),
                );
            }
            if client.playing {
                let input = client.fixed_input.unwrap_or_else(|| client.brain.decide());
                if let Some(frame) = client.session.send_input(now, input) {
                    client.predictor.on_input(&frame, client.session.shared());
                }
            } else {
                client.session.resend_inputs(now);
            }
            while let Some(t) = client.session.poll_transmit() {
                client.up.send(now, t.destination, t.contents);
            }
        }
    }

    /// Runs `ticks` ticks.
    pub fn run_ticks(&mut self, ticks: u64) {
        for _ in 0..ticks {
            self.step();
        }
    }

    /// Steps until `done` holds, at most `limit_ticks`; returns whether it held.
    pub fn run_until(&mut self, limit_ticks: u64, mut done: impl FnMut(&Self) -> bool) -> bool {
        for _ in 0..limit_ticks {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// Seconds of virtual time per tick.
    pub fn tick_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / f64::from(self.tick_hz))
    }

    /// Stops making inputs; clients keep resending until the server applies them.
    pub fn stop_playing(&mut self) {
        for client in &mut self.clients {
            client.playing = false;
        }
    }

    /// Every client connected.
    pub fn all_connected(&self) -> bool {
        self.clients.iter().all(|c| c.session.is_connected())
    }

    /// Input frames made but never applied, over all clients.
    pub fn inputs_unapplied(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.session.stats().inputs_sent - u64::from(c.session.last_applied_input()))
            .sum()
    }

    fn deliver_until(&mut self, end: Duration) {
        // Datagrams arrive in time order across all links; replies go out at once.
        loop {
            let mut next: Option<(Duration, usize, bool)> = None;
            for (i, client) in self.clients.iter().enumerate() {
                for (up, link) in [(true, &client.up), (false, &client.down)] {
                    if let Some(at) = link.next_arrival()
                        && at <= end
                        && next.is_none_or(|(t, _, _)| at < t)
                    {
                        next = Some((at, i, up));
                    }
                }
            }
            let Some((_, i, up)) = next else {
                break;
            };
            let client = &mut self.clients[i];
            if up {
                if let Some((at, to, mut bytes)) = client.up.receive(end)
                    && let Some(server) = self.servers.iter_mut().find(|s| s.addr == to)
                    && server.mode != ServerMode::Down
                {
                    if let Some(core) = server.core.as_mut() {
                        let from = client.addr;
                        (self.meter)(&mut || core.handle_datagram(at, from, &mut bytes));
                    } else if let Some(lobby) = server.lobby.as_mut() {
                        let _ = lobby.handle_packet(at, client.addr, &mut bytes);
                    }
                }
            } else if let Some((at, from, mut bytes)) = client.down.receive(end)
                && client.running
            {
                client.session.handle_datagram(at, from, &mut bytes);
            }
        }
    }

    fn collect_server_transmits(&mut self) {
        let now = self.now;
        let meter = self.meter;
        for server in &mut self.servers {
            loop {
                let mut transmit = None;
                match (server.core.as_mut(), server.lobby.as_mut()) {
                    (Some(core), _) => meter(&mut || transmit = core.poll_transmit()),
                    (None, Some(lobby)) => transmit = lobby.poll_transmit(),
                    (None, None) => {}
                }
                let Some(mut t) = transmit else {
                    break;
                };
                if server.mode == ServerMode::Down {
                    continue;
                }
                if let Some(client) = self.clients.iter_mut().find(|c| c.addr == t.destination) {
                    // The link gets a copy; the server's buffer goes back to it, as a real
                    // driver's does once the datagram is sent.
                    client.down.send(now, server.addr, t.contents.clone());
                }
                if let Some(core) = server.core.as_mut() {
                    meter(&mut || core.recycle(std::mem::take(&mut t.contents)));
                }
            }
        }
    }
}
