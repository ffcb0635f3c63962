//! What each snapshot says about this player's inputs: applied (as the match counts
//! them), rolled back by a crash restore, given up by this client, and how far the match
//! went back when it moved.

use arena_shared::game::Game;
use arena_shared::protocol::Snapshot;

use super::{MAX_GIVEN_UP_TRACKED, Session};

impl<G: Game> Session<G> {
    /// How far back the match went, from a new server's first snapshot. A server that
    /// restored the match after a crash says from which tick, which is exact; otherwise
    /// the tick it is at now is the best bound (it may have ticked on since).
    pub(super) fn measure_rollback(&mut self, snapshot: &Snapshot<G>) {
        let Some(latest) = &self.latest else {
            return;
        };
        let rollback = match snapshot.restored_from_tick {
            // A restore this session has not seen yet (the old server's snapshots named
            // another one, or none).
            Some(restored) if latest.restored_from_tick != Some(restored) => {
                latest.tick.0.saturating_sub(restored.0)
            }
            _ => latest.tick.0.saturating_sub(snapshot.tick.0),
        };
        if rollback > 0 {
            self.stats.max_rollback_ticks = self.stats.max_rollback_ticks.max(rollback);
            tracing::info!(
                rollback_ticks = rollback,
                "the new server resumed from an earlier tick"
            );
        }
    }

    /// Takes in what a snapshot says about this player's inputs, keeping every frame sent
    /// accounted for (see the module docs).
    pub(super) fn account_inputs(&mut self, snapshot: &Snapshot<G>, from_new_server: bool) {
        let told = self.stats.inputs_applied;
        let applied = snapshot.inputs_applied;
        if from_new_server && applied < told {
            // Restored from before frames the old server had applied: they are undone.
            self.stats.inputs_rolled_back += told - applied;
        }
        let newest = snapshot.last_applied_input;
        if newest > self.resolved_through {
            self.resolve_given_up(newest, applied.saturating_sub(told));
        }
        self.stats.inputs_applied = applied;
        // A new server's word stands even if lower (a restore): taking the maximum would
        // hide the rollback and keep frames it never applied out of the resend.
        self.last_applied = if from_new_server {
            newest
        } else {
            self.last_applied.max(newest)
        };
    }

    /// Every frame up to `newest` now has a known fate; `gained` is how many the server
    /// applied since its previous report. Each frame in the range was either still held
    /// (so applied: the server applies in order and skips only frames it never got) or
    /// given up. If the server applied more than were held, given-up frames had reached
    /// it before they were given up: they were applied, not lost.
    pub(super) fn resolve_given_up(&mut self, newest: u32, gained: u64) {
        let range = u64::from(newest - self.resolved_through);
        let mut given_up = 0u64;
        while self.given_up.front().is_some_and(|&s| s <= newest) {
            self.given_up.pop_front();
            given_up += 1;
        }
        let held = range.saturating_sub(given_up);
        let applied_anyway = gained.saturating_sub(held).min(given_up);
        self.stats.inputs_given_up = self.stats.inputs_given_up.saturating_sub(applied_anyway);
        self.resolved_through = newest;
    }

    /// Stops resending the oldest unapplied frame. Its fate is settled when a server
    /// reports a newer sequence applied (it may have arrived before it was given up).
    pub(super) fn give_up_oldest(&mut self) {
        let Some(frame) = self.unapplied.pop_front() else {
            return;
        };
        self.stats.inputs_given_up += 1;
        if self.given_up.len() >= MAX_GIVEN_UP_TRACKED {
            self.given_up.pop_front();
        }
        self.given_up.push_back(frame.sequence);
    }
}
