//! Game messages and their one validating codec.
//!
//! A game datagram (the netcode payload) is `PacketHeader (8 bytes) ‖ bincode(message)`.
//! Decoding checks the header length, runs bincode under a size limit, refuses trailing
//! bytes, then checks the message's own bounds. Encoding writes into a fixed 1200-byte
//! buffer, so nothing oversized can ever be produced.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize};

use super::ack::{HEADER_BYTES, PacketHeader};
use crate::netcode::MAX_PAYLOAD_BYTES;
use crate::sim::{InputFrame, Tick, WorldConfig};

/// Most input frames one packet carries (half a second at 60 Hz).
pub const MAX_INPUT_FRAMES_PER_PACKET: usize = 32;
/// Largest body after the header.
pub const MAX_BODY_BYTES: usize = MAX_PAYLOAD_BYTES - HEADER_BYTES;

/// The decoder's allocation limit. bincode 2 checks a container's *in-memory* size
/// (elements × `size_of`) against it before reading, so it must exceed what 1192 wire
/// bytes can legitimately expand to (a full snapshot is about 3 KiB in memory), while
/// still stopping a forged length prefix from allocating more. Encoding is bounded by the
/// 1200-byte output buffer instead: bincode 2 does not apply the limit there.
const DECODE_LIMIT_BYTES: usize = 16 * 1024;

type Config = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT_BYTES>>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The oldest input frames the server has not yet applied, oldest first (at most 32).
    /// Resent every tick until applied, so a lost packet loses no input.
    Inputs {
        /// Frames in increasing sequence order.
        frames: Vec<InputFrame>,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// What the client sees at a tick.
    Snapshot(Snapshot),
    /// The top of the scoreboard (sent about once a second).
    Scoreboard(Vec<ScoreEntry>),
    /// Part of a connect token the server gives the client (a token is 2048 bytes, more
    /// than one datagram holds, so it travels in [`TOKEN_PARTS`] parts).
    TokenPart(TokenPart),
}

/// One line of the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreEntry {
    /// The player's name.
    pub name: String,
    /// Kills.
    pub score: u32,
    /// Deaths.
    pub deaths: u32,
    /// Whether this line is the receiving client's own.
    pub you: bool,
}

/// What a token the server sends is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenPurpose {
    /// Keep it: if this server goes silent, reconnect with it (it lists this server and
    /// its standbys).
    Reconnect,
    /// Use it now: the match moved to the server it lists.
    Redirect,
    /// Get ready: the match is about to move to the server it lists. Open a second
    /// connection there now and keep playing here; switch when that server's first
    /// snapshot arrives (make before break). If it never does, drop it.
    Prepare,
}

/// Parts a 2048-byte token is sent in.
pub const TOKEN_PARTS: u8 = 2;
/// Bytes per part.
pub const TOKEN_PART_BYTES: usize = crate::netcode::CONNECT_TOKEN_BYTES / TOKEN_PARTS as usize;

/// One part of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPart {
    /// What the token is for.
    pub purpose: TokenPurpose,
    /// Which token (a newer one replaces an older one).
    pub token_id: u32,
    /// Which part, from 0.
    pub part: u8,
    /// The part's bytes ([`TOKEN_PART_BYTES`]).
    pub bytes: Vec<u8>,
}

/// The world as one client sees it at one tick.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The tick this describes.
    pub tick: Tick,
    /// The tick this is a delta against; `None`: a full snapshot.
    pub baseline_tick: Option<Tick>,
    /// What shapes the simulation: with it the client rebuilds the arena's walls and
    /// predicts its own movement with the server's code.
    pub world: WorldConfig,
    /// The client's own body, if it has one.
    pub your_entity: Option<NetEntityId>,
    /// The newest input sequence the server has applied; every older one is applied too.
    pub last_applied_input: u32,
    /// Input frames of this player the match has applied, counted by the match itself
    /// (it travels with the player through handoffs and snapshots). A restore after a
    /// crash makes it go down: those frames were rolled back.
    pub inputs_applied: u64,
    /// The tick this server restored the match from, if it took the match over from
    /// a snapshot after its owner died: a client measures its rollback from it.
    pub restored_from_tick: Option<Tick>,
    /// The client's own health, score and deaths.
    pub you: PlayerStatus,
    /// Entities in view, nearest first.
    pub entities: Vec<EntityState>,
    /// Entities in view that did not fit in this datagram.
    pub deferred: u16,
}

/// A player's standing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerStatus {
    /// 0 while dead.
    pub health: u8,
    /// Kills.
    pub score: u32,
    /// Deaths.
    pub deaths: u32,
}

/// An entity's identity on the wire: slot index and generation, as the server's SlotMap
/// has them. A reused slot gets a new generation, so clients never mix two entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetEntityId {
    /// Slot.
    pub index: u32,
    /// Generation of the slot.
    pub generation: u32,
}

impl From<crate::sim::EntityId> for NetEntityId {
    fn from(id: crate::sim::EntityId) -> Self {
        use slotmap::Key;
        // A slotmap key's FFI form is the generation in the high half, the index in the low.
        let ffi = id.data().as_ffi();
        Self {
            index: ffi as u32,
            generation: (ffi >> 32) as u32,
        }
    }
}

/// What kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetEntityKind {
    /// A player's body.
    Player,
    /// A projectile.
    Projectile,
}

/// Metres per position unit on the wire (positions are u16: up to 2048 m).
pub const POSITION_UNIT_M: f32 = 1.0 / 32.0;
/// Metres per second per velocity unit (velocities are i16: up to ±128 m/s).
pub const VELOCITY_UNIT_MS: f32 = 1.0 / 256.0;

/// One entity, quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// Which entity.
    pub id: NetEntityId,
    /// What it is.
    pub kind: NetEntityKind,
    /// Position in [`POSITION_UNIT_M`].
    pub x: u16,
    /// Position in [`POSITION_UNIT_M`].
    pub y: u16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vx: i16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vy: i16,
    /// Health (players; 0 for projectiles).
    pub health: u8,
}

impl EntityState {
    /// Quantizes a position component.
    pub fn quantize_position(metres: f32) -> u16 {
        (metres / POSITION_UNIT_M)
            .round()
            .clamp(0.0, f32::from(u16::MAX)) as u16
    }

    /// Quantizes a velocity component.
    pub fn quantize_velocity(metres_per_second: f32) -> i16 {
        (metres_per_second / VELOCITY_UNIT_MS)
            .round()
            .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
    }

    /// Bytes this entity takes in the codec (bincode varint), without encoding it.
    ///
    /// Filling a snapshot asks this for every entity in view of every client every tick,
    /// so it is arithmetic rather than a trial encode; a test pins it to the codec.
    pub fn encoded_len(&self) -> usize {
        fn varint(v: u64) -> usize {
            match v {
                0..=250 => 1,
                251..=0xffff => 3,
                0x1_0000..=0xffff_ffff => 5,
                _ => 9,
            }
        }
        fn zigzag(v: i16) -> u64 {
            ((i64::from(v) << 1) ^ (i64::from(v) >> 63)) as u64
        }
        varint(u64::from(self.id.index))
            + varint(u64::from(self.id.generation))
            + 1
            + varint(u64::from(self.x))
            + varint(u64::from(self.y))
            + varint(zigzag(self.vx))
            + varint(zigzag(self.vy))
            + 1
    }

    /// Position in metres.
    pub fn position(&self) -> glam::Vec2 {
        glam::Vec2::new(f32::from(self.x), f32::from(self.y)) * POSITION_UNIT_M
    }

    /// Velocity in metres per second.
    pub fn velocity(&self) -> glam::Vec2 {
        glam::Vec2::new(f32::from(self.vx), f32::from(self.vy)) * VELOCITY_UNIT_MS
    }
}

/// Why a datagram's body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Shorter than the 8-byte header.
    #[error("datagram of {0} bytes is shorter than the 8-byte header")]
    TooShort(usize),
    /// bincode refused it (bad tag, truncated, over the size limit).
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The message ended before the datagram did.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// Decoded, but outside the message's bounds.
    #[error("message out of bounds: {0}")]
    OutOfBounds(&'static str),
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message does not fit in a {MAX_PAYLOAD_BYTES}-byte datagram: {0}")]
pub struct EncodeError(String);

/// Writes `header ‖ message` into `out` (at least 1200 bytes) and returns the length.
pub fn encode<T: Serialize>(
    header: PacketHeader,
    message: &T,
    out: &mut [u8; MAX_PAYLOAD_BYTES],
) -> Result<usize, EncodeError> {
    out[..HEADER_BYTES].copy_from_slice(&header.to_bytes());
    let written = bincode::serde::encode_into_slice(message, &mut out[HEADER_BYTES..], config())
        .map_err(|e| EncodeError(e.to_string()))?;
    Ok(HEADER_BYTES + written)
}

/// Bytes `value` takes when encoded (used to fill a snapshot up to the budget).
pub fn encoded_len<T: Serialize>(value: &T) -> Option<usize> {
    let mut scratch = [0u8; MAX_BODY_BYTES];
    bincode::serde::encode_into_slice(value, &mut scratch, config()).ok()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<(PacketHeader, T), DecodeError> {
    let (header, body) = PacketHeader::split(bytes).ok_or(DecodeError::TooShort(bytes.len()))?;
    let (message, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::TrailingBytes(body.len() - used));
    }
    Ok((header, message))
}

/// Decodes and validates what a client sent.
pub fn decode_client(bytes: &[u8]) -> Result<(PacketHeader, ClientMessage), DecodeError> {
    let (header, message) = decode::<ClientMessage>(bytes)?;
    match &message {
        ClientMessage::Inputs { frames } => {
            if frames.len() > MAX_INPUT_FRAMES_PER_PACKET {
                return Err(DecodeError::OutOfBounds("more than 32 input frames"));
            }
            if frames.windows(2).any(|w| w[1].sequence <= w[0].sequence) {
                return Err(DecodeError::OutOfBounds("input frames out of order"));
            }
        }
    }
    Ok((header, message))
}

/// Decodes and validates what a server sent.
pub fn decode_server(bytes: &[u8]) -> Result<(PacketHeader, ServerMessage), DecodeError> {
    let (header, message) = decode::<ServerMessage>(bytes)?;
    if let ServerMessage::TokenPart(part) = &message
        && (part.part >= TOKEN_PARTS || part.bytes.len() != TOKEN_PART_BYTES)
    {
        return Err(DecodeError::OutOfBounds("token part index or size"));
    }
    Ok((header, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::PlayerInput;

    fn frame(sequence: u32) -> InputFrame {
        InputFrame {
            sequence,
            tick: Tick(u64::from(sequence) + 100),
            input: PlayerInput {
                buttons: 3,
                aim: 999,
            },
        }
    }

    #[test]
    fn inputs_round_trip() {
        let message = ClientMessage::Inputs {
            frames: (1..=32).map(frame).collect(),
        };
        let header = PacketHeader {
            sequence: 1,
            ack: 2,
            ack_bits: 3,
        };
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let len = encode(header, &message, &mut out).expect("fits");
        assert_eq!(decode_client(&out[..len]), Ok((header, message)));
    }

    #[test]
    fn malformed_bodies_are_refused_with_a_reason() {
        let header = PacketHeader::default();
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let good = ClientMessage::Inputs {
            frames: vec![frame(1), frame(2)],
        };
        let len = encode(header, &good, &mut out).expect("fits");

        assert_eq!(decode_client(&out[..5]), Err(DecodeError::TooShort(5)));
        assert!(matches!(
            decode_client(&out[..len - 1]),
            Err(DecodeError::Malformed(_))
        ));
        let mut trailing = out[..len].to_vec();
        trailing.push(0);
        assert_eq!(decode_client(&trailing), Err(DecodeError::TrailingBytes(1)));
        let mut bad_tag = out[..len].to_vec();
        bad_tag[HEADER_BYTES] = 9;
        assert!(matches!(
            decode_client(&bad_tag),
            Err(DecodeError::Malformed(_))
        ));

        let too_many = ClientMessage::Inputs {
            frames: (1..=33).map(frame).collect(),
        };
        let len = encode(header, &too_many, &mut out).expect("fits");
        assert!(matches!(
            decode_client(&out[..len]),
            Err(DecodeError::OutOfBounds(_))
        ));
        let unordered = ClientMessage::Inputs {
            frames: vec![frame(2), frame(1)],
        };
        let len = encode(header, &unordered, &mut out).expect("fits");
        assert!(matches!(
            decode_client(&out[..len]),
            Err(DecodeError::OutOfBounds(_))
        ));
    }

    #[test]
    fn entity_encoded_len_matches_the_codec() {
        let values = [0u32, 1, 250, 251, 65535, 65536, u32::MAX];
        let small = [0u16, 250, 251, u16::MAX];
        let signed = [0i16, -1, 125, -126, 126, i16::MIN, i16::MAX];
        for (i, &index) in values.iter().enumerate() {
            for &x in &small {
                for &vx in &signed {
                    let e = EntityState {
                        id: NetEntityId {
                            index,
                            generation: values[(i + 3) % values.len()],
                        },
                        kind: NetEntityKind::Projectile,
                        x,
                        y: small[(i + 1) % small.len()],
                        vx,
                        vy: signed[(i + 2) % signed.len()],
                        health: 255,
                    };
                    assert_eq!(Some(e.encoded_len()), encoded_len(&e), "{e:?}");
                }
            }
        }
    }

    #[test]
    fn a_snapshot_filling_the_datagram_decodes() {
        let entity = EntityState {
            id: NetEntityId {
                index: 1,
                generation: 1,
            },
            kind: NetEntityKind::Player,
            x: 100,
            y: 100,
            vx: 1,
            vy: 1,
            health: 100,
        };
        // 10 wire bytes each, about 20 in memory: in-memory size far above the body size.
        let count = (MAX_BODY_BYTES - 40) / entity.encoded_len();
        let message = ServerMessage::Snapshot(Snapshot {
            tick: Tick(1),
            baseline_tick: None,
            world: WorldConfig {
                max_players: 1024,
                tick_hz: 60,
                seed: u64::MAX,
            },
            your_entity: None,
            last_applied_input: 0,
            inputs_applied: 0,
            restored_from_tick: None,
            you: PlayerStatus::default(),
            entities: vec![entity; count],
            deferred: 0,
        });
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let len = encode(PacketHeader::default(), &message, &mut out).expect("fits");
        assert!(len > 1100, "{len}");
        assert_eq!(decode_server(&out[..len]).map(|(_, m)| m), Ok(message));
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating_it() {
        // Variant 0, then a vector length of u64::MAX as a varint.
        let mut bytes = vec![0u8; HEADER_BYTES];
        bytes.extend_from_slice(&[0, 253, 255, 255, 255, 255, 255, 255, 255, 255]);
        assert!(matches!(
            decode_client(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
