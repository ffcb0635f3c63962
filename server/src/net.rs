//! The tokio driver: the socket, the fixed-timestep loop, and shutdown.
//!
//! This is the only code in the server that reads a clock ([`Clock`]) or touches a socket.
//! It runs on one thread that owns the [`ServerCore`], and with it the world.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arena_shared::game::Game;
use arena_shared::netcode::Transmit;
use arena_shared::snapshot;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{MAX_SNAPSHOT_EVERY, ServerCore};
use crate::ownership::{Ownership, Standing};
use crate::status::{Sample, Status, Window};
use crate::udp::{BatchedSocket, SEND_BATCH};

/// Ticks the loop may run back to back to catch up before it gives up on the lost time.
pub const MAX_CATCH_UP_TICKS: u32 = 4;
/// Most datagrams one drain reads (give or take one batch): a flood cannot keep the
/// loop from ticking.
const MAX_DATAGRAMS_PER_DRAIN: usize = 100_000;
/// Kernel socket buffer per player slot. At a few hundred clients a default-sized buffer
/// (about 200 KiB) overflows between reads and the kernel drops datagrams silently.
const SOCKET_BUFFER_PER_PLAYER: usize = 8 * 1024;
const MIN_SOCKET_BUFFER: usize = 1 << 20;
/// Load (busy share of each tick period, smoothed) above which snapshots are spaced out.
const SHED_ABOVE: f64 = 0.6;
/// Load the loop should stay under after snapshots are brought closer again.
const RESTORE_BELOW: f64 = 0.4;
/// Least time between two changes of the snapshot spacing.
const SHED_HOLD: Duration = Duration::from_secs(1);
/// How often the loop publishes its status for the admin API.
const STATUS_INTERVAL: Duration = Duration::from_millis(500);

/// Wall time as the driver sees it: unix time at start plus a monotonic elapsed time, so it
/// never goes backwards.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix: Duration,
}

impl Clock {
    /// Reads the clocks once.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Now, as a duration since the unix epoch.
    #[allow(clippy::disallowed_methods)]
    pub fn now(&self) -> Duration {
        self.start_unix + self.start.elapsed()
    }

    /// The monotonic instant for `at` (a value from [`Clock::now`]).
    pub fn instant_at(&self, at: Duration) -> Instant {
        self.start + at.saturating_sub(self.start_unix)
    }
}

/// The machine's wall clock now, unix milliseconds, read afresh: the time stamps other
/// processes compare (lease expiries, a handoff's deadline). Read afresh, a step of the
/// wall clock shifts every process on the machine alike; a time anchored at each
/// process's own start ([`Clock`]) would not.
#[allow(clippy::disallowed_methods)]
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Binds the game's UDP socket with buffers sized for `max_players`.
pub fn bind_udp(addr: SocketAddr, max_players: usize) -> anyhow::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .context("cannot create a UDP socket")?;
    let wanted = (max_players * SOCKET_BUFFER_PER_PLAYER).max(MIN_SOCKET_BUFFER);
    // The kernel caps these at net.core.{r,w}mem_max; we log what we got.
    let _ = socket.set_recv_buffer_size(wanted);
    let _ = socket.set_send_buffer_size(wanted);
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind UDP {addr}"))?;
    socket.set_nonblocking(true)?;
    let got_recv = socket.recv_buffer_size().unwrap_or(0);
    let got_send = socket.send_buffer_size().unwrap_or(0);
    // Linux reports double the size asked for (bookkeeping overhead included).
    if got_recv < wanted {
        tracing::warn!(
            wanted,
            got = got_recv,
            "UDP receive buffer smaller than wanted; raise net.core.rmem_max for large matches"
        );
    }
    tracing::debug!(
        recv_buffer = got_recv,
        send_buffer = got_send,
        "UDP socket buffers"
    );
    Ok(socket.into())
}

/// A request to the running match loop, from the handoff's driver (`transfer`). The
/// loop does what it is told; the decisions (who owns the match) are read from the store
/// by the sender.
#[derive(Debug)]
pub enum LoopCommand {
    /// The match as it stands: id, epoch, tick, connected players.
    Describe {
        /// The answer.
        reply: oneshot::Sender<(String, u64, u64, usize)>,
    },
    /// Phase one: tell every client to connect ahead to the standby at `to` (UDP).
    /// Answers how many clients were told.
    Prepare {
        /// The standby's UDP address.
        to: SocketAddr,
        /// How many clients were told.
        reply: oneshot::Sender<usize>,
    },
    /// The handoff was abandoned before the freeze: stop the prepare tokens.
    CancelPrepare,
    /// Finish the current tick, stop ticking, and answer the match as snapshot bytes.
    Freeze {
        /// The frozen match, or why it could not be encoded (the loop then ticks on).
        reply: oneshot::Sender<Result<Frozen, String>>,
    },
    /// The store says the match is ours at `ownership`'s epoch (a handoff that did not
    /// happen, or a successor that died before serving): tick again from where we froze.
    Resume {
        /// The new epoch's ownership, already acquired; `None`: the current one still
        /// holds (the store could not take a new epoch).
        ownership: Option<Box<Ownership>>,
    },
    /// The store says the successor owns the match: send every client there.
    Commit {
        /// The successor's UDP address.
        to: SocketAddr,
    },
    /// The successor's own snapshot is durable: exit once the clients have left.
    Leave,
    /// Someone else owns the match (neither we nor the standby we chose).
    Lost {
        /// What the store says.
        reason: String,
    },
    /// The standbys to list in reconnect tokens after this server.
    Peers {
        /// Their UDP addresses, in order.
        peers: Vec<SocketAddr>,
    },
    /// Drain: admit no new connection from now on, for the rest of this process's life
    /// (a handoff that comes back does not re-open the doors); connected players stay.
    Drain {
        /// Answered once new connections are refused.
        reply: oneshot::Sender<()>,
    },
}

/// A match frozen for a handoff.
#[derive(Debug, Clone)]
pub struct Frozen {
    /// The match.
    pub match_id: String,
    /// The `MatchSnapshot` at the frozen tick.
    pub bytes: Vec<u8>,
    /// The frozen tick T (the successor ticks T+1).
    pub tick: u64,
    /// The epoch it was owned at.
    pub epoch: u64,
    /// When it froze, unix µs (for the pause figure).
    pub frozen_at_us: u64,
}

/// Why the match loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopExit {
    /// A stop was requested; the final snapshot and the lease's release are done.
    Shutdown,
    /// The match moved to another process and the clients followed (or the wait ended).
    HandedOff,
    /// Another process owns the match now (fenced, or our lease lapsed while paused).
    LostOwnership(String),
}

/// What the loop needs to own a match besides the core and the socket.
pub struct MatchRun {
    /// Ticks per second.
    pub tick_hz: u32,
    /// Where the loop publishes its status.
    pub status_tx: watch::Sender<Status>,
    /// Turns true on shutdown.
    pub shutdown: watch::Receiver<bool>,
    /// Handoff requests.
    pub commands: mpsc::UnboundedReceiver<LoopCommand>,
    /// Snapshots, the lease, and what ownership this process holds.
    pub ownership: Ownership,
    /// When the previous owner froze this match (unix µs), if it was handed to us.
    pub resumed_from_frozen_at_us: Option<u64>,
    /// Figures carried in the status.
    pub history: History,
    /// The process's clock (shared with the ownership's renewer).
    pub clock: Clock,
    /// Beaten each time the loop's timer comes round.
    pub heartbeat: std::sync::Arc<crate::status::Heartbeat>,
    /// Set once the process drains ([`LoopCommand::Drain`]); read when the match starts,
    /// for a drain that came before it.
    pub draining: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Counters that outlive one loop (shown in the status).
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Handoffs this process took part in.
    pub handoffs: u64,
    /// The last handoff's pause, ms (measured by the process that resumed).
    pub handoff_pause_ms: Option<f64>,
    /// Matches restored from the store after a crash.
    pub restores: u64,
    /// Ticks rolled back by the last restore, when known exactly.
    pub rollback_ticks: Option<u64>,
    /// Why `rollback_ticks` is unknown, when it is.
    pub rollback_ticks_reason: Option<String>,
    /// A lower bound of the last restore's rollback when the exact figure is unknown.
    pub rollback_ticks_at_least: Option<u64>,
    /// Snapshots in the store refused at the last restore (corrupt, truncated, foreign).
    pub snapshots_refused: u64,
    /// Handoffs this process began that ended with the match still here.
    pub handoffs_aborted: u64,
    /// Matches taken back after the successor died before serving.
    pub takebacks: u64,
}

/// Where the loop is in a match's life.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Ticking (a prepare may be under way: the clients are connecting ahead).
    Running,
    /// Frozen at a tick for a commit: not ticking, connections kept alive.
    Frozen,
    /// The match was handed over: redirecting clients, keeping the frozen world in case
    /// the successor dies before serving. `leave`: the successor is durable, exit once
    /// the clients have gone.
    Retired { since: Duration, leave: bool },
}

/// Runs the match until shutdown, a handoff, or lost ownership.
pub async fn run_match<G: Game>(
    mut core: ServerCore<G>,
    socket: UdpSocket,
    run: MatchRun,
) -> LoopExit {
    let MatchRun {
        tick_hz,
        status_tx,
        mut shutdown,
        mut commands,
        mut ownership,
        resumed_from_frozen_at_us,
        history,
        clock,
        heartbeat,
        draining,
    } = run;
    let period = Duration::from_secs_f64(1.0 / f64::from(tick_hz));
    let mut driver = Driver {
        clock,
        socket: BatchedSocket::new(socket),
        outgoing: Vec::with_capacity(SEND_BATCH),
        window: Window::new(Duration::from_secs(10)),
        busy: Duration::ZERO,
        socket_errors: 0,
        tick_overruns: 0,
        ticks_skipped: 0,
        started: clock.now(),
        load: 0.0,
        shed_changed_at: clock.now(),
        history,
        snapshot_bytes: 0,
        snapshot_serialize_us: 0,
        snapshots_dropped: 0,
        lapsed: false,
        role: "owner",
        draining: draining.load(std::sync::atomic::Ordering::SeqCst),
    };
    if driver.draining {
        core.set_admitting(false);
    }
    // A match handed to us resumes at once: the pause is the players' to feel.
    let mut next_tick = clock.now();
    let mut next_status = clock.now();
    // The first snapshot goes out at the first tick: a standby always has one to restore.
    let mut next_snapshot = clock.now();
    let mut phase = Phase::Running;
    let mut frozen_at = resumed_from_frozen_at_us;
    tracing::info!(
        match_id = core.match_id(),
        tick = G::tick(core.world()).0,
        epoch = ownership.epoch,
        tick_hz,
        listen = %driver.socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "match running"
    );
    // A stop asked for while frozen waits for the handoff's outcome.
    let mut stop_requested = false;
    let exit = loop {
        tokio::select! {
            biased;
            // Commands first: a handoff's outcome queued just before a stop is acted on.
            Some(command) = commands.recv() => {
                let now = driver.clock.now();
                match command {
                    LoopCommand::Describe { reply } => {
                        let _ = reply.send((core.match_id().to_owned(), ownership.epoch,
                            G::tick(core.world()).0, core.num_players()));
                    }
                    LoopCommand::Prepare { to, reply } => {
                        let told = if phase == Phase::Running { core.prepare_all(now, to) } else { 0 };
                        let _ = reply.send(told);
                    }
                    LoopCommand::CancelPrepare => core.cancel_prepare(),
                    LoopCommand::Freeze { reply } => {
                        let frozen = if phase == Phase::Running {
                            driver.freeze(&core, &ownership)
                        } else {
                            Err(format!("the match is not running here ({phase:?})"))
                        };
                        if frozen.is_ok() {
                            // Nobody joins a world that has already been shipped.
                            core.set_admitting(false);
                            phase = Phase::Frozen;
                        }
                        let _ = reply.send(frozen);
                    }
                    LoopCommand::Resume { ownership: next } => {
                        if let Phase::Retired { .. } = phase {
                            driver.history.takebacks += 1;
                        } else {
                            driver.history.handoffs_aborted += 1;
                        }
                        if let Some(next) = next {
                            // The old epoch's threads end here (joined); the new epoch's run.
                            drop(std::mem::replace(&mut ownership, *next));
                        }
                        tracing::warn!(match_id = core.match_id(), tick = G::tick(core.world()).0,
                            epoch = ownership.epoch, was = ?phase, "the match is ours again: resuming here");
                        core.cancel_prepare();
                        core.cancel_redirects();
                        // A drain outlives the handoff it may have asked for.
                        core.set_admitting(!driver.draining);
                        driver.role = "owner";
                        phase = Phase::Running;
                        next_tick = now;
                        next_snapshot = now;
                    }
                    LoopCommand::Commit { to } => {
                        core.set_admitting(false);
                        core.redirect_all(now, to);
                        driver.flush(&mut core).await;
                        // After the redirects: a snapshot being written must not hold them up.
                        ownership.stop();
                        driver.history.handoffs += 1;
                        driver.role = "retired";
                        phase = Phase::Retired { since: now, leave: false };
                    }
                    LoopCommand::Leave => {
                        if let Phase::Retired { since, .. } = phase {
                            phase = Phase::Retired { since, leave: true };
                        }
                    }
                    LoopCommand::Lost { reason } => break LoopExit::LostOwnership(reason),
                    LoopCommand::Peers { peers } => core.set_peers(peers),
                    LoopCommand::Drain { reply } => {
                        if !driver.draining {
                            tracing::info!(match_id = core.match_id(), tick = G::tick(core.world()).0,
                                players = core.num_players(), "draining: admitting no new connection");
                        }
                        driver.draining = true;
                        core.set_admitting(false);
                        let _ = reply.send(());
                    }
                }
                if stop_requested {
                    match phase {
                        Phase::Running => break LoopExit::Shutdown,
                        Phase::Retired { since, .. } => phase = Phase::Retired { since, leave: true },
                        Phase::Frozen => {}
                    }
                }
            }
            changed = shutdown.changed(), if !stop_requested => {
                if changed.is_err() || *shutdown.borrow() {
                    match phase {
                        Phase::Running => break LoopExit::Shutdown,
                        Phase::Retired { .. } => break LoopExit::HandedOff,
                        // The standby may own the match already: the outcome decides.
                        Phase::Frozen => stop_requested = true,
                    }
                }
            }
            ready = driver.socket.readable() => {
                if ready.is_ok() {
                    driver.drain(&mut core);
                }
            }
            () = tokio::time::sleep_until(clock.instant_at(next_tick).into()) => {
                let now = driver.clock.now();
                heartbeat.beat(now);
                match phase {
                    Phase::Retired { since, leave } => {
                        core.serve_redirects(now);
                        driver.flush(&mut core).await;
                        next_tick = now + period;
                        let waited = now.saturating_sub(since);
                        if leave && (core.num_players() == 0 || waited >= REDIRECT_WAIT) {
                            tracing::info!(match_id = core.match_id(), players_left = core.num_players(), "handoff complete; exiting");
                            break LoopExit::HandedOff;
                        }
                        if waited >= RETIRED_LIMIT {
                            tracing::warn!(match_id = core.match_id(), "the successor never wrote a snapshot we could see; exiting anyway");
                            break LoopExit::HandedOff;
                        }
                    }
                    Phase::Frozen => {
                        // Connections stay alive; inputs wait in their buffers.
                        core.serve_redirects(now);
                        driver.flush(&mut core).await;
                        next_tick = now + period;
                    }
                    Phase::Running => {
                        match ownership.standing(now) {
                            Standing::Owned => {}
                            Standing::Lapsed => {
                                // Paused past our lease, or the store is unreachable: wait for
                                // the renewer, or to learn that a successor took over.
                                if !driver.lapsed {
                                    tracing::warn!(match_id = core.match_id(), epoch = ownership.epoch,
                                        "lease about to lapse: not ticking until it is renewed");
                                    driver.lapsed = true;
                                }
                                core.serve_redirects(now);
                                driver.flush(&mut core).await;
                                next_tick = now + period;
                                if now >= next_status {
                                    let _ = status_tx.send_replace(driver.status(&mut core, tick_hz, &ownership));
                                    next_status = now + STATUS_INTERVAL;
                                }
                                continue;
                            }
                            Standing::Fenced(reason) => {
                                tracing::error!(match_id = core.match_id(), epoch = ownership.epoch, %reason,
                                    "lost ownership of the match: not ticking it, not writing it");
                                break LoopExit::LostOwnership(reason);
                            }
                        }
                        driver.lapsed = false;
                        next_tick = driver.run_due_ticks(&mut core, &ownership, next_tick, period).await;
                        ownership.set_tick(G::tick(core.world()).0);
                        if let Some(frozen) = frozen_at.take() {
                            // From the old owner's freeze after tick T to the end of our tick T+1.
                            let pause_us = (driver.clock.now().as_micros() as u64).saturating_sub(frozen);
                            let pause = pause_us as f64 / 1000.0;
                            driver.history.handoff_pause_ms = Some(pause);
                            driver.history.handoffs += 1;
                            tracing::info!(match_id = core.match_id(), tick = G::tick(core.world()).0, pause_ms = pause,
                                "resumed a handed-over match");
                        }
                        if driver.clock.now() >= next_snapshot {
                            driver.snapshot(&core, &ownership);
                            next_snapshot = driver.clock.now() + ownership.snapshot_every;
                        }
                    }
                }
                if driver.clock.now() >= next_status {
                    let _ = status_tx.send_replace(driver.status(&mut core, tick_hz, &ownership));
                    next_status = driver.clock.now() + STATUS_INTERVAL;
                }
            }
        }
    };
    let mut status = driver.status(&mut core, tick_hz, &ownership);
    if exit == LoopExit::Shutdown {
        driver.stop(&mut core, ownership, period).await;
    } else {
        ownership.stop();
    }
    // The loop and its connections are gone: nobody is listed as connected any more.
    status.clients = std::sync::Arc::default();
    status.role = match exit {
        LoopExit::Shutdown => "stopped",
        LoopExit::HandedOff => "retired",
        LoopExit::LostOwnership(_) => "fenced",
    };
    let _ = status_tx.send_replace(status);
    exit
}

/// How long an old owner keeps redirecting clients, once its successor is durable,
/// before it exits.
pub const REDIRECT_WAIT: Duration = Duration::from_secs(10);
/// The longest an old owner waits for its successor to become durable.
pub const RETIRED_LIMIT: Duration = Duration::from_secs(60);
/// The longest a stopping owner waits for a watching standby to take the released
/// match over, before it disconnects its clients instead of redirecting them.
pub const STOP_SUCCESSOR_WAIT: Duration = Duration::from_millis(1500);
/// The longest a stopping owner keeps redirecting clients to its successor.
pub const STOP_REDIRECT_WAIT: Duration = Duration::from_secs(2);

/// The loop's own state besides the core.
struct Driver {
    clock: Clock,
    /// The game's socket with its reused receive buffers.
    socket: BatchedSocket,
    /// Datagrams taken from the core for the next batched send (capacity [`SEND_BATCH`],
    /// kept: no allocation per flush).
    outgoing: Vec<Transmit>,
    window: Window,
    /// Busy time since the last window sample.
    busy: Duration,
    socket_errors: u64,
    tick_overruns: u64,
    ticks_skipped: u64,
    started: Duration,
    /// Busy share of the tick period, smoothed over about a second.
    load: f64,
    /// When the snapshot spacing last changed.
    shed_changed_at: Duration,
    history: History,
    /// Size of the last snapshot, bytes.
    snapshot_bytes: usize,
    /// Time to serialize the last snapshot on the tick thread, µs.
    snapshot_serialize_us: u64,
    /// Snapshots not written because the writer was still busy.
    snapshots_dropped: u64,
    /// Whether the loop is holding its ticks because the lease is about to lapse.
    lapsed: bool,
    role: &'static str,
    /// Told to drain: new connections stay refused whatever the phase.
    draining: bool,
}

impl Driver {
    /// Freezes the match at its current tick (the loop ticks no more until told) and
    /// returns it as snapshot bytes for the successor.
    fn freeze<G: Game>(
        &mut self,
        core: &ServerCore<G>,
        ownership: &Ownership,
    ) -> Result<Frozen, String> {
        let frozen_at = self.clock.now();
        let bytes = snapshot::encode(core.match_id(), ownership.epoch, &core.match_state())
            .map_err(|e| format!("cannot encode the match: {e}"))?;
        tracing::info!(
            match_id = core.match_id(),
            tick = G::tick(core.world()).0,
            epoch = ownership.epoch,
            snapshot_bytes = bytes.len(),
            world_hash = %format_args!("{:016x}", G::hash(core.world())),
            "frozen for a handoff"
        );
        Ok(Frozen {
            match_id: core.match_id().to_owned(),
            bytes,
            tick: G::tick(core.world()).0,
            epoch: ownership.epoch,
            frozen_at_us: frozen_at.as_micros() as u64,
        })
    }

    /// A stop: the final snapshot at the last tick, durable; the lease released; then
    /// the clients are sent to the standby that took the match over, if one did within
    /// [`STOP_SUCCESSOR_WAIT`], or disconnected.
    async fn stop<G: Game>(
        &mut self,
        core: &mut ServerCore<G>,
        ownership: Ownership,
        period: Duration,
    ) {
        let tick = G::tick(core.world()).0;
        tracing::info!(
            match_id = core.match_id(),
            tick,
            players = core.num_players(),
            "stopping: final snapshot, releasing the lease"
        );
        let last = match snapshot::encode(core.match_id(), ownership.epoch, &core.match_state()) {
            Ok(bytes) => Some((tick, bytes)),
            Err(error) => {
                tracing::error!(match_id = core.match_id(), %error, "cannot encode the final snapshot");
                None
            }
        };
        // Without standbys to send the clients to, there is no successor to wait for.
        let wait = if core.has_peers() {
            STOP_SUCCESSOR_WAIT
        } else {
            Duration::ZERO
        };
        let mut finishing = tokio::task::spawn_blocking(move || ownership.finish(last, wait));
        // Keep the connections alive while the disk works.
        let finished = loop {
            tokio::select! {
                done = &mut finishing => break done.ok(),
                () = tokio::time::sleep(period) => {
                    core.serve_redirects(self.clock.now());
                    self.flush(core).await;
                }
            }
        };
        let Some(finished) = finished else {
            tracing::error!(
                match_id = core.match_id(),
                "the final snapshot's writer failed"
            );
            core.disconnect_all(self.clock.now());
            self.flush(core).await;
            return;
        };
        let durable = finished.last_written_tick == Some(tick);
        tracing::info!(
            match_id = core.match_id(),
            tick,
            final_snapshot_durable = durable,
            lease_released = finished.released,
            successor = finished.successor,
            "stopped the match"
        );
        if !finished.successor {
            core.disconnect_all(self.clock.now());
            self.flush(core).await;
            return;
        }
        // A watching standby owns the match now: send the clients there.
        core.set_admitting(false);
        core.redirect_to_peers(self.clock.now());
        let since = self.clock.now();
        while core.num_players() > 0 && self.clock.now().saturating_sub(since) < STOP_REDIRECT_WAIT
        {
            self.flush(core).await;
            tokio::select! {
                ready = self.socket.readable() => {
                    if ready.is_ok() {
                        self.drain(core);
                    }
                }
                () = tokio::time::sleep(period) => core.serve_redirects(self.clock.now()),
            }
        }
        self.flush(core).await;
    }

    /// Serializes the match on the tick thread and hands the bytes to the writer thread.
    fn snapshot<G: Game>(&mut self, core: &ServerCore<G>, ownership: &Ownership) {
        let start = self.clock.now();
        match snapshot::encode(core.match_id(), ownership.epoch, &core.match_state()) {
            Ok(bytes) => {
                self.snapshot_serialize_us =
                    self.clock.now().saturating_sub(start).as_micros() as u64;
                self.snapshot_bytes = bytes.len();
                if !ownership.submit(G::tick(core.world()).0, bytes) {
                    self.snapshots_dropped += 1;
                    tracing::warn!(
                        match_id = core.match_id(),
                        "snapshot writer busy; this snapshot is skipped"
                    );
                }
            }
            Err(error) => {
                tracing::error!(match_id = core.match_id(), %error, "cannot encode a snapshot")
            }
        }
    }

    /// Spaces snapshots out when the loop is too busy, and back in when it has room.
    ///
    /// Snapshot building and sending is most of each tick's cost; the simulation itself
    /// is a small part. Shedding it keeps the tick rate, so the game never slows down;
    /// players see fewer updates instead (DESIGN: "under load").
    fn shed_load<G: Game>(&mut self, core: &mut ServerCore<G>, busy: Duration, period: Duration) {
        let share = busy.as_secs_f64() / period.as_secs_f64();
        self.load += (share - self.load) * 0.05;
        let now = self.clock.now();
        if now.saturating_sub(self.shed_changed_at) < SHED_HOLD {
            return;
        }
        let every = core.snapshot_every();
        let next = if self.load > SHED_ABOVE && every < MAX_SNAPSHOT_EVERY {
            every + 1
        } else if every > 1 && self.load * f64::from(every) / f64::from(every - 1) < RESTORE_BELOW {
            every - 1
        } else {
            return;
        };
        core.set_snapshot_every(next);
        self.shed_changed_at = now;
        tracing::info!(
            match_id = core.match_id(),
            tick = G::tick(core.world()).0,
            load = format_args!("{:.2}", self.load),
            snapshot_every_ticks = next,
            "snapshot rate changed to keep the tick rate"
        );
    }

    /// Reads every datagram waiting on the socket, a batch per system call.
    fn drain<G: Game>(&mut self, core: &mut ServerCore<G>) {
        let start = self.clock.now();
        let clock = self.clock;
        // Datagrams and errors: bounded, so a flood cannot keep the loop from ticking.
        let mut taken = 0;
        while taken < MAX_DATAGRAMS_PER_DRAIN {
            match self.socket.try_recv_batch(|from, datagram| {
                core.handle_datagram(clock.now(), from, datagram);
            }) {
                Ok(datagrams) => taken += datagrams,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP port-unreachable from a departed client shows up here on Linux.
                    self.socket_errors += 1;
                    taken += 1;
                    tracing::trace!(error = %e, "recv error");
                }
            }
        }
        self.busy += self.clock.now().saturating_sub(start);
    }

    /// Runs the ticks that are due (at most MAX_CATCH_UP_TICKS) and returns when the next
    /// one is due.
    async fn run_due_ticks<G: Game>(
        &mut self,
        core: &mut ServerCore<G>,
        ownership: &Ownership,
        mut next_tick: Duration,
        period: Duration,
    ) -> Duration {
        let mut ran = 0;
        while self.clock.now() >= next_tick && ran < MAX_CATCH_UP_TICKS {
            // Asked before every tick, not once per wake-up: a process paused between two
            // catch-up ticks must not run the rest after its lease has gone.
            if ownership.standing(self.clock.now()) != Standing::Owned {
                // The loop's next wake-up deals with it (holds, or ends on a fence).
                return next_tick;
            }
            // Inputs that arrived since the last wake-up count for this tick.
            self.drain(core);
            let start = self.clock.now();
            core.tick(start);
            let tick_end = self.clock.now();
            let tick_work = tick_end.saturating_sub(start);
            self.flush(core).await;
            self.busy += self.clock.now().saturating_sub(start);
            let stats = core.netcode_stats();
            self.window.push(Sample {
                at: tick_end,
                tick_us: tick_work.as_micros() as u64,
                busy_us: self.busy.as_micros() as u64,
                bytes_in: stats.bytes_received,
                bytes_out: stats.bytes_sent,
                packets_in: stats.packets_received,
                packets_out: stats.packets_sent,
                snapshot_bytes: core.stats().snapshot_bytes,
                entity_updates: core.stats().entity_updates,
                wait_ticks_max: core.wait_ticks_max(),
            });
            let busy = self.busy;
            self.busy = Duration::ZERO;
            self.shed_load(core, busy, period);
            next_tick += period;
            ran += 1;
        }
        let now = self.clock.now();
        if now >= next_tick {
            let behind = now - next_tick;
            let skipped = (behind.as_secs_f64() / period.as_secs_f64()).ceil() as u64;
            self.tick_overruns += 1;
            self.ticks_skipped += skipped;
            tracing::warn!(
                match_id = core.match_id(),
                tick = G::tick(core.world()).0,
                behind_ms = behind.as_millis() as u64,
                skipped,
                "tick loop overrun: dropping lost time instead of spiralling"
            );
            next_tick = now + period;
        }
        next_tick
    }

    /// Sends every queued datagram, [`SEND_BATCH`] at a time, handing each buffer back to
    /// the core for reuse.
    async fn flush<G: Game>(&mut self, core: &mut ServerCore<G>) {
        loop {
            while self.outgoing.len() < SEND_BATCH {
                let Some(transmit) = core.poll_transmit() else {
                    break;
                };
                self.outgoing.push(transmit);
            }
            if self.outgoing.is_empty() {
                return;
            }
            let errors = &mut self.socket_errors;
            self.socket
                .send_batch(&self.outgoing, |e, to| {
                    *errors += 1;
                    tracing::trace!(error = %e, %to, "send error");
                })
                .await;
            for transmit in self.outgoing.drain(..) {
                core.recycle(transmit.contents);
            }
        }
    }

    /// The status to publish, with the clients' report (every [`STATUS_INTERVAL`]: the
    /// per-client figures are gathered here, never per tick).
    fn status<G: Game>(
        &self,
        core: &mut ServerCore<G>,
        tick_hz: u32,
        ownership: &Ownership,
    ) -> Status {
        let clients = std::sync::Arc::new(core.report_clients(self.clock.now()));
        let mut status = Status {
            role: self.role,
            game_name: G::NAME,
            epoch: ownership.epoch,
            last_snapshot_tick: ownership.last_written_tick(),
            snapshot_bytes: self.snapshot_bytes,
            snapshot_serialize_us: self.snapshot_serialize_us,
            snapshots_dropped: self.snapshots_dropped,
            snapshot_write_errors: ownership.snapshot_failures(),
            lease_renewal_errors: ownership.renewal_failures(),
            lease_lapsed: self.lapsed,
            rollback_bound_ticks: Some(
                G::tick(core.world())
                    .0
                    .saturating_sub(ownership.last_written_tick().unwrap_or(0)),
            ),
            snapshots_refused: self.history.snapshots_refused,
            handoffs_aborted: self.history.handoffs_aborted,
            takebacks: self.history.takebacks,
            handoffs: self.history.handoffs,
            handoff_pause_ms: self.history.handoff_pause_ms,
            restores: self.history.restores,
            rollback_ticks: self.history.rollback_ticks,
            rollback_ticks_reason: self.history.rollback_ticks_reason.clone(),
            rollback_ticks_at_least: self.history.rollback_ticks_at_least,
            match_id: core.match_id().to_owned(),
            tick: G::tick(core.world()).0,
            tick_hz,
            players: core.num_players(),
            max_players: core.max_players(),
            tick_overruns: self.tick_overruns,
            ticks_skipped: self.ticks_skipped,
            game: core.stats().clone(),
            socket_errors: self.socket_errors,
            snapshot_every_ticks: core.snapshot_every(),
            load: self.load,
            drops: core
                .netcode_stats()
                .drop_counts()
                .map(|(reason, n)| (reason.name(), n))
                .collect(),
            uptime_s: self.clock.now().saturating_sub(self.started).as_secs_f64(),
            draining: self.draining,
            clients,
            ..Status::default()
        };
        self.window.fill(&mut status);
        status
    }
}
