//! The built-in shooter's bots: a [`Brain`] that plays as a [`Behavior`].

use arena_shared::protocol::Snapshot;
use arena_shared::sim::{Buttons, EntityState, NetEntityKind, PlayerInput, Shooter, ShooterShared};
use glam::Vec2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::Bot;

/// How a bot plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Behavior {
    /// Walks in random directions, turning every few seconds, firing now and then.
    Wander,
    /// Runs at the nearest player it sees and fires when close; wanders if it sees none.
    Chase,
    /// Stands still and sends empty inputs (pure protocol load).
    Idle,
}

/// A bot's mind: what it saw last, and where it wants to go.
pub struct Brain {
    behavior: Behavior,
    rng: Pcg64Mcg,
    own: Option<Vec2>,
    target: Option<Vec2>,
    heading: Vec2,
    turn_in_ticks: u32,
}

impl Brain {
    /// A bot that plays as `behavior` with its own seeded choices.
    pub fn new(behavior: Behavior, seed: u64) -> Self {
        Self {
            behavior,
            rng: Pcg64Mcg::seed_from_u64(seed),
            own: None,
            target: None,
            heading: Vec2::X,
            turn_in_ticks: 0,
        }
    }

    /// Takes in a snapshot: own position and the nearest other player.
    pub fn observe(&mut self, snapshot: &Snapshot<Shooter>) {
        let own_id = snapshot.your_entity;
        self.own = snapshot.own_entity().map(|e| e.state.position());
        self.target = None;
        if let Some(own) = self.own {
            self.target = snapshot
                .entities
                .iter()
                .filter(|e| Some(e.id) != own_id && is_live_player(&e.state))
                .map(|e| e.state.position())
                .min_by(|a, b| a.distance_squared(own).total_cmp(&b.distance_squared(own)));
        }
    }

    /// This tick's input.
    pub fn decide(&mut self) -> PlayerInput {
        match self.behavior {
            Behavior::Idle => PlayerInput::default(),
            Behavior::Chase => match (self.own, self.target) {
                (Some(own), Some(target)) => {
                    let to = target - own;
                    let mut input = input_towards(to, to);
                    if to.length() < 15.0 {
                        input.buttons |= Buttons::FIRE;
                    }
                    input
                }
                _ => self.wander(),
            },
            Behavior::Wander => self.wander(),
        }
    }

    fn wander(&mut self) -> PlayerInput {
        if self.turn_in_ticks == 0 {
            let angle = self.rng.random_range(0.0..std::f32::consts::TAU);
            self.heading = Vec2::from_angle(angle);
            self.turn_in_ticks = self.rng.random_range(60..180);
        }
        self.turn_in_ticks -= 1;
        let mut input = input_towards(self.heading, self.heading);
        if self.rng.random_bool(0.05) {
            input.buttons |= Buttons::FIRE;
        }
        input
    }
}

/// The shooter's bot: the map is not needed to play this simply. The inherent methods
/// stay, so a caller without the trait in scope (the simulated-network tests) can drive a
/// brain directly.
impl Bot<Shooter> for Brain {
    fn observe(&mut self, snapshot: &Snapshot<Shooter>, _shared: Option<&ShooterShared>) {
        Brain::observe(self, snapshot);
    }

    fn decide(&mut self) -> PlayerInput {
        Brain::decide(self)
    }
}

fn is_live_player(entity: &EntityState) -> bool {
    entity.kind == NetEntityKind::Player && entity.health > 0
}

/// Buttons that move roughly along `direction`, aiming along `aim`.
fn input_towards(direction: Vec2, aim: Vec2) -> PlayerInput {
    let mut buttons = 0;
    if direction.x > 0.3 * direction.length() {
        buttons |= Buttons::RIGHT;
    }
    if direction.x < -0.3 * direction.length() {
        buttons |= Buttons::LEFT;
    }
    if direction.y > 0.3 * direction.length() {
        buttons |= Buttons::UP;
    }
    if direction.y < -0.3 * direction.length() {
        buttons |= Buttons::DOWN;
    }
    PlayerInput {
        buttons,
        aim: PlayerInput::aim_from_direction(aim),
    }
}
