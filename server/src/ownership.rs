//! What owning a match takes besides ticking it, for one epoch: periodic snapshots
//! written off the tick thread, and a lease renewed several times per lease period, both
//! epoch-fenced.
//!
//! Two threads, so that neither waits for the other: the *writer* takes snapshot bytes
//! from the tick loop over a bounded channel (the loop never waits on disk; a writer
//! still busy means that snapshot is skipped and counted), and the *renewer* renews the
//! lease on its own schedule, so a slow or failing snapshot write (a full disk) never
//! delays a renewal.
//!
//! # The lease rule
//!
//! A renewal that starts at `s` (this process's monotonic clock) and succeeds makes the
//! store say "expires at `s + lease`" (the store's clock); the loop may tick only until
//! `s + lease - margin` ([`safety_margin`]). So the owner stops ticking a margin before
//! any standby may take over, however long the renewal itself took, and safety rests on
//! the clocks of one machine running at the same rate for one lease, not on two clocks
//! agreeing on the time of day.
//!
//! A fenced write or renewal (a successor owns the match now) ends the epoch for good.
//! [`Ownership::finish`] ends it on purpose: the final snapshot is written and synced,
//! and the lease is released so a watching standby takes over at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::net::Clock;
use crate::store::{Lease, SnapshotStore, StoreError};

const NONE: u64 = u64::MAX;

/// How long before the lease's expiry the owner stops ticking: a quarter of the lease
/// (250 ms for the default 1 s), at least 25 ms.
pub fn safety_margin(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(25))
}

/// How often the renewer renews: four times per lease.
pub fn renew_every(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(20))
}

/// Where ownership stands, as the writer and renewer last learned it.
#[derive(Debug, Default)]
struct LeaseState {
    /// Who we are in the lease (a fence by our own newer epoch is a handoff's outcome).
    owner: String,
    /// Our clock's ms until which the loop may tick (renewal start + lease - margin).
    tick_until_ms: AtomicU64,
    /// Set once a successor fenced us.
    fenced: Mutex<Option<String>>,
    /// The match's current tick (written into the lease at each renewal).
    tick: AtomicU64,
    /// Tick of the newest snapshot written, or NONE.
    last_written_tick: AtomicU64,
    /// Snapshot writes that failed (not fencing).
    snapshot_failures: AtomicU64,
    /// Lease renewals that failed (not fencing).
    renewal_failures: AtomicU64,
}

enum Job {
    Snapshot { tick: u64, bytes: Vec<u8> },
}

/// The answer to "may I tick?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The lease holds.
    Owned,
    /// The lease is about to lapse or lapsed (we were paused, or the store cannot be
    /// reached): do not tick until a renewal succeeds or we learn we were fenced.
    Lapsed,
    /// A successor owns the match.
    Fenced(String),
}

/// How an epoch ended on purpose ([`Ownership::finish`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// The tick of the newest snapshot the store holds from this epoch.
    pub last_written_tick: Option<u64>,
    /// Whether the lease was released (a standby may take over at once).
    pub released: bool,
    /// Whether a successor took the match over within the wait.
    pub successor: bool,
}

/// This process's ownership of one match at one epoch.
pub struct Ownership {
    /// The match.
    pub match_id: String,
    /// The epoch we own it at.
    pub epoch: u64,
    /// How often the loop snapshots.
    pub snapshot_every: Duration,
    /// The lease length.
    pub lease: Duration,
    owner: String,
    store: Arc<dyn SnapshotStore>,
    clock: Clock,
    state: Arc<LeaseState>,
    writer: Option<(SyncSender<Job>, JoinHandle<()>)>,
    renewer: Option<(SyncSender<()>, JoinHandle<()>)>,
}

/// How ownership is set up.
pub struct OwnershipConfig {
    /// The store holding snapshots and the lease.
    pub store: Arc<dyn SnapshotStore>,
    /// The match.
    pub match_id: String,
    /// Who we are in the lease.
    pub owner: String,
    /// The epoch we acquired.
    pub epoch: u64,
    /// Lease length.
    pub lease: Duration,
    /// Snapshot interval.
    pub snapshot_every: Duration,
    /// Our clock's ms (see [`Clock::now`]) at which the acquisition started: the loop
    /// may tick until this plus the lease minus the margin.
    pub acquired_at_ms: u64,
    /// The match's tick when it was acquired.
    pub tick: u64,
    /// The process's clock: the one the loop asks [`Ownership::standing`] with.
    pub clock: Clock,
}

impl Ownership {
    /// Starts the writer and renewer threads for an acquired lease.
    pub fn start(config: OwnershipConfig) -> std::io::Result<Self> {
        let state = Arc::new(LeaseState {
            owner: config.owner.clone(),
            ..LeaseState::default()
        });
        let margin = safety_margin(config.lease);
        state.tick_until_ms.store(
            (config.acquired_at_ms + config.lease.as_millis() as u64)
                .saturating_sub(margin.as_millis() as u64),
            Ordering::SeqCst,
        );
        state.last_written_tick.store(NONE, Ordering::SeqCst);
        state.tick.store(config.tick, Ordering::SeqCst);
        let mut ownership = Self {
            match_id: config.match_id,
            epoch: config.epoch,
            snapshot_every: config.snapshot_every,
            lease: config.lease,
            owner: config.owner,
            store: config.store,
            clock: config.clock,
            state,
            writer: None,
            renewer: None,
        };
        ownership.writer = Some(ownership.spawn_writer()?);
        ownership.renewer = Some(ownership.spawn_renewer()?);
        Ok(ownership)
    }

    fn spawn_writer(&self) -> std::io::Result<(SyncSender<Job>, JoinHandle<()>)> {
        // Two in flight at most: a writer slower than the snapshot interval skips one.
        let (tx, rx) = sync_channel::<Job>(2);
        let (store, state, id, epoch) = self.parts();
        let thread = std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let mut failing = false;
                while let Ok(Job::Snapshot { tick, bytes }) = rx.recv() {
                    match store.write_snapshot(&id, epoch, tick, &bytes) {
                        Ok(()) => {
                            if std::mem::take(&mut failing) {
                                tracing::info!(match_id = %id, epoch, tick, "snapshots are being written again");
                            }
                            state.last_written_tick.store(tick, Ordering::SeqCst);
                        }
                        Err(error) => {
                            failing = true;
                            record_failure(&state, &id, epoch, error, Failure::Snapshot, tick);
                        }
                    }
                }
            })?;
        Ok((tx, thread))
    }

    fn spawn_renewer(&self) -> std::io::Result<(SyncSender<()>, JoinHandle<()>)> {
        let (stop_tx, stop_rx) = sync_channel::<()>(1);
        let (store, state, id, epoch) = self.parts();
        let owner = self.owner.clone();
        let lease = self.lease;
        let clock = self.clock;
        let thread = std::thread::Builder::new()
            .name("lease-renewer".into())
            .spawn(move || {
                let me = Renewer {
                    store: &*store,
                    state: &state,
                    match_id: &id,
                    owner: &owner,
                    epoch,
                    lease,
                    clock,
                };
                me.run(&stop_rx);
            })?;
        Ok((stop_tx, thread))
    }

    fn parts(&self) -> (Arc<dyn SnapshotStore>, Arc<LeaseState>, String, u64) {
        (
            Arc::clone(&self.store),
            Arc::clone(&self.state),
            self.match_id.clone(),
            self.epoch,
        )
    }

    /// May the loop tick at `now` (this process's [`Clock`])?
    pub fn standing(&self, now: Duration) -> Standing {
        if let Some(reason) = self.fenced() {
            return Standing::Fenced(reason);
        }
        if self.renewer.is_none() {
            return Standing::Fenced("ownership was given up".into());
        }
        if now.as_millis() as u64 > self.state.tick_until_ms.load(Ordering::SeqCst) {
            Standing::Lapsed
        } else {
            Standing::Owned
        }
    }

    /// Why a successor fenced us, if one did.
    pub fn fenced(&self) -> Option<String> {
        self.state.fenced.lock().ok().and_then(|f| f.clone())
    }

    /// Hands snapshot bytes to the writer; false if it is still busy with earlier ones.
    pub fn submit(&self, tick: u64, bytes: Vec<u8>) -> bool {
        let Some((writer, _)) = &self.writer else {
            return false;
        };
        match writer.try_send(Job::Snapshot { tick, bytes }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Tells the renewer the match's tick (it goes into the lease).
    pub fn set_tick(&self, tick: u64) {
        self.state.tick.store(tick, Ordering::SeqCst);
    }

    /// Tick of the newest snapshot written.
    pub fn last_written_tick(&self) -> Option<u64> {
        let tick = self.state.last_written_tick.load(Ordering::SeqCst);
        (tick != NONE).then_some(tick)
    }

    /// Snapshot writes that failed (a full or failing disk; fencing not included).
    pub fn snapshot_failures(&self) -> u64 {
        self.state.snapshot_failures.load(Ordering::SeqCst)
    }

    /// Lease renewals that failed (the store unreachable; fencing not included).
    pub fn renewal_failures(&self) -> u64 {
        self.state.renewal_failures.load(Ordering::SeqCst)
    }

    /// Stops renewing and writing, without releasing the lease: after a handoff (the
    /// successor holds the next epoch) or when fenced. Queued snapshots are still written.
    /// Blocks until both threads have ended.
    pub fn stop(&mut self) {
        // The writer first: the lease is renewed until the last snapshot is on disk, so a
        // slow final write cannot let it lapse.
        if let Some((writer, thread)) = self.writer.take() {
            drop(writer);
            let _ = thread.join();
        }
        if let Some((stop, thread)) = self.renewer.take() {
            let _ = stop.try_send(());
            drop(stop);
            let _ = thread.join();
        }
    }

    /// Ends the epoch on purpose (a stop): writes `last` (the final snapshot) and waits
    /// until it and every queued one are durable, stops renewing, then releases the lease
    /// with the final tick, so a watching standby takes over at once and rolls back
    /// nothing; then waits up to `wait_successor` for one to have done so. Blocks on the
    /// disk: call it off the tick loop's thread.
    pub fn finish(mut self, last: Option<(u64, Vec<u8>)>, wait_successor: Duration) -> Finished {
        if let Some((writer, _)) = &self.writer
            && let Some((tick, bytes)) = last
        {
            // A blocking send: the final snapshot must not be skipped.
            let _ = writer.send(Job::Snapshot { tick, bytes });
        }
        let tick = self.state.tick.load(Ordering::SeqCst);
        self.stop();
        let last_written_tick = self.last_written_tick();
        let released = if self.fenced().is_some() {
            false
        } else {
            let lease = Lease {
                owner: self.owner.clone(),
                epoch: self.epoch,
                expires_unix_ms: 0,
                tick,
                released: true,
            };
            match self.store.release(&self.match_id, &lease) {
                Ok(()) => true,
                Err(error) => {
                    tracing::error!(match_id = %self.match_id, epoch = self.epoch, %error,
                        "could not release the lease: a standby takes over when it lapses");
                    false
                }
            }
        };
        let successor = released && self.wait_for_successor(wait_successor);
        Finished {
            last_written_tick,
            released,
            successor,
        }
    }

    /// Polls the store (every 20 ms, for at most `wait`) for a newer epoch than ours.
    fn wait_for_successor(&self, wait: Duration) -> bool {
        let step = Duration::from_millis(20);
        let polls = (wait.as_millis() / step.as_millis()).max(1);
        for poll in 0..polls {
            if let Ok(Some(lease)) = self.store.lease(&self.match_id)
                && lease.epoch > self.epoch
            {
                return true;
            }
            if poll + 1 < polls {
                std::thread::sleep(step);
            }
        }
        false
    }
}

impl std::fmt::Debug for Ownership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ownership")
            .field("match_id", &self.match_id)
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the renewer thread works with.
struct Renewer<'a> {
    store: &'a dyn SnapshotStore,
    state: &'a LeaseState,
    match_id: &'a str,
    owner: &'a str,
    epoch: u64,
    lease: Duration,
    clock: Clock,
}

impl Renewer<'_> {
    /// Renews every quarter lease until told to stop, or fenced.
    fn run(&self, stop: &Receiver<()>) {
        let every = renew_every(self.lease);
        let margin = safety_margin(self.lease);
        let mut failing = false;
        // After a lapse, one renewal is not enough to tick again: a standby may have read
        // the lapsed lease just before it and be creating the next epoch. The renewal
        // after it (a quarter lease later) sees that epoch and is fenced; only a second
        // success in a row lets the loop tick again.
        let mut confirming = false;
        loop {
            match stop.recv_timeout(every) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
            }
            // Our own deadline on our monotonic clock; the store's on the wall clock
            // that every process on the machine reads afresh.
            let started = self.clock.now();
            let renewal = Lease {
                owner: self.owner.to_owned(),
                epoch: self.epoch,
                expires_unix_ms: crate::net::wall_ms() + self.lease.as_millis() as u64,
                tick: self.state.tick.load(Ordering::SeqCst),
                released: false,
            };
            match self.store.renew(self.match_id, &renewal) {
                Ok(()) => {
                    let until = (started + self.lease).saturating_sub(margin).as_millis() as u64;
                    let lapsed = started.as_millis() as u64
                        > self.state.tick_until_ms.load(Ordering::SeqCst);
                    if lapsed && !confirming {
                        confirming = true;
                        continue;
                    }
                    confirming = false;
                    self.state.tick_until_ms.fetch_max(until, Ordering::SeqCst);
                    if std::mem::take(&mut failing) {
                        tracing::info!(
                            match_id = self.match_id,
                            epoch = self.epoch,
                            "lease renewed again"
                        );
                    }
                }
                Err(error) => {
                    failing = true;
                    confirming = false;
                    let fenced = matches!(error, StoreError::Fenced { .. });
                    record_failure(
                        self.state,
                        self.match_id,
                        self.epoch,
                        error,
                        Failure::Renewal,
                        renewal.tick,
                    );
                    if fenced {
                        return;
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Snapshot,
    Renewal,
}

fn record_failure(
    state: &LeaseState,
    match_id: &str,
    epoch: u64,
    error: StoreError,
    what: Failure,
    tick: u64,
) {
    if let StoreError::Fenced { owner, .. } = &error {
        if *owner == state.owner {
            // This process took the next epoch itself (a handoff that did not happen).
            tracing::debug!(
                match_id,
                epoch,
                ?what,
                "superseded by this process's own newer epoch"
            );
        } else {
            tracing::error!(match_id, epoch, %error, ?what, "refused: a newer owner holds the match");
        }
        if let Ok(mut fenced) = state.fenced.lock() {
            *fenced = Some(error.to_string());
        }
        return;
    }
    let counter = match what {
        Failure::Snapshot => &state.snapshot_failures,
        Failure::Renewal => &state.renewal_failures,
    };
    let failures = counter.fetch_add(1, Ordering::SeqCst) + 1;
    // Loud, but not a line per attempt forever: the first few, then every 60th.
    if failures <= 3 || failures.is_multiple_of(60) {
        match what {
            Failure::Snapshot => {
                let last = state.last_written_tick.load(Ordering::SeqCst);
                let bound = if last == NONE {
                    None
                } else {
                    Some(tick.saturating_sub(last))
                };
                tracing::error!(match_id, epoch, tick, %error, failures, rollback_bound_ticks = ?bound,
                    "SNAPSHOT NOT WRITTEN: the match keeps running, but a crash now rolls back to the last snapshot written");
            }
            Failure::Renewal => {
                tracing::error!(match_id, epoch, %error, failures,
                    "LEASE NOT RENEWED: the match stops ticking before the lease could lapse, and resumes when a renewal succeeds");
            }
        }
    }
}
