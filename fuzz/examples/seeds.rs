//! Writes the seed corpora: a few valid encodings per target, so the fuzzer starts from
//! inputs that get past the first checks.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (from the repository root)
//! rewrites `fuzz/corpus/{game_message,match_snapshot,sealed_match}/seed-*`.

use std::path::Path;

use arena_fuzz::{
    KEY, MATCH_ID, commit, commit_plaintext, payload_of, sample_state, seal_plaintext, tick_field,
    tick_of,
};
use arena_server::handoff::seal;
use arena_shared::game::{Game, InputFrame, Tick};
use arena_shared::netcode::MAX_PAYLOAD_BYTES;
use arena_shared::protocol::messages::ClientMessage;
use arena_shared::protocol::{PacketHeader, encode};
use arena_shared::sim::{Buttons, PlayerInput, Shooter};
use arena_shared::snapshot;
use arena_tag::Tag;

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join(format!("seed-{name}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    println!("{} ({} bytes)", path.display(), bytes.len());
}

/// A game datagram of `frames` input frames from sequence `first`, for tick `tick` on.
fn inputs(first: u32, frames: u32, tick: u64) -> Vec<u8> {
    let frames = (0..frames)
        .map(|i| InputFrame {
            sequence: first + i,
            tick: Tick(tick + u64::from(i)),
            input: PlayerInput {
                buttons: if i.is_multiple_of(3) {
                    Buttons::FIRE
                } else {
                    0
                } | (i % 16) as u8,
                aim: (i * 4099) as u16,
            },
        })
        .collect();
    let header = PacketHeader {
        sequence: first as u16,
        ack: 3,
        ack_bits: 0b1011,
    };
    let mut out = [0u8; MAX_PAYLOAD_BYTES];
    let len = encode(
        header,
        &ClientMessage::<Shooter>::Inputs { frames },
        &mut out,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    out[..len].to_vec()
}

/// One operation of the game_message target: `op ‖ length (LE) ‖ bytes`.
fn op(code: u8, bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![code];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
    out
}

fn snapshot_of<G: Game>(players: u32, ticks: u64) -> (Vec<u8>, Tick) {
    let state = sample_state::<G>(players, ticks, 11);
    let bytes = snapshot::encode(MATCH_ID, 3, &state).unwrap_or_else(|e| panic!("{e}"));
    (bytes, tick_of(&state))
}

fn main() {
    // game_message: inputs as a client sends them, then ticks that apply them.
    write("game_message", "one-frame", &op(0, &inputs(1, 1, 2)));
    write(
        "game_message",
        "resent-frames-and-ticks",
        &[op(1, &inputs(1, 4, 2)), op(1, &inputs(2, 4, 3)), op(3, &[])].concat(),
    );
    write("game_message", "full-packet", &op(1, &inputs(10, 32, 20)));

    // match_snapshot: whole snapshots of both games, and payloads to wrap.
    let (shooter, shooter_tick) = snapshot_of::<Shooter>(2, 20);
    let (tag, tag_tick) = snapshot_of::<Tag>(3, 20);
    write(
        "match_snapshot",
        "shooter",
        &[&[0u8][..], &shooter].concat(),
    );
    write("match_snapshot", "tag", &[&[0u8][..], &tag].concat());
    let shooter_payload = [
        &tick_field(shooter_tick)[..],
        payload_of::<Shooter>(&shooter),
    ]
    .concat();
    let tag_payload = [&tick_field(tag_tick)[..], payload_of::<Tag>(&tag)].concat();
    write(
        "match_snapshot",
        "shooter-payload",
        &[&[1u8][..], &shooter_payload].concat(),
    );
    write(
        "match_snapshot",
        "tag-payload",
        &[&[2u8][..], &tag_payload].concat(),
    );

    // sealed_match: the body a standby receives, and its parts to seal.
    let body = seal(&KEY, &commit(), &shooter);
    write("sealed_match", "body", &[&[0u8][..], &body].concat());
    write(
        "sealed_match",
        "snapshot-to-seal",
        &[&[1u8][..], &shooter].concat(),
    );
    let plaintext = commit_plaintext(&commit(), &shooter);
    write(
        "sealed_match",
        "plaintext-to-seal",
        &[&[2u8][..], &plaintext].concat(),
    );
    write(
        "sealed_match",
        "payload-to-seal",
        &[&[3u8][..], &shooter_payload].concat(),
    );

    // The made-valid forms decode, so the seeds reach the payload decoders.
    let (tick, payload) = arena_fuzz::header_tick(&shooter_payload);
    let wrapped = arena_fuzz::snapshot_around::<Shooter>(Shooter::SCHEMA_VERSION, 3, tick, payload);
    assert!(snapshot::decode::<Shooter>(&wrapped, MATCH_ID).is_ok());
    let (tick, payload) = arena_fuzz::header_tick(&tag_payload);
    let wrapped = arena_fuzz::snapshot_around::<Tag>(Tag::SCHEMA_VERSION, 3, tick, payload);
    assert!(snapshot::decode::<Tag>(&wrapped, MATCH_ID).is_ok());
    arena_fuzz::check_sealing_matches();
    assert!(arena_server::handoff::open(&KEY, &seal_plaintext([1; 24], &plaintext)).is_ok());
}
