//! Fault hooks for tests: make a failure happen at a precise moment of a handoff or a
//! write, instead of sleeping and hoping to hit a window.
//!
//! Test-only, off unless the environment variable `ARENA_TEST_FAULT_DIR` names a
//! directory. Each hook fires while a file of its name exists there, so a test arms and
//! disarms it by creating and removing that file. Nothing is checked when the variable
//! is unset, and no hook exists for anything a remote peer could trigger.
//!
//! | file | effect |
//! |---|---|
//! | `snapshot-write-fails` | snapshot writes fail as on a full disk (the store) |
//! | `lease-write-fails` | lease writes fail as on a full disk (the store) |
//! | `standby-dies-after-lease` | a standby receiving a handoff aborts right after it took the lease |
//! | `standby-dies-before-first-tick` | a standby that received a handoff aborts before its first tick |
//! | `standby-pauses-on-commit` | a standby receiving a handoff stops itself (SIGSTOP) before acting on it |

use std::path::PathBuf;

/// The environment variable that enables the hooks.
pub const FAULT_DIR_ENV: &str = "ARENA_TEST_FAULT_DIR";

/// Where the hooks' files are looked for, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    dir: Option<PathBuf>,
}

impl Faults {
    /// Hooks as the environment sets them (none unless `ARENA_TEST_FAULT_DIR` is set).
    pub fn from_env() -> Self {
        let dir = std::env::var_os(FAULT_DIR_ENV).map(PathBuf::from);
        if let Some(dir) = &dir {
            tracing::warn!(dir = %dir.display(), "test fault hooks are enabled ({FAULT_DIR_ENV})");
        }
        Self { dir }
    }

    /// The directory, for the store's own hooks.
    pub fn dir(&self) -> Option<PathBuf> {
        self.dir.clone()
    }

    /// Whether the hook `name` is armed now.
    pub fn armed(&self, name: &str) -> bool {
        self.dir.as_ref().is_some_and(|dir| dir.join(name).exists())
    }

    /// Dies like a crashed process if `name` is armed.
    pub fn crash_if(&self, name: &str) {
        if self.armed(name) {
            tracing::error!(hook = name, "fault hook: aborting the process");
            std::process::abort();
        }
    }

    /// Stops this process (SIGSTOP, as a long pause would) if `name` is armed; it goes on
    /// when a test sends SIGCONT.
    pub fn pause_if(&self, name: &str) {
        if self.armed(name) {
            tracing::warn!(
                hook = name,
                "fault hook: stopping the process until SIGCONT"
            );
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &std::process::id().to_string()])
                .status();
        }
    }
}
