//! What one client is sent each snapshot: its view as a delta against the newest view it
//! acknowledged, filled by priority within its byte budget.
//!
//! # Per client
//!
//! - A ring of the views sent ([`SENT_RING`]), each with the packet sequence it went in
//!   and whether it was acknowledged. A view records exactly what the client will hold
//!   once it reads that snapshot: its baseline's entities, less the removed ones, with the
//!   updates applied. Entities the budget left out keep their baseline state there (or are
//!   absent, if the client never had them), so the next delta is made against the truth.
//! - A priority per entity in view (Gaffer's priority accumulator): each snapshot that
//!   does not bring an entity up to date adds the game's weight ([`Seen::priority`]) to it;
//!   bringing it up to date resets it. When the changes do not all fit, the highest
//!   priorities go first, the client's own body before anything.
//! - A byte budget: a token bucket refilled each tick by `bytes_per_s / tick_hz` and
//!   capped at a few ticks' worth. A snapshot may spend what is in it; with less than
//!   [`MIN_SNAPSHOT_BYTES`] the snapshot waits (the client's rate drops, the simulation's
//!   does not).
//!
//! # Calling order
//!
//! [`Replicator::refill`] every tick; [`Replicator::write`] when the client is due a
//! snapshot (it returns the datagram's length, or `None` when the budget says wait);
//! [`Replicator::on_ack`] for each of the client's acknowledgements.
//!
//! In steady state nothing here allocates: every list is kept and reused.

use arena_shared::game::{Game, MatchConfig, NetEntityId, Seen, Tick};
use arena_shared::netcode::MAX_PAYLOAD_BYTES;
use arena_shared::protocol::delta::{
    MAX_BASELINE_TICKS, MAX_COUNT_BITS, SectionWriter, update_overhead_bits,
};
use arena_shared::protocol::{
    EncodeError, PacketHeader, Replicated, ServerMessage, SnapshotHead, encode_snapshot,
};

use crate::encodings::{Encodings, Update};

/// Views remembered per client (half a second of snapshots at 60 Hz).
pub const SENT_RING: usize = 32;
/// Bytes a netcode payload packet adds to its payload (prefix, sequence, tag): what the
/// budget pays for besides the snapshot itself.
pub const DATAGRAM_OVERHEAD: usize = 25;
/// The smallest snapshot worth sending, in bytes with its overhead: below it, wait.
pub const MIN_SNAPSHOT_BYTES: usize = 96;
/// The least `--client-bytes-per-s` allowed: a [`MIN_SNAPSHOT_BYTES`] snapshot 20 times a
/// second.
pub const MIN_CLIENT_BYTES_PER_S: u32 = 1920;
/// The bucket holds at least this many ticks' worth, and at least one full datagram.
const CAP_TICKS: f64 = 8.0;
/// Rewrites after a choice that still did not fit (each drops the lowest priority).
const MAX_RETRIES: usize = 8;

/// Whether a sent view can be a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Free,
    InFlight,
    Acked,
}

#[derive(Debug)]
struct SentView<G: Game> {
    fate: Fate,
    sequence: u16,
    /// The head sent (its tick is the view's).
    head: SnapshotHead<G>,
    /// Sorted by index.
    entities: Vec<Replicated<G::Entity>>,
}

/// One entity in view and how long it has waited.
#[derive(Debug, Clone, Copy)]
struct Waiting {
    id: NetEntityId,
    priority: f32,
    /// The last tick a snapshot brought it up to date (or it came into view).
    since: Tick,
}

/// An entity in view whose state differs from the baseline's.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// Index into the seen list.
    seen: usize,
    /// Index into the baseline view, if the client holds it.
    base: Option<usize>,
    priority: f32,
    chosen: bool,
}

/// What a written snapshot carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Datagram payload length.
    pub len: usize,
    /// Entities in view this snapshot brought up to date (sent, or unchanged).
    pub carried: usize,
    /// Entities in view it did not (the budget left them for later).
    pub stale: usize,
    /// The longest an entity in view has waited, in ticks.
    pub wait_max: u32,
    /// Whether it had no baseline.
    pub full: bool,
}

/// Entities each remembered view (and the waits) has room for from the start: a view up
/// to this size never makes its client's lists grow (20 KiB a client for the shooter).
const VIEW_RESERVE: usize = 32;

/// What one snapshot's writing needs and no client keeps: shared by the clients one
/// worker writes, so its lists grow once, to the largest view, and never again, and an
/// entity update written for one client is copied for the next that needs it.
#[derive(Debug)]
pub struct Scratch<E> {
    /// The datagram written.
    out: Box<[u8; MAX_PAYLOAD_BYTES]>,
    waiting_next: Vec<Waiting>,
    candidates: Vec<Candidate>,
    order: Vec<usize>,
    removed: Vec<u32>,
    /// Entity updates written lately.
    pub encodings: Encodings<E>,
}

impl<E> Default for Scratch<E> {
    fn default() -> Self {
        Self {
            out: Box::new([0; MAX_PAYLOAD_BYTES]),
            waiting_next: Vec::with_capacity(VIEW_RESERVE),
            candidates: Vec::with_capacity(VIEW_RESERVE),
            order: Vec::with_capacity(VIEW_RESERVE),
            removed: Vec::with_capacity(VIEW_RESERVE),
            encodings: Encodings::default(),
        }
    }
}

impl<E> Scratch<E> {
    /// The datagram the last [`Replicator::write`] wrote (`len` from its [`Written`]).
    pub fn payload(&self, len: usize) -> &[u8] {
        &self.out[..len.min(MAX_PAYLOAD_BYTES)]
    }
}

/// One client's replication state. See the module docs.
#[derive(Debug)]
pub struct Replicator<G: Game> {
    ring: Vec<SentView<G>>,
    next: usize,
    waiting: Vec<Waiting>,
    credit: f64,
    per_tick: f64,
    cap: f64,
}

impl<G: Game> Replicator<G> {
    /// A client allowed `bytes_per_s` at `tick_hz`; its bucket starts full.
    pub fn new(bytes_per_s: u32, tick_hz: u32) -> Self {
        let per_tick =
            f64::from(bytes_per_s.max(MIN_CLIENT_BYTES_PER_S)) / f64::from(tick_hz.max(1));
        let cap = (per_tick * CAP_TICKS).max((MAX_PAYLOAD_BYTES + DATAGRAM_OVERHEAD) as f64);
        Self {
            ring: (0..SENT_RING)
                .map(|_| SentView {
                    fate: Fate::Free,
                    sequence: 0,
                    head: SnapshotHead::default(),
                    entities: Vec::with_capacity(VIEW_RESERVE),
                })
                .collect(),
            next: 0,
            waiting: Vec::with_capacity(VIEW_RESERVE),
            credit: cap,
            per_tick,
            cap,
        }
    }

    /// One tick's allowance into the bucket.
    pub fn refill(&mut self) {
        self.credit = (self.credit + self.per_tick).min(self.cap);
    }

    /// Payload bytes the next snapshot may spend (what its datagram may hold besides
    /// netcode's overhead), whether or not it is at least [`MIN_SNAPSHOT_BYTES`].
    pub fn room(&self) -> usize {
        (self.credit as usize)
            .saturating_sub(DATAGRAM_OVERHEAD)
            .min(MAX_PAYLOAD_BYTES)
    }

    /// The client acknowledged the packet `sequence`: a view it carried may be a baseline.
    pub fn on_ack(&mut self, sequence: u16) {
        if let Some(view) = self
            .ring
            .iter_mut()
            .find(|v| v.fate == Fate::InFlight && v.sequence == sequence)
        {
            view.fate = Fate::Acked;
        }
    }

    /// The view the snapshot of `tick` leaves the client with, if remembered: what the
    /// client holds once it reads that snapshot.
    pub fn view_sent(&self, tick: Tick) -> Option<&[Replicated<G::Entity>]> {
        self.ring
            .iter()
            .find(|v| v.fate != Fate::Free && v.head.tick == tick)
            .map(|v| v.entities.as_slice())
    }

    /// The newest acknowledged view young enough to be a baseline, other than the slot
    /// the next view goes into.
    fn baseline(&self, tick: Tick) -> Option<usize> {
        let oldest = tick.0.saturating_sub(u64::from(MAX_BASELINE_TICKS));
        (0..SENT_RING)
            .filter(|&i| i != self.next)
            .filter(|&i| {
                let v = &self.ring[i];
                v.fate == Fate::Acked && v.head.tick.0 >= oldest && v.head.tick < tick
            })
            .max_by_key(|&i| self.ring[i].head.tick)
    }

    /// Writes the snapshot `head` describes, with `seen` (sorted by index, each index
    /// once) as a delta, into `scratch`'s datagram ([`Scratch::payload`]), after `lead`
    /// (notices riding along, see [`encode_snapshot`]; they take from the budget).
    /// `Ok(None)`: the budget says wait.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &mut self,
        config: &MatchConfig,
        header: PacketHeader,
        lead: Option<&ServerMessage<G>>,
        mut head: SnapshotHead<G>,
        seen: &[Seen<G::Entity>],
        own: Option<NetEntityId>,
        scratch: &mut Scratch<G::Entity>,
    ) -> Result<Option<Written>, EncodeError> {
        if self.credit < MIN_SNAPSHOT_BYTES as f64 {
            return Ok(None);
        }
        let budget = self.room();
        let tick = head.tick;
        let baseline = self.baseline(tick);
        let ticks = baseline.map_or(0, |b| (tick.0 - self.ring[b].head.tick.0) as u32);
        head.baseline_ticks = ticks as u8;
        // Lent out of the ring while the new view is made (the next slot is never it).
        let (base_head, base) = match baseline {
            Some(b) => (
                Some(std::mem::take(&mut self.ring[b].head)),
                std::mem::take(&mut self.ring[b].entities),
            ),
            None => (None, Vec::new()),
        };
        let result = self.write_against(
            scratch,
            config,
            (header, lead),
            (base_head.as_ref(), head),
            (seen, own),
            (&base, ticks),
            budget,
        );
        if let (Some(b), Some(base_head)) = (baseline, base_head) {
            self.ring[b].head = base_head;
            self.ring[b].entities = base;
        }
        let written = result?;
        self.credit -= (written.len + DATAGRAM_OVERHEAD) as f64;
        Ok(Some(Written {
            full: baseline.is_none(),
            ..written
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn write_against(
        &mut self,
        scratch: &mut Scratch<G::Entity>,
        config: &MatchConfig,
        (header, lead): (PacketHeader, Option<&ServerMessage<G>>),
        (base_head, head): (Option<&SnapshotHead<G>>, SnapshotHead<G>),
        (seen, own): (&[Seen<G::Entity>], Option<NetEntityId>),
        (base, ticks): (&[Replicated<G::Entity>], u32),
        budget: usize,
    ) -> Result<Written, EncodeError> {
        self.find_changes(scratch, seen, base, own, head.tick);
        // One attempt at the datagram with the candidates chosen so far.
        let attempt = |scratch: &mut Scratch<G::Entity>, room: Option<&mut Option<usize>>| {
            let plan = Section {
                seen,
                base,
                ticks,
                removed: &scratch.removed,
                candidates: &scratch.candidates,
            };
            write_section::<G>(
                config,
                (header, lead),
                (base_head, &head),
                budget,
                (&mut scratch.out, &mut scratch.encodings),
                &plan,
                room,
            )
        };
        // Everything that changed, if it fits; else the highest priorities that fit.
        let mut room = None;
        let mut len = attempt(scratch, Some(&mut room));
        if len.is_err() {
            Self::choose(scratch, config, seen, base, ticks, room.unwrap_or(0));
            for _ in 0..MAX_RETRIES {
                len = attempt(scratch, None);
                if len.is_ok() {
                    break;
                }
                // The estimate was short: drop the lowest priority still chosen.
                match scratch
                    .order
                    .iter()
                    .rev()
                    .find(|&&c| scratch.candidates[c].chosen)
                {
                    Some(&c) => scratch.candidates[c].chosen = false,
                    None => break,
                }
            }
        }
        let len = len?;
        Ok(self.commit(scratch, seen, base, head, header.sequence, len))
    }

    /// Fills `removed` (baseline entities no longer in view) and `candidates` (entities in
    /// view that differ from the baseline, with their priorities).
    fn find_changes(
        &mut self,
        scratch: &mut Scratch<G::Entity>,
        seen: &[Seen<G::Entity>],
        base: &[Replicated<G::Entity>],
        own: Option<NetEntityId>,
        tick: Tick,
    ) {
        scratch.removed.clear();
        scratch.candidates.clear();
        scratch.waiting_next.clear();
        let mut b = 0;
        let mut w = 0;
        for (i, s) in seen.iter().enumerate() {
            while b < base.len() && base[b].id.index < s.id.index {
                scratch.removed.push(base[b].id.index);
                b += 1;
            }
            let held = match base.get(b) {
                Some(entry) if entry.id == s.id => {
                    b += 1;
                    Some(b - 1)
                }
                Some(entry) if entry.id.index == s.id.index => {
                    // The slot holds another entity now: the old one goes.
                    scratch.removed.push(entry.id.index);
                    b += 1;
                    None
                }
                _ => None,
            };
            while w < self.waiting.len() && self.waiting[w].id.index < s.id.index {
                w += 1;
            }
            let before = self.waiting.get(w).filter(|x| x.id == s.id).copied();
            let up_to_date = held.is_some_and(|h| base[h].state == s.state);
            let mut entry = before.unwrap_or(Waiting {
                id: s.id,
                priority: 0.0,
                since: tick,
            });
            if up_to_date {
                entry.priority = 0.0;
                entry.since = tick;
            } else {
                let weight = if Some(s.id) == own {
                    f32::INFINITY
                } else {
                    s.priority.max(f32::MIN_POSITIVE)
                };
                entry.priority += weight;
                scratch.candidates.push(Candidate {
                    seen: i,
                    base: held,
                    priority: entry.priority,
                    chosen: true,
                });
            }
            scratch.waiting_next.push(entry);
        }
        scratch
            .removed
            .extend(base[b..].iter().map(|entry| entry.id.index));
        std::mem::swap(&mut self.waiting, &mut scratch.waiting_next);
    }

    /// Chooses, highest priority first, the candidates whose upper-bound cost fits in
    /// `room` bits.
    fn choose(
        scratch: &mut Scratch<G::Entity>,
        config: &MatchConfig,
        seen: &[Seen<G::Entity>],
        base: &[Replicated<G::Entity>],
        ticks: u32,
        room: usize,
    ) {
        scratch.order.clear();
        scratch.order.extend(0..scratch.candidates.len());
        let candidates = &scratch.candidates;
        scratch.order.sort_unstable_by(|&a, &b| {
            candidates[b]
                .priority
                .total_cmp(&candidates[a].priority)
                .then(candidates[a].seen.cmp(&candidates[b].seen))
        });
        let mut left = room;
        for &c in &scratch.order {
            let candidate = &mut scratch.candidates[c];
            let s = &seen[candidate.seen];
            let held = candidate.base.map(|h| &base[h].state);
            let update = Update {
                index: s.id.index,
                base: held,
                ticks,
                now: &s.state,
            };
            let cost = scratch
                .encodings
                .cost::<G>(config, update)
                .map(|bits| bits + update_overhead_bits(s.id.index, candidate.base.is_some()));
            candidate.chosen = cost.is_some_and(|cost| cost <= left);
            if let Some(cost) = cost.filter(|_| candidate.chosen) {
                left -= cost;
            }
        }
    }

    /// Records the view the client will hold once it reads this snapshot, and the waits.
    fn commit(
        &mut self,
        scratch: &Scratch<G::Entity>,
        seen: &[Seen<G::Entity>],
        base: &[Replicated<G::Entity>],
        head: SnapshotHead<G>,
        sequence: u16,
        len: usize,
    ) -> Written {
        let tick = head.tick;
        let slot = self.next;
        self.next = (self.next + 1) % SENT_RING;
        let mut view = std::mem::take(&mut self.ring[slot].entities);
        view.clear();
        let mut c = 0;
        let mut stale = 0;
        let mut wait_max = 0;
        for (i, s) in seen.iter().enumerate() {
            let candidate = scratch.candidates.get(c).filter(|x| x.seen == i).copied();
            if candidate.is_some() {
                c += 1;
            }
            let waiting = &mut self.waiting[i];
            match candidate {
                // Unchanged: the baseline's state is this one.
                None => view.push(Replicated {
                    id: s.id,
                    state: s.state.clone(),
                }),
                Some(x) if x.chosen => {
                    waiting.priority = 0.0;
                    waiting.since = tick;
                    view.push(Replicated {
                        id: s.id,
                        state: s.state.clone(),
                    });
                }
                Some(x) => {
                    stale += 1;
                    wait_max = wait_max.max((tick.0 - waiting.since.0) as u32);
                    if let Some(h) = x.base {
                        view.push(base[h].clone());
                    }
                }
            }
        }
        let entry = &mut self.ring[slot];
        entry.entities = view;
        entry.fate = Fate::InFlight;
        entry.sequence = sequence;
        entry.head = head;
        Written {
            len,
            carried: seen.len() - stale,
            stale,
            wait_max,
            full: false,
        }
    }
}

/// What one attempt at a snapshot writes, besides its head.
struct Section<'a, E> {
    /// The entities in view, by index.
    seen: &'a [Seen<E>],
    /// The baseline view, by index (empty for a full snapshot).
    base: &'a [Replicated<E>],
    /// The baseline's age.
    ticks: u32,
    /// Indices of the baseline's entities no longer in view.
    removed: &'a [u32],
    /// The changed entities, by index; the chosen ones are written.
    candidates: &'a [Candidate],
}

impl<E> Section<'_, E> {
    /// The baseline's entities still in view, in index order, each with its state now if
    /// this snapshot updates it (a chosen candidate).
    fn held_entities(&self) -> impl Iterator<Item = (&Replicated<E>, Option<&E>)> + Clone {
        let mut removed = self.removed.iter().peekable();
        let mut updates = self
            .candidates
            .iter()
            .filter(|c| c.chosen)
            .filter_map(|c| c.base.map(|h| (h, &self.seen[c.seen].state)))
            .peekable();
        self.base.iter().enumerate().filter_map(move |(h, entry)| {
            if removed.next_if_eq(&&entry.id.index).is_some() {
                return None;
            }
            let now = updates.next_if(|&(at, _)| at == h).map(|(_, now)| now);
            Some((entry, now))
        })
    }
}

/// Writes the head and the section: the removed entities, a bit per held entity (with
/// the chosen updates), the chosen new entities in index order, and the stale count.
/// `room` (first try) learns the bits left for the updates.
fn write_section<G: Game>(
    config: &MatchConfig,
    (header, lead): (PacketHeader, Option<&ServerMessage<G>>),
    (base_head, head): (Option<&SnapshotHead<G>>, &SnapshotHead<G>),
    budget: usize,
    (out, encodings): (&mut [u8; MAX_PAYLOAD_BYTES], &mut Encodings<G::Entity>),
    plan: &Section<'_, G::Entity>,
    room: Option<&mut Option<usize>>,
) -> Result<usize, EncodeError> {
    encode_snapshot(header, lead, (base_head, head), budget, out, |bits| {
        let mut section = SectionWriter::default();
        section.removed(bits, plan.removed.iter().copied());
        // Every baseline entity not removed is held: an entity in view.
        let held = plan.base.len() - plan.removed.len();
        if let Some(room) = room {
            // Four counts yet to write at their largest, the mode bit, and a bit per held
            // entity (what naming the updated ones costs at most).
            let fixed = 4 * MAX_COUNT_BITS + 1 + held;
            *room = Some(bits.capacity_bits().saturating_sub(bits.bits() + fixed));
        }
        let chosen = plan.candidates.iter().filter(|c| c.chosen);
        let held_entities = plan.held_entities();
        let updated = held_entities
            .clone()
            .enumerate()
            .filter(|(_, (_, now))| now.is_some());
        section.begin_held(bits, held, updated.map(|(place, _)| place));
        for (base, now) in held_entities {
            section.name_held(bits, now.is_some());
            if let Some(now) = now {
                let update = Update {
                    index: base.id.index,
                    base: Some(&base.state),
                    ticks: plan.ticks,
                    now,
                };
                encodings.write::<G>(bits, config, update);
            }
        }
        let new = chosen.clone().filter(|c| c.base.is_none());
        section.begin_new(bits, new.clone().count());
        for c in new {
            let s = &plan.seen[c.seen];
            section.name_new(bits, s.id);
            let update = Update {
                index: s.id.index,
                base: None,
                ticks: 0,
                now: &s.state,
            };
            encodings.write::<G>(bits, config, update);
        }
        let stale = plan.candidates.len() - chosen.count();
        section.end(bits, stale.min(usize::from(u16::MAX)) as u16);
    })
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use arena_shared::protocol::baselines::Baselines;
    use arena_shared::protocol::{ServerMessage, decode_server};
    use arena_shared::sim::{EntityState, NetEntityKind, Shooter};
    use rand::{RngExt, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    use super::*;

    const CONFIG: MatchConfig = MatchConfig {
        max_players: 64,
        tick_hz: 60,
        seed: 1,
    };

    /// Entities that wander, some standing still, some leaving and coming back as new
    /// ones (a new generation in the same slot).
    struct World {
        entities: Vec<Seen<EntityState>>,
        rng: Pcg64Mcg,
    }

    impl World {
        fn new(count: u32, seed: u64) -> Self {
            let mut rng = Pcg64Mcg::seed_from_u64(seed);
            let entities = (0..count)
                .map(|i| Seen {
                    id: NetEntityId {
                        index: i * 3,
                        generation: 1,
                    },
                    priority: 1.0 + (i % 4) as f32,
                    state: EntityState {
                        kind: NetEntityKind::Player,
                        x: rng.random_range(1000..3000),
                        y: rng.random_range(1000..3000),
                        vx: rng.random_range(-2000..2000),
                        vy: 0,
                        health: 100,
                    },
                })
                .collect();
            Self { entities, rng }
        }

        fn step(&mut self) {
            for (i, e) in self.entities.iter_mut().enumerate() {
                if i % 5 == 0 {
                    continue; // standing still
                }
                if self.rng.random_bool(0.05) {
                    e.state.vx = self.rng.random_range(-2000..2000);
                }
                e.state.x =
                    (i32::from(e.state.x) + i32::from(e.state.vx) / 480).clamp(0, 65535) as u16;
                if self.rng.random_bool(0.01) {
                    e.state.health = self.rng.random_range(1..=100);
                }
                if self.rng.random_bool(0.005) {
                    e.id.generation += 1;
                }
            }
        }

        /// What the client sees: all but a changing few.
        fn seen(&mut self) -> Vec<Seen<EntityState>> {
            let hidden = self.rng.random_range(0..self.entities.len() as u32 * 3);
            self.entities
                .iter()
                .filter(|e| e.id.index != hidden)
                .cloned()
                .collect()
        }
    }

    fn head(tick: u64) -> SnapshotHead<Shooter> {
        SnapshotHead {
            tick: Tick(tick),
            last_applied_input: tick as u32,
            inputs_applied: tick / 2,
            input_margin: Some((tick % 5) as i8),
            ..Default::default()
        }
    }

    /// A link that loses, duplicates and reorders, by a seeded RNG.
    struct Link {
        rng: Pcg64Mcg,
        queue: VecDeque<(u64, Vec<u8>)>,
    }

    impl Link {
        fn send(&mut self, now: u64, bytes: &[u8]) {
            if self.rng.random_bool(0.2) {
                return;
            }
            let copies = if self.rng.random_bool(0.1) { 2 } else { 1 };
            for _ in 0..copies {
                let delay = self.rng.random_range(1..6);
                self.queue.push_back((now + delay, bytes.to_vec()));
            }
        }

        fn arrived(&mut self, now: u64) -> Vec<Vec<u8>> {
            let (due, later): (Vec<_>, Vec<_>) =
                self.queue.drain(..).partition(|(at, _)| *at <= now);
            self.queue = later.into();
            let mut due: Vec<Vec<u8>> = due.into_iter().map(|(_, b)| b).collect();
            // Reordered within a tick.
            if due.len() > 1 && self.rng.random_bool(0.5) {
                due.reverse();
            }
            due
        }
    }

    /// Plays `ticks` ticks; returns (datagram bytes each tick, snapshots read, refused).
    fn play(seed: u64, count: u32, bytes_per_s: u32, ticks: u64) -> (Vec<usize>, u64, u64, u32) {
        let mut world = World::new(count, seed);
        let mut replicator = Replicator::<Shooter>::new(bytes_per_s, CONFIG.tick_hz);
        let mut client = Baselines::<Shooter>::default();
        let mut down = Link {
            rng: Pcg64Mcg::seed_from_u64(seed + 1),
            queue: VecDeque::new(),
        };
        let mut up = Link {
            rng: Pcg64Mcg::seed_from_u64(seed + 2),
            queue: VecDeque::new(),
        };
        let mut scratch = Scratch::default();
        let mut sequence = 0u16;
        let mut sizes = Vec::new();
        let (mut read, mut refused, mut wait_max, mut deltas) = (0, 0, 0, 0);
        for tick in 1..=ticks {
            world.step();
            let seen = world.seen();
            replicator.refill();
            let header = PacketHeader {
                sequence,
                ack: 0,
                ack_bits: 0,
            };
            let written = replicator
                .write(&CONFIG, header, None, head(tick), &seen, None, &mut scratch)
                .expect("always fits");
            match written {
                Some(w) => {
                    sequence = sequence.wrapping_add(1);
                    sizes.push(w.len + DATAGRAM_OVERHEAD);
                    wait_max = wait_max.max(w.wait_max);
                    deltas += u64::from(!w.full);
                    down.send(tick, scratch.payload(w.len));
                }
                None => sizes.push(0),
            }
            for bytes in down.arrived(tick) {
                let (header, message, section) = decode_server::<Shooter>(&bytes).expect("valid");
                assert_eq!(message, ServerMessage::Snapshot);
                match client.resolve(&CONFIG, section) {
                    Ok(snapshot) => {
                        read += 1;
                        let t = snapshot.tick;
                        assert_eq!(
                            Some(snapshot.entities.as_slice()),
                            replicator.view_sent(t),
                            "seed {seed} tick {}: the client's view is the server's",
                            t.0
                        );
                        let sent = head(t.0);
                        assert_eq!(
                            (snapshot.last_applied_input, snapshot.inputs_applied),
                            (sent.last_applied_input, sent.inputs_applied),
                            "seed {seed} tick {}: the client's head is the server's",
                            t.0
                        );
                        assert_eq!(snapshot.input_margin, sent.input_margin);
                        up.send(tick, &header.sequence.to_le_bytes());
                    }
                    Err(_) => refused += 1,
                }
            }
            for ack in up.arrived(tick) {
                replicator.on_ack(u16::from_le_bytes([ack[0], ack[1]]));
            }
        }
        assert!(
            deltas > ticks / 2,
            "seed {seed}: {deltas} deltas: baselines are used"
        );
        (sizes, read, refused, wait_max)
    }

    #[test]
    fn the_client_view_equals_the_server_record_under_loss_duplication_and_reordering() {
        for seed in 0..6 {
            let (_, read, refused, _) = play(seed, 40, 16_000, 600);
            assert_eq!(
                refused, 0,
                "seed {seed}: only acknowledged views are baselines"
            );
            assert!(read > 400, "seed {seed}: {read} snapshots read");
        }
    }

    #[test]
    fn the_budget_is_never_exceeded_and_every_entity_is_eventually_sent() {
        let bytes_per_s = 4_000;
        let (sizes, read, refused, wait_max) = play(7, 120, bytes_per_s, 1200);
        assert_eq!(refused, 0);
        assert!(read > 100, "{read}");
        let per_tick = f64::from(bytes_per_s) / f64::from(CONFIG.tick_hz);
        let cap = (per_tick * CAP_TICKS).max((MAX_PAYLOAD_BYTES + DATAGRAM_OVERHEAD) as f64);
        let mut spent = 0.0;
        for (t, &size) in sizes.iter().enumerate() {
            spent += size as f64;
            assert!(
                spent <= cap + per_tick * (t + 1) as f64,
                "tick {t}: {spent} bytes spent"
            );
        }
        // 120 entities changing every tick cannot all go at 4 KB/s: they take turns, and
        // none waits long.
        assert!(
            sizes.iter().filter(|&&s| s == 0).count() > 0,
            "throttled at times"
        );
        assert!(
            wait_max > 0 && wait_max < 120,
            "waited {wait_max} ticks at most"
        );
    }

    #[test]
    fn a_throttled_client_gets_every_tick_again_once_its_view_quiets() {
        // 120 entities changing every tick need about 400 bytes a tick; 4 KB/s refills 67,
        // less than a snapshot may start with, so a busy view waits every other tick.
        let mut world = World::new(120, 11);
        let mut replicator = Replicator::<Shooter>::new(4_000, CONFIG.tick_hz);
        let mut scratch = Scratch::default();
        let mut sequence = 0u16;
        let mut tick = 0;
        // Plays `ticks` ticks, the world moving or not; every snapshot is acknowledged at
        // once. Returns the snapshots sent in the last half, and the stale count of the last.
        let mut phase = |moving: bool, ticks: u64| {
            let (mut sent, mut stale) = (0, usize::MAX);
            for i in 0..ticks {
                tick += 1;
                if moving {
                    world.step();
                }
                replicator.refill();
                let header = PacketHeader {
                    sequence,
                    ack: 0,
                    ack_bits: 0,
                };
                let written = replicator
                    .write(
                        &CONFIG,
                        header,
                        None,
                        head(tick),
                        &world.entities,
                        None,
                        &mut scratch,
                    )
                    .expect("fits");
                if let Some(w) = written {
                    replicator.on_ack(sequence);
                    sequence = sequence.wrapping_add(1);
                    stale = w.stale;
                    sent += u64::from(i >= ticks / 2);
                }
            }
            (sent, stale)
        };
        let (busy, _) = phase(true, 600);
        assert!(
            busy < 240,
            "a busy view over budget is throttled: {busy} of 300 ticks had a snapshot"
        );
        let (quiet, stale) = phase(false, 600);
        assert_eq!(quiet, 300, "a quiet view gets a snapshot every tick again");
        assert_eq!(stale, 0, "and everything in it is up to date");
    }

    #[test]
    fn the_own_body_goes_first_when_the_budget_is_tight() {
        let mut world = World::new(200, 3);
        let own = world.entities[150].id;
        let mut replicator = Replicator::<Shooter>::new(MIN_CLIENT_BYTES_PER_S, 60);
        let mut scratch = Scratch::default();
        let mut sent = 0;
        for tick in 1..300 {
            world.step();
            let seen = world.entities.clone();
            replicator.refill();
            let header = PacketHeader::default();
            if let Some(w) = replicator
                .write(
                    &CONFIG,
                    header,
                    None,
                    head(tick),
                    &seen,
                    Some(own),
                    &mut scratch,
                )
                .expect("fits")
            {
                sent += 1;
                let view = replicator.view_sent(Tick(tick)).expect("recorded");
                let body = seen.iter().find(|s| s.id == own).expect("in view");
                assert!(
                    view.iter().any(|e| e.id == own && e.state == body.state),
                    "tick {tick}: the own body is up to date"
                );
                assert!(w.stale > 0, "the rest does not fit");
            }
        }
        assert!(sent > 10);
    }
}
