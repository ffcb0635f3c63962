//! `tag-bots`: headless bots that play tag ([`arena_tag::Tag`]) against a `tag-server`,
//! then print the same one-line JSON report as `arena-bots` (and exit with the same codes:
//! see [`arena_client::bots::cli`]).
//!
//! It takes the flags every Arena bot runner takes (`--admin` and `--admin-token`, or
//! `--key-file` and `--server`, `--count`, `--duration`, `--seed`, `--simulate`...; see
//! `--help`):
//!
//! ```text
//! cargo run --release -p arena-client --example tag-bots -- --count 8 --duration 30
//! ```
//!
//! Each bot plays on its own: "it" runs at the nearest runner it sees; any other runner
//! flees "it" when it comes within 12 m, and otherwise wanders, turning every 1 to 3 s.

use std::process::ExitCode;

use arena_client::bots::Bot;
use arena_client::bots::cli::{self, BotArgs, EXIT_CODES_HELP};
use arena_shared::protocol::Snapshot;
use arena_tag::{RunnerState, Tag, TagInput, TagShared};
use glam::Vec2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

/// Headless tag bots for load and soak tests: each has its own UDP socket and plays with
/// a simple mind. Prints one JSON line with what they saw.
#[derive(Debug, clap::Parser)]
#[command(name = "tag-bots", version, after_help = EXIT_CODES_HELP)]
struct Args {
    #[command(flatten)]
    bots: BotArgs,
}

fn main() -> ExitCode {
    let args: Args = cli::parse();
    cli::main::<Tag, TagBrain>("tag-bots", args.bots, TagBrain::new)
}

/// How near "it" comes before a runner flees, metres.
const FLEE_WITHIN_M: f32 = 12.0;
/// How near an edge a fleeing runner steers off it, metres (or "it" corners it).
const EDGE_M: f32 = 3.0;

/// A tag bot's mind: what it saw last, and where it heads when nothing else matters.
struct TagBrain {
    rng: Pcg64Mcg,
    /// Its own position, and whether it is "it".
    own: Option<(Vec2, bool)>,
    /// As "it": the nearest runner in view. Otherwise: "it", if near.
    other: Option<Vec2>,
    /// The arena's side, once the match's shared data has arrived.
    size: Option<f32>,
    tick_hz: u32,
    heading: Vec2,
    turn_in_ticks: u32,
}

impl TagBrain {
    /// A bot with its own seeded choices.
    fn new(seed: u64) -> Self {
        Self {
            rng: Pcg64Mcg::seed_from_u64(seed),
            own: None,
            other: None,
            size: None,
            tick_hz: 60,
            heading: Vec2::X,
            turn_in_ticks: 0,
        }
    }

    /// Straight on, turning to a random heading every 1 to 3 seconds.
    fn wander(&mut self) -> TagInput {
        if self.turn_in_ticks == 0 {
            let angle = self.rng.random_range(0.0..std::f32::consts::TAU);
            self.heading = Vec2::from_angle(angle);
            self.turn_in_ticks = self.rng.random_range(self.tick_hz..3 * self.tick_hz);
        }
        self.turn_in_ticks -= 1;
        TagInput::towards(self.heading)
    }

    /// Away from "it", and off any edge it would be cornered against.
    fn flee(&self, own: Vec2, it: Vec2) -> TagInput {
        let mut away = (own - it).normalize_or_zero();
        if let Some(size) = self.size {
            for axis in 0..2 {
                if own[axis] < EDGE_M {
                    away[axis] += 1.0;
                }
                if own[axis] > size - EDGE_M {
                    away[axis] -= 1.0;
                }
            }
        }
        TagInput::towards(away)
    }
}

impl Bot<Tag> for TagBrain {
    fn observe(&mut self, snapshot: &Snapshot<Tag>, shared: Option<&TagShared>) {
        self.tick_hz = snapshot.config.tick_hz.max(1);
        if let Some(shared) = shared {
            self.size = Some(shared.size);
        }
        self.own = snapshot
            .own_entity()
            .map(|e| (e.state.position(), e.state.it));
        self.other = None;
        let Some((own, it)) = self.own else { return };
        let others = snapshot
            .entities
            .iter()
            .filter(|e| Some(e.id) != snapshot.your_entity)
            .map(|e| &e.state);
        self.other = if it {
            others
                .map(RunnerState::position)
                .min_by(|a, b| a.distance_squared(own).total_cmp(&b.distance_squared(own)))
        } else {
            others
                .filter(|s| s.it)
                .map(RunnerState::position)
                .find(|p| p.distance(own) < FLEE_WITHIN_M)
        };
    }

    fn decide(&mut self) -> TagInput {
        match (self.own, self.other) {
            (Some((own, true)), Some(target)) => TagInput::towards(target - own),
            (Some((own, false)), Some(it)) => self.flee(own, it),
            _ => self.wander(),
        }
    }
}
