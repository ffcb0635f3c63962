//! Replay protection: a 256-entry window of recently received sequence numbers.

use super::REPLAY_PROTECTION_BUFFER_SIZE;

/// Remembers which recent packet sequences a connection has already accepted.
///
/// Covers keep-alive, payload and disconnect packets. A sequence more than 256 behind the
/// newest is refused outright; otherwise its slot (`sequence % 256`) decides.
#[derive(Debug, Clone)]
pub struct ReplayProtection {
    /// The newest sequence accepted so far (0 when fresh, as in the reference).
    most_recent: u64,
    /// The last sequence stored in each slot; `None` for a slot never used.
    received: [Option<u64>; REPLAY_PROTECTION_BUFFER_SIZE],
}

impl Default for ReplayProtection {
    fn default() -> Self {
        Self {
            most_recent: 0,
            received: [None; REPLAY_PROTECTION_BUFFER_SIZE],
        }
    }
}

impl ReplayProtection {
    /// Forgets everything, as on a new connection.
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Records a sequence whose packet authenticated.
    pub fn advance(&mut self, sequence: u64) {
        self.most_recent = self.most_recent.max(sequence);
        self.received[slot(sequence)] = Some(sequence);
    }

    /// The newest sequence accepted so far.
    pub fn most_recent(&self) -> u64 {
        self.most_recent
    }

    /// Whether `sequence` was seen already or is too old to tell.
    pub fn already_received(&self, sequence: u64) -> bool {
        // Subtraction form: `sequence + 256 <= most_recent` overflows near u64::MAX.
        let window = REPLAY_PROTECTION_BUFFER_SIZE as u64;
        if self.most_recent >= window && sequence <= self.most_recent - window {
            return true;
        }
        match self.received[slot(sequence)] {
            None => false,
            Some(stored) => stored >= sequence,
        }
    }
}

fn slot(sequence: u64) -> usize {
    (sequence % REPLAY_PROTECTION_BUFFER_SIZE as u64) as usize
}
