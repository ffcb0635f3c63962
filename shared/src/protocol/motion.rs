//! A ready-made delta coding for the most common replicated state: a quantized 2D position
//! and velocity. A game calls it from [`crate::game::Game::write_entity`].
//!
//! Against a baseline `ticks` old, the velocity is sent as its change (one bit when it
//! did not change) and the position as its error from where the baseline, moving at the
//! mean of the old and the new velocity for those ticks, would be (one bit when exact,
//! four more when each component is off by at most one unit: rounding makes that the
//! common error). An entity moving steadily costs two bits.
//!
//! Whole (no baseline), the position takes [`Units::position_bits`] a component when it
//! lies in the playing field (a bit says so; else 16), and the velocity is sized, or, for
//! an entity of known speed ([`Units::speed`]), its x component and then the y
//! component's sign and its error from what the speed leaves for it.

use super::bits::{BitError, BitReader, BitWriter, Widths};

/// Widths of a whole velocity component.
const VELOCITY: Widths = [4, 8, 12, 16];
/// Widths of a velocity change.
const VELOCITY_CHANGE: Widths = [3, 6, 9, 17];
/// Widths of a y velocity's error from what a known speed leaves for it.
const SPEED_ERROR: Widths = [0, 2, 5, 17];
/// Widths of a position error (the largest holds any u16 difference).
const POSITION_ERROR: Widths = [2, 5, 10, 17];
/// The position errors of at most one unit a component (not both zero), by their 3-bit
/// code.
const SMALL_ERRORS: [(i64, i64); 8] = [
    (-1, -1),
    (0, -1),
    (1, -1),
    (-1, 0),
    (1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

/// A quantized position (unsigned, 16 bits a component) and velocity (signed, 16 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Motion {
    /// Position, in the game's position units.
    pub x: u16,
    /// Position, in the game's position units.
    pub y: u16,
    /// Velocity, in the game's velocity units.
    pub vx: i16,
    /// Velocity, in the game's velocity units.
    pub vy: i16,
}

/// How the game's units relate, for predicting a position from a velocity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Units {
    /// Velocity units that move one position unit per second.
    pub velocity_per_position: i64,
    /// Ticks per second.
    pub tick_hz: u32,
    /// Bits a position component in the playing field needs (16: the whole range).
    pub position_bits: u32,
    /// The speed a new entity moves at, in velocity units, if the game knows it (a
    /// projectile's): its velocity then costs about half.
    pub speed: Option<u16>,
}

impl Units {
    /// Bits a position component of at most `max` units needs.
    pub fn bits_for(max: u16) -> u32 {
        u16::BITS - max.leading_zeros()
    }

    /// Where `from` gets to in `ticks` ticks moving at the mean of its own velocity and
    /// `velocity` (rounded to the nearest unit, clamped to the u16 range).
    fn predict(&self, from: u16, own: i16, velocity: i16, ticks: u32) -> i64 {
        let den = 2 * self.velocity_per_position.max(1) * i64::from(self.tick_hz.max(1));
        let num = (i64::from(own) + i64::from(velocity)) * i64::from(ticks);
        let moved = (2 * num + num.signum() * den) / (2 * den);
        (i64::from(from) + moved).clamp(0, i64::from(u16::MAX))
    }
}

/// Writes `now` for a reader holding `base` as of `ticks` ticks ago (`None`: whole).
pub fn write(out: &mut BitWriter, units: Units, base: Option<(&Motion, u32)>, now: &Motion) {
    let Some((base, ticks)) = base else {
        return write_whole(out, units, now);
    };
    let changed = now.vx != base.vx || now.vy != base.vy;
    out.write_bool(changed);
    if changed {
        out.write_sized_signed(i64::from(now.vx) - i64::from(base.vx), &VELOCITY_CHANGE);
        out.write_sized_signed(i64::from(now.vy) - i64::from(base.vy), &VELOCITY_CHANGE);
    }
    let ex = i64::from(now.x) - units.predict(base.x, base.vx, now.vx, ticks);
    let ey = i64::from(now.y) - units.predict(base.y, base.vy, now.vy, ticks);
    let exact = ex == 0 && ey == 0;
    out.write_bool(exact);
    if exact {
        return;
    }
    let small = SMALL_ERRORS.iter().position(|&e| e == (ex, ey));
    out.write_bool(small.is_some());
    match small {
        Some(code) => out.write_bits(code as u64, 3),
        None => {
            out.write_sized_signed(ex, &POSITION_ERROR);
            out.write_sized_signed(ey, &POSITION_ERROR);
        }
    }
}

/// Reads what [`write()`] wrote with the same `units` and `base`.
pub fn read(
    input: &mut BitReader,
    units: Units,
    base: Option<(&Motion, u32)>,
) -> Result<Motion, BitError> {
    let Some((base, ticks)) = base else {
        return read_whole(input, units);
    };
    let (mut vx, mut vy) = (base.vx, base.vy);
    if input.read_bool()? {
        vx = velocity(i64::from(vx) + input.read_sized_signed(&VELOCITY_CHANGE)?)?;
        vy = velocity(i64::from(vy) + input.read_sized_signed(&VELOCITY_CHANGE)?)?;
    }
    let (mut ex, mut ey) = (0, 0);
    if !input.read_bool()? {
        (ex, ey) = if input.read_bool()? {
            SMALL_ERRORS[input.read_bits(3)? as usize]
        } else {
            (
                input.read_sized_signed(&POSITION_ERROR)?,
                input.read_sized_signed(&POSITION_ERROR)?,
            )
        };
    }
    Ok(Motion {
        x: position(units.predict(base.x, base.vx, vx, ticks) + ex)?,
        y: position(units.predict(base.y, base.vy, vy, ticks) + ey)?,
        vx,
        vy,
    })
}

fn write_whole(out: &mut BitWriter, units: Units, now: &Motion) {
    let bits = units.position_bits.min(16);
    if bits < 16 {
        let inside = Units::bits_for(now.x.max(now.y)) <= bits;
        out.write_bool(inside);
        let bits = if inside { bits } else { 16 };
        out.write_bits(u64::from(now.x), bits);
        out.write_bits(u64::from(now.y), bits);
    } else {
        out.write_bits(u64::from(now.x), 16);
        out.write_bits(u64::from(now.y), 16);
    }
    out.write_sized_signed(i64::from(now.vx), &VELOCITY);
    match units.speed {
        Some(speed) => {
            out.write_bool(now.vy < 0);
            let error = i64::from(now.vy).abs() - speed_left(speed, now.vx);
            out.write_sized_signed(error, &SPEED_ERROR);
        }
        None => out.write_sized_signed(i64::from(now.vy), &VELOCITY),
    }
}

fn read_whole(input: &mut BitReader, units: Units) -> Result<Motion, BitError> {
    let mut bits = units.position_bits.min(16);
    if bits < 16 && !input.read_bool()? {
        bits = 16;
    }
    let x = input.read_bits(bits)? as u16;
    let y = input.read_bits(bits)? as u16;
    let vx = velocity(input.read_sized_signed(&VELOCITY)?)?;
    let vy = match units.speed {
        Some(speed) => {
            let negative = input.read_bool()?;
            let magnitude = speed_left(speed, vx) + input.read_sized_signed(&SPEED_ERROR)?;
            velocity(if negative { -magnitude } else { magnitude })?
        }
        None => velocity(input.read_sized_signed(&VELOCITY)?)?,
    };
    Ok(Motion { x, y, vx, vy })
}

/// What `speed` leaves for the y component once x is `vx` (0 if x takes it all), rounded.
/// Integer arithmetic: the writer and the reader get the same answer on any machine.
fn speed_left(speed: u16, vx: i16) -> i64 {
    let left = (i64::from(speed).pow(2) - i64::from(vx).pow(2)).max(0) as u64;
    // The integer square root, rounded to the nearest.
    let root = left.isqrt();
    if left - root * root > root {
        root as i64 + 1
    } else {
        root as i64
    }
}

fn velocity(v: i64) -> Result<i16, BitError> {
    i16::try_from(v).map_err(|_| BitError::OutOfRange("velocity"))
}

fn position(p: i64) -> Result<u16, BitError> {
    u16::try_from(p).map_err(|_| BitError::OutOfRange("position"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNITS: Units = Units {
        velocity_per_position: 8,
        tick_hz: 60,
        position_bits: 16,
        speed: None,
    };

    fn round_trip(base: Option<(&Motion, u32)>, now: &Motion) -> usize {
        round_trip_in(UNITS, base, now)
    }

    /// Writes `now` against `base` in `units`, reads it back; returns the bits.
    fn round_trip_in(units: Units, base: Option<(&Motion, u32)>, now: &Motion) -> usize {
        let mut buf = [0u8; 32];
        let mut w = BitWriter::new(&mut buf, 256);
        write(&mut w, units, base, now);
        let bits = w.bits();
        let len = w.finish().expect("fits");
        let mut r = BitReader::new(&buf[..len]);
        assert_eq!(read(&mut r, units, base).as_ref(), Ok(now));
        r.finish().expect("nothing left");
        bits
    }

    #[test]
    fn steady_motion_costs_two_bits_and_anything_round_trips() {
        let base = Motion {
            x: 1000,
            y: 2000,
            vx: 960,
            vy: -480,
        };
        // 960 velocity units = 120 position units a second = 2 a tick.
        let steady = Motion {
            x: 1006,
            y: 1997,
            ..base
        };
        assert_eq!(round_trip(Some((&base, 3)), &steady), 2);
        assert_eq!(round_trip(None, &steady), 32 + 2 * 14);
        // Off by one unit in x (rounding): the exact bit, the small bit, a 3-bit code.
        let off_by_one = Motion { x: 1007, ..steady };
        assert_eq!(round_trip(Some((&base, 3)), &off_by_one), 6);
        // Far off: both components sized (x off by 10: 2 + 5 bits, y exact: 2 + 2).
        let far = Motion { x: 1016, ..steady };
        assert_eq!(round_trip(Some((&base, 3)), &far), 3 + 7 + 4);
        for ex in -2..=2 {
            for ey in -2..=2 {
                let near = Motion {
                    x: (1006 + ex) as u16,
                    y: (1997 + ey) as u16,
                    ..steady
                };
                round_trip(Some((&base, 3)), &near);
            }
        }
        let extremes = [
            Motion {
                x: 0,
                y: u16::MAX,
                vx: i16::MIN,
                vy: i16::MAX,
            },
            Motion {
                x: u16::MAX,
                y: 0,
                vx: i16::MAX,
                vy: i16::MIN,
            },
            Motion::default(),
        ];
        for a in &extremes {
            for b in &extremes {
                for ticks in [0, 1, 63] {
                    round_trip(Some((a, ticks)), b);
                }
            }
            round_trip(None, a);
        }
    }

    #[test]
    fn a_forged_position_outside_the_range_is_refused() {
        let base = Motion {
            x: 1,
            ..Motion::default()
        };
        let mut buf = [0u8; 8];
        let mut w = BitWriter::new(&mut buf, 64);
        w.write_bool(false);
        w.write_bool(false);
        w.write_bool(false);
        w.write_sized_signed(-5, &POSITION_ERROR);
        w.write_sized_signed(0, &POSITION_ERROR);
        let len = w.finish().expect("fits");
        let mut r = BitReader::new(&buf[..len]);
        assert_eq!(
            read(&mut r, UNITS, Some((&base, 1))),
            Err(BitError::OutOfRange("position"))
        );
    }

    #[test]
    fn a_whole_position_in_the_field_and_a_known_speed_cost_less() {
        let field = Units {
            position_bits: Units::bits_for(5119),
            speed: Some(960),
            ..UNITS
        };
        assert_eq!(field.position_bits, 13);
        // 3-4-5: x takes 576 of the 960, leaving exactly 768 for y.
        let shot = Motion {
            x: 5000,
            y: 12,
            vx: 576,
            vy: -768,
        };
        // The field bit, 13 + 13, vx sized (2 + 12), y's sign, an error of 0 (2 + 0).
        assert_eq!(round_trip_in(field, None, &shot), 1 + 26 + 14 + 1 + 2);
        assert_eq!(round_trip_in(UNITS, None, &shot), 32 + 14 + 14);
        // Outside the field, any speed, the extremes: still exact, at a cost.
        for now in [
            Motion { x: 5120, ..shot },
            Motion {
                x: u16::MAX,
                y: u16::MAX,
                vx: i16::MIN,
                vy: i16::MAX,
            },
            Motion {
                vx: 0,
                vy: 0,
                ..shot
            },
            Motion {
                vx: 961,
                vy: 1,
                ..shot
            },
            Motion {
                vx: 700,
                vy: 657,
                ..shot
            },
        ] {
            round_trip_in(field, None, &now);
        }
        assert_eq!(
            round_trip_in(field, None, &Motion { x: 8192, ..shot }),
            1 + 32 + 14 + 1 + 2
        );
    }
}
