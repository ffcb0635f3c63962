//! Interpolation of other entities, for any [`Game`]: drawn about 100 ms in the past,
//! between the two snapshots around that moment ([`Game::interpolate`]), so they move
//! smoothly whatever the network does; briefly extrapolated ([`Game::extrapolate`]) when
//! snapshots are late.
//!
//! The client keeps an estimate of the server's tick clock (snapshot tick minus local time,
//! smoothed) and renders at that clock minus the delay. The render time never goes
//! backwards: a correction of the estimate only slows it down or speeds it up.

use std::collections::VecDeque;
use std::time::Duration;

use arena_shared::game::{Game, NetEntityId};
use arena_shared::protocol::{Replicated, Snapshot};

/// How far behind the newest snapshot other entities are drawn.
pub const INTERPOLATION_DELAY: Duration = Duration::from_millis(100);
/// Longest extrapolation past the newest snapshot before entities stop.
const MAX_EXTRAPOLATION: Duration = Duration::from_millis(100);
const KEEP_SNAPSHOTS: usize = 32;

/// An entity as it is drawn: its state at the render time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn<E> {
    /// Which entity.
    pub id: NetEntityId,
    /// Its state, blended or extrapolated by the game.
    pub state: E,
}

/// Buffers snapshots and samples them at the render time.
#[derive(Debug)]
pub struct Interpolator<G: Game> {
    /// Snapshot ticks and their entities, oldest first.
    snapshots: VecDeque<(f64, Vec<Replicated<G::Entity>>)>,
    tick_hz: f64,
    /// Server tick minus local seconds × tick rate, smoothed.
    offset_ticks: Option<f64>,
    last_render_tick: f64,
}

impl<G: Game> Default for Interpolator<G> {
    fn default() -> Self {
        Self {
            snapshots: VecDeque::new(),
            tick_hz: 0.0,
            offset_ticks: None,
            last_render_tick: 0.0,
        }
    }
}

impl<G: Game> Interpolator<G> {
    /// Takes a snapshot that arrived at local time `now`.
    pub fn on_snapshot(&mut self, now: Duration, snapshot: &Snapshot<G>) {
        self.tick_hz = f64::from(snapshot.config.tick_hz.max(1));
        let tick = snapshot.tick.0 as f64;
        // The session passes on only newer snapshots, but for the first one from a new
        // server: a server restored after a crash resumes at an earlier tick. Start over.
        if self.snapshots.back().is_some_and(|(t, _)| tick < *t) {
            *self = Self::default();
            self.tick_hz = f64::from(snapshot.config.tick_hz.max(1));
        }
        let observed = tick - now.as_secs_f64() * self.tick_hz;
        self.offset_ticks = Some(match self.offset_ticks {
            None => observed,
            // Slowly: one late packet must not jerk the clock.
            Some(offset) => offset + (observed - offset) * 0.05,
        });
        if self.snapshots.back().is_some_and(|(t, _)| *t >= tick) {
            return;
        }
        if self.snapshots.len() == KEEP_SNAPSHOTS {
            self.snapshots.pop_front();
        }
        self.snapshots.push_back((tick, snapshot.entities.clone()));
    }

    /// The tick of the newest snapshot buffered.
    pub fn newest_tick(&self) -> Option<u64> {
        self.snapshots.back().map(|(t, _)| *t as u64)
    }

    /// The render tick for local time `now` (never decreasing).
    pub fn render_tick(&mut self, now: Duration) -> Option<f64> {
        let offset = self.offset_ticks?;
        let tick = now.as_secs_f64() * self.tick_hz + offset
            - INTERPOLATION_DELAY.as_secs_f64() * self.tick_hz;
        self.last_render_tick = self.last_render_tick.max(tick);
        Some(self.last_render_tick)
    }

    /// Every entity as drawn at `now`, except `skip` (the own player, which is predicted).
    pub fn sample(&mut self, now: Duration, skip: Option<NetEntityId>) -> Vec<Drawn<G::Entity>> {
        let Some(render) = self.render_tick(now) else {
            return Vec::new();
        };
        let Some(newest) = self.snapshots.back() else {
            return Vec::new();
        };
        let keep = |e: &&Replicated<G::Entity>| Some(e.id) != skip;
        let drawn = |e: &Replicated<G::Entity>, state: G::Entity| Drawn { id: e.id, state };
        // Past the newest snapshot: extrapolate, briefly.
        if render >= newest.0 {
            let ahead =
                ((render - newest.0) / self.tick_hz).min(MAX_EXTRAPOLATION.as_secs_f64()) as f32;
            return newest
                .1
                .iter()
                .filter(keep)
                .map(|e| drawn(e, G::extrapolate(&e.state, ahead)))
                .collect();
        }
        // Between two snapshots: blend those present in both, show the rest as they were.
        let after = self
            .snapshots
            .iter()
            .position(|(t, _)| *t > render)
            .unwrap_or(0);
        let (t1, to) = &self.snapshots[after];
        let Some((t0, from)) = after.checked_sub(1).map(|i| &self.snapshots[i]) else {
            return to
                .iter()
                .filter(keep)
                .map(|e| drawn(e, e.state.clone()))
                .collect();
        };
        let alpha = ((render - t0) / (t1 - t0)).clamp(0.0, 1.0) as f32;
        from.iter()
            .filter(keep)
            .map(|a| match to.iter().find(|b| b.id == a.id) {
                Some(b) => drawn(b, G::interpolate(&a.state, &b.state, alpha)),
                None => drawn(a, a.state.clone()),
            })
            .collect()
    }
}
