//! The arena shooter as a [`Game`]: what Arena's generic layer asks of it.

use std::collections::BTreeMap;

use glam::Vec2;

use super::wire::{EntityState, NetEntityKind, PlayerStatus, ShooterShared, Standing, net_id};
use super::world::{EntityKind, GameEvent, World, move_player};
use super::{Buttons, PlayerInput};
use crate::game::{Game, MatchConfig, NetEntityId, PlayerId, Seen, Tick, Viewer, nearness};
use crate::protocol::bits::{BitError, BitReader, BitWriter};

/// The built-in game: a top-down arena shooter (see [`crate::sim`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shooter;

impl Game for Shooter {
    const NAME: &'static str = "arena";
    const SCHEMA_VERSION: u32 = 1;

    type Input = PlayerInput;
    type State = World;
    type Entity = EntityState;
    type Status = PlayerStatus;
    type Standing = Standing;
    type Event = GameEvent;
    type Shared = ShooterShared;
    /// Position and velocity, metres and metres per second.
    type Body = (Vec2, Vec2);

    fn new_state(config: &MatchConfig) -> World {
        World::new(*config)
    }

    fn config(state: &World) -> &MatchConfig {
        state.config()
    }

    fn tick(state: &World) -> Tick {
        state.tick()
    }

    fn join(state: &mut World, player: PlayerId) {
        state.add_player(player);
    }

    fn leave(state: &mut World, player: PlayerId) {
        state.remove_player(player);
    }

    fn players(state: &World) -> Vec<PlayerId> {
        state.players().keys().copied().collect()
    }

    fn step(
        state: &mut World,
        inputs: &BTreeMap<PlayerId, PlayerInput>,
        events: &mut Vec<GameEvent>,
    ) {
        state.step_into(inputs, events);
    }

    /// The later input, with fire held if any of them held it (a shot is never lost).
    fn merge_late(earlier: PlayerInput, mut later: PlayerInput) -> PlayerInput {
        later.buttons |= earlier.buttons & Buttons::FIRE;
        later
    }

    /// A player sees around its body; a spectator sees the arena from its centre.
    fn view(state: &World, viewer: &Viewer, out: &mut Vec<Seen<EntityState>>) {
        let (center, radius) = match viewer.player {
            Some(id) => {
                let Some(center) = state
                    .player(id)
                    .and_then(|p| state.entity(p.entity))
                    .map(|e| e.position)
                else {
                    return;
                };
                (center, viewer.radius)
            }
            None => {
                let half = state.config().arena_size() / 2.0;
                (Vec2::splat(half), half * 1.5)
            }
        };
        state.visible_near(center, radius, |id, entity| {
            let (kind, health) = match entity.kind {
                EntityKind::Player(_) => (NetEntityKind::Player, state.body_health(id)),
                EntityKind::Projectile { .. } => (NetEntityKind::Projectile, 0),
            };
            out.push(Seen {
                id: net_id(id),
                priority: nearness(entity.position.distance(center), radius),
                state: EntityState {
                    kind,
                    x: EntityState::quantize_position(entity.position.x),
                    y: EntityState::quantize_position(entity.position.y),
                    vx: EntityState::quantize_velocity(entity.velocity.x),
                    vy: EntityState::quantize_velocity(entity.velocity.y),
                    health,
                },
            });
        });
    }

    fn body_of(state: &World, player: PlayerId) -> Option<NetEntityId> {
        state.player(player).map(|p| net_id(p.entity))
    }

    fn status(state: &World, player: PlayerId) -> Option<PlayerStatus> {
        state.player(player).map(|p| PlayerStatus {
            health: p.health,
            score: p.score,
            deaths: p.deaths,
        })
    }

    fn standing(state: &World, player: PlayerId) -> Option<Standing> {
        state.player(player).map(|p| Standing {
            score: p.score,
            deaths: p.deaths,
        })
    }

    /// Everyone hears of a kill (the kill feed); a hit only its victim and its shooter.
    fn heard_by(_: &World, event: &GameEvent, player: Option<PlayerId>) -> bool {
        match *event {
            GameEvent::Killed { .. } => true,
            GameEvent::Hit { victim, by } => player == Some(victim) || player == Some(by),
            GameEvent::Respawned { .. } => false,
        }
    }

    fn mentions(event: &GameEvent, out: &mut Vec<PlayerId>) {
        match *event {
            GameEvent::Killed { victim, by } | GameEvent::Hit { victim, by } => {
                out.extend([by, victim]);
            }
            GameEvent::Respawned { player } => out.push(player),
        }
    }

    fn shared(state: &World) -> ShooterShared {
        ShooterShared::of(state)
    }

    fn write_entity(
        config: &MatchConfig,
        base: Option<&EntityState>,
        ticks: u32,
        entity: &EntityState,
        out: &mut BitWriter,
    ) {
        entity.write(config, base.map(|b| (b, ticks)), out);
    }

    fn read_entity(
        config: &MatchConfig,
        base: Option<&EntityState>,
        ticks: u32,
        input: &mut BitReader,
    ) -> Result<EntityState, BitError> {
        EntityState::read(config, base.map(|b| (b, ticks)), input)
    }

    fn hash(state: &World) -> u64 {
        state.hash()
    }

    fn restored(state: &mut World) {
        state.rebuild_grids();
    }

    fn body(entity: &EntityState) -> Option<(Vec2, Vec2)> {
        (entity.kind == NetEntityKind::Player && entity.health > 0)
            .then(|| (entity.position(), entity.velocity()))
    }

    fn predict(
        shared: &ShooterShared,
        config: &MatchConfig,
        (position, velocity): (Vec2, Vec2),
        input: PlayerInput,
    ) -> (Vec2, Vec2) {
        move_player(position, velocity, input, config, &shared.walls)
    }

    fn body_position(body: &(Vec2, Vec2)) -> Vec2 {
        body.0
    }

    fn interpolate(from: &EntityState, to: &EntityState, alpha: f32) -> EntityState {
        to.at(from.position().lerp(to.position(), alpha))
    }

    fn extrapolate(entity: &EntityState, seconds: f32) -> EntityState {
        entity.at(entity.position() + entity.velocity() * seconds)
    }
}
