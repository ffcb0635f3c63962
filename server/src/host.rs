//! The process around a match: which role it plays (owner, standby), starting the tick
//! loop when it gets a match, taking a match over from a dead owner (`--watch`), and the
//! standby's side of a handoff (prepare, then commit). The owner's side is in
//! [`crate::transfer`].
//!
//! The store is the only judge of who owns a match: every way of getting one (a fresh
//! start, a takeover, a handoff) is an `acquire` of the next epoch, which exactly one
//! process can win.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use arena_shared::game::{Game, MatchConfig};
use arena_shared::netcode::Key;
use arena_shared::snapshot::{self, MatchState, SnapshotHeader};
use tokio::sync::{mpsc, watch};

use crate::core::{CoreConfig, ServerCore};
use crate::faults::Faults;
use crate::handoff::{self, Accepted, PrepareRequest, Prepared};
use crate::lobby::{self, Preparation, PrepareSlot};
use crate::net::{Clock, History, LoopCommand, LoopExit, MatchRun, run_match, wall_ms};
use crate::ownership::{Ownership, OwnershipConfig, renew_every};
use crate::status::{Heartbeat, Status};
use crate::store::{
    FileStore, Lease, Me, RedisStore, SnapshotStore, StandbyEntry, StoreError, StoreSpec,
};

/// What a process needs to own or take over matches.
#[derive(Clone)]
pub struct HostConfig {
    /// Everything about the match but its id; cores are made from it.
    pub core: CoreConfig,
    /// The fleet key.
    pub private_key: Key,
    /// This process in leases.
    pub owner_id: String,
    /// Lease length.
    pub lease: Duration,
    /// Snapshot interval.
    pub snapshot_every: Duration,
    /// Bearer token for admin APIs (ours and the standby's).
    pub admin_token: Option<String>,
    /// The match a standby watches (`--watch`), if any.
    pub watch: Option<String>,
    /// Test-only fault hooks (off unless `ARENA_TEST_FAULT_DIR` is set).
    pub faults: Faults,
    /// Which store (`--store`).
    pub store: StoreSpec,
    /// Key prefix in a Redis store (`--store-namespace`).
    pub store_namespace: String,
    /// This process's admin API address (for the directory and the standby registry).
    pub admin: SocketAddr,
    /// The match-shaping flags given on the command line, and `--new-match`.
    pub match_flags: crate::config::MatchFlags,
}

impl HostConfig {
    /// This process, as the store's directory and registry list it.
    pub fn me(&self) -> Me {
        Me {
            instance: self.owner_id.clone(),
            admin: self.admin.to_string(),
            udp: self.core.tokens.own_address,
        }
    }

    /// Opens the store `--store` names.
    pub fn open_store(&self, data_dir: &std::path::Path) -> anyhow::Result<Arc<dyn SnapshotStore>> {
        Ok(match &self.store {
            StoreSpec::File => Arc::new(
                FileStore::new(data_dir)
                    .with_fault_dir(self.faults.dir())
                    .with_me(self.me()),
            ),
            StoreSpec::Redis(url) => {
                let store = RedisStore::connect(url, &self.store_namespace, self.me())?;
                match store.ping() {
                    Ok(()) => {
                        tracing::info!(store = %crate::store::redis::redacted(url), namespace = %self.store_namespace, "using the Redis store")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the Redis store does not answer yet: no match is taken or renewed until it does")
                    }
                }
                Arc::new(store)
            }
        })
    }
}

/// A match for the tick loop to run.
pub(crate) struct Start<G: Game> {
    pub(crate) config: CoreConfig,
    pub(crate) state: MatchState<G>,
    pub(crate) epoch: u64,
    /// Our clock's ms when the lease was acquired.
    pub(crate) acquired_at_ms: u64,
    pub(crate) frozen_at_us: Option<u64>,
    pub(crate) history: History,
    /// Restored from a snapshot after a crash (clients are told, to count their rollback).
    pub(crate) restored: bool,
    /// The previous owner's UDP address, after a handoff.
    pub(crate) fallback_peer: Option<SocketAddr>,
}

/// Shared by the admin API, the watcher and main.
pub struct Host<G: Game> {
    pub(crate) config: HostConfig,
    pub(crate) store: Arc<dyn SnapshotStore>,
    pub(crate) clock: Clock,
    role: Mutex<&'static str>,
    start_tx: Mutex<Option<mpsc::UnboundedSender<Start<G>>>>,
    pub(crate) commands: mpsc::UnboundedSender<LoopCommand>,
    /// The latest status as the loop published it (see [`Host::status`]).
    status: watch::Receiver<Status>,
    prepare: Arc<PrepareSlot>,
    /// Snapshot files already reported as refused (each is logged once).
    refused: Mutex<HashSet<String>>,
    snapshots_refused: Mutex<u64>,
    /// Set while this process hands its match off (one handoff at a time).
    handing_off: std::sync::atomic::AtomicBool,
    /// Beaten by the loop serving the socket (see [`Host::loop_alive`]).
    heartbeat: Arc<Heartbeat>,
    /// Set by [`Host::drain`], never cleared: no new connection, no new match.
    draining: Arc<std::sync::atomic::AtomicBool>,
}

/// The tick loop's thread and how main learns that it ended.
pub struct LoopThread {
    /// Resolves when the loop thread ends.
    pub done: tokio::sync::oneshot::Receiver<LoopExit>,
}

impl<G: Game> Host<G> {
    /// Binds nothing: `socket` is the bound game socket, handed to the loop thread, which
    /// serves it as a lobby (denying, or admitting a prepared handoff's clients) until it
    /// gets a match (at once for an owner, later for a standby).
    pub fn start(
        config: HostConfig,
        data_dir: &std::path::Path,
        socket: std::net::UdpSocket,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Self>, LoopThread)> {
        let store = config.open_store(data_dir)?;
        let (status_tx, status_rx) = watch::channel(Status {
            role: "standby",
            game_name: G::NAME,
            match_id: config
                .watch
                .clone()
                .filter(|w| w != WATCH_ANY)
                .unwrap_or_default(),
            tick_hz: config.core.world.tick_hz,
            max_players: config.core.netcode.max_clients,
            ..Status::default()
        });
        let (start_tx, start_rx) = mpsc::unbounded_channel::<Start<G>>();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let clock = Clock::start();
        let prepare = Arc::new(PrepareSlot::default());
        let heartbeat = Arc::new(Heartbeat::default());
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let host = Arc::new(Self {
            config: config.clone(),
            store: Arc::clone(&store),
            clock,
            role: Mutex::new("standby"),
            start_tx: Mutex::new(Some(start_tx)),
            commands: commands_tx,
            status: status_rx,
            prepare: Arc::clone(&prepare),
            refused: Mutex::new(HashSet::new()),
            snapshots_refused: Mutex::new(0),
            handing_off: std::sync::atomic::AtomicBool::new(false),
            heartbeat: Arc::clone(&heartbeat),
            draining: Arc::clone(&draining),
        });
        let thread = LoopParts {
            config,
            store,
            clock,
            heartbeat,
            draining,
            prepare,
            start: start_rx,
            commands: commands_rx,
            status_tx,
            shutdown,
        };
        std::thread::Builder::new()
            .name("tick-loop".into())
            .spawn(move || {
                let exit = thread.run(socket);
                let _ = done_tx.send(exit);
            })
            .context("cannot start the tick loop thread")?;
        Ok((host, LoopThread { done: done_rx }))
    }

    /// This process's role now.
    pub fn role(&self) -> &'static str {
        let role = self.role.lock().map_or("unknown", |r| *r);
        if role == "standby" && self.prepare.current().is_some() {
            return "preparing";
        }
        role
    }

    /// The latest status, with the role as of now (the loop reports every half second,
    /// the role changes at once): "starting" between taking a match and the loop's first
    /// report.
    pub fn status(&self) -> Status {
        let mut status = self.status.borrow().clone();
        if status.role == "standby" {
            // Until the loop publishes its first status, a match being started is not
            // yet one to read figures from.
            status.role = match self.role() {
                "owner" => "starting",
                role => role,
            };
            status.prepared_clients = self.prepare.connected();
            status.drops = self.prepare.drops();
            status.snapshots_refused = self.snapshots_refused.lock().map_or(0, |n| *n);
        }
        let store = self.store.info();
        status.store = store.kind;
        status.store_address = store.address;
        status.store_error = self.store.unavailable();
        status.draining = self.draining();
        status.version = env!("CARGO_PKG_VERSION");
        status
    }

    /// `GET /healthz`: `Ok` while the loop serving the socket (the lobby, or the match's
    /// tick loop) keeps its rate: it came round within [`health_bound`] of now. The
    /// reason otherwise.
    pub fn health(&self) -> Result<(), String> {
        let status = self.status.borrow();
        let bound = health_bound(status.tick_hz);
        if matches!(status.role, "stopped" | "fenced") {
            return Err(format!(
                "the match loop has ended (role {}): this process is exiting",
                status.role
            ));
        }
        drop(status);
        if self.heartbeat.alive(self.clock.now(), bound) {
            Ok(())
        } else {
            Err(format!(
                "the loop serving the socket has not come round within {} ms: stuck, or not started yet",
                bound.as_millis()
            ))
        }
    }

    /// `GET /readyz`: whether this process can do its job now, with its role: an owner
    /// that admits players (not draining, not handing off, its lease held, its store
    /// answering, room left), or a standby (also one preparing a handoff) that can
    /// receive a match (not draining, its store answering). The reason otherwise.
    pub fn readiness(&self) -> Result<&'static str, (&'static str, String)> {
        use std::sync::atomic::Ordering;
        let status = self.status();
        let role = status.role;
        let refuse = |reason: String| Err((role, reason));
        if status.draining {
            return refuse("draining: admitting no new connection or match".into());
        }
        match role {
            "owner" | "standby" | "preparing" => {}
            "starting" => return refuse("starting: the match is being loaded".into()),
            "retired" => {
                return refuse("retired: the match was handed to another process".into());
            }
            "fenced" => return refuse("fenced: another process owns the match".into()),
            "stopped" => return refuse("stopped: the match was stopped".into()),
            other => return refuse(format!("{other}: not serving")),
        }
        if let Some(error) = status.store_error {
            return refuse(format!("the store does not answer: {error}"));
        }
        if let Err(reason) = self.health() {
            return refuse(reason);
        }
        if role == "owner" {
            if status.lease_lapsed {
                return refuse("lease lapsed: holding the ticks until the store renews it".into());
            }
            if self.handing_off.load(Ordering::SeqCst) {
                return refuse("handing the match off".into());
            }
            if status.max_players > 0 && status.players >= status.max_players {
                return refuse(format!(
                    "full: {} of {} players",
                    status.players, status.max_players
                ));
            }
        }
        Ok(role)
    }

    /// Whether this process drains ([`Host::drain`]).
    pub fn draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `POST /drain`: from now on this process admits no new connection (a valid request
    /// gets netcode's connection-denied packet, counted in `drops.not_admitting`) and
    /// takes no match (a standby refuses prepares, commits and takeovers, and leaves the
    /// store's standby registry); the players connected keep playing. For good: nothing
    /// undoes it but a restart. Returns once a running match refuses new connections.
    pub async fn drain(&self) {
        use std::sync::atomic::Ordering;
        let first = !self.draining.swap(true, Ordering::SeqCst);
        let running = matches!(self.role(), "owner" | "retired");
        if first {
            tracing::info!(
                role = self.role(),
                "draining: no new connections or matches"
            );
        }
        if !(first || running) {
            return;
        }
        // A loop not running yet reads the flag when its match starts (and this command
        // then finds it already done).
        let (reply, done) = tokio::sync::oneshot::channel();
        if self.commands.send(LoopCommand::Drain { reply }).is_err() || !running {
            return;
        }
        if tokio::time::timeout(DRAIN_WAIT, done).await.is_err() {
            tracing::warn!("the match loop did not confirm the drain in time");
        }
    }

    /// Whether the loop serving the socket (the lobby, or the tick loop) came round
    /// within the last second: what Agones' health pings report.
    pub fn loop_alive(&self) -> bool {
        self.heartbeat
            .alive(self.clock.now(), std::time::Duration::from_secs(1))
    }

    /// The store this process uses.
    pub fn store(&self) -> &Arc<dyn SnapshotStore> {
        &self.store
    }

    /// Bearer token the admin API requires, if any.
    pub fn admin_token(&self) -> Option<&str> {
        self.config.admin_token.as_deref()
    }

    /// Becomes the owner of `match_id`: takes the lease (refused while another owner's is
    /// live), restores the newest snapshot that verifies if there is one (unless
    /// `--new-match`), and starts ticking. A restored match keeps its own settings; flags
    /// given on the command line that conflict with them are refused before anything is
    /// taken. Returns the settings the match runs with.
    pub fn own(&self, match_id: &str) -> anyhow::Result<MatchConfig> {
        let now_ms = self.clock_ms();
        let flags = self.config.match_flags;
        let stored = if flags.new_match {
            None
        } else {
            self.newest_valid_snapshot(match_id)?
        };
        if let Some((header, state)) = &stored {
            let conflicts = flags.conflicts(G::config(&state.world));
            if !conflicts.is_empty() {
                let listed: Vec<String> = conflicts
                    .iter()
                    .map(|(flag, given, theirs)| format!("{flag} {given} (the match has {theirs})"))
                    .collect();
                bail!(
                    "match {match_id:?} is stored (tick {}, epoch {}) with other settings: {}; \
                     drop the flag to resume it as it is, or give --new-match to start a fresh match",
                    header.tick.0,
                    header.epoch,
                    listed.join(", ")
                );
            }
        }
        let held = self.store.lease(match_id)?;
        let epoch = held.as_ref().map_or(1, |l| l.epoch + 1);
        let lease = self.lease(epoch, held.as_ref().map_or(0, |l| l.tick));
        match self.store.acquire(match_id, &lease, wall_ms(), false) {
            Ok(()) => {}
            Err(StoreError::Held {
                owner,
                epoch,
                remaining_ms,
            }) => bail!(
                "match {match_id:?} is owned by {owner} at epoch {epoch} for {remaining_ms} ms more; \
                 refusing to start a second owner (run with --standby --watch {match_id} to take over when it lapses)"
            ),
            Err(error) => return Err(error.into()),
        }
        // Read again under our lease: a snapshot written between the first read and the
        // acquire (by an owner whose lease then lapsed) is the one to resume.
        let stored = if flags.new_match {
            None
        } else {
            self.newest_valid_snapshot(match_id)?
        };
        let (state, history, restored) = match stored {
            Some((header, state)) => {
                let history = self.restore_history(held.as_ref(), &header);
                let settings = G::config(&state.world);
                tracing::info!(
                    match_id,
                    tick = header.tick.0,
                    epoch,
                    rollback_ticks = ?history.rollback_ticks,
                    max_players = settings.max_players,
                    tick_hz = settings.tick_hz,
                    seed = settings.seed,
                    "restored the match from its newest snapshot that verifies, with its own settings"
                );
                (state, history, true)
            }
            None => {
                if flags.new_match
                    && let Ok(Some((old_epoch, old_tick))) = self.store.newest_snapshot_id(match_id)
                {
                    tracing::warn!(
                        match_id,
                        epoch,
                        old_epoch,
                        old_tick,
                        "--new-match: starting a fresh match; the stored one's snapshots are superseded"
                    );
                }
                let core = ServerCore::<G>::new(self.core_config(match_id));
                (core.match_state(), History::default(), false)
            }
        };
        let settings = *G::config(&state.world);
        self.begin(Start {
            config: self.core_config(match_id),
            state,
            epoch,
            acquired_at_ms: now_ms,
            frozen_at_us: None,
            history,
            restored,
            fallback_peer: None,
        })?;
        Ok(settings)
    }

    /// Phase one of a handoff, on the standby: whether it can take this match; if so it
    /// admits the match's clients until the commit (or [`handoff::PREPARE_TTL`]).
    pub fn prepare(&self, request: &PrepareRequest) -> Result<Prepared, ReceiveError> {
        if self.draining() {
            return Err(ReceiveError::Busy(
                "this standby is draining: it takes no match".into(),
            ));
        }
        let role = self.role();
        if role != "standby" && role != "preparing" {
            return Err(ReceiveError::Busy(format!(
                "this process is {role}, not a standby"
            )));
        }
        if let Some(current) = self.prepare.current()
            && current.match_id != request.match_id
        {
            return Err(ReceiveError::Busy(format!(
                "this standby is preparing to receive match {:?}",
                current.match_id
            )));
        }
        if let Some(watched) = &self.config.watch
            && *watched != request.match_id
            && watched != WATCH_ANY
        {
            return Err(ReceiveError::Busy(format!(
                "this standby watches {watched:?}, not {:?}",
                request.match_id
            )));
        }
        if request.snapshot_format != snapshot::FORMAT_VERSION {
            return Err(ReceiveError::Refused(format!(
                "the owner writes snapshot format {}, this build reads {}",
                request.snapshot_format,
                snapshot::FORMAT_VERSION
            )));
        }
        let capacity = self.config.core.netcode.max_clients;
        if request.players > capacity {
            return Err(ReceiveError::Busy(format!(
                "the match has {} players, this standby has room for {capacity}",
                request.players
            )));
        }
        let mut id = [0u8; 8];
        arena_shared::netcode::token::fill_random(&mut id);
        let handoff_id = u64::from_le_bytes(id);
        self.prepare.open(Preparation {
            match_id: request.match_id.clone(),
            handoff_id,
            epoch: request.epoch,
            until_ms: self.clock_ms() + handoff::PREPARE_TTL.as_millis() as u64,
            committed: false,
        });
        tracing::info!(match_id = %request.match_id, epoch = request.epoch, players = request.players,
            handoff_id, from = %request.from_udp, "preparing to receive a match: admitting its clients");
        Ok(Prepared {
            udp: self.config.core.tokens.own_address,
            instance: self.config.owner_id.clone(),
            handoff_id,
        })
    }

    /// Clients connected ahead for prepare `handoff_id`, if it is the one under way.
    pub fn prepare_progress(&self, handoff_id: u64) -> Option<usize> {
        self.prepare
            .current()
            .filter(|p| p.handoff_id == handoff_id)
            .map(|_| self.prepare.connected())
    }

    /// Phase two, on the standby: takes a match handed over by its owner (the body of
    /// `POST /match`), if the seal is for us, for the prepare under way, and on time.
    pub fn receive(
        &self,
        sealed: &[u8],
        frozen_at_us: Option<u64>,
    ) -> Result<Accepted, ReceiveError> {
        self.config.faults.pause_if("standby-pauses-on-commit");
        if self.draining() {
            // Refused before anything is taken: the owner finds epoch e+1 free in the
            // store and resumes the match there.
            self.prepare.clear();
            return Err(ReceiveError::Busy(
                "this standby started draining: it takes no match".into(),
            ));
        }
        let (commit, bytes) = handoff::open(&self.config.private_key, sealed)
            .map_err(|e| ReceiveError::Refused(e.to_string()))?;
        if commit.recipient != self.config.owner_id {
            return Err(ReceiveError::Refused(format!(
                "sealed for {}, this is {}",
                commit.recipient, self.config.owner_id
            )));
        }
        let now_ms = self.clock_ms();
        let wall = wall_ms();
        if wall > commit.deadline_unix_ms {
            self.prepare.clear();
            return Err(ReceiveError::Refused(format!(
                "the handoff's deadline passed {} ms ago",
                wall - commit.deadline_unix_ms
            )));
        }
        let Some(preparation) = self.prepare.commit(commit.handoff_id) else {
            return Err(ReceiveError::Refused(format!(
                "no handoff {} is being prepared here (stale, replayed, or already committed)",
                commit.handoff_id
            )));
        };
        let taken = self.take_handed_over(&commit, &bytes, &preparation, now_ms, frozen_at_us);
        if taken.is_err() {
            self.prepare.clear();
        }
        taken
    }

    fn take_handed_over(
        &self,
        commit: &handoff::Commit,
        bytes: &[u8],
        preparation: &Preparation,
        now_ms: u64,
        frozen_at_us: Option<u64>,
    ) -> Result<Accepted, ReceiveError> {
        let (header, state) = snapshot::decode::<G>(bytes, &commit.match_id)
            .map_err(|e| ReceiveError::Refused(e.to_string()))?;
        if header.epoch != commit.epoch
            || commit.match_id != preparation.match_id
            || commit.epoch != preparation.epoch
        {
            return Err(ReceiveError::Refused(format!(
                "the snapshot (match {:?} epoch {}) is not the one prepared (match {:?} epoch {})",
                header.match_id, header.epoch, preparation.match_id, preparation.epoch
            )));
        }
        let epoch = header
            .epoch
            .checked_add(1)
            .ok_or_else(|| ReceiveError::Refused("the snapshot's epoch is the last one".into()))?;
        let lease = self.lease(epoch, header.tick.0);
        self.store
            .acquire(&header.match_id, &lease, wall_ms(), true)
            .map_err(|e| ReceiveError::Busy(e.to_string()))?;
        self.config.faults.crash_if("standby-dies-after-lease");
        tracing::info!(match_id = %header.match_id, tick = header.tick.0, epoch, "received a handed-over match");
        self.begin(Start {
            config: self.core_config(&header.match_id),
            state,
            epoch,
            acquired_at_ms: now_ms,
            frozen_at_us,
            history: History::default(),
            restored: false,
            fallback_peer: Some(commit.from_udp),
        })
        .map_err(|e| ReceiveError::Busy(e.to_string()))?;
        Ok(Accepted {
            udp: self.config.core.tokens.own_address,
            epoch,
            tick: header.tick.0,
        })
    }

    /// As a standby with `--watch`: polls the lease and takes the match over once it
    /// lapses, from its newest snapshot that verifies. Returns when this process owns a
    /// match or stops. The store judges a race with a handoff being received.
    pub async fn watch(self: Arc<Self>, match_id: String, mut shutdown: watch::Receiver<bool>) {
        let interval = renew_every(self.config.lease);
        tracing::info!(match_id, "standby watching the match's lease");
        let mut last_error = String::new();
        while self.role() != "owner" && !*shutdown.borrow() {
            let host = Arc::clone(&self);
            let id = match_id.clone();
            let taken = tokio::task::spawn_blocking(move || {
                if id == WATCH_ANY {
                    host.take_over_any_crashed()
                } else {
                    host.try_take_over(&id, false)
                }
            })
            .await;
            match taken {
                Ok(Ok(true)) => return,
                Ok(Ok(false)) => {}
                Ok(Err(error)) => {
                    // Said once per distinct reason, not every poll.
                    let text = format!("{error:#}");
                    if text != last_error {
                        tracing::warn!(match_id, error = %text, "cannot take the match over");
                        last_error = text;
                    }
                }
                Err(_) => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// `--watch any`: one look at every match in the store's directory; takes over the
    /// first whose owner crashed (its lease lapsed without a release: a stopped match is
    /// left stopped). `Ok(true)`: we own it now.
    fn take_over_any_crashed(&self) -> anyhow::Result<bool> {
        for entry in self.store.matches()? {
            if entry.released || entry.owner == self.config.owner_id {
                continue;
            }
            match self.try_take_over(&entry.match_id, true) {
                Ok(true) => return Ok(true),
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(match_id = %entry.match_id, %error, "cannot take this match over")
                }
            }
        }
        Ok(false)
    }

    /// One look at the lease: takes the match if it lapsed (with `crashed_only`, only if
    /// its owner did not release it). `Ok(true)`: we own it now.
    fn try_take_over(&self, match_id: &str, crashed_only: bool) -> anyhow::Result<bool> {
        if self.role() == "owner" || self.draining() {
            return Ok(false);
        }
        let now_ms = self.clock_ms();
        let Some(held) = self.store.lease(match_id)? else {
            // Nobody has owned the match yet: nothing to take over.
            return Ok(false);
        };
        if !held.lapsed(wall_ms()) || (crashed_only && held.released) {
            return Ok(false);
        }
        let held = Some(held);
        let Some((header, state)) = self.newest_valid_snapshot(match_id)? else {
            bail!(
                "the lease lapsed but the store holds no snapshot of match {match_id:?} that verifies"
            );
        };
        let epoch = held
            .as_ref()
            .map_or(header.epoch, |l| l.epoch.max(header.epoch))
            + 1;
        let lease = self.lease(epoch, header.tick.0);
        match self.store.acquire(match_id, &lease, wall_ms(), false) {
            Ok(()) => {}
            Err(StoreError::Held { .. } | StoreError::Fenced { .. }) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        let history = self.restore_history(held.as_ref(), &header);
        tracing::warn!(
            match_id,
            epoch,
            snapshot_tick = header.tick.0,
            rollback_ticks = ?history.rollback_ticks,
            rollback_ticks_at_least = ?history.rollback_ticks_at_least,
            "the owner's lease lapsed: took the match over from its newest snapshot"
        );
        self.begin(Start {
            config: self.core_config(match_id),
            state,
            epoch,
            acquired_at_ms: now_ms,
            frozen_at_us: None,
            history,
            restored: true,
            fallback_peer: None,
        })?;
        Ok(true)
    }

    /// The newest snapshot in the store that verifies; each one refused on the way is
    /// logged (once per file) and counted.
    fn newest_valid_snapshot(
        &self,
        match_id: &str,
    ) -> anyhow::Result<Option<(SnapshotHeader, MatchState<G>)>> {
        for stored in self.store.snapshots_newest_first(match_id)? {
            let decoded = stored.bytes.and_then(|bytes| {
                snapshot::decode::<G>(&bytes, match_id).map_err(|e| e.to_string())
            });
            match decoded {
                Ok(found) => return Ok(Some(found)),
                Err(reason) => {
                    let first_time = self
                        .refused
                        .lock()
                        .is_ok_and(|mut seen| seen.insert(stored.name.clone()));
                    if first_time {
                        if let Ok(mut n) = self.snapshots_refused.lock() {
                            *n += 1;
                        }
                        tracing::error!(match_id, file = %stored.name, %reason,
                            "refused a snapshot in the store; trying the next older one");
                    }
                }
            }
        }
        Ok(None)
    }

    /// What a restore rolled back: exact when the owner released its lease at the
    /// snapshot's tick (a stop), otherwise unknown, with a lower bound.
    fn restore_history(&self, held: Option<&Lease>, header: &SnapshotHeader) -> History {
        let mut history = History {
            restores: 1,
            snapshots_refused: self.snapshots_refused.lock().map_or(0, |n| *n),
            ..History::default()
        };
        match held {
            Some(lease) if lease.released => {
                history.rollback_ticks = Some(lease.tick.saturating_sub(header.tick.0));
            }
            Some(lease) => {
                history.rollback_ticks_reason = Some(format!(
                    "the owner (epoch {}) stopped without releasing its lease: the ticks it ran after its last renewal are unknown",
                    lease.epoch
                ));
                history.rollback_ticks_at_least = Some(lease.tick.saturating_sub(header.tick.0));
            }
            None => {
                history.rollback_ticks_reason =
                    Some("the store holds no lease of the match".into());
            }
        }
        history
    }

    /// Asks the running match to move to the standby whose admin API is at `to` (or, for
    /// [`AUTO`], to a free standby from the store): the two-phase handoff of
    /// [`crate::transfer`]. Returns the admin address of the standby that took it.
    /// `make_before_break`: clients connect to the standby before the freeze (the
    /// default everywhere; `false` only to measure the difference).
    pub async fn hand_off(
        self: &Arc<Self>,
        to: String,
        make_before_break: bool,
    ) -> Result<(String, Accepted), String> {
        use std::sync::atomic::Ordering;
        if self.handing_off.swap(true, Ordering::SeqCst) {
            return Err("a handoff of this match is already under way".into());
        }
        // On a task of its own: a caller that hangs up (an HTTP client's timeout) must not
        // cancel a handoff half-way, with the match frozen.
        let host = Arc::clone(self);
        let result = tokio::spawn(async move {
            let result = if to == AUTO {
                host.hand_off_auto(make_before_break).await
            } else {
                crate::transfer::hand_off(&host, &to, make_before_break)
                    .await
                    .map(|accepted| (to, accepted))
            };
            host.handing_off.store(false, Ordering::SeqCst);
            result
        })
        .await;
        result.unwrap_or_else(|_| Err("the handoff task failed".into()))
    }

    /// `--handoff-to auto`: to the free standbys the store lists (freshest first, at most
    /// [`AUTO_CANDIDATES`]), in turn, until one takes the match. Returns the admin address
    /// of the one that did.
    async fn hand_off_auto(
        self: &Arc<Self>,
        make_before_break: bool,
    ) -> Result<(String, Accepted), String> {
        let match_id = self.status().match_id;
        let store = Arc::clone(&self.store);
        let listed = tokio::task::spawn_blocking(move || store.free_standbys())
            .await
            .map_err(|_| "listing the standbys failed".to_owned())?
            .map_err(|e| format!("cannot list the free standbys: {e}; the match stays here"))?;
        let candidates: Vec<StandbyEntry> = listed
            .into_iter()
            .filter(|s| s.instance != self.config.owner_id && s.takes(&match_id))
            .take(AUTO_CANDIDATES)
            .collect();
        if candidates.is_empty() {
            return Err(format!(
                "no free standby is registered in the store ({}) for match {match_id:?}; the match stays here",
                self.store.info().address
            ));
        }
        let mut failures = Vec::new();
        for standby in candidates {
            tracing::info!(%match_id, standby = %standby.instance, admin = %standby.admin, "handing off to a free standby from the store");
            match crate::transfer::hand_off(self, &standby.admin, make_before_break).await {
                Ok(accepted) => return Ok((standby.admin, accepted)),
                Err(reason) => {
                    tracing::warn!(%match_id, standby = %standby.instance, %reason, "that standby did not take the match");
                    failures.push(format!("{}: {reason}", standby.admin));
                    // Only a match still running here may be offered to the next one.
                    if self.role() != "owner" {
                        break;
                    }
                }
            }
        }
        Err(failures.join("; "))
    }

    /// While this process owns a match: every second, lists the free standbys that would
    /// take it (the store's registry) after the `--peer` ones in its clients' reconnect
    /// tokens (at most [`PEERS_FROM_STORE`] of them), so that after a crash the clients
    /// find whichever standby took the match over, with no `--peer` list to keep.
    pub async fn follow_standbys(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let fixed = self.config.core.tokens.peers.clone();
        let mut last: Option<Vec<SocketAddr>> = None;
        while !*shutdown.borrow() {
            if self.role() == "owner" {
                let match_id = self.status().match_id;
                let store = Arc::clone(&self.store);
                let listed = tokio::task::spawn_blocking(move || store.free_standbys()).await;
                if let Ok(Ok(standbys)) = listed {
                    let mut peers = fixed.clone();
                    for standby in standbys
                        .iter()
                        .filter(|s| s.instance != self.config.owner_id && s.takes(&match_id))
                        .take(PEERS_FROM_STORE)
                    {
                        if !peers.contains(&standby.udp) {
                            peers.push(standby.udp);
                        }
                    }
                    if last.as_ref() != Some(&peers) {
                        tracing::info!(%match_id, peers = ?peers, "standbys listed in reconnect tokens");
                        let _ = self.commands.send(LoopCommand::Peers {
                            peers: peers.clone(),
                        });
                        last = Some(peers);
                    }
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// While this process is a free standby, keeps it in the store's standby registry
    /// (renewed three times per [`crate::store::STANDBY_TTL_MS`]), so that an owner's
    /// `--handoff-to auto` finds it; out of it while it prepares, and for good once it
    /// owns a match or stops.
    pub async fn advertise(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let entry = StandbyEntry {
            instance: self.config.owner_id.clone(),
            admin: self.config.admin.to_string(),
            udp: self.config.core.tokens.own_address,
            watch: self.config.watch.clone(),
        };
        let every = Duration::from_millis(crate::store::STANDBY_TTL_MS / 3);
        let mut last_error = String::new();
        let mut listed = false;
        while !*shutdown.borrow() {
            let role = self.role();
            if role != "standby" && role != "preparing" {
                break;
            }
            // A draining standby leaves the registry: no owner's `auto` picks it.
            let free = role == "standby" && !self.draining();
            let (store, standby) = (Arc::clone(&self.store), entry.clone());
            let done = tokio::task::spawn_blocking(move || {
                if free {
                    store.register_standby(&standby)
                } else {
                    store.remove_standby(&standby.instance)
                }
            })
            .await;
            match done {
                Ok(Ok(())) => {
                    if free && !listed {
                        tracing::info!(store = %self.store.info().address, "registered as a free standby in the store");
                    }
                    listed = free;
                    last_error.clear();
                }
                Ok(Err(error)) => {
                    let text = error.to_string();
                    if text != last_error {
                        tracing::warn!(error = %text, "cannot update this standby's entry in the store");
                        last_error = text;
                    }
                }
                Err(_) => {}
            }
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => {}
            }
        }
        let (store, instance) = (Arc::clone(&self.store), entry.instance);
        let _ = tokio::task::spawn_blocking(move || store.remove_standby(&instance)).await;
    }

    /// Stops waiting for a match (a standby shutting down).
    pub fn stop_waiting(&self) {
        if let Ok(mut start) = self.start_tx.lock() {
            start.take();
        }
    }

    fn begin(&self, start: Start<G>) -> anyhow::Result<()> {
        let sender = self
            .start_tx
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .context("this process already runs a match")?;
        sender.send(start).ok().context("the tick loop has ended")?;
        if let Ok(mut role) = self.role.lock() {
            *role = "owner";
        }
        Ok(())
    }

    /// The ownership of a newly acquired epoch, for a loop that is already running.
    pub(crate) fn ownership(
        &self,
        match_id: &str,
        epoch: u64,
        acquired_at_ms: u64,
        tick: u64,
    ) -> std::io::Result<Ownership> {
        Ownership::start(OwnershipConfig {
            store: Arc::clone(&self.store),
            match_id: match_id.to_owned(),
            owner: self.config.owner_id.clone(),
            epoch,
            lease: self.config.lease,
            snapshot_every: self.config.snapshot_every,
            acquired_at_ms,
            tick,
            clock: self.clock,
        })
    }

    /// Records the role the running match's loop was told to take ("retired" after a
    /// commit, "owner" again after a takeback): a retired process accepts no handoff.
    pub(crate) fn set_role(&self, role: &'static str) {
        if let Ok(mut current) = self.role.lock() {
            *current = role;
        }
    }

    /// A lease for us at `epoch`, expiring a lease length from now (the wall clock).
    pub(crate) fn lease(&self, epoch: u64, tick: u64) -> Lease {
        Lease {
            owner: self.config.owner_id.clone(),
            epoch,
            expires_unix_ms: wall_ms() + self.config.lease.as_millis() as u64,
            tick,
            released: false,
        }
    }

    /// Now on this process's own clock, ms: for its own deadlines (a lease's tick-until,
    /// a prepare's lapse). Stamps other processes compare use [`wall_ms`] instead.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }

    fn core_config(&self, match_id: &str) -> CoreConfig {
        let mut config = self.config.core.clone();
        config.match_id = match_id.to_owned();
        config
    }
}

/// Why a standby did not take a handed-over match.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The snapshot or request is not one we may act on (foreign key, corrupt, another
    /// format, sealed for someone else, stale, replayed).
    #[error("refused: {0}")]
    Refused(String),
    /// We cannot take a match now (already own one, or the store says no).
    #[error("busy: {0}")]
    Busy(String),
}

/// What the tick loop's thread owns.
struct LoopParts<G: Game> {
    config: HostConfig,
    store: Arc<dyn SnapshotStore>,
    clock: Clock,
    heartbeat: Arc<Heartbeat>,
    draining: Arc<std::sync::atomic::AtomicBool>,
    prepare: Arc<PrepareSlot>,
    start: mpsc::UnboundedReceiver<Start<G>>,
    commands: mpsc::UnboundedReceiver<LoopCommand>,
    status_tx: watch::Sender<Status>,
    shutdown: watch::Receiver<bool>,
}

impl<G: Game> LoopParts<G> {
    /// Serves the lobby until a match arrives, then runs it.
    fn run(self, socket: std::net::UdpSocket) -> LoopExit {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(%error, "cannot start the tick loop's runtime");
                return LoopExit::Shutdown;
            }
        };
        runtime.block_on(self.serve(socket))
    }

    async fn serve(mut self, socket: std::net::UdpSocket) -> LoopExit {
        let socket = match tokio::net::UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "cannot register the UDP socket");
                return LoopExit::Shutdown;
            }
        };
        let Some((start, transport)) = lobby::serve(
            &socket,
            &self.config.core.netcode,
            &self.prepare,
            self.clock,
            &mut self.start,
            &mut self.shutdown,
            &self.heartbeat,
        )
        .await
        else {
            return LoopExit::Shutdown;
        };
        let match_id = start.config.match_id.clone();
        let tick_hz = G::config(&start.state.world).tick_hz;
        let tick = G::tick(&start.state.world).0;
        let ownership = match Ownership::start(OwnershipConfig {
            store: self.store,
            match_id,
            owner: self.config.owner_id.clone(),
            epoch: start.epoch,
            lease: self.config.lease,
            snapshot_every: self.config.snapshot_every,
            acquired_at_ms: start.acquired_at_ms,
            tick,
            clock: self.clock,
        }) {
            Ok(ownership) => ownership,
            Err(error) => {
                tracing::error!(%error, "cannot start the snapshot writer");
                return LoopExit::Shutdown;
            }
        };
        let capacity = G::config(&start.state.world).max_players as usize;
        if capacity > transport.num_slots() {
            tracing::warn!(match_id = %start.config.match_id, match_capacity = capacity, slots = transport.num_slots(),
                "this process has fewer slots (--max-players) than the match it runs: it admits only as many players as it has slots");
        }
        let mut core = ServerCore::with_transport(start.config, start.state, transport);
        if start.restored {
            core.mark_restored();
        }
        // The hash the match starts from here: equal to the frozen one after a handoff (the
        // old owner logs it), to the snapshot's after a takeover.
        tracing::info!(
            match_id = core.match_id(),
            game = G::NAME,
            tick,
            world_hash = %format_args!("{:016x}", G::hash(core.world())),
            restored = start.restored,
            "match loaded"
        );
        if let Some(peer) = start.fallback_peer {
            core.add_fallback_peer(peer);
            self.config
                .faults
                .crash_if("standby-dies-before-first-tick");
        }
        self.prepare.clear();
        run_match(
            core,
            socket,
            MatchRun {
                tick_hz,
                status_tx: self.status_tx,
                shutdown: self.shutdown,
                commands: self.commands,
                ownership,
                resumed_from_frozen_at_us: start.frozen_at_us,
                history: start.history,
                clock: self.clock,
                heartbeat: self.heartbeat,
                draining: self.draining,
            },
        )
        .await
    }
}

/// How long [`Host::drain`] waits for the match loop to confirm.
const DRAIN_WAIT: Duration = Duration::from_secs(2);

/// How recently the loop serving the socket must have come round for `/healthz`: six
/// tick periods ([`MAX_CATCH_UP_TICKS`](crate::net::MAX_CATCH_UP_TICKS) + 2; a loop
/// later than its catch-up allowance drops simulated time, so it no longer keeps its
/// rate), and at least three wake-ups of a standby's lobby
/// ([`lobby::LOBBY_PERIOD`]): 150 ms at 60 Hz, 600 ms at 10 Hz.
pub fn health_bound(tick_hz: u32) -> Duration {
    let period = Duration::from_secs_f64(1.0 / f64::from(tick_hz.max(1)));
    (period * (crate::net::MAX_CATCH_UP_TICKS + 2)).max(lobby::LOBBY_PERIOD * 3)
}

/// `--watch any`: a standby that takes over any match of the store's directory whose
/// owner crashed (and receives any handed-over match).
pub const WATCH_ANY: &str = "any";

/// `--handoff-to auto` / `{"to": "auto"}`: a free standby from the store.
pub const AUTO: &str = "auto";

/// Free standbys from the store listed in reconnect tokens, at most (after `--peer`).
pub const PEERS_FROM_STORE: usize = 3;

/// Standbys `auto` offers the match to, at most, before it stays here (each attempt is
/// bounded: see the README's stop bound).
pub const AUTO_CANDIDATES: usize = 2;

/// The address a standby's admin API is reached at, for `--handoff-to` and `/handoff`,
/// or [`AUTO`].
pub fn parse_admin_target(text: &str) -> Result<String, String> {
    if text.trim() == AUTO {
        return Ok(AUTO.to_owned());
    }
    let trimmed = text
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    trimmed
        .parse::<SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|e| {
            format!("expected host:port of a standby's admin API, or \"auto\", got {text:?}: {e}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_allows_the_catch_up_and_a_few_lobby_wake_ups() {
        // 60 Hz: six periods are 100 ms, less than three lobby wake-ups.
        assert_eq!(health_bound(60), Duration::from_millis(150));
        // 10 Hz: six periods.
        assert_eq!(health_bound(10), Duration::from_millis(600));
        // A nonsense rate does not divide by zero.
        assert_eq!(health_bound(0), Duration::from_secs(6));
    }
}
