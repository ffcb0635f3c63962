//! Arena's game protocol, carried inside netcode payloads, generic over the [`Game`]
//! (see [`crate::game`]).
//!
//! # Layout
//!
//! - [`ack`]: the packet header (sequence, ack, ack bits) and RTT and loss estimates.
//! - [`messages`]: client and server messages, and the one validating codec.
//! - [`reliable`]: the notices a server sends reliably, both ends of it.
//!
//! [`Game`]: crate::game::Game

pub mod ack;
pub mod messages;
pub mod reliable;

pub use ack::{AckTracker, PacketHeader};
pub use messages::{
    ClientMessage, DecodeError, EncodeError, Notice, Reliable, Replicated, ScoreEntry,
    ServerMessage, Snapshot, TokenPart, TokenPurpose, decode_client, decode_server, encode,
};
