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
//! - [`game`]: the shooter as a [`crate::game::Game`].
//! - [`wire`]: what it replicates to clients.
//! - [`world`]: the state and `step`.
//! - [`input`]: what a player sends for one tick.
//! - [`grid`]: the uniform grid behind collision and visibility queries.

pub mod game;
pub mod grid;
pub mod input;
pub mod wire;
pub mod world;

pub use crate::game::{PlayerId, Tick};
/// The stable hasher, where the shooter has always found it.
pub use crate::hash;
pub use game::Shooter;
pub use input::{Buttons, PlayerInput};
pub use wire::{
    EntityState, NetEntityKind, POSITION_UNIT_M, PlayerStatus, ShooterShared, Standing,
    VELOCITY_UNIT_MS, net_id,
};
pub use world::{
    Entity, EntityKind, GameEvent, PLAYER_MAX_HEALTH, PLAYER_RADIUS, Player, Wall, World,
    WorldConfig, move_player,
};

slotmap::new_key_type! {
    /// An entity in the world: a player's body or a projectile.
    pub struct EntityId;
}
