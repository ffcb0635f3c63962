//! arena-client: the client side of Arena, as a library the bots and the terminal client
//! share. Everything but the terminal client is generic over the
//! [`Game`](arena_shared::game::Game).
//!
//! # Layout
//!
//! - [`session`]: the sans-IO session (connect, send inputs, receive snapshots and reliable
//!   notices, follow the match across handoffs and crashes, count every input).
//! - [`prediction`]: the own player moved at once and reconciled with the server.
//! - [`interpolation`]: other entities drawn 100 ms in the past, smoothly.
//! - [`play`]: the built-in shooter's terminal client: its game state and drawing.
//! - [`conditioner`]: a link conditioner (loss, latency, jitter) for drivers.
//! - [`driver`]: the socket work every client driver shares.
//! - [`bots`]: headless bots (the runner, its report and command line; the shooter's bots).
//! - [`http`]: a small HTTP client for the server's admin API (tokens, status).
//! - [`clock`]: the drivers' clock.

pub mod bots;
pub mod clock;
pub mod conditioner;
pub mod driver;
pub mod http;
pub mod interpolation;
pub mod play;
pub mod prediction;
pub mod session;
