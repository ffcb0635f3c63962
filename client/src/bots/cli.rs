//! The command line every bots binary shares: [`BotArgs`] for its flags (a binary flattens
//! them into its own parser, next to its game's flags), [`parse`] to read them, and
//! [`main`] for the run.
//!
//! # Exit codes
//!
//! The report line is printed whatever happens once the run started, then the process
//! exits with:
//!
//! | code | meaning |
//! |---|---|
//! | 0 ([`EXIT_OK`]) | every bot connected, and none lost its match |
//! | 1 ([`EXIT_CANNOT_START`]) | the run could not start: bad flags, an unreadable key file |
//! | 2 ([`EXIT_NOT_CONNECTED`]) | some bot never connected (wins over 3) |
//! | 3 ([`EXIT_LOST`]) | some bot lost its match mid-run and did not get it back |
//! | 130 ([`EXIT_SIGINT`]) | stopped by SIGINT (Ctrl-C): the bots left, the report is printed |
//! | 143 ([`EXIT_SIGTERM`]) | stopped by SIGTERM, the same way |
//!
//! A bot whose match was handed to another server, or that reconnected to a standby
//! after a crash, has not lost it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use arena_shared::game::Game;
use arena_shared::identity::{ARENA_PROTOCOL_ID, parse_private_key, parse_protocol_id};
use tokio::sync::watch;

use super::{Bot, BotsConfig, BotsReport, TokenSource, run_bots};
use crate::conditioner::LinkSpec;

/// Every bot connected, and none lost its match.
pub const EXIT_OK: u8 = 0;
/// The run could not start: bad flags, an unreadable key file.
pub const EXIT_CANNOT_START: u8 = 1;
/// Some bot never connected.
pub const EXIT_NOT_CONNECTED: u8 = 2;
/// Some bot lost its match mid-run (the server stopped or died, and no server took the
/// match over in time).
pub const EXIT_LOST: u8 = 3;
/// Stopped by SIGINT (128 + 2).
pub const EXIT_SIGINT: u8 = 130;
/// Stopped by SIGTERM (128 + 15).
pub const EXIT_SIGTERM: u8 = 143;

/// The exit codes, for a bots binary's `--help` (`#[command(after_help = EXIT_CODES_HELP)]`).
pub const EXIT_CODES_HELP: &str = "\
Exit codes (the JSON report is printed in every case but 1):
  0    every bot connected and none lost its match (a handoff or a reconnect to a standby is not a loss)
  1    the run could not start (bad flags, an unreadable key file)
  2    some bot never connected
  3    some bot lost its match mid-run (its server stopped or died and no server took over)
  130  stopped by SIGINT (Ctrl-C); 143: stopped by SIGTERM";

/// The server address locally minted tokens name when `--server` is not given.
const DEFAULT_SERVER: &str = "127.0.0.1:7777";

/// The flags of a bots run, whatever the game.
#[derive(Debug, clap::Args)]
pub struct BotArgs {
    /// The server's UDP address, for tokens minted with --key-file [default: 127.0.0.1:7777].
    /// Only with --key-file: a token from the admin API lists the servers itself (a
    /// netcode.io server accepts only tokens that name its own address).
    #[arg(long, requires = "key_file", conflicts_with = "admin")]
    pub server: Option<SocketAddr>,
    /// The server's admin API, where tokens come from (POST /token).
    #[arg(
        long,
        default_value = "http://127.0.0.1:7700",
        conflicts_with = "key_file"
    )]
    pub admin: String,
    /// Bearer token for the admin API, sent when fetching tokens: the server's own
    /// --admin-token (a server with one answers /token with 401 otherwise).
    #[arg(long, env = "ARENA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
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
    /// Seconds each bot plays once connected. The bots pace their inputs at the server's
    /// tick rate, which it tells each of them on connecting.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seeds the bots' choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Play over a worse network, e.g. "loss=5%,latency=80ms,jitter=20ms" (each way).
    #[arg(long)]
    pub simulate: Option<LinkSpec>,
}

/// Parses a bots binary's command line. A bad one exits with [`EXIT_CANNOT_START`] (not
/// clap's 2, which means "some bot never connected" here); `--help` and `--version` exit 0.
pub fn parse<A: clap::Parser>() -> A {
    match A::try_parse() {
        Ok(args) => args,
        Err(error) => {
            let _ = error.print();
            let code = if error.use_stderr() {
                i32::from(EXIT_CANNOT_START)
            } else {
                0
            };
            std::process::exit(code);
        }
    }
}

/// How a run ended, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The bots played their time.
    Ran,
    /// SIGINT came first.
    Interrupted,
    /// SIGTERM came first.
    Terminated,
}

/// Runs the bots `args` describe, each played by `brain(seed + i)`, prints the one JSON
/// line of the report, and exits as the module docs say. `name` prefixes error messages.
/// SIGINT or SIGTERM stops the bots (they leave cleanly) and the report still comes.
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
        Ok((report, ending)) => ExitCode::from(exit_code(&report, ending)),
        Err(error) => {
            eprintln!("{name}: {error:#}");
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

/// The exit code of a run that printed `report`.
fn exit_code(report: &BotsReport, ending: Ending) -> u8 {
    match ending {
        Ending::Interrupted => EXIT_SIGINT,
        Ending::Terminated => EXIT_SIGTERM,
        Ending::Ran if report.connect_failures > 0 => EXIT_NOT_CONNECTED,
        Ending::Ran if report.disconnects > 0 => EXIT_LOST,
        Ending::Ran => EXIT_OK,
    }
}

/// The run, to its report (printed here) and how it ended.
fn run<G: Game, B: Bot<G>>(
    name: &str,
    args: BotArgs,
    brain: impl Fn(u64) -> B + Send + Sync + 'static,
) -> anyhow::Result<(BotsReport, Ending)> {
    let config = config(args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (report, ending) = runtime.block_on(async move {
        let signals = Signals::listen()?;
        let (stop, stopped) = watch::channel(false);
        let run = run_bots::<G, B>(config, brain, stopped);
        tokio::pin!(run);
        tokio::select! {
            report = &mut run => anyhow::Ok((report?, Ending::Ran)),
            ending = signals.next() => {
                let _ = stop.send(true);
                Ok((run.await?, ending))
            }
        }
    })?;
    println!("{}", serde_json::to_string(&report)?);
    if let Some(error) = &report.first_error {
        eprintln!("{name}: {error}");
    }
    Ok((report, ending))
}

/// SIGINT and SIGTERM, listened for from the start of the run.
struct Signals {
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> anyhow::Result<Self> {
        Ok(Self {
            #[cfg(unix)]
            terminate: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?,
        })
    }

    /// The first of the two to arrive.
    async fn next(mut self) -> Ending {
        // Where SIGINT cannot be listened for, only SIGTERM stops the run.
        let interrupt = async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            () = interrupt => Ending::Interrupted,
            () = self.terminated() => Ending::Terminated,
        }
    }

    #[cfg(unix)]
    async fn terminated(&mut self) {
        if self.terminate.recv().await.is_none() {
            std::future::pending::<()>().await;
        }
    }

    #[cfg(not(unix))]
    async fn terminated(&mut self) {
        std::future::pending::<()>().await;
    }
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
            let server = match args.server {
                Some(server) => server,
                None => DEFAULT_SERVER
                    .parse()
                    .context("the default server address")?,
            };
            TokenSource::Local {
                server,
                key,
                protocol_id: args.protocol_id.unwrap_or(ARENA_PROTOCOL_ID),
            }
        }
        None => {
            if args.admin_token.as_deref() == Some("") {
                anyhow::bail!("--admin-token (or ARENA_ADMIN_TOKEN) is empty");
            }
            TokenSource::Admin {
                url: args.admin,
                bearer: args.admin_token,
            }
        }
    };
    Ok(BotsConfig {
        tokens,
        count: args.count as usize,
        duration: Duration::from_secs_f64(args.duration),
        seed: args.seed,
        link: args.simulate,
    })
}
