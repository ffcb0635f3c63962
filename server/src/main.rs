//! `arena-server`: the built-in arena shooter, served by Arena's generic runner (flags,
//! admin API, store, handoffs, crash recovery: see [`arena_server::runner`]).

use std::process::ExitCode;

use arena_shared::sim::Shooter;

fn main() -> ExitCode {
    arena_server::runner::main::<Shooter>()
}
