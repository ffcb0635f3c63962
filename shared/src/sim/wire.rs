//! What the shooter replicates: one entity quantized, and a player's standing.

use serde::{Deserialize, Serialize};

use super::world::{Wall, World, WorldConfig};
use crate::game::NetEntityId;
use crate::protocol::messages::{signed_varint_len, varint_len};

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
/// Metres per second per velocity unit (velocities are i16: up to ±128 m/s).
pub const VELOCITY_UNIT_MS: f32 = 1.0 / 256.0;

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
    /// Quantizes a position component.
    pub fn quantize_position(metres: f32) -> u16 {
        (metres / POSITION_UNIT_M)
            .round()
            .clamp(0.0, f32::from(u16::MAX)) as u16
    }

    /// Quantizes a velocity component.
    pub fn quantize_velocity(metres_per_second: f32) -> i16 {
        (metres_per_second / VELOCITY_UNIT_MS)
            .round()
            .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
    }

    /// Bytes this state takes in the codec (bincode varint), without encoding it.
    ///
    /// Filling a snapshot asks this for every entity in view of every client every tick,
    /// so it is arithmetic rather than a trial encode; a test pins it to the codec.
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(u64::from(self.x))
            + varint_len(u64::from(self.y))
            + signed_varint_len(i64::from(self.vx))
            + signed_varint_len(i64::from(self.vy))
            + 1
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
    use crate::protocol::messages::{encoded_len, net_id_len};

    #[test]
    fn entity_encoded_len_matches_the_codec() {
        let values = [0u32, 1, 250, 251, 65535, 65536, u32::MAX];
        let small = [0u16, 250, 251, u16::MAX];
        let signed = [0i16, -1, 125, -126, 126, i16::MIN, i16::MAX];
        for (i, &index) in values.iter().enumerate() {
            let id = NetEntityId {
                index,
                generation: values[(i + 3) % values.len()],
            };
            assert_eq!(Some(net_id_len(id)), encoded_len(&id), "{id:?}");
            for &x in &small {
                for &vx in &signed {
                    let e = EntityState {
                        kind: NetEntityKind::Projectile,
                        x,
                        y: small[(i + 1) % small.len()],
                        vx,
                        vy: signed[(i + 2) % signed.len()],
                        health: 255,
                    };
                    assert_eq!(Some(e.encoded_len()), encoded_len(&e), "{e:?}");
                }
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
