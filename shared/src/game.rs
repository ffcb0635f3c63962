//! The seam between Arena and a game: the one trait a game implements.
//!
//! Everything else in Arena (the transport, the tick loop, input buffering, snapshots to
//! clients, the `MatchSnapshot`, the store, both handoffs, crash recovery, the admin API,
//! the client session, prediction, interpolation, the bots' runner) is generic over a
//! [`Game`]. The built-in arena shooter ([`crate::sim::Shooter`]) is one implementation;
//! `games/tag` is another.
//!
//! # What a game must guarantee
//!
//! - **Determinism.** [`Game::step`] is a pure function of the state and the inputs: no
//!   clocks, no thread-local RNG, no iteration over hash maps. The RNG lives in the state.
//!   Two processes that apply the same inputs to the same state get the same
//!   [`Game::hash`]: that is what lets a standby continue a match from a snapshot.
//! - **Bounded state.** The state is serialized whole into every `MatchSnapshot`
//!   (at most 64 MiB, and a snapshot is written every few ticks): keep what grows bounded.
//! - **Versioning.** [`Game::SCHEMA_VERSION`] names the layout of [`Game::State`]. Change
//!   the layout, bump it. A snapshot of another version is passed to [`Game::migrate`],
//!   which converts it or refuses with a reason (the default refuses).
//! - **Stable entity ids.** An id in [`Seen::id`] names one entity for as long as it lives;
//!   a new entity never reuses a live one's id (a generation counter does it).

use std::collections::BTreeMap;
use std::fmt::Debug;

use serde::de::DeserializeOwned;

use crate::protocol::bits::{BitError, BitReader, BitWriter};
use serde::{Deserialize, Serialize};

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

/// What shapes every match, whatever the game. Fixed when the match is made; the game keeps
/// it in its state, so it travels in every snapshot of the match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchConfig {
    /// Player capacity.
    pub max_players: u32,
    /// Ticks per second; the step's time delta is its inverse.
    pub tick_hz: u32,
    /// Seeds the match's RNG.
    pub seed: u64,
}

impl MatchConfig {
    /// Seconds per tick.
    pub fn dt(&self) -> f32 {
        1.0 / self.tick_hz.max(1) as f32
    }

    /// A duration in ticks (at least one).
    pub fn ticks(&self, seconds: f32) -> u64 {
        (seconds * self.tick_hz as f32).round().max(1.0) as u64
    }
}

/// An entity's identity on the wire: slot index and generation. A reused slot gets a new
/// generation, so clients never mix two entities.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
pub struct NetEntityId {
    /// Slot.
    pub index: u32,
    /// Generation of the slot.
    pub generation: u32,
}

/// One input for one tick, with the sequence number that orders it and the tick it is for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputFrame<I> {
    /// Counts up from 1 per client; the server applies frames in this order.
    pub sequence: u32,
    /// The server tick this input is meant for.
    pub tick: Tick,
    /// The game's input.
    pub input: I,
}

/// Who looks at the match, for [`Game::view`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Viewer {
    /// The player looking; `None` for a spectator.
    pub player: Option<PlayerId>,
    /// How far a player sees (`--view-radius`), in the game's units.
    pub radius: f32,
}

/// One entity a viewer sees, with its replicated state.
#[derive(Debug, Clone, PartialEq)]
pub struct Seen<E> {
    /// Which entity.
    pub id: NetEntityId,
    /// How much it matters to this viewer, a weight above 0 (see [`nearness`]). Each tick
    /// an entity waits, its weight adds to its priority; a snapshot that cannot hold every
    /// change takes the highest priorities first (the viewer's own body always first).
    pub priority: f32,
    /// What the client is told about it.
    pub state: E,
}

/// A weight for [`Seen::priority`] from distance: 4 at the viewer, falling to 1 at the
/// edge of `radius` (and beyond).
pub fn nearness(distance: f32, radius: f32) -> f32 {
    if radius.is_nan() || radius <= 0.0 || !distance.is_finite() {
        return 1.0;
    }
    1.0 + 3.0 * (1.0 - (distance / radius).clamp(0.0, 1.0))
}

/// A game Arena can serve. See the module docs for what an implementation guarantees.
///
/// The implementing type is a marker (a unit struct); the game's data lives in
/// [`Game::State`]. Methods are grouped by who calls them: the server's step, what a
/// client is told, the snapshot's care, and the client's prediction and drawing.
pub trait Game: Debug + Clone + Copy + Default + PartialEq + Eq + Send + Sync + 'static {
    /// Names the game in `MatchSnapshot`s: a snapshot of another game is refused.
    const NAME: &'static str;
    /// The layout version of [`Game::State`] (see [`Game::migrate`]).
    const SCHEMA_VERSION: u32;

    /// What a client sends for one tick. `Default` is "no input": what the server feeds a
    /// player whose client is away (timed out, reconnecting), so it stands still. A
    /// connected player that sent nothing for a tick is absent from [`Game::step`]'s
    /// inputs instead, and the game decides (the shooter and tag repeat the last input).
    type Input: Copy + Default + PartialEq + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// The whole match: serialized whole into every `MatchSnapshot`. Holds its
    /// [`MatchConfig`] and its RNG.
    /// `Sync`: the server reads it from several threads at once while it builds the
    /// clients' snapshots (`--workers`), never while it steps.
    type State: Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// One entity's replicated state, as a client sees it (quantized as the game likes).
    type Entity: Clone + PartialEq + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// A player's own standing, in every snapshot it gets (health, score...).
    type Status: Clone + Default + PartialEq + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// A scoreboard line's standing: the scoreboard lists the greatest first.
    type Standing: Clone + Ord + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// Something that happened in a step. Those a client hears ([`Game::heard_by`]) reach
    /// it reliably, exactly once per connection and in order.
    type Event: Clone + PartialEq + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// What every client is told once on joining: the map and whatever else it needs to
    /// predict and draw (sent reliably, in parts, so it may exceed a datagram).
    type Shared: Clone + PartialEq + Debug + Serialize + DeserializeOwned + Send + 'static;
    /// What a client predicts of its own player (position and velocity, for the shooter).
    type Body: Copy + PartialEq + Debug + Send + 'static;

    // ---- The server's step ----

    /// A new match with no players.
    fn new_state(config: &MatchConfig) -> Self::State;
    /// The match's settings.
    fn config(state: &Self::State) -> &MatchConfig;
    /// The tick the state is at; [`Game::step`] computes `tick + 1`.
    fn tick(state: &Self::State) -> Tick;
    /// Adds `player`, or keeps it as it is if it is already in the match (a player coming
    /// back after a reconnect, a handoff or a restore).
    fn join(state: &mut Self::State, player: PlayerId);
    /// Removes `player` and whatever it owns.
    fn leave(state: &mut Self::State, player: PlayerId);
    /// The players in the match, in id order.
    fn players(state: &Self::State) -> Vec<PlayerId>;
    /// One tick: applies `inputs` (players absent from it sent none this tick: the game
    /// decides what that means; the shooter repeats the last input), advances the state to
    /// `tick + 1`, and pushes what happened onto `events`. Must be deterministic.
    fn step(
        state: &mut Self::State,
        inputs: &BTreeMap<PlayerId, Self::Input>,
        events: &mut Vec<Self::Event>,
    );
    /// Frames that arrive after their tick are applied together at the next one: their
    /// merge. The default keeps the later; the shooter also keeps a press of fire.
    fn merge_late(earlier: Self::Input, later: Self::Input) -> Self::Input {
        let _ = earlier;
        later
    }

    // ---- What a client is told ----

    /// Pushes the entities `viewer` sees onto `out`, each once (in any order).
    fn view(state: &Self::State, viewer: &Viewer, out: &mut Vec<Seen<Self::Entity>>);
    /// The entity that is `player`'s own body, if it has one now.
    fn body_of(state: &Self::State, player: PlayerId) -> Option<NetEntityId>;
    /// `player`'s own standing, for its snapshots.
    fn status(state: &Self::State, player: PlayerId) -> Option<Self::Status>;
    /// `player`'s line on the scoreboard.
    fn standing(state: &Self::State, player: PlayerId) -> Option<Self::Standing>;
    /// Whether the client of `player` (`None`: a spectator) hears `event`. Default: all do.
    fn heard_by(state: &Self::State, event: &Self::Event, player: Option<PlayerId>) -> bool {
        let _ = (state, event, player);
        true
    }
    /// The players `event` names: the server tells each client their names before the
    /// first event that names them (for a kill feed). Default: none.
    fn mentions(event: &Self::Event, out: &mut Vec<PlayerId>) {
        let _ = (event, out);
    }
    /// What every client is told once on joining.
    fn shared(state: &Self::State) -> Self::Shared;
    /// Writes `entity` for a client that holds `base`, its state `ticks` ticks ago
    /// (`None`: the client holds nothing of it). Whatever is written, [`Game::read_entity`]
    /// given the same `base` and `ticks` must read back `entity` exactly. A good coding
    /// sends only what changed, in as few bits as the change needs
    /// ([`crate::protocol::motion`] does positions and velocities). The default writes the
    /// state whole (bincode), whatever the base: correct, and the most bytes.
    ///
    /// It must depend on its arguments alone (the match's config, `base`, `ticks`,
    /// `entity`) and write the same bits each time: the server writes an update once
    /// and copies it into every client's snapshot that needs the same one.
    fn write_entity(
        config: &MatchConfig,
        base: Option<&Self::Entity>,
        ticks: u32,
        entity: &Self::Entity,
        out: &mut BitWriter,
    ) {
        let _ = (config, base, ticks);
        crate::protocol::bits::write_whole(entity, out);
    }
    /// Reads what [`Game::write_entity`] wrote; refuses (never panics on) anything else.
    fn read_entity(
        config: &MatchConfig,
        base: Option<&Self::Entity>,
        ticks: u32,
        input: &mut BitReader,
    ) -> Result<Self::Entity, BitError> {
        let _ = (config, base, ticks);
        crate::protocol::bits::read_whole(input)
    }

    // ---- The snapshot's care ----

    /// A stable 64-bit hash of the whole state (RNG included), for the determinism checks.
    fn hash(state: &Self::State) -> u64;
    /// Rebuilds derived state (indexes, grids) after the state was deserialized.
    fn restored(state: &mut Self::State) {
        let _ = state;
    }
    /// Converts a state written with schema `version` (bincode bytes of that layout).
    /// The default refuses: a snapshot of another schema cannot be read.
    fn migrate(version: u32, bytes: &[u8]) -> Result<Self::State, String> {
        let _ = bytes;
        Err(format!(
            "the {} game reads schema {} only and has no conversion from {version}",
            Self::NAME,
            Self::SCHEMA_VERSION
        ))
    }

    // ---- The client's prediction and drawing ----

    /// What to predict from the server's view of the own entity; `None`: nothing (dead).
    fn body(entity: &Self::Entity) -> Option<Self::Body>;
    /// One tick of the own player's movement, exactly as [`Game::step`] does it.
    fn predict(
        shared: &Self::Shared,
        config: &MatchConfig,
        body: Self::Body,
        input: Self::Input,
    ) -> Self::Body;
    /// Where a body is, for measuring and smoothing corrections.
    fn body_position(body: &Self::Body) -> glam::Vec2;
    /// An entity's state `alpha` (0..=1) of the way from `from` to `to`, for drawing
    /// between snapshots. The default shows `to`.
    fn interpolate(from: &Self::Entity, to: &Self::Entity, alpha: f32) -> Self::Entity {
        let _ = (from, alpha);
        to.clone()
    }
    /// An entity's state `seconds` past the newest snapshot. The default holds it still.
    fn extrapolate(entity: &Self::Entity, seconds: f32) -> Self::Entity {
        let _ = seconds;
        entity.clone()
    }
}
