//! The figures the tick loop publishes for operators (`/status`, and `/metrics` through
//! [`crate::metrics`]).
//!
//! The loop owns the world; the admin API never touches it. Every half second the loop
//! fills a [`Status`] and sends it over a `watch` channel, and the API serves the latest.
//! Counts are cumulative since the loop started (what Prometheus takes rates of); the
//! percentiles and per-second rates beside them cover the last 10 s (for people reading
//! `/status`).

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
    /// `snapshots_sent`, `snapshots_full`, `snapshots_throttled`, `snapshot_bytes_sent`,
    /// `entity_updates`, `entities_deferred`, `game_events`, `events_queued`, `events_dropped`,
    /// `notices_riding`, `notices_alone`).
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
    /// UDP payload bytes received since the loop started (`bytes_in_per_s` is its rate).
    pub bytes_in: u64,
    /// UDP payload bytes sent since the loop started.
    pub bytes_out: u64,
    /// Datagrams received since the loop started.
    pub packets_in: u64,
    /// Datagrams sent since the loop started.
    pub packets_out: u64,
    /// Time the loop thread was busy (tick work and socket calls) since it started, µs
    /// (`loop_utilization` is its share of the last 10 s).
    pub loop_busy_us: u64,
    /// Every tick's work since the loop started, as a histogram (`/metrics` serves it as
    /// `arena_tick_duration_seconds`).
    pub tick_us_histogram: TickHistogram,
    /// Whether this process was told to drain (`POST /drain`): it admits no new
    /// connection; the players connected keep playing.
    pub draining: bool,
    /// This build's version (`CARGO_PKG_VERSION` of arena-server).
    pub version: &'static str,
    /// The connected clients as the loop last saw them (`GET /clients`; left out of
    /// `/status`, which stays small however many clients there are). Shared, so that a
    /// status read does not copy the list.
    #[serde(skip)]
    pub clients: std::sync::Arc<Vec<crate::core::ClientInfo>>,
}

/// Upper bounds of the tick-work histogram's buckets, µs: from a quarter of a millisecond
/// to three 60 Hz periods, with a bound at the 60 Hz budget (16 666 µs, the last whole
/// microsecond within 1/60 s), so "ticks over budget" is a bucket, not an interpolation.
pub const TICK_BUCKETS_US: [u64; 11] = [
    250, 500, 1_000, 2_000, 4_000, 8_000, 12_000, 16_666, 20_000, 33_333, 50_000,
];

/// Tick work as a Prometheus histogram: cumulative counts per upper bound, the sum and the
/// count, since the loop started (never windowed, so a scraper's `rate()` is exact).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TickHistogram {
    /// The buckets' upper bounds, µs ([`TICK_BUCKETS_US`]).
    pub le_us: [u64; TICK_BUCKETS_US.len()],
    /// Ticks whose work took at most the bound of the same index: cumulative, so each is
    /// at least the one before and at most `count` (the rest are above the last bound).
    pub cumulative: [u64; TICK_BUCKETS_US.len()],
    /// The ticks' work added up, µs.
    pub sum_us: u64,
    /// Ticks recorded.
    pub count: u64,
}

impl Default for TickHistogram {
    fn default() -> Self {
        Self {
            le_us: TICK_BUCKETS_US,
            cumulative: [0; TICK_BUCKETS_US.len()],
            sum_us: 0,
            count: 0,
        }
    }
}

impl TickHistogram {
    /// Counts one tick whose work took `tick_us`.
    pub fn record(&mut self, tick_us: u64) {
        for (bound, ticks) in self.le_us.iter().zip(&mut self.cumulative) {
            if tick_us <= *bound {
                *ticks += 1;
            }
        }
        self.sum_us = self.sum_us.saturating_add(tick_us);
        self.count += 1;
    }
}

/// Per-tick figures over a sliding window, for percentiles and rates, and the cumulative
/// figures since the loop started (every tick passes through [`Window::push`]).
#[derive(Debug)]
pub struct Window {
    span: Duration,
    /// (end of tick, tick work µs, busy µs, bytes in, bytes out, packets in, packets out)
    samples: VecDeque<Sample>,
    /// Every tick's work, never forgotten.
    ticks: TickHistogram,
    /// Every sample's busy time added up, µs.
    busy_us: u64,
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
            ticks: TickHistogram::default(),
            busy_us: 0,
        }
    }

    /// Adds a tick's figures to the cumulative ones and to the window, and forgets those
    /// older than the span.
    pub fn push(&mut self, sample: Sample) {
        self.ticks.record(sample.tick_us);
        self.busy_us = self.busy_us.saturating_add(sample.busy_us);
        self.samples.push_back(sample);
        while let Some(front) = self.samples.front() {
            if sample.at.saturating_sub(front.at) > self.span {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Fills the windowed and the cumulative fields of `status`.
    pub fn fill(&self, status: &mut Status) {
        status.tick_us_histogram = self.ticks.clone();
        status.loop_busy_us = self.busy_us;
        if let Some(last) = self.samples.back() {
            status.bytes_in = last.bytes_in;
            status.bytes_out = last.bytes_out;
            status.packets_in = last.packets_in;
            status.packets_out = last.packets_out;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_json_names_each_figure_once() {
        let mut status = Status {
            snapshot_bytes: 111,
            ..Status::default()
        };
        status.game.snapshot_bytes = 222;
        let Ok(text) = serde_json::to_string(&status) else {
            panic!("a status serializes");
        };
        assert_eq!(text.matches("\"snapshot_bytes\":").count(), 1, "{text}");
        assert!(text.contains("\"snapshot_bytes\":111"), "{text}");
        assert!(text.contains("\"snapshot_bytes_sent\":222"), "{text}");
        // No key twice anywhere (the core's counters are flattened into the same object).
        let Ok(serde_json::Value::Object(fields)) =
            serde_json::from_str::<serde_json::Value>(&text)
        else {
            panic!("a status is a JSON object");
        };
        assert_eq!(
            text.matches("\":").count(),
            count_keys(&serde_json::Value::Object(fields))
        );
    }

    /// Keys in a JSON value, nested ones included.
    fn count_keys(value: &serde_json::Value) -> usize {
        match value {
            serde_json::Value::Object(fields) => {
                fields.len() + fields.values().map(count_keys).sum::<usize>()
            }
            serde_json::Value::Array(items) => items.iter().map(count_keys).sum(),
            _ => 0,
        }
    }

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
    fn every_tick_counts_in_a_cumulative_histogram_that_the_window_never_forgets() {
        let mut window = Window::new(Duration::from_secs(10));
        // 0.1 ms, exactly 1 ms (on a bound), 16.666 ms (the 60 Hz budget), 17 ms (over
        // it), 60 ms (over every bound), a minute apart: the window keeps only the last.
        let ticks_us = [100, 1_000, 16_666, 17_000, 60_000];
        for (i, tick_us) in ticks_us.into_iter().enumerate() {
            window.push(Sample {
                at: Duration::from_secs(60 * i as u64),
                tick_us,
                busy_us: tick_us + 10,
                bytes_in: 100 * (i as u64 + 1),
                packets_out: 2 * (i as u64 + 1),
                ..Sample::default()
            });
        }
        let mut status = Status::default();
        window.fill(&mut status);
        let h = &status.tick_us_histogram;
        assert_eq!(h.count, 5);
        assert_eq!(h.sum_us, 100 + 1_000 + 16_666 + 17_000 + 60_000);
        assert_eq!(h.le_us, TICK_BUCKETS_US);
        let at = |bound_us: u64| {
            let i = TICK_BUCKETS_US.iter().position(|b| *b == bound_us).unwrap();
            h.cumulative[i]
        };
        assert_eq!(at(250), 1);
        assert_eq!(at(500), 1);
        assert_eq!(at(1_000), 2, "a bound is inclusive (le)");
        assert_eq!(at(12_000), 2);
        assert_eq!(at(16_666), 3);
        assert_eq!(at(20_000), 4);
        assert_eq!(at(50_000), 4, "60 ms is only in +Inf (the count)");
        assert!(h.cumulative.windows(2).all(|w| w[0] <= w[1]), "{h:?}");
        // The cumulative totals come from the newest sample, the busy time from all.
        assert_eq!(status.bytes_in, 500);
        assert_eq!(status.packets_out, 10);
        assert_eq!(status.loop_busy_us, h.sum_us + 50);
        // The windowed figures cover only the newest tick.
        assert_eq!(status.tick_us_max, 60_000);
        assert_eq!(status.tick_us_p50, 60_000);
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
