//! Choosing the input lead: how many ticks past its round-trip estimate the session aims
//! each input frame, so that frames reach the server before the tick they are for.
//!
//! The server says in every snapshot how early this client's inputs arrived since its
//! previous snapshot (`input_margin`: the least, over the frames it first received, of
//! the frame's tick less the tick it was about to run; below 0 is late) and how many came
//! after their tick (`inputs_arrived_late`). [`InputLead`] keeps the margins of the last
//! [`WINDOW`] and adapts the lead to the least that keeps them in time with
//! [`SPARE_TICKS`] to spare, the way Overwatch adjusts its clients' command rate: it
//! raises the lead at once when inputs arrive late and lowers it slowly (one tick at most
//! per [`LOWER_EVERY`], only with a full window whose margins leave at least a tick
//! beyond the spare), within [`MIN_LEAD_TICKS`]`..=`[`MAX_LEAD_TICKS`].
//!
//! # How late is too late
//!
//! The goal is that at least 99% of inputs are *applied* in time. Against a server that
//! applies frames one per tick, in order, one frame that arrives late costs more than
//! itself: the frames after it are applied a tick late too, until the session notices (a
//! round trip later) and leaves a tick out. (Arena's server now merges every frame due by
//! a tick, so a late frame costs only itself there; the rule below is kept for any server
//! and is conservative against this one.) So the share of late *arrivals* tolerated is
//! 1% divided by the frames of one such episode (a round trip and a snapshot interval of
//! them, plus one): at 60 Hz with a 50 ms round trip about 0.2%, which within a
//! two-second window means no late margin at all. A long round trip tolerates fewer
//! still.
//!
//! # Margins measured under another lead
//!
//! A margin is that of frames sent about a round trip earlier, under the lead of then.
//! Each is stored less the lead it was sent with (what it would be with no lead), so a
//! change of lead does not make the old margins count twice. As the moment of sending is
//! only known within a range, both bounds are kept: raising uses the least lead of the
//! range (the old margins do not raise again what was just raised), lowering the greatest.
//!
//! Sans-IO: no clock; it is fed the snapshots' figures and the time.

use std::collections::VecDeque;
use std::time::Duration;

/// The lead a session starts with, in ticks (the constant the session used to aim with).
pub const INITIAL_LEAD_TICKS: f64 = 2.0;
/// The least lead, in ticks.
pub const MIN_LEAD_TICKS: f64 = 0.5;
/// The greatest lead, in ticks (half a second at 60 Hz).
pub const MAX_LEAD_TICKS: f64 = 30.0;
/// How far back the margins that decide the lead go.
pub const WINDOW: Duration = Duration::from_secs(2);
/// The lead goes down by at most one tick this often (and not this soon after going up).
pub const LOWER_EVERY: Duration = Duration::from_secs(1);
/// The share of inputs that may be applied late.
pub const LATE_SHARE: f64 = 0.01;
/// The margin, in ticks, the lead aims to leave at the window's low quantile: a raise
/// leaves this much, and the lead comes down only while it leaves at least this plus a
/// tick. One tick covers a frame that waits for the next packet (one lost) on top of what
/// the window saw.
pub const SPARE_TICKS: f64 = 1.0;
/// One report of this many late frames raises the lead at once to cover it, whatever
/// the window says: the network got worse.
pub const LATE_BURST: u8 = 2;
/// Margins from a new server are ignored for this long past a round trip: frames sent
/// before the switch were aimed at the old server's ticks.
pub const NEW_SERVER_SETTLE: Duration = Duration::from_millis(200);
/// How long before the frames' first sending a report's range reaches, past a round
/// trip and a snapshot interval: frames resent after a loss, and jitter.
const SEND_SLACK: Duration = Duration::from_millis(50);
/// Margins kept at most (a window's worth at well over 60 snapshots a second).
const MAX_SAMPLES: usize = 512;
/// A window with fewer margins than this is not full: it does not lower the lead.
const MIN_SAMPLES_TO_LOWER: usize = 20;
/// Lead changes remembered (to tell which lead a margin was sent under).
const MAX_CHANGES: usize = 64;

/// One snapshot's margin, less the lead its frames were sent with: the greatest lead of
/// the range they may have been sent in gives `low`, the least gives `high`.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Duration,
    low: f64,
    high: f64,
}

/// Adapts the input lead to the margins the server reports. See the module docs.
#[derive(Debug, Clone)]
pub struct InputLead {
    tick_hz: f64,
    lead: f64,
    /// The lead before the oldest remembered change.
    lead_before: f64,
    /// When the lead changed, and to what, oldest first.
    changes: VecDeque<(Duration, f64)>,
    samples: VecDeque<Sample>,
    /// When the first margin of the current window arrived (the window is full once it
    /// is [`WINDOW`] old).
    collecting_since: Option<Duration>,
    /// When the lead last changed.
    changed_at: Option<Duration>,
    /// When the session moved to a new server, while its margins are ignored.
    new_server_at: Option<Duration>,
}

impl InputLead {
    /// A controller at [`INITIAL_LEAD_TICKS`] for a match ticking `tick_hz` times a second.
    pub fn new(tick_hz: u32) -> Self {
        Self {
            tick_hz: f64::from(tick_hz.max(1)),
            lead: INITIAL_LEAD_TICKS,
            lead_before: INITIAL_LEAD_TICKS,
            changes: VecDeque::new(),
            samples: VecDeque::new(),
            collecting_since: None,
            changed_at: None,
            new_server_at: None,
        }
    }

    /// The match ticks `tick_hz` times a second after all (the server told its own).
    pub fn set_tick_hz(&mut self, tick_hz: u32) {
        self.tick_hz = f64::from(tick_hz.max(1));
    }

    /// The lead to aim with now, in ticks.
    pub fn lead_ticks(&self) -> f64 {
        self.lead
    }

    /// The margins in the window (for tests and reports).
    pub fn samples(&self) -> usize {
        self.samples.len()
    }

    /// The session now talks to another server (a handoff or a reconnect): margins
    /// measured against the old one's ticks are dropped, and the new one's are ignored
    /// until frames aimed at its ticks reach it. The lead is kept: the network between
    /// this client and the next server is likely much the same.
    pub fn new_server(&mut self, now: Duration) {
        self.samples.clear();
        self.collecting_since = None;
        self.changes.clear();
        self.lead_before = self.lead;
        self.new_server_at = Some(now);
    }

    /// Takes in one snapshot's report, arriving at `now`: `margin` (`None`: no new frame
    /// reached the server) and `arrived_late`, for frames sent at most `age` ago (about a
    /// round trip plus the time since the previous snapshot).
    pub fn observe(&mut self, now: Duration, age: Duration, margin: Option<i8>, arrived_late: u8) {
        if let Some(at) = self.new_server_at {
            if now.saturating_sub(at) < age + NEW_SERVER_SETTLE {
                return;
            }
            self.new_server_at = None;
        }
        let Some(margin) = margin else {
            return;
        };
        let (least, greatest) = self.leads_since(now.saturating_sub(age + SEND_SLACK));
        let margin = f64::from(margin);
        let sample = Sample {
            at: now,
            low: margin - greatest,
            high: margin - least,
        };
        if self.samples.len() >= MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
        self.collecting_since.get_or_insert(now);
        while self
            .samples
            .front()
            .is_some_and(|s| now.saturating_sub(s.at) > WINDOW)
        {
            self.samples.pop_front();
        }
        let share = self.late_share(age);
        // Raise: the window's low quantile, or one report of many late frames, is late.
        let mut least = -quantile(self.samples.iter().map(|s| s.high), share);
        if arrived_late >= LATE_BURST {
            least = least.max(-sample.high);
        }
        if least > self.lead {
            self.set(now, least + SPARE_TICKS);
            return;
        }
        // Lower: slowly, with a full window that leaves at least a tick everywhere it
        // counts.
        let full = self
            .collecting_since
            .is_some_and(|since| now.saturating_sub(since) >= WINDOW)
            && self.samples.len() >= MIN_SAMPLES_TO_LOWER;
        let rested = self
            .changed_at
            .is_none_or(|at| now.saturating_sub(at) >= LOWER_EVERY);
        if full && rested {
            let wanted = -quantile(self.samples.iter().map(|s| s.low), share) + SPARE_TICKS;
            if wanted <= self.lead - 1.0 {
                self.set(now, self.lead - 1.0);
            } else if self.lead > MIN_LEAD_TICKS && wanted <= MIN_LEAD_TICKS {
                self.set(now, MIN_LEAD_TICKS);
            }
        }
    }

    /// The share of late margins tolerated when a report covers frames sent within
    /// `age`: [`LATE_SHARE`] over the frames one late arrival delays (see the module docs).
    fn late_share(&self, age: Duration) -> f64 {
        LATE_SHARE / (1.0 + age.as_secs_f64() * self.tick_hz)
    }

    fn set(&mut self, now: Duration, lead: f64) {
        let lead = lead.clamp(MIN_LEAD_TICKS, MAX_LEAD_TICKS);
        if lead == self.lead {
            return;
        }
        tracing::debug!(from = self.lead, to = lead, "input lead");
        self.lead = lead;
        self.changed_at = Some(now);
        if self.changes.len() >= MAX_CHANGES
            && let Some((_, oldest)) = self.changes.pop_front()
        {
            self.lead_before = oldest;
        }
        self.changes.push_back((now, lead));
    }

    /// The least and greatest lead in effect from `since` until now.
    fn leads_since(&self, since: Duration) -> (f64, f64) {
        let mut in_effect = self.lead_before;
        let (mut least, mut greatest) = (f64::INFINITY, f64::NEG_INFINITY);
        for &(at, lead) in &self.changes {
            if at <= since {
                in_effect = lead;
            } else {
                least = least.min(lead);
                greatest = greatest.max(lead);
            }
        }
        (least.min(in_effect), greatest.max(in_effect))
    }
}

/// The `share` quantile of `values` (the least for a share below one value in all).
///
/// The shares used are small (under [`LATE_SHARE`], so the quantile is one of the few
/// least values): those are found in one pass over a short array, without allocating;
/// a larger share sorts a copy. The values are margins less leads, never NaN.
fn quantile(values: impl ExactSizeIterator<Item = f64>, share: f64) -> f64 {
    /// The most values kept for the one-pass selection.
    const KEPT: usize = 8;
    let len = values.len();
    if len == 0 {
        return 0.0;
    }
    let index = ((len as f64 * share) as usize).min(len - 1);
    if index >= KEPT {
        let mut sorted: Vec<f64> = values.collect();
        let (_, value, _) = sorted.select_nth_unstable_by(index, f64::total_cmp);
        return *value;
    }
    // The `index + 1` least values seen so far, in order.
    let mut least = [f64::INFINITY; KEPT];
    let mut kept = 0;
    for value in values {
        if kept <= index {
            kept += 1;
        } else if value >= least[index] {
            continue;
        }
        let mut at = kept - 1;
        while at > 0 && value < least[at - 1] {
            least[at] = least[at - 1];
            at -= 1;
        }
        least[at] = value;
    }
    least[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    const HZ: u32 = 60;
    const SNAPSHOT: Duration = Duration::from_micros(16_667);
    /// A round trip of 50 ms.
    const RTT: Duration = Duration::from_millis(50);

    /// A network whose margins with no lead are `offset(i)` for the `i`th report: each
    /// report's margin is its offset plus the lead the frames were sent with (the lead of
    /// `RTT` earlier), rounded down, as the server counts whole ticks.
    struct Link {
        lead: InputLead,
        now: Duration,
        sent: VecDeque<(Duration, f64)>,
        reports: u64,
        late: u64,
    }

    impl Link {
        fn new() -> Self {
            Self {
                lead: InputLead::new(HZ),
                now: Duration::from_secs(100),
                sent: VecDeque::new(),
                reports: 0,
                late: 0,
            }
        }

        /// Runs `seconds` with margins `offset(i)` (no lead), one report per tick.
        fn run(&mut self, seconds: f64, mut offset: impl FnMut(u64) -> f64) {
            let end = self.now + Duration::from_secs_f64(seconds);
            while self.now < end {
                self.now += SNAPSHOT;
                self.sent.push_back((self.now, self.lead.lead_ticks()));
                // The lead these frames were sent with: a round trip ago.
                while self.sent.len() > 1 && self.now.saturating_sub(self.sent[1].0) >= RTT {
                    self.sent.pop_front();
                }
                let sent_with = self.sent.front().map_or(INITIAL_LEAD_TICKS, |s| s.1);
                let margin = (offset(self.reports) + sent_with).floor();
                self.reports += 1;
                let late = u8::from(margin < 0.0);
                self.late += u64::from(late);
                self.lead
                    .observe(self.now, RTT + SNAPSHOT, Some(margin as i8), late);
            }
        }

        fn lead(&self) -> f64 {
            self.lead.lead_ticks()
        }
    }

    /// Offsets of -1.6 (no lead: late by two ticks), with every 50th report 0.5 lower.
    fn steady(i: u64) -> f64 {
        if i.is_multiple_of(50) { -2.1 } else { -1.6 }
    }

    #[test]
    fn a_steady_network_settles_on_the_least_lead_that_keeps_inputs_in_time() {
        let mut link = Link::new();
        link.run(20.0, steady);
        // Every margin in time needs floor(-2.1 + lead) >= 0, a tick to spare >= 1: a
        // lead of 3.1; it moves in whole ticks from 2, so 4 (with 3, every 50th report
        // would have no tick to spare).
        assert_eq!(link.lead(), 4.0);
        link.late = 0;
        link.run(10.0, steady);
        assert_eq!(link.late, 0, "late once settled");
        assert_eq!(link.lead(), 4.0, "it stays");
    }

    #[test]
    fn a_generous_start_comes_down_a_tick_a_second_and_no_further() {
        let mut link = Link::new();
        // Offsets of +3.5: even with no lead frames are early; the least lead is kept.
        link.run(1.9, |_| 3.5);
        assert_eq!(
            link.lead(),
            INITIAL_LEAD_TICKS,
            "not before the window is full"
        );
        link.run(0.6, |_| 3.5);
        assert_eq!(link.lead(), 1.0, "one tick once the window filled");
        link.run(0.4, |_| 3.5);
        assert_eq!(link.lead(), 1.0, "not twice within a second");
        link.run(0.6, |_| 3.5);
        assert_eq!(link.lead(), MIN_LEAD_TICKS, "bounded below");
        link.run(5.0, |_| 3.5);
        assert_eq!(link.lead(), MIN_LEAD_TICKS);
    }

    #[test]
    fn jitter_raises_the_lead_at_once() {
        let mut link = Link::new();
        link.run(5.0, |_| -0.5);
        // Margins of floor(-0.5 + 2) = 1: no lower lead leaves a tick to spare.
        assert_eq!(link.lead(), 2.0);
        // From now on one report in ten is four ticks later.
        let before = link.late;
        link.run(0.2, |i| if i.is_multiple_of(10) { -4.5 } else { -0.5 });
        let raised = link.lead();
        // Raised once, to floor(-4.5 + lead) >= 1: the late margins of frames sent before
        // the raise did not count twice.
        assert_eq!(raised, 6.0);
        assert!(link.late - before <= 4, "{} late", link.late - before);
        link.late = 0;
        link.run(5.0, |i| if i.is_multiple_of(10) { -4.5 } else { -0.5 });
        assert_eq!(link.late, 0);
        assert_eq!(link.lead(), raised, "kept while the jitter lasts");
    }

    #[test]
    fn a_drop_in_latency_lowers_the_lead_slowly() {
        let mut link = Link::new();
        // Every 20th report 7.2 ticks later: floor(-8.2 + lead) >= 1 takes 9.2, so 10.
        link.run(5.0, |i| if i.is_multiple_of(20) { -8.2 } else { -1.0 });
        let high = link.lead();
        assert!((9.0..=10.0).contains(&high), "{high}");
        link.late = 0;
        // The network calms down: margins of -1.0 need a lead of 1.
        let mut leads = Vec::new();
        for _ in 0..12 {
            link.run(1.0, |_| -1.0);
            leads.push(link.lead());
        }
        for pair in leads.windows(2) {
            assert!(pair[0] - pair[1] <= 1.0, "too fast: {leads:?}");
        }
        assert!(leads[0] > 7.0, "{leads:?}");
        // Margins of floor(-1 + lead): 2 leaves a tick to spare.
        assert_eq!(leads.last().copied(), Some(2.0), "{leads:?}");
        assert_eq!(link.late, 0, "{leads:?}");
    }

    #[test]
    fn the_lead_is_bounded_above() {
        let mut link = Link::new();
        link.run(2.0, |_| -100.0);
        assert_eq!(link.lead(), MAX_LEAD_TICKS);
    }

    #[test]
    fn a_burst_of_late_frames_raises_even_when_the_window_tolerates_one() {
        // Reports every 2 ms for 1.8 s (the window is not full, nothing is lowered): 900
        // margins, among which a single late one is within the share tolerated.
        let fill = |lead: &mut InputLead, now: &mut Duration| {
            for _ in 0..900 {
                *now += Duration::from_millis(2);
                lead.observe(*now, RTT, Some(3), 0);
            }
        };
        let mut lead = InputLead::new(HZ);
        let mut now = Duration::from_secs(1);
        fill(&mut lead, &mut now);
        let before = lead.lead_ticks();
        now += Duration::from_millis(2);
        lead.observe(now, RTT, Some(-2), 1);
        assert_eq!(lead.lead_ticks(), before, "one late frame is tolerated");

        let mut lead = InputLead::new(HZ);
        let mut now = Duration::from_secs(1);
        fill(&mut lead, &mut now);
        let before = lead.lead_ticks();
        now += Duration::from_millis(2);
        lead.observe(now, RTT, Some(-2), LATE_BURST);
        // Its margin of -2 under a lead of 2, covered with a tick to spare.
        assert_eq!(lead.lead_ticks(), 4.0 + SPARE_TICKS, "a burst is not");
        assert_eq!(before, 2.0);
    }

    #[test]
    fn a_new_server_keeps_the_lead_and_ignores_its_first_margins() {
        let mut lead = InputLead::new(HZ);
        let mut now = Duration::from_secs(1);
        for _ in 0..60 {
            now += SNAPSHOT;
            lead.observe(now, RTT, Some(-1), 1);
        }
        let kept = lead.lead_ticks();
        assert!(kept > INITIAL_LEAD_TICKS);
        lead.new_server(now);
        assert_eq!(lead.samples(), 0);
        // Frames resent to the new server, aimed at the old one's ticks: far off.
        now += SNAPSHOT;
        lead.observe(now, RTT, Some(-40), 40);
        assert_eq!(lead.lead_ticks(), kept);
        assert_eq!(lead.samples(), 0);
        // Once its own frames arrive, it counts them.
        now += RTT + NEW_SERVER_SETTLE;
        lead.observe(now, RTT, Some(1), 0);
        assert_eq!(lead.samples(), 1);
        assert_eq!(lead.lead_ticks(), kept);
    }

    #[test]
    fn no_report_of_a_margin_changes_nothing() {
        let mut lead = InputLead::new(HZ);
        let mut now = Duration::from_secs(1);
        for _ in 0..600 {
            now += SNAPSHOT;
            lead.observe(now, RTT, None, 0);
        }
        assert_eq!(lead.lead_ticks(), INITIAL_LEAD_TICKS);
        assert_eq!(lead.samples(), 0);
    }

    /// The one-pass selection finds what sorting finds, for every share, with repeats,
    /// infinities and both zeros among the values.
    #[test]
    fn a_quantile_is_the_value_sorting_puts_at_its_share() {
        use rand::{RngExt, SeedableRng};
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        let pick = [-3.0, -0.0, 0.0, 1.5, 2.0, f64::INFINITY, f64::NEG_INFINITY];
        for _ in 0..2_000 {
            let len = rng.random_range(0..600);
            let values: Vec<f64> = (0..len)
                .map(|_| match rng.random_range(0..3) {
                    0 => pick[rng.random_range(0..pick.len())],
                    _ => rng.random_range(-40.0..40.0),
                })
                .collect();
            let share = match rng.random_range(0..3) {
                0 => rng.random_range(0.0..0.02),
                1 => rng.random_range(0.0..1.0),
                _ => 1.5,
            };
            let mut sorted = values.clone();
            sorted.sort_by(f64::total_cmp);
            let expected = match sorted.len() {
                0 => 0.0,
                n => sorted[((n as f64 * share) as usize).min(n - 1)],
            };
            let found = quantile(values.iter().copied(), share);
            // == : which of two zeros is found does not matter.
            assert!(found == expected, "share {share} of {values:?}: {found}");
        }
    }
}
