//! The world and its step function.

use std::collections::BTreeMap;

use glam::Vec2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use serde::{Deserialize, Serialize};
use slotmap::{SecondaryMap, SlotMap};

use super::grid::Grid;
use super::{EntityId, PlayerId, PlayerInput, Tick};
use crate::game::MatchConfig;
use crate::hash::StableHasher;

/// Radius of a player's body, metres.
pub const PLAYER_RADIUS: f32 = 0.5;
/// Health a player spawns with.
pub const PLAYER_MAX_HEALTH: u8 = 100;
const PLAYER_MAX_SPEED: f32 = 8.0;
const PLAYER_ACCELERATION: f32 = 60.0;
const PLAYER_BRAKING: f32 = 40.0;
const PROJECTILE_RADIUS: f32 = 0.15;
/// A projectile's speed, m/s (the wire codes a new one's velocity knowing it).
pub(super) const PROJECTILE_SPEED: f32 = 30.0;
const PROJECTILE_LIFETIME_S: f32 = 1.0;
const PROJECTILE_DAMAGE: u8 = 25;
const FIRE_COOLDOWN_S: f32 = 0.25;
const RESPAWN_DELAY_S: f32 = 2.0;
/// Spawn points a (re)spawn chooses among, the farthest from living players winning.
const SPAWN_CANDIDATES: u32 = 12;
/// Points a (re)spawn draws at most to find [`SPAWN_CANDIDATES`] clear of pillars.
const SPAWN_TRIES: u32 = 32;
/// Area per player slot, m²: the arena grows with capacity so density stays playable.
const AREA_PER_PLAYER_M2: f32 = 100.0;
const MIN_ARENA_SIZE: f32 = 40.0;
/// Grid cell side, metres: small enough that a hit query touches one to four cells, large
/// enough that a 30 m view query touches about 64 rather than hundreds.
const GRID_CELL: f32 = 8.0;

/// What shapes a match's simulation: the generic [`MatchConfig`] (the arena's size follows
/// from its player capacity).
pub type WorldConfig = MatchConfig;

impl MatchConfig {
    /// The shooter's arena side, metres: it grows with capacity so density stays playable.
    pub fn arena_size(&self) -> f32 {
        (self.max_players as f32 * AREA_PER_PLAYER_M2)
            .sqrt()
            .max(MIN_ARENA_SIZE)
    }
}

/// A solid axis-aligned box.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Wall {
    /// Lower-left corner.
    pub min: Vec2,
    /// Upper-right corner.
    pub max: Vec2,
}

/// What an entity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntityKind {
    /// A player's body.
    Player(PlayerId),
    /// A projectile, with its shooter and the tick it vanishes.
    Projectile {
        /// Who fired it (never hit by it).
        owner: PlayerId,
        /// When it vanishes if it hits nothing.
        expires: Tick,
    },
}

/// Something with a position.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Entity {
    /// Creation order, unique in the match. The simulation orders entities by this, never
    /// by SlotMap slot: a restored SlotMap rebuilds its free list in another order, so slot
    /// numbers of new entities may differ after a restore while serials do not.
    pub serial: u64,
    /// What it is.
    pub kind: EntityKind,
    /// Centre, metres.
    pub position: Vec2,
    /// Metres per second.
    pub velocity: Vec2,
}

/// A player's game state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Player {
    /// Its body; kept across deaths so clients can follow it.
    pub entity: EntityId,
    /// 0 while dead.
    pub health: u8,
    /// Kills.
    pub score: u32,
    /// Deaths.
    pub deaths: u32,
    /// Where it aims, unit length.
    pub aim: Vec2,
    /// First tick it may fire again.
    pub next_fire: Tick,
    /// While dead: the tick it comes back.
    pub respawn_at: Option<Tick>,
    /// The input it last applied (repeated when none arrives).
    pub last_input: PlayerInput,
}

impl Player {
    /// Whether it is in play.
    pub fn is_alive(&self) -> bool {
        self.health > 0
    }
}

/// Something that happened during a step, for logs, scores and clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GameEvent {
    /// `victim` was hit by `by`'s projectile.
    Hit {
        /// Who was hit.
        victim: PlayerId,
        /// Who fired.
        by: PlayerId,
    },
    /// `victim` died to `by`.
    Killed {
        /// Who died.
        victim: PlayerId,
        /// Who scores.
        by: PlayerId,
    },
    /// `player` is back in play.
    Respawned {
        /// Who.
        player: PlayerId,
    },
}

/// The whole match state. Owned by the tick loop; serialized whole into snapshots.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct World {
    config: WorldConfig,
    tick: Tick,
    rng: Pcg64Mcg,
    /// Serial of the next entity created.
    next_serial: u64,
    entities: SlotMap<EntityId, Entity>,
    /// Ordered by id: the order inputs are applied in.
    players: BTreeMap<PlayerId, Player>,
    walls: Vec<Wall>,
    /// Where live players' bodies are, by cell; rebuilt each step, so not serialized.
    #[serde(skip)]
    grid: Grid,
    /// Where projectiles are, by cell; rebuilt at the end of each step.
    #[serde(skip)]
    projectile_grid: Grid,
    /// Each player's health by its body, refreshed at the end of each step (and when a
    /// player joins or leaves): what a view reads per entity, by slot instead of a search
    /// of `players`. Derived, so not serialized.
    #[serde(skip)]
    body_health: SecondaryMap<EntityId, u8>,
}

impl World {
    /// A fresh arena: walls around it, pillars placed by the seed, no players.
    pub fn new(config: WorldConfig) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(config.seed);
        let size = config.arena_size();
        let pillars = (config.max_players / 8).clamp(4, 512);
        let mut walls = Vec::with_capacity(pillars as usize);
        for _ in 0..pillars {
            let half = Vec2::new(rng.random_range(0.5..2.5), rng.random_range(0.5..2.5));
            let center = Vec2::new(
                rng.random_range(5.0..size - 5.0),
                rng.random_range(5.0..size - 5.0),
            );
            walls.push(Wall {
                min: center - half,
                max: center + half,
            });
        }
        let mut world = Self {
            config,
            tick: Tick(0),
            rng,
            next_serial: 1,
            entities: SlotMap::with_key(),
            players: BTreeMap::new(),
            walls,
            grid: Grid::default(),
            projectile_grid: Grid::default(),
            body_health: SecondaryMap::new(),
        };
        world.rebuild_grid();
        world
    }

    /// The tick the next step will compute is `tick() + 1`.
    pub fn tick(&self) -> Tick {
        self.tick
    }

    /// What shapes this simulation.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// The pillars (the arena's outer edge is `[0, arena_size]²`).
    pub fn walls(&self) -> &[Wall] {
        &self.walls
    }

    /// Every entity.
    pub fn entities(&self) -> &SlotMap<EntityId, Entity> {
        &self.entities
    }

    /// One entity.
    pub fn entity(&self, id: EntityId) -> Option<&Entity> {
        self.entities.get(id)
    }

    /// Every player, by id.
    pub fn players(&self) -> &BTreeMap<PlayerId, Player> {
        &self.players
    }

    /// One player.
    pub fn player(&self, id: PlayerId) -> Option<&Player> {
        self.players.get(&id)
    }

    /// Adds a player at a spawn point; returns its body. An existing id is left as it is.
    pub fn add_player(&mut self, id: PlayerId) -> EntityId {
        if let Some(player) = self.players.get(&id) {
            return player.entity;
        }
        let position = self.spawn_point();
        let serial = self.take_serial();
        let entity = self.entities.insert(Entity {
            serial,
            kind: EntityKind::Player(id),
            position,
            velocity: Vec2::ZERO,
        });
        self.players.insert(
            id,
            Player {
                entity,
                health: PLAYER_MAX_HEALTH,
                score: 0,
                deaths: 0,
                aim: Vec2::X,
                next_fire: self.tick,
                respawn_at: None,
                last_input: PlayerInput::default(),
            },
        );
        self.grid.insert(entity, position);
        self.body_health.insert(entity, PLAYER_MAX_HEALTH);
        entity
    }

    /// Removes a player and its body.
    pub fn remove_player(&mut self, id: PlayerId) {
        if let Some(player) = self.players.remove(&id) {
            self.entities.remove(player.entity);
            self.body_health.remove(player.entity);
        }
    }

    /// Advances one tick with `inputs` (player id → input; missing players repeat their
    /// last input). Returns what happened.
    pub fn step(&mut self, inputs: &BTreeMap<PlayerId, PlayerInput>) -> Vec<GameEvent> {
        let mut events = Vec::new();
        self.step_into(inputs, &mut events);
        events
    }

    /// [`World::step`], pushing what happened onto `events`.
    pub fn step_into(
        &mut self,
        inputs: &BTreeMap<PlayerId, PlayerInput>,
        events: &mut Vec<GameEvent>,
    ) {
        self.tick = self.tick.next();
        self.respawn_due(events);
        self.apply_inputs(inputs);
        self.move_players();
        self.rebuild_grid();
        self.move_projectiles(events);
        self.rebuild_projectile_grid();
        self.refresh_body_health();
    }

    /// Rebuilds the derived grids (after deserializing a world).
    pub fn rebuild_grids(&mut self) {
        self.rebuild_grid();
        self.rebuild_projectile_grid();
        self.refresh_body_health();
    }

    /// The health of the player whose body is `entity`: 0 if it is dead or not a body.
    pub fn body_health(&self, entity: EntityId) -> u8 {
        self.body_health.get(entity).copied().unwrap_or(0)
    }

    fn refresh_body_health(&mut self) {
        self.body_health.clear();
        for player in self.players.values() {
            self.body_health.insert(player.entity, player.health);
        }
    }

    fn rebuild_grid(&mut self) {
        let bodies = self
            .players
            .values()
            .filter(|p| p.is_alive())
            .filter_map(|p| Some((p.entity, self.entities.get(p.entity)?.position)));
        refill(&mut self.grid, self.config.arena_size(), bodies);
    }

    fn rebuild_projectile_grid(&mut self) {
        let projectiles = self
            .entities
            .iter()
            .filter(|(_, e)| matches!(e.kind, EntityKind::Projectile { .. }))
            .map(|(id, e)| (id, e.position));
        refill(
            &mut self.projectile_grid,
            self.config.arena_size(),
            projectiles,
        );
    }

    /// Calls `visit` for live players' bodies and projectiles within `radius` of `center`:
    /// what a player there can see.
    pub fn visible_near(
        &self,
        center: Vec2,
        radius: f32,
        mut visit: impl FnMut(EntityId, &Entity),
    ) {
        self.near_in(&self.grid, center, radius, &mut visit);
        self.near_in(&self.projectile_grid, center, radius, &mut visit);
    }

    /// Calls `visit` for the bodies of live players within `radius` of `center`.
    pub fn players_near(
        &self,
        center: Vec2,
        radius: f32,
        mut visit: impl FnMut(EntityId, &Entity),
    ) {
        self.near_in(&self.grid, center, radius, &mut visit);
    }

    /// The entities filed in `grid` within `radius` of `center`, by where the grid filed
    /// them (their positions when it was last rebuilt).
    fn near_in(
        &self,
        grid: &Grid,
        center: Vec2,
        radius: f32,
        visit: &mut impl FnMut(EntityId, &Entity),
    ) {
        grid.for_each_within(center, radius, |id| {
            if let Some(entity) = self.entities.get(id) {
                visit(id, entity);
            }
        });
    }

    /// A stable 64-bit hash of the whole state (RNG included).
    ///
    /// Entities are hashed in serial order and named by serial, not by SlotMap key, so a
    /// restored world hashes like the original (see [`Entity::serial`]).
    pub fn hash(&self) -> u64 {
        let mut h = StableHasher::default();
        h.u64(self.tick.0);
        h.u64(self.rng.clone().random::<u64>());
        h.u64(self.next_serial);
        let mut entities: Vec<&Entity> = self.entities.values().collect();
        entities.sort_unstable_by_key(|e| e.serial);
        h.u64(entities.len() as u64);
        for e in entities {
            h.u64(e.serial);
            match e.kind {
                EntityKind::Player(p) => h.u64(u64::from(p.0)),
                EntityKind::Projectile { owner, expires } => {
                    h.u64(1 << 32 | u64::from(owner.0));
                    h.u64(expires.0);
                }
            }
            for v in [e.position.x, e.position.y, e.velocity.x, e.velocity.y] {
                h.f32(v);
            }
        }
        for (id, p) in &self.players {
            h.u64(u64::from(id.0));
            h.u64(self.entities.get(p.entity).map_or(0, |e| e.serial));
            h.bytes(&[p.health, p.last_input.buttons]);
            h.u64(u64::from(p.score) << 32 | u64::from(p.deaths));
            h.f32(p.aim.x);
            h.f32(p.aim.y);
            h.u64(p.next_fire.0);
            h.u64(p.respawn_at.map_or(u64::MAX, |t| t.0));
            h.u64(u64::from(p.last_input.aim));
        }
        for w in &self.walls {
            for v in [w.min.x, w.min.y, w.max.x, w.max.y] {
                h.f32(v);
            }
        }
        h.finish()
    }

    fn take_serial(&mut self) -> u64 {
        let serial = self.next_serial;
        self.next_serial += 1;
        serial
    }

    fn respawn_due(&mut self, events: &mut Vec<GameEvent>) {
        let due: Vec<PlayerId> = self
            .players
            .iter()
            .filter(|(_, p)| p.respawn_at.is_some_and(|t| t <= self.tick))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let position = self.spawn_point();
            if let Some(player) = self.players.get_mut(&id) {
                player.health = PLAYER_MAX_HEALTH;
                player.respawn_at = None;
                if let Some(entity) = self.entities.get_mut(player.entity) {
                    entity.position = position;
                    entity.velocity = Vec2::ZERO;
                }
                events.push(GameEvent::Respawned { player: id });
            }
        }
    }

    fn apply_inputs(&mut self, inputs: &BTreeMap<PlayerId, PlayerInput>) {
        let dt = self.config.dt();
        let cooldown = self.config.ticks(FIRE_COOLDOWN_S);
        let lifetime = self.config.ticks(PROJECTILE_LIFETIME_S);
        let mut shots = Vec::new();
        for (&id, player) in &mut self.players {
            if let Some(&input) = inputs.get(&id) {
                player.last_input = input;
            }
            let input = player.last_input;
            if !player.is_alive() {
                continue;
            }
            let Some(body) = self.entities.get_mut(player.entity) else {
                continue;
            };
            player.aim = input.aim_direction();
            body.velocity = accelerate(body.velocity, input, dt);
            if input.fire() && player.next_fire <= self.tick {
                player.next_fire = Tick(self.tick.0 + cooldown);
                let muzzle =
                    body.position + player.aim * (PLAYER_RADIUS + PROJECTILE_RADIUS + 0.05);
                shots.push(Entity {
                    serial: 0,
                    kind: EntityKind::Projectile {
                        owner: id,
                        expires: Tick(self.tick.0 + lifetime),
                    },
                    position: muzzle,
                    velocity: player.aim * PROJECTILE_SPEED,
                });
            }
        }
        for mut shot in shots {
            shot.serial = self.take_serial();
            self.entities.insert(shot);
        }
    }

    fn move_players(&mut self) {
        let dt = self.config.dt();
        let size = self.config.arena_size();
        for player in self.players.values().filter(|p| p.is_alive()) {
            let Some(body) = self.entities.get_mut(player.entity) else {
                continue;
            };
            let mut position = body.position + body.velocity * dt;
            position = position.clamp(
                Vec2::splat(PLAYER_RADIUS),
                Vec2::splat(size - PLAYER_RADIUS),
            );
            for wall in &self.walls {
                position = push_out_of_box(position, PLAYER_RADIUS, wall);
            }
            body.position = position;
        }
    }

    fn move_projectiles(&mut self, events: &mut Vec<GameEvent>) {
        let dt = self.config.dt();
        let size = self.config.arena_size();
        let mut gone = Vec::new();
        let mut flying = Vec::new();
        for (id, entity) in &mut self.entities {
            let EntityKind::Projectile { owner, expires } = entity.kind else {
                continue;
            };
            entity.position += entity.velocity * dt;
            let p = entity.position;
            let outside = p.x < 0.0 || p.y < 0.0 || p.x > size || p.y > size;
            let in_wall = self
                .walls
                .iter()
                .any(|w| p.cmpge(w.min).all() && p.cmple(w.max).all());
            if expires <= self.tick || outside || in_wall {
                gone.push(id);
            } else {
                flying.push((entity.serial, id, owner, p));
            }
        }
        // Hits resolve in creation order, whatever slots the projectiles sit in.
        flying.sort_unstable_by_key(|&(serial, ..)| serial);
        let reach = PLAYER_RADIUS + PROJECTILE_RADIUS;
        for (_, projectile, owner, at) in flying {
            // The victim is the touching player with the lowest id: a fixed choice.
            let mut victim: Option<PlayerId> = None;
            self.players_near(at, reach, |_, body| {
                if let EntityKind::Player(pid) = body.kind
                    && pid != owner
                    && victim.is_none_or(|v| pid < v)
                {
                    victim = Some(pid);
                }
            });
            if let Some(victim) = victim
                && self.players.get(&victim).is_some_and(Player::is_alive)
            {
                gone.push(projectile);
                self.damage(victim, owner, events);
            }
        }
        for id in gone {
            self.entities.remove(id);
        }
    }

    fn damage(&mut self, victim: PlayerId, by: PlayerId, events: &mut Vec<GameEvent>) {
        let respawn = Tick(self.tick.0 + self.config.ticks(RESPAWN_DELAY_S));
        let Some(player) = self.players.get_mut(&victim) else {
            return;
        };
        if !player.is_alive() {
            return;
        }
        player.health = player.health.saturating_sub(PROJECTILE_DAMAGE);
        events.push(GameEvent::Hit { victim, by });
        if player.health == 0 {
            player.deaths += 1;
            player.respawn_at = Some(respawn);
            if let Some(body) = self.entities.get_mut(player.entity) {
                body.velocity = Vec2::ZERO;
            }
            if let Some(shooter) = self.players.get_mut(&by) {
                shooter.score += 1;
            }
            events.push(GameEvent::Killed { victim, by });
        }
    }

    /// Where a joining or respawning player appears: of [`SPAWN_CANDIDATES`] points the
    /// match RNG draws clear of pillars, the one farthest from the nearest living player
    /// (ties: the first drawn), so a player killed by a group is not put back in front of
    /// it. Bounded ([`SPAWN_TRIES`] draws; if none is clear, the last one is kept: movement
    /// pushes a player out of a pillar on the next step) and a function of the state: the
    /// same world gives the same point. The one spawning is never counted as its own enemy:
    /// a joining player is not in the world yet and a respawning one is dead.
    fn spawn_point(&mut self) -> Vec2 {
        let size = self.config.arena_size();
        let margin = PLAYER_RADIUS + 1.0;
        let mut best: Option<(f32, Vec2)> = None;
        let mut last = Vec2::splat(size / 2.0);
        let mut clear_found = 0;
        for _ in 0..SPAWN_TRIES {
            if clear_found == SPAWN_CANDIDATES {
                break;
            }
            let candidate = Vec2::new(
                self.rng.random_range(margin..size - margin),
                self.rng.random_range(margin..size - margin),
            );
            last = candidate;
            let clear = self
                .walls
                .iter()
                .all(|w| push_out_of_box(candidate, PLAYER_RADIUS, w) == candidate);
            if !clear {
                continue;
            }
            clear_found += 1;
            let nearest_sq = self.nearest_living_player_sq(candidate);
            if best.is_none_or(|(d, _)| nearest_sq > d) {
                best = Some((nearest_sq, candidate));
            }
            if nearest_sq == f32::INFINITY {
                break; // Nobody alive: any clear point is as good as another.
            }
        }
        best.map_or(last, |(_, point)| point)
    }

    /// The squared distance from `point` to the nearest living player's body (infinite
    /// if none is alive). Players in id order, so float ties resolve the same way.
    fn nearest_living_player_sq(&self, point: Vec2) -> f32 {
        self.players
            .values()
            .filter(|p| p.is_alive())
            .filter_map(|p| self.entities.get(p.entity))
            .map(|e| e.position.distance_squared(point))
            .fold(f32::INFINITY, f32::min)
    }
}

/// A player body's velocity after one tick of `input`: the acceleration and braking rules.
pub fn accelerate(velocity: Vec2, input: PlayerInput, dt: f32) -> Vec2 {
    let wish = input.move_direction();
    if wish == Vec2::ZERO {
        let speed = velocity.length();
        let slower = (speed - PLAYER_BRAKING * dt).max(0.0);
        velocity.normalize_or_zero() * slower
    } else {
        (velocity + wish * PLAYER_ACCELERATION * dt).clamp_length_max(PLAYER_MAX_SPEED)
    }
}

/// A player body's position after one tick at `velocity`: kept inside the arena and out of
/// the pillars.
pub fn advance(position: Vec2, velocity: Vec2, dt: f32, arena_size: f32, walls: &[Wall]) -> Vec2 {
    let mut position = (position + velocity * dt).clamp(
        Vec2::splat(PLAYER_RADIUS),
        Vec2::splat(arena_size - PLAYER_RADIUS),
    );
    for wall in walls {
        position = push_out_of_box(position, PLAYER_RADIUS, wall);
    }
    position
}

/// One tick of a player body's movement, exactly as [`World::step`] does it: what a client
/// runs to predict its own player.
pub fn move_player(
    position: Vec2,
    velocity: Vec2,
    input: PlayerInput,
    config: &WorldConfig,
    walls: &[Wall],
) -> (Vec2, Vec2) {
    let dt = config.dt();
    let velocity = accelerate(velocity, input, dt);
    (
        advance(position, velocity, dt, config.arena_size(), walls),
        velocity,
    )
}

/// Files `items` into `grid`, laying the grid out first if it has none yet (a new or a
/// deserialized world: grids are derived state and not part of snapshots).
fn refill(grid: &mut Grid, arena_size: f32, items: impl Iterator<Item = (EntityId, Vec2)>) {
    if grid.is_empty_layout() {
        *grid = Grid::new(arena_size, GRID_CELL);
    }
    grid.fill(items);
}

/// Moves a circle out of a box along the shortest axis, if it overlaps.
fn push_out_of_box(center: Vec2, radius: f32, wall: &Wall) -> Vec2 {
    let closest = center.clamp(wall.min, wall.max);
    let offset = center - closest;
    let distance_sq = offset.length_squared();
    if distance_sq >= radius * radius {
        return center;
    }
    if distance_sq > 0.0 {
        return closest + offset / distance_sq.sqrt() * radius;
    }
    // Centre inside the box: leave by the nearest face.
    let to_left = center.x - wall.min.x;
    let to_right = wall.max.x - center.x;
    let to_bottom = center.y - wall.min.y;
    let to_top = wall.max.y - center.y;
    let nearest = to_left.min(to_right).min(to_bottom).min(to_top);
    if nearest == to_left {
        Vec2::new(wall.min.x - radius, center.y)
    } else if nearest == to_right {
        Vec2::new(wall.max.x + radius, center.y)
    } else if nearest == to_bottom {
        Vec2::new(center.x, wall.min.y - radius)
    } else {
        Vec2::new(center.x, wall.max.y + radius)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Buttons;

    fn world() -> World {
        World::new(WorldConfig {
            max_players: 16,
            tick_hz: 60,
            seed: 3,
        })
    }

    fn hold(world: &mut World, inputs: &[(PlayerId, PlayerInput)], ticks: u32) -> Vec<GameEvent> {
        let inputs: BTreeMap<_, _> = inputs.iter().copied().collect();
        (0..ticks).flat_map(|_| world.step(&inputs)).collect()
    }

    #[test]
    fn a_player_accelerates_to_the_speed_limit_and_stays_inside_the_arena() {
        let mut w = world();
        let p = PlayerId(1);
        let body = w.add_player(p);
        let right = PlayerInput {
            buttons: Buttons::RIGHT,
            aim: 0,
        };
        hold(&mut w, &[(p, right)], 600);
        let e = w.entity(body).expect("body");
        assert!(e.velocity.x <= PLAYER_MAX_SPEED + 1e-3);
        let size = w.config().arena_size();
        assert!(
            e.position.x <= size - PLAYER_RADIUS + 1e-3,
            "{:?}",
            e.position
        );
        assert!(
            e.position.x > size - PLAYER_RADIUS - 3.0,
            "blocked early: {:?}",
            e.position
        );
    }

    #[test]
    fn four_hits_kill_score_and_the_victim_respawns() {
        let mut w = world();
        let (shooter, victim) = (PlayerId(1), PlayerId(2));
        let shooter_body = w.add_player(shooter);
        let victim_body = w.add_player(victim);
        // Put them face to face in open space, clear of pillars.
        let spot = Vec2::splat(w.config().arena_size() / 2.0);
        w.walls.clear();
        if let Some(e) = w.entities.get_mut(shooter_body) {
            e.position = spot;
        }
        if let Some(e) = w.entities.get_mut(victim_body) {
            e.position = spot + Vec2::new(3.0, 0.0);
        }
        w.rebuild_grids();
        let fire_right = PlayerInput {
            buttons: Buttons::FIRE,
            aim: 0,
        };
        let events = hold(&mut w, &[(shooter, fire_right)], 60);
        let hits = events
            .iter()
            .filter(|e| matches!(e, GameEvent::Hit { victim: v, .. } if *v == victim))
            .count();
        assert_eq!(hits, 4, "{events:?}");
        assert!(events.contains(&GameEvent::Killed {
            victim,
            by: shooter
        }));
        assert_eq!(w.player(shooter).map(|p| p.score), Some(1));
        assert_eq!(w.player(victim).map(|p| p.health), Some(0));
        // What views read of a body's health follows the player's.
        assert_eq!(w.body_health(victim_body), 0);
        assert_eq!(w.body_health(shooter_body), PLAYER_MAX_HEALTH);
        let events = hold(&mut w, &[(shooter, PlayerInput::default())], 130);
        assert!(events.contains(&GameEvent::Respawned { player: victim }));
        assert_eq!(w.player(victim).map(|p| p.health), Some(PLAYER_MAX_HEALTH));
        assert_eq!(w.body_health(victim_body), PLAYER_MAX_HEALTH);
        w.remove_player(victim);
        assert_eq!(w.body_health(victim_body), 0);
    }

    /// A world of `max_players` slots where every player but `victim` stands within 3 m of
    /// `corner` and `victim` is dead, due back next tick.
    fn clustered(seed: u64, max_players: u32, corner: Vec2, victim: PlayerId) -> World {
        let mut w = World::new(WorldConfig {
            max_players,
            tick_hz: 60,
            seed,
        });
        for id in 1..=6 {
            let body = w.add_player(PlayerId(id));
            if PlayerId(id) == victim {
                continue;
            }
            let offset = Vec2::new((id % 3) as f32, (id / 3) as f32);
            if let Some(e) = w.entities.get_mut(body) {
                e.position = corner + offset;
            }
        }
        if let Some(p) = w.players.get_mut(&victim) {
            p.health = 0;
            p.respawn_at = Some(Tick(w.tick.0 + 1));
        }
        w.rebuild_grids();
        w
    }

    #[test]
    fn a_respawn_lands_away_from_a_group_of_enemies_and_the_same_state_gives_the_same_spot() {
        let victim = PlayerId(1);
        // Two arena sizes (40 m and 80 m), enemies in a corner and in the middle.
        for (max_players, corner, at_least_m) in [
            (16, Vec2::splat(6.0), 20.0),
            (16, Vec2::splat(20.0), 12.0),
            (64, Vec2::splat(10.0), 40.0),
        ] {
            for seed in 0..20 {
                let mut w = clustered(seed, max_players, corner, victim);
                let mut twin = w.clone();
                let events = hold(&mut w, &[], 1);
                assert!(events.contains(&GameEvent::Respawned { player: victim }));
                hold(&mut twin, &[], 1);
                let at = |w: &World| {
                    w.player(victim)
                        .and_then(|p| w.entity(p.entity))
                        .map(|e| e.position)
                };
                let Some(spot) = at(&w) else {
                    panic!("the victim has no body");
                };
                assert_eq!(at(&twin), Some(spot), "same state, same spot (seed {seed})");
                assert_eq!(w.hash(), twin.hash(), "seed {seed}");
                for (id, p) in w.players() {
                    let Some(enemy) = w.entity(p.entity).filter(|_| *id != victim) else {
                        continue;
                    };
                    let distance = enemy.position.distance(spot);
                    assert!(
                        distance >= at_least_m,
                        "seed {seed}, {max_players} slots: respawned {distance:.1} m from \
                         player {id:?} at {:?} (spot {spot:?})",
                        enemy.position
                    );
                }
            }
        }
    }
}
