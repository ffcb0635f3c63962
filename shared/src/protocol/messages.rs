//! Game messages and their one validating codec.
//!
//! A game datagram (the netcode payload) is `PacketHeader (8 bytes) ‖ bincode(message)`.
//! Decoding checks the header length, runs bincode under a size limit, refuses trailing
//! bytes, then checks the message's own bounds. Encoding writes into a fixed 1200-byte
//! buffer, so nothing oversized can ever be produced.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::{Deserialize, Serialize};

use super::ack::{HEADER_BYTES, PacketHeader};
use super::bits::BitWriter;
use super::head::SnapshotHead;
use crate::game::{Game, InputFrame, MatchConfig, NetEntityId, PlayerId, Tick};
use crate::netcode::MAX_PAYLOAD_BYTES;

/// Most input frames one packet carries (half a second at 60 Hz).
pub const MAX_INPUT_FRAMES_PER_PACKET: usize = 32;
/// Largest body after the header.
pub const MAX_BODY_BYTES: usize = MAX_PAYLOAD_BYTES - HEADER_BYTES;
/// The fastest tick a client accepts from a server's settings (`arena-server --tick-hz`
/// takes 1 to 1000): a client paces its inputs by it.
pub const MAX_TICK_HZ: u32 = 1000;

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
    /// What the client sees at a tick. Its section follows, bit-packed: the head
    /// ([`super::head`]), then the entities ([`super::delta`]), both against a baseline
    /// ([`super::baselines`] reads it).
    Snapshot,
    /// The top of the scoreboard (sent about once a second).
    Scoreboard(Vec<ScoreEntry<G>>),
    /// Part of a connect token the server gives the client (a token is 2048 bytes, more
    /// than one datagram holds, so it travels in [`TOKEN_PARTS`] parts).
    TokenPart(TokenPart),
    /// Reliable notices (the match's shared data, names, game events), in order.
    Reliable(Reliable<G>),
    /// Reliable notices, then a snapshot's section, as [`ServerMessage::Snapshot`]'s: the
    /// notices a client is due ride in its snapshot's datagram rather than a datagram of
    /// their own (they are read first: the first is the settings a snapshot needs).
    NoticesAndSnapshot(Reliable<G>),
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
    /// The match's settings and the server's own: told first, once per connection (they
    /// never change while it lasts).
    Config {
        /// The match's settings (its tick rate paces the client's inputs).
        config: MatchConfig,
        /// How far a player sees on this server, metres (`--view-radius`: entities
        /// farther away are not replicated; a spectator sees the whole arena). Finite and
        /// above 0.
        view_radius_m: f32,
    },
}

/// The world as one client sees it at one tick: a snapshot's head with its section
/// applied to the client's baseline.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot<G: Game> {
    /// The tick this describes.
    pub tick: Tick,
    /// The tick this was a delta against; `None`: a full snapshot.
    pub baseline_tick: Option<Tick>,
    /// What shapes the match (told once per connection; the client paces its inputs and
    /// its clock by it).
    pub config: MatchConfig,
    /// The client's own body, if it has one.
    pub your_entity: Option<NetEntityId>,
    /// See [`SnapshotHead::last_applied_input`].
    pub last_applied_input: u32,
    /// See [`SnapshotHead::inputs_applied`].
    pub inputs_applied: u64,
    /// See [`SnapshotHead::restored_from_tick`].
    pub restored_from_tick: Option<Tick>,
    /// See [`SnapshotHead::input_margin`].
    pub input_margin: Option<i8>,
    /// See [`SnapshotHead::inputs_arrived_late`].
    pub inputs_arrived_late: u8,
    /// The client's own standing.
    pub you: G::Status,
    /// Entities in view, sorted by index.
    pub entities: Vec<Replicated<G::Entity>>,
    /// Entities in view whose state is older than `tick` (the byte budget left them for a
    /// later snapshot).
    pub deferred: u16,
}

impl<G: Game> Snapshot<G> {
    /// The snapshot `head` describes, with `entities` (sorted by index) from its section.
    pub fn new(
        head: SnapshotHead<G>,
        config: MatchConfig,
        entities: Vec<Replicated<G::Entity>>,
        deferred: u16,
    ) -> Self {
        Self {
            tick: head.tick,
            baseline_tick: (head.baseline_ticks > 0)
                .then(|| Tick(head.tick.0.saturating_sub(u64::from(head.baseline_ticks)))),
            config,
            your_entity: head.your_entity,
            last_applied_input: head.last_applied_input,
            inputs_applied: head.inputs_applied,
            restored_from_tick: head.restored_from_tick,
            input_margin: head.input_margin,
            inputs_arrived_late: head.inputs_arrived_late,
            you: head.you,
            entities,
            deferred,
        }
    }

    /// The entity with this id, if it is in the snapshot.
    pub fn entity(&self, id: NetEntityId) -> Option<&Replicated<G::Entity>> {
        self.entities
            .binary_search_by_key(&id.index, |e| e.id.index)
            .ok()
            .map(|i| &self.entities[i])
            .filter(|e| e.id == id)
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

impl EncodeError {
    /// An error saying `why`.
    pub fn new(why: impl Into<String>) -> Self {
        Self(why.into())
    }
}

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

/// Writes `header ‖ lead ‖ section` into `out` and returns the length. `lead` is
/// [`ServerMessage::Snapshot`] or [`ServerMessage::NoticesAndSnapshot`] (`None`: the
/// first). The section is a bit writer limited to `payload_budget` bytes in all (and to
/// the datagram): `head` goes first, against `base` (the baseline's head; `None` for a
/// full snapshot), then `entities` writes the entities. Fails if the lead is another
/// message or the section overflowed.
pub fn encode_snapshot<G: Game>(
    header: PacketHeader,
    lead: Option<&ServerMessage<G>>,
    (base, head): (Option<&SnapshotHead<G>>, &SnapshotHead<G>),
    payload_budget: usize,
    out: &mut [u8; MAX_PAYLOAD_BYTES],
    entities: impl FnOnce(&mut BitWriter),
) -> Result<usize, EncodeError> {
    let len = match lead {
        None => encode(header, &ServerMessage::<G>::Snapshot, out)?,
        Some(lead @ (ServerMessage::Snapshot | ServerMessage::NoticesAndSnapshot(_))) => {
            encode(header, lead, out)?
        }
        Some(_) => return Err(EncodeError::new("a snapshot led by another message")),
    };
    let budget = payload_budget.clamp(len, MAX_PAYLOAD_BYTES);
    let mut writer = BitWriter::new(&mut out[len..budget], (budget - len) * 8);
    super::head::write(&mut writer, base, head);
    entities(&mut writer);
    match writer.finish() {
        Some(bits_len) => Ok(len + bits_len),
        None => Err(EncodeError::new(
            "the entities overflowed the snapshot's budget",
        )),
    }
}

/// Bytes `value` takes when encoded.
pub fn encoded_len<T: Serialize>(value: &T) -> Option<usize> {
    bincode::serde::encode_into_std_write(value, &mut std::io::sink(), config()).ok()
}

/// Decodes a message and returns it with the bytes that follow it.
fn decode<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<(PacketHeader, T, &[u8]), DecodeError> {
    let (header, body) = PacketHeader::split(bytes).ok_or(DecodeError::TooShort(bytes.len()))?;
    let (message, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    Ok((header, message, &body[used..]))
}

fn no_trailing(rest: &[u8]) -> Result<(), DecodeError> {
    match rest.len() {
        0 => Ok(()),
        n => Err(DecodeError::TrailingBytes(n)),
    }
}

/// Decodes and validates what a client sent.
pub fn decode_client<G: Game>(
    bytes: &[u8],
) -> Result<(PacketHeader, ClientMessage<G>), DecodeError> {
    let (header, message, rest) = decode::<ClientMessage<G>>(bytes)?;
    no_trailing(rest)?;
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

/// [`decode_client`] for the server's hot path: the input frames go into `frames`
/// (cleared first; its capacity reused), so a steady stream of packets allocates nothing.
/// Same wire format, same checks.
pub fn decode_inputs<G: Game>(
    bytes: &[u8],
    frames: &mut Vec<InputFrame<G::Input>>,
) -> Result<PacketHeader, DecodeError> {
    frames.clear();
    let (header, body) = PacketHeader::split(bytes).ok_or(DecodeError::TooShort(bytes.len()))?;
    let mut at = 0;
    let variant: u32 = decode_part(body, &mut at)?;
    if variant != 0 {
        return Err(DecodeError::Malformed(format!(
            "unknown client message {variant}"
        )));
    }
    let count: u64 = decode_part(body, &mut at)?;
    if count > MAX_INPUT_FRAMES_PER_PACKET as u64 {
        return Err(DecodeError::OutOfBounds("more than 32 input frames"));
    }
    for _ in 0..count {
        let frame: InputFrame<G::Input> = decode_part(body, &mut at)?;
        if frames
            .last()
            .is_some_and(|last| frame.sequence <= last.sequence)
        {
            return Err(DecodeError::OutOfBounds("input frames out of order"));
        }
        frames.push(frame);
    }
    no_trailing(&body[at..])?;
    Ok(header)
}

/// Decodes one value at `*at`, moving past it.
fn decode_part<T: for<'de> Deserialize<'de>>(
    body: &[u8],
    at: &mut usize,
) -> Result<T, DecodeError> {
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(&body[*at..], config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    *at += used;
    Ok(value)
}

/// Decodes and validates what a server sent. A snapshot's section (the bytes after its
/// tag) is returned for [`super::baselines`] to read; any other message must end the
/// datagram.
pub fn decode_server<G: Game>(
    bytes: &[u8],
) -> Result<(PacketHeader, ServerMessage<G>, &[u8]), DecodeError> {
    let (header, message, rest) = decode::<ServerMessage<G>>(bytes)?;
    match &message {
        ServerMessage::Snapshot => return Ok((header, message, rest)),
        ServerMessage::NoticesAndSnapshot(reliable) => {
            check_reliable(reliable)?;
            return Ok((header, message, rest));
        }
        _ => no_trailing(rest)?,
    }
    match &message {
        ServerMessage::TokenPart(part)
            if part.part >= TOKEN_PARTS || part.bytes.len() != TOKEN_PART_BYTES =>
        {
            return Err(DecodeError::OutOfBounds("token part index or size"));
        }
        ServerMessage::Reliable(reliable) => check_reliable(reliable)?,
        _ => {}
    }
    Ok((header, message, &[]))
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
            Notice::Config {
                config,
                view_radius_m,
            } if !((1..=MAX_TICK_HZ).contains(&config.tick_hz)
                && view_radius_m.is_finite()
                && *view_radius_m > 0.0) =>
            {
                return Err(DecodeError::OutOfBounds(
                    "settings: tick rate not 1 to 1000 Hz, or view radius not above 0",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{PlayerInput, Shooter};

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
    fn the_hot_path_decoder_reads_what_the_generic_one_reads() {
        let header = PacketHeader {
            sequence: 9,
            ack: 8,
            ack_bits: 7,
        };
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let mut frames = Vec::new();
        for message in [
            inputs(vec![]),
            inputs((1..=32).map(frame).collect()),
            inputs((1..=33).map(frame).collect()),
            inputs(vec![frame(2), frame(1)]),
        ] {
            let len = encode(header, &message, &mut out).expect("fits");
            for end in [len, len - 1, len + 1] {
                let generic = decode_client::<Shooter>(&out[..end]);
                let fast = decode_inputs::<Shooter>(&out[..end], &mut frames);
                match generic {
                    Ok((h, ClientMessage::Inputs { frames: f })) => {
                        assert_eq!(fast, Ok(h));
                        assert_eq!(frames, f);
                    }
                    // Refused too (the reason may differ: it checks the count first).
                    Err(e) => assert!(fast.is_err(), "{e}"),
                }
            }
        }
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
                Notice::Config {
                    config: settings(30),
                    view_radius_m: 12.5,
                },
            ],
        });
        let len = encode(header, &good, &mut out).expect("fits");
        assert_eq!(decode_server(&out[..len]), Ok((header, good, &[][..])));
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
            Notice::Config {
                config: settings(0),
                view_radius_m: 30.0,
            },
            Notice::Config {
                config: settings(MAX_TICK_HZ + 1),
                view_radius_m: 30.0,
            },
            Notice::Config {
                config: settings(60),
                view_radius_m: f32::NAN,
            },
            Notice::Config {
                config: settings(60),
                view_radius_m: 0.0,
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

    fn settings(tick_hz: u32) -> MatchConfig {
        MatchConfig {
            max_players: 8,
            tick_hz,
            seed: 1,
        }
    }

    #[test]
    fn a_snapshot_carries_its_section_and_nothing_else_may() {
        let mut out = [0u8; MAX_PAYLOAD_BYTES];
        let header = PacketHeader::default();
        let head = SnapshotHead::<Shooter> {
            tick: Tick(9),
            ..Default::default()
        };
        let len = encode_snapshot(header, None, (None, &head), 1200, &mut out, |bits| {
            bits.write_bits(0xabc, 12);
        })
        .expect("fits");
        let (_, message, section) = decode_server::<Shooter>(&out[..len]).expect("decodes");
        assert_eq!(message, ServerMessage::Snapshot);
        assert_eq!(section, &out[HEADER_BYTES + 1..len]);
        let plain = section.to_vec();

        // Led by notices: the same section after them.
        let notices = ServerMessage::<Shooter>::NoticesAndSnapshot(Reliable {
            first: 3,
            notices: vec![Notice::Name {
                player: PlayerId(1),
                name: "ann".into(),
            }],
        });
        let len = encode_snapshot(
            header,
            Some(&notices),
            (None, &head),
            1200,
            &mut out,
            |bits| {
                bits.write_bits(0xabc, 12);
            },
        )
        .expect("fits");
        let (_, message, section) = decode_server::<Shooter>(&out[..len]).expect("decodes");
        assert_eq!(message, notices);
        assert_eq!(section, &plain[..]);
        // Out-of-bounds notices are refused there too; no other message may lead.
        let bad = ServerMessage::<Shooter>::NoticesAndSnapshot(Reliable {
            first: u32::MAX,
            notices: vec![Notice::Name {
                player: PlayerId(1),
                name: "ann".into(),
            }],
        });
        let len = encode_snapshot(header, Some(&bad), (None, &head), 1200, &mut out, |_| {})
            .expect("fits");
        assert!(matches!(
            decode_server::<Shooter>(&out[..len]),
            Err(DecodeError::OutOfBounds(_))
        ));
        let scores = ServerMessage::<Shooter>::Scoreboard(vec![]);
        assert!(
            encode_snapshot(header, Some(&scores), (None, &head), 1200, &mut out, |_| {}).is_err()
        );

        // The budget bounds the section.
        let overflow = encode_snapshot(header, None, (None, &head), 40, &mut out, |bits| {
            bits.write_bytes(&[1; 40]);
        });
        assert!(overflow.is_err());
        // Trailing bytes after any other message are refused.
        let scores: ServerMessage<Shooter> = ServerMessage::Scoreboard(vec![]);
        let len = encode(header, &scores, &mut out).expect("fits");
        assert_eq!(
            decode_server::<Shooter>(&out[..len + 1]),
            Err(DecodeError::TrailingBytes(1))
        );
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
