//! Arena's game protocol, carried inside netcode payloads.
//!
//! # Layout
//!
//! - [`ack`]: the packet header (sequence, ack, ack bits) and RTT and loss estimates.
//! - [`messages`]: client and server messages, and the one validating codec.

pub mod ack;
pub mod messages;

pub use ack::{AckTracker, PacketHeader};
pub use messages::{
    ClientMessage, DecodeError, EncodeError, EntityState, NetEntityId, NetEntityKind, PlayerStatus,
    ScoreEntry, ServerMessage, Snapshot, TokenPart, TokenPurpose, decode_client, decode_server,
    encode,
};
