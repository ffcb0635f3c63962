//! A snapshot's head (what is not an entity), bit-packed at the start of its section,
//! each field against the baseline's head.
//!
//! ```text
//! baseline_ticks  6 bits (0: a full snapshot, the head against an empty one)
//! tick            full: sized; delta: its low 16 bits (the client holds a view within
//!                 a few hundred ticks of it: netcode drops packets older than that)
//! your_entity     1 bit "as the baseline's", else present bit, index and generation
//! last_applied    the error from the baseline's plus one per tick since it, sized
//! inputs_applied  likewise
//! restored_from   1 bit "as the baseline's", else present bit and the tick, sized
//! input_margin    1 bit "as the baseline's", else present bit and the margin, sized
//! arrived_late    sized
//! you             1 bit "as the baseline's", else the game's status, whole
//! ```
//!
//! A player's steady snapshot costs 32 bits of head; a bincode head was 20 to 28 bytes.
//! Each field is exact: the reader rebuilds the head the writer was given.

use super::bits::{BitError, BitReader, BitWriter, Widths, read_whole, write_whole};
use crate::game::{Game, NetEntityId, Tick};

/// Bits of a snapshot's baseline age (so at most 63 ticks).
const BASELINE_BITS: u32 = 6;
/// Bits of a delta snapshot's tick.
const TICK_LOW_BITS: u32 = 16;
const TICK: Widths = [8, 16, 32, 64];
const INDEX: Widths = [4, 8, 16, 32];
const GENERATION: Widths = [0, 4, 12, 32];
/// An input counter's error from one frame per tick.
const COUNTER_ERROR: Widths = [0, 4, 32, 64];
const MARGIN: Widths = [2, 3, 5, 8];
const LATE: Widths = [0, 2, 4, 8];

/// A snapshot's head: what is not an entity. It goes first in the snapshot's section,
/// against the baseline's head.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotHead<G: Game> {
    /// The tick this describes.
    pub tick: Tick,
    /// How many ticks before `tick` the baseline is (at most
    /// [`super::delta::MAX_BASELINE_TICKS`]); 0: a full snapshot. The writer of the
    /// snapshot sets it.
    pub baseline_ticks: u8,
    /// The client's own body, if it has one.
    pub your_entity: Option<NetEntityId>,
    /// The newest input sequence the server has applied; every older one is applied too.
    pub last_applied_input: u32,
    /// Input frames of this player the match has applied, counted by the match itself
    /// (it travels with the player through handoffs and snapshots). A restore after a
    /// crash makes it go down: those frames were rolled back.
    pub inputs_applied: u64,
    /// The tick this server restored the match from, if it took the match over from
    /// a snapshot after its owner died: a client measures its rollback from it.
    pub restored_from_tick: Option<Tick>,
    /// How early the client's inputs arrived since its previous snapshot, in ticks: the
    /// least, over the frames first received, of the tick a frame is for less the tick
    /// the server was about to run (negative: late). `None`: no new frame arrived.
    pub input_margin: Option<i8>,
    /// Input frames first received since the client's previous snapshot after the tick
    /// they were for had already run (saturating).
    pub inputs_arrived_late: u8,
    /// The client's own standing.
    pub you: G::Status,
}

/// The head of an empty snapshot at tick 0: what a full snapshot's head is written
/// against.
impl<G: Game> Default for SnapshotHead<G> {
    fn default() -> Self {
        Self {
            tick: Tick(0),
            baseline_ticks: 0,
            your_entity: None,
            last_applied_input: 0,
            inputs_applied: 0,
            restored_from_tick: None,
            input_margin: None,
            inputs_arrived_late: 0,
            you: G::Status::default(),
        }
    }
}

/// Writes `head` for a client holding `base` (the head of the snapshot
/// `head.baseline_ticks` earlier; `None` and 0 for a full snapshot).
pub fn write<G: Game>(out: &mut BitWriter, base: Option<&SnapshotHead<G>>, head: &SnapshotHead<G>) {
    debug_assert_eq!(base.is_some(), head.baseline_ticks > 0);
    let ticks = u32::from(head.baseline_ticks);
    out.write_bits(u64::from(ticks), BASELINE_BITS);
    if ticks == 0 {
        out.write_sized(head.tick.0, &TICK);
    } else {
        out.write_bits(head.tick.0 & 0xffff, TICK_LOW_BITS);
    }
    let empty = SnapshotHead::<G>::default();
    let base = base.unwrap_or(&empty);
    write_if_changed(out, &base.your_entity, &head.your_entity, |out, id| {
        write_option(out, id.as_ref(), |out, id| {
            out.write_sized(u64::from(id.index), &INDEX);
            out.write_sized(u64::from(id.generation), &GENERATION);
        })
    });
    let predicted = u64::from(base.last_applied_input.wrapping_add(ticks));
    let error = u64::from(head.last_applied_input).wrapping_sub(predicted) as u32;
    out.write_sized_signed(i64::from(error as i32), &COUNTER_ERROR);
    let predicted = base.inputs_applied.wrapping_add(u64::from(ticks));
    out.write_sized_signed(
        head.inputs_applied.wrapping_sub(predicted) as i64,
        &COUNTER_ERROR,
    );
    write_if_changed(
        out,
        &base.restored_from_tick,
        &head.restored_from_tick,
        |out, tick| write_option(out, tick.as_ref(), |out, t| out.write_sized(t.0, &TICK)),
    );
    write_if_changed(out, &base.input_margin, &head.input_margin, |out, m| {
        write_option(out, m.as_ref(), |out, &m| {
            out.write_sized_signed(i64::from(m), &MARGIN)
        })
    });
    out.write_sized(u64::from(head.inputs_arrived_late), &LATE);
    write_if_changed(out, &base.you, &head.you, |out, you| write_whole(you, out));
}

/// Reads a head's tick and baseline age, which name its baseline. A delta's tick is
/// placed nearest `newest` (the newest tick the client holds); `None`: a delta, and the
/// client holds nothing to place it by.
pub fn read_tick(
    input: &mut BitReader,
    newest: Option<Tick>,
) -> Result<(Option<Tick>, u32), BitError> {
    let ticks = input.read_bits(BASELINE_BITS)? as u32;
    if ticks == 0 {
        return Ok((Some(Tick(input.read_sized(&TICK)?)), 0));
    }
    let low = input.read_bits(TICK_LOW_BITS)? as u16;
    let Some(newest) = newest else {
        return Ok((None, ticks));
    };
    let offset = i64::from(low.wrapping_sub(newest.0 as u16) as i16);
    let tick = newest
        .0
        .checked_add_signed(offset)
        .filter(|&t| t >= u64::from(ticks))
        .ok_or(BitError::OutOfRange("snapshot tick before its baseline"))?;
    Ok((Some(Tick(tick)), ticks))
}

/// Reads the rest of the head of the snapshot of `tick`, `ticks` after `base` (`None`
/// and 0: a full snapshot).
pub fn read_rest<G: Game>(
    input: &mut BitReader,
    (tick, ticks): (Tick, u32),
    base: Option<&SnapshotHead<G>>,
) -> Result<SnapshotHead<G>, BitError> {
    let empty = SnapshotHead::<G>::default();
    let base = base.unwrap_or(&empty);
    let your_entity = read_if_changed(input, &base.your_entity, |input| {
        read_option(input, |input| {
            Ok(NetEntityId {
                index: input.read_sized_u32(&INDEX)?,
                generation: input.read_sized_u32(&GENERATION)?,
            })
        })
    })?;
    let error = i32::try_from(input.read_sized_signed(&COUNTER_ERROR)?)
        .map_err(|_| BitError::OutOfRange("last applied input"))?;
    let last_applied_input = base
        .last_applied_input
        .wrapping_add(ticks)
        .wrapping_add(error as u32);
    let error = input.read_sized_signed(&COUNTER_ERROR)?;
    let inputs_applied = base
        .inputs_applied
        .wrapping_add(u64::from(ticks))
        .wrapping_add(error as u64);
    let restored_from_tick = read_if_changed(input, &base.restored_from_tick, |input| {
        read_option(input, |input| Ok(Tick(input.read_sized(&TICK)?)))
    })?;
    let input_margin = read_if_changed(input, &base.input_margin, |input| {
        read_option(input, |input| {
            i8::try_from(input.read_sized_signed(&MARGIN)?)
                .map_err(|_| BitError::OutOfRange("input margin"))
        })
    })?;
    let inputs_arrived_late = u8::try_from(input.read_sized(&LATE)?)
        .map_err(|_| BitError::OutOfRange("inputs arrived late"))?;
    let you = read_if_changed(input, &base.you, read_whole)?;
    Ok(SnapshotHead {
        tick,
        baseline_ticks: ticks as u8,
        your_entity,
        last_applied_input,
        inputs_applied,
        restored_from_tick,
        input_margin,
        inputs_arrived_late,
        you,
    })
}

/// One bit when `now` is `base`, else the bit and `write(now)`.
fn write_if_changed<T: PartialEq>(
    out: &mut BitWriter,
    base: &T,
    now: &T,
    write: impl FnOnce(&mut BitWriter, &T),
) {
    let changed = base != now;
    out.write_bool(changed);
    if changed {
        write(out, now);
    }
}

fn read_if_changed<T: Clone>(
    input: &mut BitReader,
    base: &T,
    read: impl FnOnce(&mut BitReader) -> Result<T, BitError>,
) -> Result<T, BitError> {
    if input.read_bool()? {
        read(input)
    } else {
        Ok(base.clone())
    }
}

fn write_option<T>(out: &mut BitWriter, value: Option<&T>, write: impl FnOnce(&mut BitWriter, &T)) {
    out.write_bool(value.is_some());
    if let Some(value) = value {
        write(out, value);
    }
}

fn read_option<T>(
    input: &mut BitReader,
    read: impl FnOnce(&mut BitReader) -> Result<T, BitError>,
) -> Result<Option<T>, BitError> {
    if input.read_bool()? {
        read(input).map(Some)
    } else {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{PlayerStatus, Shooter};

    fn head(tick: u64, baseline_ticks: u8) -> SnapshotHead<Shooter> {
        SnapshotHead {
            tick: Tick(tick),
            baseline_ticks,
            your_entity: Some(NetEntityId {
                index: 70,
                generation: 3,
            }),
            last_applied_input: 1000 + tick as u32,
            inputs_applied: 900 + tick,
            restored_from_tick: None,
            input_margin: Some(2),
            inputs_arrived_late: 0,
            you: PlayerStatus {
                health: 100,
                score: 4,
                deaths: 1,
            },
        }
    }

    /// Writes `head` against `base`, reads it back with `newest` held; returns the bits.
    fn round_trip(
        base: Option<&SnapshotHead<Shooter>>,
        head: &SnapshotHead<Shooter>,
        newest: Tick,
    ) -> usize {
        let mut buf = [0u8; 128];
        let mut out = BitWriter::new(&mut buf, 1024);
        write(&mut out, base, head);
        let bits = out.bits();
        let len = out.finish().expect("fits");
        let mut input = BitReader::new(&buf[..len]);
        let (tick, ticks) = read_tick(&mut input, Some(newest)).expect("reads");
        let tick = tick.expect("placed");
        assert_eq!((tick, ticks), (head.tick, u32::from(head.baseline_ticks)));
        let read = read_rest(&mut input, (tick, ticks), base).expect("reads");
        assert_eq!(&read, head);
        input.finish().expect("nothing left");
        bits
    }

    #[test]
    fn a_steady_head_costs_32_bits_and_any_change_round_trips() {
        let base = head(100_000, 0);
        let steady = head(100_003, 3);
        assert_eq!(round_trip(Some(&base), &steady, Tick(100_001)), 32);
        // The full head: every field against an empty head.
        let full = round_trip(None, &base, Tick(0));
        assert!(full > 32 && full < 200, "{full}");
        let mut changed = head(100_010, 10);
        changed.your_entity = None;
        changed.last_applied_input = 3;
        changed.inputs_applied = u64::MAX;
        changed.restored_from_tick = Some(Tick(u64::MAX));
        changed.input_margin = Some(i8::MIN);
        changed.inputs_arrived_late = u8::MAX;
        changed.you.score = u32::MAX;
        round_trip(Some(&base), &changed, Tick(100_009));
        changed.input_margin = None;
        round_trip(Some(&base), &changed, Tick(100_009));
    }

    #[test]
    fn a_delta_tick_is_placed_nearest_the_newest_held() {
        let base = head(65_530, 0);
        // The low 16 bits wrap between the baseline and the snapshot.
        let next = head(65_540, 10);
        round_trip(Some(&base), &next, Tick(65_530));
        // An older snapshot arriving after a newer one.
        round_trip(Some(&base), &next, Tick(65_600));
        // Placed before its own baseline could be: refused.
        let early = head(5, 9);
        let mut buf = [0u8; 128];
        let mut out = BitWriter::new(&mut buf, 1024);
        write(&mut out, Some(&head(0, 0)), &early);
        let len = out.finish().expect("fits");
        let mut input = BitReader::new(&buf[..len]);
        assert_eq!(
            read_tick(&mut input, Some(Tick(3))),
            Err(BitError::OutOfRange("snapshot tick before its baseline"))
        );
        // Nothing held: a delta cannot be placed.
        let mut input = BitReader::new(&buf[..len]);
        assert_eq!(read_tick(&mut input, None), Ok((None, 9)));
    }
}
