//! The snapshot store: where a match's snapshots and its ownership lease live.
//!
//! The default is a directory (`--data-dir`), which processes on one machine share:
//!
//! ```text
//! <data-dir>/matches/<match-id>/
//!     lease-<epoch>.json                 owner, epoch, expiry (unix ms), tick; the highest
//!                                        epoch is the lease in force
//!     snapshot-<epoch>-<tick>.bin        the newest few MatchSnapshots
//! ```
//!
//! Every change of ownership bumps the epoch, and a new epoch's lease file is created
//! exclusively (hard link of a finished temp file: it appears whole, and only once), so two
//! standbys can never both take epoch e+1. No lock is ever held: an owner frozen mid-write
//! (SIGSTOP) cannot block its successor. A snapshot write or lease renewal that carries an
//! older epoch than the newest lease is refused and counted (fencing); a write that raced
//! a takeover is checked again afterwards and removed. Snapshots are ordered by (epoch,
//! tick), so a stale owner's late write never counts as the newest. All writes are atomic
//! (temp file, fsync, rename or link, fsync of the directory).
//!
//! Across machines the same trait would sit on Redis; only the file store exists so far.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// Snapshots kept per match.
pub const KEEP_SNAPSHOTS: usize = 5;

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
}

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Our epoch is older than the lease's: someone else owns the match now.
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
    /// The lease file exists but does not parse.
    #[error("lease file {0} is corrupt: {1}")]
    CorruptLease(PathBuf, String),
    /// The file system failed.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
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
    /// The newest snapshot's bytes, if any.
    fn latest_snapshot(&self, match_id: &str) -> Result<Option<Vec<u8>>, StoreError>;
    /// The current lease, if any.
    fn lease(&self, match_id: &str) -> Result<Option<Lease>, StoreError>;
    /// Takes the match at `epoch`: allowed when there is no lease, when it expired before
    /// `now_unix_ms`, or with `handoff` (the owner handed it over); `epoch` must be newer
    /// than the lease's.
    fn acquire(
        &self,
        match_id: &str,
        lease: &Lease,
        now_unix_ms: u64,
        handoff: bool,
    ) -> Result<(), StoreError>;
    /// Extends our lease; refused (fenced) if the lease moved to a newer epoch or owner.
    fn renew(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError>;
    /// Writes and renewals refused by fencing so far.
    fn fenced_count(&self) -> u64;
}

/// The file-system store.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    fenced: AtomicU64,
}

impl FileStore {
    /// A store under `data_dir/matches`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("matches"),
            fenced: AtomicU64::new(0),
        }
    }

    fn dir(&self, match_id: &str) -> Result<PathBuf, StoreError> {
        // Match ids become directory names: keep them to a safe alphabet.
        let safe = !match_id.is_empty()
            && match_id.len() <= 128
            && match_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && match_id != "."
            && match_id != "..";
        if !safe {
            return Err(StoreError::Io(
                format!("match id {match_id:?}"),
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "use letters, digits, '-', '_', '.'",
                ),
            ));
        }
        let dir = self.root.join(match_id);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }

    fn fence(&self, held: &Lease, ours: u64) -> StoreError {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        StoreError::Fenced {
            held: held.epoch,
            owner: held.owner.clone(),
            ours,
        }
    }
}

fn io(path: &Path, error: std::io::Error) -> StoreError {
    StoreError::Io(path.display().to_string(), error)
}

/// Files in `dir` named `<prefix><numbers separated by '-'><suffix>`, sorted by the numbers.
fn numbered(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Vec<(Vec<u64>, PathBuf)>, StoreError> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        let name = entry.file_name();
        let Some(middle) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.strip_suffix(suffix))
        else {
            continue;
        };
        let numbers: Option<Vec<u64>> = middle.split('-').map(|n| n.parse().ok()).collect();
        if let Some(numbers) = numbers {
            found.push((numbers, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// The lease in force: the one with the highest epoch.
fn read_lease(dir: &Path) -> Result<Option<Lease>, StoreError> {
    let Some((_, path)) = numbered(dir, "lease-", ".json")?.pop() else {
        return Ok(None);
    };
    let bytes = std::fs::read(&path).map_err(|e| io(&path, e))?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StoreError::CorruptLease(path, e.to_string()))
}

fn lease_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("lease-{epoch:020}.json"))
}

/// Writes `bytes` to a fresh temp file next to `path`, synced.
fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, StoreError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
    file.write_all(bytes).map_err(|e| io(&tmp, e))?;
    file.sync_all().map_err(|e| io(&tmp, e))?;
    Ok(tmp)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// Writes `bytes` to `path` atomically, replacing what was there.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = write_temp(path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
    sync_dir(path);
    Ok(())
}

/// Creates `path` with `bytes`, atomically and only if it does not exist: `Ok(false)` if
/// another process created it first.
fn create_exclusive(path: &Path, bytes: &[u8]) -> Result<bool, StoreError> {
    let tmp = write_temp(path, bytes)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(path);
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io(path, e)),
    }
}

impl SnapshotStore for FileStore {
    fn write_snapshot(
        &self,
        match_id: &str,
        epoch: u64,
        tick: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let dir = self.dir(match_id)?;
        if let Some(lease) = read_lease(&dir)?
            && lease.epoch > epoch
        {
            return Err(self.fence(&lease, epoch));
        }
        let path = dir.join(format!("snapshot-{epoch:020}-{tick:020}.bin"));
        write_atomic(&path, bytes)?;
        // A successor may have taken over while we wrote: then this write never happened.
        if let Some(lease) = read_lease(&dir)?
            && lease.epoch > epoch
        {
            let _ = std::fs::remove_file(&path);
            return Err(self.fence(&lease, epoch));
        }
        let files = numbered(&dir, "snapshot-", ".bin")?;
        for (_, old) in files
            .iter()
            .take(files.len().saturating_sub(KEEP_SNAPSHOTS))
        {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    fn latest_snapshot(&self, match_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let dir = self.dir(match_id)?;
        let Some((_, path)) = numbered(&dir, "snapshot-", ".bin")?.pop() else {
            return Ok(None);
        };
        std::fs::read(&path).map(Some).map_err(|e| io(&path, e))
    }

    fn lease(&self, match_id: &str) -> Result<Option<Lease>, StoreError> {
        read_lease(&self.dir(match_id)?)
    }

    fn acquire(
        &self,
        match_id: &str,
        lease: &Lease,
        now_unix_ms: u64,
        handoff: bool,
    ) -> Result<(), StoreError> {
        let dir = self.dir(match_id)?;
        if let Some(held) = read_lease(&dir)? {
            if held.epoch >= lease.epoch {
                return Err(self.fence(&held, lease.epoch));
            }
            if !handoff && held.expires_unix_ms > now_unix_ms {
                return Err(StoreError::Held {
                    owner: held.owner,
                    epoch: held.epoch,
                    remaining_ms: held.expires_unix_ms - now_unix_ms,
                });
            }
        }
        let json = serde_json::to_vec(lease).map_err(|e| io(&dir, std::io::Error::other(e)))?;
        if !create_exclusive(&lease_path(&dir, lease.epoch), &json)? {
            // Another process took this epoch first.
            let held = read_lease(&dir)?.unwrap_or_else(|| lease.clone());
            return Err(self.fence(&held, lease.epoch));
        }
        // Old leases are history; keep the last few for operators.
        let leases = numbered(&dir, "lease-", ".json")?;
        for (_, old) in leases.iter().take(leases.len().saturating_sub(3)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    fn renew(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError> {
        let dir = self.dir(match_id)?;
        if let Some(held) = read_lease(&dir)?
            && (held.epoch != lease.epoch || held.owner != lease.owner)
        {
            return Err(self.fence(&held, lease.epoch));
        }
        let json = serde_json::to_vec(lease).map_err(|e| io(&dir, std::io::Error::other(e)))?;
        write_atomic(&lease_path(&dir, lease.epoch), &json)
    }

    fn fenced_count(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (FileStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "arena-store-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        (FileStore::new(&dir), dir)
    }

    fn lease(owner: &str, epoch: u64, expires: u64) -> Lease {
        Lease {
            owner: owner.into(),
            epoch,
            expires_unix_ms: expires,
            tick: 0,
        }
    }

    #[test]
    fn keeps_the_newest_snapshots() {
        let (store, dir) = store();
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        for tick in 0..8 {
            store
                .write_snapshot("m", 1, tick * 60, &[tick as u8])
                .expect("writes");
        }
        assert_eq!(store.latest_snapshot("m").expect("reads"), Some(vec![7]));
        let kept = numbered(&dir.join("matches/m"), "snapshot-", ".bin").expect("lists");
        assert_eq!(kept.len(), KEEP_SNAPSHOTS);
        assert_eq!(store.latest_snapshot("other").expect("reads"), None);
    }

    #[test]
    fn a_stale_epoch_is_fenced_and_counted() {
        let (store, _dir) = store();
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        // B may not take an unexpired lease without a handoff...
        assert!(matches!(
            store.acquire("m", &lease("b", 2, 3000), 500, false),
            Err(StoreError::Held { .. })
        ));
        // ...but may once it expired.
        store
            .acquire("m", &lease("b", 2, 3000), 1500, false)
            .expect("expired");
        // A, back from a pause, can neither renew nor write.
        assert!(matches!(
            store.renew("m", &lease("a", 1, 5000)),
            Err(StoreError::Fenced { held: 2, .. })
        ));
        assert!(matches!(
            store.write_snapshot("m", 1, 999, b"old"),
            Err(StoreError::Fenced { .. })
        ));
        // Nor take it back at its old epoch, even claiming a handoff.
        assert!(matches!(
            store.acquire("m", &lease("a", 2, 5000), 9999, true),
            Err(StoreError::Fenced { .. })
        ));
        assert_eq!(store.fenced_count(), 3);
        store
            .write_snapshot("m", 2, 1000, b"new")
            .expect("owner writes");
        assert_eq!(
            store.latest_snapshot("m").expect("reads"),
            Some(b"new".to_vec())
        );
        // A handoff moves an unexpired lease to the next epoch.
        store
            .acquire("m", &lease("c", 3, 9000), 2000, true)
            .expect("handoff");
        assert_eq!(
            store.lease("m").expect("reads").map(|l| l.owner),
            Some("c".into())
        );
    }

    #[test]
    fn only_one_process_takes_an_epoch_and_a_stale_write_never_becomes_the_newest() {
        let (store, dir) = store();
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        store
            .write_snapshot("m", 1, 500, b"a at 500")
            .expect("writes");
        store
            .acquire("m", &lease("b", 2, 5000), 2000, false)
            .expect("expired");
        assert!(matches!(
            store.acquire("m", &lease("c", 2, 5000), 2000, true),
            Err(StoreError::Fenced { .. })
        ));
        store
            .write_snapshot("m", 2, 400, b"b at 400")
            .expect("b writes");
        // A late write by the old owner (it passed its check before b took over) lands
        // on disk as epoch 1: it does not outrank b's.
        write_atomic(
            &dir.join(format!("matches/m/snapshot-{:020}-{:020}.bin", 1, 900)),
            b"a at 900",
        )
        .expect("raw write");
        assert_eq!(
            store.latest_snapshot("m").expect("reads"),
            Some(b"b at 400".to_vec())
        );
    }

    #[test]
    fn unsafe_match_ids_are_refused() {
        let (store, _dir) = store();
        for id in ["", "..", "a/b", "a b"] {
            assert!(store.lease(id).is_err(), "{id:?}");
        }
    }
}
