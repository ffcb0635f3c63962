//! The snapshot store: where a match's snapshots and its ownership lease live, and where
//! the fleet finds matches and free standbys.
//!
//! Two stores implement [`SnapshotStore`], with the same rules:
//!
//! - [`file::FileStore`] (the default, `--data-dir`): processes on one machine share a
//!   directory.
//! - [`redis::RedisStore`] (`--store redis://HOST:PORT[/DB]`): processes on any machines
//!   share a Redis; leases expire by Redis's clock and every write is fenced by a Lua
//!   script inside Redis.
//!
//! The rules every store keeps:
//!
//! - Every change of ownership bumps the match's epoch, and of two processes taking the
//!   same epoch exactly one succeeds ([`SnapshotStore::acquire`]).
//! - A snapshot write or lease renewal of an epoch that is no longer the current one is
//!   refused and counted (fencing): a paused or partitioned old owner cannot write,
//!   whatever it believes.
//! - Snapshots are ordered by (epoch, tick), the newest [`KEEP_SNAPSHOTS`] are kept, and
//!   they are returned unverified: the caller restores the newest that verifies.
//! - A store that cannot be reached answers [`StoreError::Unavailable`] within a bound,
//!   never hangs: an owner that cannot renew stops ticking before its lease could lapse.

pub mod file;
pub mod redis;

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use file::FileStore;
pub use redis::RedisStore;

/// Snapshots kept per match.
pub const KEEP_SNAPSHOTS: usize = 5;

/// The largest snapshot a store accepts or returns, bytes (a full 65,535-player match is
/// a few MB; anything near this is a bug or an attack, not a match).
pub const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// How long a standby's entry in the registry lives unless renewed
/// ([`SnapshotStore::register_standby`]): a standby that dies drops out of
/// `--handoff-to auto`'s choice this long after.
pub const STANDBY_TTL_MS: u64 = 3_000;

/// Who owns a match, at which epoch, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The owning process (`pid@admin-address`).
    pub owner: String,
    /// Bumped on every change of owner.
    pub epoch: u64,
    /// Unix milliseconds after which a standby may take the match.
    pub expires_unix_ms: u64,
    /// The match's tick at the last renewal: a successor's rollback is measured from it.
    #[serde(default)]
    pub tick: u64,
    /// The holder gave the match up ([`SnapshotStore::release`]): the lease counts as
    /// expired whatever `expires_unix_ms` says, and `tick` is the final tick.
    #[serde(default)]
    pub released: bool,
}

impl Lease {
    /// Whether a standby may take the match over at `now_unix_ms` (without a handoff).
    pub fn lapsed(&self, now_unix_ms: u64) -> bool {
        self.released || self.expires_unix_ms <= now_unix_ms
    }
}

/// One stored snapshot, as listed by [`SnapshotStore::snapshots_newest_first`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    /// Its file name, for logs.
    pub name: String,
    /// The epoch it was written at.
    pub epoch: u64,
    /// The match's tick it holds.
    pub tick: u64,
    /// Its bytes (not decoded nor verified: the caller does that), or why they could not
    /// be read.
    pub bytes: Result<Vec<u8>, String>,
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Our epoch is not the lease's: someone else owns the match now (or, for a handoff,
    /// the lease is not at the epoch being handed over; for a renewal, we released it).
    #[error("fenced: the match is owned at epoch {held} by {owner}, ours is {ours}")]
    Fenced {
        /// The lease's epoch.
        held: u64,
        /// The lease's owner.
        owner: String,
        /// The epoch we presented.
        ours: u64,
    },
    /// Another owner holds an unexpired lease.
    #[error("lease held by {owner} at epoch {epoch} for {remaining_ms} ms more")]
    Held {
        /// Its owner.
        owner: String,
        /// Its epoch.
        epoch: u64,
        /// Time left.
        remaining_ms: u64,
    },
    /// There is no lease to renew, release or take over by handoff.
    #[error("match has no lease in the store (we presented epoch {ours})")]
    NoLease {
        /// The epoch we presented.
        ours: u64,
    },
    /// The lease file exists but does not parse.
    #[error("lease file {0} is corrupt: {1}")]
    CorruptLease(PathBuf, String),
    /// The file system failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The store did not answer in time, or its connection failed (Redis down or
    /// unreachable): nothing is known to have been written.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The store answered something this build cannot read.
    #[error("the store's record {0} is not what this build reads: {1}")]
    Corrupt(String, String),
}

/// Snapshots and leases of matches.
pub trait SnapshotStore: Send + Sync {
    /// Writes a snapshot, unless `epoch` is older than the lease's (fencing).
    fn write_snapshot(
        &self,
        match_id: &str,
        epoch: u64,
        tick: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError>;
    /// Every stored snapshot of the match (at most [`KEEP_SNAPSHOTS`] once a write has
    /// pruned them), newest (epoch, tick) first; empty if none. Not decoded: the caller
    /// restores the first one that verifies and falls back to the next.
    fn snapshots_newest_first(&self, match_id: &str) -> Result<Vec<StoredSnapshot>, StoreError>;
    /// The (epoch, tick) of the newest snapshot, if any, without reading it (an old owner
    /// waiting for its successor's first snapshot asks this a few times a second).
    fn newest_snapshot_id(&self, match_id: &str) -> Result<Option<(u64, u64)>, StoreError>;
    /// The current lease, if any.
    fn lease(&self, match_id: &str) -> Result<Option<Lease>, StoreError>;
    /// Takes the match at `lease.epoch`, which must be newer than the lease in force.
    /// Without `handoff`: allowed when there is no lease, or it lapsed (expired before
    /// `now_unix_ms`, or released). With `handoff` (the owner handed the match over, or
    /// the owner takes it back to abort a handoff): allowed only when the lease in force
    /// is at `lease.epoch - 1`, the epoch handed over, live or not. Of two processes taking
    /// the same epoch, exactly one succeeds; the other is fenced.
    fn acquire(
        &self,
        match_id: &str,
        lease: &Lease,
        now_unix_ms: u64,
        handoff: bool,
    ) -> Result<(), StoreError>;
    /// Extends our lease (same epoch and owner); refused (fenced) if the lease moved to a
    /// newer epoch or owner, or we released it.
    fn renew(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError>;
    /// Gives our lease (same epoch and owner) up now, with `lease.tick` as the final tick:
    /// a watching standby may take over at once. Fenced if the lease moved on.
    fn release(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError>;
    /// Writes and renewals refused by fencing so far, by this process.
    fn fenced_count(&self) -> u64;
    /// Where a match lives: its owner's addresses and epoch (kept by the owner on every
    /// acquire and release), if it has ever been owned.
    fn directory(&self, match_id: &str) -> Result<Option<DirectoryEntry>, StoreError>;
    /// Every match of the directory (for `--watch any`), in no particular order.
    fn matches(&self) -> Result<Vec<DirectoryEntry>, StoreError>;
    /// Registers (or renews) a standby free to receive a match, for
    /// [`STANDBY_TTL_MS`].
    fn register_standby(&self, standby: &StandbyEntry) -> Result<(), StoreError>;
    /// Removes a standby from the registry (it took a match, or it stops).
    fn remove_standby(&self, instance: &str) -> Result<(), StoreError>;
    /// The standbys whose registration has not expired, freshest first.
    fn free_standbys(&self) -> Result<Vec<StandbyEntry>, StoreError>;
    /// Which store this is.
    fn info(&self) -> StoreInfo;
    /// Why the latest call failed to reach the store, if it did (`None` once one
    /// succeeds again; always `None` for a store that cannot be unreachable).
    fn unavailable(&self) -> Option<String> {
        None
    }
}

/// Refuses a snapshot bigger than [`MAX_SNAPSHOT_BYTES`] before any store is asked.
fn check_size(tick: u64, bytes: &[u8]) -> Result<(), StoreError> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err(StoreError::Corrupt(
            format!("snapshot at tick {tick}"),
            format!("{} bytes, more than {MAX_SNAPSHOT_BYTES}", bytes.len()),
        ));
    }
    Ok(())
}

/// A standby free to receive a match, as it registers itself for `--handoff-to auto`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyEntry {
    /// The standby (`pid@admin-address`): what a commit is sealed for.
    pub instance: String,
    /// Its admin API, where an owner asks it to prepare.
    pub admin: String,
    /// Its UDP address.
    pub udp: SocketAddr,
    /// The one match it takes (`--watch`), or any.
    #[serde(default)]
    pub watch: Option<String>,
}

impl StandbyEntry {
    /// Whether this standby would take `match_id`.
    pub fn takes(&self, match_id: &str) -> bool {
        self.watch
            .as_deref()
            .is_none_or(|w| w == match_id || w == crate::host::WATCH_ANY)
    }
}

/// Where a match lives, as its owner keeps it in the store's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// The match.
    pub match_id: String,
    /// Its owner (`pid@admin-address`).
    pub owner: String,
    /// The owner's epoch.
    pub epoch: u64,
    /// Where players connect (the owner's public UDP address).
    pub udp: SocketAddr,
    /// The owner's admin API (tokens, status).
    pub admin: String,
    /// The owner gave the match up (a stop): no one owns it until a standby takes it.
    #[serde(default)]
    pub released: bool,
}

/// Who this process is, for the directory and the standby registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    /// `pid@admin-address`, as in leases.
    pub instance: String,
    /// The admin API's address.
    pub admin: String,
    /// The public UDP address.
    pub udp: SocketAddr,
}

/// Which store, for `/status` and logs (never a password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreInfo {
    /// `"file"` or `"redis"`.
    pub kind: &'static str,
    /// The data dir, or `redis://host:port/db` without credentials.
    pub address: String,
}

/// Which store `--store` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    /// The file store under `--data-dir` (the default).
    File,
    /// A Redis at this URL (`redis://[user:password@]host:port[/db]`).
    Redis(String),
}

impl std::str::FromStr for StoreSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "file" {
            return Ok(Self::File);
        }
        if text.starts_with("rediss://") {
            return Err(format!(
                "--store {}: TLS to Redis (rediss://) is not built in; use redis:// on a private network",
                redis::redacted(text)
            ));
        }
        if let Some(rest) = text.strip_prefix("redis://") {
            redis::parse_address(rest)
                .map_err(|reason| format!("--store {}: {reason}", redis::redacted(text)))?;
            return Ok(Self::Redis(text.to_owned()));
        }
        Err(format!(
            "--store: expected \"file\" or redis://HOST:PORT[/DB], got {:?}",
            redis::redacted(text)
        ))
    }
}
