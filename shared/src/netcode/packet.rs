//! The seven netcode packets: a checked reader and a writer.
//!
//! Every packet but the connection request is `prefix ‖ sequence ‖ ciphertext ‖ tag`, where
//! `prefix = (sequence bytes << 4) | type`, the sequence is little-endian in the fewest bytes
//! (at least one), and the body is sealed with ChaCha20-Poly1305 under the direction's key,
//! with nonce `0000 ‖ sequence` and associated data `version ‖ protocol id ‖ prefix`.
//!
//! The reader follows the reference's order of checks, so it accepts and refuses exactly
//! what the reference does: size and prefix, type filter, replay window, decrypt, record
//! the sequence, then the body size. Decryption happens in place in the caller's buffer,
//! and the returned [`Packet`] borrows it: a payload is never copied.

use super::bytes::{Reader, Truncated, Writer};
use super::crypto::{self, AeadError};
use super::replay::ReplayProtection;
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES, CONNECT_TOKEN_PRIVATE_BYTES,
    CONNECTION_REQUEST_BYTES, Key, MAC_BYTES, MAX_PAYLOAD_BYTES, VERSION_INFO,
};

/// The packet types, as the low nibble of the prefix byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    /// Client asks to connect, carrying the sealed private token.
    ConnectionRequest = 0,
    /// Server refuses (full).
    ConnectionDenied = 1,
    /// Server answers a request with a challenge token.
    ConnectionChallenge = 2,
    /// Client echoes the challenge token.
    ConnectionResponse = 3,
    /// Either side: "still here"; the server's carries the client's slot.
    KeepAlive = 4,
    /// Application data.
    Payload = 5,
    /// Either side closes the connection.
    Disconnect = 6,
}

impl PacketType {
    fn from_nibble(nibble: u8) -> Option<Self> {
        Some(match nibble {
            0 => Self::ConnectionRequest,
            1 => Self::ConnectionDenied,
            2 => Self::ConnectionChallenge,
            3 => Self::ConnectionResponse,
            4 => Self::KeepAlive,
            5 => Self::Payload,
            6 => Self::Disconnect,
            _ => return None,
        })
    }

    /// Whether the replay window covers this type (keep-alive, payload, disconnect).
    pub fn is_replay_protected(self) -> bool {
        matches!(self, Self::KeepAlive | Self::Payload | Self::Disconnect)
    }
}

/// Which packet types a reader takes; the rest are dropped before decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedTypes(u8);

impl AllowedTypes {
    /// What a server takes: request, response, keep-alive, payload, disconnect.
    pub const SERVER: Self = Self(0b111_1001);
    /// What a client takes: denied, challenge, keep-alive, payload, disconnect.
    pub const CLIENT: Self = Self(0b111_0110);
    /// Every type (for tests and tools).
    pub const ALL: Self = Self(0b111_1111);

    /// Whether `kind` passes this filter.
    pub fn allows(self, kind: PacketType) -> bool {
        self.0 & (1 << kind as u8) != 0
    }
}

/// A decoded packet. Borrowed parts point into the caller's (decrypted) buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet<'a> {
    /// The 1078-byte connection request; its private token is still sealed.
    ConnectionRequest(ConnectionRequest<'a>),
    /// The server is full.
    ConnectionDenied,
    /// The server's challenge.
    ConnectionChallenge {
        /// The challenge sequence, the nonce of the sealed token.
        token_sequence: u64,
        /// The sealed challenge token.
        token_data: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    /// The client's echo of the challenge.
    ConnectionResponse {
        /// The challenge sequence, echoed.
        token_sequence: u64,
        /// The sealed challenge token, echoed.
        token_data: &'a [u8; CHALLENGE_TOKEN_BYTES],
    },
    /// Keep-alive. From a server it tells the client its slot; from a client both are 0.
    KeepAlive {
        /// The client's slot on the server.
        client_index: u32,
        /// The server's slot count.
        max_clients: u32,
    },
    /// Application bytes, 1 to 1200.
    Payload(&'a [u8]),
    /// The sender closes the connection.
    Disconnect,
}

impl Packet<'_> {
    /// This packet's type.
    pub fn kind(&self) -> PacketType {
        match self {
            Self::ConnectionRequest(_) => PacketType::ConnectionRequest,
            Self::ConnectionDenied => PacketType::ConnectionDenied,
            Self::ConnectionChallenge { .. } => PacketType::ConnectionChallenge,
            Self::ConnectionResponse { .. } => PacketType::ConnectionResponse,
            Self::KeepAlive { .. } => PacketType::KeepAlive,
            Self::Payload(_) => PacketType::Payload,
            Self::Disconnect => PacketType::Disconnect,
        }
    }
}

/// The connection request: sent in the clear, the private token inside stays sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRequest<'a> {
    /// The token's protocol id.
    pub protocol_id: u64,
    /// The token's expire timestamp (unix seconds), also part of the private AEAD's data.
    pub expire_timestamp: u64,
    /// The token's XChaCha20 nonce.
    pub nonce: &'a [u8; CONNECT_TOKEN_NONCE_BYTES],
    /// The sealed private token.
    pub private_data: &'a [u8; CONNECT_TOKEN_PRIVATE_BYTES],
}

/// Why a packet was not read or written. Each variant is one drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Too short for any packet, or a request that is not exactly 1078 bytes.
    #[error("bad packet size {0}")]
    BadSize(usize),
    /// Type 7..15, or a sequence byte count outside 1..8, or more than the packet holds.
    #[error("bad prefix byte {0:#04x}")]
    BadPrefix(u8),
    /// A type this side never accepts (a challenge sent to a server, say).
    #[error("packet type {0:?} is not accepted here")]
    TypeNotAllowed(PacketType),
    /// A request's version info is not `NETCODE 1.02`.
    #[error("version info is not NETCODE 1.02")]
    BadVersion,
    /// A request for another protocol id.
    #[error("protocol id {0:#x} is not ours")]
    WrongProtocolId(u64),
    /// The sequence was seen already or is older than the replay window.
    #[error("sequence {0} replayed or too old")]
    Replayed(u64),
    /// The tag did not verify: wrong key, wrong protocol id, or altered bytes.
    #[error("decryption failed")]
    Decrypt,
    /// Authenticated, but the body has the wrong size for its type.
    #[error("body of {len} bytes is the wrong size for {kind:?}")]
    BadBodySize {
        /// The packet's type.
        kind: PacketType,
        /// The body's size.
        len: usize,
    },
    /// Writing: a payload outside 1..1200 bytes.
    #[error("payload of {0} bytes is outside 1..=1200")]
    PayloadSize(usize),
    /// Writing: the output buffer is too small.
    #[error("output buffer too small")]
    BufferTooSmall,
}

impl From<Truncated> for PacketError {
    fn from(_: Truncated) -> Self {
        Self::BufferTooSmall
    }
}

impl From<AeadError> for PacketError {
    fn from(_: AeadError) -> Self {
        Self::Decrypt
    }
}

/// Smallest encrypted packet: prefix, one sequence byte, tag.
pub const MIN_ENCRYPTED_PACKET_BYTES: usize = 1 + 1 + MAC_BYTES;

/// The largest datagram netcode sends: a 1200-byte payload at an 8-byte sequence.
pub const MAX_PACKET_BYTES: usize = 1 + 8 + MAX_PAYLOAD_BYTES + MAC_BYTES;

/// The fewest bytes (1..=8) that hold `sequence`.
pub fn sequence_bytes(sequence: u64) -> usize {
    let significant = 64 - sequence.leading_zeros() as usize;
    significant.div_ceil(8).max(1)
}

/// The 22 bytes of associated data of an encrypted packet.
pub fn packet_associated_data(protocol_id: u64, prefix: u8) -> [u8; 22] {
    let mut aad = [0u8; 22];
    aad[..13].copy_from_slice(VERSION_INFO);
    aad[13..21].copy_from_slice(&protocol_id.to_le_bytes());
    aad[21] = prefix;
    aad
}

impl Packet<'_> {
    /// Writes this packet into `out` and returns its length.
    ///
    /// A request is written in the clear (`sequence` and `key` unused); every other type is
    /// sealed with `key` at `sequence`.
    pub fn write(
        &self,
        out: &mut [u8],
        sequence: u64,
        key: &Key,
        protocol_id: u64,
    ) -> Result<usize, PacketError> {
        if let Self::ConnectionRequest(request) = self {
            return request.write(out);
        }
        if let Self::Payload(payload) = self
            && !(1..=MAX_PAYLOAD_BYTES).contains(&payload.len())
        {
            return Err(PacketError::PayloadSize(payload.len()));
        }
        let num_sequence_bytes = sequence_bytes(sequence);
        let prefix = ((num_sequence_bytes as u8) << 4) | self.kind() as u8;
        let header_len = 1 + num_sequence_bytes;
        let mut w = Writer::new(out);
        w.u8(prefix)?;
        w.bytes(&sequence.to_le_bytes()[..num_sequence_bytes])?;
        match self {
            Self::ConnectionRequest(_) | Self::ConnectionDenied | Self::Disconnect => {}
            Self::ConnectionChallenge {
                token_sequence,
                token_data,
            }
            | Self::ConnectionResponse {
                token_sequence,
                token_data,
            } => {
                w.u64(*token_sequence)?;
                w.bytes(&token_data[..])?;
            }
            Self::KeepAlive {
                client_index,
                max_clients,
            } => {
                w.u32(*client_index)?;
                w.u32(*max_clients)?;
            }
            Self::Payload(payload) => w.bytes(payload)?,
        }
        let body_end = w.position();
        let total = body_end + MAC_BYTES;
        if out.len() < total {
            return Err(PacketError::BufferTooSmall);
        }
        let aad = packet_associated_data(protocol_id, prefix);
        let tag = crypto::seal(key, sequence, &aad, &mut out[header_len..body_end])?;
        out[body_end..total].copy_from_slice(&tag);
        Ok(total)
    }
}

impl ConnectionRequest<'_> {
    /// Writes the 1078-byte request.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, PacketError> {
        let mut w = Writer::new(out);
        w.u8(PacketType::ConnectionRequest as u8)?;
        w.bytes(VERSION_INFO)?;
        w.u64(self.protocol_id)?;
        w.u64(self.expire_timestamp)?;
        w.bytes(self.nonce)?;
        w.bytes(self.private_data)?;
        Ok(w.position())
    }
}

/// Reads a connection request: exactly 1078 bytes, our version and protocol id.
///
/// Expiry and the private token are the server's business: it knows the time and the key.
pub fn read_connection_request(
    buf: &[u8],
    protocol_id: u64,
) -> Result<ConnectionRequest<'_>, PacketError> {
    if buf.len() != CONNECTION_REQUEST_BYTES {
        return Err(PacketError::BadSize(buf.len()));
    }
    let mut r = Reader::new(buf);
    let prefix = r.u8()?;
    if prefix != 0 {
        return Err(PacketError::BadPrefix(prefix));
    }
    if r.bytes(VERSION_INFO.len())? != VERSION_INFO {
        return Err(PacketError::BadVersion);
    }
    let packet_protocol_id = r.u64()?;
    if packet_protocol_id != protocol_id {
        return Err(PacketError::WrongProtocolId(packet_protocol_id));
    }
    let expire_timestamp = r.u64()?;
    let nonce = r.bytes(CONNECT_TOKEN_NONCE_BYTES)?;
    let private_data = r.bytes(CONNECT_TOKEN_PRIVATE_BYTES)?;
    Ok(ConnectionRequest {
        protocol_id: packet_protocol_id,
        expire_timestamp,
        nonce: nonce
            .try_into()
            .map_err(|_| PacketError::BadSize(buf.len()))?,
        private_data: private_data
            .try_into()
            .map_err(|_| PacketError::BadSize(buf.len()))?,
    })
}

/// Reads an encrypted packet (types 1 to 6), decrypting `buf` in place.
///
/// `replay`, when given, is consulted before decryption and advanced after it, for the
/// replay-protected types only. Returns the packet's sequence and the packet.
pub fn read_encrypted_packet<'a>(
    buf: &'a mut [u8],
    protocol_id: u64,
    key: &Key,
    allowed: AllowedTypes,
    replay: Option<&mut ReplayProtection>,
) -> Result<(u64, Packet<'a>), PacketError> {
    let (kind, sequence, header_len) = read_header(buf, allowed)?;
    if kind.is_replay_protected()
        && let Some(replay) = replay.as_deref()
        && replay.already_received(sequence)
    {
        return Err(PacketError::Replayed(sequence));
    }
    let aad = packet_associated_data(protocol_id, buf[0]);
    let (header_and_body, tag) = buf.split_at_mut(buf.len() - MAC_BYTES);
    let tag: &[u8; MAC_BYTES] = (&*tag).try_into().map_err(|_| PacketError::Decrypt)?;
    let body = &mut header_and_body[header_len..];
    crypto::open(key, sequence, &aad, body, tag)?;
    if kind.is_replay_protected()
        && let Some(replay) = replay
    {
        replay.advance(sequence);
    }
    let body: &'a [u8] = body;
    Ok((sequence, decode_body(kind, body)?))
}

/// Checks size, prefix and type filter; returns type, sequence and header length.
fn read_header(buf: &[u8], allowed: AllowedTypes) -> Result<(PacketType, u64, usize), PacketError> {
    if buf.len() < MIN_ENCRYPTED_PACKET_BYTES {
        return Err(PacketError::BadSize(buf.len()));
    }
    let prefix = buf[0];
    let kind = PacketType::from_nibble(prefix & 0x0f).ok_or(PacketError::BadPrefix(prefix))?;
    if kind == PacketType::ConnectionRequest {
        // A request has prefix 00 and goes through `read_connection_request`; a request
        // type with sequence bytes is no packet at all.
        return Err(PacketError::BadPrefix(prefix));
    }
    if !allowed.allows(kind) {
        return Err(PacketError::TypeNotAllowed(kind));
    }
    let num_sequence_bytes = (prefix >> 4) as usize;
    if !(1..=8).contains(&num_sequence_bytes) {
        return Err(PacketError::BadPrefix(prefix));
    }
    if buf.len() < 1 + num_sequence_bytes + MAC_BYTES {
        return Err(PacketError::BadSize(buf.len()));
    }
    let mut sequence = [0u8; 8];
    sequence[..num_sequence_bytes].copy_from_slice(&buf[1..1 + num_sequence_bytes]);
    Ok((kind, u64::from_le_bytes(sequence), 1 + num_sequence_bytes))
}

fn decode_body(kind: PacketType, body: &[u8]) -> Result<Packet<'_>, PacketError> {
    let wrong_size = PacketError::BadBodySize {
        kind,
        len: body.len(),
    };
    match kind {
        PacketType::ConnectionDenied | PacketType::Disconnect => {
            if !body.is_empty() {
                return Err(wrong_size);
            }
            Ok(if kind == PacketType::Disconnect {
                Packet::Disconnect
            } else {
                Packet::ConnectionDenied
            })
        }
        PacketType::ConnectionChallenge | PacketType::ConnectionResponse => {
            if body.len() != 8 + CHALLENGE_TOKEN_BYTES {
                return Err(wrong_size);
            }
            let (sequence, token) = body.split_at(8);
            let token_sequence = u64::from_le_bytes(sequence.try_into().map_err(|_| wrong_size)?);
            let token_data = token.try_into().map_err(|_| wrong_size)?;
            Ok(if kind == PacketType::ConnectionChallenge {
                Packet::ConnectionChallenge {
                    token_sequence,
                    token_data,
                }
            } else {
                Packet::ConnectionResponse {
                    token_sequence,
                    token_data,
                }
            })
        }
        PacketType::KeepAlive => {
            if body.len() != 8 {
                return Err(wrong_size);
            }
            let mut r = Reader::new(body);
            Ok(Packet::KeepAlive {
                client_index: r.u32()?,
                max_clients: r.u32()?,
            })
        }
        PacketType::Payload => {
            if !(1..=MAX_PAYLOAD_BYTES).contains(&body.len()) {
                return Err(wrong_size);
            }
            Ok(Packet::Payload(body))
        }
        PacketType::ConnectionRequest => Err(PacketError::BadPrefix(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_bytes_are_minimal() {
        assert_eq!(sequence_bytes(0), 1);
        assert_eq!(sequence_bytes(255), 1);
        assert_eq!(sequence_bytes(256), 2);
        assert_eq!(sequence_bytes(1000), 2);
        assert_eq!(sequence_bytes(u64::MAX), 8);
        assert_eq!(sequence_bytes(1 << 63), 8);
    }

    #[test]
    fn server_and_client_filters_differ_as_the_standard_says() {
        use PacketType::*;
        for (kind, server, client) in [
            (ConnectionRequest, true, false),
            (ConnectionDenied, false, true),
            (ConnectionChallenge, false, true),
            (ConnectionResponse, true, false),
            (KeepAlive, true, true),
            (Payload, true, true),
            (Disconnect, true, true),
        ] {
            assert_eq!(AllowedTypes::SERVER.allows(kind), server, "{kind:?}");
            assert_eq!(AllowedTypes::CLIENT.allows(kind), client, "{kind:?}");
        }
    }
}
