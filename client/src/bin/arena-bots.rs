//! `arena-bots`: N headless bots against an Arena server (the built-in shooter), then one
//! JSON line.

use std::process::ExitCode;

use arena_client::bots::cli::{self, BotArgs};
use arena_client::bots::shooter::{Behavior, Brain};
use arena_shared::sim::Shooter;
use clap::Parser;

/// Headless bots for load and soak tests: each has its own UDP socket and plays with
/// simple AI. Prints one JSON line with what they saw; exits non-zero if any bot failed to
/// connect.
#[derive(Debug, Parser)]
#[command(name = "arena-bots", version)]
struct Args {
    #[command(flatten)]
    bots: BotArgs,
    /// How they play.
    #[arg(long, value_enum, default_value_t = Behavior::Wander)]
    behavior: Behavior,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let behavior = args.behavior;
    cli::main::<Shooter, _>("arena-bots", args.bots, move |seed| {
        Brain::new(behavior, seed)
    })
}
