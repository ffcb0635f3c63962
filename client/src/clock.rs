//! The client drivers' clock: the only place in this crate that reads time.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix time at start plus monotonic elapsed time: never goes backwards.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_unix: Duration,
}

impl Clock {
    /// Reads the clocks once.
    #[allow(clippy::disallowed_methods)]
    pub fn start() -> Self {
        Self {
            start: Instant::now(),
            start_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        }
    }

    /// Now, as a duration since the unix epoch.
    pub fn now(&self) -> Duration {
        self.start_unix + self.start.elapsed()
    }
}
