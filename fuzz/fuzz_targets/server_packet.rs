//! Feeds arbitrary datagrams to a netcode server that has a connected client and a
//! handshake in progress, so that every branch of `handle_packet` is reachable.
//! The first byte picks the source address: the connected client, the pending one, or a
//! stranger. Nothing may panic, and nothing may change who is connected.
//!
//! Time advances 50 ms per input, the rate at which one source's connection requests stay
//! within the server's per-source limit, so requests keep reaching the token opener
//! rather than all being rate-limited after the first burst.
#![no_main]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arena_shared::netcode::{Client, ConnectToken, Server, ServerConfig, TokenParams};
use libfuzzer_sys::fuzz_target;

const PROTOCOL_ID: u64 = 0x1122334455667788;
const KEY: [u8; 32] = [9; 32];
const NOW: Duration = Duration::from_secs(1_800_000_000);

struct Setup {
    server: Server,
    connected: SocketAddr,
    pending: SocketAddr,
}

fn token(client_id: u64) -> Vec<u8> {
    let params = TokenParams {
        protocol_id: PROTOCOL_ID,
        create_timestamp: NOW.as_secs(),
        // Far off: time advances with every input.
        expire_timestamp: NOW.as_secs() + 1_000_000_000,
        timeout_seconds: 5,
        public_addresses: vec!["127.0.0.1:40000".parse().unwrap()],
        internal_addresses: None,
        client_id,
        user_data: [0; 256],
    };
    ConnectToken::generate(&params, &KEY)
        .unwrap()
        .write()
        .unwrap()
        .to_vec()
}

/// A server with one connected client and one client half-way through the handshake.
fn setup() -> Setup {
    let mut server = Server::with_challenge_key(
        ServerConfig {
            protocol_id: PROTOCOL_ID,
            private_key: KEY,
            max_clients: 4,
            addresses: vec!["127.0.0.1:40000".parse().unwrap()],
        },
        [3; 32],
    );
    let connected: SocketAddr = "127.0.0.1:50001".parse().unwrap();
    let pending: SocketAddr = "127.0.0.1:50002".parse().unwrap();
    let mut client = Client::new(NOW, &token(1));
    for step in 0..10u64 {
        let now = NOW + Duration::from_millis(step * 100);
        client.update(now);
        while let Some(t) = client.poll_transmit() {
            let mut buf = t.contents;
            let _ = server.handle_packet(now, connected, &mut buf);
        }
        while let Some(t) = server.poll_transmit() {
            let mut buf = t.contents;
            let _ = client.handle_packet(now, "127.0.0.1:40000".parse().unwrap(), &mut buf);
        }
    }
    assert!(client.is_connected());
    let mut half = Client::new(NOW, &token(2));
    half.update(NOW);
    let mut request = half.poll_transmit().unwrap().contents;
    let _ = server.handle_packet(NOW, pending, &mut request);
    while server.poll_event().is_some() {}
    Setup {
        server,
        connected,
        pending,
    }
}

static SETUP: OnceLock<Mutex<Setup>> = OnceLock::new();
static INPUTS: AtomicU64 = AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let Some((&selector, datagram)) = data.split_first() else {
        return;
    };
    let mut setup = SETUP.get_or_init(|| Mutex::new(setup())).lock().unwrap();
    let from = match selector % 3 {
        0 => setup.connected,
        1 => setup.pending,
        _ => "10.9.8.7:1234".parse().unwrap(),
    };
    let mut buf = datagram.to_vec();
    let before = setup.server.stats().total_drops();
    let now = NOW + Duration::from_millis(50 * INPUTS.fetch_add(1, Ordering::Relaxed));
    let payload = setup.server.handle_packet(now, from, &mut buf).is_some();
    // Random bytes cannot forge a MAC: every datagram is dropped and counted.
    assert!(!payload);
    assert_eq!(setup.server.stats().total_drops(), before + 1);
    assert_eq!(setup.server.num_connected(), 1);
    while setup.server.poll_transmit().is_some() {}
});
