use std::collections::BTreeMap;

use arena_shared::game::{Game, MatchConfig, PlayerId, Viewer};
use arena_shared::snapshot::{self, MatchState};
use glam::Vec2;
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;

use super::*;

fn config(max_players: u32) -> MatchConfig {
    MatchConfig {
        max_players,
        tick_hz: 60,
        seed: 7,
    }
}

fn p(id: u32) -> PlayerId {
    PlayerId(id)
}

/// A match of `max_players` slots with players 1 to `players` in it.
fn match_of(max_players: u32, players: u32) -> TagState {
    let mut state = Tag::new_state(&config(max_players));
    for id in 1..=players {
        Tag::join(&mut state, p(id));
    }
    state
}

/// Puts `player` at `position`, standing.
fn place(state: &mut TagState, player: PlayerId, position: Vec2) {
    let runner = state.runners.get_mut(&player).expect("in the match");
    runner.position = position;
    runner.velocity = Vec2::ZERO;
}

/// One step with these inputs (everyone else repeats its last); what happened.
fn step(state: &mut TagState, inputs: &[(PlayerId, TagInput)]) -> Vec<TagEvent> {
    let mut events = Vec::new();
    Tag::step(state, &inputs.iter().copied().collect(), &mut events);
    events
}

/// Inputs that depend only on the state and `seed`: "it" runs at the nearest runner; the
/// others turn every third of a second and send nothing in between (repeating the last).
fn inputs(state: &TagState, seed: u64) -> BTreeMap<PlayerId, TagInput> {
    let t = state.tick().0;
    let mut out = BTreeMap::new();
    for (&id, runner) in state.runners() {
        let from = runner.position;
        if state.it() == Some(id) {
            let nearest = state
                .runners()
                .iter()
                .filter(|&(&other, _)| other != id)
                .map(|(_, r)| r.position)
                .min_by(|a, b| {
                    a.distance_squared(from)
                        .total_cmp(&b.distance_squared(from))
                });
            if let Some(target) = nearest {
                out.insert(id, TagInput::towards(target - from));
            }
        } else if (t + u64::from(id.0)).is_multiple_of(20) {
            let mut rng = Pcg64Mcg::seed_from_u64(seed ^ (t << 16) ^ u64::from(id.0));
            let angle = rng.random_range(0.0..std::f32::consts::TAU);
            out.insert(id, TagInput::towards(Vec2::from_angle(angle)));
        }
    }
    out
}

/// One tick of a busy match: besides the inputs, "it" leaves every 500 ticks, and 250
/// ticks later the lowest of players 1 to 10 not in joins.
fn play(state: &mut TagState, inputs: &BTreeMap<PlayerId, TagInput>, events: &mut Vec<TagEvent>) {
    let t = state.tick().0;
    if t % 500 == 250
        && let Some(it) = state.it()
    {
        Tag::leave(state, it);
    }
    if t.is_multiple_of(500)
        && let Some(out) = (1..=10).map(p).find(|&id| state.runner(id).is_none())
    {
        Tag::join(state, out);
    }
    Tag::step(state, inputs, events);
}

/// `ticks` of a busy match with [`inputs`] of `seed`.
fn play_for(state: &mut TagState, ticks: u64, seed: u64) {
    for _ in 0..ticks {
        play(state, &inputs(state, seed), &mut Vec::new());
    }
}

#[test]
fn same_inputs_give_the_same_hashes_and_one_different_input_others() {
    // The hash after every tick of 5000, one input at tick 2500 set towards the arena's
    // centre or away from it.
    let run = |towards_centre: bool| {
        let mut state = match_of(8, 8);
        let (mut events, mut hashes) = (Vec::new(), Vec::new());
        for _ in 0..5000 {
            let mut next = inputs(&state, 1);
            if state.tick().0 == 2500 {
                let who = Tag::players(&state)[0];
                let from = state.runner(who).expect("in").position;
                let centre = Vec2::splat(state.size() / 2.0);
                let way = if towards_centre {
                    centre - from
                } else {
                    from - centre
                };
                next.insert(who, TagInput::towards(way));
            }
            play(&mut state, &next, &mut events);
            hashes.push(Tag::hash(&state));
        }
        (hashes, events)
    };
    let (hashes, events) = run(false);
    assert_eq!(run(false), (hashes.clone(), events.clone()));
    let other = run(true).0;
    assert_eq!(other[..2500], hashes[..2500]);
    assert_ne!(other[2500], hashes[2500]);
    // The run exercised the rules: tags, and a new "it" each time "it" left.
    let count = |f: fn(&TagEvent) -> bool| events.iter().filter(|e| f(e)).count();
    assert!(
        count(|e| matches!(e, TagEvent::Tagged { .. })) > 5,
        "{events:?}"
    );
    assert_eq!(count(|e| matches!(e, TagEvent::NewIt { .. })), 11);
}

#[test]
fn a_touch_passes_it_on_with_no_tag_back_for_a_second() {
    let mut state = match_of(8, 2);
    place(&mut state, p(1), Vec2::new(5.0, 10.0));
    place(&mut state, p(2), Vec2::new(15.0, 10.0));
    let events = step(&mut state, &[]);
    let it = state.it().expect("someone is it");
    assert_eq!(events, vec![TagEvent::NewIt { player: it }]);
    let other = if it == p(1) { p(2) } else { p(1) };

    place(&mut state, other, Vec2::new(5.0, 10.0));
    place(&mut state, it, Vec2::new(5.0 + 2.0 * RADIUS - 0.05, 10.0));
    assert_eq!(
        step(&mut state, &[]),
        vec![TagEvent::Tagged { it: other, by: it }]
    );
    assert_eq!(state.it(), Some(other));
    let mentioned = &mut Vec::new();
    Tag::mentions(&TagEvent::Tagged { it: other, by: it }, mentioned);
    assert_eq!(*mentioned, vec![it, other]);

    // They stand touching: the new "it" cannot tag back for a second, then it does.
    for _ in 1..state.config().ticks(NO_TAG_BACK_S) {
        assert_eq!(step(&mut state, &[]), vec![]);
    }
    assert_eq!(
        step(&mut state, &[]),
        vec![TagEvent::Tagged { it, by: other }]
    );
}

#[test]
fn the_score_counts_ticks_not_it() {
    let mut state = match_of(8, 2);
    place(&mut state, p(1), Vec2::new(3.0, 3.0));
    place(&mut state, p(2), Vec2::new(18.0, 18.0));
    for _ in 0..150 {
        step(&mut state, &[]);
    }
    let it = state.it().expect("someone is it");
    let free = if it == p(1) { p(2) } else { p(1) };
    assert_eq!(state.runner(free).map(|r| r.ticks_free), Some(150));
    assert_eq!(state.runner(it).map(|r| r.ticks_free), Some(0));
    let status = |player| Tag::status(&state, player).expect("in");
    assert_eq!(
        status(free),
        TagStatus {
            it: false,
            seconds_free: 2
        }
    );
    assert!(status(it).it);
    assert!(Tag::standing(&state, free) > Tag::standing(&state, it));
}

#[test]
fn it_leaving_makes_the_match_pick_another() {
    let mut state = match_of(8, 3);
    for (id, x) in [(1, 3.0), (2, 10.0), (3, 17.0)] {
        place(&mut state, p(id), Vec2::new(x, 10.0));
    }
    step(&mut state, &[]);
    let gone = state.it().expect("someone is it");
    Tag::leave(&mut state, gone);
    assert_eq!(state.it(), None);
    let events = step(&mut state, &[]);
    let it = state.it().expect("a new it");
    assert_ne!(it, gone);
    assert_eq!(events, vec![TagEvent::NewIt { player: it }]);
    assert_eq!(Tag::players(&state).len(), 2);

    // With no one left there is no one to pick.
    for player in Tag::players(&state) {
        Tag::leave(&mut state, player);
    }
    assert_eq!(step(&mut state, &[]), vec![]);
    assert_eq!(state.it(), None);
}

#[test]
fn joining_again_keeps_the_runner_and_a_new_runner_gets_a_new_id() {
    let mut state = match_of(8, 2);
    let run = TagInput { x: 1, y: 1 };
    for _ in 0..30 {
        step(&mut state, &[(p(1), run)]);
    }
    let before = *state.runner(p(1)).expect("in");
    let id = Tag::body_of(&state, p(1)).expect("has a body");
    Tag::join(&mut state, p(1));
    assert_eq!(state.runner(p(1)), Some(&before));
    Tag::leave(&mut state, p(1));
    assert_eq!(Tag::body_of(&state, p(1)), None);
    Tag::join(&mut state, p(1));
    let again = Tag::body_of(&state, p(1)).expect("has a body");
    assert_eq!(again.index, id.index);
    assert_ne!(again, id);
    assert_ne!(Tag::body_of(&state, p(2)), Some(again));
}

#[test]
fn a_snapshot_round_trip_continues_like_never_stopping() {
    let mut world = match_of(16, 6);
    play_for(&mut world, 900, 3);
    let original = MatchState::<Tag> {
        world,
        roster: Vec::new(),
        next_player_id: 11,
    };
    let bytes = snapshot::encode("m1", 4, &original).expect("encodes");
    let (header, mut restored) = snapshot::decode::<Tag>(&bytes, "m1").expect("decodes");
    assert_eq!((header.game.as_str(), header.schema_version), ("tag", 1));
    assert_eq!(header.tick, original.world.tick());
    assert_eq!(Tag::hash(&restored.world), Tag::hash(&original.world));
    let mut continued = original.world.clone();
    play_for(&mut continued, 1500, 3);
    play_for(&mut restored.world, 1500, 3);
    assert_eq!(Tag::hash(&restored.world), Tag::hash(&continued));
}

#[test]
fn predict_is_what_the_step_does() {
    let mut state = match_of(64, 2);
    place(&mut state, p(1), Vec2::new(15.0, 15.0));
    place(&mut state, p(2), Vec2::new(45.0, 45.0));
    step(&mut state, &[]); // picks "it": it runs faster from the next tick on
    let shared = Tag::shared(&state);
    let mut predicted: Vec<_> = [p(1), p(2)].map(|id| state.body(id).expect("in")).into();
    let mut held = [TagInput::default(); 2];
    for t in 0..480u32 {
        // Each turns an eighth every quarter second: small loops in open space. Between
        // turns nothing is sent, and the step repeats the last input, as predict is told.
        let mut inputs = Vec::new();
        if t % 15 == 0 {
            for (i, held) in held.iter_mut().enumerate() {
                let angle = (t / 15 + i as u32) as f32 * std::f32::consts::FRAC_PI_4;
                *held = TagInput::towards(Vec2::from_angle(angle));
                inputs.push((p(i as u32 + 1), *held));
            }
        }
        step(&mut state, &inputs);
        for (i, body) in predicted.iter_mut().enumerate() {
            *body = Tag::predict(&shared, state.config(), *body, held[i]);
            assert_eq!(Some(*body), state.body(p(i as u32 + 1)), "tick {t}");
        }
    }
    assert!(predicted.iter().any(|b| b.it) && predicted.iter().any(|b| !b.it));
}

#[test]
fn a_player_sees_the_runners_near_it_and_a_spectator_sees_all() {
    let mut state = match_of(64, 3);
    for (id, at) in [(1, (10.0, 10.0)), (2, (13.0, 14.0)), (3, (40.0, 40.0))] {
        place(&mut state, p(id), Vec2::from(at));
    }
    let look = |player| {
        let mut seen = Vec::new();
        let viewer = Viewer {
            player,
            radius: 10.0,
        };
        Tag::view(&state, &viewer, &mut seen);
        seen
    };
    let seen = look(Some(p(1)));
    let ids: Vec<_> = seen.iter().map(|s| s.id.index).collect();
    assert_eq!(ids, vec![1, 2]);
    // 5 m away in a 10 m view: half way from 4 (at the viewer) to 1 (at the edge).
    assert_eq!(seen[1].priority, 2.5);
    assert_eq!(seen[1].state.position(), Vec2::new(13.0, 14.0));
    assert_eq!(Tag::body_of(&state, p(1)), Some(seen[0].id));
    assert_eq!(look(None).len(), 3);
    assert!(look(Some(p(9))).is_empty());
}

#[test]
fn runners_round_trip_whole_and_against_a_base() {
    use arena_shared::protocol::bits::{BitReader, BitWriter};
    let unsigned = [0u16, 1, 640, u16::MAX];
    let signed = [0i16, -1, 126, i16::MIN, i16::MAX];
    let mut all = Vec::new();
    for &x in &unsigned {
        for &vx in &signed {
            for it in [false, true] {
                all.push(RunnerState {
                    x,
                    y: 65535 - x,
                    vx,
                    vy: -vx.saturating_add(1),
                    it,
                });
            }
        }
    }
    for a in &all {
        for base in std::iter::once(None).chain(all.iter().map(|b| Some((b, 5)))) {
            let mut buf = [0u8; 32];
            let mut w = BitWriter::new(&mut buf, 256);
            a.write(60, base, &mut w);
            let len = w.finish().expect("fits");
            let mut r = BitReader::new(&buf[..len]);
            assert_eq!(RunnerState::read(60, base, &mut r), Ok(*a));
            r.finish().expect("all read");
        }
    }
}
