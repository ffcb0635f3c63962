//! Tag as a [`Game`]: what Arena's generic layer asks of it.

use std::collections::BTreeMap;

use arena_shared::game::{Game, MatchConfig, NetEntityId, PlayerId, Seen, Tick, Viewer, nearness};
use arena_shared::protocol::bits::{BitError, BitReader, BitWriter};
use glam::Vec2;

use crate::wire::{RunnerState, TagEvent, TagInput, TagShared, TagStatus, TicksFree};
use crate::{Body, TagState, arena_size, run};

/// The game of tag (see the [crate docs](crate)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tag;

impl Game for Tag {
    const NAME: &'static str = "tag";
    const SCHEMA_VERSION: u32 = 1;

    type Input = TagInput;
    type State = TagState;
    type Entity = RunnerState;
    type Status = TagStatus;
    type Standing = TicksFree;
    type Event = TagEvent;
    type Shared = TagShared;
    type Body = Body;

    fn new_state(config: &MatchConfig) -> TagState {
        TagState::new(*config)
    }

    fn config(state: &TagState) -> &MatchConfig {
        state.config()
    }

    fn tick(state: &TagState) -> Tick {
        state.tick()
    }

    fn join(state: &mut TagState, player: PlayerId) {
        state.join(player);
    }

    fn leave(state: &mut TagState, player: PlayerId) {
        state.leave(player);
    }

    fn players(state: &TagState) -> Vec<PlayerId> {
        state.runners().keys().copied().collect()
    }

    fn step(
        state: &mut TagState,
        inputs: &BTreeMap<PlayerId, TagInput>,
        events: &mut Vec<TagEvent>,
    ) {
        state.step(inputs, events);
    }

    /// A player sees the runners around its own; a spectator sees them all.
    fn view(state: &TagState, viewer: &Viewer, out: &mut Vec<Seen<RunnerState>>) {
        let (center, radius) = match viewer.player {
            Some(player) => match state.runner(player) {
                Some(runner) => (runner.position, viewer.radius),
                None => return,
            },
            None => (Vec2::splat(state.size() / 2.0), f32::INFINITY),
        };
        for (&player, runner) in state.runners() {
            let distance = runner.position.distance(center);
            if distance > radius {
                continue;
            }
            out.push(Seen {
                id: runner.entity_id(player),
                priority: nearness(distance, radius),
                state: RunnerState::of(runner.body(state.it() == Some(player))),
            });
        }
    }

    fn body_of(state: &TagState, player: PlayerId) -> Option<NetEntityId> {
        state.entity_id(player)
    }

    fn status(state: &TagState, player: PlayerId) -> Option<TagStatus> {
        let hz = u64::from(state.config().tick_hz.max(1));
        state.runner(player).map(|r| TagStatus {
            it: state.it() == Some(player),
            seconds_free: u32::try_from(r.ticks_free / hz).unwrap_or(u32::MAX),
        })
    }

    fn standing(state: &TagState, player: PlayerId) -> Option<TicksFree> {
        state.runner(player).map(|r| TicksFree(r.ticks_free))
    }

    fn mentions(event: &TagEvent, out: &mut Vec<PlayerId>) {
        match *event {
            TagEvent::Tagged { it, by } => out.extend([by, it]),
            TagEvent::NewIt { player } => out.push(player),
        }
    }

    fn shared(state: &TagState) -> TagShared {
        TagShared {
            config: *state.config(),
            size: arena_size(state.config()),
        }
    }

    fn write_entity(
        config: &MatchConfig,
        base: Option<&RunnerState>,
        ticks: u32,
        entity: &RunnerState,
        out: &mut BitWriter,
    ) {
        entity.write(config.tick_hz, base.map(|b| (b, ticks)), out);
    }

    fn read_entity(
        config: &MatchConfig,
        base: Option<&RunnerState>,
        ticks: u32,
        input: &mut BitReader,
    ) -> Result<RunnerState, BitError> {
        RunnerState::read(config.tick_hz, base.map(|b| (b, ticks)), input)
    }

    fn hash(state: &TagState) -> u64 {
        state.hash()
    }

    fn body(entity: &RunnerState) -> Option<Body> {
        Some(entity.body())
    }

    fn predict(shared: &TagShared, config: &MatchConfig, body: Body, input: TagInput) -> Body {
        run(body, input, shared.size, config.dt())
    }

    fn body_position(body: &Body) -> Vec2 {
        body.position
    }

    fn interpolate(from: &RunnerState, to: &RunnerState, alpha: f32) -> RunnerState {
        to.at(from.position().lerp(to.position(), alpha))
    }

    fn extrapolate(entity: &RunnerState, seconds: f32) -> RunnerState {
        entity.at(entity.position() + entity.velocity() * seconds)
    }
}
