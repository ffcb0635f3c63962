//! arena-server: the authoritative server for one match.
//!
//! Everything here is generic over the game ([`arena_shared::game::Game`]): `arena-server`
//! is `runner::main::<Shooter>()`, `examples/tag-server.rs` is `runner::main::<Tag>()`.
//!
//! The match lives in memory and advances on a fixed tick. The core is sans-IO (bytes and
//! `now` in, datagrams out); the tokio driver owns the socket, the timer and the clock; the
//! admin API serves operators over HTTP.
//!
//! # Layout
//!
//! - [`core`]: the sans-IO server: connections, input buffers, the tick, snapshots.
//! - [`replication`]: one client's snapshots: deltas against what it acknowledged, by
//!   priority within its byte budget.
//! - [`encodings`]: entity updates written once and copied into every snapshot that
//!   needs the same one.
//! - [`fanout`]: the clients' snapshots built on `--workers` threads.
//! - `udp`: the game socket, datagrams in batches (received through quinn-udp, sent
//!   through `sendmmsg`).
//! - [`net`]: the tokio driver: socket, fixed-timestep loop, handoff, shutdown.
//! - [`ownership`]: snapshots off the tick thread, the lease, fencing.
//! - [`host`]: the process's role (owner, standby), takeover, a handoff's standby side.
//! - [`transfer`]: a handoff's owner side, and the rule that reads its outcome from the store.
//! - [`handoff`]: the wire of a handoff: prepare, progress, the sealed commit.
//! - `http`: a small HTTP/1.1 client (one request per connection) for the handoff and Agones.
//! - [`agones`]: the Agones SDK sidecar's client (ready, health, allocate, shutdown).
//! - [`lobby`]: a standby's transport before it has a match (denies, or admits a prepare's clients).
//! - [`faults`]: test-only fault hooks (`ARENA_TEST_FAULT_DIR`).
//! - [`admin`]: the HTTP admin API (`/healthz`, `/readyz`, `/status`, `/metrics`, `/clients`,
//!   `/token`, `/drain`, `/handoff`, `/match`), its limits and its server loop.
//! - [`runner`]: the whole process (flags, bind, admin API, signals), generic over the game.
//! - [`config`]: command-line flags and the private key file.
//! - [`store`]: snapshots and ownership leases on disk, with epoch fencing.
//! - [`status`]: the figures the tick loop publishes for the admin API.
//! - [`metrics`]: `/metrics`, a status in the Prometheus text format (`prometheus-client`).

pub mod admin;
pub mod agones;
pub mod config;
pub mod core;
pub mod encodings;
pub mod fanout;
pub mod faults;
pub mod handoff;
pub mod host;
pub(crate) mod http;
pub mod lobby;
pub mod metrics;
pub mod net;
pub mod ownership;
pub mod replication;
pub mod runner;
pub mod status;
pub mod store;
pub mod transfer;
mod udp;
