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

    /// Seeds the match's RNG (the shooter's pillars and spawn points); default: random,
    /// logged at start.
    #[arg(long)]
    pub seed: Option<u64>,

    /// How far players see, in the game's units (metres for the shooter and tag); a
    /// finite number above 0.
    #[arg(long, default_value_t = 30.0, value_parser = positive_finite, allow_negative_numbers = true)]
    pub view_radius: f32,

    /// Each client's snapshot budget, bytes a second (its datagrams' payloads). Snapshots
    /// are deltas filled by priority up to it; a client whose budget is spent gets its
    /// next snapshot a tick or more later. At least 1920 (a small snapshot 20 times a
    /// second); 16000 is 16 KB/s, about 128 kbit/s.
    #[arg(long, default_value_t = 16_000, value_parser = clap::value_parser!(u32).range(1920..=10_000_000))]
    pub client_bytes_per_s: u32,

    /// Threads that build, encode the clients' snapshots each tick while the world is
    /// read-only (sealing and sending stay on the tick's thread). 0: as many as the
    /// machine has, less one for the tick (at least 1).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub workers: u16,

    /// Seconds of silence before a connection is dropped (written into tokens).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(i32).range(1..=3600))]
    pub client_timeout_s: i32,

    /// Seconds a token minted by POST /token may be used to connect: at least
    /// --client-timeout-s (a token that expires first makes every connect fail).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_expire_s: u64,

    /// Start with no match and wait: for a handoff (POST /match from an owner), or, with
    /// --watch, for the owner's lease to lapse.
    #[arg(long)]
    pub standby: bool,

    /// As a standby: take over this match when its owner's lease lapses (crash recovery);
    /// `any`: whichever match of the store's directory has an owner that crashed.
    #[arg(long, requires = "standby")]
    pub watch: Option<String>,

    /// UDP address of a standby (repeatable). Clients get reconnect tokens listing this
    /// server and then these, and reconnect there if this server dies.
    #[arg(long = "peer")]
    pub peers: Vec<SocketAddr>,

    /// On SIGTERM, hand the match to the standby whose admin API is at this host:port
    /// instead of stopping it; `auto`: to a free standby registered in the store (tried
    /// in turn, at most two). With --agones the default is `auto`.
    #[arg(long, value_parser = crate::host::parse_admin_target)]
    pub handoff_to: Option<String>,

    /// Where snapshots, leases, the match directory and the standby registry live:
    /// `file` (the default: under --data-dir, shared by processes on one machine) or
    /// `redis://[user:password@]HOST:PORT[/DB]` (shared by processes on any machines;
    /// --data-dir then holds only local files such as the key).
    #[arg(long, default_value = "file", value_parser = clap::value_parser!(crate::store::StoreSpec))]
    pub store: crate::store::StoreSpec,

    /// Key prefix in a Redis store: fleets that share one Redis keep apart by it.
    #[arg(long, default_value = "arena")]
    pub store_namespace: String,

    /// Start a fresh match even if the store holds one of this --match-id (its snapshots
    /// are superseded). Without it a start resumes the stored match with the match's own
    /// settings (players, tick rate, seed), and refuses flags that conflict with them.
    #[arg(long)]
    pub new_match: bool,

    /// Speak to the Agones SDK sidecar (its HTTP gateway on 127.0.0.1:$AGONES_SDK_HTTP_PORT,
    /// default 9358): Ready once serving, Health every second from the tick loop, Allocate
    /// when the match has players, Shutdown on exit; SIGTERM hands the match off
    /// (--handoff-to, default auto) before it.
    #[arg(long)]
    pub agones: bool,

    /// Require `Authorization: Bearer <TOKEN>` on the admin API's mutating endpoints and
    /// its client list (/token, /drain, /handoff, /match, /clients); needed to bind
    /// --admin beyond loopback. Servers of one fleet share it, and clients pass it to get
    /// tokens (arena-play, arena-bots: --admin-token). Also read from ARENA_ADMIN_TOKEN.
    #[arg(long, env = "ARENA_ADMIN_TOKEN", hide_env_values = true, value_parser = non_empty)]
    pub admin_token: Option<String>,

    /// Seconds between snapshots of the match to the store (the most a crash rolls back).
    #[arg(long, default_value_t = 1.0)]
    pub snapshot_every: f64,

    /// Ownership lease, milliseconds: a standby takes over this long after the owner's
    /// last renewal (renewed four times per lease).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub lease_ms: u64,

    /// Write a new private key to PATH (64 hex characters, readable by its owner only),
    /// then exit without serving. Give the same file to every server of a match
    /// (--key-file) and to whatever mints tokens (arena-bots --key-file). Never overwrites.
    #[arg(long, value_name = "PATH")]
    pub make_key: Option<PathBuf>,
}

impl Args {
    /// Parses the command line, and notes which of the match-shaping flags were given on
    /// it (not left at their defaults): see [`MatchFlags`].
    pub fn parse_with_sources() -> (Self, MatchFlags) {
        use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
        let matches = Self::command().get_matches();
        let args = Self::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let given = |id: &str| {
            matches!(
                matches.value_source(id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            )
        };
        let flags = MatchFlags {
            max_players: given("max_players").then_some(args.max_players),
            tick_hz: given("tick_hz").then_some(args.tick_hz),
            seed: args.seed,
            new_match: args.new_match,
        };
        (args, flags)
    }
}

impl Args {
    /// The checks that concern more than one flag; `Err` names the flags and the fix.
    pub fn check(&self) -> Result<(), String> {
        if self.token_expire_s < u64::from(self.client_timeout_s.unsigned_abs()) {
            return Err(format!(
                "--token-expire-s {} is shorter than --client-timeout-s {}: a token would expire before its connection could time out, and connects would fail; raise --token-expire-s",
                self.token_expire_s, self.client_timeout_s
            ));
        }
        Ok(())
    }
}

/// `--view-radius`: a finite number above 0.
fn positive_finite(text: &str) -> Result<f32, String> {
    let value: f32 = text
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a number"))?;
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(format!("must be a finite number above 0, got {text}"))
    }
}

/// `--admin-token`: not empty (an empty token would protect nothing).
fn non_empty(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        Err("the admin token is empty: give a secret, or leave the flag (and ARENA_ADMIN_TOKEN) out".into())
    } else {
        Ok(text.to_owned())
    }
}

/// The flags that shape a match, as given on the command line (`None`: left at the
/// default). A stored match keeps its own settings; a given flag that conflicts with them
/// is refused, unless `--new-match` starts a fresh match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MatchFlags {
    /// `--max-players`.
    pub max_players: Option<u32>,
    /// `--tick-hz`.
    pub tick_hz: Option<u32>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--new-match`.
    pub new_match: bool,
}

impl MatchFlags {
    /// The given flags that conflict with a stored match's settings, as
    /// `(flag, given, the match's)`.
    pub fn conflicts(
        &self,
        stored: &arena_shared::game::MatchConfig,
    ) -> Vec<(&'static str, String, String)> {
        let mut found = Vec::new();
        if let Some(given) = self.max_players.filter(|n| *n != stored.max_players) {
            found.push((
                "--max-players",
                given.to_string(),
                stored.max_players.to_string(),
            ));
        }
        if let Some(given) = self.tick_hz.filter(|n| *n != stored.tick_hz) {
            found.push(("--tick-hz", given.to_string(), stored.tick_hz.to_string()));
        }
        if let Some(given) = self.seed.filter(|n| *n != stored.seed) {
            found.push(("--seed", given.to_string(), stored.seed.to_string()));
        }
        found
    }
}

/// Reads a private key file: 64 hex characters (surrounding whitespace allowed).
pub fn read_key_file(path: &Path) -> anyhow::Result<Key> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "bad key file {}: expected 64 hex characters; this file is binary ({} bytes)",
            path.display(),
            e.as_bytes().len()
        )
    })?;
    parse_private_key(&text).map_err(|reason| anyhow!("bad key file {}: {reason}", path.display()))
}

/// `--make-key PATH`: writes a fresh random key to `path` (mode 0600 on Unix), refusing to
/// replace a file that exists.
pub fn make_key_file(path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow!("the operating system's random source failed: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => anyhow!(
            "{} exists: --make-key never replaces a key (servers and token minters using it would stop agreeing); remove it first or pick another path",
            path.display()
        ),
        _ => anyhow!("cannot create {}: {e}", path.display()),
    })?;
    writeln!(file, "{}", hex::encode(key))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// The key from --key-file, or the one in the data dir, generated there if absent.
pub fn load_or_create_key(args: &Args) -> anyhow::Result<Key> {
    match &args.key_file {
        Some(path) => read_key_file(path),
        None => load_or_create_key_in(&args.data_dir),
    }
}

/// The key in `data_dir/private.key`, generated there (mode 0600) if absent. Safe for
/// processes starting at once on one data dir: the key is written whole to a temp file,
/// then hard-linked to `private.key`, which succeeds for exactly one of them; the others
/// read the key it linked (complete, since a link appears whole) and all use the same key.
pub fn load_or_create_key_in(data_dir: &Path) -> anyhow::Result<Key> {
    let path = data_dir.join("private.key");
    if path.exists() {
        let key = read_key_file(&path)?;
        tracing::info!(path = %path.display(), "using the private key from the data dir");
        return Ok(key);
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let mut key = [0u8; 32];
    getrandom::fill(&mut key)
        .map_err(|e| anyhow::anyhow!("the operating system's random source failed: {e}"))?;
    let temp = TempFile::create(data_dir, &hex::encode(key))?;
    let linked = std::fs::hard_link(&temp.0, &path);
    drop(temp);
    match linked {
        Ok(()) => {
            if let Ok(dir) = std::fs::File::open(data_dir) {
                let _ = dir.sync_all();
            }
            tracing::info!(
                path = %path.display(),
                "generated a new private key; bots and backends that mint tokens need this file (--key-file)"
            );
            Ok(key)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Another process starting at the same time created it first: use its key.
            let key = read_key_file(&path)?;
            tracing::info!(path = %path.display(), "using the private key another process just generated");
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// A private (mode 0600), synced temp file in a directory, removed when dropped.
struct TempFile(PathBuf);

impl TempFile {
    fn create(dir: &Path, contents: &str) -> anyhow::Result<Self> {
        use std::io::Write;
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = dir.join(format!(
            "private.key.tmp-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options
            .open(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        // From here on, dropping `temp` removes the file, whatever fails.
        let temp = Self(path);
        writeln!(file, "{contents}")
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cannot write {}", temp.0.display()))?;
        Ok(temp)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    /// A fresh directory no other test (nor test run) shares; not created.
    fn fresh_dir(name: &str) -> PathBuf {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "arena-config-{name}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("lists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    fn parse(flags: &[&str]) -> Result<Args, String> {
        use clap::Parser;
        let args =
            Args::try_parse_from(std::iter::once("arena-server").chain(flags.iter().copied()))
                .map_err(|e| e.to_string())?;
        args.check()?;
        Ok(args)
    }

    #[test]
    fn make_key_writes_a_key_the_server_reads_and_never_overwrites() {
        let dir = fresh_dir("make-key");
        std::fs::create_dir_all(&dir).expect("creates");
        let path = dir.join("fleet.key");
        make_key_file(&path).expect("writes a key");
        let key = read_key_file(&path).expect("a made key reads back");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
            assert_eq!(mode & 0o077, 0, "only the owner may read a key: {mode:o}");
        }
        let error = make_key_file(&path).expect_err("an existing key is never replaced");
        assert!(error.to_string().contains("never replaces"), "{error:#}");
        assert_eq!(read_key_file(&path).expect("still reads"), key);
        let other = dir.join("other.key");
        make_key_file(&other).expect("writes a second key");
        assert_ne!(
            read_key_file(&other).expect("reads"),
            key,
            "keys are random"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn nonsense_flags_are_refused_with_the_reason() {
        for (flags, says) in [
            (&["--view-radius", "-5"][..], "above 0"),
            (&["--view-radius", "NaN"][..], "finite"),
            (&["--view-radius", "0"][..], "above 0"),
            (&["--view-radius", "inf"][..], "finite"),
            (&["--admin-token", ""][..], "empty"),
            (&["--admin-token", "  "][..], "empty"),
            (&["--token-expire-s", "0"][..], "token-expire-s"),
            (
                &["--token-expire-s", "3", "--client-timeout-s", "5"][..],
                "shorter than --client-timeout-s",
            ),
        ] {
            match parse(flags) {
                Ok(_) => panic!("{flags:?} accepted"),
                Err(error) => assert!(error.contains(says), "{flags:?}: {error}"),
            }
        }
        let args = parse(&[
            "--view-radius",
            "12.5",
            "--admin-token",
            "s3cret",
            "--token-expire-s",
            "5",
        ])
        .expect("sane flags pass");
        assert_eq!(args.view_radius, 12.5);
        assert_eq!(args.admin_token.as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_binary_or_short_key_file_is_refused_saying_what_a_key_is() {
        let dir = fresh_dir("keys");
        std::fs::create_dir_all(&dir).expect("dir");
        for (name, bytes) in [
            ("binary", vec![0xffu8, 0xfe, 0x00, 0x80]),
            ("short", b"abcd".to_vec()),
            ("raw32", vec![7u8; 32]),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, bytes).expect("written");
            let error = read_key_file(&path).expect_err("refused").to_string();
            assert!(error.contains("64 hex"), "{name}: {error}");
        }
        let good = dir.join("good");
        std::fs::write(&good, format!("{}\n", "ab".repeat(32))).expect("written");
        assert_eq!(read_key_file(&good).expect("a key"), [0xab; 32]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn processes_starting_at_once_share_one_generated_key() {
        for round in 0..5 {
            let dir = fresh_dir("race");
            let barrier = Arc::new(Barrier::new(16));
            let starts: Vec<_> = (0..16)
                .map(|_| {
                    let (dir, barrier) = (dir.clone(), Arc::clone(&barrier));
                    std::thread::spawn(move || {
                        barrier.wait();
                        load_or_create_key_in(&dir).map_err(|e| format!("{e:#}"))
                    })
                })
                .collect();
            let keys: Vec<Key> = starts
                .into_iter()
                .map(|s| s.join().expect("ran").expect("every start gets a key"))
                .collect();
            assert!(
                keys.iter().all(|k| *k == keys[0]),
                "round {round}: keys differ"
            );
            assert_eq!(names_in(&dir), ["private.key"], "round {round}");
            let on_disk = read_key_file(&dir.join("private.key")).expect("reads");
            assert_eq!(on_disk, keys[0]);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dir.join("private.key"))
                    .expect("stat")
                    .permissions()
                    .mode();
                assert_eq!(mode & 0o777, 0o600);
            }
            // A later start reuses it.
            assert_eq!(load_or_create_key_in(&dir).expect("reads"), keys[0]);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }

    #[test]
    fn a_binary_key_file_is_reported_as_binary() {
        let dir = fresh_dir("binary");
        std::fs::create_dir_all(&dir).expect("creates");
        let path = dir.join("private.key");
        std::fs::write(&path, [0xffu8; 32]).expect("writes");
        let error = format!("{:#}", read_key_file(&path).expect_err("binary"));
        assert!(
            error.contains("expected 64 hex characters; this file is binary (32 bytes)"),
            "{error}"
        );
        // The data dir's key is checked the same way, never replaced.
        assert!(load_or_create_key_in(&dir).is_err());
        assert_eq!(std::fs::read(&path).expect("reads"), [0xffu8; 32]);
        // Text that is not a key still says what is wrong with it.
        std::fs::write(&path, "abc\n").expect("writes");
        let error = format!("{:#}", read_key_file(&path).expect_err("short"));
        assert!(error.contains("got 3 characters"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
