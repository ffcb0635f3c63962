//! What the shooter replicates: one entity quantized, and a player's standing.

use serde::{Deserialize, Serialize};

use super::world::{PROJECTILE_SPEED, Wall, World, WorldConfig};
use crate::game::NetEntityId;
use crate::protocol::bits::{BitError, BitReader, BitWriter};
use crate::protocol::motion::{self, Motion, Units};

/// What kind of entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetEntityKind {
    /// A player's body.
    Player,
    /// A projectile.
    Projectile,
}

/// Metres per position unit on the wire (positions are u16: up to 2048 m).
pub const POSITION_UNIT_M: f32 = 1.0 / 32.0;
/// Metres per second per velocity unit (velocities are i16: up to ±1024 m/s). Finer
/// would only cost bits: over the 63 ticks a baseline may be old, a velocity off by half
/// a unit moves a prediction by half a position unit.
pub const VELOCITY_UNIT_MS: f32 = 1.0 / 32.0;

/// Velocity units that move one position unit a second.
const VELOCITY_PER_POSITION: i64 = (POSITION_UNIT_M / VELOCITY_UNIT_MS) as i64;

/// How an entity of `kind` moves on the wire in a match of `config`: positions within
/// the arena, a projectile's speed known.
fn units(config: &WorldConfig, kind: NetEntityKind) -> Units {
    let field = EntityState::quantize_position(config.arena_size());
    Units {
        velocity_per_position: VELOCITY_PER_POSITION,
        tick_hz: config.tick_hz,
        position_bits: Units::bits_for(field),
        speed: (kind == NetEntityKind::Projectile)
            .then(|| EntityState::quantize_velocity(PROJECTILE_SPEED).unsigned_abs()),
    }
}

/// One entity, quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityState {
    /// What it is.
    pub kind: NetEntityKind,
    /// Position in [`POSITION_UNIT_M`].
    pub x: u16,
    /// Position in [`POSITION_UNIT_M`].
    pub y: u16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vx: i16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vy: i16,
    /// Health (players; 0 for projectiles).
    pub health: u8,
}

impl EntityState {
    /// Quantizes a position component: to the nearest unit (halves up), clamped to the
    /// u16 range (NaN: 0).
    ///
    /// Rounded by truncating a non-negative value plus a half, not `f32::round`: on
    /// x86-64's baseline that is a libm call, and this runs four times per entity per
    /// client per tick (8% of the server's instructions at 100 clients, callgrind).
    pub fn quantize_position(metres: f32) -> u16 {
        let units = f64::from(metres) / f64::from(POSITION_UNIT_M);
        (units.clamp(0.0, f64::from(u16::MAX)) + 0.5) as u16
    }

    /// Quantizes a velocity component: to the nearest unit (halves up), clamped to the
    /// i16 range (NaN: 0). Rounded as [`EntityState::quantize_position`] is, shifted to
    /// be non-negative first.
    pub fn quantize_velocity(metres_per_second: f32) -> i16 {
        let units = f64::from(metres_per_second) / f64::from(VELOCITY_UNIT_MS);
        if units.is_nan() {
            return 0;
        }
        let shifted = units.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) + 32768.5;
        (shifted as i64 - 32768) as i16
    }

    /// Writes this state for a client holding `base` as of `ticks` ago (`None`: whole).
    ///
    /// Whole: kind (1 bit), whether health is 0 (1 bit: a projectile's always is), else
    /// health (8), motion whole (positions within the arena, a projectile's velocity by
    /// its known speed). Against a base: 1 bit whether
    /// health changed (then 8), then the motion delta ([`motion`]): a player running
    /// steadily costs 3 bits. The kind is the base's: an entity never changes kind (a new
    /// entity has a new id).
    pub fn write(&self, config: &WorldConfig, base: Option<(&Self, u32)>, out: &mut BitWriter) {
        debug_assert!(base.is_none_or(|(b, _)| b.kind == self.kind));
        let units = units(config, self.kind);
        match base {
            None => {
                out.write_bool(self.kind == NetEntityKind::Projectile);
                out.write_bool(self.health == 0);
                if self.health != 0 {
                    out.write_bits(u64::from(self.health), 8);
                }
                motion::write(out, units, None, &self.motion());
            }
            Some((base, ticks)) => {
                let health_changed = self.health != base.health;
                out.write_bool(health_changed);
                if health_changed {
                    out.write_bits(u64::from(self.health), 8);
                }
                motion::write(out, units, Some((&base.motion(), ticks)), &self.motion());
            }
        }
    }

    /// Reads what [`EntityState::write`] wrote against the same `base`.
    pub fn read(
        config: &WorldConfig,
        base: Option<(&Self, u32)>,
        input: &mut BitReader,
    ) -> Result<Self, BitError> {
        match base {
            None => {
                let kind = if input.read_bool()? {
                    NetEntityKind::Projectile
                } else {
                    NetEntityKind::Player
                };
                let units = units(config, kind);
                let health = if input.read_bool()? {
                    0
                } else {
                    match input.read_bits(8)? as u8 {
                        0 => return Err(BitError::OutOfRange("health 0 written whole")),
                        h => h,
                    }
                };
                let m = motion::read(input, units, None)?;
                Ok(Self::from_motion(kind, health, m))
            }
            Some((base, ticks)) => {
                let units = units(config, base.kind);
                let health = if input.read_bool()? {
                    input.read_bits(8)? as u8
                } else {
                    base.health
                };
                let m = motion::read(input, units, Some((&base.motion(), ticks)))?;
                Ok(Self::from_motion(base.kind, health, m))
            }
        }
    }

    fn motion(&self) -> Motion {
        Motion {
            x: self.x,
            y: self.y,
            vx: self.vx,
            vy: self.vy,
        }
    }

    fn from_motion(kind: NetEntityKind, health: u8, m: Motion) -> Self {
        Self {
            kind,
            x: m.x,
            y: m.y,
            vx: m.vx,
            vy: m.vy,
            health,
        }
    }

    /// Position in metres.
    pub fn position(&self) -> glam::Vec2 {
        glam::Vec2::new(f32::from(self.x), f32::from(self.y)) * POSITION_UNIT_M
    }

    /// Velocity in metres per second.
    pub fn velocity(&self) -> glam::Vec2 {
        glam::Vec2::new(f32::from(self.vx), f32::from(self.vy)) * VELOCITY_UNIT_MS
    }

    /// This state moved to `position` (metres), everything else kept.
    pub fn at(&self, position: glam::Vec2) -> Self {
        Self {
            x: Self::quantize_position(position.x),
            y: Self::quantize_position(position.y),
            ..*self
        }
    }
}

/// A player's own standing, in each of its snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerStatus {
    /// 0 while dead.
    pub health: u8,
    /// Kills.
    pub score: u32,
    /// Deaths.
    pub deaths: u32,
}

/// A scoreboard line: most kills first, then fewest deaths.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// Kills.
    pub score: u32,
    /// Deaths.
    pub deaths: u32,
}

impl Ord for Standing {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score
            .cmp(&other.score)
            .then(other.deaths.cmp(&self.deaths))
    }
}

impl PartialOrd for Standing {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What every client is told on joining: the arena's settings and its pillars.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShooterShared {
    /// The match's settings (the arena's size follows from them).
    pub config: WorldConfig,
    /// The pillars.
    pub walls: Vec<Wall>,
}

impl ShooterShared {
    /// What a client needs of `world`.
    pub fn of(world: &World) -> Self {
        Self {
            config: *world.config(),
            walls: world.walls().to_vec(),
        }
    }
}

/// The wire id of a world entity: a slotmap key's slot and generation.
pub fn net_id(id: super::EntityId) -> NetEntityId {
    use slotmap::Key;
    // A slotmap key's FFI form is the generation in the high half, the index in the low.
    let ffi = id.data().as_ffi();
    NetEntityId {
        index: ffi as u32,
        generation: (ffi >> 32) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 256 players: a 160 m arena, 5,120 position units, 13 bits.
    const CONFIG: WorldConfig = WorldConfig {
        max_players: 256,
        tick_hz: 60,
        seed: 1,
    };

    fn round_trip(base: Option<(&EntityState, u32)>, e: &EntityState) -> usize {
        let mut buf = [0u8; 64];
        let mut w = BitWriter::new(&mut buf, 512);
        e.write(&CONFIG, base, &mut w);
        let bits = w.bits();
        let len = w.finish().expect("fits");
        let mut r = BitReader::new(&buf[..len]);
        assert_eq!(EntityState::read(&CONFIG, base, &mut r).as_ref(), Ok(e));
        r.finish().expect("nothing left");
        bits
    }

    #[test]
    fn entities_round_trip_whole_and_against_a_base() {
        let small = [0u16, 250, 251, u16::MAX];
        let signed = [0i16, -1, 125, -126, 126, i16::MIN, i16::MAX];
        let mut all = Vec::new();
        for (i, &x) in small.iter().enumerate() {
            for &vx in &signed {
                for kind in [NetEntityKind::Player, NetEntityKind::Projectile] {
                    all.push(EntityState {
                        kind,
                        x,
                        y: small[(i + 1) % small.len()],
                        vx,
                        vy: signed[(i + 2) % signed.len()],
                        health: if kind == NetEntityKind::Player { 99 } else { 0 },
                    });
                }
            }
        }
        for a in &all {
            round_trip(None, a);
            for b in all.iter().filter(|b| b.kind == a.kind).step_by(5) {
                round_trip(Some((b, 4)), a);
            }
        }
        // A player running steadily: 2 position units a tick, 4 ticks on.
        let base = EntityState {
            kind: NetEntityKind::Player,
            x: 1000,
            y: 1000,
            vx: 120,
            vy: 0,
            health: 100,
        };
        let now = EntityState { x: 1008, ..base };
        assert_eq!(round_trip(Some((&base, 4)), &now), 3);
        // A new projectile: kind, health 0 in a bit, position in the arena (1 + 2 * 13),
        // vx (2 + 12), and for vy its sign and an error of 0 from what 30 m/s leaves.
        let projectile = EntityState {
            kind: NetEntityKind::Projectile,
            vx: 576,
            vy: -768,
            health: 0,
            ..base
        };
        assert_eq!(round_trip(None, &projectile), 1 + 1 + 27 + 14 + 1 + 2);
        // A new player: kind, the health bit, health, position, velocity.
        assert_eq!(round_trip(None, &base), 1 + 1 + 8 + 27 + 10 + 6);
    }

    #[test]
    fn quantizing_rounds_to_the_nearest_unit_and_clamps() {
        let p = EntityState::quantize_position;
        assert_eq!(p(0.0), 0);
        assert_eq!(p(1.0), 32);
        assert_eq!(p(1.0 + 0.49 * POSITION_UNIT_M), 32);
        assert_eq!(p(1.0 + 0.51 * POSITION_UNIT_M), 33);
        assert_eq!(p(-3.0), 0);
        assert_eq!(p(1e9), u16::MAX);
        assert_eq!(p(f32::NAN), 0);
        let v = EntityState::quantize_velocity;
        assert_eq!(v(0.0), 0);
        assert_eq!(v(30.0), 960);
        assert_eq!(v(-30.0), -960);
        assert_eq!(v(-1.0 - 0.49 * VELOCITY_UNIT_MS), -32);
        assert_eq!(v(-1.0 - 0.51 * VELOCITY_UNIT_MS), -33);
        assert_eq!(v(0.2 * VELOCITY_UNIT_MS), 0);
        assert_eq!(v(-0.2 * VELOCITY_UNIT_MS), 0);
        assert_eq!(v(1e9), i16::MAX);
        assert_eq!(v(-1e9), i16::MIN);
        assert_eq!(v(f32::NAN), 0);
        // The same as f32::round away from ties, over a sweep.
        for i in -4000..4000 {
            let m = i as f32 * 0.0123;
            assert_eq!(v(m), (m / VELOCITY_UNIT_MS).round() as i16, "{m}");
            if m >= 0.0 {
                assert_eq!(p(m), (m / POSITION_UNIT_M).round() as u16, "{m}");
            }
        }
    }

    #[test]
    fn more_kills_rank_higher_then_fewer_deaths() {
        let a = Standing {
            score: 3,
            deaths: 9,
        };
        let b = Standing {
            score: 2,
            deaths: 0,
        };
        let c = Standing {
            score: 2,
            deaths: 1,
        };
        let mut all = vec![c, a, b];
        all.sort_by(|x, y| y.cmp(x));
        assert_eq!(all, vec![a, b, c]);
    }
}
