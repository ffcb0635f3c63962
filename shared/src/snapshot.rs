//! `MatchSnapshot`: the whole match at a tick boundary, in a self-describing format.
//!
//! ```text
//! magic    8   "ARENAMSN"
//! version  u16 format version (this build reads 3 only)
//! build    u64 build id of the writer (informational: a deployment hands off to a newer build)
//! game     u16 length, then UTF-8 game name (`Game::NAME`)
//! schema   u32 the game's state layout (`Game::SCHEMA_VERSION`)
//! match    u16 length, then UTF-8 match id
//! epoch    u64 ownership epoch of the writer
//! tick     u64 the tick the world is at
//! length   u64 payload bytes
//! checksum u64 FNV-1a over everything above and the payload
//! payload      bincode of the roster, the next player id, and the game's state (bincode
//!              bytes of `Game::State`, length-prefixed, so another schema can be migrated)
//! ```
//! All integers little-endian. Decoding checks every field before bincode runs and refuses
//! truncated, corrupt, foreign and newer-format data with an error that says which; it
//! never returns half a match.

use serde::{Deserialize, Serialize};

use crate::game::{Game, PlayerId, Tick};
use crate::hash::StableHasher;
use crate::netcode::bytes::{Reader, Writer};

/// The first 8 bytes of every snapshot.
pub const MAGIC: &[u8; 8] = b"ARENAMSN";
/// The format this build writes and the newest it reads.
pub const FORMAT_VERSION: u16 = 3;
/// Largest payload accepted, bytes (a 1024-player match is well under 1 MiB).
pub const MAX_PAYLOAD_BYTES: u64 = 64 * 1024 * 1024;
const MAX_MATCH_ID_BYTES: usize = 256;
const MAX_GAME_NAME_BYTES: usize = 64;

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
#[derive(Debug, Clone)]
pub struct MatchState<G: Game> {
    /// The game's state, RNG and config included.
    pub world: G::State,
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
    /// The game it is a match of.
    pub game: String,
    /// The layout of the game's state.
    pub schema_version: u32,
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
    /// A match of another game.
    #[error("snapshot is of the game {found:?}, this server runs {expected:?}")]
    ForeignGame {
        /// In the file.
        found: String,
        /// This server's game.
        expected: String,
    },
    /// The game's state is of a schema this build cannot read or convert.
    #[error("snapshot's {game} state is schema {found}, this build reads {supported}: {reason}")]
    Schema {
        /// The game.
        game: String,
        /// In the file.
        found: u32,
        /// The game's own.
        supported: u32,
        /// What the game's `migrate` said.
        reason: String,
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

/// The payload's layout: the game's state as bytes of its own, so a snapshot of another
/// schema can still be opened and handed to the game's `migrate`.
#[derive(Deserialize)]
struct Payload {
    roster: Vec<RosterEntry>,
    next_player_id: u32,
    game: Vec<u8>,
}

/// [`Payload`] as written, borrowing (bincode writes a slice as it writes a `Vec`).
#[derive(Serialize)]
struct PayloadRef<'a> {
    roster: &'a [RosterEntry],
    next_player_id: u32,
    game: &'a [u8],
}

/// Encodes a snapshot of `state` as owned at `epoch`.
pub fn encode<G: Game>(
    match_id: &str,
    epoch: u64,
    state: &MatchState<G>,
) -> Result<Vec<u8>, SnapshotError> {
    if match_id.len() > MAX_MATCH_ID_BYTES {
        return Err(SnapshotError::Malformed("match id over 256 bytes".into()));
    }
    if G::NAME.len() > MAX_GAME_NAME_BYTES {
        return Err(SnapshotError::Malformed("game name over 64 bytes".into()));
    }
    let malformed = |e: bincode::error::EncodeError| SnapshotError::Malformed(e.to_string());
    let game = bincode::serde::encode_to_vec(&state.world, payload_config()).map_err(malformed)?;
    let payload = bincode::serde::encode_to_vec(
        PayloadRef {
            roster: &state.roster,
            next_player_id: state.next_player_id,
            game: &game,
        },
        payload_config(),
    )
    .map_err(malformed)?;
    let header_len = 8 + 2 + 8 + 2 + G::NAME.len() + 4 + 2 + match_id.len() + 8 + 8 + 8 + 8;
    let mut out = vec![0u8; header_len + payload.len()];
    let mut w = Writer::new(&mut out);
    let fill = |w: &mut Writer<'_>| -> Result<(), crate::netcode::bytes::Truncated> {
        w.bytes(MAGIC)?;
        w.u16(FORMAT_VERSION)?;
        w.u64(build_id())?;
        w.u16(G::NAME.len() as u16)?;
        w.bytes(G::NAME.as_bytes())?;
        w.u32(G::SCHEMA_VERSION)?;
        w.u16(match_id.len() as u16)?;
        w.bytes(match_id.as_bytes())?;
        w.u64(epoch)?;
        w.u64(G::tick(&state.world).0)?;
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

/// Decodes a snapshot of `expected_match` of the game `G`, checking everything before
/// restoring the state; a state of another schema goes through `G::migrate`.
pub fn decode<G: Game>(
    bytes: &[u8],
    expected_match: &str,
) -> Result<(SnapshotHeader, MatchState<G>), SnapshotError> {
    let (header, checksum, payload_at) = parse(bytes)?;
    if header.game != G::NAME {
        return Err(SnapshotError::ForeignGame {
            found: header.game,
            expected: G::NAME.to_owned(),
        });
    }
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
    let malformed = |e: bincode::error::DecodeError| SnapshotError::Malformed(e.to_string());
    let (payload, used) =
        bincode::serde::decode_from_slice::<Payload, _>(&bytes[payload_at..], payload_config())
            .map_err(malformed)?;
    if used != bytes.len() - payload_at {
        return Err(SnapshotError::Malformed(
            "trailing bytes after the payload".into(),
        ));
    }
    let mut world = if header.schema_version == G::SCHEMA_VERSION {
        let (world, used) =
            bincode::serde::decode_from_slice::<G::State, _>(&payload.game, payload_config())
                .map_err(malformed)?;
        if used != payload.game.len() {
            return Err(SnapshotError::Malformed(
                "trailing bytes after the game's state".into(),
            ));
        }
        world
    } else {
        G::migrate(header.schema_version, &payload.game).map_err(|reason| {
            SnapshotError::Schema {
                game: G::NAME.to_owned(),
                found: header.schema_version,
                supported: G::SCHEMA_VERSION,
                reason,
            }
        })?
    };
    if G::tick(&world) != header.tick {
        return Err(SnapshotError::Malformed(format!(
            "header says tick {}, payload holds tick {}",
            header.tick.0,
            G::tick(&world).0
        )));
    }
    G::restored(&mut world);
    Ok((
        header,
        MatchState {
            world,
            roster: payload.roster,
            next_player_id: payload.next_player_id,
        },
    ))
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
    let game_len = usize::from(r.u16().map_err(truncated)?);
    if game_len > MAX_GAME_NAME_BYTES {
        return Err(SnapshotError::Malformed(format!(
            "game name of {game_len} bytes"
        )));
    }
    let game = String::from_utf8(r.bytes(game_len).map_err(truncated)?.to_vec())
        .map_err(|_| SnapshotError::Malformed("game name is not UTF-8".into()))?;
    let schema_version = r.u32().map_err(truncated)?;
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
            game,
            schema_version,
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
    use crate::sim::{Buttons, PlayerInput, Shooter, World, WorldConfig};

    fn state(ticks: u64) -> MatchState<Shooter> {
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
        let (header, mut restored) = decode::<Shooter>(&bytes, "m1").expect("decodes");
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
        // magic, version, build, game length, "arena", schema, id length, "m1", epoch,
        // tick, length, checksum
        let payload_at = 8 + 2 + 8 + 2 + 5 + 4 + 2 + 2 + 8 + 8 + 8 + 8;

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(
            decode::<Shooter>(&flipped, "m1").err(),
            Some(SnapshotError::Corrupt)
        );
        let mut flipped_header = bytes.clone();
        flipped_header[payload_at - 20] ^= 1; // inside the tick field
        assert!(decode::<Shooter>(&flipped_header, "m1").is_err());

        for cut in [0, 5, 20, payload_at - 1, payload_at + 10, bytes.len() - 1] {
            assert!(
                matches!(
                    decode::<Shooter>(&bytes[..cut], "m1"),
                    Err(SnapshotError::Truncated(_) | SnapshotError::BadMagic)
                ),
                "cut at {cut}"
            );
        }
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(
            decode::<Shooter>(&magic, "m1").err(),
            Some(SnapshotError::BadMagic)
        );
        let mut newer = bytes.clone();
        newer[8..10].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
        assert!(matches!(
            decode::<Shooter>(&newer, "m1"),
            Err(SnapshotError::NewerFormat { .. })
        ));
        let mut older = bytes.clone();
        older[8..10].copy_from_slice(&1u16.to_le_bytes());
        assert!(matches!(
            decode::<Shooter>(&older, "m1"),
            Err(SnapshotError::OlderFormat { found: 1, .. })
        ));
        assert!(matches!(
            decode::<Shooter>(&bytes, "m2"),
            Err(SnapshotError::ForeignMatch { .. })
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode::<Shooter>(&longer, "m1"),
            Err(SnapshotError::Malformed(_))
        ));
    }

    /// A game like the shooter in every way but its name and schema.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    struct Renamed<const SCHEMA: u32>;

    impl<const SCHEMA: u32> Game for Renamed<SCHEMA> {
        const NAME: &'static str = if SCHEMA == 1 { "other" } else { "arena" };
        const SCHEMA_VERSION: u32 = SCHEMA;
        type Input = <Shooter as Game>::Input;
        type State = <Shooter as Game>::State;
        type Entity = <Shooter as Game>::Entity;
        type Status = <Shooter as Game>::Status;
        type Standing = <Shooter as Game>::Standing;
        type Event = <Shooter as Game>::Event;
        type Shared = <Shooter as Game>::Shared;
        type Body = <Shooter as Game>::Body;
        fn new_state(config: &crate::game::MatchConfig) -> World {
            Shooter::new_state(config)
        }
        fn config(state: &World) -> &crate::game::MatchConfig {
            Shooter::config(state)
        }
        fn tick(state: &World) -> Tick {
            Shooter::tick(state)
        }
        fn join(state: &mut World, player: PlayerId) {
            Shooter::join(state, player)
        }
        fn leave(state: &mut World, player: PlayerId) {
            Shooter::leave(state, player)
        }
        fn players(state: &World) -> Vec<PlayerId> {
            Shooter::players(state)
        }
        fn step(
            state: &mut World,
            inputs: &BTreeMap<PlayerId, PlayerInput>,
            events: &mut Vec<Self::Event>,
        ) {
            Shooter::step(state, inputs, events)
        }
        fn view(
            state: &World,
            viewer: &crate::game::Viewer,
            out: &mut Vec<crate::game::Seen<Self::Entity>>,
        ) {
            Shooter::view(state, viewer, out)
        }
        fn body_of(state: &World, player: PlayerId) -> Option<crate::game::NetEntityId> {
            Shooter::body_of(state, player)
        }
        fn status(state: &World, player: PlayerId) -> Option<Self::Status> {
            Shooter::status(state, player)
        }
        fn standing(state: &World, player: PlayerId) -> Option<Self::Standing> {
            Shooter::standing(state, player)
        }
        fn shared(state: &World) -> Self::Shared {
            Shooter::shared(state)
        }
        fn hash(state: &World) -> u64 {
            Shooter::hash(state)
        }
        fn body(entity: &Self::Entity) -> Option<Self::Body> {
            Shooter::body(entity)
        }
        fn predict(
            shared: &Self::Shared,
            config: &crate::game::MatchConfig,
            body: Self::Body,
            input: PlayerInput,
        ) -> Self::Body {
            Shooter::predict(shared, config, body, input)
        }
        fn body_position(body: &Self::Body) -> glam::Vec2 {
            Shooter::body_position(body)
        }
    }

    #[test]
    fn another_game_or_schema_is_refused_with_what_it_is() {
        let bytes = encode("m1", 1, &state(10)).expect("encodes");
        assert_eq!(
            decode::<Renamed<1>>(&bytes, "m1").err(),
            Some(SnapshotError::ForeignGame {
                found: "arena".into(),
                expected: "other".into()
            })
        );
        let refused = decode::<Renamed<2>>(&bytes, "m1").err();
        assert!(
            matches!(
                &refused,
                Some(SnapshotError::Schema {
                    found: 1,
                    supported: 2,
                    ..
                })
            ),
            "{refused:?}"
        );
        assert_eq!(read_header(&bytes).map(|h| h.game), Ok("arena".to_owned()));
    }
}
