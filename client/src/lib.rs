//! arena-client: the client side of Arena, as a library the bots and the terminal client
//! share.
//!
//! # Layout
//!
//! - [`session`]: the sans-IO session (connect, send inputs, receive snapshots).
//! - [`bots`]: headless bots and their report.
//! - [`http`]: a small HTTP client for the server's admin API (tokens, status).
//! - [`clock`]: the drivers' clock.

pub mod bots;
pub mod clock;
pub mod http;
pub mod session;
