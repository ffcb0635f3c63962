//! The command line every bots binary shares: [`BotArgs`] for its flags (a binary flattens
//! them into its own parser, next to its game's flags) and [`main`] for the run.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arena_shared::game::Game;
use arena_shared::identity::{ARENA_PROTOCOL_ID, parse_private_key, parse_protocol_id};

use super::{Bot, BotsConfig, TokenSource, run_bots};
use crate::conditioner::LinkSpec;

/// The flags of a bots run, whatever the game.
#[derive(Debug, clap::Args)]
pub struct BotArgs {
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub server: SocketAddr,
    /// The server's admin API, where tokens come from (POST /token).
    #[arg(
        long,
        default_value = "http://127.0.0.1:7700",
        conflicts_with = "key_file"
    )]
    pub admin: String,
    /// Mint tokens locally with this private key file (64 hex characters) instead of
    /// asking the admin API: for load tests without it, and against any netcode.io server.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Protocol id for locally minted tokens, decimal or 0x-hex.
    #[arg(long, value_parser = parse_protocol_id)]
    pub protocol_id: Option<u64>,
    /// How many bots.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20000))]
    pub count: u32,
    /// Seconds each bot plays once connected.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seeds the bots' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The server's tick rate (inputs per second).
    #[arg(long, default_value_t = 60)]
    pub tick_hz: u32,
    /// Play over a worse network, e.g. "loss=5%,latency=80ms,jitter=20ms" (each way).
    #[arg(long)]
    pub simulate: Option<LinkSpec>,
}

/// Runs the bots `args` describe, each played by `brain(seed + i)`, and prints the one JSON
/// line of the report. `name` prefixes error messages. Exits 0 if every bot connected, 2 if
/// some never did, 1 if the run could not start (bad flags, unreadable key file).
pub fn main<G: Game, B: Bot<G>>(
    name: &str,
    args: BotArgs,
    brain: impl Fn(u64) -> B + Send + Sync + 'static,
) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run::<G, B>(name, args, brain) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The run: `Ok(false)` if some bot never connected.
fn run<G: Game, B: Bot<G>>(
    name: &str,
    args: BotArgs,
    brain: impl Fn(u64) -> B + Send + Sync + 'static,
) -> anyhow::Result<bool> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(run_bots::<G, B>(config, brain))?;
    println!("{}", serde_json::to_string(&report)?);
    if let Some(error) = &report.first_error {
        eprintln!("{name}: {error}");
    }
    Ok(report.connect_failures == 0)
}

/// Checks the flags clap cannot, and reads the key file.
fn config(args: BotArgs) -> anyhow::Result<BotsConfig> {
    if !(args.duration.is_finite() && args.duration >= 0.0 && args.duration <= 86_400.0) {
        anyhow::bail!(
            "--duration must be 0 to 86400 seconds, got {}",
            args.duration
        );
    }
    let tokens = match &args.key_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read key file {}", path.display()))?;
            let key = parse_private_key(&text)
                .map_err(|reason| anyhow::anyhow!("key file {}: {reason}", path.display()))?;
            TokenSource::Local {
                key,
                protocol_id: args.protocol_id.unwrap_or(ARENA_PROTOCOL_ID),
            }
        }
        None => TokenSource::Admin(args.admin),
    };
    Ok(BotsConfig {
        server: args.server,
        tokens,
        count: args.count as usize,
        duration: Duration::from_secs_f64(args.duration),
        seed: args.seed,
        tick_hz: args.tick_hz.max(1),
        link: args.simulate,
    })
}
