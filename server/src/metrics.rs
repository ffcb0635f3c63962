//! `GET /metrics`: the latest [`Status`] in the Prometheus text format (version 0.0.4),
//! encoded by the Prometheus project's client library (`prometheus-client`).
//!
//! The tick loop keeps its own counts and publishes them in a `Status` every half second
//! (see [`crate::status`]); nothing here counts. A scrape builds a registry whose one
//! [`Collector`] encodes that snapshot, so every series of a scrape comes from the same
//! moment of the loop. The library writes the names, types, suffixes (`_total`, `_bucket`,
//! `_info`) and escaping; this module only says what each figure is:
//!
//! - cumulative figures are counters (`arena_..._total`), reset when a new loop starts
//!   (after a handoff or a restart), as Prometheus expects of counters;
//! - state is gauges (`arena_owner`, `arena_role{role}`, `arena_players`...);
//! - tick work is a histogram, `arena_tick_duration_seconds`, cumulative since the loop
//!   started: percentiles and rates are the scraper's to compute;
//! - `arena_build_info{version, commit}` and `arena_server_info{game, store}` describe the
//!   process; every other series has a `match_id` label.
//!
//! The body is the Prometheus 0.0.4 text format ([`CONTENT_TYPE`]), not OpenMetrics:
//! `promtool check metrics` lints it (the loopback test `tests/tests/metrics.rs` runs it on
//! a real server's scrape), and every Prometheus reads it.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeMetric, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::status::Status;

/// The `Content-Type` of the `/metrics` body: Prometheus text, version 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// This build's version (the crate's).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The commit this build was made from, 12 hex digits (`git rev-parse --short=12 HEAD` at
/// build time), or "unknown" for a build outside a git checkout.
pub const COMMIT: &str = env!("ARENA_GIT_COMMIT");

/// Every role [`Status::role`] takes: `arena_role{role}` lists them all, 1 for the current
/// one and 0 for the rest, so a role's series never disappears.
pub const ROLES: [&str; 7] = [
    "owner",
    "standby",
    "preparing",
    "starting",
    "retired",
    "fenced",
    "stopped",
];

/// The `/metrics` body for `status`: every series, Prometheus text format 0.0.4.
///
/// # Errors
///
/// Only if the library refuses to encode (writing into a `String` cannot fail).
pub fn encode(status: Status) -> Result<String, fmt::Error> {
    let mut registry = Registry::with_prefix("arena");
    registry.register_collector(Box::new(ProcessCollector {
        game: status.game_name,
        store: status.store,
    }));
    registry
        .sub_registry_with_label(("match_id".into(), status.match_id.clone().into()))
        .register_collector(Box::new(StatusCollector(status)));
    let mut text = String::new();
    prometheus_text::encode(&mut text, &registry)?;
    Ok(text)
}

/// The series that describe the process rather than its match (no `match_id`).
#[derive(Debug)]
struct ProcessCollector {
    game: &'static str,
    store: &'static str,
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let build = Info::new([("version", VERSION), ("commit", COMMIT)]);
        build.encode(encoder.encode_descriptor(
            "build",
            "The server's version and the commit it was built from (always 1).",
            None,
            build.metric_type(),
        )?)?;
        let server = Info::new([("game", self.game), ("store", self.store)]);
        server.encode(encoder.encode_descriptor(
            "server",
            "The game this process serves and the kind of store that holds its match (always 1).",
            None,
            server.metric_type(),
        )?)
    }
}

/// The series of one [`Status`], encoded when scraped.
#[derive(Debug)]
struct StatusCollector(Status);

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let e = &mut encoder;
        let flag = |on: bool| u64::from(on);

        // Ownership: what an operator alerts on (no owner, a rollback, no snapshots).
        gauge(
            e,
            "owner",
            None,
            "1 while this process owns the match and ticks it, else 0.",
            flag(s.role == "owner"),
        )?;
        let mut roles = e.encode_descriptor(
            "role",
            "This process's role: 1 for the current one, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for role in ROLES {
            ConstGauge::new(flag(s.role == role))
                .encode(roles.encode_family(&[("role", role)])?)?;
        }
        if !ROLES.contains(&s.role) {
            ConstGauge::new(1u64).encode(roles.encode_family(&[("role", s.role)])?)?;
        }
        gauge(
            e,
            "epoch",
            None,
            "Ownership epoch (0 for a standby).",
            s.epoch,
        )?;
        gauge(
            e,
            "draining",
            None,
            "1 while this process is draining: it admits no new connection.",
            flag(s.draining),
        )?;
        gauge(
            e,
            "lease_lapsed",
            None,
            "1 while the loop holds its ticks because its lease could not be renewed.",
            flag(s.lease_lapsed),
        )?;
        gauge(
            e,
            "store_unavailable",
            None,
            "1 while the store's latest call failed (Redis down or unreachable).",
            flag(s.store_error.is_some()),
        )?;
        if let Some(ticks) = s.rollback_bound_ticks {
            gauge(
                e,
                "rollback_bound_ticks",
                None,
                "Ticks a crash now would roll back: ticks since the newest snapshot written.",
                ticks,
            )?;
        }
        if let Some(tick) = s.last_snapshot_tick {
            gauge(
                e,
                "stored_snapshot_tick",
                None,
                "Tick of the newest snapshot written to the store.",
                tick,
            )?;
        }
        gauge(
            e,
            "stored_snapshot",
            Some(&Unit::Bytes),
            "Size of the newest snapshot written to the store.",
            s.snapshot_bytes as u64,
        )?;
        gauge(
            e,
            "stored_snapshot_serialize",
            Some(&Unit::Seconds),
            "Time the newest stored snapshot took to serialize on the tick thread.",
            micros(s.snapshot_serialize_us),
        )?;
        counter(
            e,
            "snapshots_dropped",
            None,
            "Snapshots for the store skipped because the writer was busy.",
            s.snapshots_dropped,
        )?;
        counter(
            e,
            "snapshot_write_errors",
            None,
            "Snapshot writes to the store that failed (the match keeps running).",
            s.snapshot_write_errors,
        )?;
        counter(
            e,
            "lease_renewal_errors",
            None,
            "Lease renewals that failed in the current epoch.",
            s.lease_renewal_errors,
        )?;
        counter(
            e,
            "snapshots_refused",
            None,
            "Snapshots in the store that a restore refused (corrupt, truncated, foreign).",
            s.snapshots_refused,
        )?;
        counter(
            e,
            "restores",
            None,
            "Matches restored from the store after an owner died.",
            s.restores,
        )?;
        if let Some(ticks) = s.rollback_ticks {
            gauge(
                e,
                "last_restore_rollback_ticks",
                None,
                "Ticks the last restore rolled back (exact; absent when unknown).",
                ticks,
            )?;
        }
        if let Some(ticks) = s.rollback_ticks_at_least {
            gauge(
                e,
                "last_restore_rollback_ticks_at_least",
                None,
                "A lower bound of the last restore's rollback when the exact figure is unknown.",
                ticks,
            )?;
        }
        counter(
            e,
            "handoffs",
            None,
            "Handoffs this process took part in (given or received).",
            s.handoffs,
        )?;
        counter(
            e,
            "handoffs_aborted",
            None,
            "Handoffs begun here that ended with the match still here.",
            s.handoffs_aborted,
        )?;
        counter(
            e,
            "takebacks",
            None,
            "Matches taken back after the successor died before serving.",
            s.takebacks,
        )?;
        if let Some(ms) = s.handoff_pause_ms {
            gauge(
                e,
                "last_handoff_pause",
                Some(&Unit::Seconds),
                "The last handoff's pause: the old owner's freeze to the new owner's first tick.",
                ms / 1e3,
            )?;
        }
        gauge(
            e,
            "prepared_clients",
            None,
            "Clients connected ahead to this standby for a handoff being prepared.",
            s.prepared_clients as u64,
        )?;

        // The tick loop.
        gauge(e, "tick", None, "The last tick simulated.", s.tick)?;
        gauge(e, "tick_hz", None, "Ticks per second.", s.tick_hz)?;
        gauge(e, "players", None, "Connected players.", s.players as u64)?;
        gauge(
            e,
            "max_players",
            None,
            "Player capacity.",
            s.max_players as u64,
        )?;
        let ticks = &s.tick_us_histogram;
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = ticks
            .le_us
            .iter()
            .zip(ticks.cumulative)
            .map(|(bound_us, cumulative)| {
                // The library takes each bucket's own count and adds them up itself.
                let own = cumulative.saturating_sub(below);
                below = cumulative;
                (micros(*bound_us), own)
            })
            .collect();
        buckets.push((f64::INFINITY, ticks.count.saturating_sub(below)));
        e.encode_descriptor(
            "tick_duration",
            "Tick work (inputs, step, building, encoding and sealing every packet; socket \
             calls excluded) since the loop started.",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?
        .encode_histogram::<NoLabelSet>(
            micros(ticks.sum_us),
            ticks.count,
            &buckets,
            None,
        )?;
        counter(
            e,
            "tick_overruns",
            None,
            "Times the loop fell behind by more than its catch-up allowance.",
            s.tick_overruns,
        )?;
        counter(
            e,
            "ticks_skipped",
            None,
            "Ticks not simulated because of overruns (the simulation slows, never spirals).",
            s.ticks_skipped,
        )?;
        ConstCounter::new(micros(s.loop_busy_us)).encode(e.encode_descriptor(
            "loop_busy",
            "Time the loop thread was busy (tick work and socket calls); its rate is the \
             loop's utilization.",
            Some(&Unit::Seconds),
            MetricType::Counter,
        )?)?;
        gauge(
            e,
            "load",
            None,
            "Busy share of each tick period, smoothed: what load shedding acts on.",
            s.load,
        )?;
        gauge(
            e,
            "snapshot_every_ticks",
            None,
            "Ticks between a client's snapshots: 1 normally, more while shedding load.",
            s.snapshot_every_ticks,
        )?;
        gauge(
            e,
            "entity_wait_ticks_max",
            None,
            "Longest any entity in any client's view waited for an update, ticks (last 10 s).",
            s.entity_wait_ticks_max,
        )?;
        gauge(
            e,
            "uptime",
            Some(&Unit::Seconds),
            "Time since the process started serving.",
            s.uptime_s,
        )?;

        // The game: inputs, snapshots to clients, events.
        let game = &s.game;
        for (name, help, value) in [
            (
                "inputs_applied",
                "Input frames applied.",
                game.inputs_applied,
            ),
            (
                "inputs_late",
                "Input frames applied after the tick they were for.",
                game.inputs_late,
            ),
            (
                "inputs_dropped",
                "Input frames refused because the client's buffer was full.",
                game.inputs_dropped,
            ),
            (
                "inputs_skipped",
                "Input frames clients gave up on before they arrived.",
                game.inputs_skipped,
            ),
            (
                "bad_messages",
                "Payloads that were not a valid game message.",
                game.bad_messages,
            ),
            (
                "snapshots_sent",
                "Snapshots sent to clients.",
                game.snapshots_sent,
            ),
            (
                "snapshots_full",
                "Snapshots sent whole: the client had acknowledged no baseline young enough.",
                game.snapshots_full,
            ),
            (
                "snapshots_throttled",
                "Snapshots a client was due but not sent: its byte budget was spent.",
                game.snapshots_throttled,
            ),
            (
                "entity_updates",
                "Entities in view that snapshots brought up to date, summed over clients.",
                game.entity_updates,
            ),
            (
                "entities_deferred",
                "Entities in view that a snapshot left for a later one (byte budget).",
                game.entities_deferred,
            ),
            (
                "game_events",
                "Game events the steps produced.",
                game.game_events,
            ),
            (
                "events_queued",
                "Game events queued for clients to hear reliably.",
                game.events_queued,
            ),
            (
                "events_dropped",
                "Game events a client did not get: it had too many unacknowledged.",
                game.events_dropped,
            ),
            (
                "notices_riding",
                "Datagrams of reliable notices that rode in a snapshot's datagram.",
                game.notices_riding,
            ),
            (
                "notices_alone",
                "Datagrams of reliable notices sent on their own.",
                game.notices_alone,
            ),
        ] {
            counter(e, name, None, help, value)?;
        }
        counter(
            e,
            "snapshot",
            Some(&Unit::Bytes),
            "Bytes of the snapshots sent to clients (netcode payloads, less riding notices).",
            game.snapshot_bytes,
        )?;

        // The transport.
        for (name, help, value) in [
            ("udp_received", "UDP payload bytes received.", s.bytes_in),
            ("udp_sent", "UDP payload bytes sent.", s.bytes_out),
        ] {
            counter(e, name, Some(&Unit::Bytes), help, value)?;
        }
        counter(
            e,
            "udp_received_datagrams",
            None,
            "Datagrams received.",
            s.packets_in,
        )?;
        counter(
            e,
            "udp_sent_datagrams",
            None,
            "Datagrams sent.",
            s.packets_out,
        )?;
        counter(
            e,
            "socket_errors",
            None,
            "Socket errors on receive or send.",
            s.socket_errors,
        )?;
        let mut drops = e.encode_descriptor(
            "drops",
            "Datagrams dropped by the transport, by reason (every reason listed, zeros too).",
            None,
            MetricType::Counter,
        )?;
        for (reason, count) in &s.drops {
            ConstCounter::new(*count).encode(drops.encode_family(&[("reason", *reason)])?)?;
        }
        Ok(())
    }
}

/// One counter series: `arena_<name>[_<unit>]_total` (the library adds the suffixes).
fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    value: u64,
) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// One gauge series: `arena_<name>[_<unit>]`.
fn gauge<N: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    unit: Option<&Unit>,
    help: &str,
    value: N,
) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, unit, metric.metric_type())?)
}

/// Microseconds as seconds, Prometheus's base unit.
fn micros(us: u64) -> f64 {
    us as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Sample, Window};
    use std::time::Duration;

    /// The text of `status`, or a test failure.
    fn text(status: Status) -> String {
        let Ok(text) = encode(status) else {
            panic!("encoding failed");
        };
        text
    }

    /// The value of the series written exactly as `series` (name and labels).
    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(series)?.strip_prefix(' ')?;
            rest.parse().ok()
        })
    }

    /// The `# TYPE` of `family`.
    fn kind<'a>(text: &'a str, family: &str) -> Option<&'a str> {
        let prefix = format!("# TYPE {family} ");
        text.lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }

    #[test]
    fn metrics_count_takebacks_as_a_counter_with_its_value() {
        let text = text(Status {
            match_id: "m".into(),
            takebacks: 3,
            restores: 2,
            ..Status::default()
        });
        assert_eq!(
            kind(&text, "arena_takebacks_total"),
            Some("counter"),
            "{text}"
        );
        assert_eq!(
            value(&text, "arena_takebacks_total{match_id=\"m\"}"),
            Some(3.0)
        );
        assert!(text.contains("# HELP arena_takebacks_total Matches taken back"));
        assert_eq!(
            value(&text, "arena_restores_total{match_id=\"m\"}"),
            Some(2.0)
        );
        // Every counter is typed counter and named _total, and nothing else is.
        for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let (family, kind) = line.split_once(' ').unwrap();
            assert_eq!(family.ends_with("_total"), kind == "counter", "{line}");
        }
    }

    #[test]
    fn metrics_show_who_owns_the_match_and_what_a_crash_would_cost() {
        let text = text(Status {
            match_id: "m".into(),
            role: "owner",
            epoch: 4,
            rollback_bound_ticks: Some(75),
            rollback_ticks: Some(12),
            ..Status::default()
        });
        assert_eq!(kind(&text, "arena_owner"), Some("gauge"));
        assert_eq!(
            value(&text, "arena_owner{match_id=\"m\"}"),
            Some(1.0),
            "{text}"
        );
        assert_eq!(value(&text, "arena_epoch{match_id=\"m\"}"), Some(4.0));
        assert_eq!(
            value(&text, "arena_rollback_bound_ticks{match_id=\"m\"}"),
            Some(75.0)
        );
        assert_eq!(
            value(&text, "arena_last_restore_rollback_ticks{match_id=\"m\"}"),
            Some(12.0)
        );
        // Every role is listed, the current one at 1.
        for role in ROLES {
            let series = format!("arena_role{{match_id=\"m\",role=\"{role}\"}}");
            let expected = if role == "owner" { 1.0 } else { 0.0 };
            assert_eq!(value(&text, &series), Some(expected), "{series}: {text}");
        }

        let standby = super::encode(Status {
            role: "standby",
            ..Status::default()
        })
        .unwrap();
        assert_eq!(
            value(&standby, "arena_owner{match_id=\"\"}"),
            Some(0.0),
            "{standby}"
        );
        assert_eq!(
            value(&standby, "arena_role{match_id=\"\",role=\"standby\"}"),
            Some(1.0)
        );
        // Unknown figures are absent, not a made-up 0.
        assert!(
            !standby.contains("arena_last_restore_rollback_ticks"),
            "{standby}"
        );
    }

    #[test]
    fn metrics_list_every_drop_reason_and_escape_the_match_id() {
        let mut status = Status {
            match_id: "m\"1\\".into(),
            ..Status::default()
        };
        status.drops.insert("replayed", 3);
        status.drops.insert("bad_token", 0);
        let text = text(status);
        assert_eq!(kind(&text, "arena_drops_total"), Some("counter"));
        assert_eq!(
            value(
                &text,
                "arena_drops_total{match_id=\"m\\\"1\\\\\",reason=\"replayed\"}"
            ),
            Some(3.0),
            "{text}"
        );
        assert_eq!(
            value(
                &text,
                "arena_drops_total{match_id=\"m\\\"1\\\\\",reason=\"bad_token\"}"
            ),
            Some(0.0),
            "{text}"
        );
    }

    #[test]
    fn metrics_tick_duration_histogram_is_cumulative_and_counts_every_tick_pushed() {
        let mut window = Window::new(Duration::from_secs(10));
        // 100 ticks of 0.1 ms to 20 ms, then one of 70 ms: above every bound.
        let mut ticks_us: Vec<u64> = (1..=100).map(|i| i * 200).collect();
        ticks_us.push(70_000);
        for (i, tick_us) in ticks_us.iter().enumerate() {
            window.push(Sample {
                at: Duration::from_millis(16 * i as u64),
                tick_us: *tick_us,
                ..Sample::default()
            });
        }
        let mut status = Status {
            match_id: "m".into(),
            ..Status::default()
        };
        window.fill(&mut status);
        let text = text(status);
        assert_eq!(
            kind(&text, "arena_tick_duration_seconds"),
            Some("histogram")
        );
        let bucket = |le: &str| {
            value(
                &text,
                &format!("arena_tick_duration_seconds_bucket{{match_id=\"m\",le=\"{le}\"}}"),
            )
            .unwrap_or_else(|| panic!("no bucket le={le}: {text}"))
        };
        assert_eq!(bucket("0.00025"), 1.0);
        assert_eq!(bucket("0.001"), 5.0);
        assert_eq!(bucket("0.016666"), 83.0);
        assert_eq!(bucket("0.02"), 100.0);
        assert_eq!(bucket("0.05"), 100.0);
        assert_eq!(bucket("+Inf"), 101.0);
        let count = value(&text, "arena_tick_duration_seconds_count{match_id=\"m\"}");
        assert_eq!(count, Some(ticks_us.len() as f64));
        let sum = value(&text, "arena_tick_duration_seconds_sum{match_id=\"m\"}").unwrap();
        let expected = ticks_us.iter().sum::<u64>() as f64 / 1e6;
        assert!((sum - expected).abs() < 1e-9, "{sum} != {expected}");
        // Cumulative: the buckets never go down, in the order written.
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("arena_tick_duration_seconds_bucket"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(buckets.len(), crate::status::TICK_BUCKETS_US.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]), "{buckets:?}");
    }

    #[test]
    fn metrics_carry_the_build_and_the_cumulative_traffic() {
        let text = text(Status {
            match_id: "m".into(),
            game_name: "arena",
            store: "file",
            bytes_in: 1_000,
            packets_out: 7,
            loop_busy_us: 2_500_000,
            ..Status::default()
        });
        assert_eq!(kind(&text, "arena_build_info"), Some("gauge"));
        let build = format!("arena_build_info{{version=\"{VERSION}\",commit=\"{COMMIT}\"}}");
        assert_eq!(value(&text, &build), Some(1.0), "{text}");
        assert!(COMMIT == "unknown" || COMMIT.len() == 12, "{COMMIT}");
        assert_eq!(
            value(&text, "arena_server_info{game=\"arena\",store=\"file\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&text, "arena_udp_received_bytes_total{match_id=\"m\"}"),
            Some(1000.0)
        );
        assert_eq!(
            value(&text, "arena_udp_sent_datagrams_total{match_id=\"m\"}"),
            Some(7.0)
        );
        assert_eq!(
            value(&text, "arena_loop_busy_seconds_total{match_id=\"m\"}"),
            Some(2.5)
        );
        // No windowed percentile or rate is served as a gauge.
        assert!(!text.contains("_p99") && !text.contains("_per_s"), "{text}");
    }
}
