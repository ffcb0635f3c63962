//! Client-side prediction and reconciliation of the client's own player, for any [`Game`].
//!
//! The own body moves at once on input, with the same movement code the server runs
//! ([`Game::predict`]). Each snapshot says where the server put the body after the inputs
//! it applied; the predictor starts from there, replays the inputs not yet applied, and
//! compares with what it had predicted. A small difference is smoothed away over a few
//! frames (an offset that decays); a large one snaps.
//!
//! Prediction needs the game's shared data (the shooter's walls): until it has arrived the
//! predictor holds the body where the server last put it rather than guess through walls.

use std::collections::VecDeque;

use arena_shared::game::{Game, InputFrame, MatchConfig};
use arena_shared::protocol::Snapshot;
use glam::Vec2;

/// A correction larger than this (in the game's units, metres for the shooter) snaps
/// instead of being smoothed.
pub const SNAP_DISTANCE_M: f32 = 2.0;
/// How fast a smoothed correction fades: the share left after one second.
const OFFSET_LEFT_AFTER_1S: f32 = 0.0001;
/// Predictions remembered for measuring the prediction error (4 s at 60 Hz).
const HISTORY: usize = 256;

/// Predicts the own player's body.
#[derive(Debug)]
pub struct Predictor<G: Game> {
    /// The match's config, from the newest snapshot (the shared data is the session's:
    /// each call passes it).
    config: Option<MatchConfig>,
    /// The body after every input made so far (or the server's, held, if not predicting).
    body: Option<G::Body>,
    /// Whether `body` is a prediction; `false`: the server's, held without shared data.
    predicted: bool,
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
    /// Where we predicted the body would be after each recent input, by sequence.
    history: VecDeque<(u32, Vec2)>,
    /// How far the server's position after an input was from our prediction of it, metres
    /// (the newest comparison).
    pub last_prediction_error_m: Option<f32>,
}

impl<G: Game> Default for Predictor<G> {
    fn default() -> Self {
        Self {
            config: None,
            body: None,
            predicted: false,
            offset: Vec2::ZERO,
            last_correction_m: 0.0,
            max_correction_m: 0.0,
            snaps: 0,
            reconciliations: 0,
            history: VecDeque::new(),
            last_prediction_error_m: None,
        }
    }
}

impl<G: Game> Predictor<G> {
    /// Reconciles with a snapshot. `shared` is the session's shared data (`None`: not yet
    /// arrived, so nothing is predicted); `unapplied` are the inputs the server had not
    /// applied when it made the snapshot, oldest first.
    pub fn on_snapshot<'a>(
        &mut self,
        snapshot: &Snapshot<G>,
        shared: Option<&G::Shared>,
        unapplied: impl Iterator<Item = &'a InputFrame<G::Input>>,
    ) {
        self.config = Some(snapshot.config);
        let Some(server) = snapshot.own_entity().and_then(|own| G::body(&own.state)) else {
            // Dead, spectating, or out of the datagram: nothing to predict.
            self.body = None;
            self.offset = Vec2::ZERO;
            return;
        };
        self.measure_prediction_error(snapshot.last_applied_input, &server);
        let Some(shared) = shared else {
            self.body = Some(server);
            self.predicted = false;
            self.offset = Vec2::ZERO;
            return;
        };
        let mut body = server;
        for frame in unapplied {
            body = self.step(shared, body, frame.input);
        }
        if let Some(before) = self.body.filter(|_| self.predicted) {
            self.reconcile(&before, &body);
        }
        self.body = Some(body);
        self.predicted = true;
    }

    /// Applies one input the moment it is made; `shared` is the session's shared data
    /// (nothing is predicted without it).
    pub fn on_input(&mut self, frame: &InputFrame<G::Input>, shared: Option<&G::Shared>) {
        let (Some(body), Some(shared)) = (self.body.filter(|_| self.predicted), shared) else {
            return;
        };
        let next = self.step(shared, body, frame.input);
        self.body = Some(next);
        if self.history.len() >= HISTORY {
            self.history.pop_front();
        }
        self.history
            .push_back((frame.sequence, G::body_position(&next)));
    }

    /// Where to draw the own body now, `dt` seconds after the previous frame.
    pub fn render_position(&mut self, dt: f32) -> Option<Vec2> {
        self.offset *= OFFSET_LEFT_AFTER_1S.powf(dt.max(0.0));
        self.position().map(|position| position + self.offset)
    }

    /// The predicted position, without smoothing.
    pub fn position(&self) -> Option<Vec2> {
        self.body.as_ref().map(G::body_position)
    }

    /// The predicted body (or the server's, held while there is no shared data yet).
    pub fn body(&self) -> Option<G::Body> {
        self.body
    }

    /// The server's position after the newest input it applied, against what we
    /// predicted for that same input when we made it.
    fn measure_prediction_error(&mut self, last_applied: u32, server: &G::Body) {
        while self
            .history
            .front()
            .is_some_and(|(seq, _)| *seq < last_applied)
        {
            self.history.pop_front();
        }
        if let Some((seq, predicted)) = self.history.front()
            && *seq == last_applied
        {
            self.last_prediction_error_m = Some(predicted.distance(G::body_position(server)));
        }
    }

    /// Counts the correction from `before` to `after` and smooths it, or snaps.
    fn reconcile(&mut self, before: &G::Body, after: &G::Body) {
        self.reconciliations += 1;
        let error = G::body_position(before) - G::body_position(after);
        self.last_correction_m = error.length();
        self.max_correction_m = self.max_correction_m.max(self.last_correction_m);
        if self.last_correction_m > SNAP_DISTANCE_M {
            self.offset = Vec2::ZERO;
            self.snaps += 1;
        } else {
            self.offset += error;
        }
    }

    /// One tick of movement; the body as it is without a config yet.
    fn step(&self, shared: &G::Shared, body: G::Body, input: G::Input) -> G::Body {
        match &self.config {
            Some(config) => G::predict(shared, config, body, input),
            None => body,
        }
    }
}

#[cfg(test)]
mod tests {
    use arena_shared::game::{NetEntityId, Tick};
    use arena_shared::protocol::Replicated;
    use arena_shared::sim::{
        Buttons, EntityState, NetEntityKind, PlayerInput, Shooter, ShooterShared,
    };

    use super::*;

    const CONFIG: MatchConfig = MatchConfig {
        max_players: 4,
        tick_hz: 60,
        seed: 5,
    };
    const OWN: NetEntityId = NetEntityId {
        index: 1,
        generation: 1,
    };

    /// A snapshot with the own body at the arena's centre, standing.
    fn snapshot(last_applied_input: u32) -> Snapshot<Shooter> {
        let centre = EntityState::quantize_position(CONFIG.arena_size() / 2.0);
        Snapshot {
            tick: Tick(10),
            baseline_tick: None,
            config: CONFIG,
            your_entity: Some(OWN),
            last_applied_input,
            inputs_applied: u64::from(last_applied_input),
            restored_from_tick: None,
            input_margin: None,
            inputs_arrived_late: 0,
            you: Default::default(),
            entities: vec![Replicated {
                id: OWN,
                state: EntityState {
                    kind: NetEntityKind::Player,
                    x: centre,
                    y: centre,
                    vx: 0,
                    vy: 0,
                    health: 100,
                },
            }],
            deferred: 0,
        }
    }

    fn right(sequence: u32) -> InputFrame<PlayerInput> {
        InputFrame {
            sequence,
            tick: Tick(10 + u64::from(sequence)),
            input: PlayerInput {
                buttons: Buttons::RIGHT,
                aim: 0,
            },
        }
    }

    #[test]
    fn inputs_move_the_body_at_once_once_the_shared_data_is_known() {
        let shared = ShooterShared {
            config: CONFIG,
            walls: Vec::new(),
        };
        let mut predictor = Predictor::<Shooter>::default();
        predictor.on_snapshot(&snapshot(0), Some(&shared), std::iter::empty());
        let start = predictor.position().unwrap();
        let frames: Vec<_> = (1..=5).map(right).collect();
        for frame in &frames {
            predictor.on_input(frame, Some(&shared));
        }
        let moved = predictor.position().unwrap();
        assert!(moved.x > start.x, "{start} -> {moved}");
        // The same snapshot again with the five inputs unapplied: the same prediction.
        predictor.on_snapshot(&snapshot(0), Some(&shared), frames.iter());
        assert!(predictor.last_correction_m < 1e-4);
        assert_eq!(predictor.reconciliations, 1);
    }

    #[test]
    fn without_shared_data_the_servers_body_is_held() {
        let mut predictor = Predictor::<Shooter>::default();
        let frames: Vec<_> = (1..=5).map(right).collect();
        predictor.on_snapshot(&snapshot(0), None, frames.iter());
        let held = predictor.position().unwrap();
        predictor.on_input(&right(6), None);
        assert_eq!(predictor.position(), Some(held));
        assert_eq!(predictor.body(), Some((held, Vec2::ZERO)));
        assert_eq!(predictor.reconciliations, 0);
        // The map arrives: prediction starts, with no correction counted for the switch.
        let shared = ShooterShared {
            config: CONFIG,
            walls: Vec::new(),
        };
        predictor.on_snapshot(&snapshot(0), Some(&shared), frames.iter());
        assert!(predictor.position().unwrap().x > held.x);
        assert_eq!(predictor.reconciliations, 0);
    }
}
