//! Delta snapshots: the bit-packed section that follows a snapshot's head, and the
//! baselines a client keeps to read it.
//!
//! A client's view is its entities in view, sorted by index. A snapshot changes the view
//! of its baseline (a snapshot of `baseline_ticks` ticks earlier that the client
//! acknowledged; none for a full snapshot) into the new one:
//!
//! ```text
//! removed:  count, then per entity the gap from the previous removed index
//! updated:  count, then per entity: index gap, new bit (+ generation), the game's bits
//!           (against the baseline's state of it, or whole when new)
//! stale:    count of entities in view whose state this snapshot did not bring up to date
//! ```
//!
//! Entities of the baseline neither removed nor updated are carried as they were. Counts,
//! gaps and generations are [`sized`](BitWriter::write_sized); the game codes its own state
//! ([`Game::write_entity`]). Reading validates everything: indices strictly increase, a
//! removed or updated entity must be in the baseline, a new one must not be, and nothing
//! may follow the section. A delta against a baseline the client does not hold is refused
//! ([`DeltaError::NoBaseline`]), never applied to something else.

use super::bits::{BitError, BitReader, BitWriter, Widths};
use super::messages::Replicated;
use crate::game::{Game, MatchConfig, NetEntityId, Tick};

/// The oldest baseline a snapshot may name, in ticks (the client keeps a view this long).
pub const MAX_BASELINE_TICKS: u32 = 63;
/// Views a client keeps, one per tick modulo this (more than [`MAX_BASELINE_TICKS`]).
const KEPT_VIEWS: usize = 64;

const COUNT: Widths = [0, 4, 8, 16];
const GAP: Widths = [0, 3, 7, 32];
const GENERATION: Widths = [0, 4, 12, 32];

/// Writes a section. Calling order: [`SectionWriter::removed`] once,
/// [`SectionWriter::begin_updates`] once, [`SectionWriter::update`] per updated entity in
/// increasing index, [`SectionWriter::end`].
#[derive(Debug, Default)]
pub struct SectionWriter {
    previous: Option<u32>,
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

    /// Starts the updates: `count` follow.
    pub fn begin_updates(&mut self, out: &mut BitWriter, count: usize) {
        out.write_sized(count as u64, &COUNT);
        self.previous = None;
    }

    /// Writes one updated entity: `base` is its state in the baseline (`None`: new to
    /// the client), `ticks` the baseline's age.
    pub fn update<G: Game>(
        &mut self,
        out: &mut BitWriter,
        config: &MatchConfig,
        ticks: u32,
        id: NetEntityId,
        base: Option<&G::Entity>,
        state: &G::Entity,
    ) {
        write_gap(out, &mut self.previous, id.index);
        out.write_bool(base.is_none());
        if base.is_none() {
            out.write_sized(u64::from(id.generation), &GENERATION);
        }
        G::write_entity(config, base, ticks, state, out);
    }

    /// Ends the section.
    pub fn end(self, out: &mut BitWriter, stale: u16) {
        out.write_sized(u64::from(stale), &COUNT);
    }
}

/// Bits the update of entity `index` costs besides the game's own, whatever entity is
/// written before it (its gap is at most `index`; the generation at its widest): an upper
/// bound, for choosing what fits before writing.
pub fn update_overhead_bits(index: u32) -> usize {
    let gap_bits = super::bits::sized_bits(u64::from(index), &GAP).unwrap_or(34) as usize;
    gap_bits + 1 + 2 + 32
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

/// Applies `section` to `base` (sorted by index), writing the new view into `out`
/// (cleared first; sorted by index). Returns the stale count.
pub fn apply<G: Game>(
    config: &MatchConfig,
    base: &[Replicated<G::Entity>],
    ticks: u32,
    section: &[u8],
    out: &mut Vec<Replicated<G::Entity>>,
) -> Result<u16, BitError> {
    out.clear();
    let mut input = BitReader::new(section);
    let removed_count = input.read_sized(&COUNT)? as usize;
    if removed_count > base.len() {
        return Err(BitError::OutOfRange("more removed than held"));
    }
    let mut removed = Vec::with_capacity(removed_count);
    let mut previous = None;
    for _ in 0..removed_count {
        removed.push(read_gap(&mut input, &mut previous)?);
    }
    let mut cursor = Cursor::default();
    let updates = input.read_sized(&COUNT)? as usize;
    let mut previous = None;
    for _ in 0..updates {
        let index = read_gap(&mut input, &mut previous)?;
        cursor.carry_below(u64::from(index), base, &removed, out)?;
        let held = base.get(cursor.base).filter(|e| e.id.index == index);
        let held = if removed.get(cursor.removed) == Some(&index) {
            cursor.removed += 1;
            cursor.base += 1;
            None
        } else {
            cursor.base += usize::from(held.is_some());
            held
        };
        let new = input.read_bool()?;
        let entity = match (new, held) {
            (true, None) => {
                let generation = input.read_sized_u32(&GENERATION)?;
                Replicated {
                    id: NetEntityId { index, generation },
                    state: G::read_entity(config, None, ticks, &mut input)?,
                }
            }
            (false, Some(held)) => Replicated {
                id: held.id,
                state: G::read_entity(config, Some(&held.state), ticks, &mut input)?,
            },
            (true, Some(_)) => return Err(BitError::OutOfRange("new entity already held")),
            (false, None) => return Err(BitError::OutOfRange("update of an entity not held")),
        };
        out.push(entity);
    }
    cursor.carry_below(u64::MAX, base, &removed, out)?;
    if cursor.removed != removed.len() {
        return Err(BitError::OutOfRange("removed entity not held"));
    }
    let stale = u16::try_from(input.read_sized(&COUNT)?)
        .map_err(|_| BitError::OutOfRange("stale count"))?;
    input.finish()?;
    Ok(stale)
}

/// Where [`apply`] is in the baseline and in the removed list.
#[derive(Debug, Default)]
struct Cursor {
    base: usize,
    removed: usize,
}

impl Cursor {
    /// Carries the baseline's entities below `below`, leaving out the removed ones.
    fn carry_below<E: Clone>(
        &mut self,
        below: u64,
        base: &[Replicated<E>],
        removed: &[u32],
        out: &mut Vec<Replicated<E>>,
    ) -> Result<(), BitError> {
        while let Some(entry) = base.get(self.base)
            && u64::from(entry.id.index) < below
        {
            self.base += 1;
            match removed.get(self.removed) {
                Some(&r) if r == entry.id.index => self.removed += 1,
                Some(&r) if r < entry.id.index => {
                    return Err(BitError::OutOfRange("removed entity not held"));
                }
                _ => out.push(entry.clone()),
            }
        }
        if removed
            .get(self.removed)
            .is_some_and(|&r| u64::from(r) < below)
        {
            return Err(BitError::OutOfRange("removed entity not held"));
        }
        Ok(())
    }
}

/// Why a snapshot's section could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A delta against a view the client does not hold (lost, or never received).
    #[error("delta against tick {0}, which this client does not hold")]
    NoBaseline(u64),
    /// The section is not a valid one.
    #[error("malformed snapshot section: {0}")]
    Malformed(#[from] BitError),
}

/// The views a client holds, by tick: the baselines the server may name.
#[derive(Debug)]
pub struct Baselines<E> {
    views: Vec<Option<(Tick, Vec<Replicated<E>>)>>,
}

impl<E> Default for Baselines<E> {
    fn default() -> Self {
        Self {
            views: (0..KEPT_VIEWS).map(|_| None).collect(),
        }
    }
}

impl<E: Clone> Baselines<E> {
    /// The view at `tick`, if held.
    pub fn get(&self, tick: Tick) -> Option<&[Replicated<E>]> {
        match &self.views[tick.0 as usize % KEPT_VIEWS] {
            Some((t, view)) if *t == tick => Some(view),
            _ => None,
        }
    }

    /// Reads the section of the snapshot of `tick` made against the view `baseline_ticks`
    /// earlier (0: a full snapshot), keeps the new view, and returns it with its stale
    /// count.
    pub fn resolve<G: Game<Entity = E>>(
        &mut self,
        config: &MatchConfig,
        tick: Tick,
        baseline_ticks: u32,
        section: &[u8],
    ) -> Result<(Vec<Replicated<E>>, u16), DeltaError> {
        let mut view = Vec::new();
        let stale = if baseline_ticks == 0 {
            apply::<G>(config, &[], 0, section, &mut view)?
        } else {
            let at = Tick(tick.0.saturating_sub(u64::from(baseline_ticks)));
            let base = self.get(at).ok_or(DeltaError::NoBaseline(at.0))?;
            apply::<G>(config, base, baseline_ticks, section, &mut view)?
        };
        self.keep(tick, view.clone());
        Ok((view, stale))
    }

    /// Keeps `view` as the view at `tick` (unless a newer tick holds its place).
    pub fn keep(&mut self, tick: Tick, view: Vec<Replicated<E>>) {
        let slot = &mut self.views[tick.0 as usize % KEPT_VIEWS];
        if slot.as_ref().is_none_or(|(t, _)| *t <= tick) {
            *slot = Some((tick, view));
        }
    }
}

/// The default entity coding: the state's bincode bytes, whole, whatever the baseline.
pub fn write_whole<T: serde::Serialize>(value: &T, out: &mut BitWriter) {
    let mut buf = [0u8; 255];
    match bincode::serde::encode_into_slice(value, &mut buf, bincode::config::standard()) {
        Ok(len) => {
            out.write_bits(len as u64, 8);
            out.write_bytes(&buf[..len]);
        }
        Err(_) => out.fail(),
    }
}

/// Reads what [`write_whole`] wrote.
pub fn read_whole<T: serde::de::DeserializeOwned>(input: &mut BitReader) -> Result<T, BitError> {
    let len = input.read_bits(8)? as usize;
    let mut buf = [0u8; 255];
    input.read_bytes(&mut buf[..len])?;
    let config = bincode::config::standard().with_limit::<1024>();
    match bincode::serde::decode_from_slice::<T, _>(&buf[..len], config) {
        Ok((value, used)) if used == len => Ok(value),
        _ => Err(BitError::OutOfRange("entity bytes")),
    }
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
        let updates: Vec<_> = target
            .iter()
            .filter_map(|t| {
                let held = base.iter().find(|b| b.id == t.id);
                (held.map(|b| &b.state) != Some(&t.state)).then_some((t, held))
            })
            .collect();
        writer.begin_updates(&mut out, updates.len());
        for (t, held) in updates {
            writer.update::<Shooter>(&mut out, &CONFIG, 3, t.id, held.map(|b| &b.state), &t.state);
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
        fn random_bytes_never_panic(base in view(), bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut out = Vec::new();
            let _ = apply::<Shooter>(&CONFIG, &base, 3, &bytes, &mut out);
        }
    }

    #[test]
    fn unchanged_entities_cost_nothing() {
        let base: View = (0..50).map(|i| entity(i * 2, 1, 500, 0)).collect();
        // Two empty counts (2 bits each) and the stale count 7 (6 bits).
        assert_eq!(section(&base, &base).len(), 2);
    }

    #[test]
    fn a_section_that_does_not_fit_its_baseline_is_refused() {
        let held = vec![entity(1, 1, 10, 0), entity(5, 1, 10, 0)];
        let mut out = Vec::new();
        // Removes index 3, which is not held.
        let bytes = section(&[entity(3, 1, 0, 0)], &[]);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &bytes, &mut out),
            Err(BitError::OutOfRange("removed entity not held"))
        );
        // Updates index 7 as held.
        let bytes = section(&[entity(7, 1, 0, 0)], &[entity(7, 1, 9, 0)]);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &bytes, &mut out),
            Err(BitError::OutOfRange("update of an entity not held"))
        );
        // Adds index 5 as new while it is held.
        let bytes = section(&[], &[entity(5, 2, 9, 0)]);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &bytes, &mut out),
            Err(BitError::OutOfRange("new entity already held"))
        );
        let mut trailing = section(&held, &held);
        trailing.push(0);
        assert_eq!(
            apply::<Shooter>(&CONFIG, &held, 3, &trailing, &mut out),
            Err(BitError::Trailing)
        );
    }

    #[test]
    fn a_delta_against_a_view_not_held_is_refused() {
        let mut baselines = Baselines::<EntityState>::default();
        let full = section(&[], &[entity(1, 1, 10, 0)]);
        let (view, _) = baselines
            .resolve::<Shooter>(&CONFIG, Tick(10), 0, &full)
            .expect("a full snapshot needs no baseline");
        let delta = section(&view, &[entity(1, 1, 11, 0)]);
        assert!(
            baselines
                .resolve::<Shooter>(&CONFIG, Tick(12), 2, &delta)
                .is_ok()
        );
        assert_eq!(
            baselines.resolve::<Shooter>(&CONFIG, Tick(13), 2, &delta),
            Err(DeltaError::NoBaseline(11))
        );
        // Tick 74 takes tick 10's place: a delta against 10 is refused from then on.
        baselines.keep(Tick(74), Vec::new());
        assert_eq!(baselines.get(Tick(10)), None);
    }
}
