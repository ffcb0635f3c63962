//! The terminal client of the built-in shooter: its game state and drawing, independent
//! of the terminal itself. The binary feeds it keys and time, and draws it into any ratatui
//! backend (the real terminal, or a `TestBackend` in tests and `--headless` runs).
//!
//! The screen, top to bottom (it fits an 80×24 terminal):
//!
//! - the status line: the own hp, kills and deaths first (what a narrow terminal must not
//!   cut), then round trip, loss and snapshots a second;
//! - the [`LEGEND`]: what `@`, `o`, `•` and `█` are, and the keys;
//! - the arena, centred on the own player and reaching the server's view radius each
//!   way (the whole arena for a spectator or a dead player), the kill feed in its top
//!   right corner, and a message in its middle when there is one ("bob shot you", "server
//!   not answering — reconnecting… 0.6 s");
//! - the bottom line: for a few seconds after a handoff or a reconnect, where the match
//!   moved and how long no snapshot came (the last one before to the first one after);
//!   for a few seconds after a hit or kill of the own player's, who shot whom; else the
//!   server, the tick and the view radius.

use std::collections::VecDeque;
use std::time::Duration;

use arena_shared::game::PlayerId;
use arena_shared::netcode::ClientState;
use arena_shared::protocol::{ScoreEntry, Snapshot};
use arena_shared::sim::{
    Buttons, EntityState, GameEvent, NetEntityKind, PlayerInput, Shooter, Wall,
};
use glam::Vec2;
use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use crate::interpolation::{Drawn, Interpolator};
use crate::prediction::Predictor;
use crate::session::{InterruptionCause, Moved, Session};

/// How long a key press holds its direction when the terminal reports no releases
/// (auto-repeat refreshes it).
const HOLD_WITHOUT_RELEASE: Duration = Duration::from_millis(180);
/// Kills the kill feed shows, newest last.
pub const KILL_FEED_LINES: usize = 4;
/// Silence after which the screen says the server is not answering: at 60 Hz about 15
/// snapshots missed, well past what loss or jitter explain.
pub const STALL_NOTICE_AFTER: Duration = Duration::from_millis(250);
/// The view's radius when the server has not told it: the server's default
/// `--view-radius`.
pub const DEFAULT_VIEW_RADIUS_M: f32 = 30.0;
/// How long the bottom line tells where the match moved and how long play stopped.
const MOVED_NOTICE_FOR: Duration = Duration::from_secs(8);
/// How long the bottom line tells a hit or a kill of the own player's.
const PERSONAL_NOTICE_FOR: Duration = Duration::from_secs(3);
/// What the arena's symbols mean and the keys: the second line, within 80 columns.
pub const LEGEND: &str =
    "@ you  o others  • shot  █ wall │ WASD move  space fire  Tab scores  q/Esc quit";

/// A direction or action key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// W or up arrow.
    Up,
    /// S or down arrow.
    Down,
    /// A or left arrow.
    Left,
    /// D or right arrow.
    Right,
    /// Space.
    Fire,
}

/// The game as the terminal client sees it.
pub struct Game {
    /// The connection.
    pub session: Session<Shooter>,
    /// The own player, predicted.
    pub predictor: Predictor<Shooter>,
    /// Everyone else, interpolated.
    pub interpolator: Interpolator<Shooter>,
    /// Watching rather than playing.
    pub spectating: bool,
    /// Whether the scoreboard is open (Tab).
    pub show_scores: bool,
    /// Until when each key counts as held (index: Up, Down, Left, Right, Fire).
    held_until: [Duration; 5],
    /// Whether the terminal reports key releases (then presses hold until released).
    releases_reported: bool,
    /// The last direction moved in: space fires this way.
    facing: Vec2,
    /// Snapshot arrival times in the last second (for the status line).
    recent_snapshots: VecDeque<Duration>,
    /// The newest kills heard, for the kill feed.
    kill_feed: KillFeed,
    /// When snapshots stopped and how long the last outage was.
    watch: SnapshotWatch,
    /// The newest hit or kill the own player took part in, and when it was heard: the
    /// bottom line says who shot whom.
    personal: Option<(Duration, GameEvent)>,
    /// Who killed the own player last: the death message names them.
    killer: Option<PlayerId>,
    last_frame: Option<Duration>,
}

impl Game {
    /// A game over `session`.
    pub fn new(session: Session<Shooter>, spectating: bool) -> Self {
        Self {
            session,
            predictor: Predictor::default(),
            interpolator: Interpolator::default(),
            spectating,
            show_scores: false,
            held_until: [Duration::ZERO; 5],
            releases_reported: false,
            facing: Vec2::X,
            recent_snapshots: VecDeque::new(),
            kill_feed: KillFeed::default(),
            watch: SnapshotWatch::default(),
            personal: None,
            killer: None,
            last_frame: None,
        }
    }

    /// The terminal reports releases: hold keys until released rather than briefly.
    pub fn set_releases_reported(&mut self, reported: bool) {
        self.releases_reported = reported;
    }

    /// A key went down (or repeated).
    pub fn key_down(&mut self, now: Duration, key: Key) {
        let until = if self.releases_reported {
            Duration::MAX
        } else {
            now + HOLD_WITHOUT_RELEASE
        };
        self.held_until[key as usize] = until;
    }

    /// A key went up (terminals that report it).
    pub fn key_up(&mut self, key: Key) {
        self.held_until[key as usize] = Duration::ZERO;
    }

    /// Takes the snapshots that arrived: interpolation, then reconciliation; and notes
    /// when they arrive, for the notices of an outage.
    pub fn absorb_snapshots(&mut self, now: Duration) {
        let snapshots: Vec<Snapshot<Shooter>> = self.session.take_snapshots().collect();
        for snapshot in &snapshots {
            self.interpolator.on_snapshot(now, snapshot);
            self.recent_snapshots.push_back(now);
        }
        while self
            .recent_snapshots
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > Duration::from_secs(1))
        {
            self.recent_snapshots.pop_front();
        }
        self.watch
            .observe(now, !snapshots.is_empty(), self.session.moved());
        if !snapshots.is_empty()
            && let Some(latest) = self.session.latest_snapshot()
        {
            self.predictor.on_snapshot(
                latest,
                self.session.shared(),
                self.session.unapplied_frames(),
            );
        }
    }

    /// Takes the game's events that arrived at `now`: kills go to the kill feed; a hit
    /// or kill of the own player's to the bottom line (hits reach only their victim and
    /// their shooter).
    pub fn absorb_events(&mut self, now: Duration) {
        let events: Vec<GameEvent> = self.session.take_events().collect();
        let own = self.own_player();
        for event in events {
            self.kill_feed.hear(&event);
            let mine = match event {
                GameEvent::Hit { .. } => true,
                GameEvent::Killed { victim, by } => own.is_some_and(|me| me == victim || me == by),
                GameEvent::Respawned { .. } => false,
            };
            if mine {
                self.personal = Some((now, event));
            }
            if let GameEvent::Killed { victim, by } = event
                && own == Some(victim)
            {
                self.killer = Some(by);
            }
        }
    }

    /// This tick's input from the held keys; sends it and predicts it.
    pub fn send_input(&mut self, now: Duration) {
        if self.spectating {
            return;
        }
        let held = |k: Key| self.held_until[k as usize] > now;
        let mut buttons = 0;
        for (key, bit) in [
            (Key::Up, Buttons::UP),
            (Key::Down, Buttons::DOWN),
            (Key::Left, Buttons::LEFT),
            (Key::Right, Buttons::RIGHT),
            (Key::Fire, Buttons::FIRE),
        ] {
            if held(key) {
                buttons |= bit;
            }
        }
        let moving = PlayerInput { buttons, aim: 0 }.move_direction();
        if moving != Vec2::ZERO {
            self.facing = moving;
        }
        let input = PlayerInput {
            buttons,
            aim: PlayerInput::aim_from_direction(self.facing),
        };
        if let Some(frame) = self.session.send_input(now, input) {
            self.predictor.on_input(&frame, self.session.shared());
        }
    }

    /// Snapshots received in the last second.
    pub fn snapshots_per_second(&self) -> usize {
        self.recent_snapshots.len()
    }

    /// Draws the whole screen: the status line (own hp, kills and deaths first), the
    /// legend, the arena with the kill feed in its corner, and the bottom line.
    pub fn draw(&mut self, frame: &mut Frame<'_>, now: Duration) {
        let dt = self
            .last_frame
            .map_or(0.0, |t| now.saturating_sub(t).as_secs_f32());
        self.last_frame = Some(now);
        let [status, legend, arena, bottom] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        frame.render_widget(Paragraph::new(self.status_line()), status);
        frame.render_widget(Paragraph::new(legend_line()), legend);
        frame.render_widget(Paragraph::new(self.bottom_line(now)), bottom);

        let own_id = self.session.latest_snapshot().and_then(|s| s.your_entity);
        let own = self.predictor.render_position(dt);
        let others = self.interpolator.sample(now, own.and(own_id));
        let view = ArenaView {
            own,
            others: &others,
            walls: self.session.shared().map_or(&[], |s| s.walls.as_slice()),
            arena_size: self
                .session
                .latest_snapshot()
                .map_or(40.0, |s| s.config.arena_size()),
            view_radius_m: self.view_radius_m(),
            spectating: self.spectating,
            message: self.message(now),
        };
        frame.render_widget(view, arena);
        let kills = self.kill_feed.lines(|player| self.session.name(player));
        draw_kill_feed(frame, arena, &kills);

        if self.show_scores {
            draw_scores(frame, arena, self.session.scoreboard());
        }
    }

    /// For 8 s (`MOVED_NOTICE_FOR`) after a handoff or a reconnect: where the match moved and
    /// how long play stopped, from the last snapshot before to the first one after (not
    /// just the reconnect's handshake).
    pub fn moved_notice(&self, now: Duration) -> Option<String> {
        let outage = self.watch.outage?;
        if now.saturating_sub(outage.done_at) >= MOVED_NOTICE_FOR {
            return None;
        }
        let how = if outage.redirected {
            "match handed over: moved"
        } else {
            "server lost: reconnected"
        };
        let to = self
            .session
            .server_address()
            .map_or_else(String::new, |a| format!(" to {a}"));
        Some(format!(
            "{how}{to}: no snapshots for {}",
            seconds(outage.length)
        ))
    }

    /// While snapshots have stopped for [`STALL_NOTICE_AFTER`] or more: what is going on
    /// and for how long ("server not answering — reconnecting… 0.6 s").
    pub fn stall_notice(&self, now: Duration) -> Option<String> {
        let silent = self.watch.silent_for(now)?;
        if silent < STALL_NOTICE_AFTER {
            return None;
        }
        let moving = self.session.moved().filter(|m| m.done_at.is_none());
        let reconnecting = moving.is_some() || self.session.state() != ClientState::Connected;
        let what = match (moving, self.session.interruption().map(|i| i.cause)) {
            (Some(m), _) if m.redirected => "match moving to another server…",
            (_, Some(InterruptionCause::Disconnected)) => "server stopped — reconnecting…",
            _ if reconnecting => "server not answering — reconnecting…",
            _ => "server not answering…",
        };
        Some(format!("{what} {:.1} s", silent.as_secs_f32()))
    }

    /// How far the own player sees, metres, and so how far the view reaches: the
    /// server's `--view-radius` once it told, [`DEFAULT_VIEW_RADIUS_M`] until then.
    pub fn view_radius_m(&self) -> f32 {
        self.session
            .view_radius()
            .filter(|r| r.is_finite() && *r > 0.0)
            .unwrap_or(DEFAULT_VIEW_RADIUS_M)
    }

    /// The own player's id (from the scoreboard, which marks the own line).
    fn own_player(&self) -> Option<PlayerId> {
        self.session
            .scoreboard()
            .iter()
            .find(|e| e.you)
            .map(|e| e.player)
    }

    /// A player's name, or `#<id>` while it is not known.
    fn called(&self, player: PlayerId) -> String {
        self.session
            .name(player)
            .map_or_else(|| format!("#{}", player.0), str::to_owned)
    }

    /// "bob hit you", "you shot bob": the own player's newest hit or kill, for a while.
    fn personal_notice(&self, now: Duration) -> Option<String> {
        let (at, event) = self.personal?;
        if now.saturating_sub(at) >= PERSONAL_NOTICE_FOR {
            return None;
        }
        describe_personal(event, self.own_player(), |p| self.called(p))
    }

    /// The own standing first (it must survive a narrow terminal), then the connection.
    fn status_line(&self) -> Line<'static> {
        let rtt = self
            .session
            .rtt()
            .map_or("-".to_owned(), |r| format!("{} ms", r.as_millis()));
        let you = self.session.latest_snapshot().map(|s| s.you);
        let (standing, style) = match you {
            _ if self.spectating => ("spectating".to_owned(), Style::default()),
            Some(you) => (
                format!(
                    "hp {} · kills {} · deaths {}",
                    you.health, you.score, you.deaths
                ),
                Style::default().fg(match you.health {
                    0 => Color::DarkGray,
                    1..=25 => Color::Red,
                    _ => Color::Yellow,
                }),
            ),
            None => ("hp - · kills - · deaths -".to_owned(), Style::default()),
        };
        Line::from(vec![
            Span::styled(standing, style.add_modifier(Modifier::BOLD)),
            Span::raw(format!(
                " │ rtt {rtt} │ loss {:.1}% │ {} snap/s",
                self.session.loss() * 100.0,
                self.snapshots_per_second()
            )),
        ])
    }

    /// A notice if there is one (an outage, where the match moved, a hit), else where
    /// the game is played: server, tick, view radius.
    fn bottom_line(&self, now: Duration) -> Line<'static> {
        if let Some(stall) = self.stall_notice(now) {
            return Line::from(stall).style(
                Style::default()
                    .fg(Color::LightRed)
                    .add_modifier(Modifier::BOLD),
            );
        }
        if let Some(moved) = self.moved_notice(now) {
            return Line::from(moved).style(
                Style::default()
                    .fg(Color::LightGreen)
                    .add_modifier(Modifier::BOLD),
            );
        }
        if let Some(personal) = self.personal_notice(now) {
            return Line::from(personal).style(
                Style::default()
                    .fg(Color::LightRed)
                    .add_modifier(Modifier::BOLD),
            );
        }
        let server = self
            .session
            .server_address()
            .map_or("-".to_owned(), |a| a.to_string());
        let tick = self.session.latest_snapshot().map_or(0, |s| s.tick.0);
        Line::from(format!(
            "server {server} · tick {tick} · view {:.0} m",
            self.view_radius_m()
        ))
        .style(Style::default().fg(Color::DarkGray))
    }

    /// A line to show over the arena instead of the game, if any.
    fn message(&self, now: Duration) -> Option<String> {
        if let Some(stall) = self.stall_notice(now) {
            return Some(stall);
        }
        match self.session.state() {
            ClientState::Connected => match self.session.latest_snapshot() {
                Some(s) if s.you.health == 0 && !self.spectating => Some(match self.killer {
                    Some(by) => format!("{} shot you: back in a moment", self.called(by)),
                    None => "you were shot: back in a moment".into(),
                }),
                Some(_) => None,
                None => Some("connected; waiting for the first snapshot…".into()),
            },
            ClientState::SendingRequest | ClientState::SendingResponse => Some(format!(
                "connecting to {}…",
                self.session
                    .server_address()
                    .map_or("?".to_owned(), |a| a.to_string())
            )),
            state => Some(describe_failure(state).to_owned()),
        }
    }
}

/// The legend, each symbol styled as the arena draws it.
fn legend_line() -> Line<'static> {
    let dim = Style::default().fg(Color::DarkGray);
    let mut spans = Vec::new();
    for (symbol, style, meaning) in [
        ("@", own_style(), " you  "),
        ("o", Style::default().fg(Color::LightCyan), " others  "),
        ("•", Style::default().fg(Color::LightYellow), " shot  "),
        ("█", Style::default().fg(Color::Gray), " wall"),
    ] {
        spans.push(Span::styled(symbol, style));
        spans.push(Span::styled(meaning, dim));
    }
    let keys = LEGEND.split_once(" │ ").map_or("", |(_, keys)| keys);
    spans.push(Span::styled(format!(" │ {keys}"), dim));
    Line::from(spans)
}

fn own_style() -> Style {
    Style::default()
        .fg(Color::Yellow)
        .add_modifier(Modifier::BOLD)
}

/// A hit or kill as the own player reads it: "bob hit you", "you shot bob" (`None`:
/// not a hit or a kill).
fn describe_personal(
    event: GameEvent,
    own: Option<PlayerId>,
    called: impl Fn(PlayerId) -> String,
) -> Option<String> {
    let (victim, by, verb) = match event {
        GameEvent::Hit { victim, by } => (victim, by, "hit"),
        GameEvent::Killed { victim, by } => (victim, by, "shot"),
        GameEvent::Respawned { .. } => return None,
    };
    Some(if own == Some(victim) {
        format!("{} {verb} you", called(by))
    } else if own == Some(by) {
        format!("you {verb} {}", called(victim))
    } else {
        format!("{} {verb} {}", called(by), called(victim))
    })
}

/// "930 ms" below a second, "1.4 s" from one.
fn seconds(length: Duration) -> String {
    if length < Duration::from_secs(1) {
        format!("{} ms", length.as_millis())
    } else {
        format!("{:.1} s", length.as_secs_f32())
    }
}

/// When snapshots arrive, from the times the game absorbs them: how long they have
/// stopped, and how long the last move to another server stopped them.
#[derive(Debug, Default)]
struct SnapshotWatch {
    /// When a snapshot was last absorbed (`None`: none yet).
    last_at: Option<Duration>,
    /// The finished move last measured, so each is measured once.
    measured: Option<Moved>,
    /// The newest finished move's outage.
    outage: Option<Outage>,
}

/// How long a move to another server stopped play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outage {
    /// A handoff (told to move) rather than a reconnect (found the server silent).
    redirected: bool,
    /// From the last snapshot absorbed before the move to the first one from the new
    /// server. The start is when the game absorbed it, up to a frame after it arrived.
    length: Duration,
    /// When the first snapshot from the new server arrived.
    done_at: Duration,
}

impl SnapshotWatch {
    /// At `now`, snapshots `arrived` (or none did); `moved` is the session's last move.
    fn observe(&mut self, now: Duration, arrived: bool, moved: Option<Moved>) {
        if let Some(moved) = moved
            && let Some(done_at) = moved.done_at
            && self.measured != Some(moved)
        {
            self.measured = Some(moved);
            // The snapshots before the move were absorbed before the new server's first.
            let since = self.last_at.unwrap_or(moved.at).min(moved.at);
            self.outage = Some(Outage {
                redirected: moved.redirected,
                length: done_at.saturating_sub(since),
                done_at,
            });
        }
        if arrived {
            self.last_at = Some(now);
        }
    }

    /// How long since the last snapshot (`None`: there was none yet).
    fn silent_for(&self, now: Duration) -> Option<Duration> {
        self.last_at.map(|at| now.saturating_sub(at))
    }
}

/// A drawn screen as text, a line per row (headless runs and tests).
pub fn screen_text(buffer: &Buffer) -> String {
    let width = usize::from(buffer.area.width).max(1);
    let symbols: Vec<&str> = buffer.content.iter().map(|c| c.symbol()).collect();
    symbols
        .chunks(width)
        .map(|row| row.concat())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What a failed connection means for a person.
pub fn describe_failure(state: ClientState) -> &'static str {
    match state {
        ClientState::Denied => "the server is full",
        ClientState::TokenExpired => "the connect token expired before the server accepted it",
        ClientState::InvalidToken => "the connect token is not valid",
        ClientState::RequestTimedOut => {
            "no answer from the server: is it running, and did it mint this token?"
        }
        ClientState::ResponseTimedOut => "the server stopped answering during the handshake",
        ClientState::ConnectionTimedOut => "the server went silent",
        ClientState::Disconnected => "disconnected",
        _ => "connecting",
    }
}

/// The arena drawn into a rectangle of cells.
struct ArenaView<'a> {
    own: Option<Vec2>,
    others: &'a [Drawn<EntityState>],
    walls: &'a [Wall],
    arena_size: f32,
    /// How far the own player sees, metres: the view spans this much each way.
    view_radius_m: f32,
    spectating: bool,
    message: Option<String>,
}

/// How world metres map onto a rectangle of terminal cells: `center` at its middle, each
/// column `per_col` metres wide and each row `per_row` metres tall (twice a column, as a
/// terminal cell is about twice as tall as wide). Cells count from the top left; world y
/// grows upwards.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Raster {
    center: Vec2,
    per_col: f32,
    per_row: f32,
    cols: u16,
    rows: u16,
}

impl Raster {
    /// `view` metres each way from `center` fit in `cols` × `rows` cells.
    fn new(center: Vec2, view: f32, cols: u16, rows: u16) -> Self {
        let per_col = (2.0 * view / f32::from(cols.max(1))).max(view / f32::from(rows.max(1)));
        Self {
            center,
            per_col,
            per_row: per_col * 2.0,
            cols,
            rows,
        }
    }

    /// The world point at the middle of a cell.
    fn cell_center(&self, col: u16, row: u16) -> Vec2 {
        Vec2::new(
            self.center.x + (f32::from(col) + 0.5 - f32::from(self.cols) / 2.0) * self.per_col,
            self.center.y - (f32::from(row) + 0.5 - f32::from(self.rows) / 2.0) * self.per_row,
        )
    }

    /// The cell a world point falls in, if it is in view.
    fn cell_of(&self, p: Vec2) -> Option<(u16, u16)> {
        let x = (p.x - self.center.x) / self.per_col + f32::from(self.cols) / 2.0;
        let y = f32::from(self.rows) / 2.0 - (p.y - self.center.y) / self.per_row;
        (x >= 0.0 && y >= 0.0 && x < f32::from(self.cols) && y < f32::from(self.rows))
            .then_some((x as u16, y as u16))
    }

    /// Whether a cell is drawn as part of `wall`. The rule, per axis: the cell's centre
    /// lies inside the wall's extent, so a cell is wall only where most of its width
    /// (height) is; a wall thinner than a cell, which no centre falls in, still gets the
    /// one column (row) its middle falls in, so no pillar vanishes. A player pushed
    /// against a wall (its centre at least
    /// [`PLAYER_RADIUS`](arena_shared::sim::PLAYER_RADIUS) away) is then never in a wall
    /// cell across a column boundary; a row, twice as tall, may hold both.
    fn is_wall(&self, wall: &Wall, col: u16, row: u16) -> bool {
        let p = self.cell_center(col, row);
        let covers = |min: f32, max: f32, center: f32, size: f32| {
            let middle = (min + max) / 2.0;
            (min..=max).contains(&center)
                || (center - size / 2.0 <= middle && middle < center + size / 2.0)
        };
        // Rows count downwards: a row spans [centre - size/2, centre + size/2) in y too,
        // close enough (a middle exactly on a row boundary picks one of the two).
        covers(wall.min.x, wall.max.x, p.x, self.per_col)
            && covers(wall.min.y, wall.max.y, p.y, self.per_row)
    }
}

impl Widget for ArenaView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < 4 || area.height < 3 {
            return;
        }
        let (center, view) = match (self.spectating, self.own) {
            (false, Some(own)) => (own, self.view_radius_m),
            _ => (
                Vec2::splat(self.arena_size / 2.0),
                self.arena_size / 2.0 + 1.0,
            ),
        };
        let raster = Raster::new(center, view, area.width, area.height);
        // Ground, the outside, and walls: every cell asks where it is.
        for row in 0..area.height {
            for col in 0..area.width {
                let p = raster.cell_center(col, row);
                let outside =
                    p.x < 0.0 || p.y < 0.0 || p.x > self.arena_size || p.y > self.arena_size;
                let wall = self.walls.iter().any(|w| raster.is_wall(w, col, row));
                let (symbol, style) = if outside {
                    ("░", Style::default().fg(Color::DarkGray))
                } else if wall {
                    ("█", Style::default().fg(Color::Gray))
                } else {
                    ("·", Style::default().fg(Color::Rgb(60, 60, 60)))
                };
                if let Some(cell) = buf.cell_mut((area.x + col, area.y + row)) {
                    cell.set_symbol(symbol).set_style(style);
                }
            }
        }
        let cell_of = |p: Vec2| raster.cell_of(p).map(|(c, r)| (area.x + c, area.y + r));
        for drawn in self.others {
            let Some(at) = cell_of(drawn.state.position()) else {
                continue;
            };
            let (symbol, style) = match drawn.state.kind {
                NetEntityKind::Projectile => ("•", Style::default().fg(Color::LightYellow)),
                NetEntityKind::Player if drawn.state.health == 0 => {
                    ("x", Style::default().fg(Color::DarkGray))
                }
                NetEntityKind::Player if drawn.state.health <= 25 => {
                    ("o", Style::default().fg(Color::Red))
                }
                NetEntityKind::Player => ("o", Style::default().fg(Color::LightCyan)),
            };
            if let Some(cell) = buf.cell_mut(at) {
                cell.set_symbol(symbol).set_style(style);
            }
        }
        if let Some(own) = self.own
            && !self.spectating
            && let Some(at) = cell_of(own)
            && let Some(cell) = buf.cell_mut(at)
        {
            cell.set_symbol("@").set_style(own_style());
        }
        if let Some(message) = self.message {
            let width = (message.chars().count() as u16 + 4).min(area.width);
            let popup = Rect {
                x: area.x + (area.width - width) / 2,
                y: area.y + area.height / 2,
                width,
                height: 1,
            };
            Clear.render(popup, buf);
            Paragraph::new(format!("  {message}"))
                .style(Style::default().add_modifier(Modifier::BOLD))
                .render(popup, buf);
        }
    }
}

fn draw_scores(frame: &mut Frame<'_>, area: Rect, entries: &[ScoreEntry<Shooter>]) {
    let height = (entries.len() as u16 + 3).min(area.height);
    let width = 40.min(area.width);
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + 1,
        width,
        height,
    };
    let mut lines = vec![Line::from(format!(
        "{:<22} {:>6} {:>6}",
        "player", "kills", "deaths"
    ))];
    for entry in entries {
        let line = Line::from(format!(
            "{:<22} {:>6} {:>6}",
            entry.name, entry.standing.score, entry.standing.deaths
        ));
        lines.push(if entry.you {
            line.style(
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            )
        } else {
            line
        });
    }
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(Block::default().borders(Borders::ALL).title(" scores ")),
        popup,
    );
}

/// The newest kills heard, oldest first, at most [`KILL_FEED_LINES`]. Kept as who killed
/// whom rather than as text: a name told later than the kill still shows.
#[derive(Debug, Default)]
struct KillFeed(VecDeque<(PlayerId, PlayerId)>);

impl KillFeed {
    /// Keeps a kill; other events are not for the feed.
    fn hear(&mut self, event: &GameEvent) {
        if let GameEvent::Killed { victim, by } = *event {
            if self.0.len() == KILL_FEED_LINES {
                self.0.pop_front();
            }
            self.0.push_back((by, victim));
        }
    }

    /// "ann shot bob", a line per kill; a player whose name is not known is `#<id>`.
    fn lines<'a>(&self, name: impl Fn(PlayerId) -> Option<&'a str>) -> Vec<String> {
        let called =
            |player: PlayerId| name(player).map_or_else(|| format!("#{}", player.0), str::to_owned);
        self.0
            .iter()
            .map(|&(by, victim)| format!("{} shot {}", called(by), called(victim)))
            .collect()
    }
}

/// The kill feed in the arena's top right corner, over the arena.
fn draw_kill_feed(frame: &mut Frame<'_>, arena: Rect, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let longest = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
    let width = (longest as u16).saturating_add(2).min(arena.width);
    let height = (lines.len() as u16).min(arena.height);
    let area = Rect {
        x: arena.x + arena.width - width,
        y: arena.y,
        width,
        height,
    };
    let text: Vec<Line<'_>> = lines.iter().map(|l| Line::from(l.as_str())).collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Right)
            .style(Style::default().fg(Color::LightRed)),
        area,
    );
}

#[cfg(test)]
mod tests {
    use arena_shared::sim::PLAYER_RADIUS;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    const T0: Duration = Duration::from_secs(100);

    fn killed(victim: u32, by: u32) -> GameEvent {
        GameEvent::Killed {
            victim: PlayerId(victim),
            by: PlayerId(by),
        }
    }

    /// A game whose session has no server (it fails at once).
    fn offline_game() -> Game {
        Game::new(Session::new(T0, &[], 60), false)
    }

    fn draw(game: &mut Game, now: Duration, cols: u16, rows: u16) -> String {
        // The test backend cannot fail (its error type is `Infallible`).
        let Ok(mut terminal) = Terminal::new(TestBackend::new(cols, rows));
        let Ok(_) = terminal.draw(|frame| game.draw(frame, now));
        screen_text(terminal.backend().buffer())
    }

    #[test]
    fn the_kill_feed_keeps_the_last_four_kills_with_names() {
        let mut feed = KillFeed::default();
        feed.hear(&GameEvent::Hit {
            victim: PlayerId(1),
            by: PlayerId(2),
        });
        for i in 0..6 {
            feed.hear(&killed(i, i + 1));
        }
        let names = |player: PlayerId| (player == PlayerId(3)).then_some("ann");
        assert_eq!(
            feed.lines(names),
            ["ann shot #2", "#4 shot ann", "#5 shot #4", "#6 shot #5"]
        );
    }

    #[test]
    fn at_80_by_24_the_own_standing_leads_and_the_legend_fits() {
        assert!(LEGEND.chars().count() <= 80, "{LEGEND}");
        let mut game = offline_game();
        game.kill_feed.hear(&killed(1, 2));
        let text = draw(&mut game, T0, 80, 24);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24, "{text}");
        assert!(
            lines[0].starts_with("hp - · kills - · deaths - │ rtt -"),
            "{text}"
        );
        assert_eq!(lines[1].trim_end(), LEGEND, "{text}");
        for symbol in [
            "@ you",
            "o others",
            "• shot",
            "█ wall",
            "space fire",
            "q/Esc quit",
        ] {
            assert!(
                lines[1].contains(symbol),
                "legend lacks {symbol:?}:\n{text}"
            );
        }
        assert!(lines[2].trim_end().ends_with("#2 shot #1"), "{text}");
        assert!(
            lines[23].starts_with("server - · tick 0 · view 30 m"),
            "{text}"
        );
    }

    #[test]
    fn hits_and_kills_read_from_the_own_side() {
        let names = |p: PlayerId| ["?", "ann", "bob", "cy"][p.0 as usize].to_owned();
        let me = Some(PlayerId(1));
        let says = |event| describe_personal(event, me, names);
        assert_eq!(says(killed(1, 2)).as_deref(), Some("bob shot you"));
        assert_eq!(says(killed(2, 1)).as_deref(), Some("you shot bob"));
        assert_eq!(says(killed(3, 2)).as_deref(), Some("bob shot cy"));
        let hit = GameEvent::Hit {
            victim: PlayerId(1),
            by: PlayerId(3),
        };
        assert_eq!(says(hit).as_deref(), Some("cy hit you"));
        assert_eq!(
            says(GameEvent::Respawned {
                player: PlayerId(1)
            }),
            None
        );
    }

    /// A 1 m column per cell, a 2 m row, the cell edges on whole metres: column c spans
    /// x in [c, c + 1), row r spans y in [20 - 2(r + 1), 20 - 2r).
    fn known_raster() -> Raster {
        let raster = Raster::new(Vec2::new(10.0, 10.0), 10.0, 20, 10);
        assert_eq!((raster.per_col, raster.per_row), (1.0, 2.0));
        raster
    }

    fn wall_cells(raster: &Raster, wall: &Wall) -> Vec<(u16, u16)> {
        let mut cells = Vec::new();
        for row in 0..raster.rows {
            for col in 0..raster.cols {
                if raster.is_wall(wall, col, row) {
                    cells.push((col, row));
                }
            }
        }
        cells
    }

    #[test]
    fn a_wall_covers_the_cells_whose_centres_it_holds_and_a_thin_one_still_shows() {
        let raster = known_raster();
        // x 4.6..7.4 holds the column centres 5.5 and 6.5 (columns 5 and 6); columns 4 and
        // 7 overlap it by 0.4 m and stay ground. y 11.5..16.5 holds the row centres 15 and
        // 13 (rows 2 and 3); rows 1 (centre 17) and 4 (centre 11) overlap it by 0.5 m.
        let wall = Wall {
            min: Vec2::new(4.6, 11.5),
            max: Vec2::new(7.4, 16.5),
        };
        let expected: Vec<(u16, u16)> = (2..=3)
            .flat_map(|row| (5..=6).map(move |col| (col, row)))
            .collect();
        assert_eq!(wall_cells(&raster, &wall), expected);
        // The old rule (half a column wider each way) also took columns 4 and 7 and rows 1
        // and 4: a player pushed against the wall's side was drawn inside it.
        let against_right = Vec2::new(wall.max.x + PLAYER_RADIUS, 14.0);
        let against_left = Vec2::new(wall.min.x - PLAYER_RADIUS, 14.0);
        for player in [against_right, against_left] {
            let Some((col, row)) = raster.cell_of(player) else {
                panic!("{player} not in view");
            };
            assert!(
                !raster.is_wall(&wall, col, row),
                "{player} drawn in the wall"
            );
        }
        // A pillar thinner than a cell both ways holds no centre: it gets the one cell its
        // middle falls in (x 12.25 in column 12, y 5.4 in row 7: y 4..6).
        let thin = Wall {
            min: Vec2::new(12.1, 5.1),
            max: Vec2::new(12.4, 5.7),
        };
        assert_eq!(wall_cells(&raster, &thin), [(12, 7)]);
        // 0.7 m wide across the edge of columns 15 and 16, holding neither centre: the
        // column of its middle (16.05); 1.4 m tall holding the centre of row 6 (y 7).
        let across = Wall {
            min: Vec2::new(15.7, 6.2),
            max: Vec2::new(16.4, 7.6),
        };
        assert_eq!(wall_cells(&raster, &across), [(16, 6)]);
    }

    #[test]
    fn stopped_snapshots_show_a_notice_and_the_outage_is_counted_from_the_last_one() {
        let mut game = offline_game();
        // Snapshots arrive every 16 ms, then stop at `last`.
        let mut now = T0;
        for _ in 0..10 {
            now += Duration::from_millis(16);
            game.watch.observe(now, true, None);
        }
        let last = now;
        let frame_at = |ms: u64| last + Duration::from_millis(ms);
        let text = draw(&mut game, frame_at(200), 80, 24);
        assert!(!text.contains("not answering"), "too early:\n{text}");
        for ms in [100, 200] {
            game.watch.observe(frame_at(ms), false, None);
        }
        let text = draw(&mut game, frame_at(600), 80, 24);
        assert!(
            text.contains("server not answering — reconnecting… 0.6 s"),
            "{text}"
        );
        // The session noticed after a second of silence and reconnected in 51 ms.
        let reconnect_at = frame_at(1000);
        let moving = Moved {
            from: None,
            redirected: false,
            at: reconnect_at,
            done_at: None,
        };
        game.watch.observe(frame_at(1016), false, Some(moving));
        let text = draw(&mut game, frame_at(1030), 80, 24);
        assert!(text.contains("reconnecting… 1.0 s"), "{text}");
        let done = Moved {
            done_at: Some(reconnect_at + Duration::from_millis(51)),
            ..moving
        };
        game.watch.observe(frame_at(1064), true, Some(done));
        let text = draw(&mut game, frame_at(1080), 80, 24);
        let bottom = text.lines().last().unwrap_or_default();
        assert!(
            bottom.starts_with("server lost: reconnected: no snapshots for 1.1 s"),
            "the outage, not the 51 ms handshake:\n{text}"
        );
        assert!(!text.contains("not answering"), "{text}");
        // Measured once: later snapshots leave it, and it goes after a while.
        game.watch.observe(frame_at(1100), true, Some(done));
        assert_eq!(
            game.watch.outage.map(|o| o.length),
            Some(Duration::from_millis(1051))
        );
        let text = draw(&mut game, frame_at(1100) + MOVED_NOTICE_FOR, 80, 24);
        assert!(!text.contains("no snapshots for"), "{text}");
    }

    #[test]
    fn a_handoff_reports_its_short_pause() {
        let mut game = offline_game();
        game.watch.observe(T0, true, None);
        let switched = Moved {
            from: None,
            redirected: true,
            at: T0 + Duration::from_millis(5),
            done_at: Some(T0 + Duration::from_millis(21)),
        };
        game.watch
            .observe(T0 + Duration::from_millis(32), true, Some(switched));
        assert_eq!(
            game.moved_notice(T0 + Duration::from_millis(40)).as_deref(),
            Some("match handed over: moved: no snapshots for 21 ms")
        );
    }
}
