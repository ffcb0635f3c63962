//! A flood of forged connection requests against the real server while 50 bots play.
//!
//! Each forged datagram is shaped like a connection request that would cost the server a
//! token decryption: 1078 bytes, type 0, `NETCODE 1.02`, the server's protocol id, an
//! expiry that never comes, and garbage where the sealed token goes. They come from 199
//! loopback addresses (127.0.0.2 to 127.0.0.200; Linux routes all of 127/8 to `lo`), at
//! tens of thousands a second. The test listens on every flooding socket for replies.
//!
//! Two phases against one server: 50 bots with no flood (the baseline), then 50 bots
//! that connect and play while the flood runs. Per phase, from the cumulative figures in
//! `/status` (the tick histogram, the loop's busy time, the drop counters) and the bots'
//! own report.
//!
//! What is asserted, and why these bounds (this runs on a 2-core CI machine, sharing it
//! with the flood sender and the bots):
//! - no reply to any forged request, and any reply smaller than its request (there is
//!   nothing to amplify);
//! - `rate_limited` grew, and the decryptions the flood cost stayed within what the
//!   limits allow (per source: its burst and its rate over the flood's length; overall:
//!   the bursts and rates of `REQUEST_LIMITS`), whatever the flood's rate;
//! - every bot of the flood phase connected while the flood ran, and lost no input
//!   (inputs are resent until acknowledged, so one lost datagram loses nothing);
//! - the tick held: the flood phase's tick work p99 within the 60 Hz budget (16.7 ms), and
//!   the bots' snapshot rate at least 75% of the baseline's (load shedding halves it at
//!   most once per second, so a real loss of the tick would show as 30/s or less).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use arena_shared::identity::ARENA_PROTOCOL_ID;
use arena_shared::netcode::server::REQUEST_LIMITS;
use arena_shared::netcode::{CONNECTION_REQUEST_BYTES, VERSION_INFO};
use arena_tests::procs::{
    ServerProcess, bots_against, bots_report, one_at_a_time, status, temp_dir,
};
use serde_json::Value;

/// Flooding source addresses: 127.0.0.2 ..= 127.0.0.200.
const SOURCES: u8 = 199;
/// Forged requests a second the sender aims at (it reports what it reached).
const FLOOD_PER_S: u64 = 40_000;
/// At most this many in all, whatever happens.
const FLOOD_MAX: u64 = 600_000;
const BOTS: u32 = 50;
const BASELINE_S: f64 = 5.0;
const FLOOD_S: f64 = 7.0;

/// What the flood sender did.
#[derive(Debug, Default)]
struct FloodReport {
    sent: u64,
    seconds: f64,
    replies: u64,
    largest_reply: usize,
}

/// A forged request: valid up to its sealed token, which is garbage.
fn forged_request(seed: &mut u64) -> Vec<u8> {
    let mut request = vec![0u8; CONNECTION_REQUEST_BYTES];
    request[1..14].copy_from_slice(VERSION_INFO);
    request[14..22].copy_from_slice(&ARENA_PROTOCOL_ID.to_le_bytes());
    // Never expires, so the server would have to open the token to refuse it.
    request[22..30].copy_from_slice(&u64::MAX.to_le_bytes());
    for chunk in request[30..].chunks_mut(8) {
        // xorshift64: garbage that differs in every request.
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let bytes = seed.to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    request
}

/// Sends forged requests to `target` from every source, round robin, at `FLOOD_PER_S`
/// (paced per millisecond), until `stop` or `FLOOD_MAX`; reads any reply every 100 ms.
fn flood(target: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<FloodReport> {
    let sockets: Vec<UdpSocket> = (2..2 + SOURCES)
        .map(|host| {
            let socket = UdpSocket::bind(SocketAddr::from(([127, 0, 0, host], 0)))
                .unwrap_or_else(|e| panic!("cannot bind 127.0.0.{host}: {e}"));
            socket.set_nonblocking(true).unwrap();
            socket
        })
        .collect();
    std::thread::spawn(move || {
        let mut report = FloodReport::default();
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        // A pool of distinct requests, cycled: forging costs the sender nothing per send.
        let pool: Vec<Vec<u8>> = (0..256).map(|_| forged_request(&mut seed)).collect();
        let per_ms = FLOOD_PER_S / 1000;
        let clock = Stopwatch::start();
        let mut buf = [0u8; 2048];
        let mut ms = 0u64;
        while !stop.load(Ordering::Relaxed) && report.sent < FLOOD_MAX {
            for _ in 0..per_ms {
                let n = report.sent as usize;
                let socket = &sockets[n % sockets.len()];
                if socket.send_to(&pool[n % pool.len()], target).is_ok() {
                    report.sent += 1;
                }
            }
            ms += 1;
            if ms.is_multiple_of(100) {
                read_replies(&sockets, &mut buf, &mut report);
            }
            // Pacing, not synchronization: the next millisecond's share.
            let ahead = Duration::from_millis(ms).saturating_sub(clock.elapsed());
            if !ahead.is_zero() {
                std::thread::sleep(ahead);
            }
        }
        report.seconds = clock.elapsed().as_secs_f64();
        // Replies still on their way: a last look, a moment later.
        std::thread::sleep(Duration::from_millis(200));
        read_replies(&sockets, &mut buf, &mut report);
        report
    })
}

fn read_replies(sockets: &[UdpSocket], buf: &mut [u8], report: &mut FloodReport) {
    for socket in sockets {
        // Bounded: a socket's queue holds at most a few hundred datagrams.
        for _ in 0..10_000 {
            let Ok((len, _)) = socket.recv_from(buf) else {
                break;
            };
            report.replies += 1;
            report.largest_reply = report.largest_reply.max(len);
        }
    }
}

/// Wall time for the flood's pacing and rate (a test's own clock, not the server's).
struct Stopwatch(std::time::Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)] // reason: the flood sender paces itself by wall time
    fn start() -> Self {
        Self(std::time::Instant::now())
    }

    fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The cumulative figures of one `/status`, to subtract.
#[derive(Debug, Clone)]
struct Figures {
    uptime_s: f64,
    loop_busy_us: u64,
    ticks: u64,
    histogram: Vec<u64>,
    bounds: Vec<u64>,
    drops: serde_json::Map<String, Value>,
    packets_in: u64,
}

impl Figures {
    fn read(server: &ServerProcess) -> Self {
        let s = status(server);
        let histogram = &s["tick_us_histogram"];
        let numbers = |v: &Value| -> Vec<u64> {
            v.as_array()
                .unwrap_or_else(|| panic!("no histogram: {s}"))
                .iter()
                .map(|n| n.as_u64().unwrap())
                .collect()
        };
        Self {
            uptime_s: s["uptime_s"].as_f64().unwrap(),
            loop_busy_us: s["loop_busy_us"].as_u64().unwrap(),
            ticks: histogram["count"].as_u64().unwrap(),
            histogram: numbers(&histogram["cumulative"]),
            bounds: numbers(&histogram["le_us"]),
            drops: s["drops"].as_object().unwrap().clone(),
            packets_in: s["packets_in"].as_u64().unwrap(),
        }
    }

    fn drops(&self, reason: &str) -> u64 {
        self.drops.get(reason).and_then(Value::as_u64).unwrap_or(0)
    }
}

/// What happened between two readings.
#[derive(Debug)]
struct Phase {
    seconds: f64,
    ticks_per_s: f64,
    /// The bucket bound under which 99% of the phase's ticks' work fell, µs (the bounds
    /// are 250 µs to 50 ms; `u64::MAX` above the last).
    tick_us_p99_at_most: u64,
    loop_utilization: f64,
    packets_in_per_s: f64,
    drops: Vec<(String, u64)>,
}

impl Phase {
    fn between(before: &Figures, after: &Figures) -> Self {
        let seconds = after.uptime_s - before.uptime_s;
        let ticks = after.ticks - before.ticks;
        let p99 = after
            .histogram
            .iter()
            .zip(&before.histogram)
            .zip(&after.bounds)
            .find(|((a, b), _)| (**a - **b) as f64 >= 0.99 * ticks as f64)
            .map_or(u64::MAX, |(_, bound)| *bound);
        let drops = after
            .drops
            .keys()
            .map(|reason| (reason.clone(), after.drops(reason) - before.drops(reason)))
            .filter(|(_, n)| *n > 0)
            .collect();
        Self {
            seconds,
            ticks_per_s: ticks as f64 / seconds,
            tick_us_p99_at_most: p99,
            loop_utilization: (after.loop_busy_us - before.loop_busy_us) as f64 / 1e6 / seconds,
            packets_in_per_s: (after.packets_in - before.packets_in) as f64 / seconds,
            drops,
        }
    }

    /// One line for the test's output.
    fn summary(&self) -> String {
        let drops: Vec<String> = self.drops.iter().map(|(r, n)| format!("{r}={n}")).collect();
        format!(
            "{:.1} s, {:.1} ticks/s, tick work p99 <= {} us, loop busy {:.1}%, {:.0} datagrams in/s, drops {}",
            self.seconds,
            self.ticks_per_s,
            self.tick_us_p99_at_most,
            100.0 * self.loop_utilization,
            self.packets_in_per_s,
            drops.join(" ")
        )
    }

    fn drops(&self, reason: &str) -> u64 {
        self.drops
            .iter()
            .find(|(r, _)| r == reason)
            .map_or(0, |(_, n)| *n)
    }
}

#[test]
fn a_flood_of_forged_requests_from_many_addresses_is_rate_limited_and_the_bots_play_on() {
    let _one = one_at_a_time();
    let dir = temp_dir("flood");
    let server = ServerProcess::start(&dir, &["--max-players", "50", "--match-id", "flood"]);

    // Baseline: 50 bots, no flood.
    let start = Figures::read(&server);
    let baseline = bots_report(bots_against(&server, BOTS, BASELINE_S, &[]));
    let after_baseline = Figures::read(&server);
    let quiet = Phase::between(&start, &after_baseline);

    // The flood starts first; 50 bots then connect and play through it.
    let stop = Arc::new(AtomicBool::new(false));
    let sender = flood(server.udp, Arc::clone(&stop));
    let flooded = bots_report(bots_against(&server, BOTS, FLOOD_S, &[]));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("the flood sender panicked");
    let after_flood = Figures::read(&server);
    let loud = Phase::between(&after_baseline, &after_flood);

    let rate = |r: &Value| r["snapshots_per_bot_per_s"].as_f64().unwrap();
    println!(
        "flood: {} forged requests in {:.1} s ({:.0}/s) from {SOURCES} addresses; {} replies",
        sent.sent,
        sent.seconds,
        sent.sent as f64 / sent.seconds,
        sent.replies
    );
    println!(
        "baseline: {}; bots {:.1} snapshots/s, rtt p99 {} ms",
        quiet.summary(),
        rate(&baseline),
        baseline["rtt_ms_p99"]
    );
    println!(
        "flood:    {}; bots {:.1} snapshots/s, rtt p99 {} ms",
        loud.summary(),
        rate(&flooded),
        flooded["rtt_ms_p99"]
    );
    let logs = server.logs();
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("dropped datagrams"))
        .collect();
    println!("drop warnings logged: {}", warnings.len());
    for line in warnings.iter().take(4) {
        println!("  {line}");
    }

    // Nothing to amplify: forged requests earn no reply, and none is larger.
    assert!(
        sent.largest_reply < CONNECTION_REQUEST_BYTES,
        "a {}-byte reply to a {CONNECTION_REQUEST_BYTES}-byte request",
        sent.largest_reply
    );
    assert_eq!(sent.replies, 0, "forged requests were answered");
    assert!(
        sent.sent as f64 / sent.seconds > 5_000.0,
        "the sender reached only {:.0} requests a second",
        sent.sent as f64 / sent.seconds
    );

    // Rate-limited, and the decryptions bounded by the limits, not by the flood.
    let limited = loud.drops("rate_limited");
    let decrypted = loud.drops("decrypt_failed");
    // Most of the flood was refused before any decryption (some of it may not have
    // reached the server at all: the kernel drops what a full socket buffer cannot hold).
    assert!(
        limited > decrypted,
        "{limited} rate-limited, {decrypted} decrypted, of {} sent: {}",
        sent.sent,
        loud.summary()
    );
    let limits = REQUEST_LIMITS;
    let per_source = u64::from(SOURCES)
        * (u64::from(limits.per_source_burst)
            + (f64::from(limits.per_source_per_s) * (sent.seconds + 1.0)) as u64);
    let overall = u64::from(limits.burst + limits.quiet_burst)
        + (f64::from(limits.per_s + limits.quiet_per_s) * (sent.seconds + 1.0)) as u64;
    assert!(
        decrypted <= per_source.min(overall),
        "{decrypted} decryptions, limits allow {per_source} per source and {overall} overall"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("rate_limited") && l.contains("from=127.0.0.")),
        "no rate_limited warning naming a source:\n{logs}"
    );
    // At most one line per reason per 10 s, plus the summaries.
    assert!(
        warnings.len() <= 8,
        "{} drop warnings:\n{logs}",
        warnings.len()
    );

    // The bots connected through the flood and played on.
    for report in [&baseline, &flooded] {
        assert_eq!(report["connected"], BOTS, "{report}");
        assert_eq!(report["connect_failures"], 0, "{report}");
        assert_eq!(report["inputs_unaccounted"], 0, "{report}");
    }
    assert!(
        loud.tick_us_p99_at_most <= 16_667,
        "tick work p99 over the 60 Hz budget during the flood: {}",
        loud.summary()
    );
    assert!(
        rate(&flooded) >= 0.75 * rate(&baseline),
        "snapshots {:.1}/s under the flood, {:.1}/s before",
        rate(&flooded),
        rate(&baseline)
    );
    let _ = server.terminate();
}
