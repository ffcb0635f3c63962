//! The figures the tick loop publishes for operators (`/status`, `/metrics`).
//!
//! The loop owns the world; the admin API never touches it. Every half second the loop
//! fills a [`Status`] and sends it over a `watch` channel, and the API serves the latest.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use serde::Serialize;

use crate::core::CoreStats;

/// The status of the match and the process, as served by `GET /status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    /// "owner" (ticking a match), "standby" (waiting for one), "preparing" (a standby
    /// admitting a match's clients ahead of a handoff), "starting" (it took a match and
    /// its loop has not reported yet), "retired" (handed its match over), "fenced" (a
    /// successor took its match), "stopped".
    pub role: &'static str,
    /// The game this process serves (`Game::NAME`: `"arena"` for the shooter, `"tag"`...).
    #[serde(rename = "game")]
    pub game_name: &'static str,
    /// Which store holds the match: `"file"` or `"redis"`.
    pub store: &'static str,
    /// The store's address: the data dir, or `redis://host:port/db` (never a password).
    pub store_address: String,
    /// Why the store's latest call failed (Redis down or unreachable), if it did: an owner
    /// holds its clients without ticking until the store answers again.
    pub store_error: Option<String>,
    /// The match this process owns (or watches).
    pub match_id: String,
    /// Ownership epoch (0 for a standby).
    pub epoch: u64,
    /// Tick of the newest snapshot written to the store.
    pub last_snapshot_tick: Option<u64>,
    /// Size of the newest snapshot, bytes.
    pub snapshot_bytes: usize,
    /// Time to serialize it on the tick thread, µs.
    pub snapshot_serialize_us: u64,
    /// Snapshots skipped because the writer was busy.
    pub snapshots_dropped: u64,
    /// Snapshot writes that failed (a full or failing disk); the match keeps running.
    pub snapshot_write_errors: u64,
    /// Lease renewals that failed (the store unreachable) in the current epoch.
    pub lease_renewal_errors: u64,
    /// Whether the loop is holding its ticks because its lease is about to lapse.
    pub lease_lapsed: bool,
    /// What a crash now would roll back: ticks since the newest snapshot written (the
    /// whole match if none is).
    pub rollback_bound_ticks: Option<u64>,
    /// Snapshots in the store that the last restore refused (corrupt, truncated, foreign).
    pub snapshots_refused: u64,
    /// Handoffs begun here that ended with the match still here.
    pub handoffs_aborted: u64,
    /// Matches taken back after the successor died before serving.
    pub takebacks: u64,
    /// Handoffs this process took part in (given or received).
    pub handoffs: u64,
    /// The last handoff's pause (old owner's freeze to our first tick), ms.
    pub handoff_pause_ms: Option<f64>,
    /// Matches restored from the store after an owner died.
    pub restores: u64,
    /// Ticks rolled back by the last restore: exact (0 after a stop that released the
    /// lease), or null with `rollback_ticks_reason`.
    pub rollback_ticks: Option<u64>,
    /// Why `rollback_ticks` is null after a restore.
    pub rollback_ticks_reason: Option<String>,
    /// A lower bound of the rollback when the exact figure is unknown (the dead owner's
    /// tick at its last lease renewal, minus the snapshot's).
    pub rollback_ticks_at_least: Option<u64>,
    /// Clients connected ahead to this standby for a handoff being prepared.
    pub prepared_clients: usize,
    /// The last tick simulated.
    pub tick: u64,
    /// Ticks per second.
    pub tick_hz: u32,
    /// Connected players.
    pub players: usize,
    /// Player capacity.
    pub max_players: usize,
    /// Tick work (inputs, step, building, encoding and sealing every packet; socket calls
    /// excluded), microseconds, median over the last 10 s.
    pub tick_us_p50: u64,
    /// Same, 99th percentile.
    pub tick_us_p99: u64,
    /// Same, maximum.
    pub tick_us_max: u64,
    /// Share of wall time the loop thread was busy (tick work and socket calls), last 10 s.
    pub loop_utilization: f64,
    /// UDP payload bytes received per second (last 10 s).
    pub bytes_in_per_s: f64,
    /// UDP payload bytes sent per second (last 10 s).
    pub bytes_out_per_s: f64,
    /// Datagrams received per second (last 10 s).
    pub packets_in_per_s: f64,
    /// Datagrams sent per second (last 10 s).
    pub packets_out_per_s: f64,
    /// Snapshot bytes sent per second, all clients (last 10 s).
    pub snapshot_bytes_per_s: f64,
    /// Entities in view that snapshots brought up to date per second (sent, or unchanged
    /// since the baseline), summed over clients (last 10 s). `snapshot_bytes_per_s`
    /// over this is the bytes per entity update.
    pub entity_updates_per_s: f64,
    /// The longest any entity in any client's view waited for an update, in ticks (last
    /// 10 s): the priorities starve nothing as long as this stays small.
    pub entity_wait_ticks_max: u32,
    /// Times the loop fell behind by more than its catch-up allowance.
    pub tick_overruns: u64,
    /// Ticks not simulated because of overruns (the simulation slows, never spirals).
    pub ticks_skipped: u64,
    /// Inputs, snapshots and game events, as the core counts them (flattened into the JSON:
    /// `inputs_applied`, `inputs_late`, `inputs_dropped`, `inputs_skipped`, `bad_messages`,
    /// `snapshots_sent`, `snapshots_full`, `snapshots_throttled`, `snapshot_bytes`,
    /// `entity_updates`, `entities_deferred`, `game_events`, `events_queued`, `events_dropped`).
    #[serde(flatten)]
    pub game: CoreStats,
    /// Socket errors on receive or send.
    pub socket_errors: u64,
    /// Ticks between a client's snapshots: 1 normally, more while shedding load.
    pub snapshot_every_ticks: u32,
    /// Busy share of each tick period, smoothed (what load shedding acts on).
    pub load: f64,
    /// Datagrams dropped by the transport, by reason (every reason listed, zeros too).
    pub drops: BTreeMap<&'static str, u64>,
    /// Seconds since the process started serving.
    pub uptime_s: f64,
}

/// Per-tick figures over a sliding window, for percentiles and rates.
#[derive(Debug)]
pub struct Window {
    span: Duration,
    /// (end of tick, tick work µs, busy µs, bytes in, bytes out, packets in, packets out)
    samples: VecDeque<Sample>,
}

/// One tick's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// When the tick ended (driver time).
    pub at: Duration,
    /// Tick work, µs.
    pub tick_us: u64,
    /// Busy time since the previous sample (tick work and socket calls), µs.
    pub busy_us: u64,
    /// Totals at this point (cumulative counters).
    pub bytes_in: u64,
    /// Cumulative bytes out.
    pub bytes_out: u64,
    /// Cumulative datagrams in.
    pub packets_in: u64,
    /// Cumulative datagrams out.
    pub packets_out: u64,
    /// Cumulative snapshot bytes.
    pub snapshot_bytes: u64,
    /// Cumulative entity updates.
    pub entity_updates: u64,
    /// The longest an entity in view waited, over this tick's snapshots, ticks.
    pub wait_ticks_max: u32,
}

impl Window {
    /// A window over the last `span`.
    pub fn new(span: Duration) -> Self {
        Self {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Adds a tick's figures and forgets those older than the span.
    pub fn push(&mut self, sample: Sample) {
        self.samples.push_back(sample);
        while let Some(front) = self.samples.front() {
            if sample.at.saturating_sub(front.at) > self.span {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Fills the windowed fields of `status`.
    pub fn fill(&self, status: &mut Status) {
        let mut ticks: Vec<u64> = self.samples.iter().map(|s| s.tick_us).collect();
        ticks.sort_unstable();
        let pick = |q: f64| -> u64 {
            if ticks.is_empty() {
                return 0;
            }
            let i = ((ticks.len() - 1) as f64 * q).round() as usize;
            ticks[i]
        };
        status.tick_us_p50 = pick(0.5);
        status.tick_us_p99 = pick(0.99);
        status.tick_us_max = ticks.last().copied().unwrap_or(0);
        status.entity_wait_ticks_max = self
            .samples
            .iter()
            .map(|s| s.wait_ticks_max)
            .max()
            .unwrap_or(0);
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return;
        };
        let seconds = last.at.saturating_sub(first.at).as_secs_f64();
        if seconds <= 0.0 {
            return;
        }
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / seconds;
        status.bytes_in_per_s = rate(first.bytes_in, last.bytes_in);
        status.bytes_out_per_s = rate(first.bytes_out, last.bytes_out);
        status.packets_in_per_s = rate(first.packets_in, last.packets_in);
        status.packets_out_per_s = rate(first.packets_out, last.packets_out);
        status.snapshot_bytes_per_s = rate(first.snapshot_bytes, last.snapshot_bytes);
        status.entity_updates_per_s = rate(first.entity_updates, last.entity_updates);
        let busy: u64 = self.samples.iter().skip(1).map(|s| s.busy_us).sum();
        status.loop_utilization = busy as f64 / 1e6 / seconds;
    }
}

/// `status` in Prometheus text format.
pub fn prometheus(status: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let label = format!(
        "match_id=\"{}\"",
        status.match_id.replace(['"', '\\', '\n'], "_")
    );
    let mut metric = |kind: &str, name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP arena_{name} {help}");
        let _ = writeln!(out, "# TYPE arena_{name} {kind}");
        let _ = writeln!(out, "arena_{name}{{{label}}} {value}");
    };
    // Ownership: what an operator alerts on ("no owner", "a rollback happened", "snapshots
    // are not being written").
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    metric(
        "gauge",
        "owner",
        "1 while this process owns the match.",
        flag(status.role == "owner"),
    );
    metric("gauge", "epoch", "Ownership epoch.", status.epoch as f64);
    metric(
        "gauge",
        "lease_lapsed",
        "1 while the loop holds its ticks: the lease could not be renewed.",
        flag(status.lease_lapsed),
    );
    metric(
        "gauge",
        "store_unavailable",
        "1 while the store's latest call failed (Redis down or unreachable).",
        flag(status.store_error.is_some()),
    );
    metric(
        "gauge",
        "rollback_bound_ticks",
        "Ticks a crash now would roll back.",
        status.rollback_bound_ticks.unwrap_or(0) as f64,
    );
    metric(
        "counter",
        "snapshot_write_errors_total",
        "Snapshot writes that failed.",
        status.snapshot_write_errors as f64,
    );
    metric(
        "counter",
        "lease_renewal_errors_total",
        "Lease renewals that failed in this epoch.",
        status.lease_renewal_errors as f64,
    );
    metric(
        "counter",
        "snapshots_refused_total",
        "Stored snapshots a restore refused.",
        status.snapshots_refused as f64,
    );
    metric(
        "counter",
        "restores_total",
        "Matches restored after an owner died.",
        status.restores as f64,
    );
    metric(
        "counter",
        "handoffs_total",
        "Handoffs given or received.",
        status.handoffs as f64,
    );
    metric(
        "counter",
        "handoffs_aborted_total",
        "Handoffs begun here that left the match here.",
        status.handoffs_aborted as f64,
    );
    metric(
        "counter",
        "takebacks_total",
        "Matches taken back after the successor died before serving.",
        status.takebacks as f64,
    );
    let mut gauge = |name: &str, help: &str, value: f64| metric("gauge", name, help, value);
    gauge("tick", "Last tick simulated.", status.tick as f64);
    gauge("tick_hz", "Ticks per second.", f64::from(status.tick_hz));
    gauge("players", "Connected players.", status.players as f64);
    gauge("max_players", "Player capacity.", status.max_players as f64);
    gauge(
        "tick_us_p50",
        "Tick work, microseconds, median over 10 s.",
        status.tick_us_p50 as f64,
    );
    gauge(
        "tick_us_p99",
        "Tick work, microseconds, p99 over 10 s.",
        status.tick_us_p99 as f64,
    );
    gauge(
        "tick_us_max",
        "Tick work, microseconds, max over 10 s.",
        status.tick_us_max as f64,
    );
    gauge(
        "loop_utilization",
        "Share of wall time the loop was busy.",
        status.loop_utilization,
    );
    gauge(
        "bytes_in_per_s",
        "UDP payload bytes received per second.",
        status.bytes_in_per_s,
    );
    gauge(
        "bytes_out_per_s",
        "UDP payload bytes sent per second.",
        status.bytes_out_per_s,
    );
    gauge(
        "packets_in_per_s",
        "Datagrams received per second.",
        status.packets_in_per_s,
    );
    gauge(
        "packets_out_per_s",
        "Datagrams sent per second.",
        status.packets_out_per_s,
    );
    gauge(
        "snapshot_bytes_per_s",
        "Snapshot bytes sent per second, all clients.",
        status.snapshot_bytes_per_s,
    );
    gauge(
        "entity_updates_per_s",
        "Entities in view that snapshots brought up to date per second, all clients.",
        status.entity_updates_per_s,
    );
    gauge(
        "entity_wait_ticks_max",
        "Longest an entity in a client's view waited for an update, ticks (last 10 s).",
        f64::from(status.entity_wait_ticks_max),
    );
    gauge(
        "tick_overruns_total",
        "Times the loop fell behind its catch-up allowance.",
        status.tick_overruns as f64,
    );
    gauge(
        "ticks_skipped_total",
        "Ticks not simulated because of overruns.",
        status.ticks_skipped as f64,
    );
    gauge(
        "inputs_applied_total",
        "Input frames applied.",
        status.game.inputs_applied as f64,
    );
    gauge(
        "inputs_late_total",
        "Input frames applied after their tick.",
        status.game.inputs_late as f64,
    );
    gauge(
        "inputs_dropped_total",
        "Input frames dropped: client buffer full.",
        status.game.inputs_dropped as f64,
    );
    gauge(
        "inputs_skipped_total",
        "Input frames clients gave up on.",
        status.game.inputs_skipped as f64,
    );
    gauge(
        "bad_messages_total",
        "Payloads that were not a valid game message.",
        status.game.bad_messages as f64,
    );
    gauge(
        "snapshots_sent_total",
        "Snapshots sent.",
        status.game.snapshots_sent as f64,
    );
    gauge(
        "entities_deferred_total",
        "Entities in view that did not fit.",
        status.game.entities_deferred as f64,
    );
    gauge(
        "socket_errors_total",
        "Socket errors.",
        status.socket_errors as f64,
    );
    gauge(
        "uptime_seconds",
        "Seconds since serving started.",
        status.uptime_s,
    );
    let _ = writeln!(
        out,
        "# HELP arena_drops_total Datagrams dropped by the transport, by reason."
    );
    let _ = writeln!(out, "# TYPE arena_drops_total counter");
    for (reason, count) in &status.drops {
        let _ = writeln!(
            out,
            "arena_drops_total{{{label},reason=\"{reason}\"}} {count}"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_gives_percentiles_and_rates() {
        let mut window = Window::new(Duration::from_secs(10));
        for i in 0..=100u64 {
            window.push(Sample {
                at: Duration::from_millis(i * 100),
                tick_us: i,
                busy_us: 50_000,
                bytes_in: i * 1000,
                bytes_out: i * 2000,
                packets_in: i,
                packets_out: i * 2,
                snapshot_bytes: i * 1500,
                entity_updates: i * 500,
                wait_ticks_max: (i % 7) as u32,
            });
        }
        let mut status = Status::default();
        window.fill(&mut status);
        assert_eq!(status.tick_us_p50, 50);
        assert_eq!(status.tick_us_p99, 99);
        assert_eq!(status.tick_us_max, 100);
        assert!((status.bytes_in_per_s - 10_000.0).abs() < 1e-6);
        assert!((status.bytes_out_per_s - 20_000.0).abs() < 1e-6);
        assert!((status.loop_utilization - 0.5).abs() < 1e-6);
        assert!((status.snapshot_bytes_per_s - 15_000.0).abs() < 1e-6);
        assert!((status.entity_updates_per_s - 5_000.0).abs() < 1e-6);
        assert_eq!(status.entity_wait_ticks_max, 6);
        // Older samples leave the window.
        window.push(Sample {
            at: Duration::from_secs(30),
            ..Sample::default()
        });
        let mut status = Status::default();
        window.fill(&mut status);
        assert_eq!(status.tick_us_max, 0);
    }

    #[test]
    fn prometheus_lists_every_drop_reason() {
        let mut status = Status {
            match_id: "m\"1".into(),
            ..Status::default()
        };
        status.drops.insert("replayed", 3);
        let text = prometheus(&status);
        assert!(text.contains("arena_drops_total{match_id=\"m_1\",reason=\"replayed\"} 3"));
        assert!(text.contains("arena_tick_us_p99{match_id=\"m_1\"} 0"));
    }

    #[test]
    fn prometheus_shows_who_owns_the_match_and_what_a_crash_would_cost() {
        let status = Status {
            match_id: "m".into(),
            role: "owner",
            epoch: 4,
            rollback_bound_ticks: Some(75),
            takebacks: 1,
            ..Status::default()
        };
        let text = prometheus(&status);
        assert!(text.contains("arena_owner{match_id=\"m\"} 1"), "{text}");
        assert!(text.contains("arena_epoch{match_id=\"m\"} 4"));
        assert!(text.contains("arena_rollback_bound_ticks{match_id=\"m\"} 75"));
        assert!(text.contains("# TYPE arena_takebacks_total counter"));
        assert!(text.contains("arena_takebacks_total{match_id=\"m\"} 1"));
        let standby = prometheus(&Status {
            role: "standby",
            ..Status::default()
        });
        assert!(standby.contains("arena_owner{match_id=\"\"} 0"));
    }
}

/// When the loop serving the socket (the lobby, then the tick loop) last came round, on
/// the process's clock: what Agones' health pings and `/healthz` read, so that a stuck
/// loop stops them.
#[derive(Debug, Default)]
pub struct Heartbeat {
    last_ms: std::sync::atomic::AtomicU64,
    beats: std::sync::atomic::AtomicU64,
}

impl Heartbeat {
    /// The loop came round at `now`.
    pub fn beat(&self, now: Duration) {
        use std::sync::atomic::Ordering;
        self.last_ms
            .store(now.as_millis() as u64, Ordering::Relaxed);
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the loop came round within `within` of `now` (false before its first beat).
    pub fn alive(&self, now: Duration, within: Duration) -> bool {
        use std::sync::atomic::Ordering;
        self.beats.load(Ordering::Relaxed) > 0
            && now.as_millis() as u64
                <= self.last_ms.load(Ordering::Relaxed) + within.as_millis() as u64
    }
}
