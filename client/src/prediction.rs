//! Client-side prediction and reconciliation of the client's own player.
//!
//! The own player moves at once on input, with the same movement code the server runs
//! ([`arena_shared::sim::move_player`]). Each snapshot says where the server put the player
//! after the inputs it applied; the predictor starts from there, replays the inputs not yet
//! applied, and compares with what it had predicted. A small difference is smoothed away
//! over a few frames (an offset that decays); a large one snaps.

use arena_shared::protocol::Snapshot;
use arena_shared::sim::{InputFrame, PlayerInput, Wall, World, WorldConfig, move_player};
use glam::Vec2;

/// A correction larger than this (metres) snaps instead of being smoothed.
pub const SNAP_DISTANCE_M: f32 = 2.0;
/// How fast a smoothed correction fades: the share left after one second.
const OFFSET_LEFT_AFTER_1S: f32 = 0.0001;

/// Predicts the own player's position.
#[derive(Debug, Default)]
pub struct Predictor {
    config: Option<WorldConfig>,
    walls: Vec<Wall>,
    /// Predicted position and velocity after every input made so far.
    state: Option<(Vec2, Vec2)>,
    /// Visual offset still to fade out after a smoothed correction.
    offset: Vec2,
    /// The last correction's size, metres.
    pub last_correction_m: f32,
    /// The largest correction so far, metres.
    pub max_correction_m: f32,
    /// Corrections that snapped.
    pub snaps: u64,
    /// Snapshots reconciled against.
    pub reconciliations: u64,
    /// Where we predicted the player would be after each recent input, by sequence.
    history: std::collections::VecDeque<(u32, Vec2)>,
    /// How far the server's position after an input was from our prediction of it, metres
    /// (the newest comparison).
    pub last_prediction_error_m: Option<f32>,
}

impl Predictor {
    /// The walls of the arena, once a snapshot told us its config.
    pub fn walls(&self) -> &[Wall] {
        &self.walls
    }

    /// The arena's config, once known.
    pub fn config(&self) -> Option<&WorldConfig> {
        self.config.as_ref()
    }

    /// Reconciles with a snapshot: `unapplied` are the inputs the server had not applied
    /// when it made it, oldest first.
    pub fn on_snapshot<'a>(
        &mut self,
        snapshot: &Snapshot,
        unapplied: impl Iterator<Item = &'a InputFrame>,
    ) {
        if self.config != Some(snapshot.world) {
            self.config = Some(snapshot.world);
            self.walls = World::new(snapshot.world).walls().to_vec();
        }
        let own = snapshot
            .your_entity
            .and_then(|id| snapshot.entities.iter().find(|e| e.id == id))
            .filter(|e| e.health > 0);
        let Some(own) = own else {
            // Dead, spectating, or out of the datagram: nothing to predict.
            self.state = None;
            self.offset = Vec2::ZERO;
            return;
        };
        // The server's position after the newest input it applied, against what we
        // predicted for that same input when we made it.
        while self
            .history
            .front()
            .is_some_and(|(seq, _)| *seq < snapshot.last_applied_input)
        {
            self.history.pop_front();
        }
        if let Some((seq, predicted)) = self.history.front()
            && *seq == snapshot.last_applied_input
        {
            self.last_prediction_error_m = Some(predicted.distance(own.position()));
        }
        let mut state = (own.position(), own.velocity());
        for frame in unapplied {
            state = self.step(state, frame.input);
        }
        if let Some((before, _)) = self.state {
            self.reconciliations += 1;
            let error = before - state.0;
            self.last_correction_m = error.length();
            self.max_correction_m = self.max_correction_m.max(self.last_correction_m);
            if self.last_correction_m > SNAP_DISTANCE_M {
                self.offset = Vec2::ZERO;
                self.snaps += 1;
            } else {
                self.offset += error;
            }
        }
        self.state = Some(state);
    }

    /// Applies one input the moment it is made.
    pub fn on_input(&mut self, frame: &InputFrame) {
        if let Some(state) = self.state {
            let next = self.step(state, frame.input);
            self.state = Some(next);
            if self.history.len() >= 256 {
                self.history.pop_front();
            }
            self.history.push_back((frame.sequence, next.0));
        }
    }

    /// Where to draw the own player now, `dt` seconds after the previous frame.
    pub fn render_position(&mut self, dt: f32) -> Option<Vec2> {
        self.offset *= OFFSET_LEFT_AFTER_1S.powf(dt.max(0.0));
        self.state.map(|(position, _)| position + self.offset)
    }

    /// The predicted position, without smoothing.
    pub fn position(&self) -> Option<Vec2> {
        self.state.map(|(p, _)| p)
    }

    fn step(&self, (position, velocity): (Vec2, Vec2), input: PlayerInput) -> (Vec2, Vec2) {
        match &self.config {
            Some(config) => move_player(position, velocity, input, config, &self.walls),
            None => (position, velocity),
        }
    }
}
