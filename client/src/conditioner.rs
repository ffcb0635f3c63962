//! A link conditioner: delays, drops and reorders datagrams on their way in or out, so a
//! person (or a bot) can feel a bad network on a good one. Sans-IO: drivers push what they
//! send or receive and pop what is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// What the conditioner does to each datagram.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkSpec {
    /// Share dropped (0..1).
    pub loss: f64,
    /// Added one-way delay.
    pub latency: Duration,
    /// Extra delay, uniform in ±jitter.
    pub jitter: Duration,
    /// Share delivered twice (0..1).
    pub duplicate: f64,
}

impl std::str::FromStr for LinkSpec {
    type Err = String;

    /// Parses `loss=5%,latency=80ms,jitter=20ms` (any subset, any order).
    fn from_str(text: &str) -> Result<Self, String> {
        let mut spec = Self::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            match key.trim() {
                "loss" => {
                    let number = value.trim().trim_end_matches('%');
                    let percent: f64 = number
                        .parse()
                        .map_err(|_| format!("loss={value}: expected a percentage like 5%"))?;
                    if !(0.0..=100.0).contains(&percent) {
                        return Err(format!("loss={value}: must be 0% to 100%"));
                    }
                    spec.loss = percent / 100.0;
                }
                "latency" => spec.latency = parse_ms(value)?,
                "duplicate" => {
                    let percent: f64 =
                        value.trim().trim_end_matches('%').parse().map_err(|_| {
                            format!("duplicate={value}: expected a percentage like 1%")
                        })?;
                    if !(0.0..=100.0).contains(&percent) {
                        return Err(format!("duplicate={value}: must be 0% to 100%"));
                    }
                    spec.duplicate = percent / 100.0;
                }
                "jitter" => spec.jitter = parse_ms(value)?,
                other => {
                    return Err(format!(
                        "unknown setting {other:?} (loss, latency, jitter, duplicate)"
                    ));
                }
            }
        }
        Ok(spec)
    }
}

fn parse_ms(value: &str) -> Result<Duration, String> {
    let number = value.trim().trim_end_matches("ms");
    let ms: u64 = number
        .parse()
        .map_err(|_| format!("{value}: expected milliseconds like 80ms"))?;
    if ms > 10_000 {
        return Err(format!("{value}: at most 10000ms"));
    }
    Ok(Duration::from_millis(ms))
}

/// A datagram in flight: when it is due, the order it was pushed in (ties), the peer, the
/// bytes.
type InFlight = (Duration, u64, SocketAddr, Vec<u8>);

/// One direction of a conditioned link.
#[derive(Debug)]
pub struct Conditioner {
    spec: LinkSpec,
    rng: Pcg64Mcg,
    queue: BinaryHeap<Reverse<InFlight>>,
    order: u64,
    /// Datagrams dropped on purpose.
    pub dropped: u64,
}

impl Conditioner {
    /// A conditioner with its own seeded randomness.
    pub fn new(spec: LinkSpec, seed: u64) -> Self {
        Self {
            spec,
            rng: Pcg64Mcg::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            order: 0,
            dropped: 0,
        }
    }

    /// Takes a datagram at `now` (addressed to, or coming from, `peer`).
    pub fn push(&mut self, now: Duration, peer: SocketAddr, bytes: Vec<u8>) {
        if self.spec.loss > 0.0 && self.rng.random_bool(self.spec.loss.min(1.0)) {
            self.dropped += 1;
            return;
        }
        let duplicate =
            self.spec.duplicate > 0.0 && self.rng.random_bool(self.spec.duplicate.min(1.0));
        for _ in 0..if duplicate { 2 } else { 1 } {
            let jitter = self.spec.jitter.as_secs_f64();
            let offset = if jitter > 0.0 {
                self.rng.random_range(-jitter..jitter)
            } else {
                0.0
            };
            let delay =
                Duration::from_secs_f64((self.spec.latency.as_secs_f64() + offset).max(0.0));
            self.order += 1;
            self.queue
                .push(Reverse((now + delay, self.order, peer, bytes.clone())));
        }
    }

    /// The next datagram due by `now`.
    pub fn pop(&mut self, now: Duration) -> Option<(SocketAddr, Vec<u8>)> {
        self.pop_timed(now).map(|(_, peer, bytes)| (peer, bytes))
    }

    /// The next datagram due by `now`, with the time it became due.
    pub fn pop_timed(&mut self, now: Duration) -> Option<(Duration, SocketAddr, Vec<u8>)> {
        if self.next_due().is_some_and(|at| at <= now) {
            self.queue
                .pop()
                .map(|Reverse((at, _, peer, bytes))| (at, peer, bytes))
        } else {
            None
        }
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Duration> {
        self.queue.peek().map(|Reverse((at, ..))| *at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_bad_ones_say_why() {
        let spec: LinkSpec = "loss=5%,latency=80ms,jitter=20ms".parse().expect("valid");
        assert!((spec.loss - 0.05).abs() < 1e-9);
        assert_eq!(spec.latency, Duration::from_millis(80));
        assert_eq!(spec.jitter, Duration::from_millis(20));
        assert!(
            "loss=200%"
                .parse::<LinkSpec>()
                .unwrap_err()
                .contains("0% to 100%")
        );
        assert!(
            "delay=5ms"
                .parse::<LinkSpec>()
                .unwrap_err()
                .contains("unknown setting")
        );
        assert!(
            "latency=fast"
                .parse::<LinkSpec>()
                .unwrap_err()
                .contains("milliseconds")
        );
    }

    #[test]
    fn datagrams_arrive_late_and_some_are_lost() {
        let spec: LinkSpec = "loss=10%,latency=50ms".parse().expect("valid");
        let mut link = Conditioner::new(spec, 1);
        let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        for i in 0..1000u32 {
            link.push(Duration::ZERO, peer, i.to_le_bytes().to_vec());
        }
        assert!(link.pop(Duration::from_millis(49)).is_none());
        let mut arrived = 0;
        while link.pop(Duration::from_millis(50)).is_some() {
            arrived += 1;
        }
        assert_eq!(arrived + link.dropped, 1000);
        assert!((50..150).contains(&link.dropped), "{}", link.dropped);
    }
}
