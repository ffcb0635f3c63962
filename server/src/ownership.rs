//! What owning a match takes besides ticking it: periodic snapshots written off the tick
//! thread, and a lease renewed several times per lease period, both epoch-fenced.
//!
//! The tick loop serializes a snapshot (it owns the world) and hands the bytes to a writer
//! thread over a bounded channel: the loop never waits on disk. The writer also renews the
//! lease. The loop asks [`Ownership::check`] before every tick: a lease that lapsed (the
//! process was paused) stops the ticking until a renewal succeeds; a fenced write or
//! renewal (a successor owns the match now) ends it for good.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::net::Clock;
use crate::store::{Lease, SnapshotStore, StoreError};

const NONE: u64 = u64::MAX;

/// Where ownership stands, as the writer thread last learned it.
#[derive(Debug, Default)]
struct LeaseState {
    /// Unix ms until which our lease is known to hold.
    valid_until_ms: AtomicU64,
    /// Set once a successor fenced us.
    fenced: Mutex<Option<String>>,
    /// The match's current tick (written into the lease at each renewal).
    tick: AtomicU64,
    /// Tick of the newest snapshot written, or NONE.
    last_written_tick: AtomicU64,
    write_errors: AtomicU64,
}

enum Job {
    Snapshot { tick: u64, bytes: Vec<u8> },
    Stop,
}

/// The answer to "may I tick?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// The lease holds.
    Owned,
    /// The lease lapsed (we were paused or the store was unreachable): do not tick until
    /// the writer renews it or learns we were fenced.
    Lapsed,
    /// A successor owns the match.
    Fenced(String),
}

/// This process's ownership of one match.
pub struct Ownership {
    /// The match.
    pub match_id: String,
    /// The epoch we own it at.
    pub epoch: u64,
    /// How often the loop snapshots.
    pub snapshot_every: Duration,
    state: Arc<LeaseState>,
    writer: Option<SyncSender<Job>>,
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
    /// Unix ms until which the lease we acquired holds.
    pub valid_until_ms: u64,
}

impl Ownership {
    /// Starts the writer thread for an acquired lease.
    pub fn start(config: OwnershipConfig) -> std::io::Result<Self> {
        let state = Arc::new(LeaseState::default());
        state
            .valid_until_ms
            .store(config.valid_until_ms, Ordering::SeqCst);
        state.last_written_tick.store(NONE, Ordering::SeqCst);
        // Two in flight at most: a writer slower than the snapshot interval skips one.
        let (tx, rx) = sync_channel::<Job>(2);
        let thread_state = Arc::clone(&state);
        let OwnershipConfig {
            store,
            match_id,
            owner,
            epoch,
            lease,
            snapshot_every,
            ..
        } = config;
        let id = match_id.clone();
        std::thread::Builder::new()
            .name("snapshot-writer".into())
            .spawn(move || {
                let clock = Clock::start();
                let renew_every = (lease / 4).max(Duration::from_millis(20));
                let mut next_renew = clock.now();
                loop {
                    let wait = next_renew.saturating_sub(clock.now());
                    match rx.recv_timeout(wait) {
                        Ok(Job::Snapshot { tick, bytes }) => {
                            match store.write_snapshot(&id, epoch, tick, &bytes) {
                                Ok(()) => {
                                    thread_state.last_written_tick.store(tick, Ordering::SeqCst)
                                }
                                Err(error) => record_failure(
                                    &thread_state,
                                    &id,
                                    epoch,
                                    error,
                                    "snapshot write",
                                ),
                            }
                        }
                        Ok(Job::Stop) | Err(RecvTimeoutError::Disconnected) => break,
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                    let now = clock.now();
                    if now >= next_renew {
                        let now_ms = now.as_millis() as u64;
                        let renewal = Lease {
                            owner: owner.clone(),
                            epoch,
                            expires_unix_ms: now_ms + lease.as_millis() as u64,
                            tick: thread_state.tick.load(Ordering::SeqCst),
                        };
                        match store.renew(&id, &renewal) {
                            Ok(()) => thread_state
                                .valid_until_ms
                                .store(renewal.expires_unix_ms, Ordering::SeqCst),
                            Err(error) => {
                                record_failure(&thread_state, &id, epoch, error, "lease renewal")
                            }
                        }
                        next_renew = now + renew_every;
                    }
                }
            })?;
        Ok(Self {
            match_id,
            epoch,
            snapshot_every,
            state,
            writer: Some(tx),
        })
    }

    /// May the loop tick at `now`?
    pub fn standing(&self, now: Duration) -> Standing {
        if let Ok(fenced) = self.state.fenced.lock()
            && let Some(reason) = fenced.as_ref()
        {
            return Standing::Fenced(reason.clone());
        }
        if self.writer.is_none() {
            return Standing::Fenced("ownership was given up".into());
        }
        if now.as_millis() as u64 > self.state.valid_until_ms.load(Ordering::SeqCst) {
            Standing::Lapsed
        } else {
            Standing::Owned
        }
    }

    /// Hands snapshot bytes to the writer; false if it is still busy with earlier ones.
    pub fn submit(&self, tick: u64, bytes: Vec<u8>) -> bool {
        let Some(writer) = &self.writer else {
            return false;
        };
        match writer.try_send(Job::Snapshot { tick, bytes }) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// Tells the writer the match's tick (it goes into the lease).
    pub fn set_tick(&self, tick: u64) {
        self.state.tick.store(tick, Ordering::SeqCst);
    }

    /// Tick of the newest snapshot written.
    pub fn last_written_tick(&self) -> Option<u64> {
        let tick = self.state.last_written_tick.load(Ordering::SeqCst);
        (tick != NONE).then_some(tick)
    }

    /// Snapshot writes and renewals that failed (fencing included).
    pub fn write_errors(&self) -> u64 {
        self.state.write_errors.load(Ordering::SeqCst)
    }

    /// Stops writing and renewing (after a handoff, or at exit). Queued snapshots are
    /// still written first.
    pub fn stop(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.send(Job::Stop);
        }
    }
}

fn record_failure(state: &LeaseState, match_id: &str, epoch: u64, error: StoreError, what: &str) {
    state.write_errors.fetch_add(1, Ordering::SeqCst);
    if let StoreError::Fenced { .. } = &error {
        tracing::error!(match_id, epoch, %error, "{what} refused: a newer owner holds the match");
        if let Ok(mut fenced) = state.fenced.lock() {
            *fenced = Some(error.to_string());
        }
    } else {
        tracing::warn!(match_id, epoch, %error, "{what} failed");
    }
}
