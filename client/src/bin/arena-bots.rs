//! `arena-bots`: N headless bots against an Arena server, then one JSON line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arena_client::bots::{Behavior, BotsConfig, TokenSource, run_bots};
use arena_client::conditioner::LinkSpec;
use arena_shared::identity::{ARENA_PROTOCOL_ID, parse_private_key, parse_protocol_id};
use clap::Parser;

/// Headless bots for load and soak tests: each has its own UDP socket and plays with
/// simple AI. Prints one JSON line with what they saw; exits non-zero if any bot failed to
/// connect.
#[derive(Debug, Parser)]
#[command(name = "arena-bots", version)]
struct Args {
    /// The server's UDP address.
    #[arg(long, default_value = "127.0.0.1:7777")]
    server: SocketAddr,
    /// The server's admin API, where tokens come from (POST /token).
    #[arg(
        long,
        default_value = "http://127.0.0.1:7700",
        conflicts_with = "key_file"
    )]
    admin: String,
    /// Mint tokens locally with this private key file (64 hex characters) instead of
    /// asking the admin API: for load tests without it, and against any netcode.io server.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Protocol id for locally minted tokens, decimal or 0x-hex.
    #[arg(long, value_parser = parse_protocol_id)]
    protocol_id: Option<u64>,
    /// How many bots.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=20000))]
    count: u32,
    /// Seconds each bot plays once connected.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seeds the bots' choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How they play.
    #[arg(long, value_enum, default_value_t = Behavior::Wander)]
    behavior: Behavior,
    /// The server's tick rate (inputs per second).
    #[arg(long, default_value_t = 60)]
    tick_hz: u32,
    /// Play over a worse network, e.g. "loss=5%,latency=80ms,jitter=20ms" (each way).
    #[arg(long)]
    simulate: Option<LinkSpec>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("arena-bots: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<bool> {
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
        None => TokenSource::Admin(args.admin.clone()),
    };
    let config = BotsConfig {
        server: args.server,
        tokens,
        count: args.count as usize,
        duration: Duration::from_secs_f64(args.duration),
        seed: args.seed,
        behavior: args.behavior,
        tick_hz: args.tick_hz.max(1),
        link: args.simulate,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(run_bots(config))?;
    println!("{}", serde_json::to_string(&report)?);
    if let Some(error) = &report.first_error {
        eprintln!("arena-bots: {error}");
    }
    Ok(report.connect_failures == 0)
}
