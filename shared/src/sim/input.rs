//! What a player asks for on one tick.

use glam::Vec2;
use serde::{Deserialize, Serialize};

/// One tick's buttons and aim, as compact as it travels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerInput {
    /// [`Buttons`] bits.
    pub buttons: u8,
    /// Aim direction: 65536 steps per turn, 0 = +x, counter-clockwise.
    pub aim: u16,
}

/// Bits of [`PlayerInput::buttons`].
pub struct Buttons;

impl Buttons {
    /// Move towards +y.
    pub const UP: u8 = 1 << 0;
    /// Move towards −y.
    pub const DOWN: u8 = 1 << 1;
    /// Move towards −x.
    pub const LEFT: u8 = 1 << 2;
    /// Move towards +x.
    pub const RIGHT: u8 = 1 << 3;
    /// Fire in the aim direction.
    pub const FIRE: u8 = 1 << 4;
}

impl PlayerInput {
    /// The wished movement direction: unit length, or zero.
    pub fn move_direction(self) -> Vec2 {
        let b = self.buttons;
        let axis = |pos: u8, neg: u8| f32::from(b & pos != 0) - f32::from(b & neg != 0);
        Vec2::new(
            axis(Buttons::RIGHT, Buttons::LEFT),
            axis(Buttons::UP, Buttons::DOWN),
        )
        .normalize_or_zero()
    }

    /// The aim as a unit vector.
    pub fn aim_direction(self) -> Vec2 {
        let angle = f32::from(self.aim) / 65536.0 * std::f32::consts::TAU;
        Vec2::from_angle(angle)
    }

    /// Whether fire is held.
    pub fn fire(self) -> bool {
        self.buttons & Buttons::FIRE != 0
    }

    /// The aim step for a direction (any length but zero; zero aims along +x).
    pub fn aim_from_direction(direction: Vec2) -> u16 {
        let angle = direction
            .y
            .atan2(direction.x)
            .rem_euclid(std::f32::consts::TAU);
        (angle / std::f32::consts::TAU * 65536.0) as u32 as u16
    }
}
