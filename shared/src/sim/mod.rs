//! The game: a deterministic top-down 2D arena.
//!
//! Players are circles that accelerate towards their move input up to a speed limit, are
//! blocked by the arena's walls and pillars, aim, and fire projectiles on a cooldown.
//! Projectiles fly, expire, and damage the first player they touch; a player at zero health
//! dies, the shooter scores, and the victim respawns after a delay at a spot the world's
//! seeded RNG picks.
//!
//! [`World::step`] is a pure function of the world and the inputs for the tick: inputs are
//! applied in player-id order, the RNG lives in the world, iteration orders are fixed, and
//! nothing reads a clock. Same world, same inputs, same binary: the same [`World::hash`].
//!
//! # Layout
//!
//! - [`world`]: the state and `step`.
//! - [`input`]: what a player sends for one tick.
//! - [`grid`]: the uniform grid behind collision and visibility queries.
//! - [`hash`]: the stable hash that compares worlds.

pub mod grid;
pub mod hash;
pub mod input;
pub mod world;

use serde::{Deserialize, Serialize};

pub use input::{Buttons, InputFrame, PlayerInput};
pub use world::{
    Entity, EntityKind, GameEvent, PLAYER_MAX_HEALTH, PLAYER_RADIUS, Player, Wall, World,
    WorldConfig, move_player,
};

slotmap::new_key_type! {
    /// An entity in the world: a player's body or a projectile.
    pub struct EntityId;
}

/// A simulation step number. Starts at 0 and never wraps in a match's lifetime.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Tick(pub u64);

impl Tick {
    /// The tick after this one.
    pub fn next(self) -> Self {
        Self(self.0 + 1)
    }
}

/// A player's identity for the life of the match (survives reconnects and handoffs).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct PlayerId(pub u32);
