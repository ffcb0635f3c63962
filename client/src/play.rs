//! The terminal client of the built-in shooter: its game state and drawing, independent
//! of the terminal itself. The binary feeds it keys and time, and draws it into any ratatui
//! backend (the real terminal, or a `TestBackend` in tests and `--headless` runs).

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
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Widget};

use crate::interpolation::{Drawn, Interpolator};
use crate::prediction::Predictor;
use crate::session::Session;

/// How long a key press holds its direction when the terminal reports no releases
/// (auto-repeat refreshes it).
const HOLD_WITHOUT_RELEASE: Duration = Duration::from_millis(180);
/// Kills the kill feed shows, newest last.
pub const KILL_FEED_LINES: usize = 4;

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

    /// Takes the snapshots that arrived: interpolation, then reconciliation.
    pub fn absorb_snapshots(&mut self, now: Duration) {
        let mut fresh = false;
        let snapshots: Vec<Snapshot<Shooter>> = self.session.take_snapshots().collect();
        for snapshot in &snapshots {
            self.interpolator.on_snapshot(now, snapshot);
            self.recent_snapshots.push_back(now);
            fresh = true;
        }
        while self
            .recent_snapshots
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > Duration::from_secs(1))
        {
            self.recent_snapshots.pop_front();
        }
        if fresh && let Some(latest) = self.session.latest_snapshot() {
            self.predictor.on_snapshot(
                latest,
                self.session.shared(),
                self.session.unapplied_frames(),
            );
        }
    }

    /// Takes the game's events that arrived: kills go to the kill feed.
    pub fn absorb_events(&mut self) {
        for event in self.session.take_events() {
            self.kill_feed.hear(&event);
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

    /// Draws the whole screen.
    pub fn draw(&mut self, frame: &mut Frame<'_>, now: Duration) {
        let dt = self
            .last_frame
            .map_or(0.0, |t| now.saturating_sub(t).as_secs_f32());
        self.last_frame = Some(now);
        let [status, arena, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        frame.render_widget(Paragraph::new(self.status_line()), status);
        // The bottom line lists the keys, or for a few seconds says where the match moved.
        let bottom = match self.moved_notice(now) {
            Some(notice) => Paragraph::new(Line::from(notice)).style(
                Style::default()
                    .fg(Color::LightGreen)
                    .add_modifier(Modifier::BOLD),
            ),
            None => Paragraph::new(Line::from(
                "WASD/arrows move · space fire · Tab scores · q/Esc quit",
            ))
            .style(Style::default().fg(Color::DarkGray)),
        };
        frame.render_widget(bottom, help);

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
            spectating: self.spectating,
            message: self.message(),
        };
        frame.render_widget(view, arena);
        let kills = self.kill_feed.lines(|player| self.session.name(player));
        draw_kill_feed(frame, arena, &kills);

        if self.show_scores {
            draw_scores(frame, arena, self.session.scoreboard());
        }
    }

    /// `moved to <address> in N ms`, for a few seconds after a handoff or reconnect.
    pub fn moved_notice(&self, now: Duration) -> Option<String> {
        let moved = self.session.moved()?;
        let done = moved.done_at?;
        if now.saturating_sub(done) >= Duration::from_secs(8) {
            return None;
        }
        let to = self
            .session
            .server_address()
            .map_or("?".to_owned(), |a| a.to_string());
        let how = if moved.redirected {
            "match handed over: moved"
        } else {
            "server lost: reconnected"
        };
        Some(format!(
            "{how} to {to} in {} ms",
            done.saturating_sub(moved.at).as_millis()
        ))
    }

    fn status_line(&self) -> Line<'static> {
        let server = self
            .session
            .server_address()
            .map_or("-".to_owned(), |a| a.to_string());
        let tick = self.session.latest_snapshot().map_or(0, |s| s.tick.0);
        let rtt = self
            .session
            .rtt()
            .map_or("-".to_owned(), |r| format!("{} ms", r.as_millis()));
        let mut text = format!(
            "arena {server} │ tick {tick} │ rtt {rtt} │ loss {:.1}% │ {} snap/s",
            self.session.loss() * 100.0,
            self.snapshots_per_second()
        );
        if let Some(you) = self.session.latest_snapshot().map(|s| s.you)
            && !self.spectating
        {
            text.push_str(&format!(
                " │ hp {} │ kills {} deaths {}",
                you.health, you.score, you.deaths
            ));
        }
        Line::from(text).style(Style::default().add_modifier(Modifier::BOLD))
    }

    /// A line to show over the arena instead of the game, if any.
    fn message(&self) -> Option<String> {
        match self.session.state() {
            ClientState::Connected => match self.session.latest_snapshot() {
                Some(s) if s.you.health == 0 && !self.spectating => {
                    Some("you were shot: back in a moment".into())
                }
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
    spectating: bool,
    message: Option<String>,
}

impl Widget for ArenaView<'_> {
    fn render(self, area: Rect, buf: &mut Buffer) {
        if area.width < 4 || area.height < 3 {
            return;
        }
        // Terminal cells are about twice as tall as wide: a row covers twice the metres.
        let (center, view) = match (self.spectating, self.own) {
            (false, Some(own)) => (own, 30.0),
            _ => (
                Vec2::splat(self.arena_size / 2.0),
                self.arena_size / 2.0 + 1.0,
            ),
        };
        let per_col = (2.0 * view / f32::from(area.width)).max(view / f32::from(area.height));
        let per_row = per_col * 2.0;
        let cols = f32::from(area.width);
        let rows = f32::from(area.height);
        let cell_of = |p: Vec2| -> Option<(u16, u16)> {
            let x = (p.x - center.x) / per_col + cols / 2.0;
            let y = rows / 2.0 - (p.y - center.y) / per_row;
            (x >= 0.0 && y >= 0.0 && x < cols && y < rows)
                .then(|| (area.x + x as u16, area.y + y as u16))
        };
        // Ground, the outside, and walls: every cell asks where it is.
        for row in 0..area.height {
            for col in 0..area.width {
                let p = Vec2::new(
                    center.x + (f32::from(col) + 0.5 - cols / 2.0) * per_col,
                    center.y - (f32::from(row) + 0.5 - rows / 2.0) * per_row,
                );
                let outside =
                    p.x < 0.0 || p.y < 0.0 || p.x > self.arena_size || p.y > self.arena_size;
                let wall = self.walls.iter().any(|w| {
                    p.cmpge(w.min - Vec2::splat(per_col / 2.0)).all()
                        && p.cmple(w.max + Vec2::splat(per_col / 2.0)).all()
                });
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
            cell.set_symbol("@").set_style(
                Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
            );
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
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    use super::*;

    fn killed(victim: u32, by: u32) -> GameEvent {
        GameEvent::Killed {
            victim: PlayerId(victim),
            by: PlayerId(by),
        }
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
    fn a_frame_shows_the_kill_feed_and_the_status_line() {
        // No server: the session fails at once, and the frame says so.
        let session = Session::new(Duration::from_secs(1), &[], 60);
        let mut game = Game::new(session, false);
        game.kill_feed.hear(&killed(1, 2));
        let mut terminal = Terminal::new(TestBackend::new(80, 20)).unwrap();
        terminal
            .draw(|frame| game.draw(frame, Duration::from_secs(1)))
            .unwrap();
        let text = screen_text(terminal.backend().buffer());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("arena - │ tick 0 │ rtt -"), "{text}");
        assert!(lines[1].trim_end().ends_with("#2 shot #1"), "{text}");
        assert!(text.contains("q/Esc quit"), "{text}");
    }
}
