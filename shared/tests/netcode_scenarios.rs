//! netcode scenarios: a server and clients exchanging datagrams at a virtual time, no sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::netcode::{
    Client, ClientIndex, ClientState, ConnectToken, DisconnectReason, DropReason, Key, Server,
    ServerConfig, ServerEvent, TokenParams, Transmit,
};
use rand::{Rng, RngExt, SeedableRng};

const PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;
const PRIVATE_KEY: Key = [42; 32];
const START_UNIX: u64 = 1_800_000_000;
const STEP: Duration = Duration::from_millis(10);

fn server_addr() -> SocketAddr {
    "127.0.0.1:40000".parse().expect("addr")
}

fn client_addr(n: u32) -> SocketAddr {
    SocketAddr::from(([127, 0, (n >> 8) as u8 + 1, n as u8], 50000))
}

fn token_for(client_id: u64, now: Duration, key: &Key, addresses: Vec<SocketAddr>) -> Vec<u8> {
    let params = TokenParams {
        protocol_id: PROTOCOL_ID,
        create_timestamp: now.as_secs(),
        expire_timestamp: now.as_secs() + 30,
        timeout_seconds: 5,
        public_addresses: addresses,
        internal_addresses: None,
        client_id,
        user_data: [client_id as u8; 256],
    };
    ConnectToken::generate(&params, key)
        .expect("mints")
        .write()
        .expect("writes")
        .to_vec()
}

/// One server, its clients, and a perfect link between them at a virtual time.
struct Net {
    now: Duration,
    server: Server,
    clients: Vec<(SocketAddr, Client)>,
    /// Payloads the server received, per client index.
    server_received: Vec<(ClientIndex, Vec<u8>)>,
    client_received: Vec<Vec<Vec<u8>>>,
    events: Vec<ServerEvent>,
    /// Clients whose traffic is cut (both directions).
    cut: Vec<bool>,
}

impl Net {
    fn new(max_clients: usize) -> Self {
        let config = ServerConfig {
            protocol_id: PROTOCOL_ID,
            private_key: PRIVATE_KEY,
            max_clients,
            addresses: vec![server_addr()],
        };
        Self {
            now: Duration::from_secs(START_UNIX),
            server: Server::new(config),
            clients: Vec::new(),
            server_received: Vec::new(),
            client_received: Vec::new(),
            events: Vec::new(),
            cut: Vec::new(),
        }
    }

    fn add_client(&mut self, addr: SocketAddr, token: &[u8]) -> usize {
        self.clients.push((addr, Client::new(self.now, token)));
        self.client_received.push(Vec::new());
        self.cut.push(false);
        self.clients.len() - 1
    }

    fn add_new_client(&mut self, client_id: u64) -> usize {
        let token = token_for(client_id, self.now, &PRIVATE_KEY, vec![server_addr()]);
        self.add_client(client_addr(client_id as u32), &token)
    }

    /// Advances one step: updates, then delivers everything queued.
    fn step(&mut self) {
        self.now += STEP;
        self.server.update(self.now);
        for (_, client) in &mut self.clients {
            client.update(self.now);
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        // Bounded: each round only moves what was queued; replies go out next round.
        for _ in 0..4 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(t) = self.clients[i].1.poll_transmit() {
                    moved = true;
                    if self.cut[i] || t.destination != server_addr() {
                        continue;
                    }
                    let from = self.clients[i].0;
                    let mut buf = t.contents;
                    if let Some((client, payload)) =
                        self.server.handle_packet(self.now, from, &mut buf)
                    {
                        self.server_received.push((client, payload.to_vec()));
                    }
                }
            }
            while let Some(event) = self.server.poll_event() {
                self.events.push(event);
            }
            while let Some(Transmit {
                destination,
                contents,
            }) = self.server.poll_transmit()
            {
                moved = true;
                let Some(i) = self.clients.iter().position(|(a, _)| *a == destination) else {
                    continue;
                };
                if self.cut[i] {
                    continue;
                }
                let mut buf = contents;
                if let Some(payload) =
                    self.clients[i]
                        .1
                        .handle_packet(self.now, server_addr(), &mut buf)
                {
                    self.client_received[i].push(payload.to_vec());
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Steps until `done` holds, at most `limit` of virtual time.
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

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.step();
        }
    }

    fn state(&self, i: usize) -> ClientState {
        self.clients[i].1.state()
    }

    fn index_of(&self, client_id: u64) -> ClientIndex {
        self.server
            .find_client(client_id)
            .expect("client connected")
    }
}

#[test]
fn a_client_connects_and_payloads_flow_both_ways() {
    let mut net = Net::new(16);
    let c = net.add_new_client(7);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::Connected));
    assert!(matches!(
        net.events.as_slice(),
        [ServerEvent::ClientConnected { client_id: 7, user_data, .. }] if user_data[0] == 7
    ));
    let index = net.index_of(7);

    let now = net.now;
    net.clients[c]
        .1
        .send_payload(now, b"input")
        .expect("connected");
    net.server
        .send_payload(now, index, b"snapshot")
        .expect("connected");
    net.deliver();
    assert_eq!(net.server_received, vec![(index, b"input".to_vec())]);
    assert_eq!(net.client_received[c], vec![b"snapshot".to_vec()]);
    assert_eq!(net.server.stats().total_drops(), 0);
}

#[test]
fn an_idle_connection_is_kept_alive() {
    let mut net = Net::new(4);
    let c = net.add_new_client(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::Connected));
    // Four times the 5 s timeout with no payload at all.
    net.run_for(Duration::from_secs(20));
    assert_eq!(net.state(c), ClientState::Connected);
    assert_eq!(net.server.num_connected(), 1);
}

#[test]
fn a_silent_client_times_out_on_the_server_and_a_silent_server_on_the_client() {
    let mut net = Net::new(4);
    let c = net.add_new_client(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::Connected));
    net.cut[c] = true;
    let cut_at = net.now;
    assert!(net.run_until(Duration::from_secs(6), |n| n.server.num_connected() == 0));
    let waited = net.now - cut_at;
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_millis(5100),
        "{waited:?}"
    );
    assert!(net.events.iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected {
            reason: DisconnectReason::TimedOut,
            ..
        }
    )));
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::ConnectionTimedOut));
}

#[test]
fn either_side_can_disconnect() {
    let mut net = Net::new(4);
    let a = net.add_new_client(1);
    let b = net.add_new_client(2);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.state(a) == ClientState::Connected && n.state(b) == ClientState::Connected
    }));
    let now = net.now;
    net.clients[a].1.disconnect(now);
    net.deliver();
    assert_eq!(net.state(a), ClientState::Disconnected);
    assert!(net.events.iter().any(|e| matches!(
        e,
        ServerEvent::ClientDisconnected {
            client_id: 1,
            reason: DisconnectReason::ClientDisconnected,
            ..
        }
    )));

    let index = net.index_of(2);
    net.server.disconnect(now, index);
    net.deliver();
    assert_eq!(net.state(b), ClientState::Disconnected);
    assert_eq!(net.server.num_connected(), 0);
}

#[test]
fn a_full_server_denies() {
    let mut net = Net::new(1);
    let a = net.add_new_client(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(a)
        == ClientState::Connected));
    let b = net.add_new_client(2);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(b)
        == ClientState::Denied));
    assert!(net.server.stats().drops(DropReason::ServerFull) >= 1);
    assert_eq!(net.state(a), ClientState::Connected);
}

#[test]
fn a_capacity_below_the_slots_denies_like_a_full_server_and_frees_on_leave() {
    let mut net = Net::new(8);
    net.server.set_capacity(2);
    assert_eq!(net.server.capacity(), 2);
    let a = net.add_new_client(1);
    let b = net.add_new_client(2);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.state(a) == ClientState::Connected && n.state(b) == ClientState::Connected
    }));
    let c = net.add_new_client(3);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::Denied));
    assert!(net.server.stats().drops(DropReason::ServerFull) >= 1);
    assert_eq!(net.server.num_connected(), 2);
    // One leaves: the next one gets in.
    let now = net.now;
    net.clients[a].1.disconnect(now);
    net.deliver();
    let d = net.add_new_client(4);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(d)
        == ClientState::Connected));
    assert_eq!(net.server.num_connected(), 2);
    // Never above the slots.
    net.server.set_capacity(100);
    assert_eq!(net.server.capacity(), 8);
}

#[test]
fn an_expired_token_is_refused() {
    let mut net = Net::new(4);
    let params = TokenParams {
        protocol_id: PROTOCOL_ID,
        create_timestamp: START_UNIX - 60,
        expire_timestamp: START_UNIX - 30,
        timeout_seconds: 5,
        public_addresses: vec![server_addr()],
        internal_addresses: None,
        client_id: 9,
        user_data: [0; 256],
    };
    let token = ConnectToken::generate(&params, &PRIVATE_KEY)
        .expect("mints")
        .write()
        .expect("writes");
    let c = net.add_client(client_addr(9), &token);
    assert!(net.run_until(Duration::from_secs(40), |n| n.state(c).is_error()));
    assert_eq!(net.server.num_connected(), 0);
    assert!(net.server.stats().drops(DropReason::ExpiredToken) >= 1);
}

#[test]
fn a_token_sealed_with_another_key_is_refused() {
    let mut net = Net::new(4);
    let token = token_for(3, net.now, &[0xee; 32], vec![server_addr()]);
    let c = net.add_client(client_addr(3), &token);
    assert!(net.run_until(Duration::from_secs(10), |n| n.state(c)
        == ClientState::RequestTimedOut));
    assert!(net.server.stats().drops(DropReason::DecryptFailed) >= 1);
    assert_eq!(net.server.num_connected(), 0);
}

#[test]
fn a_replayed_packet_is_dropped() {
    let mut net = Net::new(4);
    let c = net.add_new_client(1);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(c)
        == ClientState::Connected));
    let now = net.now;
    net.clients[c]
        .1
        .send_payload(now, b"fire")
        .expect("connected");
    let datagram = net.clients[c].1.poll_transmit().expect("queued");
    let from = net.clients[c].0;
    let mut first = datagram.contents.clone();
    assert!(net.server.handle_packet(now, from, &mut first).is_some());
    let mut replay = datagram.contents.clone();
    assert!(net.server.handle_packet(now, from, &mut replay).is_none());
    assert_eq!(net.server.stats().drops(DropReason::Replayed), 1);
}

#[test]
fn a_token_reused_from_another_address_is_refused() {
    let mut net = Net::new(4);
    let token = token_for(5, net.now, &PRIVATE_KEY, vec![server_addr()]);
    let a = net.add_client(client_addr(5), &token);
    assert!(net.run_until(Duration::from_secs(1), |n| n.state(a)
        == ClientState::Connected));
    let thief = net.add_client(client_addr(99), &token);
    net.run_for(Duration::from_secs(1));
    assert_ne!(net.state(thief), ClientState::Connected);
    assert!(
        net.server.stats().drops(DropReason::TokenReuse) > 0
            || net.server.stats().drops(DropReason::AlreadyConnected) > 0
    );

    // Even once the owner has left, the token stays bound to its first address.
    let now = net.now;
    net.clients[a].1.disconnect(now);
    net.deliver();
    let reuse_before = net.server.stats().drops(DropReason::TokenReuse);
    net.run_for(Duration::from_secs(1));
    assert_ne!(net.state(thief), ClientState::Connected);
    assert!(net.server.stats().drops(DropReason::TokenReuse) > reuse_before);
}

#[test]
fn a_second_client_id_mints_and_connects() {
    let mut net = Net::new(4);
    let a = net.add_new_client(100);
    let b = net.add_new_client(200);
    assert!(net.run_until(Duration::from_secs(1), |n| {
        n.state(a) == ClientState::Connected && n.state(b) == ClientState::Connected
    }));
    assert_ne!(net.index_of(100), net.index_of(200));
}

#[test]
fn the_client_tries_the_token_addresses_in_order() {
    let mut net = Net::new(4);
    let dead: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let token = token_for(8, net.now, &PRIVATE_KEY, vec![dead, server_addr()]);
    let c = net.add_client(client_addr(8), &token);
    assert_eq!(net.clients[c].1.server_address(), Some(dead));
    assert!(net.run_until(Duration::from_secs(7), |n| n.state(c)
        == ClientState::Connected));
    assert_eq!(net.clients[c].1.server_address(), Some(server_addr()));
}

#[test]
fn a_thousand_clients_connect_to_one_server() {
    let mut net = Net::new(1024);
    for id in 0..1000 {
        net.add_new_client(id);
    }
    assert!(net.run_until(Duration::from_secs(2), |n| n.server.num_connected() == 1000));
    assert!(net.clients.iter().all(|(_, c)| c.is_connected()));
    assert_eq!(net.server.stats().total_drops(), 0);
}

#[test]
fn garbage_never_panics_and_never_hurts_connected_clients() {
    let seed = 0x5eed_u64;
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    let mut net = Net::new(64);
    for id in 0..8 {
        net.add_new_client(id);
    }
    assert!(net.run_until(Duration::from_secs(1), |n| n.server.num_connected() == 8));

    // Samples of every kind of real datagram to mutate: requests, payloads, keep-alives.
    let mut samples: Vec<(SocketAddr, Vec<u8>)> = Vec::new();
    let now = net.now;
    for (addr, client) in &mut net.clients {
        client.send_payload(now, &[7; 100]).expect("connected");
        while let Some(t) = client.poll_transmit() {
            samples.push((*addr, t.contents));
        }
    }
    let fresh = token_for(1000, now, &PRIVATE_KEY, vec![server_addr()]);
    let mut fresh_client = Client::new(now, &fresh);
    fresh_client.update(now);
    let request = fresh_client.poll_transmit().expect("request").contents;
    samples.push((client_addr(1000), request));

    let drops_before = net.server.stats().total_drops();
    let events_before = net.events.len();
    const DATAGRAMS: u64 = 100_000;
    for i in 0..DATAGRAMS {
        let (from, mut datagram) = match i % 3 {
            0 => {
                let len = rng.random_range(0..1400);
                let mut bytes = vec![0u8; len];
                rng.fill_bytes(&mut bytes);
                if len > 0 && rng.random_bool(0.3) {
                    bytes[0] = rng.random_range(0..7);
                }
                let from = net.clients[rng.random_range(0..net.clients.len())].0;
                (from, bytes)
            }
            1 => {
                let (from, sample) = &samples[rng.random_range(0..samples.len())];
                let cut = rng.random_range(0..sample.len());
                (*from, sample[..cut].to_vec())
            }
            _ => {
                let (from, sample) = &samples[rng.random_range(0..samples.len())];
                let mut bytes = sample.clone();
                // Distinct bits, so two flips never cancel out into the original.
                let mut bits = std::collections::BTreeSet::new();
                while bits.len() < rng.random_range(1..4) {
                    bits.insert(rng.random_range(0..bytes.len() * 8));
                }
                for bit in bits {
                    bytes[bit / 8] ^= 1 << (bit % 8);
                }
                (*from, bytes)
            }
        };
        let got = net.server.handle_packet(now, from, &mut datagram);
        assert!(
            got.is_none(),
            "seed {seed}: datagram {i} was accepted as a payload"
        );
    }
    let stats = net.server.stats().clone();
    assert_eq!(stats.total_drops() - drops_before, DATAGRAMS, "seed {seed}");
    while let Some(event) = net.server.poll_event() {
        net.events.push(event);
    }
    assert_eq!(
        net.events.len(),
        events_before,
        "garbage changed who is connected"
    );
    let counts: Vec<String> = stats
        .drop_counts()
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| format!("{}={n}", r.name()))
        .collect();
    println!(
        "drops after {DATAGRAMS} garbage datagrams: {}",
        counts.join(" ")
    );

    // Everyone is still connected, and payloads still flow.
    while net.server.poll_transmit().is_some() {}
    net.run_for(Duration::from_secs(1));
    assert_eq!(net.server.num_connected(), 8);
    let now = net.now;
    for (_, client) in &mut net.clients {
        client.send_payload(now, b"still here").expect("connected");
    }
    net.server_received.clear();
    net.deliver();
    assert_eq!(net.server_received.len(), 8);
}
