//! arena-server: the authoritative server for one match.
//!
//! The match lives in memory and advances on a fixed tick. The core is sans-IO (bytes and
//! `now` in, datagrams out); the tokio driver owns the socket, the timer and the clock; the
//! admin API serves operators over HTTP.
//!
//! # Layout
//!
//! - [`core`]: the sans-IO server: connections, input buffers, the tick, snapshots.
//! - [`net`]: the tokio driver: socket, fixed-timestep loop, handoff, shutdown.
//! - [`ownership`]: snapshots off the tick thread, the lease, fencing.
//! - [`host`]: the process's role (owner, standby), takeover and handoff receipt.
//! - [`handoff`]: the sealed snapshot in transit and the call that carries it.
//! - [`admin`]: the HTTP admin API (`/status`, `/metrics`, `/token`).
//! - [`config`]: command-line flags and the private key file.
//! - [`store`]: snapshots and ownership leases on disk, with epoch fencing.
//! - [`status`]: the figures the tick loop publishes for the admin API.

pub mod admin;
pub mod config;
pub mod core;
pub mod handoff;
pub mod host;
pub mod net;
pub mod ownership;
pub mod status;
pub mod store;
