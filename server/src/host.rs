//! The process around a match: which role it plays (owner, standby), starting the tick
//! loop when it gets a match, taking a match over from a dead owner (`--watch`), and
//! receiving one from a live owner (a handoff).

use std::net::SocketAddr;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use arena_shared::netcode::Key;
use arena_shared::snapshot;
use tokio::sync::{mpsc, watch};

use crate::core::{CoreConfig, ServerCore};
use crate::handoff::{self, Accepted};
use crate::net::{Clock, History, LoopCommand, LoopExit, MatchRun, run_match};
use crate::ownership::{Ownership, OwnershipConfig};
use crate::status::Status;
use crate::store::{FileStore, Lease, SnapshotStore, StoreError};

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
}

/// A match for the tick loop to run.
struct Start {
    core: ServerCore,
    epoch: u64,
    lease_valid_until_ms: u64,
    frozen_at_us: Option<u64>,
    history: History,
}

/// Shared by the admin API, the watcher and main.
pub struct Host {
    config: HostConfig,
    store: Arc<dyn SnapshotStore>,
    clock: Clock,
    role: Mutex<&'static str>,
    start_tx: Mutex<Option<std_mpsc::Sender<Start>>>,
    commands: mpsc::UnboundedSender<LoopCommand>,
    /// The latest status as the loop published it (see [`Host::status`]).
    status: watch::Receiver<Status>,
}

/// The tick loop's thread and how main learns that it ended.
pub struct LoopThread {
    /// Resolves when the loop thread ends.
    pub done: tokio::sync::oneshot::Receiver<LoopExit>,
}

impl Host {
    /// Binds nothing: `socket` is the bound game socket, handed to the loop thread, which
    /// waits for a match (at once for an owner, later for a standby).
    pub fn start(
        config: HostConfig,
        data_dir: &std::path::Path,
        socket: std::net::UdpSocket,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<(Arc<Self>, LoopThread)> {
        let store: Arc<dyn SnapshotStore> = Arc::new(FileStore::new(data_dir));
        let (status_tx, status_rx) = watch::channel(Status {
            role: "standby",
            match_id: config.watch.clone().unwrap_or_default(),
            tick_hz: config.core.world.tick_hz,
            max_players: config.core.netcode.max_clients,
            ..Status::default()
        });
        let (start_tx, start_rx) = std_mpsc::channel::<Start>();
        let (commands_tx, commands_rx) = mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let host = Arc::new(Self {
            config: config.clone(),
            store: Arc::clone(&store),
            clock: Clock::start(),
            role: Mutex::new("standby"),
            start_tx: Mutex::new(Some(start_tx)),
            commands: commands_tx,
            status: status_rx,
        });
        std::thread::Builder::new()
            .name("tick-loop".into())
            .spawn(move || {
                let exit = loop_thread(
                    config,
                    store,
                    socket,
                    start_rx,
                    commands_rx,
                    status_tx,
                    shutdown,
                );
                let _ = done_tx.send(exit);
            })
            .context("cannot start the tick loop thread")?;
        Ok((host, LoopThread { done: done_rx }))
    }

    /// This process's role now.
    pub fn role(&self) -> &'static str {
        self.role.lock().map_or("unknown", |r| *r)
    }

    /// The latest status, with the role as of now (the loop reports every half second,
    /// the role changes at once).
    pub fn status(&self) -> Status {
        let mut status = self.status.borrow().clone();
        if status.role == "standby" {
            status.role = self.role();
        }
        status
    }

    /// Bearer token the admin API requires, if any.
    pub fn admin_token(&self) -> Option<&str> {
        self.config.admin_token.as_deref()
    }

    /// Becomes the owner of `match_id`: takes the lease (refused while another owner's is
    /// live), restores the newest snapshot if there is one, and starts ticking.
    pub fn own(&self, match_id: &str) -> anyhow::Result<()> {
        let now_ms = self.now_ms();
        let held = self.store.lease(match_id)?;
        let epoch = held.as_ref().map_or(1, |l| l.epoch + 1);
        let lease = self.lease(epoch, now_ms, held.as_ref().map_or(0, |l| l.tick));
        match self.store.acquire(match_id, &lease, now_ms, false) {
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
        let mut config = self.config.core.clone();
        config.match_id = match_id.to_owned();
        let mut history = History::default();
        let core = match self.store.latest_snapshot(match_id)? {
            Some(bytes) => {
                let (header, state) = snapshot::decode(&bytes, match_id).with_context(|| {
                    format!("the newest snapshot of match {match_id:?} cannot be restored")
                })?;
                let rollback = held.map(|l| l.tick.saturating_sub(header.tick.0));
                tracing::info!(
                    match_id,
                    tick = header.tick.0,
                    epoch,
                    ?rollback,
                    "restored the match from its newest snapshot"
                );
                history.restores = 1;
                history.rollback_ticks = rollback;
                ServerCore::with_state(config, state)
            }
            None => ServerCore::new(config),
        };
        self.begin(Start {
            core,
            epoch,
            lease_valid_until_ms: lease.expires_unix_ms,
            frozen_at_us: None,
            history,
        })
    }

    /// Takes a match handed over by its owner (the body of `POST /match`).
    pub fn receive(
        &self,
        sealed: &[u8],
        frozen_at_us: Option<u64>,
    ) -> Result<Accepted, ReceiveError> {
        if self.role() != "standby" {
            return Err(ReceiveError::Busy(format!(
                "this process is {}, not a standby",
                self.role()
            )));
        }
        let bytes = handoff::open(&self.config.private_key, sealed)
            .map_err(|e| ReceiveError::Refused(e.to_string()))?;
        let header =
            snapshot::read_header(&bytes).map_err(|e| ReceiveError::Refused(e.to_string()))?;
        if let Some(watched) = &self.config.watch
            && *watched != header.match_id
        {
            return Err(ReceiveError::Busy(format!(
                "this standby watches {watched:?}, not {:?}",
                header.match_id
            )));
        }
        let (header, state) = snapshot::decode(&bytes, &header.match_id)
            .map_err(|e| ReceiveError::Refused(e.to_string()))?;
        let epoch = header.epoch + 1;
        let now_ms = self.now_ms();
        let lease = self.lease(epoch, now_ms, header.tick.0);
        self.store
            .acquire(&header.match_id, &lease, now_ms, true)
            .map_err(|e| ReceiveError::Busy(e.to_string()))?;
        let mut config = self.config.core.clone();
        config.match_id.clone_from(&header.match_id);
        tracing::info!(match_id = %header.match_id, tick = header.tick.0, epoch, "received a handed-over match");
        self.begin(Start {
            core: ServerCore::with_state(config, state),
            epoch,
            lease_valid_until_ms: lease.expires_unix_ms,
            frozen_at_us,
            history: History::default(),
        })
        .map_err(|e| ReceiveError::Busy(e.to_string()))?;
        Ok(Accepted {
            udp: self.config.core.tokens.own_address,
            epoch,
            tick: header.tick.0,
        })
    }

    /// As a standby with `--watch`: polls the lease and takes the match over once it
    /// lapses, from its newest snapshot. Returns when this process owns a match or stops.
    pub async fn watch(self: Arc<Self>, match_id: String, mut shutdown: watch::Receiver<bool>) {
        let interval = (self.config.lease / 4).max(Duration::from_millis(20));
        tracing::info!(match_id, "standby watching the match's lease");
        let mut waiting_logged = false;
        while self.role() == "standby" && !*shutdown.borrow() {
            let host = Arc::clone(&self);
            let id = match_id.clone();
            let taken = tokio::task::spawn_blocking(move || host.try_take_over(&id)).await;
            match taken {
                Ok(Ok(true)) => return,
                Ok(Ok(false)) => {}
                Ok(Err(error)) if !waiting_logged => {
                    tracing::info!(match_id, %error, "not taking over yet");
                    waiting_logged = true;
                }
                _ => {}
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// One look at the lease: takes the match if it lapsed. `Ok(true)`: we own it now.
    fn try_take_over(&self, match_id: &str) -> anyhow::Result<bool> {
        let now_ms = self.now_ms();
        let held = self.store.lease(match_id)?;
        if held.as_ref().is_some_and(|l| l.expires_unix_ms > now_ms) {
            return Ok(false);
        }
        let Some(bytes) = self.store.latest_snapshot(match_id)? else {
            bail!("no snapshot of match {match_id:?} in the store yet");
        };
        let (header, state) = snapshot::decode(&bytes, match_id)?;
        let epoch = held
            .as_ref()
            .map_or(header.epoch, |l| l.epoch.max(header.epoch))
            + 1;
        let lease = self.lease(epoch, now_ms, header.tick.0);
        match self.store.acquire(match_id, &lease, now_ms, false) {
            Ok(()) => {}
            Err(StoreError::Held { .. } | StoreError::Fenced { .. }) => return Ok(false),
            Err(error) => return Err(error.into()),
        }
        let rollback = held.map(|l| l.tick.saturating_sub(header.tick.0));
        tracing::warn!(
            match_id,
            epoch,
            snapshot_tick = header.tick.0,
            ?rollback,
            "the owner's lease lapsed: took the match over from its newest snapshot"
        );
        let mut config = self.config.core.clone();
        config.match_id = match_id.to_owned();
        self.begin(Start {
            core: ServerCore::with_state(config, state),
            epoch,
            lease_valid_until_ms: lease.expires_unix_ms,
            frozen_at_us: None,
            history: History {
                restores: 1,
                rollback_ticks: rollback,
                ..History::default()
            },
        })?;
        Ok(true)
    }

    /// Asks the running loop to hand its match to the standby at `to` (admin address).
    pub async fn hand_off(&self, to: String) -> Result<Accepted, String> {
        if self.role() != "owner" {
            return Err(format!("this process is {}, not an owner", self.role()));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.commands
            .send(LoopCommand::HandOff { to, reply })
            .map_err(|_| "the match loop has ended".to_owned())?;
        answer
            .await
            .map_err(|_| "the match loop ended during the handoff".to_owned())?
    }

    /// Stops waiting for a match (a standby shutting down).
    pub fn stop_waiting(&self) {
        if let Ok(mut start) = self.start_tx.lock() {
            start.take();
        }
    }

    fn begin(&self, start: Start) -> anyhow::Result<()> {
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

    fn lease(&self, epoch: u64, now_ms: u64, tick: u64) -> Lease {
        Lease {
            owner: self.config.owner_id.clone(),
            epoch,
            expires_unix_ms: now_ms + self.config.lease.as_millis() as u64,
            tick,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now().as_millis() as u64
    }
}

/// Why a standby did not take a handed-over match.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The snapshot is not one we may restore (foreign key, corrupt, another format).
    #[error("refused: {0}")]
    Refused(String),
    /// We cannot take a match now (already own one, or the store says no).
    #[error("busy: {0}")]
    Busy(String),
}

/// The tick loop thread: waits for a match, then runs it.
fn loop_thread(
    config: HostConfig,
    store: Arc<dyn SnapshotStore>,
    socket: std::net::UdpSocket,
    start_rx: std_mpsc::Receiver<Start>,
    commands: mpsc::UnboundedReceiver<LoopCommand>,
    status_tx: watch::Sender<Status>,
    shutdown: watch::Receiver<bool>,
) -> LoopExit {
    let Ok(start) = start_rx.recv() else {
        return LoopExit::Shutdown;
    };
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
    runtime.block_on(async move {
        let socket = match tokio::net::UdpSocket::from_std(socket) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::error!(%error, "cannot register the UDP socket");
                return LoopExit::Shutdown;
            }
        };
        let match_id = start.core.match_id().to_owned();
        let tick_hz = start.core.world().config().tick_hz;
        let ownership = match Ownership::start(OwnershipConfig {
            store,
            match_id,
            owner: config.owner_id.clone(),
            epoch: start.epoch,
            lease: config.lease,
            snapshot_every: config.snapshot_every,
            valid_until_ms: start.lease_valid_until_ms,
        }) {
            Ok(ownership) => ownership,
            Err(error) => {
                tracing::error!(%error, "cannot start the snapshot writer");
                return LoopExit::Shutdown;
            }
        };
        run_match(
            start.core,
            socket,
            MatchRun {
                tick_hz,
                status_tx,
                shutdown,
                commands,
                ownership,
                resumed_from_frozen_at_us: start.frozen_at_us,
                history: start.history,
                private_key: config.private_key,
                admin_token: config.admin_token.clone(),
            },
        )
        .await
    })
}

/// The address a standby's admin API is reached at, for `--handoff-to` and `/handoff`.
pub fn parse_admin_target(text: &str) -> Result<String, String> {
    let trimmed = text
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    trimmed
        .parse::<SocketAddr>()
        .map(|a| a.to_string())
        .map_err(|e| format!("expected host:port of a standby's admin API, got {text:?}: {e}"))
}
