//! arena-tests: a simulated network for Arena's sans-IO server and clients, and helpers
//! for tests that run the real binaries on loopback.
//!
//! # Layout
//!
//! - [`simnet`]: a virtual clock, lossy links, and a server with its clients in one process.
//! - [`procs`]: starting and stopping the real binaries on OS-chosen loopback ports.
//! - [`agones_fake`]: a fake Agones SDK sidecar that records the server's lifecycle calls.
//! - [`redis`]: a `redis-server` per test, or the shared one `.ci/run` starts.

pub mod agones_fake;
pub mod procs;
pub mod redis;
pub mod simnet;
