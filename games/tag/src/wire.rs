//! What tag sends: the input, a runner as clients see it, a player's standing, events.

use arena_shared::game::{MatchConfig, PlayerId};
use arena_shared::protocol::bits::{BitError, BitReader, BitWriter};
use arena_shared::protocol::motion::{self, Motion, Units};
use glam::Vec2;
use serde::{Deserialize, Serialize};

use crate::Body;

/// A player's input for one tick: the direction to run in (any length: the step normalizes
/// it), zero to stand.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TagInput {
    /// Rightwards.
    pub x: i8,
    /// Upwards.
    pub y: i8,
}

impl TagInput {
    /// The input that runs along `direction` (zero: stand).
    pub fn towards(direction: Vec2) -> Self {
        let d = direction.normalize_or_zero() * 127.0;
        Self {
            x: d.x.round() as i8,
            y: d.y.round() as i8,
        }
    }

    /// The unit direction it asks for, or zero.
    pub fn direction(self) -> Vec2 {
        Vec2::new(f32::from(self.x), f32::from(self.y)).normalize_or_zero()
    }
}

/// Metres per position unit on the wire (u16: up to 2048 m; at 65535 players, the most a
/// server takes, the arena is 1983 m).
pub const POSITION_UNIT_M: f32 = 1.0 / 32.0;
/// Metres per second per velocity unit (i16: up to ±128 m/s).
pub const VELOCITY_UNIT_MS: f32 = 1.0 / 256.0;

/// A runner as a client sees it, quantized.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerState {
    /// Position in [`POSITION_UNIT_M`].
    pub x: u16,
    /// Position in [`POSITION_UNIT_M`].
    pub y: u16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vx: i16,
    /// Velocity in [`VELOCITY_UNIT_MS`].
    pub vy: i16,
    /// Whether it is "it".
    pub it: bool,
}

impl RunnerState {
    /// `body`, quantized.
    pub fn of(body: Body) -> Self {
        let velocity = |v: f32| {
            (v / VELOCITY_UNIT_MS)
                .round()
                .clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
        };
        Self {
            vx: velocity(body.velocity.x),
            vy: velocity(body.velocity.y),
            it: body.it,
            ..Self::default()
        }
        .at(body.position)
    }

    /// This state moved to `position` (metres), everything else kept.
    pub fn at(self, position: Vec2) -> Self {
        let quantize = |m: f32| (m / POSITION_UNIT_M).round().clamp(0.0, 65535.0) as u16;
        Self {
            x: quantize(position.x),
            y: quantize(position.y),
            ..self
        }
    }

    /// Position, metres.
    pub fn position(&self) -> Vec2 {
        Vec2::new(f32::from(self.x), f32::from(self.y)) * POSITION_UNIT_M
    }

    /// Velocity, metres per second.
    pub fn velocity(&self) -> Vec2 {
        Vec2::new(f32::from(self.vx), f32::from(self.vy)) * VELOCITY_UNIT_MS
    }

    /// As a [`Body`], for prediction.
    pub fn body(&self) -> Body {
        Body {
            position: self.position(),
            velocity: self.velocity(),
            it: self.it,
        }
    }

    /// Writes it for a client holding `base` as of `ticks` ago (`None`: whole): the "it"
    /// bit, then the motion ([`motion`]: a runner running steadily costs 2 bits more).
    pub fn write(&self, tick_hz: u32, base: Option<(&Self, u32)>, out: &mut BitWriter) {
        out.write_bool(self.it);
        let base = base.map(|(b, ticks)| (b.motion(), ticks));
        motion::write(
            out,
            units(tick_hz),
            base.as_ref().map(|(m, t)| (m, *t)),
            &self.motion(),
        );
    }

    /// Reads what [`RunnerState::write`] wrote against the same `base`.
    pub fn read(
        tick_hz: u32,
        base: Option<(&Self, u32)>,
        input: &mut BitReader,
    ) -> Result<Self, BitError> {
        let it = input.read_bool()?;
        let base = base.map(|(b, ticks)| (b.motion(), ticks));
        let m = motion::read(input, units(tick_hz), base.as_ref().map(|(m, t)| (m, *t)))?;
        Ok(Self {
            x: m.x,
            y: m.y,
            vx: m.vx,
            vy: m.vy,
            it,
        })
    }

    fn motion(&self) -> Motion {
        Motion {
            x: self.x,
            y: self.y,
            vx: self.vx,
            vy: self.vy,
        }
    }
}

fn units(tick_hz: u32) -> Units {
    Units {
        velocity_per_position: (POSITION_UNIT_M / VELOCITY_UNIT_MS) as i64,
        tick_hz,
        position_bits: 16,
        speed: None,
    }
}

/// A player's own standing, in each of its snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagStatus {
    /// Whether it is "it" now.
    pub it: bool,
    /// Whole seconds it was not "it".
    pub seconds_free: u32,
}

/// A scoreboard line: ticks not "it" (more is better).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct TicksFree(pub u64);

/// What happened in a step; everyone hears both kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TagEvent {
    /// `by` touched `it`, who is "it" now.
    Tagged {
        /// The new "it".
        it: PlayerId,
        /// Who tagged it.
        by: PlayerId,
    },
    /// No one was "it" (a new match, or "it" left): the match picked `player`.
    NewIt {
        /// The new "it".
        player: PlayerId,
    },
}

/// What a client is told on joining: the settings and the arena's side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TagShared {
    /// The match's settings.
    pub config: MatchConfig,
    /// The arena's side, metres.
    pub size: f32,
}
