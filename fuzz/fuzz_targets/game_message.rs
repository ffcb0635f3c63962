//! A connected client's payloads through the server's game layer.
//!
//! Two layers, every input through both:
//! - the shared decoders: `decode_inputs` (the core's hot path) and `decode_client` (the
//!   same wire format, allocating) must agree on every input, and what they accept must
//!   encode back to something they decode the same (decode ∘ encode is the identity on
//!   what decodes); `decode_server` (what a client decodes) must not panic either;
//! - the core: a `ServerCore<Shooter>` with one client connected over a real handshake;
//!   the fuzzer's bytes are sealed by that client's real netcode state, so they pass the
//!   MAC and reach `ServerCore::handle_datagram`'s decoding, the ack tracker, the input
//!   buffers and then the ticks that apply them.
//!
//! The input is a sequence of operations, `op (1) ‖ length (2, LE) ‖ bytes`: `op % 4` is
//! 0 a payload, 1 a payload then a tick, 2 a raw (unsealed) datagram from the client's
//! address, 3 a tick. The core is kept across inputs (a handshake per input would cost
//! more than the fuzzing), so it accumulates state as a long-lived server does.
//! Properties: nothing panics; a payload counts as a bad message exactly when
//! `decode_inputs` refuses it; the client stays connected and its player in the match.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use arena_fuzz::{KEY, NOW};
use arena_server::core::{CoreConfig, ServerCore, TokenConfig};
use arena_shared::game::InputFrame;
use arena_shared::identity::{ARENA_PROTOCOL_ID, TokenRequest, mint_token};
use arena_shared::netcode::{self, Client, MAX_PAYLOAD_BYTES};
use arena_shared::protocol::encode;
use arena_shared::protocol::messages::{
    ClientMessage, decode_client, decode_inputs, decode_server,
};
use arena_shared::sim::{PlayerInput, Shooter, WorldConfig};
use libfuzzer_sys::fuzz_target;

const TICK: Duration = Duration::from_nanos(16_666_667);
const MAX_OPS: usize = 16;

struct Setup {
    core: ServerCore<Shooter>,
    client: Client,
    client_address: SocketAddr,
    now: Duration,
    frames: Vec<InputFrame<PlayerInput>>,
}

fn server_address() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 40000))
}

fn setup() -> Setup {
    let server_address = server_address();
    let mut core = ServerCore::<Shooter>::new(CoreConfig {
        match_id: arena_fuzz::MATCH_ID.into(),
        netcode: netcode::ServerConfig {
            protocol_id: ARENA_PROTOCOL_ID,
            private_key: KEY,
            max_clients: 4,
            addresses: vec![server_address],
        },
        world: WorldConfig {
            max_players: 4,
            tick_hz: 60,
            seed: 7,
        },
        view_radius_m: 30.0,
        client_bytes_per_s: 16_000,
        workers: 1,
        tokens: TokenConfig {
            own_address: server_address,
            peers: vec![SocketAddr::from(([127, 0, 0, 1], 40001))],
            timeout_s: -1,
            expire_s: 600,
        },
    });
    let token = mint_token(
        &TokenRequest {
            protocol_id: ARENA_PROTOCOL_ID,
            server_addresses: vec![server_address],
            client_id: 77,
            name: "fuzz".into(),
            now_unix_s: NOW.as_secs(),
            expire_s: 3600,
            // No timeout: the fuzzer's operations, not a clock, decide what arrives.
            timeout_s: -1,
            spectator: false,
        },
        &KEY,
    )
    .unwrap_or_else(|e| panic!("mint: {e}"));
    let client_address = SocketAddr::from(([127, 0, 0, 1], 50000));
    let mut client = Client::with_token(NOW, token);
    let mut now = NOW;
    for _ in 0..100 {
        client.update(now);
        while let Some(mut t) = client.poll_transmit() {
            core.handle_datagram(now, client_address, &mut t.contents);
        }
        core.tick(now);
        while let Some(mut t) = core.poll_transmit() {
            let _ = client.handle_packet(now, server_address, &mut t.contents);
            core.recycle(t.contents);
        }
        if client.is_connected() && core.num_players() == 1 {
            break;
        }
        now += TICK;
    }
    assert!(
        client.is_connected() && core.num_players() == 1,
        "setup: no connection"
    );
    Setup {
        core,
        client,
        client_address,
        now,
        frames: Vec::new(),
    }
}

/// The shared decoders on `payload`: they agree, and what they accept round-trips.
fn check_decoders(payload: &[u8], frames: &mut Vec<InputFrame<PlayerInput>>) -> bool {
    let fast = decode_inputs::<Shooter>(payload, frames);
    let slow = decode_client::<Shooter>(payload);
    let _ = decode_server::<Shooter>(payload);
    match (fast, slow) {
        (
            Ok(header),
            Ok((
                slow_header,
                ClientMessage::Inputs {
                    frames: slow_frames,
                },
            )),
        ) => {
            assert_eq!(header, slow_header);
            assert_eq!(*frames, slow_frames);
            let mut out = [0u8; MAX_PAYLOAD_BYTES];
            let message = ClientMessage::<Shooter>::Inputs {
                frames: frames.clone(),
            };
            let len = encode(header, &message, &mut out)
                .unwrap_or_else(|e| panic!("what decoded does not encode: {e}"));
            assert!(
                len <= payload.len(),
                "re-encoding grew {} to {len}",
                payload.len()
            );
            let Ok((again_header, again)) = decode_client::<Shooter>(&out[..len]) else {
                panic!("a re-encoded message does not decode");
            };
            assert_eq!(again_header, header);
            assert_eq!(again, message);
            true
        }
        (Err(_), Err(_)) => false,
        (fast, slow) => panic!("the decoders disagree: {fast:?} vs {slow:?}"),
    }
}

fn tick(setup: &mut Setup) {
    setup.now += TICK;
    setup.core.tick(setup.now);
    while let Some(t) = setup.core.poll_transmit() {
        setup.core.recycle(t.contents);
    }
}

static SETUP: OnceLock<Mutex<Setup>> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let mut guard = SETUP
        .get_or_init(|| Mutex::new(setup()))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let setup = &mut *guard;
    let mut rest = data;
    for _ in 0..MAX_OPS {
        let Some((&[op, lo, hi], tail)) = rest.split_first_chunk::<3>() else {
            break;
        };
        let len = usize::from(u16::from_le_bytes([lo, hi])).min(tail.len());
        let (bytes, tail) = tail.split_at(len);
        rest = tail;
        match op % 4 {
            0 | 1 => {
                let decodes = check_decoders(bytes, &mut setup.frames);
                let now = setup.now;
                if setup.client.send_payload(now, bytes).is_ok() {
                    let bad_before = setup.core.stats().bad_messages;
                    while let Some(mut t) = setup.client.poll_transmit() {
                        setup
                            .core
                            .handle_datagram(now, setup.client_address, &mut t.contents);
                    }
                    let counted_bad = setup.core.stats().bad_messages - bad_before;
                    assert_eq!(
                        counted_bad,
                        u64::from(!decodes),
                        "the core judged differently"
                    );
                }
                if op % 4 == 1 {
                    tick(setup);
                }
            }
            2 => {
                let mut datagram = bytes.to_vec();
                let now = setup.now;
                setup
                    .core
                    .handle_datagram(now, setup.client_address, &mut datagram);
            }
            _ => tick(setup),
        }
    }
    assert_eq!(setup.core.num_players(), 1, "the client's player left");
    assert!(setup.client.is_connected());
});
