//! `MatchSnapshot`: the whole match at a tick boundary, in a self-describing format.
//!
//! ```text
//! magic    8   "ARENAMSN"
//! version  u16 format version (this build reads 2 only)
//! build    u64 build id of the writer (informational: a deployment hands off to a newer build)
//! match    u16 length, then UTF-8 match id
//! epoch    u64 ownership epoch of the writer
//! tick     u64 the tick the world is at
//! length   u64 payload bytes
//! checksum u64 FNV-1a over everything above and the payload
//! payload      bincode of `MatchState`
//! ```
//! All integers little-endian. Decoding checks every field before bincode runs and refuses
//! truncated, corrupt, foreign and newer-format data with an error that says which; it
//! never returns half a match.

use serde::{Deserialize, Serialize};

use crate::netcode::bytes::{Reader, Writer};
use crate::sim::hash::StableHasher;
use crate::sim::{PlayerId, Tick, World};

/// The first 8 bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"ARENAMSN";
/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 2;
/// Largest payload accepted, bytes (a 1024-player match is well under 1 MiB).
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
const MAX_MATCH_ID_BYTES: usize = 256;

/// A player's identity in the match: kept across reconnects, handoffs and restores.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RosterEntry {
    /// The netcode client id from the player's tokens.
    pub client_id: u64,
    /// The player in the world.
    pub player: PlayerId,
    /// The display name from the first token.
    pub name: String,
    /// Newest input sequence applied; older ones were all applied.
    pub last_applied_input: u32,
    /// Input frames of this player applied by the match (format 2).
    pub inputs_applied: u64,
}

/// Everything a match is, besides connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MatchState {
    /// The world, RNG and config included.
    pub world: World,
    /// Who the players are, by client id.
    pub roster: Vec<RosterEntry>,
    /// The id the next new player gets.
    pub next_player_id: u32,
}

/// What the header says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Format version.
    pub format_version: u16,
    /// Build id of the process that wrote it.
    pub build_id: u64,
    /// The match.
    pub match_id: String,
    /// The writer's ownership epoch.
    pub epoch: u64,
    /// The world's tick.
    pub tick: Tick,
}

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Ended before the header or the payload did.
    #[error("snapshot truncated: {0}")]
    Truncated(String),
    /// Does not start with the magic bytes: not a snapshot.
    #[error("not an Arena match snapshot (bad magic)")]
    BadMagic,
    /// Written by a newer format than this build reads.
    #[error("snapshot format {found} is newer than this build reads ({supported})")]
    NewerFormat {
        /// In the file.
        found: u16,
        /// Newest this build reads.
        supported: u16,
    },
    /// Written by an older format this build no longer reads.
    #[error("snapshot format {found} is older than this build reads ({supported})")]
    OlderFormat {
        /// In the file.
        found: u16,
        /// The format this build reads.
        supported: u16,
    },
    /// Another match's snapshot.
    #[error("snapshot is of match {found:?}, expected {expected:?}")]
    ForeignMatch {
        /// In the file.
        found: String,
        /// Wanted.
        expected: String,
    },
    /// The checksum does not match: bytes were altered.
    #[error("snapshot corrupt: checksum mismatch")]
    Corrupt,
    /// The header is inconsistent (bad lengths, or payload and header disagree).
    #[error("snapshot malformed: {0}")]
    Malformed(String),
}

/// An id for this build: the crate version, so logs show which build wrote a snapshot.
pub fn build_id() -> u64 {
    let mut h = StableHasher::default();
    h.bytes(env!("CARGO_PKG_VERSION").as_bytes());
    h.finish()
}

fn payload_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ MAX_PAYLOAD_BYTES as usize }>()
}

/// Encodes a snapshot of `state` as owned at `epoch`.
pub fn encode(match_id: &str, epoch: u64, state: &MatchState) -> Result<Vec<u8>, SnapshotError> {
    if match_id.len() > MAX_MATCH_ID_BYTES {
        return Err(SnapshotError::Malformed("match id over 256 bytes".into()));
    }
    let payload = bincode::serde::encode_to_vec(state, payload_config())
        .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let header_len = 8 + 2 + 8 + 2 + match_id.len() + 8 + 8 + 8 + 8;
    let mut out = vec![0u8; header_len + payload.len()];
    let mut w = Writer::new(&mut out);
    let fill = |w: &mut Writer<'_>| -> Result<(), crate::netcode::bytes::Truncated> {
        w.bytes(MAGIC)?;
        w.u16(FORMAT_VERSION)?;
        w.u64(build_id())?;
        w.u16(match_id.len() as u16)?;
        w.bytes(match_id.as_bytes())?;
        w.u64(epoch)?;
        w.u64(state.world.tick().0)?;
        w.u64(payload.len() as u64)
    };
    fill(&mut w).map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    let checksum_at = w.position();
    let mut h = StableHasher::default();
    h.bytes(&out[..checksum_at]);
    h.bytes(&payload);
    out[checksum_at..checksum_at + 8].copy_from_slice(&h.finish().to_le_bytes());
    out[checksum_at + 8..].copy_from_slice(&payload);
    Ok(out)
}

/// Reads only the header (for listings), checking magic and version.
pub fn read_header(bytes: &[u8]) -> Result<SnapshotHeader, SnapshotError> {
    parse(bytes).map(|(header, _, _)| header)
}

/// Decodes a snapshot of `expected_match`, checking everything before restoring the world.
pub fn decode(
    bytes: &[u8],
    expected_match: &str,
) -> Result<(SnapshotHeader, MatchState), SnapshotError> {
    let (header, checksum, payload_at) = parse(bytes)?;
    if header.match_id != expected_match {
        return Err(SnapshotError::ForeignMatch {
            found: header.match_id,
            expected: expected_match.to_owned(),
        });
    }
    let mut h = StableHasher::default();
    h.bytes(&bytes[..payload_at - 8]);
    h.bytes(&bytes[payload_at..]);
    if h.finish() != checksum {
        return Err(SnapshotError::Corrupt);
    }
    let (mut state, used) =
        bincode::serde::decode_from_slice::<MatchState, _>(&bytes[payload_at..], payload_config())
            .map_err(|e| SnapshotError::Malformed(e.to_string()))?;
    if used != bytes.len() - payload_at {
        return Err(SnapshotError::Malformed(
            "trailing bytes after the payload".into(),
        ));
    }
    if state.world.tick() != header.tick {
        return Err(SnapshotError::Malformed(format!(
            "header says tick {}, payload holds tick {}",
            header.tick.0,
            state.world.tick().0
        )));
    }
    state.world.rebuild_grids();
    Ok((header, state))
}

/// Checks the header; returns it, the checksum, and where the payload starts.
fn parse(bytes: &[u8]) -> Result<(SnapshotHeader, u64, usize), SnapshotError> {
    let truncated = |e: crate::netcode::bytes::Truncated| SnapshotError::Truncated(e.to_string());
    let mut r = Reader::new(bytes);
    if r.bytes(MAGIC.len()).map_err(truncated)? != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let format_version = r.u16().map_err(truncated)?;
    if format_version > FORMAT_VERSION {
        return Err(SnapshotError::NewerFormat {
            found: format_version,
            supported: FORMAT_VERSION,
        });
    }
    if format_version < FORMAT_VERSION {
        return Err(SnapshotError::OlderFormat {
            found: format_version,
            supported: FORMAT_VERSION,
        });
    }
    let build_id = r.u64().map_err(truncated)?;
    let id_len = usize::from(r.u16().map_err(truncated)?);
    if id_len > MAX_MATCH_ID_BYTES {
        return Err(SnapshotError::Malformed(format!(
            "match id of {id_len} bytes"
        )));
    }
    let match_id = String::from_utf8(r.bytes(id_len).map_err(truncated)?.to_vec())
        .map_err(|_| SnapshotError::Malformed("match id is not UTF-8".into()))?;
    let epoch = r.u64().map_err(truncated)?;
    let tick = Tick(r.u64().map_err(truncated)?);
    let length = r.u64().map_err(truncated)?;
    let checksum = r.u64().map_err(truncated)?;
    let payload_at = r.position();
    if length > MAX_PAYLOAD_BYTES {
        return Err(SnapshotError::Malformed(format!(
            "payload of {length} bytes"
        )));
    }
    let actual = (bytes.len() - payload_at) as u64;
    if actual < length {
        return Err(SnapshotError::Truncated(format!(
            "payload has {actual} of {length} bytes"
        )));
    }
    if actual > length {
        return Err(SnapshotError::Malformed(format!(
            "{} bytes after the payload",
            actual - length
        )));
    }
    Ok((
        SnapshotHeader {
            format_version,
            build_id,
            match_id,
            epoch,
            tick,
        },
        checksum,
        payload_at,
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sim::{Buttons, PlayerInput, WorldConfig};

    fn state(ticks: u64) -> MatchState {
        let mut world = World::new(WorldConfig {
            max_players: 16,
            tick_hz: 60,
            seed: 5,
        });
        for id in 1..=6 {
            world.add_player(PlayerId(id));
        }
        step(&mut world, ticks, 0);
        MatchState {
            world,
            roster: vec![RosterEntry {
                client_id: 77,
                player: PlayerId(1),
                name: "ann".into(),
                last_applied_input: 42,
                inputs_applied: 40,
            }],
            next_player_id: 7,
        }
    }

    /// Steps with inputs that depend only on the tick, so two runs get the same ones.
    fn step(world: &mut World, ticks: u64, _salt: u64) {
        for _ in 0..ticks {
            let t = world.tick().0;
            let inputs: BTreeMap<_, _> = (1..=6)
                .map(|id| {
                    let buttons = ((t / 30 + u64::from(id)) % 16) as u8
                        | if (t + u64::from(id)).is_multiple_of(7) {
                            Buttons::FIRE
                        } else {
                            0
                        };
                    (
                        PlayerId(id),
                        PlayerInput {
                            buttons,
                            aim: (t * 977 + u64::from(id) * 131) as u16,
                        },
                    )
                })
                .collect();
            world.step(&inputs);
        }
    }

    #[test]
    fn round_trip_then_step_matches_never_stopping() {
        let original = state(600);
        let bytes = encode("m1", 3, &original).expect("encodes");
        let (header, mut restored) = decode(&bytes, "m1").expect("decodes");
        assert_eq!(header.epoch, 3);
        assert_eq!(header.tick, original.world.tick());
        assert_eq!(restored.roster, original.roster);
        assert_eq!(restored.world.hash(), original.world.hash());
        let mut continued = original.world.clone();
        step(&mut continued, 1200, 0);
        step(&mut restored.world, 1200, 0);
        assert_eq!(restored.world.hash(), continued.hash());
    }

    #[test]
    fn every_kind_of_damage_is_refused_with_its_reason() {
        let bytes = encode("m1", 1, &state(60)).expect("encodes");
        // magic, version, build, id length, "m1", epoch, tick, length, checksum
        let payload_at = 8 + 2 + 8 + 2 + 2 + 8 + 8 + 8 + 8;

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(decode(&flipped, "m1").err(), Some(SnapshotError::Corrupt));
        let mut flipped_header = bytes.clone();
        flipped_header[payload_at - 20] ^= 1; // inside the tick field
        assert!(decode(&flipped_header, "m1").is_err());

        for cut in [0, 5, 20, payload_at - 1, payload_at + 10, bytes.len() - 1] {
            assert!(
                matches!(
                    decode(&bytes[..cut], "m1"),
                    Err(SnapshotError::Truncated(_) | SnapshotError::BadMagic)
                ),
                "cut at {cut}"
            );
        }
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, "m1").err(), Some(SnapshotError::BadMagic));
        let mut newer = bytes.clone();
        newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode(&newer, "m1"),
            Err(SnapshotError::NewerFormat { .. })
        ));
        let mut older = bytes.clone();
        older[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode(&older, "m1"),
            Err(SnapshotError::OlderFormat { found: 1, .. })
        ));
        assert!(matches!(
            decode(&bytes, "m2"),
            Err(SnapshotError::ForeignMatch { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode(&longer, "m1"),
            Err(SnapshotError::Malformed(_))
        ));
    }
}
