//! The tokio driver: the socket, the fixed-timestep loop, and shutdown.
//!
//! This is the only code in the server that reads a clock ([`Clock`]) or touches a socket.
//! It runs on one thread that owns the [`ServerCore`], and with it the world.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::core::{MAX_SNAPSHOT_EVERY, ServerCore};
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

/// Runs the match until `shutdown` turns true, then disconnects every client.
pub async fn run_loop(
    mut core: ServerCore,
    socket: std::net::UdpSocket,
    tick_hz: u32,
    status_tx: watch::Sender<Status>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::from_std(socket).context("cannot register the UDP socket")?;
    let clock = Clock::start();
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
    };
    let mut next_tick = clock.now() + period;
    let mut next_status = clock.now();
    tracing::info!(
        match_id = core.match_id(),
        tick_hz,
        listen = %driver.socket.local_addr()?,
        "match running"
    );
    loop {
        tokio::select! {
            biased;
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break;
                }
            }
            ready = driver.socket.readable() => {
                if ready.is_ok() {
                    driver.drain(&mut core);
                }
            }
            () = tokio::time::sleep_until(clock.instant_at(next_tick).into()) => {
                next_tick = driver.run_due_ticks(&mut core, next_tick, period).await;
                if clock.now() >= next_status {
                    let _ = status_tx.send_replace(driver.status(&core, tick_hz));
                    next_status = clock.now() + STATUS_INTERVAL;
                }
            }
        }
    }
    let now = clock.now();
    tracing::info!(
        match_id = core.match_id(),
        tick = core.world().tick().0,
        players = core.num_players(),
        "shutting down: disconnecting players"
    );
    core.disconnect_all(now);
    driver.flush(&mut core).await;
    let _ = status_tx.send_replace(driver.status(&core, tick_hz));
    Ok(())
}

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
}

impl Driver {
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

    fn status(&self, core: &ServerCore, tick_hz: u32) -> Status {
        let stats = core.stats();
        let mut status = Status {
            match_id: core.match_id().to_owned(),
            tick: core.world().tick().0,
            tick_hz,
            players: core.num_players(),
            max_players: core.max_players(),
            tick_overruns: self.tick_overruns,
            ticks_skipped: self.ticks_skipped,
            inputs_applied: stats.inputs_applied,
            inputs_late: stats.inputs_late,
            inputs_dropped: stats.inputs_dropped,
            inputs_skipped: stats.inputs_skipped,
            bad_messages: stats.bad_messages,
            snapshots_sent: stats.snapshots_sent,
            entities_deferred: stats.entities_deferred,
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
