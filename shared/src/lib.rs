//! arena-shared: the parts of Arena that both sides run, with no I/O.
//!
//! No sockets, no clocks, no threads, no async runtime: every function takes the time and
//! the bytes it needs as arguments. That is what lets the tests run thousands of ticks of a
//! lossy network in milliseconds, and what makes a match a value that can move.
//!
//! # Layout
//!
//! - [`game`]: the [`game::Game`] trait, the one seam between Arena and a game.
//! - [`hash`]: a stable 64-bit hash for comparing states across runs and processes.
//! - [`identity`]: Arena's protocol id and what its tokens carry (the player's name).
//! - [`netcode`]: the netcode.io 1.02 transport (tokens, packets, server and client).
//! - [`protocol`]: the game protocol inside netcode payloads: ack header, messages, codec.
//! - [`sim`]: the built-in game, an arena shooter (one implementation of the trait).
//! - [`snapshot`]: `MatchSnapshot`, the self-describing format a match moves and recovers in.

pub mod game;
pub mod hash;
pub mod identity;
pub mod netcode;
pub mod protocol;
pub mod sim;
pub mod snapshot;
