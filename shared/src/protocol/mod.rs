//! Arena's game protocol, carried inside netcode payloads, generic over the [`Game`]
//! (see [`crate::game`]).
//!
//! # Layout
//!
//! - [`ack`]: the packet header (sequence, ack, ack bits) and RTT and loss estimates.
//! - [`messages`]: client and server messages, and the one validating codec.
//! - [`bits`]: the bit writer and reader snapshots' sections are packed with.
//! - [`head`]: a snapshot's head (tick, baseline, input accounting, standing) against
//!   the baseline's head.
//! - [`delta`]: the entities of a snapshot as a delta against a baseline's.
//! - [`baselines`]: the snapshots a client keeps, and reading a section against them.
//! - [`motion`]: a ready-made delta coding of a quantized position and velocity.
//! - [`reliable`]: the notices a server sends reliably, both ends of it.
//!
//! [`Game`]: crate::game::Game

pub mod ack;
pub mod baselines;
pub mod bits;
pub mod delta;
pub mod head;
pub mod messages;
pub mod motion;
pub mod reliable;

pub use ack::{AckTracker, PacketHeader};
pub use head::SnapshotHead;
pub use messages::{
    ClientMessage, DecodeError, EncodeError, Notice, Reliable, Replicated, ScoreEntry,
    ServerMessage, Snapshot, TokenPart, TokenPurpose, decode_client, decode_server, encode,
    encode_snapshot,
};
