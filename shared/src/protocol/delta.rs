//! Delta snapshots: the bit-packed entities that follow a snapshot's head
//! ([`super::head`]) in its section.
//!
//! A client's view is its entities in view, sorted by index. A snapshot changes the view
//! of its baseline (a snapshot of `baseline_ticks` ticks earlier that the client
//! acknowledged; none for a full snapshot) into the new one:
//!
//! ```text
//! removed:  count, then per entity the gap from the previous removed index
//! held:     count of the baseline's entities not removed; a mode bit; then either one
//!           bit per held entity in index order (set: the game's bits against the held
//!           state follow), or the count of updated held entities and per update its
//!           gap from the previous one in the held order, then the game's bits
//! new:      count, then per entity: index gap, generation, the game's bits (whole)
//! stale:    count of entities in view whose state this snapshot did not bring up to date
//! ```
//!
//! A held entity is named by its place in the baseline, never by its index: when most
//! held entities changed (a crowd running), a bit each is cheapest; when few did (a
//! crowd standing), gaps are, and unchanged entities then cost nothing. The writer takes
//! the cheaper of the two. Only entities new to the client carry their index (as the gap
//! from the previous new one). Counts, gaps and
//! generations are [`sized`](BitWriter::write_sized); the game codes its own state
//! ([`Game::write_entity`]). Reading validates everything: removed entities must be in
//! the baseline, the held count must be the baseline's less the removed (a section made
//! for another baseline is refused), new indices strictly increase and must not be held,
//! and nothing may follow the section. Which baseline a snapshot names, and refusing one
//! the client does not hold, is [`super::baselines`]'.

use super::bits::{BitError, BitReader, BitWriter, Widths};
use super::messages::Replicated;
use crate::game::{Game, MatchConfig, NetEntityId};

/// The oldest baseline a snapshot may name, in ticks (the client keeps a view this long;
/// the head has 6 bits for it).
pub const MAX_BASELINE_TICKS: u32 = 63;

const COUNT: Widths = [0, 4, 8, 16];
const GAP: Widths = [0, 3, 7, 32];
const GENERATION: Widths = [0, 4, 12, 32];
/// The most bits a count takes.
pub const MAX_COUNT_BITS: usize = 18;

/// Writes a section. Calling order: [`SectionWriter::removed`] once,
/// [`SectionWriter::begin_held`] once, [`SectionWriter::held`] once per held entity in
/// increasing index, [`SectionWriter::begin_new`] once, [`SectionWriter::new_entity`]
/// per new entity in increasing index, [`SectionWriter::end`]. (`name_held` and
/// `name_new`, each followed by the game's bits, stand for `held` and `new_entity`.)
#[derive(Debug, Default)]
pub struct SectionWriter {
    previous: Option<u32>,
    /// Held entities named by gaps (else by a bit each).
    gaps: bool,
    /// The next held entity's place in the held order.
    place: usize,
    /// The place of the previous updated held entity.
    updated: Option<usize>,
}

impl SectionWriter {
    /// Writes the removed entities' indices, increasing.
    pub fn removed(&mut self, out: &mut BitWriter, indices: impl ExactSizeIterator<Item = u32>) {
        out.write_sized(indices.len() as u64, &COUNT);
        let mut previous = None;
        for index in indices {
            write_gap(out, &mut previous, index);
        }
    }

    /// Starts the held entities: `count` follow (the baseline's, less the removed), and
    /// `updated` are the places (increasing, below `count`) of those that will be updated.
    pub fn begin_held(
        &mut self,
        out: &mut BitWriter,
        count: usize,
        updated: impl Iterator<Item = usize>,
    ) {
        out.write_sized(count as u64, &COUNT);
        let (mut updates, mut gap_bits, mut previous) = (0u64, 0usize, None);
        for place in updated {
            updates += 1;
            gap_bits += place_gap_bits(previous, place);
            previous = Some(place);
        }
        let gap_bits = gap_bits + super::bits::sized_bits(updates, &COUNT).unwrap_or(18) as usize;
        self.gaps = gap_bits < count;
        out.write_bool(self.gaps);
        if self.gaps {
            out.write_sized(updates, &COUNT);
        }
        self.place = 0;
        self.updated = None;
    }

    /// Writes one held entity: `update` is its state in the baseline and now, if this
    /// snapshot brings it up to date (as [`SectionWriter::begin_held`] was told); `None`
    /// carries the baseline's state. `ticks` is the baseline's age.
    pub fn held<G: Game>(
        &mut self,
        out: &mut BitWriter,
        config: &MatchConfig,
        ticks: u32,
        update: Option<(&G::Entity, &G::Entity)>,
    ) {
        self.name_held(out, update.is_some());
        if let Some((base, state)) = update {
            G::write_entity(config, Some(base), ticks, state, out);
        }
    }

    /// [`SectionWriter::held`] without the game's bits: names the next held entity as
    /// `updated` or not; if updated, the caller writes what [`Game::write_entity`] writes
    /// against its held state right after.
    pub fn name_held(&mut self, out: &mut BitWriter, updated: bool) {
        let place = self.place;
        self.place += 1;
        if self.gaps {
            if updated {
                out.write_sized(place_gap(self.updated, place), &GAP);
                self.updated = Some(place);
            }
        } else {
            out.write_bool(updated);
        }
    }

    /// Starts the new entities: `count` follow.
    pub fn begin_new(&mut self, out: &mut BitWriter, count: usize) {
        out.write_sized(count as u64, &COUNT);
        self.previous = None;
    }

    /// Writes one entity new to the client, whole.
    pub fn new_entity<G: Game>(
        &mut self,
        out: &mut BitWriter,
        config: &MatchConfig,
        id: NetEntityId,
        state: &G::Entity,
    ) {
        self.name_new(out, id);
        G::write_entity(config, None, 0, state, out);
    }

    /// [`SectionWriter::new_entity`] without the game's bits: names the entity; the caller
    /// writes what [`Game::write_entity`] writes of it whole right after.
    pub fn name_new(&mut self, out: &mut BitWriter, id: NetEntityId) {
        write_gap(out, &mut self.previous, id.index);
        out.write_sized(u64::from(id.generation), &GENERATION);
    }

    /// Ends the section.
    pub fn end(self, out: &mut BitWriter, stale: u16) {
        out.write_sized(u64::from(stale), &COUNT);
    }
}

/// Bits an entity's update costs besides the game's own, whatever entity is written
/// before it: nothing for a held one (its bit is written whether it is updated or not);
/// for a new one its gap (at most `index`) and its generation at their widest. An upper
/// bound, for choosing what fits before writing.
pub fn update_overhead_bits(index: u32, held: bool) -> usize {
    if held {
        return 0;
    }
    let gap_bits = super::bits::sized_bits(u64::from(index), &GAP).unwrap_or(34) as usize;
    gap_bits + 2 + 32
}

/// The gap from the updated held entity at `previous` to the one at `place`.
fn place_gap(previous: Option<usize>, place: usize) -> u64 {
    place.saturating_sub(previous.map_or(0, |p| p + 1)) as u64
}

/// Bits [`place_gap`] takes.
fn place_gap_bits(previous: Option<usize>, place: usize) -> usize {
    super::bits::sized_bits(place_gap(previous, place), &GAP).unwrap_or(34) as usize
}

fn write_gap(out: &mut BitWriter, previous: &mut Option<u32>, index: u32) {
    match *previous {
        Some(p) if index <= p => out.fail(),
        Some(p) => out.write_sized(u64::from(index - p - 1), &GAP),
        None => out.write_sized(u64::from(index), &GAP),
    }
    *previous = Some(index);
}

fn read_gap(input: &mut BitReader, previous: &mut Option<u32>) -> Result<u32, BitError> {
    let gap = input.read_sized_u32(&GAP)?;
    let index = match *previous {
        Some(p) => p.checked_add(1).and_then(|n| n.checked_add(gap)),
        None => Some(gap),
    }
    .ok_or(BitError::OutOfRange("entity index"))?;
    *previous = Some(index);
    Ok(index)
}

/// Applies `section` (the entities alone, nothing after them) to `base` (sorted by
/// index), writing the new view into `out` (cleared first; sorted by index). Returns the
/// stale count.
pub fn apply<G: Game>(
    config: &MatchConfig,
    base: &[Replicated<G::Entity>],
    ticks: u32,
    section: &[u8],
    out: &mut Vec<Replicated<G::Entity>>,
) -> Result<u16, BitError> {
    let mut input = BitReader::new(section);
    let stale = read::<G>(config, base, ticks, &mut input, out)?;
    input.finish()?;
    Ok(stale)
}

/// [`apply`] reading from `input`, which may go on after the entities.
pub fn read<G: Game>(
    config: &MatchConfig,
    base: &[Replicated<G::Entity>],
    ticks: u32,
    input: &mut BitReader,
    out: &mut Vec<Replicated<G::Entity>>,
) -> Result<u16, BitError> {
    out.clear();
    let removed_count = input.read_sized(&COUNT)? as usize;
    if removed_count > base.len() {
        return Err(BitError::OutOfRange("more removed than held"));
    }
    let mut removed = Vec::with_capacity(removed_count);
    let mut previous = None;
    for _ in 0..removed_count {
        removed.push(read_gap(input, &mut previous)?);
    }
    let held_count = input.read_sized(&COUNT)? as usize;
    if held_count != base.len() - removed_count {
        return Err(BitError::OutOfRange("held count is not the baseline's"));
    }
    // The held entities, in the baseline's order, each updated or carried.
    let gaps = input.read_bool()?;
    let mut updates_left = if gaps { input.read_sized(&COUNT)? } else { 0 };
    if updates_left > held_count as u64 {
        return Err(BitError::OutOfRange("more updates than held"));
    }
    // In gap mode: the place of the next updated held entity.
    let mut next_update = None;
    if updates_left > 0 {
        next_update = Some(input.read_sized_u32(&GAP)? as usize);
    }
    // Room for the held entities at once, not by doubling as they are pushed (a fresh
    // `out` per snapshot grew four or five times).
    out.reserve(held_count);
    let mut removed_left = removed.iter().peekable();
    let mut place = 0;
    for entry in base {
        if removed_left.next_if_eq(&&entry.id.index).is_some() {
            continue;
        }
        if removed_left.peek().is_some_and(|&&r| r < entry.id.index) {
            return Err(BitError::OutOfRange("removed entity not held"));
        }
        let updated = if gaps {
            next_update == Some(place)
        } else {
            input.read_bool()?
        };
        let state = if updated {
            G::read_entity(config, Some(&entry.state), ticks, input)?
        } else {
            entry.state.clone()
        };
        if gaps && updated {
            updates_left -= 1;
            next_update = match updates_left {
                0 => None,
                _ => {
                    let gap = input.read_sized_u32(&GAP)? as usize;
                    Some(place.saturating_add(1).saturating_add(gap))
                }
            };
        }
        place += 1;
        out.push(Replicated {
            id: entry.id,
            state,
        });
    }
    if next_update.is_some() {
        return Err(BitError::OutOfRange("update past the held entities"));
    }
    if removed_left.next().is_some() {
        return Err(BitError::OutOfRange("removed entity not held"));
    }
    let new_count = input.read_sized(&COUNT)? as usize;
    // Every new entity takes bits: a forged count cannot reserve more than the datagram.
    out.reserve(new_count.min(input.remaining_bits()));
    let mut previous = None;
    for _ in 0..new_count {
        let index = read_gap(input, &mut previous)?;
        let generation = input.read_sized_u32(&GENERATION)?;
        let state = G::read_entity(config, None, 0, input)?;
        out.push(Replicated {
            id: NetEntityId { index, generation },
            state,
        });
    }
    // Both runs are sorted by index: merge them, refusing an index held twice.
    if new_count > 0 {
        out.sort_by_key(|e| e.id.index);
        if out.windows(2).any(|w| w[0].id.index == w[1].id.index) {
            return Err(BitError::OutOfRange("new entity already held"));
        }
    }
    u16::try_from(input.read_sized(&COUNT)?).map_err(|_| BitError::OutOfRange("stale count"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{EntityState, NetEntityKind, Shooter};
    use proptest::prelude::*;

    type View = Vec<Replicated<EntityState>>;

    const CONFIG: MatchConfig = MatchConfig {
        max_players: 8,
        tick_hz: 60,
        seed: 1,
    };

    fn entity(index: u32, generation: u32, x: u16, vx: i16) -> Replicated<EntityState> {
        Replicated {
            id: NetEntityId { index, generation },
            state: EntityState {
                kind: NetEntityKind::Player,
                x,
                y: 100,
                vx,
                vy: 0,
                health: 100,
            },
        }
    }

    /// The section that turns `base` into `target` (both sorted by index).
    fn section(base: &[Replicated<EntityState>], target: &[Replicated<EntityState>]) -> Vec<u8> {
        let mut buf = [0u8; 4096];
        let mut out = BitWriter::new(&mut buf, 4096 * 8);
        let mut writer = SectionWriter::default();
        let removed: Vec<u32> = base
            .iter()
            .filter(|b| !target.iter().any(|t| t.id == b.id))
            .map(|b| b.id.index)
            .collect();
        writer.removed(&mut out, removed.into_iter());
        let held: Vec<_> = base
            .iter()
            .filter_map(|b| target.iter().find(|t| t.id == b.id).map(|t| (b, t)))
            .collect();
        let updated = held
            .iter()
            .enumerate()
            .filter(|(_, (b, t))| b.state != t.state);
        writer.begin_held(&mut out, held.len(), updated.map(|(place, _)| place));
        for (b, t) in held {
            let update = (b.state != t.state).then_some((&b.state, &t.state));
            writer.held::<Shooter>(&mut out, &CONFIG, 3, update);
        }
        let new: Vec<_> = target
            .iter()
            .filter(|t| !base.iter().any(|b| b.id == t.id))
            .collect();
        writer.begin_new(&mut out, new.len());
        for t in new {
            writer.new_entity::<Shooter>(&mut out, &CONFIG, t.id, &t.state);
        }
        writer.end(&mut out, 7);
        let len = out.finish().expect("fits");
        buf[..len].to_vec()
    }

    fn view() -> impl Strategy<Value = View> {
        proptest::collection::btree_map(0u32..40, (0u32..3, any::<u16>(), any::<i16>()), 0..20)
            .prop_map(|m| {
                m.into_iter()
                    .map(|(i, (g, x, vx))| entity(i, g, x, vx))
                    .collect()
            })
    }

    proptest! {
        #[test]
        fn any_view_turns_into_any_other(base in view(), target in view()) {
            let bytes = section(&base, &target);
            let mut out = Vec::new();
            let stale = apply::<Shooter>(&CONFIG, &base, 3, &bytes, &mut out);
            prop_assert_eq!(stale, Ok(7));
            prop_assert_eq!(&out, &target);
        }

        #[test]
        fn any_view_with_some_entities_changed_round_trips(
            base in view(),
            changed in proptest::collection::vec(proptest::bool::weighted(0.1), 20),
            gone in proptest::collection::vec(proptest::bool::weighted(0.1), 20),
        ) {
            // Few changes make the writer name held entities by gaps (many, as in
            // `any_view_turns_into_any_other`, by a bit each).
            let target: View = base
                .iter()
                .zip(changed.iter().zip(&gone))
                .filter(|(_, (_, gone))| !**gone)
                .map(|(e, (changed, _))| {
                    let mut e = e.clone();
                    if *changed {
                        e.state.health = e.state.health.wrapping_add(1);
                    }
                    e
                })
                .collect();
            let bytes = section(&base, &target);
            let mut out = Vec::new();
            prop_assert_eq!(apply::<Shooter>(&CONFIG, &base, 3, &bytes, &mut out), Ok(7));
            prop_assert_eq!(&out, &target);
        }

        #[test]
        fn random_bytes_never_panic(base in view(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            let _ = apply::<Shooter>(&CONFIG, &base, 3, &bytes, &mut out);
        }
    }

    #[test]
    fn held_entities_cost_a_bit_each_or_nothing_and_carry_no_index() {
        let base: View = (0..50).map(|i| entity(i * 40, 1, 500, 0)).collect();
        // Unchanged: the removed, new and update counts empty (2 bits each), the held count
        // 50 (10 bits), the gap mode bit, the stale count 7 (6 bits): 23 bits.
        assert_eq!(section(&base, &base).len(), 3);
        // One hurt: its gap 49 (9 bits), the health bit and 8 bits of health, two bits of
        // unchanged motion, and the update count 1 (6 bits instead of 2); no index.
        let mut hurt = base.clone();
        hurt[49].state.health = 50;
        let bits: usize = 23 + 4 + 9 + 1 + 8 + 2;
        assert_eq!(section(&base, &hurt).len(), bits.div_ceil(8));
        // All hurt: a bit each is cheaper than 50 gaps (2 bits each).
        let all: View = base
            .iter()
            .map(|e| Replicated {
                state: EntityState {
                    health: 50,
                    ..e.state
                },
                ..*e
            })
            .collect();
        let bits: usize = 23 + 50 * (1 + 1 + 8 + 2);
        assert_eq!(section(&base, &all).len(), bits.div_ceil(8));
    }

    #[test]
    fn a_section_that_does_not_fit_its_baseline_is_refused() {
        let held = vec![entity(1, 1, 10, 0), entity(5, 1, 10, 0)];
        let mut out = Vec::new();
        // Removes index 3, which is not held (and keeps one entity, as this baseline would).
        let bytes = section(
            &[entity(3, 1, 0, 0), entity(5, 1, 10, 0)],
            &[entity(5, 1, 10, 0)],
        );
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &bytes, &mut out),
            Err(BitError::OutOfRange("removed entity not held"))
        );
        // Made for a baseline of one entity: the held count is not this baseline's.
        let bytes = section(&[entity(7, 1, 0, 0)], &[entity(7, 1, 9, 0)]);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &bytes, &mut out),
            Err(BitError::OutOfRange("held count is not the baseline's"))
        );
        // Adds index 5 as new while it is held (the section keeps one entity, adds one).
        let bytes = section(
            &[entity(1, 1, 10, 0)],
            &[entity(1, 1, 10, 0), entity(5, 2, 9, 0)],
        );
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held[1..], 3, &bytes, &mut out),
            Err(BitError::OutOfRange("new entity already held"))
        );
        let mut trailing = section(&held, &held);
        trailing.push(0);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &trailing, &mut out),
            Err(BitError::Trailing)
        );
    }
}
