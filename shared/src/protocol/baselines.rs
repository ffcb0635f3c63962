//! The snapshots a client holds, by tick: the baselines a server's deltas name, and
//! reading a snapshot's section (head, then entities) against them.
//!
//! A snapshot names its baseline by age ([`super::head`]); the client looks it up by
//! tick, and a delta against one it does not hold is refused
//! ([`DeltaError::NoBaseline`]), never applied to something else.

use super::bits::{BitError, BitReader};
use super::delta;
use super::head::{self, SnapshotHead};
use super::messages::{Replicated, Snapshot};
use crate::game::{Game, MatchConfig, Tick};

/// Snapshots a client keeps, one per tick modulo this (more than
/// [`delta::MAX_BASELINE_TICKS`]).
const KEPT: usize = 64;

/// Why a snapshot's section could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// A delta against a view the client does not hold (lost, or never received). The
    /// tick is the baseline's, or `None` when the client holds nothing to place it by.
    #[error("{}", no_baseline(*.0))]
    NoBaseline(Option<u64>),
    /// The section is not a valid one.
    #[error("malformed snapshot section: {0}")]
    Malformed(#[from] BitError),
}

/// What [`DeltaError::NoBaseline`] says.
fn no_baseline(tick: Option<u64>) -> String {
    match tick {
        Some(t) => format!("delta against tick {t}, which this client does not hold"),
        None => "delta before this client holds any snapshot to place it by".to_owned(),
    }
}

/// One snapshot held: its head and the view it left.
#[derive(Debug)]
struct Held<G: Game> {
    head: SnapshotHead<G>,
    view: Vec<Replicated<G::Entity>>,
}

/// The snapshots a client holds, by tick.
#[derive(Debug)]
pub struct Baselines<G: Game> {
    held: Vec<Option<Held<G>>>,
    /// The newest tick held: a delta's tick is placed nearest it.
    newest: Option<Tick>,
}

impl<G: Game> Default for Baselines<G> {
    fn default() -> Self {
        Self {
            held: (0..KEPT).map(|_| None).collect(),
            newest: None,
        }
    }
}

impl<G: Game> Baselines<G> {
    /// The view at `tick`, if held.
    pub fn get(&self, tick: Tick) -> Option<&[Replicated<G::Entity>]> {
        self.held(tick).map(|h| h.view.as_slice())
    }

    fn held(&self, tick: Tick) -> Option<&Held<G>> {
        self.held[tick.0 as usize % KEPT]
            .as_ref()
            .filter(|h| h.head.tick == tick)
    }

    /// Reads a snapshot's section against the baseline it names (none for a full
    /// snapshot), keeps the snapshot, and returns it.
    pub fn resolve(
        &mut self,
        config: &MatchConfig,
        section: &[u8],
    ) -> Result<Snapshot<G>, DeltaError> {
        let mut input = BitReader::new(section);
        let (tick, ticks) = match head::read_tick(&mut input, self.newest)? {
            (Some(tick), ticks) => (tick, ticks),
            (None, _) => return Err(DeltaError::NoBaseline(None)),
        };
        let base = match ticks {
            0 => None,
            _ => {
                let at = Tick(tick.0 - u64::from(ticks));
                Some(self.held(at).ok_or(DeltaError::NoBaseline(Some(at.0)))?)
            }
        };
        let head = head::read_rest::<G>(&mut input, (tick, ticks), base.map(|b| &b.head))?;
        let mut view = Vec::new();
        let base_view = base.map_or(&[][..], |b| b.view.as_slice());
        let stale = delta::read::<G>(config, base_view, ticks, &mut input, &mut view)?;
        input.finish()?;
        let snapshot = Snapshot::new(head.clone(), *config, view.clone(), stale);
        self.keep(head, view);
        Ok(snapshot)
    }

    /// Keeps the snapshot of `head.tick` and the view it left (unless a newer tick holds
    /// its place).
    pub fn keep(&mut self, head: SnapshotHead<G>, view: Vec<Replicated<G::Entity>>) {
        let tick = head.tick;
        let slot = &mut self.held[tick.0 as usize % KEPT];
        if slot.as_ref().is_none_or(|h| h.head.tick <= tick) {
            *slot = Some(Held { head, view });
        }
        self.newest = self.newest.max(Some(tick));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::game::NetEntityId;
    use crate::protocol::bits::BitWriter;
    use crate::protocol::delta::SectionWriter;
    use crate::sim::{EntityState, NetEntityKind, Shooter};
    use proptest::prelude::*;

    const CONFIG: MatchConfig = MatchConfig {
        max_players: 8,
        tick_hz: 60,
        seed: 1,
    };

    fn one(x: u16) -> Vec<Replicated<EntityState>> {
        vec![Replicated {
            id: NetEntityId {
                index: 1,
                generation: 1,
            },
            state: EntityState {
                kind: NetEntityKind::Player,
                x,
                y: 100,
                vx: 0,
                vy: 0,
                health: 100,
            },
        }]
    }

    /// The section of the snapshot of `tick`, `ticks` after `base` (0: full), turning
    /// `from` into `to` (one entity, held or new).
    fn section(
        tick: u64,
        ticks: u8,
        base: Option<&SnapshotHead<Shooter>>,
        from: &[Replicated<EntityState>],
        to: &[Replicated<EntityState>],
    ) -> Vec<u8> {
        let head = SnapshotHead::<Shooter> {
            tick: Tick(tick),
            baseline_ticks: ticks,
            ..Default::default()
        };
        let mut buf = [0u8; 256];
        let mut out = BitWriter::new(&mut buf, 2048);
        head::write(&mut out, base, &head);
        let mut writer = SectionWriter::default();
        writer.removed(&mut out, std::iter::empty());
        writer.begin_held(
            &mut out,
            from.len(),
            (!from.is_empty()).then_some(0).into_iter(),
        );
        if let (Some(f), Some(t)) = (from.first(), to.first()) {
            writer.held::<Shooter>(
                &mut out,
                &CONFIG,
                u32::from(ticks),
                Some((&f.state, &t.state)),
            );
        }
        writer.begin_new(&mut out, usize::from(from.is_empty()));
        if from.is_empty() {
            writer.new_entity::<Shooter>(&mut out, &CONFIG, to[0].id, &to[0].state);
        }
        writer.end(&mut out, 0);
        let len = out.finish().expect("fits");
        buf[..len].to_vec()
    }

    #[test]
    fn a_delta_against_a_snapshot_not_held_is_refused() {
        let mut baselines = Baselines::<Shooter>::default();
        let full = section(10, 0, None, &[], &one(10));
        // Nothing held: a delta cannot even be placed.
        let base_head = SnapshotHead {
            tick: Tick(10),
            ..Default::default()
        };
        let delta = section(12, 2, Some(&base_head), &one(10), &one(11));
        assert_eq!(
            baselines.resolve(&CONFIG, &delta),
            Err(DeltaError::NoBaseline(None))
        );
        assert_eq!(
            DeltaError::NoBaseline(None).to_string(),
            "delta before this client holds any snapshot to place it by"
        );
        assert_eq!(
            DeltaError::NoBaseline(Some(11)).to_string(),
            "delta against tick 11, which this client does not hold"
        );
        let first = baselines
            .resolve(&CONFIG, &full)
            .expect("needs no baseline");
        assert_eq!((first.tick, first.baseline_tick), (Tick(10), None));
        assert_eq!(first.entities, one(10));
        let second = baselines.resolve(&CONFIG, &delta).expect("baseline held");
        assert_eq!(
            (second.tick, second.baseline_tick),
            (Tick(12), Some(Tick(10)))
        );
        assert_eq!(second.entities, one(11));
        // Against tick 11, never held.
        let other = section(13, 2, Some(&base_head), &one(10), &one(12));
        assert_eq!(
            baselines.resolve(&CONFIG, &other),
            Err(DeltaError::NoBaseline(Some(11)))
        );
        // Tick 74 takes tick 10's place: a delta against 10 is refused from then on.
        baselines.keep(
            SnapshotHead {
                tick: Tick(74),
                ..Default::default()
            },
            Vec::new(),
        );
        assert_eq!(baselines.get(Tick(10)), None);
        assert_eq!(
            baselines.resolve(&CONFIG, &delta),
            Err(DeltaError::NoBaseline(Some(10)))
        );
        // A section with bytes after it is refused.
        let mut trailing = full.clone();
        trailing.push(0);
        assert_eq!(
            Baselines::<Shooter>::default().resolve(&CONFIG, &trailing),
            Err(DeltaError::Malformed(BitError::Trailing))
        );
    }

    proptest! {
        #[test]
        fn random_sections_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut baselines = Baselines::<Shooter>::default();
            let full = section(10, 0, None, &[], &one(10));
            baselines.resolve(&CONFIG, &full).expect("needs no baseline");
            let _ = baselines.resolve(&CONFIG, &bytes);
            // A delta naming the held snapshot, then random bits: the head and entities
            // are read from them.
            let mut buf = [0u8; 80];
            let mut out = BitWriter::new(&mut buf, 640);
            out.write_bits(2, 6);
            out.write_bits(12, 16);
            out.write_bytes(&bytes);
            let len = out.finish().expect("fits");
            let _ = baselines.resolve(&CONFIG, &buf[..len]);
        }
    }
}
