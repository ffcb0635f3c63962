//! `arena-bots`: N headless bots against an Arena server (the built-in shooter), then one
//! JSON line. Exit codes: see [`arena_client::bots::cli`] (0 all connected and none lost,
//! 1 could not start, 2 some never connected, 3 some lost their match, 130/143 stopped by
//! SIGINT/SIGTERM, the report printed all the same).

use std::process::ExitCode;

use arena_client::bots::cli::{self, BotArgs, EXIT_CODES_HELP};
use arena_client::bots::shooter::{Behavior, Brain};
use arena_shared::sim::Shooter;

/// Headless bots for load and soak tests: each has its own UDP socket and plays with
/// simple AI, at the server's tick rate. Prints one JSON line with what they saw.
#[derive(Debug, clap::Parser)]
#[command(name = "arena-bots", version, after_help = EXIT_CODES_HELP)]
struct Args {
    #[command(flatten)]
    bots: BotArgs,
    /// How they play.
    #[arg(long, value_enum, default_value_t = Behavior::Wander)]
    behavior: Behavior,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    let behavior = args.behavior;
    cli::main::<Shooter, _>("arena-bots", args.bots, move |seed| {
        Brain::new(behavior, seed)
    })
}
