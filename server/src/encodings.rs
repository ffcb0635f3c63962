//! Entity updates written once and copied into every snapshot that needs the same one.
//!
//! What [`Game::write_entity`] writes depends only on the held state, the baseline's age
//! and the state now (it must: see its docs). Clients whose baselines are of the same
//! tick need the same update of an entity, and in a crowd most do: the first snapshot
//! that needs it writes it, the others copy its bits. A small table, two entries per set
//! and the set chosen by entity index, remembers the latest updates a worker wrote; an
//! entry is used only when its held state, age and state now all equal the ones asked
//! for, so a stale or colliding entry costs a write, never a wrong bit.
//!
//! One table per snapshot-building worker of a core (the match's config, which the game's
//! bits also depend on, is the core's), so it needs no lock; it is allocated once, whole,
//! and never grows.

use arena_shared::game::{Game, MatchConfig};
use arena_shared::netcode::MAX_PAYLOAD_BYTES;
use arena_shared::protocol::bits::{BitString, BitWriter};

/// Sets in the table (entity index modulo this). A match's entities in view of anyone
/// rarely pass a thousand; beyond, entities share sets and the hit rate falls.
const SETS: usize = 1024;
/// Entries per set: updates against the two newest baselines clients hold.
const WAYS: usize = 2;

#[derive(Debug, Clone)]
struct Entry<E> {
    base: Option<E>,
    /// The baseline's age (0 for a whole state).
    ticks: u32,
    now: E,
    bits: BitString,
}

/// The table. See the module docs.
#[derive(Debug)]
pub struct Encodings<E> {
    sets: Vec<[Option<Entry<E>>; WAYS]>,
    /// Updates copied from the table.
    pub reused: u64,
    /// Updates written by the game (then remembered, if at most [`BitString::MAX_BITS`]).
    pub written: u64,
}

impl<E> Default for Encodings<E> {
    fn default() -> Self {
        Self {
            sets: (0..SETS).map(|_| std::array::from_fn(|_| None)).collect(),
            reused: 0,
            written: 0,
        }
    }
}

/// One entity's update as a snapshot needs it.
#[derive(Debug)]
pub struct Update<'a, E> {
    /// The entity's index (picks the set; not part of the key).
    pub index: u32,
    /// What the client holds of it (`None`: nothing, the state goes whole).
    pub base: Option<&'a E>,
    /// The held state's age in ticks (ignored without a base).
    pub ticks: u32,
    /// Its state now.
    pub now: &'a E,
}

// By hand: a derive would ask `E: Copy`, and only references are copied.
impl<E> Clone for Update<'_, E> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<E> Copy for Update<'_, E> {}

impl<E: Clone + PartialEq> Encodings<E> {
    /// Writes `update` into `out`, as [`Game::write_entity`] would.
    pub fn write<G: Game<Entity = E>>(
        &mut self,
        out: &mut BitWriter,
        config: &MatchConfig,
        update: Update<'_, E>,
    ) {
        match self.find_or_encode::<G>(config, update) {
            Some(bits) => out.write_string(&bits),
            None => G::write_entity(config, update.base, update.ticks, update.now, out),
        }
    }

    /// The bits [`Encodings::write`] would write (`None`: more than a datagram holds).
    pub fn cost<G: Game<Entity = E>>(
        &mut self,
        config: &MatchConfig,
        update: Update<'_, E>,
    ) -> Option<usize> {
        if let Some(bits) = self.find_or_encode::<G>(config, update) {
            return Some(bits.bits());
        }
        let mut trial = [0u8; MAX_PAYLOAD_BYTES];
        let mut out = BitWriter::new(&mut trial, MAX_PAYLOAD_BYTES * 8);
        G::write_entity(config, update.base, update.ticks, update.now, &mut out);
        (!out.overflowed()).then(|| out.bits())
    }

    /// The update's bits from the table, or written and remembered; `None` when it is
    /// longer than a [`BitString`] (the caller writes it itself).
    fn find_or_encode<G: Game<Entity = E>>(
        &mut self,
        config: &MatchConfig,
        Update {
            index,
            base,
            ticks,
            now,
        }: Update<'_, E>,
    ) -> Option<BitString> {
        let ticks = if base.is_some() { ticks } else { 0 };
        let set = &mut self.sets[index as usize % SETS];
        let found = set
            .iter()
            .flatten()
            .find(|e| e.ticks == ticks && e.now == *now && e.base.as_ref() == base);
        if let Some(entry) = found {
            self.reused += 1;
            return Some(entry.bits);
        }
        self.written += 1;
        let bits = BitString::capture(|out| G::write_entity(config, base, ticks, now, out))?;
        // The newest first; the oldest goes.
        set.rotate_right(1);
        set[0] = Some(Entry {
            base: base.cloned(),
            ticks,
            now: now.clone(),
            bits,
        });
        Some(bits)
    }
}

#[cfg(test)]
mod tests {
    use arena_shared::sim::{EntityState, NetEntityKind, Shooter};
    use rand::{RngExt, SeedableRng};
    use rand_pcg::Pcg64Mcg;

    use super::*;

    const CONFIG: MatchConfig = MatchConfig {
        max_players: 64,
        tick_hz: 60,
        seed: 1,
    };

    fn state(rng: &mut Pcg64Mcg) -> EntityState {
        EntityState {
            kind: NetEntityKind::Player,
            x: rng.random_range(1000..1010),
            y: rng.random_range(1000..1010),
            vx: rng.random_range(-3..3),
            vy: 0,
            health: rng.random_range(99..=100),
        }
    }

    /// Many entities sharing sets, asked for updates against a few bases each, in random
    /// order: every write puts down what the game would, and repeated ones are copies.
    #[test]
    fn a_copied_update_is_the_bits_the_game_writes() {
        let mut rng = Pcg64Mcg::seed_from_u64(5);
        let mut table = Encodings::<EntityState>::default();
        for _ in 0..20_000 {
            // Indices a set apart collide; few states, so repeats are common.
            let index = rng.random_range(0..4) * SETS as u32 + rng.random_range(0..3);
            let now = state(&mut rng);
            let base = rng.random_bool(0.8).then(|| state(&mut rng));
            let ticks = rng.random_range(1..4);
            let (mut direct, mut copied) = ([0u8; 64], [0u8; 64]);
            let mut out = BitWriter::new(&mut direct, 512);
            out.write_bits(1, 3);
            Shooter::write_entity(&CONFIG, base.as_ref(), ticks, &now, &mut out);
            let bits = out.bits() - 3;
            let len = out.finish().expect("fits");
            let mut out = BitWriter::new(&mut copied, 512);
            out.write_bits(1, 3);
            let update = Update {
                index,
                base: base.as_ref(),
                ticks,
                now: &now,
            };
            table.write::<Shooter>(&mut out, &CONFIG, update);
            assert_eq!(out.finish(), Some(len));
            assert_eq!(direct[..len], copied[..len]);
            assert_eq!(table.cost::<Shooter>(&CONFIG, update), Some(bits));
        }
        assert!(
            table.reused > table.written,
            "{} reused, {} written",
            table.reused,
            table.written
        );
    }
}
