//! Command-line flags and the private key file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use arena_shared::identity::{parse_private_key, parse_protocol_id};
use arena_shared::netcode::Key;
use clap::Parser;

/// Arena's authoritative game server: owns one match in memory, ticks it at a fixed rate,
/// and serves players over netcode.io (UDP) and operators over HTTP.
#[derive(Debug, Clone, Parser)]
#[command(name = "arena-server", version)]
pub struct Args {
    /// UDP address players connect to.
    #[arg(long, default_value = "127.0.0.1:7777")]
    pub listen: SocketAddr,

    /// Address written into connect tokens, if players reach the server at another
    /// address than --listen (behind NAT, or --listen on 0.0.0.0). Default: the bound
    /// --listen address.
    #[arg(long)]
    pub public_addr: Option<SocketAddr>,

    /// Simulation ticks per second.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub tick_hz: u32,

    /// Player slots; the arena's size follows it.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..=65535))]
    pub max_players: u32,

    /// The match this process owns (in logs, status and snapshots).
    #[arg(long, default_value = "default")]
    pub match_id: String,

    /// netcode.io protocol id, decimal or 0x-hex; clients must use the same.
    #[arg(long, default_value = "0x4152454e41000001", value_parser = parse_protocol_id)]
    pub protocol_id: u64,

    /// File holding the 32-byte private key as 64 hex characters. Without it, a key is
    /// generated into --data-dir/private.key on first start and reused after.
    #[arg(long)]
    pub key_file: Option<PathBuf>,

    /// Where the server keeps its files (the generated key).
    #[arg(long, default_value = "./arena-data")]
    pub data_dir: PathBuf,

    /// Admin HTTP API address (status, metrics, tokens). Keep it on loopback.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub admin: SocketAddr,

    /// World seed (pillars, spawn points); default: random, logged at start.
    #[arg(long)]
    pub seed: Option<u64>,

    /// How far players see, metres.
    #[arg(long, default_value_t = 30.0)]
    pub view_radius: f32,

    /// Seconds of silence before a connection is dropped (written into tokens).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub client_timeout_s: i32,

    /// Seconds a token minted by POST /token may be used to connect.
    #[arg(long, default_value_t = 60)]
    pub token_expire_s: u64,

    /// Start with no match and wait: for a handoff (POST /match from an owner), or, with
    /// --watch, for the owner's lease to lapse.
    #[arg(long)]
    pub standby: bool,

    /// As a standby: take over this match when its owner's lease lapses (crash recovery).
    #[arg(long, requires = "standby")]
    pub watch: Option<String>,

    /// UDP address of a standby (repeatable). Clients get reconnect tokens listing this
    /// server and then these, and reconnect there if this server dies.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,

    /// On SIGTERM, hand the match to the standby whose admin API is at this host:port
    /// instead of stopping it.
    #[arg(long, value_parser = crate::host::parse_admin_target)]
    pub handoff_to: Option<String>,

    /// Require `Authorization: Bearer <TOKEN>` on the admin API's mutating endpoints
    /// (/token, /handoff, /match); needed to bind --admin beyond loopback. Servers of one
    /// fleet share it. Also read from ARENA_ADMIN_TOKEN.
    #[arg(long, env = "ARENA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Seconds between snapshots of the match to the store (the most a crash rolls back).
    #[arg(long, default_value_t = 1.0)]
    pub snapshot_every: f64,

    /// Ownership lease, milliseconds: a standby takes over this long after the owner's
    /// last renewal (renewed four times per lease).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ms: u64,
}

/// Reads a private key file: 64 hex characters (surrounding whitespace allowed).
pub fn read_key_file(path: &Path) -> anyhow::Result<Key> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    parse_private_key(&text).map_err(|reason| anyhow!("bad key file {}: {reason}", path.display()))
}

/// The key from --key-file, or the one in the data dir, generated there if absent.
pub fn load_or_create_key(args: &Args) -> anyhow::Result<Key> {
    if let Some(path) = &args.key_file {
        return read_key_file(path);
    }
    let path = args.data_dir.join("private.key");
    if path.exists() {
        let key = read_key_file(&path)?;
        tracing::info!(path = %path.display(), "using the private key from the data dir");
        return Ok(key);
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data dir {}", args.data_dir.display()))?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    write_private_file(&path, &hex::encode(key))?;
    tracing::info!(
        path = %path.display(),
        "generated a new private key; bots and backends that mint tokens need this file (--key-file)"
    );
    Ok(key)
}

fn write_private_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(file, "{contents}").with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
