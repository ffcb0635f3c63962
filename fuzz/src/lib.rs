//! What the fuzz targets share: fixed keys and ids, real matches to encode, a
//! `MatchSnapshot` whose checksum verifies around any payload, the snapshot decoder's
//! checks, and sealing arbitrary plaintext the way `handoff::seal` does.
//!
//! # Layout
//!
//! - `fuzz_targets/`: one libFuzzer target per door (see the README's fuzzing section).
//! - `examples/seeds.rs`: writes the seed corpora under `corpus/<target>/`.
//! - this file: the helpers above.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::Duration;

use arena_server::handoff::Commit;
use arena_shared::game::{Game, MatchConfig, PlayerId, Tick};
use arena_shared::hash::StableHasher;
use arena_shared::netcode::Key;
use arena_shared::snapshot::{self, FORMAT_VERSION, MAGIC, MatchState, RosterEntry};
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305};

/// The fleet key every target uses.
pub const KEY: Key = [0x42; 32];
/// The match every target's snapshots are of.
pub const MATCH_ID: &str = "fuzz-match";
/// Unix time at which the targets run (token timestamps must make sense).
pub const NOW: Duration = Duration::from_secs(1_800_000_000);

/// What `handoff` derives its transit key with and binds as associated data. Copied here
/// (they are private there); [`check_sealing_matches`] fails the target at once if they
/// ever differ, rather than letting it fuzz only the outside of the seal.
const TRANSIT_CONTEXT: &str = "arena 2026-12-02 match handoff transit key v2";
const TRANSIT_AAD: &[u8] = b"arena match handoff v2";

/// A match of `G` with `players` players, stepped `ticks` ticks with inputs that depend
/// only on the tick.
pub fn sample_state<G: Game>(players: u32, ticks: u64, seed: u64) -> MatchState<G> {
    let mut world = G::new_state(&MatchConfig {
        max_players: 16,
        tick_hz: 60,
        seed,
    });
    for id in 1..=players {
        G::join(&mut world, PlayerId(id));
    }
    let mut events = Vec::new();
    for _ in 0..ticks {
        let inputs: BTreeMap<PlayerId, G::Input> = (1..=players)
            .map(|id| (PlayerId(id), G::Input::default()))
            .collect();
        events.clear();
        G::step(&mut world, &inputs, &mut events);
    }
    MatchState {
        world,
        roster: (1..=players)
            .map(|id| RosterEntry {
                client_id: u64::from(id) * 1000,
                player: PlayerId(id),
                name: format!("player {id}"),
                last_applied_input: id * 7,
                inputs_applied: u64::from(id) * 5,
            })
            .collect(),
        next_player_id: players + 1,
    }
}

/// A `MatchSnapshot` of `G` for [`MATCH_ID`] whose header and checksum are valid around
/// any `payload`, so the fuzzer's bytes reach the payload's decoder.
pub fn snapshot_around<G: Game>(schema: u32, epoch: u64, tick: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&snapshot::build_id().to_le_bytes());
    out.extend_from_slice(&(G::NAME.len() as u16).to_le_bytes());
    out.extend_from_slice(G::NAME.as_bytes());
    out.extend_from_slice(&schema.to_le_bytes());
    out.extend_from_slice(&(MATCH_ID.len() as u16).to_le_bytes());
    out.extend_from_slice(MATCH_ID.as_bytes());
    out.extend_from_slice(&epoch.to_le_bytes());
    out.extend_from_slice(&tick.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let mut h = StableHasher::default();
    h.bytes(&out);
    h.bytes(payload);
    out.extend_from_slice(&h.finish().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits a made-valid snapshot target's input into the tick its header says and the
/// payload: the first 8 bytes (little-endian) are the tick if even, twice it plus one if
/// odd (most payloads hold a tick the header does not; this lets half of them agree).
pub fn header_tick(input: &[u8]) -> (u64, &[u8]) {
    match input.split_first_chunk::<8>() {
        Some((tick, payload)) => {
            let tick = u64::from_le_bytes(*tick);
            (if tick & 1 == 0 { tick } else { tick >> 1 }, payload)
        }
        None => (0, input),
    }
}

/// The 8 bytes [`header_tick`] reads as `tick`.
pub fn tick_field(tick: Tick) -> [u8; 8] {
    let t = tick.0;
    (if t.is_multiple_of(2) { t } else { 2 * t + 1 }).to_le_bytes()
}

/// The payload of a snapshot that [`snapshot::encode`] wrote (everything after the
/// checksum), to seed the fuzzer with real payloads.
pub fn payload_of<G: Game>(snapshot: &[u8]) -> &[u8] {
    let header = 8 + 2 + 8 + 2 + G::NAME.len() + 4 + 2 + MATCH_ID.len() + 8 + 8 + 8 + 8;
    &snapshot[header.min(snapshot.len())..]
}

/// Decodes `bytes` as a snapshot of `G` and, if it decodes, checks that it encodes back
/// to a snapshot that decodes to the same match (the encoding is a fixpoint from there).
/// Panics on any difference; the decoder itself must never panic.
pub fn check_snapshot<G: Game>(bytes: &[u8], match_id: &str) {
    let header = snapshot::read_header(bytes);
    let Ok((decoded_header, state)) = snapshot::decode::<G>(bytes, match_id) else {
        return;
    };
    // What decodes has a header that reads, and says the same.
    assert_eq!(header.as_ref().ok(), Some(&decoded_header));
    assert_eq!(G::tick(&state.world), decoded_header.tick);
    let Ok(encoded) = snapshot::encode(match_id, decoded_header.epoch, &state) else {
        // Only an oversized id or name refuses to encode, and those did not decode.
        panic!("a decoded match does not encode");
    };
    let Ok((again_header, again)) = snapshot::decode::<G>(&encoded, match_id) else {
        panic!("a re-encoded match does not decode");
    };
    assert_eq!(again_header.epoch, decoded_header.epoch);
    assert_eq!(again_header.tick, decoded_header.tick);
    assert_eq!(again_header.match_id, decoded_header.match_id);
    assert_eq!(again_header.schema_version, G::SCHEMA_VERSION);
    assert_eq!(again.roster, state.roster);
    assert_eq!(again.next_player_id, state.next_player_id);
    assert_eq!(G::hash(&again.world), G::hash(&state.world));
    let Ok(twice) = snapshot::encode(match_id, again_header.epoch, &again) else {
        panic!("a re-decoded match does not encode");
    };
    assert_eq!(twice, encoded, "encoding is not a fixpoint");
}

/// The commit the targets seal snapshots for.
pub fn commit() -> Commit {
    Commit {
        recipient: "standby@127.0.0.1:7700".into(),
        match_id: MATCH_ID.into(),
        epoch: 3,
        handoff_id: 42,
        deadline_unix_ms: NOW.as_millis() as u64 + 2000,
        from_udp: std::net::SocketAddr::from(([127, 0, 0, 1], 7777)),
    }
}

/// Seals `plaintext` (nominally `u32 length ‖ JSON commit ‖ snapshot`, here anything)
/// under [`KEY`] as `handoff::seal` does: `nonce ‖ ciphertext ‖ tag`.
pub fn seal_plaintext(nonce: [u8; 24], plaintext: &[u8]) -> Vec<u8> {
    let key = blake3::derive_key(TRANSIT_CONTEXT, &KEY);
    let mut out = Vec::with_capacity(24 + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(plaintext);
    let cipher = XChaCha20Poly1305::new(&key.into());
    let Ok(tag) =
        cipher.encrypt_inout_detached(&nonce.into(), TRANSIT_AAD, out[24..].as_mut().into())
    else {
        panic!("sealing {} bytes failed", plaintext.len());
    };
    out.extend_from_slice(&tag);
    out
}

/// The plaintext `handoff::seal` puts behind the seal for `commit` and `snapshot`.
pub fn commit_plaintext(commit: &Commit, snapshot: &[u8]) -> Vec<u8> {
    let Ok(json) = serde_json::to_vec(commit) else {
        panic!("a commit always serializes");
    };
    let mut out = Vec::with_capacity(4 + json.len() + snapshot.len());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(snapshot);
    out
}

/// Fails at once if [`seal_plaintext`] no longer seals the way `handoff` opens.
pub fn check_sealing_matches() {
    let plaintext = commit_plaintext(&commit(), b"snapshot");
    let sealed = seal_plaintext([7; 24], &plaintext);
    match arena_server::handoff::open(&KEY, &sealed) {
        Ok((opened, bytes)) => {
            assert_eq!(opened, commit());
            assert_eq!(bytes, b"snapshot");
        }
        Err(e) => panic!("fuzz/src/lib.rs seals differently from server/src/handoff.rs: {e}"),
    }
    let real = arena_server::handoff::seal(&KEY, &commit(), b"snapshot");
    assert!(arena_server::handoff::open(&KEY, &real).is_ok());
}

/// The tick a state of `G` is at, as the snapshot header writes it.
pub fn tick_of<G: Game>(state: &MatchState<G>) -> Tick {
    G::tick(&state.world)
}
