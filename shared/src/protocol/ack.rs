//! Packet header with acks (reliable.io style), and the RTT and loss estimates they give.
//!
//! Every game datagram starts with `sequence u16 ‖ ack u16 ‖ ack_bits u32` (little-endian):
//! this packet's number, the newest number received from the peer, and one bit for each of
//! the 32 before it. Each packet thus acknowledges 33, so one lost packet loses no ack.

use std::time::Duration;

/// Bytes of the header on the wire.
pub const HEADER_BYTES: usize = 8;
const WINDOW: usize = 256;
/// Sent packets whose acknowledgement is kept as a mask too ([`AckTracker::unacked`]).
const MASKED: u32 = u128::BITS;
/// Packets one header acknowledges: `ack` and the 32 of `ack_bits`.
const ACKS_PER_HEADER: u32 = 33;

/// The ack header that opens every game datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketHeader {
    /// This packet's number (wraps at 2^16).
    pub sequence: u16,
    /// The newest sequence received from the peer.
    pub ack: u16,
    /// Bit `i` set: `ack - 1 - i` was received too.
    pub ack_bits: u32,
}

impl PacketHeader {
    /// The 8 header bytes.
    pub fn to_bytes(self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        out[..2].copy_from_slice(&self.sequence.to_le_bytes());
        out[2..4].copy_from_slice(&self.ack.to_le_bytes());
        out[4..].copy_from_slice(&self.ack_bits.to_le_bytes());
        out
    }

    /// Splits a datagram into its header and the rest; `None` if it is too short.
    pub fn split(bytes: &[u8]) -> Option<(Self, &[u8])> {
        let (head, rest) = bytes.split_at_checked(HEADER_BYTES)?;
        Some((
            Self {
                sequence: u16::from_le_bytes([head[0], head[1]]),
                ack: u16::from_le_bytes([head[2], head[3]]),
                ack_bits: u32::from_le_bytes([head[4], head[5], head[6], head[7]]),
            },
            rest,
        ))
    }
}

/// `a` is newer than `b`, modulo 2^16.
pub fn sequence_newer(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    sequence: u16,
    at: Duration,
    acked: bool,
}

/// One side's view of the packets it sent and received: builds headers, reads acks,
/// estimates round-trip time and loss.
#[derive(Debug, Clone)]
pub struct AckTracker {
    next_sequence: u16,
    sent: Box<[Option<Sent>; WINDOW]>,
    /// Bit `i` set when `next_sequence - 1 - i` was sent and is not acknowledged yet: the
    /// `sent` slots of the newest [`MASKED`], so a header's 33 acks are matched at once.
    unacked: u128,
    /// What was received, for telling duplicates (by sequence modulo the window).
    received: Box<[Option<u16>; WINDOW]>,
    newest_received: Option<u16>,
    /// The `ack_bits` to send: bit `i` set when `newest_received - 1 - i` was received.
    /// Kept as packets arrive, so a header costs no walk over the window.
    received_bits: u32,
    /// Smoothed round-trip time, seconds.
    rtt: Option<f32>,
    /// Smoothed share of sent packets never acknowledged (0..1).
    loss: f32,
    /// Last RTT sample, seconds (for percentile reports).
    last_rtt_sample: Option<f32>,
    packets_acked: u64,
    packets_lost: u64,
}

impl Default for AckTracker {
    fn default() -> Self {
        Self {
            next_sequence: 0,
            sent: Box::new([None; WINDOW]),
            unacked: 0,
            received: Box::new([None; WINDOW]),
            newest_received: None,
            received_bits: 0,
            rtt: None,
            loss: 0.0,
            last_rtt_sample: None,
            packets_acked: 0,
            packets_lost: 0,
        }
    }
}

impl AckTracker {
    /// The header [`AckTracker::next_header`] would give now, without taking its sequence
    /// (for a packet that may not be sent after all).
    pub fn peek_header(&self) -> PacketHeader {
        let (ack, ack_bits) = self.ack_fields();
        PacketHeader {
            sequence: self.next_sequence,
            ack,
            ack_bits,
        }
    }

    /// The header for the next packet, recorded as sent at `now`.
    pub fn next_header(&mut self, now: Duration) -> PacketHeader {
        let sequence = self.next_sequence;
        self.next_sequence = sequence.wrapping_add(1);
        let slot = &mut self.sent[usize::from(sequence) % WINDOW];
        // A packet leaving the window unacknowledged counts as lost.
        if let Some(old) = slot.take() {
            let lost = !old.acked;
            self.loss += ((if lost { 1.0 } else { 0.0 }) - self.loss) * 0.05;
            if lost {
                self.packets_lost += 1;
            }
        }
        *slot = Some(Sent {
            sequence,
            at: now,
            acked: false,
        });
        self.unacked = (self.unacked << 1) | 1;
        let (ack, ack_bits) = self.ack_fields();
        PacketHeader {
            sequence,
            ack,
            ack_bits,
        }
    }

    /// Records a received header and calls `on_ack` for each of our packets it newly
    /// acknowledges. Returns whether the packet is new (not a duplicate).
    pub fn on_receive(
        &mut self,
        now: Duration,
        header: PacketHeader,
        mut on_ack: impl FnMut(u16),
    ) -> bool {
        let slot = &mut self.received[usize::from(header.sequence) % WINDOW];
        if *slot == Some(header.sequence) {
            return false;
        }
        *slot = Some(header.sequence);
        self.record_received(header.sequence);
        // The header's acks, bit `i` for `header.ack - i`, newest first.
        let acks = (u64::from(header.ack_bits) << 1) | 1;
        let newest_sent = self.newest_sent();
        let behind = u32::from(newest_sent.wrapping_sub(header.ack));
        // All 33 in the mask: only those not acknowledged yet are looked at (usually
        // one; a sequence not sent yet is never in it). Else, far behind (or ahead of)
        // what was sent: each named one, slot by slot.
        let (newest, mut named) = if behind + ACKS_PER_HEADER <= MASKED {
            (newest_sent, (u128::from(acks) << behind) & self.unacked)
        } else {
            (header.ack, u128::from(acks))
        };
        while named != 0 {
            let i = named.trailing_zeros();
            named &= named - 1;
            let sequence = newest.wrapping_sub(i as u16);
            if self.acknowledge(now, sequence) {
                on_ack(sequence);
            }
        }
        true
    }

    /// The sequence of the last packet sent (bit 0 of `unacked`).
    fn newest_sent(&self) -> u16 {
        self.next_sequence.wrapping_sub(1)
    }

    /// Marks `sequence` acknowledged if it is a sent packet not acknowledged yet, and
    /// takes its RTT sample. Returns whether it was.
    fn acknowledge(&mut self, now: Duration, sequence: u16) -> bool {
        let behind = u32::from(self.newest_sent().wrapping_sub(sequence));
        let Some(sent) = &mut self.sent[usize::from(sequence) % WINDOW] else {
            return false;
        };
        if sent.sequence != sequence || sent.acked {
            return false;
        }
        sent.acked = true;
        if behind < MASKED {
            self.unacked &= !(1 << behind);
        }
        self.packets_acked += 1;
        let sample = now.saturating_sub(sent.at).as_secs_f32();
        self.last_rtt_sample = Some(sample);
        self.rtt = Some(match self.rtt {
            None => sample,
            Some(rtt) => rtt + (sample - rtt) * 0.1,
        });
        true
    }

    /// Smoothed round-trip time, once any packet was acknowledged.
    pub fn rtt(&self) -> Option<Duration> {
        self.rtt.map(Duration::from_secs_f32)
    }

    /// The newest RTT sample, and forgets it (for percentile reports).
    pub fn take_rtt_sample(&mut self) -> Option<Duration> {
        self.last_rtt_sample.take().map(Duration::from_secs_f32)
    }

    /// Smoothed share of packets lost (0..1), judged when they leave the 256-packet window.
    pub fn loss(&self) -> f32 {
        self.loss
    }

    /// Packets acknowledged, and packets that left the window unacknowledged.
    pub fn totals(&self) -> (u64, u64) {
        (self.packets_acked, self.packets_lost)
    }

    /// Moves the newest received and its 32 bits along for a packet not seen before.
    fn record_received(&mut self, sequence: u16) {
        match self.newest_received {
            Some(newest) if sequence_newer(sequence, newest) => {
                // The old newest becomes bit `ahead - 1`; the bits behind it move with it.
                let ahead = u32::from(sequence.wrapping_sub(newest));
                self.received_bits = if ahead > 32 {
                    0
                } else {
                    ((u64::from(self.received_bits) << ahead) | (1 << (ahead - 1))) as u32
                };
                self.newest_received = Some(sequence);
            }
            Some(newest) => {
                let behind = u32::from(newest.wrapping_sub(sequence));
                if (1..=32).contains(&behind) {
                    self.received_bits |= 1 << (behind - 1);
                }
            }
            None => {
                self.newest_received = Some(sequence);
                self.received_bits = 0;
            }
        }
    }

    fn ack_fields(&self) -> (u16, u32) {
        match self.newest_received {
            Some(ack) => (ack, self.received_bits),
            None => (0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::bits::tests::xorshift;

    #[test]
    fn acks_cover_the_newest_and_32_before_it_and_give_rtt() {
        let mut a = AckTracker::default();
        let mut b = AckTracker::default();
        let t0 = Duration::from_secs(1);
        let headers: Vec<_> = (0..40).map(|_| a.next_header(t0)).collect();
        for h in &headers {
            if h.sequence != 5 {
                assert!(b.on_receive(t0, *h, |_| {}));
            }
        }
        assert!(!b.on_receive(t0, headers[3], |_| {}), "duplicate");
        let reply = b.next_header(t0);
        assert_eq!(reply.ack, 39);
        let mut acked = Vec::new();
        a.on_receive(t0 + Duration::from_millis(50), reply, |s| acked.push(s));
        // 39 and the 32 before it, except the lost 5 (which is older than 39-32 anyway).
        assert_eq!(acked.len(), 33);
        assert!(!acked.contains(&5));
        let rtt = a.rtt().expect("sampled");
        assert!((rtt.as_secs_f32() - 0.05).abs() < 1e-3, "{rtt:?}");
    }

    /// Packets arriving late, twice or never, across the 16-bit wrap: every header's
    /// `ack` and `ack_bits` are what the set of sequences received says they must be.
    #[test]
    fn ack_bits_are_the_received_set_under_loss_duplication_and_reordering() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1du64);
        for run in 0..50u64 {
            let mut tracker = AckTracker::default();
            // Unwrapped sequence numbers, starting near the wrap on some runs.
            let start = if run % 2 == 0 { 0 } else { 65_536 - 300 };
            let mut received = std::collections::BTreeSet::new();
            let mut in_flight: Vec<u64> = Vec::new();
            for sent in start..start + 2_000u64 {
                let roll = next() % 100;
                if roll >= 10 {
                    in_flight.push(sent); // 10% lost
                }
                if roll < 5 {
                    in_flight.push(sent); // 5% duplicated
                }
                // Deliver some of what is in flight, in any order, up to 40 behind.
                while in_flight.len() > (next() % 8) as usize {
                    let pick = (next() as usize) % in_flight.len();
                    let sequence = in_flight.swap_remove(pick);
                    let header = PacketHeader {
                        sequence: sequence as u16,
                        ..PacketHeader::default()
                    };
                    let fresh = tracker.on_receive(Duration::ZERO, header, |_| {});
                    assert_eq!(fresh, received.insert(sequence), "duplicate told");
                    let newest = *received.last().expect("one received");
                    let want_bits = (1..=32u64)
                        .filter(|i| newest >= *i && received.contains(&(newest - i)))
                        .fold(0u32, |bits, i| bits | 1 << (i - 1));
                    let header = tracker.peek_header();
                    assert_eq!(header.ack, newest as u16, "run {run}");
                    assert_eq!(header.ack_bits, want_bits, "run {run}, newest {newest}");
                }
                in_flight.retain(|&s| s + 40 > sent);
            }
        }
    }

    /// Acks in headers that lag by a little or a lot (past the mask), arrive in any order,
    /// twice, or name packets never sent: each sent packet in the window is acknowledged
    /// once, when the first header naming it arrives, newest first within a header.
    #[test]
    fn each_sent_packet_is_acknowledged_once_whatever_the_headers() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15u64);
        let mut tracker = AckTracker::default();
        // Unwrapped sequences sent (index = sequence), and whether acknowledged.
        let mut acked: Vec<bool> = Vec::new();
        let mut sent = 0u64;
        let mut slow = 0;
        for _ in 0..20_000 {
            let burst = if next().is_multiple_of(50) {
                150
            } else {
                next() % 3
            };
            for _ in 0..burst {
                assert_eq!(tracker.next_header(Duration::ZERO).sequence, sent as u16);
                acked.push(false);
                sent += 1;
            }
            // The peer's newest received: usually recent, sometimes far back or ahead.
            let lag = match next() % 20 {
                0 => next() % 300,
                1 => 0u64.wrapping_sub(1 + next() % 5), // ahead: never sent
                _ => next() % 8,
            };
            let ack = sent.wrapping_sub(1).wrapping_sub(lag);
            let header = PacketHeader {
                sequence: next() as u16,
                ack: ack as u16,
                ack_bits: next() as u32 | next() as u32,
            };
            let behind = sent.wrapping_sub(1).wrapping_sub(ack);
            if behind.saturating_add(u64::from(ACKS_PER_HEADER)) > u64::from(MASKED) {
                slow += 1;
            }
            let mut want = Vec::new();
            for i in 0..=32u64 {
                let named = i == 0 || header.ack_bits & (1 << (i - 1)) != 0;
                let Some(s) = ack.checked_sub(i).filter(|&s| named && s < sent) else {
                    continue;
                };
                if sent - s <= WINDOW as u64 && !acked[s as usize] {
                    acked[s as usize] = true;
                    want.push(s as u16);
                }
            }
            let mut got = Vec::new();
            // Always new: clear the duplicate check, which this test is not about.
            *tracker.received = [None; WINDOW];
            tracker.on_receive(Duration::ZERO, header, |s| got.push(s));
            assert_eq!(got, want, "ack {ack}, sent {sent}");
        }
        assert!(slow > 500, "the slot-by-slot path ran {slow} times");
    }

    #[test]
    fn a_jump_of_32_keeps_the_old_newest_and_of_33_forgets_it() {
        let mut tracker = AckTracker::default();
        let mut receive = |sequence: u16| {
            let header = PacketHeader {
                sequence,
                ..PacketHeader::default()
            };
            tracker.on_receive(Duration::ZERO, header, |_| {});
            let header = tracker.peek_header();
            (header.ack, header.ack_bits)
        };
        assert_eq!(receive(65_530), (65_530, 0));
        assert_eq!(receive(26), (26, 1 << 31), "across the wrap");
        assert_eq!(receive(59), (59, 0));
        assert_eq!(receive(58), (59, 1));
    }

    /// A straggler a window (256) older than 300 lands in 300's slot (it is taken as new:
    /// the slots tell duplicates only within the window); the ack bits still say that 300
    /// arrived.
    #[test]
    fn a_straggler_from_a_window_ago_does_not_unsay_a_newer_packet() {
        let mut tracker = AckTracker::default();
        for sequence in [300u16, 301, 300 - 256] {
            let header = PacketHeader {
                sequence,
                ..PacketHeader::default()
            };
            tracker.on_receive(Duration::ZERO, header, |_| {});
        }
        let header = tracker.peek_header();
        assert_eq!((header.ack, header.ack_bits), (301, 1));
    }

    #[test]
    fn sequence_comparison_wraps() {
        assert!(sequence_newer(1, 0));
        assert!(sequence_newer(0, 65535));
        assert!(!sequence_newer(65535, 0));
        assert!(!sequence_newer(7, 7));
    }

    #[test]
    fn header_round_trips_and_short_input_is_refused() {
        let h = PacketHeader {
            sequence: 0xabcd,
            ack: 0x1234,
            ack_bits: 0xdead_beef,
        };
        let bytes = h.to_bytes();
        assert_eq!(PacketHeader::split(&bytes), Some((h, &[][..])));
        assert_eq!(PacketHeader::split(&bytes[..7]), None);
    }
}
