//! The tokio driver: the socket, the fixed-timestep loop, and shutdown.
//!
//! This is the only code in the server that reads a clock ([`Clock`]) or touches a socket.
//! It runs on one thread that owns the [`ServerCore`], and with it the world.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use arena_shared::snapshot;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{MAX_SNAPSHOT_EVERY, ServerCore};
use crate::handoff::Accepted;
use crate::ownership::{Ownership, Standing};
use crate::status::{Sample, Status, Window};

/// Ticks the loop may run back to back to catch up before it gives up on the lost time.
pub const MAX_CATCH_UP_TICKS: u32 = 4;
/// Biggest datagram we read; netcode's largest is 1225 bytes.
const RECV_BUFFER_BYTES: usize = 2048;
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

/// A request to the running match loop.
#[derive(Debug)]
pub enum LoopCommand {
    /// Hand the match to the standby whose admin API is at `to` (`host:port`).
    HandOff {
        /// The standby's admin API.
        to: String,
        /// The outcome: the standby's UDP address, or why the handoff failed.
        reply: oneshot::Sender<Result<Accepted, String>>,
    },
}

/// Why the match loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopExit {
    /// Shutdown was requested; clients were disconnected.
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
    /// The fleet key, to seal snapshots for handoffs.
    pub private_key: arena_shared::netcode::Key,
    /// Bearer token for the standby's admin API.
    pub admin_token: Option<String>,
}

/// Counters that outlive one loop (shown in the status).
#[derive(Debug, Clone, Copy, Default)]
pub struct History {
    /// Handoffs this process took part in.
    pub handoffs: u64,
    /// The last handoff's pause, ms (measured by the process that resumed).
    pub handoff_pause_ms: Option<f64>,
    /// Matches restored from the store after a crash.
    pub restores: u64,
    /// Ticks lost in the last restore (old owner's last reported tick minus the snapshot's).
    pub rollback_ticks: Option<u64>,
}

/// Runs the match until shutdown, a handoff, or lost ownership.
pub async fn run_match(mut core: ServerCore, socket: UdpSocket, mut run: MatchRun) -> LoopExit {
    let clock = Clock::start();
    let tick_hz = run.tick_hz;
    let period = Duration::from_secs_f64(1.0 / f64::from(tick_hz));
    let mut driver = Driver {
        clock,
        socket,
        buf: vec![0u8; RECV_BUFFER_BYTES],
        window: Window::new(Duration::from_secs(10)),
        busy: Duration::ZERO,
        socket_errors: 0,
        tick_overruns: 0,
        ticks_skipped: 0,
        started: clock.now(),
        load: 0.0,
        shed_changed_at: clock.now(),
        history: run.history,
        snapshot_bytes: 0,
        snapshot_serialize_us: 0,
        snapshots_dropped: 0,
        role: "owner",
    };
    // A match handed to us resumes at once: the pause is the players' to feel.
    let mut next_tick = clock.now();
    let mut next_status = clock.now();
    // The first snapshot goes out at the first tick: a standby always has one to restore.
    let mut next_snapshot = clock.now();
    let mut redirecting_since: Option<Duration> = None;
    let mut frozen_at = run.resumed_from_frozen_at_us;
    let mut lapsed_logged = false;
    tracing::info!(
        match_id = core.match_id(),
        tick = core.world().tick().0,
        epoch = run.ownership.epoch,
        tick_hz,
        listen = %driver.socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        "match running"
    );
    let exit = loop {
        tokio::select! {
            biased;
            changed = run.shutdown.changed() => {
                if changed.is_err() || *run.shutdown.borrow() {
                    break LoopExit::Shutdown;
                }
            }
            Some(command) = run.commands.recv(), if redirecting_since.is_none() => {
                let LoopCommand::HandOff { to, reply } = command;
                match driver.hand_off(&mut core, &run, &to).await {
                    Ok(accepted) => {
                        run.ownership.stop();
                        core.redirect_all(driver.clock.now(), accepted.udp);
                        driver.flush(&mut core).await;
                        driver.history.handoffs += 1;
                        driver.role = "retired";
                        redirecting_since = Some(driver.clock.now());
                        let _ = reply.send(Ok(accepted));
                    }
                    Err(error) => {
                        tracing::error!(match_id = core.match_id(), %error, "handoff failed; resuming the match here");
                        next_tick = driver.clock.now();
                        let _ = reply.send(Err(format!("{error:#}")));
                    }
                }
            }
            ready = driver.socket.readable() => {
                if ready.is_ok() {
                    driver.drain(&mut core);
                }
            }
            () = tokio::time::sleep_until(clock.instant_at(next_tick).into()) => {
                if let Some(since) = redirecting_since {
                    let now = driver.clock.now();
                    core.serve_redirects(now);
                    driver.flush(&mut core).await;
                    next_tick = now + period;
                    if core.num_players() == 0 || now.saturating_sub(since) >= REDIRECT_WAIT {
                        tracing::info!(match_id = core.match_id(), players_left = core.num_players(), "handoff complete; exiting");
                        break LoopExit::HandedOff;
                    }
                } else {
                    match run.ownership.standing(driver.clock.now()) {
                        Standing::Owned => {}
                        Standing::Lapsed => {
                            // Paused past our lease, or the store is unreachable: wait for
                            // the writer to renew, or to learn that a successor took over.
                            if !lapsed_logged {
                                tracing::warn!(match_id = core.match_id(), epoch = run.ownership.epoch,
                                    "lease lapsed: not ticking until it is renewed");
                                lapsed_logged = true;
                            }
                            next_tick = driver.clock.now() + period;
                            continue;
                        }
                        Standing::Fenced(reason) => {
                            tracing::error!(match_id = core.match_id(), epoch = run.ownership.epoch, %reason,
                                "lost ownership of the match: not ticking it, not writing it");
                            break LoopExit::LostOwnership(reason);
                        }
                    }
                    lapsed_logged = false;
                    next_tick = driver.run_due_ticks(&mut core, next_tick, period).await;
                    run.ownership.set_tick(core.world().tick().0);
                    if let Some(frozen) = frozen_at.take() {
                        // From the old owner's freeze after tick T to the end of our tick T+1.
                        let pause_us = (driver.clock.now().as_micros() as u64).saturating_sub(frozen);
                        let pause = pause_us as f64 / 1000.0;
                        driver.history.handoff_pause_ms = Some(pause);
                        driver.history.handoffs += 1;
                        tracing::info!(match_id = core.match_id(), tick = core.world().tick().0, pause_ms = pause,
                            "resumed a handed-over match");
                    }
                    if driver.clock.now() >= next_snapshot {
                        driver.snapshot(&core, &run.ownership);
                        next_snapshot = driver.clock.now() + run.ownership.snapshot_every;
                    }
                }
                if driver.clock.now() >= next_status {
                    let _ = run.status_tx.send_replace(driver.status(&core, tick_hz, &run.ownership));
                    next_status = driver.clock.now() + STATUS_INTERVAL;
                }
            }
        }
    };
    if exit == LoopExit::Shutdown {
        let now = clock.now();
        tracing::info!(
            match_id = core.match_id(),
            tick = core.world().tick().0,
            players = core.num_players(),
            "shutting down: final snapshot, disconnecting players"
        );
        driver.snapshot(&core, &run.ownership);
        core.disconnect_all(now);
        driver.flush(&mut core).await;
    }
    run.ownership.stop();
    let mut status = driver.status(&core, tick_hz, &run.ownership);
    status.role = match exit {
        LoopExit::Shutdown => "stopped",
        LoopExit::HandedOff => "retired",
        LoopExit::LostOwnership(_) => "fenced",
    };
    let _ = run.status_tx.send_replace(status);
    exit
}

/// How long an old owner keeps redirecting clients after a handoff before it exits.
pub const REDIRECT_WAIT: Duration = Duration::from_secs(10);

/// The loop's own state besides the core.
struct Driver {
    clock: Clock,
    socket: UdpSocket,
    /// Receive buffer, reused.
    buf: Vec<u8>,
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
    role: &'static str,
}

impl Driver {
    /// Serializes the match on the tick thread and hands the bytes to the writer thread.
    fn snapshot(&mut self, core: &ServerCore, ownership: &Ownership) {
        let start = self.clock.now();
        match snapshot::encode(core.match_id(), ownership.epoch, &core.match_state()) {
            Ok(bytes) => {
                self.snapshot_serialize_us =
                    self.clock.now().saturating_sub(start).as_micros() as u64;
                self.snapshot_bytes = bytes.len();
                if !ownership.submit(core.world().tick().0, bytes) {
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

    /// Freezes the match, seals it, and gives it to the standby at `to`.
    async fn hand_off(
        &mut self,
        core: &mut ServerCore,
        run: &MatchRun,
        to: &str,
    ) -> anyhow::Result<Accepted> {
        let frozen_at = self.clock.now();
        let bytes = snapshot::encode(core.match_id(), run.ownership.epoch, &core.match_state())?;
        tracing::info!(
            match_id = core.match_id(),
            tick = core.world().tick().0,
            epoch = run.ownership.epoch,
            %to,
            snapshot_bytes = bytes.len(),
            "handing the match off"
        );
        let sealed = crate::handoff::seal(&run.private_key, &bytes);
        let accepted = crate::handoff::send_to_standby(
            to,
            run.admin_token.as_deref(),
            sealed,
            frozen_at.as_micros() as u64,
        )
        .await?;
        tracing::info!(
            match_id = core.match_id(),
            udp = %accepted.udp,
            epoch = accepted.epoch,
            "standby took the match; redirecting players"
        );
        Ok(accepted)
    }

    /// Spaces snapshots out when the loop is too busy, and back in when it has room.
    ///
    /// Snapshot building and sending is most of each tick's cost; the simulation itself
    /// is a small part. Shedding it keeps the tick rate, so the game never slows down;
    /// players see fewer updates instead (DESIGN: "under load").
    fn shed_load(&mut self, core: &mut ServerCore, busy: Duration, period: Duration) {
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
            tick = core.world().tick().0,
            load = format_args!("{:.2}", self.load),
            snapshot_every_ticks = next,
            "snapshot rate changed to keep the tick rate"
        );
    }

    /// Reads every datagram waiting on the socket.
    fn drain(&mut self, core: &mut ServerCore) {
        let start = self.clock.now();
        // Bounded: a flood cannot keep the loop from ticking.
        for _ in 0..100_000 {
            match self.socket.try_recv_from(&mut self.buf) {
                Ok((len, from)) => {
                    let now = self.clock.now();
                    core.handle_datagram(now, from, &mut self.buf[..len]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP port-unreachable from a departed client shows up here on Linux.
                    self.socket_errors += 1;
                    tracing::trace!(error = %e, "recv error");
                }
            }
        }
        self.busy += self.clock.now().saturating_sub(start);
    }

    /// Runs the ticks that are due (at most MAX_CATCH_UP_TICKS) and returns when the next
    /// one is due.
    async fn run_due_ticks(
        &mut self,
        core: &mut ServerCore,
        mut next_tick: Duration,
        period: Duration,
    ) -> Duration {
        let mut ran = 0;
        while self.clock.now() >= next_tick && ran < MAX_CATCH_UP_TICKS {
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
                tick = core.world().tick().0,
                behind_ms = behind.as_millis() as u64,
                skipped,
                "tick loop overrun: dropping lost time instead of spiralling"
            );
            next_tick = now + period;
        }
        next_tick
    }

    /// Sends every queued datagram.
    async fn flush(&mut self, core: &mut ServerCore) {
        while let Some(transmit) = core.poll_transmit() {
            if let Err(e) = self
                .socket
                .send_to(&transmit.contents, transmit.destination)
                .await
            {
                self.socket_errors += 1;
                tracing::trace!(error = %e, to = %transmit.destination, "send error");
            }
        }
    }

    fn status(&self, core: &ServerCore, tick_hz: u32, ownership: &Ownership) -> Status {
        let mut status = Status {
            role: self.role,
            epoch: ownership.epoch,
            last_snapshot_tick: ownership.last_written_tick(),
            snapshot_bytes: self.snapshot_bytes,
            snapshot_serialize_us: self.snapshot_serialize_us,
            snapshots_dropped: self.snapshots_dropped,
            snapshot_write_errors: ownership.write_errors(),
            handoffs: self.history.handoffs,
            handoff_pause_ms: self.history.handoff_pause_ms,
            restores: self.history.restores,
            rollback_ticks: self.history.rollback_ticks,
            match_id: core.match_id().to_owned(),
            tick: core.world().tick().0,
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
            ..Status::default()
        };
        self.window.fill(&mut status);
        status
    }
}
