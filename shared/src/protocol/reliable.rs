//! Reliable notices over the ack header: the server's [`Outbox`] and the client's [`Inbox`].
//!
//! Notices are numbered from 0 per connection. The outbox sends the oldest unacknowledged
//! ones first, as many as fit in one datagram, and remembers which packet carried which
//! numbers; when the client acknowledges a packet, every notice up to the end of what it
//! carried is done (everything before it was acknowledged before that packet was sent).
//! Unacknowledged notices go out again every [`RESEND_EVERY`]. The inbox delivers each
//! number once, in order, and ignores repeats.
//!
//! Both ends are bounded: an outbox holds at most [`MAX_QUEUED_EVENTS`] events (more are
//! dropped and counted: a client that acknowledges nothing for that long is about to time
//! out anyway), an inbox at most [`MAX_UNREAD_EVENTS`] the application has not taken.
//!
//! Numbering restarts with each connection, so after a handoff or a reconnect the new
//! server's notices start at 0: [`Inbox::restart`] is called when the session switches.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use super::messages::{
    MAX_BODY_BYTES, MAX_NOTICES_PER_PACKET, MAX_SHARED_PARTS, Notice, Reliable, SHARED_PART_BYTES,
    encoded_len,
};
use crate::game::{Game, MatchConfig, PlayerId};

/// How often unacknowledged notices are sent again.
pub const RESEND_EVERY: Duration = Duration::from_millis(100);
/// Events queued per client at most.
pub const MAX_QUEUED_EVENTS: usize = 256;
/// Events a client holds for its application at most.
pub const MAX_UNREAD_EVENTS: usize = 1024;
/// Bytes of notices per datagram at most (the rest of the body is the message's framing).
const NOTICE_BUDGET_BYTES: usize = MAX_BODY_BYTES - 32;
/// Packets whose contents are remembered for acknowledgement.
const IN_FLIGHT: usize = 32;
/// Names a client remembers at most.
const MAX_NAMES: usize = 4096;

/// A notice waiting for its acknowledgement.
#[derive(Debug)]
struct Queued<G: Game> {
    number: u32,
    len: usize,
    notice: Notice<G>,
}

/// The server's end, one per client connection.
#[derive(Debug)]
pub struct Outbox<G: Game> {
    /// The number the next queued notice gets.
    next: u32,
    /// Unacknowledged notices, oldest first, with their numbers and encoded lengths
    /// (measured once, when queued: `poll` runs every tick).
    queue: VecDeque<Queued<G>>,
    /// Events among them.
    queued_events: usize,
    /// Notices below this number were sent at least once.
    sent_below: u32,
    /// Packets that carried notices: (packet sequence, end of the numbers it carried).
    in_flight: VecDeque<(u16, u32)>,
    last_sent: Option<Duration>,
    /// Events refused because the queue was full.
    pub events_dropped: u64,
}

impl<G: Game> Default for Outbox<G> {
    fn default() -> Self {
        Self {
            next: 0,
            queue: VecDeque::new(),
            queued_events: 0,
            sent_below: 0,
            in_flight: VecDeque::new(),
            last_sent: None,
            events_dropped: 0,
        }
    }
}

impl<G: Game> Outbox<G> {
    /// Queues the game's shared data, in parts.
    pub fn push_shared(&mut self, shared: &G::Shared) {
        let bytes = match bincode::serde::encode_to_vec(shared, bincode::config::standard()) {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::error!(%error, "the game's shared data does not encode");
                return;
            }
        };
        let chunks: Vec<&[u8]> = bytes.chunks(SHARED_PART_BYTES).collect();
        let parts = chunks.len().max(1);
        if parts > usize::from(MAX_SHARED_PARTS) {
            tracing::error!(
                bytes = bytes.len(),
                "the game's shared data is over 230 KB; not sent"
            );
            return;
        }
        if chunks.is_empty() {
            self.push(Notice::Shared {
                part: 0,
                parts: 1,
                bytes: Vec::new(),
            });
        }
        for (part, chunk) in chunks.into_iter().enumerate() {
            self.push(Notice::Shared {
                part: part as u16,
                parts: parts as u16,
                bytes: chunk.to_vec(),
            });
        }
    }

    /// Queues the match's settings and how far a player sees on this server, metres
    /// (first, on joining: a client reads no snapshot before).
    pub fn push_config(&mut self, config: MatchConfig, view_radius_m: f32) {
        self.push(Notice::Config {
            config,
            view_radius_m,
        });
    }

    /// Queues a player's name.
    pub fn push_name(&mut self, player: PlayerId, name: &str) {
        self.push(Notice::Name {
            player,
            name: name.to_owned(),
        });
    }

    /// Queues an event; `false` (and counted) if the client already has too many waiting.
    pub fn push_event(&mut self, event: G::Event) -> bool {
        if self.queued_events >= MAX_QUEUED_EVENTS {
            self.events_dropped += 1;
            return false;
        }
        self.queued_events += 1;
        self.push(Notice::Event(event));
        true
    }

    fn push(&mut self, notice: Notice<G>) {
        let len = encoded_len(&notice).unwrap_or(NOTICE_BUDGET_BYTES);
        self.queue.push_back(Queued {
            number: self.next,
            len,
            notice,
        });
        self.next = self.next.wrapping_add(1);
    }

    /// Notices not yet acknowledged.
    pub fn unacknowledged(&self) -> usize {
        self.queue.len()
    }

    /// What to send now, if anything: new notices at once, unacknowledged ones again
    /// after [`RESEND_EVERY`]. Call [`Outbox::sent`] with the packet that carries it.
    pub fn poll(&mut self, now: Duration) -> Option<Reliable<G>> {
        let first = self.queue.front()?.number;
        // The oldest unacknowledged go first (the client delivers in order), as many as fit.
        let mut used = 0;
        let mut count = 0;
        for &Queued { len, .. } in &self.queue {
            if count == MAX_NOTICES_PER_PACKET || (count > 0 && used + len > NOTICE_BUDGET_BYTES) {
                break;
            }
            used += len;
            count += 1;
        }
        let fresh = first.wrapping_add(count as u32) > self.sent_below;
        let due = self
            .last_sent
            .is_none_or(|at| now.saturating_sub(at) >= RESEND_EVERY);
        if !fresh && !due {
            return None;
        }
        self.last_sent = Some(now);
        let notices = self
            .queue
            .iter()
            .take(count)
            .map(|q| q.notice.clone())
            .collect();
        Some(Reliable { first, notices })
    }

    /// Records that the packet numbered `sequence` carries `reliable`.
    pub fn sent(&mut self, sequence: u16, reliable: &Reliable<G>) {
        let end = reliable.first.wrapping_add(reliable.notices.len() as u32);
        self.sent_below = self.sent_below.max(end);
        if self.in_flight.len() == IN_FLIGHT {
            self.in_flight.pop_front();
        }
        self.in_flight.push_back((sequence, end));
    }

    /// The client acknowledged packet `sequence`.
    pub fn on_ack(&mut self, sequence: u16) {
        let Some(&(_, end)) = self.in_flight.iter().find(|(s, _)| *s == sequence) else {
            return;
        };
        while self.queue.front().is_some_and(|q| q.number < end) {
            if let Some(Queued {
                notice: Notice::Event(_),
                ..
            }) = self.queue.pop_front()
            {
                self.queued_events -= 1;
            }
        }
    }
}

/// What an [`Inbox`] refused or lost, for the client's report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InboxStats {
    /// Notices delivered.
    pub delivered: u64,
    /// Notices received again (already delivered).
    pub repeats: u64,
    /// Packets that started past the next expected number (never sent by a correct
    /// server: counted and ignored).
    pub gaps: u64,
    /// Shared data that did not decode.
    pub bad_shared: u64,
    /// Events the application did not take in time, dropped oldest first.
    pub events_dropped: u64,
}

/// The client's end: delivers notices in order, once, and keeps what they say.
#[derive(Debug)]
pub struct Inbox<G: Game> {
    next: u32,
    assembling: Vec<u8>,
    shared: Option<G::Shared>,
    /// The match's settings, once told.
    config: Option<MatchConfig>,
    /// How far a player sees on the server, metres, once told.
    view_radius_m: Option<f32>,
    /// Bumped each time new shared data arrives.
    shared_version: u64,
    names: BTreeMap<PlayerId, String>,
    events: VecDeque<G::Event>,
    stats: InboxStats,
}

impl<G: Game> Default for Inbox<G> {
    fn default() -> Self {
        Self {
            next: 0,
            assembling: Vec::new(),
            shared: None,
            config: None,
            view_radius_m: None,
            shared_version: 0,
            names: BTreeMap::new(),
            events: VecDeque::new(),
            stats: InboxStats::default(),
        }
    }
}

impl<G: Game> Inbox<G> {
    /// A new connection: its numbering starts at 0. What was learned is kept until the new
    /// server says otherwise.
    pub fn restart(&mut self) {
        self.next = 0;
        self.assembling.clear();
    }

    /// Takes over what the connection opened ahead of a handoff received (its numbering,
    /// its shared data, its events), keeping the names already known.
    pub fn adopt(&mut self, ahead: Inbox<G>) {
        self.next = ahead.next;
        self.assembling = ahead.assembling;
        if ahead.shared.is_some() {
            self.shared = ahead.shared;
            self.shared_version += 1;
        }
        if ahead.config.is_some() {
            self.config = ahead.config;
            self.view_radius_m = ahead.view_radius_m;
        }
        self.names.extend(ahead.names);
        for event in ahead.events {
            if self.events.len() >= MAX_UNREAD_EVENTS {
                self.events.pop_front();
                self.stats.events_dropped += 1;
            }
            self.events.push_back(event);
        }
        self.stats.delivered += ahead.stats.delivered;
        self.stats.repeats += ahead.stats.repeats;
        self.stats.gaps += ahead.stats.gaps;
        self.stats.bad_shared += ahead.stats.bad_shared;
        self.stats.events_dropped += ahead.stats.events_dropped;
    }

    /// Takes one packet's notices.
    pub fn handle(&mut self, reliable: Reliable<G>) {
        if reliable.first > self.next {
            self.stats.gaps += 1;
            return;
        }
        for (offset, notice) in reliable.notices.into_iter().enumerate() {
            let number = reliable.first.wrapping_add(offset as u32);
            if number < self.next {
                self.stats.repeats += 1;
                continue;
            }
            self.next = number.wrapping_add(1);
            self.stats.delivered += 1;
            self.deliver(notice);
        }
    }

    fn deliver(&mut self, notice: Notice<G>) {
        match notice {
            Notice::Shared { part, parts, bytes } => {
                if part == 0 {
                    self.assembling.clear();
                }
                self.assembling.extend_from_slice(&bytes);
                if self.assembling.len() > usize::from(MAX_SHARED_PARTS) * SHARED_PART_BYTES {
                    // Parts without a first: a broken server. Start over, counted.
                    self.assembling = Vec::new();
                    self.stats.bad_shared += 1;
                } else if u32::from(part) + 1 == u32::from(parts) {
                    let limit = bincode::config::standard()
                        .with_limit::<{ MAX_SHARED_PARTS as usize * SHARED_PART_BYTES * 4 }>();
                    match bincode::serde::decode_from_slice::<G::Shared, _>(&self.assembling, limit)
                    {
                        Ok((shared, _)) => {
                            self.shared = Some(shared);
                            self.shared_version += 1;
                        }
                        Err(_) => self.stats.bad_shared += 1,
                    }
                    self.assembling = Vec::new();
                }
            }
            Notice::Config {
                config,
                view_radius_m,
            } => {
                self.config = Some(config);
                self.view_radius_m = Some(view_radius_m);
            }
            Notice::Name { player, name } => {
                if self.names.len() >= MAX_NAMES && !self.names.contains_key(&player) {
                    self.names.pop_first();
                }
                self.names.insert(player, name);
            }
            Notice::Event(event) => {
                if self.events.len() >= MAX_UNREAD_EVENTS {
                    self.events.pop_front();
                    self.stats.events_dropped += 1;
                }
                self.events.push_back(event);
            }
        }
    }

    /// The game's shared data, once it arrived.
    pub fn shared(&self) -> Option<&G::Shared> {
        self.shared.as_ref()
    }

    /// The match's settings, once told (kept across a new connection until it tells its own).
    pub fn config(&self) -> Option<&MatchConfig> {
        self.config.as_ref()
    }

    /// How far a player sees on the server, metres, once told (kept across a new
    /// connection until it tells its own).
    pub fn view_radius_m(&self) -> Option<f32> {
        self.view_radius_m
    }

    /// Goes up each time shared data arrives (a new server sends its own).
    pub fn shared_version(&self) -> u64 {
        self.shared_version
    }

    /// A player's name, if a notice told it.
    pub fn name(&self, player: PlayerId) -> Option<&str> {
        self.names.get(&player).map(String::as_str)
    }

    /// Events not yet taken, oldest first.
    pub fn take_events(&mut self) -> impl Iterator<Item = G::Event> + '_ {
        self.events.drain(..)
    }

    /// What was delivered, repeated and refused.
    pub fn stats(&self) -> InboxStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{GameEvent, Shooter, ShooterShared, WorldConfig};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn notices_arrive_once_in_order_over_a_lossy_link() {
        let mut outbox = Outbox::<Shooter>::default();
        let mut inbox = Inbox::<Shooter>::default();
        let events: Vec<GameEvent> = (0..200)
            .map(|i| GameEvent::Killed {
                victim: PlayerId(i),
                by: PlayerId(i + 1),
            })
            .collect();
        let mut sequence = 0u16;
        let mut now = ms(0);
        let mut queued = events.iter();
        let mut got = Vec::new();
        // Every third packet is lost; every packet that arrives is acknowledged.
        for step in 0..2000u32 {
            if let Some(event) = queued.next() {
                assert!(outbox.push_event(*event));
            }
            now += ms(17);
            if let Some(reliable) = outbox.poll(now) {
                sequence = sequence.wrapping_add(1);
                outbox.sent(sequence, &reliable);
                if step % 3 != 0 {
                    inbox.handle(reliable.clone());
                    // The same packet again (a duplicate on the wire): ignored.
                    inbox.handle(reliable);
                    outbox.on_ack(sequence);
                }
            }
            got.extend(inbox.take_events());
            if got.len() == events.len() && outbox.unacknowledged() == 0 {
                break;
            }
        }
        assert_eq!(got, events);
        assert_eq!(outbox.unacknowledged(), 0);
        assert!(inbox.stats().repeats > 0);
        assert_eq!(inbox.stats().gaps, 0);
    }

    #[test]
    fn the_settings_and_view_radius_arrive_first_and_survive_a_new_connection() {
        let config = MatchConfig {
            max_players: 8,
            tick_hz: 30,
            seed: 5,
        };
        let mut outbox = Outbox::<Shooter>::default();
        outbox.push_config(config, 12.5);
        outbox.push_name(PlayerId(1), "ann");
        let mut inbox = Inbox::<Shooter>::default();
        assert_eq!((inbox.config(), inbox.view_radius_m()), (None, None));
        let reliable = outbox.poll(ms(0)).expect("something to send");
        assert!(matches!(reliable.notices[0], Notice::Config { .. }));
        inbox.handle(reliable);
        assert_eq!(inbox.config(), Some(&config));
        assert_eq!(inbox.view_radius_m(), Some(12.5));
        // A new connection: what was told stays until the new server tells its own.
        inbox.restart();
        assert_eq!(inbox.view_radius_m(), Some(12.5));
    }

    #[test]
    fn shared_data_larger_than_a_datagram_arrives_whole() {
        let shared = ShooterShared::of(&crate::sim::World::new(WorldConfig {
            max_players: 4096,
            tick_hz: 60,
            seed: 9,
        }));
        let mut outbox = Outbox::<Shooter>::default();
        outbox.push_shared(&shared);
        assert!(outbox.unacknowledged() > 1, "one part only: test too small");
        let mut inbox = Inbox::<Shooter>::default();
        for (i, sequence) in (1..=10u16).enumerate() {
            let Some(reliable) = outbox.poll(ms(200 * i as u64)) else {
                break;
            };
            outbox.sent(sequence, &reliable);
            inbox.handle(reliable);
            outbox.on_ack(sequence);
        }
        assert_eq!(inbox.shared(), Some(&shared));
        assert_eq!(outbox.unacknowledged(), 0);
    }

    #[test]
    fn a_client_that_acknowledges_nothing_costs_a_bounded_queue() {
        let mut outbox = Outbox::<Shooter>::default();
        for i in 0..1000 {
            outbox.push_event(GameEvent::Respawned {
                player: PlayerId(i),
            });
        }
        assert_eq!(outbox.unacknowledged(), MAX_QUEUED_EVENTS);
        assert_eq!(outbox.events_dropped, 1000 - MAX_QUEUED_EVENTS as u64);
        let reliable = outbox.poll(ms(0)).expect("something to send");
        assert!(reliable.notices.len() <= MAX_NOTICES_PER_PACKET);
        outbox.sent(1, &reliable);
        assert!(outbox.poll(ms(1)).is_none(), "resent before its time");
        assert!(outbox.poll(RESEND_EVERY).is_some());
    }

    #[test]
    fn a_packet_that_skips_ahead_is_refused_and_counted() {
        let mut inbox = Inbox::<Shooter>::default();
        inbox.handle(Reliable {
            first: 5,
            notices: vec![Notice::Event(GameEvent::Respawned {
                player: PlayerId(1),
            })],
        });
        assert_eq!(inbox.stats().gaps, 1);
        assert_eq!(inbox.take_events().count(), 0);
    }
}
