//! Tag: a second game behind Arena's [`Game`](arena_shared::game::Game) seam, small and
//! different in kind from the built-in shooter (no projectiles, no health, another input).
//!
//! # Rules
//!
//! - Every player is a runner, a circle of [`RADIUS`] in a square arena whose side grows
//!   with the match's capacity ([`arena_size`]). Runners spawn where the match's seeded RNG
//!   puts them and never leave the arena.
//! - A player sends a direction ([`TagInput`]): its runner accelerates to [`SPEED`] that
//!   way, or brakes to a stand on zero. A player that sends nothing for a tick keeps its
//!   last direction.
//! - One runner is "it". Whenever no one is (the first players of a match, or "it" left),
//!   the RNG picks one and everyone hears [`TagEvent::NewIt`].
//! - "It" runs [`IT_SPEED_FACTOR`] times as fast, so it can catch. When it touches another
//!   runner (centres closer than two radii) that runner is "it" ([`TagEvent::Tagged`],
//!   heard by everyone), and the one who tagged it cannot be tagged for [`NO_TAG_BACK_S`]
//!   seconds: no tag-backs.
//! - The score is time free: every tick a player is not "it" counts one. The scoreboard
//!   ranks the most ticks free first.
//!
//! [`TagState::step`] is a pure function of the state and the inputs: runners move in
//! player-id order (a `BTreeMap`), the RNG lives in the state, nothing reads a clock.
//! [`run`] is the one movement function: the step moves every runner with it, and a client
//! predicts its own runner with it.
//!
//! # Layout
//!
//! - the crate root: the rules, the state and its step;
//! - [`wire`]: what travels (the input, the replicated runner, status, events);
//! - [`game`]: [`Tag`], the rules as a [`Game`](arena_shared::game::Game).

use std::collections::BTreeMap;

use arena_shared::game::{MatchConfig, NetEntityId, PlayerId, Tick};
use arena_shared::hash::StableHasher;
use glam::Vec2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};

pub mod game;
pub mod wire;

pub use game::Tag;
pub use wire::{RunnerState, TagEvent, TagInput, TagShared, TagStatus, TicksFree};

/// A runner's radius, metres: two touch when their centres are closer than twice this.
pub const RADIUS: f32 = 0.5;
/// Top speed, metres per second.
pub const SPEED: f32 = 7.0;
/// How much faster "it" runs.
pub const IT_SPEED_FACTOR: f32 = 1.1;
/// How fast a runner changes velocity, metres per second squared.
pub const ACCELERATION: f32 = 40.0;
/// How long a runner who passed "it" on cannot be tagged, seconds.
pub const NO_TAG_BACK_S: f32 = 1.0;
/// Arena area per player slot, m²: the arena grows with capacity.
const AREA_PER_PLAYER_M2: f32 = 60.0;
const MIN_ARENA_SIZE: f32 = 20.0;

/// The arena's side for a match, metres.
pub fn arena_size(config: &MatchConfig) -> f32 {
    (config.max_players as f32 * AREA_PER_PLAYER_M2)
        .sqrt()
        .max(MIN_ARENA_SIZE)
}

/// What moves: a runner's position and velocity (metres, metres per second) and whether it
/// is "it" (which sets its speed). A client predicts its own runner as one of these.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Body {
    /// Centre, metres.
    pub position: Vec2,
    /// Metres per second.
    pub velocity: Vec2,
    /// Whether it is "it".
    pub it: bool,
}

/// One tick of a runner's movement in an arena of side `size`: exactly what the step does,
/// and what a client runs to predict its own runner.
pub fn run(body: Body, input: TagInput, size: f32, dt: f32) -> Body {
    let top = if body.it {
        SPEED * IT_SPEED_FACTOR
    } else {
        SPEED
    };
    let velocity = body
        .velocity
        .move_towards(input.direction() * top, ACCELERATION * dt);
    let moved = body.position + velocity * dt;
    let position = moved.clamp(Vec2::splat(RADIUS), Vec2::splat(size - RADIUS));
    // The arena's edge stops whatever runs into it.
    let velocity = Vec2::select(position.cmpeq(moved), velocity, Vec2::ZERO);
    Body {
        position,
        velocity,
        it: body.it,
    }
}

/// A player's runner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Runner {
    /// The generation of its entity id (see [`Runner::entity_id`]).
    pub generation: u32,
    /// Centre, metres.
    pub position: Vec2,
    /// Metres per second.
    pub velocity: Vec2,
    /// What it does when its player sends nothing for a tick.
    pub last_input: TagInput,
    /// It cannot be tagged before this tick (it just passed "it" on).
    pub immune_until: Tick,
    /// Ticks not "it": the score.
    pub ticks_free: u64,
}

impl Runner {
    /// What moves, for a runner that is "it" or not.
    pub fn body(&self, it: bool) -> Body {
        Body {
            position: self.position,
            velocity: self.velocity,
            it,
        }
    }

    /// Its wire id, as `player`'s runner: the player id as index, the join's generation.
    pub fn entity_id(&self, player: PlayerId) -> NetEntityId {
        NetEntityId {
            index: player.0,
            generation: self.generation,
        }
    }
}

/// The whole match: serialized whole into every `MatchSnapshot`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TagState {
    config: MatchConfig,
    tick: Tick,
    rng: Pcg64Mcg,
    /// Ordered by id: the order runners move in.
    runners: BTreeMap<PlayerId, Runner>,
    it: Option<PlayerId>,
    /// The generation the next runner to join gets. One counter for the match (not one per
    /// player, which would grow with everyone who ever joined): a runner's id is never one
    /// an earlier runner had, even its own player's before it left.
    next_generation: u32,
}

impl TagState {
    /// A match with no players.
    pub fn new(config: MatchConfig) -> Self {
        Self {
            config,
            tick: Tick(0),
            rng: Pcg64Mcg::seed_from_u64(config.seed),
            runners: BTreeMap::new(),
            it: None,
            next_generation: 0,
        }
    }

    /// The match's settings.
    pub fn config(&self) -> &MatchConfig {
        &self.config
    }

    /// The tick the match is at.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// The arena's side, metres.
    pub fn size(&self) -> f32 {
        arena_size(&self.config)
    }

    /// Who is "it" (no one before the first step with players, or right after "it" left).
    pub fn it(&self) -> Option<PlayerId> {
        self.it
    }

    /// The runners, in player-id order.
    pub fn runners(&self) -> &BTreeMap<PlayerId, Runner> {
        &self.runners
    }

    /// `player`'s runner.
    pub fn runner(&self, player: PlayerId) -> Option<&Runner> {
        self.runners.get(&player)
    }

    /// `player`'s runner as a [`Body`].
    pub fn body(&self, player: PlayerId) -> Option<Body> {
        self.runner(player).map(|r| r.body(self.it == Some(player)))
    }

    /// The wire id of `player`'s runner (see [`Runner::entity_id`]).
    pub fn entity_id(&self, player: PlayerId) -> Option<NetEntityId> {
        self.runner(player).map(|r| r.entity_id(player))
    }

    /// Adds a runner for `player` at a random spot; a player already in keeps its runner.
    pub fn join(&mut self, player: PlayerId) {
        if self.runners.contains_key(&player) {
            return;
        }
        let margin = RADIUS + 1.0;
        let size = self.size();
        let position = Vec2::new(
            self.rng.random_range(margin..size - margin),
            self.rng.random_range(margin..size - margin),
        );
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1);
        self.runners.insert(
            player,
            Runner {
                generation,
                position,
                velocity: Vec2::ZERO,
                last_input: TagInput::default(),
                immune_until: Tick(0),
                ticks_free: 0,
            },
        );
    }

    /// Removes `player`'s runner. If it was "it", the next step picks another.
    pub fn leave(&mut self, player: PlayerId) {
        self.runners.remove(&player);
        if self.it == Some(player) {
            self.it = None;
        }
    }

    /// One tick: picks "it" if no one is, moves every runner (players absent from `inputs`
    /// repeat their last input), passes "it" on a touch, and scores a tick for everyone
    /// not "it".
    pub fn step(&mut self, inputs: &BTreeMap<PlayerId, TagInput>, events: &mut Vec<TagEvent>) {
        self.tick = self.tick.next();
        if self.it.is_none_or(|it| !self.runners.contains_key(&it)) {
            self.it = self.pick_it();
            if let Some(player) = self.it {
                events.push(TagEvent::NewIt { player });
            }
        }
        let (size, dt) = (self.size(), self.config.dt());
        for (&id, runner) in &mut self.runners {
            let input = inputs.get(&id).copied().unwrap_or(runner.last_input);
            runner.last_input = input;
            let moved = run(runner.body(self.it == Some(id)), input, size, dt);
            runner.position = moved.position;
            runner.velocity = moved.velocity;
        }
        self.tag(events);
        for (&id, runner) in &mut self.runners {
            if self.it != Some(id) {
                runner.ticks_free += 1;
            }
        }
    }

    /// A runner picked by the RNG, if there is any.
    fn pick_it(&mut self) -> Option<PlayerId> {
        let count = self.runners.len() as u32;
        if count == 0 {
            return None;
        }
        // A u32, not a usize: the same draw on 32- and 64-bit machines.
        let nth = self.rng.random_range(0..count) as usize;
        self.runners.keys().nth(nth).copied()
    }

    /// Passes "it" to the nearest runner it touches that may be tagged (the lowest id of
    /// equally near ones).
    fn tag(&mut self, events: &mut Vec<TagEvent>) {
        let Some(by) = self.it else { return };
        let Some(chaser) = self.runners.get(&by).map(|r| r.position) else {
            return;
        };
        let reach = (2.0 * RADIUS) * (2.0 * RADIUS);
        let touched = self
            .runners
            .iter()
            .filter(|&(&id, r)| id != by && r.immune_until <= self.tick)
            .map(|(&id, r)| (id, r.position.distance_squared(chaser)))
            .filter(|&(_, d2)| d2 < reach)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        let Some((it, _)) = touched else { return };
        let until = Tick(self.tick.0 + self.config.ticks(NO_TAG_BACK_S));
        if let Some(tagger) = self.runners.get_mut(&by) {
            tagger.immune_until = until;
        }
        self.it = Some(it);
        events.push(TagEvent::Tagged { it, by });
    }

    /// A stable hash of the whole state, RNG included, in a fixed order.
    pub fn hash(&self) -> u64 {
        let mut h = StableHasher::default();
        let c = &self.config;
        h.u64(u64::from(c.max_players) << 32 | u64::from(c.tick_hz));
        h.u64(c.seed);
        h.u64(self.tick.0);
        h.u64(self.rng.clone().random::<u64>());
        h.u64(self.it.map_or(u64::MAX, |p| u64::from(p.0)));
        h.u64(u64::from(self.next_generation));
        h.u64(self.runners.len() as u64);
        for (id, r) in &self.runners {
            h.u64(u64::from(id.0) << 32 | u64::from(r.generation));
            for v in [r.position.x, r.position.y, r.velocity.x, r.velocity.y] {
                h.f32(v);
            }
            h.bytes(&[r.last_input.x as u8, r.last_input.y as u8]);
            h.u64(r.immune_until.0);
            h.u64(r.ticks_free);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests;
