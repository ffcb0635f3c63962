//! netcode.io 1.02: connect tokens, packets, and sans-IO server and client state machines.
//!
//! Byte-compatible with the reference implementation (checked against its vectors in
//! `shared/tests/data/netcode_vectors.json`). The wire formats are summarised in the team's
//! `netcode/README.md`; the standard is netcode's `STANDARD.md`.
//!
//! # Layout
//!
//! - [`bytes`]: little-endian cursors; the only code that indexes raw bytes.
//! - [`crypto`]: ChaCha20-Poly1305 and XChaCha20-Poly1305 over caller buffers.
//! - [`address`]: server address entries inside tokens.
//! - [`token`]: connect tokens (public and private parts) and challenge tokens.
//! - [`packet`]: the seven packet types, reader and writer.
//! - [`replay`]: the 256-entry replay window.
//! - [`server`], [`client`]: the state machines. They take `now` and bytes, and hand back
//!   [`Transmit`]s and events; drivers own the sockets and the clock.

pub mod address;
pub mod bytes;
pub mod client;
pub mod crypto;
pub mod packet;
pub mod replay;
pub mod server;
pub mod token;

use std::net::SocketAddr;
use std::time::Duration;

pub use client::{Client, ClientSendError, ClientState};
pub use packet::{AllowedTypes, Packet, PacketError, PacketType};
pub use replay::ReplayProtection;
pub use server::{
    ClientIndex, DisconnectReason, DropReason, SendError, Server, ServerConfig, ServerEvent,
    ServerStats,
};
pub use token::{ChallengeToken, ConnectToken, PrivateConnectToken, TokenError, TokenParams};

/// A 256-bit key: the private key, the packet keys and the challenge key.
pub type Key = [u8; 32];
/// The opaque user data carried in tokens.
pub type UserData = [u8; USER_DATA_BYTES];

/// `"NETCODE 1.02"` and a NUL: the version info in tokens, requests and associated data.
pub const VERSION_INFO: &[u8; 13] = b"NETCODE 1.02\0";
/// A connect token.
pub const CONNECT_TOKEN_BYTES: usize = 2048;
/// The sealed private part: 1008 encrypted bytes and the tag.
pub const CONNECT_TOKEN_PRIVATE_BYTES: usize = 1024;
/// The XChaCha20 nonce of a token.
pub const CONNECT_TOKEN_NONCE_BYTES: usize = 24;
/// A sealed challenge token.
pub const CHALLENGE_TOKEN_BYTES: usize = 300;
/// Poly1305 tag.
pub const MAC_BYTES: usize = 16;
/// User data in tokens.
pub const USER_DATA_BYTES: usize = 256;
/// Server addresses a token can list.
pub const MAX_SERVERS_PER_CONNECT: usize = 32;
/// A connection request, exactly.
pub const CONNECTION_REQUEST_BYTES: usize = 1078;
/// Largest payload.
pub const MAX_PAYLOAD_BYTES: usize = 1200;
/// The replay window.
pub const REPLAY_PROTECTION_BUFFER_SIZE: usize = 256;
/// Disconnect packets sent by whichever side ends a connection.
pub const NUM_DISCONNECT_PACKETS: usize = 10;
/// First value of the server's global (challenge and denied) sequence.
pub const SERVER_GLOBAL_SEQUENCE_START: u64 = 1 << 63;
/// Requests, responses and keep-alives go out at 10 Hz when nothing else does.
pub const SEND_INTERVAL: Duration = Duration::from_millis(100);

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Where to.
    pub destination: SocketAddr,
    /// The whole UDP payload.
    pub contents: Vec<u8>,
}

/// A token's timeout: negative or zero means none.
///
/// The reference treats 0 as "none" for connected clients but expires pending handshakes
/// at once, which makes 0-timeout tokens unusable; here 0 means "none" everywhere.
pub(crate) fn timeout_from_seconds(seconds: i32) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds as u64))
}
