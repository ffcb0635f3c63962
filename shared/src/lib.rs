//! arena-shared: the parts of Arena that both sides run, with no I/O.
//!
//! No sockets, no clocks, no threads, no async runtime: every function takes the time and
//! the bytes it needs as arguments. That is what lets the tests run thousands of ticks of a
//! lossy network in milliseconds, and what makes a match a value that can move.
//!
//! # Layout
//!
//! - [`netcode`]: the netcode.io 1.02 transport (tokens, packets, server and client).

pub mod netcode;
