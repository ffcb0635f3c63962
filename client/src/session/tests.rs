//! The session against small fake servers: real netcode and real messages (the shooter's),
//! a virtual clock, and links with a fixed latency.

use std::collections::VecDeque;

use arena_shared::game::MatchConfig;
use arena_shared::identity::{ARENA_PROTOCOL_ID, TokenRequest, mint_token};
use arena_shared::netcode::{ClientIndex, Key, ServerEvent};
use arena_shared::protocol::delta::SectionWriter;
use arena_shared::protocol::messages::{TOKEN_PART_BYTES, TOKEN_PARTS};
use arena_shared::protocol::reliable::Outbox;
use arena_shared::protocol::{SnapshotHead, decode_client, encode_snapshot};
use arena_shared::sim::{GameEvent, PlayerInput, PlayerStatus, Shooter, ShooterShared, World};

use super::*;

const KEY: Key = [3; 32];
const CONFIG: MatchConfig = MatchConfig {
    max_players: 8,
    tick_hz: 60,
    seed: 1,
};
const VIEW_RADIUS_M: f32 = 25.0;
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
    token_sealed_with(now, addresses, &KEY, ARENA_PROTOCOL_ID)
}

/// A token sealed with `key` for `protocol_id` (the servers' are [`KEY`] and
/// [`ARENA_PROTOCOL_ID`]).
fn token_sealed_with(
    now: Duration,
    addresses: &[SocketAddr],
    key: &Key,
    protocol_id: u64,
) -> Vec<u8> {
    mint_token(
        &TokenRequest {
            protocol_id,
            server_addresses: addresses.to_vec(),
            client_id: 77,
            name: "ann".into(),
            now_unix_s: now.as_secs(),
            expire_s: 600,
            timeout_s: 5,
            spectator: false,
        },
        key,
    )
    .unwrap()
    .write()
    .unwrap()
    .to_vec()
}

/// A datagram on its way: when it arrives, from, to, bytes.
type InFlight = (Duration, SocketAddr, SocketAddr, Vec<u8>);

/// A minimal game server for one player: it applies inputs in order as they arrive
/// (skipping only frames the client gave up), while ticking sends a snapshot every step,
/// and, while the client is connected, sends what its outbox holds of reliable notices.
struct FakeServer {
    addr: SocketAddr,
    netcode: netcode::Server,
    acks: AckTracker,
    client: Option<ClientIndex>,
    /// The connected client's reliable notices (a new one for each connection).
    outbox: Outbox<Shooter>,
    /// The match's settings it tells each connection first.
    config: MatchConfig,
    /// Sends every reliable message twice, in two packets (a resend that crossed an ack).
    repeat_reliable: bool,
    /// Notices ride in the snapshot's datagram (as the real core's do when small).
    notices_ride: bool,
    /// Datagrams of notices sent: riding in a snapshot's, and on their own.
    notices_sent: (u64, u64),
    /// Sends unacknowledged notices again (false: each goes out once, as if every packet
    /// were known to arrive; what the client drops is lost).
    resend_reliable: bool,
    /// Notices below this number went out at least once.
    reliable_sent_below: u32,
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
            outbox: Outbox::default(),
            config: CONFIG,
            repeat_reliable: false,
            notices_ride: false,
            notices_sent: (0, 0),
            resend_reliable: true,
            reliable_sent_below: 0,
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
        let Ok((header, ClientMessage::Inputs { frames })) = decode_client::<Shooter>(payload)
        else {
            return;
        };
        let outbox = &mut self.outbox;
        self.acks
            .on_receive(now, header, |sequence| outbox.on_ack(sequence));
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
        // Notices first, as the real core does: the settings come before any snapshot.
        self.send_reliable(now);
        self.tick_once(now);
        while let Some(event) = self.netcode.poll_event() {
            match event {
                ServerEvent::ClientConnected { client, .. } => {
                    self.client = Some(client);
                    self.outbox = Outbox::default();
                    self.outbox.push_config(self.config, VIEW_RADIUS_M);
                    self.reliable_sent_below = 0;
                    self.connects += 1;
                }
                ServerEvent::ClientDisconnected { .. } => self.client = None,
            }
        }
    }

    /// The outbox's due notices, in a packet of their own (twice if `repeat_reliable`).
    fn send_reliable(&mut self, now: Duration) {
        if self.client.is_none() || (self.notices_ride && self.ticking) {
            return;
        }
        let Some(reliable) = self.outbox.poll(now) else {
            return;
        };
        let end = reliable.first + reliable.notices.len() as u32;
        if !self.resend_reliable && end <= self.reliable_sent_below {
            return;
        }
        self.reliable_sent_below = self.reliable_sent_below.max(end);
        let copies = if self.repeat_reliable { 2 } else { 1 };
        for _ in 0..copies {
            let message = ServerMessage::Reliable(reliable.clone());
            if let Some(sequence) = self.send(now, &message) {
                self.outbox.sent(sequence, &reliable);
                self.notices_sent.1 += 1;
            }
        }
    }

    fn tick_once(&mut self, now: Duration) {
        if self.ticking {
            self.tick += 1;
            if !self.stale_reports {
                self.reported = (self.last_applied, self.inputs_applied);
            }
            let head = SnapshotHead::<Shooter> {
                tick: Tick(self.tick),
                baseline_ticks: 0,
                your_entity: None,
                last_applied_input: self.reported.0,
                inputs_applied: self.reported.1,
                restored_from_tick: self.restored_from,
                input_margin: None,
                inputs_arrived_late: 0,
                you: PlayerStatus::default(),
            };
            // A full snapshot with no entities, with the due notices riding if they do.
            let riding = self
                .notices_ride
                .then(|| self.outbox.poll(now))
                .flatten()
                .map(ServerMessage::NoticesAndSnapshot);
            let sequence = self.acks.peek_header().sequence;
            self.send_snapshot(now, riding.as_ref(), (None, &head), true);
            if let Some(ServerMessage::NoticesAndSnapshot(reliable)) = &riding
                && self.client.is_some()
            {
                self.outbox.sent(sequence, reliable);
                self.notices_sent.0 += 1;
            }
        }
    }

    /// Sends the snapshot `head` describes against `base`, with no entities (or, unless
    /// `entities`, without even their section).
    fn send_snapshot(
        &mut self,
        now: Duration,
        lead: Option<&ServerMessage<Shooter>>,
        (base, head): (Option<&SnapshotHead<Shooter>>, &SnapshotHead<Shooter>),
        entities: bool,
    ) {
        let Some(client) = self.client else {
            return;
        };
        let header = self.acks.next_header(now);
        let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
        let len = encode_snapshot(header, lead, (base, head), 1200, &mut out, |bits| {
            if entities {
                let mut section = SectionWriter::default();
                section.removed(bits, std::iter::empty());
                section.begin_held(bits, 0, std::iter::empty());
                section.begin_new(bits, 0);
                section.end(bits, 0);
            }
        })
        .unwrap();
        let _ = self.netcode.send_payload(now, client, &out[..len]);
    }

    /// Sends `message` to the client, if one is connected; returns the packet's number.
    fn send(&mut self, now: Duration, message: &ServerMessage<Shooter>) -> Option<u16> {
        let client = self.client?;
        let header = self.acks.next_header(now);
        let mut out = [0u8; netcode::MAX_PAYLOAD_BYTES];
        let len = encode(header, message, &mut out).unwrap();
        let _ = self.netcode.send_payload(now, client, &out[..len]);
        Some(header.sequence)
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
    session: Session<Shooter>,
    servers: Vec<FakeServer>,
    playing: bool,
    /// Every datagram to the client arrives twice (replay protection drops the copy).
    duplicate_to_client: bool,
    wire: VecDeque<InFlight>,
}

impl Net {
    /// A session connected to server 0 (ticking), with servers `1..count` idle.
    fn new(count: u8) -> Self {
        Self::connected(count, |_| {})
    }

    /// [`Net::new`] with the servers set up by `prepare` before the session connects.
    fn connected(count: u8, prepare: impl FnOnce(&mut [FakeServer])) -> Self {
        let mut servers: Vec<FakeServer> = (1..=count).map(|n| FakeServer::new(addr(n))).collect();
        prepare(&mut servers);
        let mut net = Self {
            now: START,
            session: Session::new(START, &token(START, &[addr(1)]), 60),
            servers,
            playing: true,
            duplicate_to_client: false,
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
                let datagram = (now + server.latency, server.addr, t.destination, t.contents);
                if self.duplicate_to_client {
                    self.wire.push_back(datagram.clone());
                }
                self.wire.push_back(datagram);
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
            } else if let Some(server) = self.servers.iter_mut().find(|s| s.addr == to && s.alive) {
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
        self.session.is_connected() && self.session.server_address() == Some(self.servers[n].addr)
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

    /// Server `n` queues `events` for its client, reliably.
    fn tell(&mut self, n: usize, events: &[GameEvent]) {
        for event in events {
            assert!(self.servers[n].outbox.push_event(*event));
        }
    }

    /// Has server `n` tell `events`, four every three steps, and returns what the session
    /// heard by 300 ms after the last.
    fn tell_and_hear(&mut self, n: usize, events: &[GameEvent]) -> Vec<GameEvent> {
        let mut heard = Vec::new();
        for some in events.chunks(4) {
            self.tell(n, some);
            self.run_hearing(3 * STEP, &mut heard);
        }
        self.run_hearing(Duration::from_millis(300), &mut heard);
        heard
    }

    /// Runs for `time`, taking the session's events as they arrive.
    fn run_hearing(&mut self, time: Duration, heard: &mut Vec<GameEvent>) {
        let end = self.now + time;
        while self.now < end {
            self.step();
            heard.extend(self.session.take_events());
        }
    }

    /// Server `to` takes over server `from`'s match as it stands and ticks; `from` (listed
    /// before it) freezes.
    fn hand_over(&mut self, from: usize, to: usize) {
        assert!(from < to);
        self.servers[from].ticking = false;
        let (owners, rest) = self.servers.split_at_mut(to);
        rest[0].take_match_of(&owners[from]);
        rest[0].ticking = true;
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

/// `count` kills, the first of player `first` by `first + 1`, and so on.
fn kills(first: u32, count: u32) -> Vec<GameEvent> {
    (first..first + count)
        .map(|i| GameEvent::Killed {
            victim: PlayerId(i),
            by: PlayerId(i + 1),
        })
        .collect()
}

const SMALL_MATCH: MatchConfig = MatchConfig {
    max_players: 8,
    tick_hz: 60,
    seed: 1,
};

#[test]
fn reliable_notices_arrive_once_and_in_order_even_when_repeated() {
    let mut net = Net::new(1);
    net.servers[0].repeat_reliable = true;
    net.duplicate_to_client = true;
    let shared = ShooterShared::of(&World::new(SMALL_MATCH));
    net.servers[0].outbox.push_shared(&shared);
    net.servers[0].outbox.push_name(PlayerId(1), "ann");
    let events = kills(0, 40);
    assert_eq!(net.tell_and_hear(0, &events), events);
    assert_eq!(net.session.shared(), Some(&shared));
    assert_eq!(net.session.shared_version(), 1);
    assert_eq!(net.session.name(PlayerId(1)), Some("ann"));
    assert_eq!(net.session.name(PlayerId(2)), None);
    let stats = net.session.inbox_stats();
    assert!(
        stats.repeats >= stats.delivered,
        "every notice came twice: {stats:?}"
    );
    assert_eq!(
        (stats.gaps, stats.bad_shared, stats.events_dropped),
        (0, 0, 0)
    );
    assert_eq!(net.servers[0].outbox.unacknowledged(), 0);
}

#[test]
fn notices_riding_in_snapshots_arrive_once_and_in_order_the_settings_first() {
    let mut net = Net::connected(1, |servers| servers[0].notices_ride = true);
    net.duplicate_to_client = true;
    net.servers[0].outbox.push_name(PlayerId(1), "ann");
    let events = kills(0, 40);
    assert_eq!(net.tell_and_hear(0, &events), events);
    assert_eq!(net.session.name(PlayerId(1)), Some("ann"));
    let stats = net.session.stats();
    // The settings rode in the first snapshot's datagram, read before its snapshot.
    assert_eq!(stats.snapshots_before_config, 0, "{stats:?}");
    assert!(stats.snapshots > 30, "{stats:?}");
    assert_eq!(net.servers[0].outbox.unacknowledged(), 0);
    let (riding, alone) = net.servers[0].notices_sent;
    assert!(riding >= 10 && alone == 0, "{riding} rode, {alone} alone");
}

#[test]
fn notices_the_new_owner_sent_ahead_of_a_switch_are_kept_and_its_later_ones_arrive() {
    // Numbers differ: 4 notices from the owner, 3 from the new owner ahead of the switch.
    let mut net = Net::new(2);
    let mut heard = Vec::new();
    net.tell(0, &kills(0, 4));
    net.run_hearing(Duration::from_millis(100), &mut heard);
    net.prepare(0, 1, 1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.session.is_prepared()));
    // The new owner speaks on the connection opened ahead before the match moves: those
    // packets are acknowledged on that connection, so they are never sent again (here:
    // not even before the acknowledgement arrives).
    net.servers[1].resend_reliable = false;
    let shared = ShooterShared {
        config: SMALL_MATCH,
        walls: Vec::new(),
    };
    net.servers[1].outbox.push_shared(&shared);
    net.tell(1, &kills(4, 2));
    net.run_hearing(Duration::from_millis(200), &mut heard);
    assert_eq!(
        heard,
        kills(0, 4),
        "the standby's events wait for the switch"
    );
    assert_eq!(net.session.shared(), None);

    net.hand_over(0, 1);
    assert!(net.run_until(Duration::from_millis(200), |n| n.on(1)));
    assert_eq!(net.session.stats().handoffs_prepared, 1);
    // The inputs on the promoted connection acknowledge what it received ahead.
    net.run_hearing(Duration::from_millis(100), &mut heard);
    assert_eq!(net.servers[1].outbox.unacknowledged(), 0);
    net.tell(1, &kills(6, 2));
    net.run_hearing(Duration::from_millis(300), &mut heard);
    assert_eq!(heard, kills(0, 8));
    assert_eq!(net.session.shared(), Some(&shared));
    assert_eq!(net.session.inbox_stats().gaps, 0);
    assert_eq!(net.servers[1].outbox.unacknowledged(), 0);
}

#[test]
fn a_new_connection_numbers_its_notices_afresh() {
    let mut net = Net::new(2);
    let mut heard = Vec::new();
    net.tell(0, &kills(0, 3));
    net.run_hearing(Duration::from_millis(100), &mut heard);
    // A redirect with no connection opened ahead: a new handshake, numbering from 0.
    let now = net.now;
    let redirect = token(now, &[addr(2)]);
    net.servers[0].send_token(now, TokenPurpose::Redirect, 1, &redirect);
    net.hand_over(0, 1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.on(1)));
    assert_eq!(net.session.stats().handoffs_prepared, 0);
    net.tell(1, &kills(3, 2));
    net.run_hearing(Duration::from_millis(300), &mut heard);
    assert_eq!(heard, kills(0, 5));
    let stats = net.session.inbox_stats();
    assert_eq!(stats.gaps, 0, "{stats:?}");
    // Both connections told the settings, then their events: numbered on from server 0's,
    // server 1's would have been taken for repeats and not delivered. (A resent notice
    // the client had not acknowledged yet is a repeat, and is allowed.)
    assert_eq!(stats.delivered, 2 + 5, "{stats:?}");
}

#[test]
fn a_delta_against_a_view_not_held_and_a_forged_section_are_refused_and_counted() {
    let mut net = Net::new(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.on(0)));
    net.run(Duration::from_millis(100));
    let tick = net.servers[0].tick;
    let latest = net.session.latest_snapshot().map(|s| s.tick);
    let head = |baseline_ticks| SnapshotHead::<Shooter> {
        tick: Tick(tick + 1000),
        baseline_ticks,
        ..Default::default()
    };
    let now = net.now;
    // A delta against tick + 995, which the client never had; then a full snapshot whose
    // entities are missing (the section ends after the head).
    net.servers[0].send_snapshot(now, None, (Some(&head(0)), &head(5)), true);
    net.servers[0].send_snapshot(now, None, (None, &head(0)), false);
    net.servers[0].ticking = false;
    net.run(Duration::from_millis(50));
    let stats = net.session.stats();
    assert_eq!(stats.snapshots_no_baseline, 1);
    assert_eq!(stats.snapshots_malformed, 1);
    // Neither was taken: the newest snapshot is still the server's own.
    let newest = net.session.latest_snapshot().map(|s| s.tick);
    assert!(newest.is_some_and(|t| t.0 < tick + 1000), "{newest:?}");
    assert!(latest.is_some());
}

/// A session with `token` against server 1 (ticking, admitting unless `admitting` is
/// false) alone, stepped until it connects or fails; returns the net and how long it
/// took.
fn connect_with(token: Vec<u8>, admitting: bool) -> (Net, Duration) {
    let mut servers = vec![FakeServer::new(addr(1))];
    servers[0].ticking = true;
    servers[0].netcode.set_admitting(admitting);
    let mut net = Net {
        now: START,
        session: Session::new(START, &token, 60),
        servers,
        playing: true,
        duplicate_to_client: false,
        wire: VecDeque::new(),
    };
    net.run_until(Duration::from_secs(12), |n| {
        n.session.is_connected() || n.session.state().is_error()
    });
    let took = net.now - START;
    (net, took)
}

#[test]
fn a_token_sealed_with_another_key_or_protocol_fails_in_under_three_seconds_and_says_why() {
    for (key, protocol_id) in [([9; 32], ARENA_PROTOCOL_ID), (KEY, ARENA_PROTOCOL_ID + 1)] {
        let (net, took) = connect_with(
            token_sealed_with(START, &[addr(1)], &key, protocol_id),
            true,
        );
        assert!(took < Duration::from_secs(3), "{took:?}");
        assert!(took >= CONNECT_ATTEMPT_TIMEOUT, "{took:?}");
        let failure = net.session.connect_failure();
        assert_eq!(
            failure,
            Some(ConnectFailure::NoAnswer {
                server: addr(1),
                servers: 1
            })
        );
        let text = failure.map(|f| f.to_string()).unwrap_or_default();
        assert!(
            text.contains("wrong key or protocol id, or the server is down"),
            "{text}"
        );
        assert!(!net.session.was_connected());
    }
}

#[test]
fn a_server_that_denies_is_told_apart_from_one_that_is_silent() {
    let (net, took) = connect_with(token(START, &[addr(1)]), false);
    assert!(took < Duration::from_secs(1), "{took:?}");
    let text = net.session.connect_failure().map(|f| f.to_string());
    assert!(
        text.as_deref()
            .is_some_and(|t| t.contains("the server is full or refused the token")),
        "{text:?}"
    );
}

#[test]
fn the_servers_tick_rate_and_view_radius_replace_the_guess() {
    let mut servers = vec![FakeServer::new(addr(1))];
    servers[0].ticking = true;
    servers[0].config.tick_hz = 30;
    let mut net = Net {
        now: START,
        session: Session::new(START, &token(START, &[addr(1)]), 60),
        servers,
        playing: true,
        duplicate_to_client: false,
        wire: VecDeque::new(),
    };
    assert_eq!(
        (net.session.tick_hz(), net.session.view_radius()),
        (60, None)
    );
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.session.latest_snapshot().is_some()
    }));
    assert_eq!(net.session.tick_hz(), 30);
    assert_eq!(net.session.view_radius(), Some(VIEW_RADIUS_M));
    assert_eq!(net.session.match_config().map(|c| c.tick_hz), Some(30));
    assert_eq!(net.session.connect_failure(), None);
}

#[test]
fn a_server_that_dies_is_an_interruption_until_a_standby_takes_the_match() {
    let mut net = Net::new(2);
    net.send_reconnect_token(0, &[addr(1), addr(2)]);
    assert_eq!(net.session.interruption(), None);
    net.servers[1].netcode.set_admitting(false);
    net.servers[0].alive = false;
    assert!(net.run_until(Duration::from_secs(2), |n| {
        n.session.interruption().is_some()
    }));
    let Some(interruption) = net.session.interruption() else {
        panic!("no interruption");
    };
    assert_eq!(interruption.server, Some(addr(1)));
    assert!(
        matches!(interruption.cause, InterruptionCause::Silent(quiet) if quiet >= SILENCE_BEFORE_RECONNECT),
        "{interruption:?}"
    );
    // Reconnect rounds to a denying standby do not replace what happened first.
    net.run(Duration::from_millis(1500));
    assert_eq!(net.session.interruption(), Some(interruption));
    assert_eq!(net.session.connect_failure(), None);
    // The standby takes over: its first snapshot ends the interruption.
    net.servers[1].netcode.set_admitting(true);
    net.servers[1].ticking = true;
    assert!(net.run_until(Duration::from_secs(3), |n| n.on(1)));
    net.run(Duration::from_millis(100));
    assert_eq!(net.session.interruption(), None);
}

#[test]
fn a_server_that_stops_says_it_disconnected_the_client() {
    let mut net = Net::new(1);
    net.send_reconnect_token(0, &[addr(1)]);
    let now = net.now;
    net.servers[0].netcode.set_admitting(false);
    net.servers[0].netcode.disconnect_all(now);
    net.servers[0].ticking = false;
    net.run(Duration::from_millis(200));
    let cause = net.session.interruption().map(|i| i.cause);
    assert_eq!(cause, Some(InterruptionCause::Disconnected));
    // Leaving on purpose afterwards does not change what happened.
    let now = net.now;
    net.session.disconnect(now);
    net.run(Duration::from_millis(100));
    assert_eq!(
        net.session.interruption().map(|i| i.cause),
        Some(InterruptionCause::Disconnected)
    );
}
