//! The file store: a directory that processes on one machine share (`--data-dir`).
//!
//! ```text
//! <data-dir>/matches/<match-id>/
//!     lease-<epoch>.json                 owner, epoch, expiry (unix ms), tick, released;
//!                                        the highest epoch is the lease in force
//!     snapshot-<epoch>-<tick>.bin        the newest few MatchSnapshots
//!     <one of the above>.tmp-<pid>-<n>   a write in progress (or left by a crash)
//! <data-dir>/standbys/<instance>.json    standbys free to receive a match, until their
//!                                        expiry (unix ms)
//! ```
//!
//! Every change of ownership bumps the epoch, and a new epoch's lease file is created
//! exclusively (hard link of a finished temp file: it appears whole, and only once), so two
//! processes can never both take epoch e+1: not two standbys, nor a standby taking a
//! handed-over match and its old owner aborting the handoff. No lock is ever held between
//! processes: an owner frozen mid-write (SIGSTOP) cannot block its successor. A snapshot
//! write or lease renewal that carries an older epoch than the newest lease is refused and
//! counted (fencing); a write that raced a takeover is checked again afterwards and
//! removed. Snapshots are ordered by (epoch, tick), so a stale owner's late write never
//! counts as the newest. Snapshot writes are atomic (temp file, fsync, rename, fsync of the
//! directory); a temp file is removed on every failure, and temp files of older epochs
//! (left by a process that died mid-write) are swept when a newer epoch is acquired.
//!
//! A lease file is a fixed-size record ([`LEASE_RECORD_BYTES`]: the JSON padded with
//! spaces). Its holder renews and releases it by rewriting the record in place (no new
//! file, no new blocks on a file system that overwrites in place, such as ext4 or XFS), so
//! renewal still works on a full disk and never waits behind a snapshot write. Readers
//! read a record until two reads agree, which masks a read torn by a rewrite.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{
    DirectoryEntry, KEEP_SNAPSHOTS, Lease, MAX_SNAPSHOT_BYTES, Me, STANDBY_TTL_MS, SnapshotStore,
    StandbyEntry, StoreError, StoreInfo, StoredSnapshot,
};

/// Size of a lease file, bytes: its JSON padded with spaces, so that a renewal rewrites
/// the same blocks in place.
pub const LEASE_RECORD_BYTES: usize = 512;

/// Reads of a lease record, at most, before one that does not parse counts as corrupt.
const LEASE_READ_ATTEMPTS: usize = 3;

/// Leases of older epochs kept for operators (the one in force included).
const KEEP_LEASES: usize = 3;

/// In a fault dir ([`FileStore::with_fault_dir`]): while it exists, snapshot writes fail.
pub const SNAPSHOT_WRITE_FAILS: &str = "snapshot-write-fails";

/// In a fault dir ([`FileStore::with_fault_dir`]): while it exists, lease writes fail.
pub const LEASE_WRITE_FAILS: &str = "lease-write-fails";

/// The file-system store.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    fenced: AtomicU64,
    /// Test-only fault injection: see [`FileStore::with_fault_dir`].
    fault_dir: Option<PathBuf>,
    /// This process, for the directory entry an acquire writes.
    me: Option<Me>,
    /// Orders this process's in-place lease rewrites (a renewal racing our own release
    /// must not revive the lease). Never held across a snapshot write.
    lease_writes: Mutex<()>,
}

impl FileStore {
    /// A store under `data_dir/matches`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.join("matches"),
            fenced: AtomicU64::new(0),
            fault_dir: None,
            me: None,
            lease_writes: Mutex::new(()),
        }
    }

    /// The store as this process uses it: what it acquires, it lists in the directory
    /// under `me`'s addresses.
    pub fn with_me(mut self, me: Me) -> Self {
        self.me = Some(me);
        self
    }

    /// For tests only (the binary sets it from `ARENA_TEST_FAULT_DIR`): a full disk on
    /// demand. While `<dir>/snapshot-write-fails` ([`SNAPSHOT_WRITE_FAILS`]) exists, every
    /// snapshot write fails with [`std::io::ErrorKind::StorageFull`] after creating its
    /// temp file (which it then removes), like a real ENOSPC; while
    /// `<dir>/lease-write-fails` ([`LEASE_WRITE_FAILS`]) exists, so do
    /// [`SnapshotStore::acquire`], [`SnapshotStore::renew`] and
    /// [`SnapshotStore::release`]. Costs one `Path::exists` per write when set, nothing
    /// when `None`.
    pub fn with_fault_dir(mut self, dir: Option<PathBuf>) -> Self {
        self.fault_dir = dir;
        self
    }

    /// Names of the temp files in the match's directory (writes in progress, or left by
    /// a process that died mid-write), sorted.
    pub fn temp_files(&self, match_id: &str) -> Result<Vec<String>, StoreError> {
        let dir = self.dir(match_id)?;
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let entry = entry.map_err(|e| io(&dir, e))?;
            if let Some(name) = entry.file_name().to_str()
                && name.contains(TEMP_MARK)
            {
                names.push(name.to_owned());
            }
        }
        names.sort();
        Ok(names)
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

    /// The injected fault for a write, if its file is present in the fault dir.
    fn fault(&self, name: &str) -> Option<std::io::Error> {
        let dir = self.fault_dir.as_ref()?;
        dir.join(name).exists().then(|| {
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("injected fault: {} exists", dir.join(name).display()),
            )
        })
    }

    /// Fails if the lease in force is not `lease` (same epoch and owner), or was released
    /// unless `released_ok`.
    fn check_holder(&self, dir: &Path, lease: &Lease, released_ok: bool) -> Result<(), StoreError> {
        match read_lease(dir)? {
            None => Err(StoreError::NoLease { ours: lease.epoch }),
            Some(held)
                if held.epoch != lease.epoch
                    || held.owner != lease.owner
                    || (held.released && !released_ok) =>
            {
                Err(self.fence(&held, lease.epoch))
            }
            Some(_) => Ok(()),
        }
    }

    /// Checks that we hold the lease (released, only if `record` releases it again), then
    /// rewrites its record in place with `record`.
    fn rewrite_lease(
        &self,
        match_id: &str,
        lease: &Lease,
        record: &Lease,
    ) -> Result<(), StoreError> {
        let dir = self.dir(match_id)?;
        let bytes = lease_record(record, &dir)?;
        let _order = self.lease_writes.lock().unwrap_or_else(|p| p.into_inner());
        self.check_holder(&dir, lease, record.released)?;
        let path = lease_path(&dir, lease.epoch);
        if let Some(fault) = self.fault(LEASE_WRITE_FAILS) {
            return Err(io(&path, fault));
        }
        rewrite_in_place(&path, &bytes)
    }

    /// Removes the temp files of epochs before `epoch`: their writers are fenced or dead.
    fn sweep_temp_files(&self, match_id: &str, dir: &Path, epoch: u64) -> Result<(), StoreError> {
        for name in self.temp_files(match_id)? {
            if temp_epoch(&name).is_some_and(|e| e < epoch) {
                let _ = std::fs::remove_file(dir.join(&name));
            }
        }
        Ok(())
    }
}

/// A snapshot file's bytes, refused past [`MAX_SNAPSHOT_BYTES`] without reading them.
fn read_bounded(path: &Path) -> Result<Vec<u8>, String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    if size > MAX_SNAPSHOT_BYTES as u64 {
        return Err(format!("{size} bytes, more than {MAX_SNAPSHOT_BYTES}"));
    }
    std::fs::read(path).map_err(|e| e.to_string())
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
    parse_stable(&path, || std::fs::read(&path)).map(Some)
}

/// Reads a lease record with `read` until two reads agree (at most
/// [`LEASE_READ_ATTEMPTS`] reads), then parses it: a read torn by an in-place rewrite
/// (part old record, part new) differs from the next read, so it is never believed.
fn parse_stable(
    path: &Path,
    mut read: impl FnMut() -> std::io::Result<Vec<u8>>,
) -> Result<Lease, StoreError> {
    let mut previous = read().map_err(|e| io(path, e))?;
    for _ in 1..LEASE_READ_ATTEMPTS {
        let current = read().map_err(|e| io(path, e))?;
        if current == previous {
            break;
        }
        previous = current;
    }
    serde_json::from_slice(&previous)
        .map_err(|e| StoreError::CorruptLease(path.to_path_buf(), e.to_string()))
}

fn lease_path(dir: &Path, epoch: u64) -> PathBuf {
    dir.join(format!("lease-{epoch:020}.json"))
}

/// `lease` as a lease file's fixed-size record: JSON, padded with spaces, a newline last.
fn lease_record(lease: &Lease, dir: &Path) -> Result<Vec<u8>, StoreError> {
    let mut bytes = serde_json::to_vec(lease).map_err(|e| io(dir, std::io::Error::other(e)))?;
    if bytes.len() >= LEASE_RECORD_BYTES {
        return Err(io(
            dir,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "lease of {} bytes does not fit a {LEASE_RECORD_BYTES}-byte record (owner too long?)",
                    bytes.len()
                ),
            ),
        ));
    }
    bytes.resize(LEASE_RECORD_BYTES - 1, b' ');
    bytes.push(b'\n');
    Ok(bytes)
}

/// Overwrites the start of the existing file `path` with `bytes`, synced: no truncation,
/// no new file. A lease file already of that size needs no new blocks.
fn rewrite_in_place(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io(path, e))?;
    file.seek(SeekFrom::Start(0)).map_err(|e| io(path, e))?;
    file.write_all(bytes).map_err(|e| io(path, e))?;
    // A lease file from before fixed-size records may be longer than one.
    let len = file.metadata().map_err(|e| io(path, e))?.len();
    if len > bytes.len() as u64 {
        file.set_len(bytes.len() as u64).map_err(|e| io(path, e))?;
    }
    file.sync_data().map_err(|e| io(path, e))
}

/// What a temp file's name carries after its target's name.
const TEMP_MARK: &str = ".tmp-";

/// The epoch a temp file was written for, from its name (`snapshot-<epoch>-<tick>.bin.tmp-…`
/// or `lease-<epoch>.json.tmp-…`).
fn temp_epoch(name: &str) -> Option<u64> {
    let (target, _) = name.split_once(TEMP_MARK)?;
    let rest = target
        .strip_prefix("snapshot-")
        .or_else(|| target.strip_prefix("lease-"))?;
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// A temp file, removed when dropped unless it was renamed away.
struct Temp {
    path: PathBuf,
    armed: bool,
}

impl Temp {
    /// The path was renamed away: nothing to remove.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Writes `bytes` to a fresh temp file next to `path` (named after it, so it carries
/// its epoch), synced; `fault` fails the write once the file exists, as a full disk
/// would. The temp file is removed on failure, and when the returned guard drops.
fn write_temp(
    path: &Path,
    bytes: &[u8],
    fault: Option<std::io::Error>,
) -> Result<Temp, StoreError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(
        "{TEMP_MARK}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let tmp = path.with_file_name(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| io(&tmp, e))?;
    let temp = Temp {
        path: tmp,
        armed: true,
    };
    if let Some(fault) = fault {
        return Err(io(&temp.path, fault));
    }
    file.write_all(bytes).map_err(|e| io(&temp.path, e))?;
    file.sync_all().map_err(|e| io(&temp.path, e))?;
    Ok(temp)
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent()
        && let Ok(dir) = File::open(dir)
    {
        let _ = dir.sync_all();
    }
}

/// Writes `bytes` to `path` atomically, replacing what was there.
fn write_atomic(
    path: &Path,
    bytes: &[u8],
    fault: Option<std::io::Error>,
) -> Result<(), StoreError> {
    let temp = write_temp(path, bytes, fault)?;
    std::fs::rename(&temp.path, path).map_err(|e| io(path, e))?;
    temp.disarm();
    sync_dir(path);
    Ok(())
}

/// Creates `path` with `bytes`, atomically and only if it does not exist: `Ok(false)` if
/// another process created it first.
fn create_exclusive(
    path: &Path,
    bytes: &[u8],
    fault: Option<std::io::Error>,
) -> Result<bool, StoreError> {
    let temp = write_temp(path, bytes, fault)?;
    let linked = std::fs::hard_link(&temp.path, path);
    drop(temp);
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
        super::check_size(tick, bytes)?;
        let dir = self.dir(match_id)?;
        if let Some(lease) = read_lease(&dir)?
            && lease.epoch > epoch
        {
            return Err(self.fence(&lease, epoch));
        }
        let path = dir.join(format!("snapshot-{epoch:020}-{tick:020}.bin"));
        if let Err(error) = write_atomic(&path, bytes, self.fault(SNAPSHOT_WRITE_FAILS)) {
            // A successor's sweep removes a fenced writer's temp file: say why it failed.
            if let Ok(Some(lease)) = read_lease(&dir)
                && lease.epoch > epoch
            {
                return Err(self.fence(&lease, epoch));
            }
            return Err(error);
        }
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

    fn newest_snapshot_id(&self, match_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let dir = self.dir(match_id)?;
        Ok(numbered(&dir, "snapshot-", ".bin")?
            .into_iter()
            .rev()
            .find_map(|(numbers, _)| match numbers[..] {
                [epoch, tick] => Some((epoch, tick)),
                _ => None,
            }))
    }

    fn snapshots_newest_first(&self, match_id: &str) -> Result<Vec<StoredSnapshot>, StoreError> {
        let dir = self.dir(match_id)?;
        let mut found = Vec::new();
        for (numbers, path) in numbered(&dir, "snapshot-", ".bin")?.into_iter().rev() {
            let [epoch, tick] = numbers[..] else {
                continue;
            };
            found.push(StoredSnapshot {
                name: path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                epoch,
                tick,
                bytes: read_bounded(&path),
            });
        }
        Ok(found)
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
        match read_lease(&dir)? {
            Some(held) if held.epoch >= lease.epoch => {
                return Err(self.fence(&held, lease.epoch));
            }
            // A handoff moves the epoch handed over to the next one, nothing else: a sealed
            // snapshot replayed after the match moved on is refused.
            Some(held) if handoff && Some(held.epoch) != lease.epoch.checked_sub(1) => {
                return Err(self.fence(&held, lease.epoch));
            }
            Some(held) if !handoff && !held.lapsed(now_unix_ms) => {
                return Err(StoreError::Held {
                    remaining_ms: held.expires_unix_ms - now_unix_ms,
                    owner: held.owner,
                    epoch: held.epoch,
                });
            }
            None if handoff => return Err(StoreError::NoLease { ours: lease.epoch }),
            _ => {}
        }
        let record = Lease {
            released: false,
            ..lease.clone()
        };
        let bytes = lease_record(&record, &dir)?;
        let path = lease_path(&dir, lease.epoch);
        if !create_exclusive(&path, &bytes, self.fault(LEASE_WRITE_FAILS))? {
            // Another process took this epoch first.
            let held = read_lease(&dir)?.unwrap_or_else(|| lease.clone());
            return Err(self.fence(&held, lease.epoch));
        }
        self.sweep_temp_files(match_id, &dir, lease.epoch)?;
        self.write_directory(&dir, match_id, lease, false);
        // Old leases are history; keep the last few for operators.
        let leases = numbered(&dir, "lease-", ".json")?;
        for (_, old) in leases.iter().take(leases.len().saturating_sub(KEEP_LEASES)) {
            let _ = std::fs::remove_file(old);
        }
        Ok(())
    }

    fn renew(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError> {
        let record = Lease {
            released: false,
            ..lease.clone()
        };
        self.rewrite_lease(match_id, lease, &record)
    }

    fn release(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError> {
        let record = Lease {
            expires_unix_ms: 0,
            released: true,
            ..lease.clone()
        };
        self.rewrite_lease(match_id, lease, &record)?;
        self.write_directory(&self.dir(match_id)?, match_id, lease, true);
        Ok(())
    }

    fn fenced_count(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    fn directory(&self, match_id: &str) -> Result<Option<DirectoryEntry>, StoreError> {
        let path = self.dir(match_id)?.join(DIRECTORY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Corrupt(path.display().to_string(), e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn matches(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io(&self.root, e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(DIRECTORY_FILE);
            // A match dir without an entry (never acquired by this build) is not listed.
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(entry) = serde_json::from_slice(&bytes)
            {
                found.push(entry);
            }
        }
        Ok(found)
    }

    fn register_standby(&self, standby: &StandbyEntry) -> Result<(), StoreError> {
        let dir = self.standbys_dir()?;
        let record = StandbyRecord {
            entry: standby.clone(),
            expires_unix_ms: wall_ms() + STANDBY_TTL_MS,
        };
        let bytes = serde_json::to_vec(&record)
            .map_err(|e| StoreError::Corrupt("standby entry".into(), e.to_string()))?;
        write_atomic(&dir.join(standby_file(&standby.instance)), &bytes, None)
    }

    fn remove_standby(&self, instance: &str) -> Result<(), StoreError> {
        let path = self.standbys_dir()?.join(standby_file(instance));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }

    fn free_standbys(&self) -> Result<Vec<StandbyEntry>, StoreError> {
        let dir = self.standbys_dir()?;
        let now = wall_ms();
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, e))? {
            let path = entry.map_err(|e| io(&dir, e))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            // A file being replaced or written by hand may not parse: not a standby.
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            match serde_json::from_slice::<StandbyRecord>(&bytes) {
                Ok(record) if record.expires_unix_ms > now => found.push(record),
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
        found.sort_by_key(|r| std::cmp::Reverse(r.expires_unix_ms));
        Ok(found.into_iter().map(|r| r.entry).collect())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "file",
            address: self.root.display().to_string(),
        }
    }
}

/// The directory entry's file in a match's directory.
const DIRECTORY_FILE: &str = "directory.json";

/// A standby's registration on disk.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct StandbyRecord {
    entry: StandbyEntry,
    expires_unix_ms: u64,
}

/// A standby's file name: its instance name with only safe characters.
fn standby_file(instance: &str) -> String {
    let safe: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{safe}.json")
}

/// Unix time, ms (the machine's clock: every process on it reads the same one).
fn wall_ms() -> u64 {
    crate::net::wall_ms()
}

impl FileStore {
    fn standbys_dir(&self) -> Result<PathBuf, StoreError> {
        let dir = self
            .root
            .parent()
            .map_or_else(|| PathBuf::from("standbys"), |p| p.join("standbys"));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        Ok(dir)
    }

    /// Writes the match's directory entry for our `lease` (best effort: the lease, not
    /// the directory, decides who owns the match; a failure is logged).
    fn write_directory(&self, dir: &Path, match_id: &str, lease: &Lease, released: bool) {
        let Some(me) = &self.me else {
            return;
        };
        let entry = DirectoryEntry {
            match_id: match_id.to_owned(),
            owner: lease.owner.clone(),
            epoch: lease.epoch,
            udp: me.udp,
            admin: me.admin.clone(),
            released,
        };
        let written = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::Corrupt("directory entry".into(), e.to_string()))
            .and_then(|bytes| write_atomic(&dir.join(DIRECTORY_FILE), &bytes, None));
        if let Err(error) = written {
            tracing::warn!(match_id, %error, "could not update the match directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The newest snapshot's bytes (an error if it cannot be read).
    fn latest(store: &FileStore, match_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match store.snapshots_newest_first(match_id)?.into_iter().next() {
            None => Ok(None),
            Some(newest) => newest
                .bytes
                .map(Some)
                .map_err(|reason| StoreError::Io(newest.name, std::io::Error::other(reason))),
        }
    }
    use std::sync::{Arc, Barrier};

    /// A fresh store in a directory no other test (nor test run) shares, removed when
    /// the returned guard is dropped.
    fn store() -> (FileStore, tempfile::TempDir) {
        let dir = tempfile::Builder::new()
            .prefix("arena-store-")
            .tempdir()
            .expect("a temp dir");
        (FileStore::new(dir.path()), dir)
    }

    fn lease(owner: &str, epoch: u64, expires: u64) -> Lease {
        Lease {
            owner: owner.into(),
            epoch,
            expires_unix_ms: expires,
            tick: 0,
            released: false,
        }
    }

    fn snapshot_path(dir: &Path, epoch: u64, tick: u64) -> PathBuf {
        dir.join(format!("matches/m/snapshot-{epoch:020}-{tick:020}.bin"))
    }

    fn is_storage_full(result: Result<(), StoreError>) -> bool {
        matches!(result, Err(StoreError::Io(_, e)) if e.kind() == std::io::ErrorKind::StorageFull)
    }

    #[test]
    fn the_store_is_object_safe() {
        let (store, _dir) = store();
        let store: Arc<dyn SnapshotStore> = Arc::new(store);
        assert!(store.snapshots_newest_first("m").expect("lists").is_empty());
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
        assert_eq!(latest(&store, "m").expect("reads"), Some(vec![7]));
        let listed = store.snapshots_newest_first("m").expect("lists");
        assert_eq!(
            listed.iter().map(|s| (s.epoch, s.tick)).collect::<Vec<_>>(),
            [(1, 420), (1, 360), (1, 300), (1, 240), (1, 180)]
        );
        assert_eq!(listed[0].bytes, Ok(vec![7]));
        assert_eq!(
            store.newest_snapshot_id("m").expect("lists"),
            Some((1, 420))
        );
        assert_eq!(store.newest_snapshot_id("other").expect("lists"), None);
        assert_eq!(listed[4].bytes, Ok(vec![3]));
        assert_eq!(
            listed[0].name,
            format!("snapshot-{:020}-{:020}.bin", 1, 420)
        );
        let kept = numbered(&dir.path().join("matches/m"), "snapshot-", ".bin").expect("lists");
        assert_eq!(kept.len(), KEEP_SNAPSHOTS);
        assert_eq!(latest(&store, "other").expect("reads"), None);
        assert!(
            store
                .snapshots_newest_first("other")
                .expect("lists")
                .is_empty()
        );
    }

    #[test]
    fn a_truncated_or_unreadable_newest_snapshot_is_listed_before_its_older_siblings() {
        let (store, dir) = store();
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        for tick in [60, 120, 180] {
            store
                .write_snapshot("m", 1, tick, format!("full {tick}").as_bytes())
                .expect("writes");
        }
        // The newest is cut short (a crash mid-write on a file system that lost it)...
        let newest = File::options()
            .write(true)
            .open(snapshot_path(dir.path(), 1, 180))
            .expect("opens");
        newest.set_len(3).expect("truncates");
        // ...and the next epoch's, though at a lower tick, cannot be read at all.
        store
            .acquire("m", &lease("b", 2, 9000), 2000, false)
            .expect("expired");
        std::fs::create_dir(snapshot_path(dir.path(), 2, 30)).expect("a directory in its place");
        let listed = store.snapshots_newest_first("m").expect("lists");
        assert_eq!(
            listed.iter().map(|s| (s.epoch, s.tick)).collect::<Vec<_>>(),
            [(2, 30), (1, 180), (1, 120), (1, 60)]
        );
        assert!(listed[0].bytes.is_err(), "{:?}", listed[0].bytes);
        assert_eq!(listed[1].bytes, Ok(b"ful".to_vec()));
        assert_eq!(listed[2].bytes, Ok(b"full 120".to_vec()));
        assert_eq!(listed[3].bytes, Ok(b"full 60".to_vec()));
        // The convenience method reports the newest's failure rather than skipping it.
        assert!(latest(&store, "m").is_err());
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
            Err(StoreError::Held {
                remaining_ms: 500,
                ..
            })
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
        assert_eq!(latest(&store, "m").expect("reads"), Some(b"new".to_vec()));
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
    fn a_handoff_is_taken_only_from_the_epoch_handed_over() {
        let (store, _dir) = store();
        // Nothing to hand over without a lease.
        assert!(matches!(
            store.acquire("m", &lease("b", 2, 9000), 0, true),
            Err(StoreError::NoLease { ours: 2 })
        ));
        store
            .acquire("m", &lease("a", 1, 10_000), 0, false)
            .expect("free");
        // Skipping an epoch is no handoff of the lease in force.
        assert!(matches!(
            store.acquire("m", &lease("b", 3, 9000), 100, true),
            Err(StoreError::Fenced {
                held: 1,
                ours: 3,
                ..
            })
        ));
        // A's live epoch 1, handed over, becomes b's epoch 2.
        store
            .acquire("m", &lease("b", 2, 9000), 100, true)
            .expect("handoff of epoch 1");
        // The match moves on (b's lease lapses, c takes epoch 3)...
        store
            .acquire("m", &lease("c", 3, 20_000), 9500, false)
            .expect("expired");
        // ...and the sealed snapshot of epoch 1, replayed, is refused at epoch 2 and,
        // renumbered, at 4.
        assert!(matches!(
            store.acquire("m", &lease("d", 2, 30_000), 9600, true),
            Err(StoreError::Fenced { held: 3, .. })
        ));
        assert!(matches!(
            store.acquire("m", &lease("d", 5, 30_000), 9600, true),
            Err(StoreError::Fenced { held: 3, .. })
        ));
        assert_eq!(
            store.lease("m").expect("reads").map(|l| (l.owner, l.epoch)),
            Some(("c".into(), 3))
        );
        // A handoff of epoch 3 is still allowed.
        store
            .acquire("m", &lease("d", 4, 30_000), 9600, true)
            .expect("handoff of epoch 3");
    }

    #[test]
    fn of_a_standby_taking_a_handoff_and_the_owner_aborting_it_exactly_one_wins() {
        let (store, _dir) = store();
        let store = Arc::new(store);
        let mut wins = [0u32; 2];
        for round in 0..40 {
            let id = format!("race-{round}");
            store
                .acquire(&id, &lease("owner", 1, u64::MAX), 0, false)
                .expect("free");
            let barrier = Arc::new(Barrier::new(2));
            let racers: Vec<_> = ["standby", "owner"]
                .into_iter()
                .map(|who| {
                    let (store, barrier, id) =
                        (Arc::clone(&store), Arc::clone(&barrier), id.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        store.acquire(&id, &lease(who, 2, u64::MAX), 1, true)
                    })
                })
                .collect();
            let results: Vec<_> = racers
                .into_iter()
                .map(|r| r.join().expect("racer ran"))
                .collect();
            let winners: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            let winner = winners[0];
            wins[winner] += 1;
            assert!(
                matches!(
                    &results[1 - winner],
                    Err(StoreError::Fenced { held: 2, .. })
                ),
                "round {round}: {results:?}"
            );
            assert_eq!(
                store.lease(&id).expect("reads").map(|l| l.owner),
                Some(["standby", "owner"][winner].to_owned())
            );
            assert!(store.temp_files(&id).expect("lists").is_empty());
        }
        assert_eq!(wins[0] + wins[1], 40);
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_only_its_holder_releases_it() {
        let (store, _dir) = store();
        store
            .acquire("m", &lease("a", 1, 10_000), 0, false)
            .expect("free");
        assert!(matches!(
            store.acquire("m", &lease("b", 2, 20_000), 500, false),
            Err(StoreError::Held { .. })
        ));
        // Not b's to release.
        assert!(matches!(
            store.release("m", &lease("b", 1, 10_000)),
            Err(StoreError::Fenced { held: 1, .. })
        ));
        let mut last = lease("a", 1, 10_000);
        last.tick = 777;
        store.release("m", &last).expect("the holder releases");
        store.release("m", &last).expect("twice is harmless");
        let released = store.lease("m").expect("reads").expect("a lease");
        assert!(released.released);
        assert_eq!((released.expires_unix_ms, released.tick), (0, 777));
        // A late renewal must not revive it.
        assert!(matches!(
            store.renew("m", &lease("a", 1, 10_000)),
            Err(StoreError::Fenced { held: 1, .. })
        ));
        // The clock says a's lease has 9.5 s left: it is taken anyway.
        store
            .acquire("m", &lease("b", 2, 20_000), 500, false)
            .expect("released");
        assert!(matches!(
            store.release("m", &last),
            Err(StoreError::Fenced { held: 2, .. })
        ));
        let held = store.lease("m").expect("reads").expect("a lease");
        assert_eq!((held.owner.as_str(), held.released), ("b", false));
    }

    #[test]
    fn a_released_flag_set_by_hand_counts_whatever_the_clock() {
        let mut l = lease("a", 1, 10_000);
        assert!(!l.lapsed(9_999) && l.lapsed(10_000));
        l.released = true;
        assert!(l.lapsed(0));
        // Lease files written before the flag existed still parse.
        let old: Lease =
            serde_json::from_str(r#"{"owner":"a","epoch":1,"expires_unix_ms":5}"#).expect("parses");
        assert!(!old.released);
    }

    #[cfg(unix)]
    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("stat").ino()
    }

    #[test]
    fn renewal_rewrites_the_fixed_size_record_in_place_even_when_snapshot_writes_fail() {
        let (store, dir) = store();
        let faults = dir.path().join("faults");
        std::fs::create_dir_all(&faults).expect("fault dir");
        let store = store.with_fault_dir(Some(faults.clone()));
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        let path = dir.path().join(format!("matches/m/lease-{:020}.json", 1));
        let size = || std::fs::metadata(&path).expect("stat").len();
        assert_eq!(size(), LEASE_RECORD_BYTES as u64);
        #[cfg(unix)]
        let before = inode(&path);
        File::create(faults.join(SNAPSHOT_WRITE_FAILS)).expect("disk full for snapshots");
        assert!(is_storage_full(store.write_snapshot("m", 1, 60, b"s")));
        let mut renewal = lease("a", 1, 5000);
        renewal.tick = 42;
        store.renew("m", &renewal).expect("renews");
        assert_eq!(size(), LEASE_RECORD_BYTES as u64);
        #[cfg(unix)]
        assert_eq!(inode(&path), before, "renewed in place, not replaced");
        assert_eq!(store.lease("m").expect("reads"), Some(renewal.clone()));
        // The record is JSON padded with spaces.
        let bytes = std::fs::read(&path).expect("reads");
        assert!(bytes.starts_with(b"{") && bytes.ends_with(b"    \n"));
        // A shorter record after a longer one leaves no trailing garbage.
        store.renew("m", &lease("a", 1, 6)).expect("renews");
        assert_eq!(
            store.lease("m").expect("reads").map(|l| l.expires_unix_ms),
            Some(6)
        );

        // With lease writes failing too: renewal, release and acquire fail, change nothing,
        // and leave no temp file.
        File::create(faults.join(LEASE_WRITE_FAILS)).expect("disk full for leases");
        assert!(is_storage_full(store.renew("m", &lease("a", 1, 9000))));
        assert!(is_storage_full(store.release("m", &lease("a", 1, 9000))));
        assert!(is_storage_full(store.acquire(
            "m",
            &lease("b", 2, 9000),
            100,
            false
        )));
        assert_eq!(
            store
                .lease("m")
                .expect("reads")
                .map(|l| (l.epoch, l.expires_unix_ms)),
            Some((1, 6))
        );
        assert!(store.temp_files("m").expect("lists").is_empty());
        std::fs::remove_file(faults.join(LEASE_WRITE_FAILS)).expect("space again");
        store.renew("m", &lease("a", 1, 9000)).expect("renews");
    }

    #[test]
    fn a_failed_snapshot_write_fails_with_storage_full_and_leaves_no_temp_file() {
        let (store, dir) = store();
        let faults = dir.path().join("faults");
        std::fs::create_dir_all(&faults).expect("fault dir");
        let store = store.with_fault_dir(Some(faults.clone()));
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        store.write_snapshot("m", 1, 60, b"before").expect("writes");
        File::create(faults.join(SNAPSHOT_WRITE_FAILS)).expect("disk full");
        assert!(is_storage_full(store.write_snapshot("m", 1, 120, b"lost")));
        assert!(store.temp_files("m").expect("lists").is_empty());
        assert!(!snapshot_path(dir.path(), 1, 120).exists());
        assert_eq!(
            latest(&store, "m").expect("reads"),
            Some(b"before".to_vec())
        );
        std::fs::remove_file(faults.join(SNAPSHOT_WRITE_FAILS)).expect("space again");
        store.write_snapshot("m", 1, 180, b"after").expect("writes");
        assert_eq!(latest(&store, "m").expect("reads"), Some(b"after".to_vec()));

        // A real failure after the temp file was written (the rename fails: a non-empty
        // directory sits at the target) removes it too.
        let blocker = snapshot_path(dir.path(), 1, 240);
        std::fs::create_dir_all(blocker.join("x")).expect("blocker");
        assert!(matches!(
            store.write_snapshot("m", 1, 240, b"blocked"),
            Err(StoreError::Io(..))
        ));
        assert!(store.temp_files("m").expect("lists").is_empty());
    }

    #[test]
    fn temp_files_carry_their_epoch_and_older_ones_are_swept_on_acquire() {
        let (store, dir) = store();
        let match_dir = dir.path().join("matches/m");
        store
            .acquire("m", &lease("a", 1, 1000), 0, false)
            .expect("free");
        // Names of temps as this store makes them.
        let temp = write_temp(&snapshot_path(dir.path(), 7, 60), b"x", None).expect("writes");
        let name = temp
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a name")
            .to_owned();
        assert!(
            name.starts_with(&format!("snapshot-{:020}-{:020}.bin.tmp-", 7, 60)),
            "{name}"
        );
        assert_eq!(temp_epoch(&name), Some(7));
        assert_eq!(store.temp_files("m").expect("lists"), [name]);
        drop(temp);
        assert!(store.temp_files("m").expect("lists").is_empty());
        assert_eq!(
            temp_epoch(&format!("lease-{:020}.json.tmp-1-2", 3)),
            Some(3)
        );

        // Left by processes that died mid-write: epoch 1's go when epoch 2 is taken,
        // epoch 2's (a writer of the new epoch) stay.
        let stale = [
            format!("snapshot-{:020}-{:020}.bin.tmp-99999-0", 1, 60),
            format!("lease-{:020}.json.tmp-99999-1", 1),
            format!("snapshot-{:020}-{:020}.tmp-99999-2", 1, 30), // an older naming
        ];
        let current = format!("snapshot-{:020}-{:020}.bin.tmp-99999-3", 2, 5);
        for name in stale.iter().chain([&current]) {
            std::fs::write(match_dir.join(name), b"partial").expect("writes");
        }
        assert_eq!(store.temp_files("m").expect("lists").len(), 4);
        store
            .acquire("m", &lease("b", 2, 5000), 2000, false)
            .expect("expired");
        assert_eq!(store.temp_files("m").expect("lists"), [current]);
        // Temp files never count as snapshots or leases.
        assert!(store.snapshots_newest_first("m").expect("lists").is_empty());
        assert_eq!(store.lease("m").expect("reads").map(|l| l.epoch), Some(2));
    }

    #[test]
    fn a_torn_lease_read_is_retried_until_two_reads_agree() {
        let dir = Path::new("lease-test.json");
        let old = lease_record(&lease("a", 1, 1_111_111_111_111), dir).expect("fits");
        let new = lease_record(&lease("a", 1, 2_222_222_222_222), dir).expect("fits");
        let digits = old
            .windows(3)
            .position(|w| w == b"111")
            .expect("the expiry");
        // Part new, part old, mid-number: it parses, to an expiry nobody wrote...
        let mut torn = new[..digits + 5].to_vec();
        torn.extend_from_slice(&old[digits + 5..]);
        let believed: Lease = serde_json::from_slice(&torn).expect("a torn record may parse");
        assert_eq!(believed.expires_unix_ms, 2_222_211_111_111);
        // ...and is not believed, nor is one cut short.
        for first in [torn, new[..100].to_vec()] {
            let mut reads = vec![first, new.clone(), new.clone()].into_iter();
            let mut calls = 0;
            let lease = parse_stable(dir, || {
                calls += 1;
                reads.next().ok_or_else(|| std::io::Error::other("no more"))
            })
            .expect("retried");
            assert_eq!(lease.expires_unix_ms, 2_222_222_222_222);
            assert_eq!(calls, 3);
        }
        // A record that stays corrupt is reported, after two reads...
        let mut calls = 0;
        let stuck = parse_stable(dir, || {
            calls += 1;
            Ok(b"{\"owner\": garbage".to_vec())
        });
        assert!(matches!(stuck, Err(StoreError::CorruptLease(..))));
        assert_eq!(calls, 2);
        // ...and one that never settles, after a bounded number.
        let mut calls = 0;
        let unsettled = parse_stable(dir, || {
            calls += 1;
            Ok(format!("{{ torn {calls}").into_bytes())
        });
        assert!(matches!(unsettled, Err(StoreError::CorruptLease(..))));
        assert_eq!(calls, LEASE_READ_ATTEMPTS);
    }

    #[test]
    fn reads_racing_in_place_renewals_always_see_a_written_lease() {
        let (store, dir) = store();
        store
            .acquire("m", &lease("a", 1, 1_000_000), 0, false)
            .expect("free");
        let store = Arc::new(store);
        let renewer = {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                for i in 1..=300u64 {
                    // Expiries of different lengths: a torn read would show.
                    store
                        .renew("m", &lease("a", 1, 1_000_000 * (i % 7 + 1) + i))
                        .expect("renews");
                }
            })
        };
        let mut seen = 0;
        while !renewer.is_finished() {
            let held = store.lease("m").expect("a whole record").expect("a lease");
            let e = held.expires_unix_ms;
            let i = e % 1_000_000;
            assert!(i == 0 || e == 1_000_000 * (i % 7 + 1) + i, "torn: {e}");
            seen += 1;
        }
        renewer.join().expect("renewer ran");
        assert!(seen > 0);
        // A corrupt record on disk is reported as such.
        std::fs::write(
            dir.path().join(format!("matches/m/lease-{:020}.json", 1)),
            b"{oops",
        )
        .expect("writes");
        assert!(matches!(
            store.lease("m"),
            Err(StoreError::CorruptLease(..))
        ));
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
        write_atomic(&snapshot_path(dir.path(), 1, 900), b"a at 900", None).expect("raw write");
        assert_eq!(
            latest(&store, "m").expect("reads"),
            Some(b"b at 400".to_vec())
        );
        let listed = store.snapshots_newest_first("m").expect("lists");
        assert_eq!(
            listed.iter().map(|s| (s.epoch, s.tick)).collect::<Vec<_>>(),
            [(2, 400), (1, 900), (1, 500)]
        );
    }

    #[test]
    fn unsafe_match_ids_are_refused() {
        let (store, _dir) = store();
        for id in ["", "..", "a/b", "a b"] {
            assert!(store.lease(id).is_err(), "{id:?}");
            assert!(store.snapshots_newest_first(id).is_err(), "{id:?}");
        }
    }
}
