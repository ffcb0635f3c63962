//! What a flood can cost the server: connection requests rate-limited before their token
//! is opened, and drops logged at most once per reason per interval.
//!
//! A forged 1078-byte connection request costs the server an XChaCha20-Poly1305 open of
//! its 1024-byte private part (about 3.5 µs on the 2-core machine the README measures), on
//! the tick thread. [`RequestLimiter`] lets a request reach that open only if both its source
//! address and the server as a whole are under their rates; everything else about a
//! request (size, version, protocol id, expiry) is checked first, since it costs nothing.
//!
//! Both rates are token buckets kept as one number each (the generic cell rate algorithm:
//! the time at which the bucket would be full again). The per-source buckets live in a
//! fixed-size table, so memory is the same whatever the number of sources.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::DropReason;

/// The rates the server's connection-request limiter enforces. The numbers, and why:
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Requests one source address (IP and port) may send at once. A client sends one
    /// request every 100 ms until it is challenged, so a burst of 10 is a second of
    /// retries.
    pub per_source_burst: u32,
    /// Requests per second one source address may keep sending: twice a netcode client's
    /// 10 Hz, so a client that never gets an answer (a wrong key, say) is counted under
    /// its real reason and never as rate-limited.
    pub per_source_per_s: u32,
    /// Source buckets: a table of 16-byte entries (64 KiB), 4-way set-associative by a
    /// keyed hash of the address. Each entry remembers whose it is (by a 64-bit hash), so
    /// two sources do not share a bucket; a new source takes the entry of its set that has been idle the
    /// longest (a full bucket, usually: then nothing is forgotten). Only when every way of
    /// a set is busy does a newcomer reset one, which a flood of forged addresses can do,
    /// and which only lets it reach the overall rates below.
    pub sources: usize,
    /// Decryptions the server may do at once, at least: a handoff brings every client of
    /// a match within a few milliseconds (1024 at about 3.5 µs each is 3.6 ms, a fifth of
    /// a 60 Hz tick). A server with more slots gets a burst of one per slot, up to 8192.
    pub burst: u32,
    /// Decryptions per second across all sources: 4096 cost about 14 ms of each second
    /// (0.24 ms per 60 Hz tick), whatever the number of addresses a flood comes from.
    pub per_s: u32,
    /// Decryptions at once beyond the overall rate, for quiet sources only (those with
    /// at least half their burst left: every real client, none of a flood's busy ones),
    /// so that a flood which keeps the overall bucket empty does not lock clients out.
    pub quiet_burst: u32,
    /// Decryptions per second beyond the overall rate, for quiet sources only: the most
    /// a server ever decrypts is `per_s + quiet_per_s` a second (5120, about 18 ms).
    pub quiet_per_s: u32,
}

/// The limits every [`super::Server`] uses (the burst grows with its slots).
pub const REQUEST_LIMITS: RequestLimits = RequestLimits {
    per_source_burst: 10,
    per_source_per_s: 20,
    sources: 4096,
    burst: 1024,
    per_s: 4096,
    quiet_burst: 256,
    quiet_per_s: 1024,
};

/// Most decryptions at once for a server of any size.
const MAX_BURST: u32 = 8192;

/// A token bucket's rate in the generic cell rate algorithm: one request per `interval`,
/// and up to `tolerance / interval + 1` at once.
#[derive(Debug, Clone, Copy)]
struct Rate {
    interval_ns: u64,
    tolerance_ns: u64,
}

impl Rate {
    fn new(per_s: u32, burst: u32) -> Self {
        let interval_ns = 1_000_000_000 / u64::from(per_s.max(1));
        Self {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1) - 1)),
        }
    }

    /// Whether a bucket whose theoretical arrival time is `tat` takes a request at `now`.
    /// A clock that steps back only makes the bucket look emptier, never fuller.
    fn conforms(self, tat: u64, now: u64) -> bool {
        tat <= now.saturating_add(self.tolerance_ns)
    }

    /// Whether a bucket has at least half its burst left.
    fn is_quiet(self, tat: u64, now: u64) -> bool {
        tat <= now.saturating_add(self.tolerance_ns / 2)
    }

    /// The bucket after it took a request at `now`.
    fn take(self, tat: u64, now: u64) -> u64 {
        tat.max(now).saturating_add(self.interval_ns)
    }
}

/// Decides which connection requests may be decrypted: per source address (a hashed,
/// fixed-size table of buckets), overall (one bucket), and beyond the overall rate for
/// quiet sources (one more bucket).
///
/// A source is its IP address *and* port, not its IP alone: players behind one NAT (or a
/// test's hundreds of bots on 127.0.0.1) share an IP, and a handoff brings them all at
/// once. One host sending from many ports gets a bucket per port, and the overall rate is
/// what bounds it, as it bounds a flood whose source addresses are forged.
#[derive(Debug)]
pub(super) struct RequestLimiter {
    /// The per-source buckets, [`WAYS`] per set.
    sources: Box<[SourceBucket]>,
    /// The overall bucket's theoretical arrival time (ns since the unix epoch; 0 is full).
    global: u64,
    /// The quiet sources' extra bucket.
    quiet: u64,
    source_rate: Rate,
    global_rate: Rate,
    quiet_rate: Rate,
    /// Keys the address hash, so that a remote who does not know it cannot pick
    /// addresses that fall into one set.
    hash_key: u64,
}

/// Entries per set of the source table.
const WAYS: usize = 4;

/// One source's bucket.
#[derive(Debug, Clone, Copy, Default)]
struct SourceBucket {
    /// The source's keyed address hash (0: unused).
    owner: u64,
    /// Theoretical arrival time, ns since the unix epoch (0 is full).
    tat: u64,
}

impl RequestLimiter {
    /// A limiter for a server with `max_clients` slots, its hash keyed by `hash_key`.
    pub(super) fn new(limits: RequestLimits, max_clients: usize, hash_key: u64) -> Self {
        let slots = u32::try_from(max_clients).unwrap_or(u32::MAX);
        let burst = limits.burst.max(slots.min(MAX_BURST));
        let sets = limits.sources.div_ceil(WAYS).max(1);
        Self {
            sources: vec![SourceBucket::default(); sets * WAYS].into_boxed_slice(),
            global: 0,
            quiet: 0,
            source_rate: Rate::new(limits.per_source_per_s, limits.per_source_burst),
            global_rate: Rate::new(limits.per_s, burst),
            quiet_rate: Rate::new(limits.quiet_per_s, limits.quiet_burst),
            hash_key,
        }
    }

    /// Whether a request from `from` at `now` may be decrypted; if so, it is counted
    /// against the overall rate (or, that one spent, the quiet sources' rate).
    ///
    /// A request within its source's rate is counted against its source even when the
    /// overall rates refuse it: a flood's busy sources then stay busy (they never look
    /// quiet), while a client, at half its source's rate, stays quiet however often it
    /// is refused.
    pub(super) fn allow(&mut self, now: Duration, from: SocketAddr) -> bool {
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let index = self.entry(from);
        let source = self.sources[index].tat;
        if !self.source_rate.conforms(source, now) {
            return false;
        }
        self.sources[index].tat = self.source_rate.take(source, now);
        if self.global_rate.conforms(self.global, now) {
            self.global = self.global_rate.take(self.global, now);
            true
        } else if self.source_rate.is_quiet(source, now)
            && self.quiet_rate.conforms(self.quiet, now)
        {
            self.quiet = self.quiet_rate.take(self.quiet, now);
            true
        } else {
            false
        }
    }

    /// Buckets in the per-source table (fixed at construction).
    #[cfg(test)]
    pub(super) fn num_buckets(&self) -> usize {
        self.sources.len()
    }

    /// The index of `from`'s bucket: its own, or a new one in place of the entry of its
    /// set idle the longest.
    fn entry(&mut self, from: SocketAddr) -> usize {
        let owner = self.hash(from) | 1;
        let first = self.first_of_set(owner);
        let set = &mut self.sources[first..first + WAYS];
        if let Some(way) = set.iter().position(|b| b.owner == owner) {
            return first + way;
        }
        let (way, _) = set
            .iter()
            .enumerate()
            .min_by_key(|(_, b)| b.tat)
            .unwrap_or((0, &SourceBucket::default()));
        set[way] = SourceBucket { owner, tat: 0 };
        first + way
    }

    /// The first index of the set of the source whose keyed hash is `owner`.
    fn first_of_set(&self, owner: u64) -> usize {
        let sets = self.sources.len() / WAYS;
        (owner >> 1) as usize % sets * WAYS
    }

    /// Which set `from` falls into.
    #[cfg(test)]
    fn set_of(&self, from: SocketAddr) -> usize {
        self.first_of_set(self.hash(from) | 1) / WAYS
    }

    fn hash(&self, from: SocketAddr) -> u64 {
        let mut h = self.hash_key ^ 0xcbf2_9ce4_8422_2325;
        let mut mix = |bytes: &[u8]| {
            for &b in bytes {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        match from.ip() {
            IpAddr::V4(ip) => mix(&ip.octets()),
            IpAddr::V6(ip) => mix(&ip.octets()),
        }
        mix(&from.port().to_le_bytes());
        // FNV's low bits depend only on low bits; a finalizer spreads every bit.
        splitmix64(h)
    }
}

fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// At most one log line per drop reason per this interval; the line counts the others.
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How loudly a drop reason is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DropLogLevel {
    /// Points at a misconfigured client or an attack.
    Warn,
    /// Worth an operator's eye, not alarming.
    Info,
    /// Happens on a healthy server.
    Debug,
}

/// One line to log: a drop, and how many of the same reason went unlogged before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DropLine {
    /// Why.
    pub reason: DropReason,
    /// The source of the drop this line names (the newest one, for a summary line).
    pub from: SocketAddr,
    /// Drops of the same reason since the previous line, not counting this one.
    pub more: u64,
    /// Time since the previous line of this reason (none before the first).
    pub since: Option<Duration>,
}

impl fmt::Display for DropLine {
    /// The line's tail: " (and 41 more in the last 10 s)", or nothing.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.more, self.since) {
            (0, _) => Ok(()),
            (more, Some(since)) => {
                write!(f, " (and {more} more in the last {} s)", since.as_secs())
            }
            (more, None) => write!(f, " (and {more} more)"),
        }
    }
}

/// Per reason: when its last line was logged, and what was dropped since.
#[derive(Debug, Clone, Copy, Default)]
struct ReasonLog {
    last_line: Option<Duration>,
    suppressed: u64,
    latest_from: Option<SocketAddr>,
}

/// Decides when a drop is worth a log line: the first of a reason at once, then at most
/// one line per [`DROP_LOG_INTERVAL`] carrying the count of those it stood for. Pure:
/// time is an argument, and the caller logs.
#[derive(Debug, Default)]
pub(super) struct DropLog {
    reasons: [ReasonLog; DropReason::ALL.len()],
}

impl DropLog {
    /// A drop at `now`: the line to log now, if any.
    pub(super) fn note(
        &mut self,
        now: Duration,
        reason: DropReason,
        from: SocketAddr,
    ) -> Option<DropLine> {
        let log = &mut self.reasons[reason as usize];
        let since = log.last_line.map(|last| now.saturating_sub(last));
        if since.is_some_and(|since| since < DROP_LOG_INTERVAL) {
            log.suppressed += 1;
            log.latest_from = Some(from);
            return None;
        }
        let line = DropLine {
            reason,
            from,
            more: log.suppressed,
            since,
        };
        *log = ReasonLog {
            last_line: Some(now),
            suppressed: 0,
            latest_from: None,
        };
        Some(line)
    }

    /// Summary lines for the reasons whose interval ended with drops left unlogged, so the
    /// end of a flood is told even if nothing follows it.
    pub(super) fn flush(&mut self, now: Duration, mut emit: impl FnMut(DropLine)) {
        for (log, &reason) in self.reasons.iter_mut().zip(&DropReason::ALL) {
            let (Some(last), Some(from)) = (log.last_line, log.latest_from) else {
                continue;
            };
            let since = now.saturating_sub(last);
            if log.suppressed == 0 || since < DROP_LOG_INTERVAL {
                continue;
            }
            emit(DropLine {
                reason,
                from,
                more: log.suppressed - 1,
                since: Some(since),
            });
            *log = ReasonLog {
                last_line: Some(now),
                suppressed: 0,
                latest_from: None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Duration = Duration::from_secs(1_800_000_000);

    fn addr(n: u32) -> SocketAddr {
        SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 40000))
    }

    fn limiter() -> RequestLimiter {
        RequestLimiter::new(REQUEST_LIMITS, 64, 0x1234)
    }

    #[test]
    fn one_source_gets_its_burst_then_its_rate() {
        let mut limiter = limiter();
        let allowed = (0..100).filter(|_| limiter.allow(T0, addr(1))).count();
        assert_eq!(allowed, REQUEST_LIMITS.per_source_burst as usize);
        // A quarter of a second later, a quarter of a second's worth (5).
        let later = T0 + Duration::from_millis(250);
        let allowed = (0..100).filter(|_| limiter.allow(later, addr(1))).count();
        assert_eq!(allowed, REQUEST_LIMITS.per_source_per_s as usize / 4);
        // Idle, the bucket fills up to its burst, never beyond.
        let idle = T0 + Duration::from_secs(60);
        let allowed = (0..100).filter(|_| limiter.allow(idle, addr(1))).count();
        assert_eq!(allowed, REQUEST_LIMITS.per_source_burst as usize);
    }

    #[test]
    fn a_client_retrying_at_10_hz_is_never_limited() {
        let mut limiter = limiter();
        for i in 0..600 {
            let now = T0 + Duration::from_millis(100 * i);
            assert!(limiter.allow(now, addr(7)), "request {i} refused");
        }
    }

    #[test]
    fn many_sources_share_the_overall_rates() {
        let mut limiter = limiter();
        // Fresh sources are quiet: the overall burst, then the quiet sources' burst.
        let allowed = (0..5000).filter(|&n| limiter.allow(T0, addr(n))).count();
        assert_eq!(
            allowed,
            (REQUEST_LIMITS.burst + REQUEST_LIMITS.quiet_burst) as usize
        );
        // Then both rates, however many sources ask: 3 s of 50 fresh sources a
        // millisecond (50,000 a second).
        let mut total = 0;
        for ms in 1..=3000u32 {
            let now = T0 + Duration::from_millis(u64::from(ms));
            total += (0..50)
                .filter(|&n| limiter.allow(now, addr(10_000 + 50 * ms + n)))
                .count();
        }
        let expected = 3 * (REQUEST_LIMITS.per_s + REQUEST_LIMITS.quiet_per_s) as usize;
        assert!(total.abs_diff(expected) <= 2, "{total} for {expected}");
    }

    #[test]
    fn a_quiet_client_gets_through_a_flood_that_empties_the_overall_bucket() {
        let mut limiter = limiter();
        let mut client_allowed = 0;
        let mut flood_allowed = 0;
        // 300 busy sources send 100 requests a second each (30,000 a second; 6000 a
        // second within their own rate, more than the overall 4096), every 10 ms before
        // the client's request at 10 Hz.
        for ms in (0..3000u64).step_by(10) {
            let now = T0 + Duration::from_millis(ms);
            flood_allowed += (0..300)
                .filter(|&n| limiter.allow(now, addr(100 + n)))
                .count();
            if ms.is_multiple_of(100) {
                client_allowed += usize::from(limiter.allow(now, addr(1)));
            }
        }
        // The quiet bucket's burst went to the flood's first requests (fresh sources are
        // quiet too); from then on the client is the only quiet source.
        assert!(client_allowed >= 28, "{client_allowed} of 30");
        let ceiling = REQUEST_LIMITS.burst
            + REQUEST_LIMITS.quiet_burst
            + 3 * (REQUEST_LIMITS.per_s + REQUEST_LIMITS.quiet_per_s);
        assert!(flood_allowed <= ceiling as usize, "{flood_allowed}");
    }

    #[test]
    fn no_flood_drains_a_clients_bucket_even_from_the_clients_own_set() {
        // Overall rates out of the way: only the per-source buckets decide.
        let limits = RequestLimits {
            burst: 1 << 30,
            per_s: 1 << 30,
            ..REQUEST_LIMITS
        };
        let mut limiter = RequestLimiter::new(limits, 64, 0x1234);
        let client = addr(1);
        let set = limiter.set_of(client);
        // Twelve flooders that hash into the client's set (three times its ways), and
        // 200 others.
        let mut flooders: Vec<SocketAddr> = (1000..)
            .map(addr)
            .filter(|&a| limiter.set_of(a) == set)
            .take(12)
            .collect();
        flooders.extend((5000..5200).map(addr));
        for ms in 0..3000u64 {
            let now = T0 + Duration::from_millis(ms);
            for &flooder in &flooders {
                let _ = limiter.allow(now, flooder);
            }
            if ms.is_multiple_of(100) {
                assert!(
                    limiter.allow(now, client),
                    "the client was refused at {ms} ms"
                );
            }
        }
    }

    #[test]
    fn a_big_server_gets_a_burst_of_one_per_slot_up_to_a_bound() {
        let quiet = REQUEST_LIMITS.quiet_burst as usize;
        let mut big = RequestLimiter::new(REQUEST_LIMITS, 3000, 1);
        assert_eq!(
            (0..10_000).filter(|&n| big.allow(T0, addr(n))).count(),
            3000 + quiet
        );
        let mut huge = RequestLimiter::new(REQUEST_LIMITS, 1 << 20, 1);
        assert_eq!(
            (0..20_000).filter(|&n| huge.allow(T0, addr(n))).count(),
            MAX_BURST as usize + quiet
        );
    }

    #[test]
    fn the_table_is_fixed_whatever_the_number_of_sources() {
        let mut limiter = limiter();
        for n in 0..200_000 {
            let _ = limiter.allow(T0 + Duration::from_micros(u64::from(n)), addr(n));
        }
        assert_eq!(limiter.num_buckets(), REQUEST_LIMITS.sources);
        assert_eq!(limiter.sources.len(), REQUEST_LIMITS.sources);
        assert_eq!(
            std::mem::size_of_val(&*limiter.sources),
            16 * REQUEST_LIMITS.sources
        );
    }

    #[test]
    fn a_clock_that_steps_back_never_refills() {
        let mut limiter = limiter();
        while limiter.allow(T0, addr(1)) {}
        assert!(!limiter.allow(T0 - Duration::from_secs(60), addr(1)));
        assert!(!limiter.allow(Duration::ZERO, addr(1)));
        assert!(limiter.allow(T0 + Duration::from_secs(1), addr(1)));
    }

    #[test]
    fn the_first_drop_is_logged_then_one_line_per_interval_counts_the_rest() {
        let mut log = DropLog::default();
        let reason = DropReason::DecryptFailed;
        let first = log.note(T0, reason, addr(1)).expect("first is logged");
        assert_eq!((first.more, first.since), (0, None));
        assert_eq!(first.to_string(), "");
        for i in 1..=41 {
            assert_eq!(
                log.note(T0 + Duration::from_millis(i * 100), reason, addr(2)),
                None
            );
        }
        // Another reason has its own interval.
        assert!(log.note(T0, DropReason::RateLimited, addr(3)).is_some());
        let next = log
            .note(T0 + DROP_LOG_INTERVAL, reason, addr(4))
            .expect("the interval is over");
        assert_eq!(next.from, addr(4));
        assert_eq!(next.more, 41);
        assert_eq!(next.to_string(), " (and 41 more in the last 10 s)");
        assert_eq!(log.note(T0 + DROP_LOG_INTERVAL, reason, addr(4)), None);
    }

    #[test]
    fn a_flood_that_stops_is_summed_up_once_its_interval_ends() {
        let mut log = DropLog::default();
        let reason = DropReason::RateLimited;
        assert!(log.note(T0, reason, addr(1)).is_some());
        for i in 0..5 {
            assert!(
                log.note(T0 + Duration::from_secs(i), reason, addr(9))
                    .is_none()
            );
        }
        let mut lines = Vec::new();
        log.flush(T0 + Duration::from_secs(5), |l| lines.push(l));
        assert!(lines.is_empty(), "the interval is not over");
        log.flush(T0 + Duration::from_secs(12), |l| lines.push(l));
        assert_eq!(
            lines,
            vec![DropLine {
                reason,
                from: addr(9),
                more: 4,
                since: Some(Duration::from_secs(12)),
            }]
        );
        // Told once; and the summary starts a new interval.
        log.flush(T0 + Duration::from_secs(30), |l| lines.push(l));
        assert_eq!(lines.len(), 1);
        assert!(
            log.note(T0 + Duration::from_secs(13), reason, addr(1))
                .is_none()
        );
    }

    #[test]
    fn lines_are_bounded_whatever_the_drop_rate() {
        let mut log = DropLog::default();
        let mut lines = 0;
        // A minute of 10,000 drops a second of every reason, flushed every 10 ms.
        for ms in 0..60_000u64 {
            let now = T0 + Duration::from_millis(ms);
            for &reason in &DropReason::ALL {
                for _ in 0..10 {
                    lines += usize::from(log.note(now, reason, addr(1)).is_some());
                }
            }
            if ms.is_multiple_of(10) {
                log.flush(now, |_| lines += 1);
            }
        }
        // One line per reason per 10 s.
        assert!(lines <= DropReason::ALL.len() * 6, "{lines} lines");
    }
}
