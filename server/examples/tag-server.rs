//! `tag-server`: an Arena server running tag ([`arena_tag::Tag`]) instead of the shooter.
//!
//! It takes the same flags as `arena-server` (key file, admin API, store, handoffs,
//! standbys...), which all work the same for any game:
//!
//! ```text
//! cargo run --release -p arena-server --example tag-server -- --help
//! ```

fn main() -> std::process::ExitCode {
    arena_server::runner::main::<arena_tag::Tag>()
}
