//! Game messages and their one validating codec.
//!
//! A game datagram (the netcode payload) is `PacketHeader (8 bytes) ‖ bincode(message)`.
//! Decoding checks the header length, runs bincode under a size limit, refuses trailing
//! bytes, then checks the message's own bounds. Encoding writes into a fixed 1200-byte
//! buffer, so nothing oversized can ever be produced.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize};

use super::ack::{HEADER_BYTES, PacketHeader};
use crate::game::{Game, InputFrame, MatchConfig, NetEntityId, PlayerId, Tick};
use crate::netcode::MAX_PAYLOAD_BYTES;

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
#[serde(bound = "")]
pub enum ClientMessage<G: Game> {
    /// The oldest input frames the server has not yet applied, oldest first (at most 32).
    /// Resent every tick until applied, so a lost packet loses no input.
    Inputs {
        /// Frames in increasing sequence order.
        frames: Vec<InputFrame<G::Input>>,
    },
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum ServerMessage<G: Game> {
    /// What the client sees at a tick.
    Snapshot(Snapshot<G>),
    /// The top of the scoreboard (sent about once a second).
    Scoreboard(Vec<ScoreEntry<G>>),
    /// Part of a connect token the server gives the client (a token is 2048 bytes, more
    /// than one datagram holds, so it travels in [`TOKEN_PARTS`] parts).
    TokenPart(TokenPart),
    /// Reliable notices (the match's shared data, names, game events), in order.
    Reliable(Reliable<G>),
}

/// One line of the scoreboard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct ScoreEntry<G: Game> {
    /// The player.
    pub player: PlayerId,
    /// The player's name.
    pub name: String,
    /// What the game ranks by (greatest first).
    pub standing: G::Standing,
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

/// Most notices one packet carries.
pub const MAX_NOTICES_PER_PACKET: usize = 64;
/// Bytes of the shared data per [`Notice::Shared`] part (at most).
pub const SHARED_PART_BYTES: usize = 900;
/// Most parts the shared data may have (so at most 230 KB).
pub const MAX_SHARED_PARTS: u16 = 256;

/// Notices a server sends reliably: numbered from 0 per connection, resent until the
/// packet carrying them is acknowledged, delivered in order exactly once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Reliable<G: Game> {
    /// The number of the first notice; the others follow it without gaps.
    pub first: u32,
    /// The notices.
    pub notices: Vec<Notice<G>>,
}

/// One reliable notice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub enum Notice<G: Game> {
    /// Part of [`Game::Shared`] (bincode), told once on joining.
    Shared {
        /// Which part, from 0.
        part: u16,
        /// How many parts.
        parts: u16,
        /// Up to [`SHARED_PART_BYTES`].
        bytes: Vec<u8>,
    },
    /// A player's name, told before the first event that names the player.
    Name {
        /// The player.
        player: PlayerId,
        /// Its name.
        name: String,
    },
    /// Something that happened in the match.
    Event(G::Event),
}

/// The world as one client sees it at one tick.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Snapshot<G: Game> {
    /// The tick this describes.
    pub tick: Tick,
    /// The tick this is a delta against; `None`: a full snapshot.
    pub baseline_tick: Option<Tick>,
    /// What shapes the match (the client paces its inputs and its clock by it).
    pub config: MatchConfig,
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
    /// The client's own standing.
    pub you: G::Status,
    /// Entities in view, most important (nearest) first.
    pub entities: Vec<Replicated<G::Entity>>,
    /// Entities in view that did not fit in this datagram.
    pub deferred: u16,
}

impl<G: Game> Snapshot<G> {
    /// The entity with this id, if it is in the snapshot.
    pub fn entity(&self, id: NetEntityId) -> Option<&Replicated<G::Entity>> {
        self.entities.iter().find(|e| e.id == id)
    }

    /// The client's own entity, if it has one and it is in the snapshot.
    pub fn own_entity(&self) -> Option<&Replicated<G::Entity>> {
        self.your_entity.and_then(|id| self.entity(id))
    }
}

/// One entity in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicated<E> {
    /// Which entity.
    pub id: NetEntityId,
    /// Its state, as the game replicates it.
    pub state: E,
}

/// Bytes a [`NetEntityId`] takes in the codec (bincode varints).
pub fn net_id_len(id: NetEntityId) -> usize {
    varint_len(u64::from(id.index)) + varint_len(u64::from(id.generation))
}

/// Bytes bincode's varint encoding takes for `v`.
pub fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Bytes a zigzag-encoded signed varint takes.
pub fn signed_varint_len(v: i64) -> usize {
    varint_len(((v << 1) ^ (v >> 63)) as u64)
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
    bincode::serde::encode_into_std_write(value, &mut std::io::sink(), config()).ok()
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
pub fn decode_client<G: Game>(
    bytes: &[u8],
) -> Result<(PacketHeader, ClientMessage<G>), DecodeError> {
    let (header, message) = decode::<ClientMessage<G>>(bytes)?;
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
pub fn decode_server<G: Game>(
    bytes: &[u8],
) -> Result<(PacketHeader, ServerMessage<G>), DecodeError> {
    let (header, message) = decode::<ServerMessage<G>>(bytes)?;
    match &message {
        ServerMessage::TokenPart(part)
            if part.part >= TOKEN_PARTS || part.bytes.len() != TOKEN_PART_BYTES =>
        {
            return Err(DecodeError::OutOfBounds("token part index or size"));
        }
        ServerMessage::Reliable(reliable) => check_reliable(reliable)?,
        _ => {}
    }
    Ok((header, message))
}

fn check_reliable<G: Game>(reliable: &Reliable<G>) -> Result<(), DecodeError> {
    if reliable.notices.len() > MAX_NOTICES_PER_PACKET {
        return Err(DecodeError::OutOfBounds("more than 64 notices"));
    }
    if reliable
        .first
        .checked_add(reliable.notices.len() as u32)
        .is_none()
    {
        return Err(DecodeError::OutOfBounds("notice numbers wrap"));
    }
    for notice in &reliable.notices {
        match notice {
            Notice::Shared { part, parts, bytes }
                if *parts == 0
                    || *parts > MAX_SHARED_PARTS
                    || part >= parts
                    || bytes.len() > SHARED_PART_BYTES =>
            {
                return Err(DecodeError::OutOfBounds("shared part index or size"));
            }
            Notice::Name { name, .. } if name.len() > crate::identity::MAX_NAME_BYTES => {
                return Err(DecodeError::OutOfBounds("name over 64 bytes"));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{EntityState, NetEntityKind, PlayerInput, Shooter};

    type Frame = InputFrame<PlayerInput>;

    fn frame(sequence: u32) -> Frame {
        InputFrame {
            sequence,
            tick: Tick(u64::from(sequence) + 100),
            input: PlayerInput {
                buttons: 3,
                aim: 999,
            },
        }
    }

    fn inputs(frames: Vec<Frame>) -> ClientMessage<Shooter> {
        ClientMessage::Inputs { frames }
    }

    #[test]
    fn inputs_round_trip() {
        let message = inputs((1..=32).map(frame).collect());
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
        let good = inputs(vec![frame(1), frame(2)]);
        let len = encode(header, &good, &mut out).expect("fits");
        let decode = |bytes: &[u8]| decode_client::<Shooter>(bytes);

        assert_eq!(decode(&out[..5]), Err(DecodeError::TooShort(5)));
        assert!(matches!(
            decode(&out[..len - 1]),
            Err(DecodeError::Malformed(_))
        ));
        let mut trailing = out[..len].to_vec();
        trailing.push(0);
        assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));
        let mut bad_tag = out[..len].to_vec();
        bad_tag[HEADER_BYTES] = 9;
        assert!(matches!(decode(&bad_tag), Err(DecodeError::Malformed(_))));

        let too_many = inputs((1..=33).map(frame).collect());
        let len = encode(header, &too_many, &mut out).expect("fits");
        assert!(matches!(
            decode(&out[..len]),
            Err(DecodeError::OutOfBounds(_))
        ));
        let unordered = inputs(vec![frame(2), frame(1)]);
        let len = encode(header, &unordered, &mut out).expect("fits");
        assert!(matches!(
            decode(&out[..len]),
            Err(DecodeError::OutOfBounds(_))
        ));
    }

    #[test]
    fn reliable_notices_round_trip_and_out_of_bounds_ones_are_refused() {
        let header = PacketHeader::default();
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let good: ServerMessage<Shooter> = ServerMessage::Reliable(Reliable {
            first: 7,
            notices: vec![
                Notice::Shared {
                    part: 0,
                    parts: 2,
                    bytes: vec![1; SHARED_PART_BYTES],
                },
                Notice::Name {
                    player: PlayerId(3),
                    name: "ann".into(),
                },
            ],
        });
        let len = encode(header, &good, &mut out).expect("fits");
        assert_eq!(decode_server(&out[..len]), Ok((header, good)));
        let bad = [
            Notice::Shared {
                part: 2,
                parts: 2,
                bytes: vec![],
            },
            Notice::Shared {
                part: 0,
                parts: MAX_SHARED_PARTS + 1,
                bytes: vec![],
            },
            Notice::Name {
                player: PlayerId(1),
                name: "x".repeat(65),
            },
        ];
        for notice in bad {
            let message: ServerMessage<Shooter> = ServerMessage::Reliable(Reliable {
                first: 0,
                notices: vec![notice.clone()],
            });
            let len = encode(header, &message, &mut out).expect("fits");
            assert!(
                matches!(
                    decode_server::<Shooter>(&out[..len]),
                    Err(DecodeError::OutOfBounds(_))
                ),
                "{notice:?}"
            );
        }
    }

    #[test]
    fn a_snapshot_filling_the_datagram_decodes() {
        let entity = Replicated {
            id: NetEntityId {
                index: 1,
                generation: 1,
            },
            state: EntityState {
                kind: NetEntityKind::Player,
                x: 100,
                y: 100,
                vx: 1,
                vy: 1,
                health: 100,
            },
        };
        // 10 wire bytes each, about 20 in memory: in-memory size far above the body size.
        let each = net_id_len(entity.id) + <Shooter as Game>::entity_len(&entity.state);
        let count = (MAX_BODY_BYTES - 40) / each;
        let message: ServerMessage<Shooter> = ServerMessage::Snapshot(Snapshot {
            tick: Tick(1),
            baseline_tick: None,
            config: MatchConfig {
                max_players: 1024,
                tick_hz: 60,
                seed: u64::MAX,
            },
            your_entity: None,
            last_applied_input: 0,
            inputs_applied: 0,
            restored_from_tick: None,
            you: Default::default(),
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
            decode_client::<Shooter>(&bytes),
            Err(DecodeError::Malformed(_))
        ));
    }
}
