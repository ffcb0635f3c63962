//! One client's snapshot, with 8, 32 and 128 entities in view:
//!
//! - `snapshot/{full,delta}/N`: building the view (the game's `view`, sorted and deduped as
//!   `core` does), encoding it with the [`Replicator`] and sealing it into a netcode
//!   payload packet (what `netcode::Server::send_payload` writes). Full: the client never
//!   acknowledges, so there is never a baseline. Delta: every snapshot is acknowledged
//!   before the next (the entities move a little each tick, a few turn).
//! - `decode/{full,delta}/N`: the client reading that payload: `decode_server`, then the
//!   section against its baselines.
//!
//! The sizes of the snapshots are printed once per count, before its benchmarks.
//!
//! Run: `cargo bench -p arena-server --bench replication`.

use std::collections::BTreeMap;
use std::hint::black_box;

use arena_server::replication::{Replicator, Scratch, Written};
use arena_shared::game::{Game, PlayerId, Seen, Viewer};
use arena_shared::netcode::packet::MAX_PACKET_BYTES;
use arena_shared::netcode::{Key, Packet};
use arena_shared::protocol::baselines::Baselines;
use arena_shared::protocol::{
    PacketHeader, Replicated, ServerMessage, SnapshotHead, decode_server,
};
use arena_shared::sim::{
    Buttons, EntityState, GameEvent, PlayerInput, Shooter, World, WorldConfig,
};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

/// Entities in view.
const COUNTS: [u32; 3] = [8, 32, 128];
const TICK_HZ: u32 = 60;
/// Far more than any snapshot here spends: nothing is throttled.
const BYTES_PER_S: u32 = 1_000_000;
const PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;
const KEY: Key = [0x42; 32];
/// The player whose client is benchmarked.
const VIEWER: PlayerId = PlayerId(0);
/// Ticks played before measuring, and over which the sizes are averaged.
const WARM_TICKS: u32 = 60;

/// The eight directions a player runs in.
const DIRECTIONS: [u8; 8] = [
    Buttons::UP,
    Buttons::UP | Buttons::RIGHT,
    Buttons::RIGHT,
    Buttons::DOWN | Buttons::RIGHT,
    Buttons::DOWN,
    Buttons::DOWN | Buttons::LEFT,
    Buttons::LEFT,
    Buttons::UP | Buttons::LEFT,
];

/// A match of `count` players in an arena sized for them. Nobody fires, so the entities
/// are exactly the players' bodies.
#[derive(Clone)]
struct Match {
    count: u32,
    world: World,
    inputs: BTreeMap<PlayerId, PlayerInput>,
    events: Vec<GameEvent>,
}

impl Match {
    fn new(count: u32) -> Self {
        let config = WorldConfig {
            max_players: count,
            tick_hz: TICK_HZ,
            seed: u64::from(count),
        };
        let mut world = Shooter::new_state(&config);
        for i in 0..count {
            Shooter::join(&mut world, PlayerId(i));
        }
        Self {
            count,
            world,
            inputs: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// One tick. A quarter of the players stand still; the others run in one of eight
    /// directions and turn every 1.5 s, staggered, so a few velocities change each tick
    /// (and walls stop some).
    fn step(&mut self) {
        let tick = Shooter::tick(&self.world).0;
        self.inputs.clear();
        for i in 0..self.count {
            let buttons = if i % 4 == 3 {
                0
            } else {
                let turn = (tick + u64::from(i) * 7) / 90;
                DIRECTIONS[((u64::from(i) * 3 + turn) % 8) as usize]
            };
            self.inputs
                .insert(PlayerId(i), PlayerInput { buttons, aim: 0 });
        }
        self.events.clear();
        Shooter::step(&mut self.world, &self.inputs, &mut self.events);
    }
}

/// One client's sending side: what the server keeps for it and reuses.
struct Sender {
    replicator: Replicator<Shooter>,
    seen: Vec<Seen<EntityState>>,
    /// Covers the whole arena: every entity is in view.
    radius: f32,
    /// The game header's sequence of the next snapshot.
    sequence: u16,
    /// The netcode packet sequence of the next snapshot.
    packet_sequence: u64,
    scratch: Scratch<EntityState>,
    packet: [u8; MAX_PACKET_BYTES],
}

impl Sender {
    fn new(world: &World) -> Self {
        Self {
            replicator: Replicator::new(BYTES_PER_S, TICK_HZ),
            seen: Vec::new(),
            radius: Shooter::config(world).arena_size() * 1.5,
            sequence: 0,
            packet_sequence: 1000,
            scratch: Scratch::default(),
            packet: [0; MAX_PACKET_BYTES],
        }
    }

    /// Builds, encodes and seals the snapshot of `world` for [`VIEWER`], as `core`'s
    /// `send_snapshot` and netcode's `send_payload` do. Returns what the replicator wrote
    /// and the sealed datagram's length.
    fn send(&mut self, world: &World) -> (Written, usize) {
        self.replicator.refill();
        let viewer = Viewer {
            player: Some(VIEWER),
            radius: self.radius,
        };
        self.seen.clear();
        Shooter::view(world, &viewer, &mut self.seen);
        self.seen.sort_unstable_by_key(|s| s.id.index);
        self.seen.dedup_by_key(|s| s.id.index);
        let own = Shooter::body_of(world, VIEWER);
        let tick = Shooter::tick(world);
        let head = SnapshotHead::<Shooter> {
            tick,
            baseline_ticks: 0,
            your_entity: own,
            last_applied_input: tick.0 as u32,
            inputs_applied: tick.0,
            restored_from_tick: None,
            input_margin: Some(2),
            inputs_arrived_late: 0,
            you: Shooter::status(world, VIEWER).unwrap_or_default(),
        };
        let header = PacketHeader {
            sequence: self.sequence,
            ack: 500,
            ack_bits: u32::MAX,
        };
        self.sequence = self.sequence.wrapping_add(1);
        let config = Shooter::config(world);
        let written = match self.replicator.write(
            config,
            header,
            None,
            head,
            &self.seen,
            own,
            &mut self.scratch,
        ) {
            Ok(Some(written)) => written,
            other => panic!("the snapshot was not written: {other:?}"),
        };
        let sealed = Packet::Payload(self.scratch.payload(written.len)).write(
            &mut self.packet,
            self.packet_sequence,
            &KEY,
            PROTOCOL_ID,
        );
        self.packet_sequence += 1;
        match sealed {
            Ok(len) => (written, len),
            Err(error) => panic!("the payload was not sealed: {error}"),
        }
    }

    /// The client acknowledges the snapshot sent last.
    fn ack_last(&mut self) {
        self.replicator.on_ack(self.sequence.wrapping_sub(1));
    }

    /// The payload of the snapshot sent last.
    fn payload(&self, written: &Written) -> Vec<u8> {
        self.scratch.payload(written.len).to_vec()
    }
}

/// What the client does with a snapshot's payload: decodes it and reads its section
/// against the views it holds (keeping the new one).
fn decode(
    baselines: &mut Baselines<Shooter>,
    config: &WorldConfig,
    bytes: &[u8],
) -> (Vec<Replicated<EntityState>>, u16) {
    let (_, ServerMessage::Snapshot, section) = (match decode_server::<Shooter>(bytes) {
        Ok(decoded) => decoded,
        Err(error) => panic!("the snapshot did not decode: {error}"),
    }) else {
        panic!("not a snapshot");
    };
    match baselines.resolve(config, section) {
        Ok(snapshot) => (snapshot.entities, snapshot.deferred),
        Err(error) => panic!("the section did not read: {error}"),
    }
}

/// One count's match after [`WARM_TICKS`], and the last full and delta payloads with the
/// client state that reads them.
struct Case {
    game: Match,
    full: Vec<u8>,
    delta: Vec<u8>,
    /// Holds the views the delta payload may be made against.
    delta_client: Baselines<Shooter>,
}

impl Case {
    /// Plays [`WARM_TICKS`] ticks, sending each to a client that never acknowledges (full)
    /// and to one that acknowledges and reads all (delta); prints their sizes.
    fn new(count: u32) -> Self {
        let mut game = Match::new(count);
        let mut full_sender = Sender::new(&game.world);
        let mut delta_sender = Sender::new(&game.world);
        let mut delta_client = Baselines::default();
        let (mut full_sum, mut delta_sum, mut delta_datagrams) = (0, 0, 0);
        let (mut full, mut delta) = (Vec::new(), Vec::new());
        let mut last_full = None;
        let mut last_delta = None;
        for _ in 0..WARM_TICKS {
            game.step();
            let (written, _) = full_sender.send(&game.world);
            assert!(written.full, "a snapshot without acks had a baseline");
            assert_eq!(full_sender.seen.len(), count as usize, "entities in view");
            full_sum += written.len;
            full = full_sender.payload(&written);
            last_full = Some(written);

            let (written, datagram) = delta_sender.send(&game.world);
            delta_sender.ack_last();
            delta_sum += written.len;
            delta_datagrams += datagram;
            delta = delta_sender.payload(&written);
            let (view, _) = decode(&mut delta_client, Shooter::config(&game.world), &delta);
            let tick = Shooter::tick(&game.world);
            assert_eq!(
                Some(view.as_slice()),
                delta_sender.replicator.view_sent(tick),
                "the client read another view than the server sent"
            );
            last_delta = Some(written);
        }
        let n = WARM_TICKS as usize;
        let per = |bytes: usize| bytes as f64 / n as f64 / f64::from(count);
        if let (Some(f), Some(d)) = (last_full, last_delta) {
            eprintln!(
                "replication {count} in view: full {} B payload (mean {:.1} B, {:.2} B/entity; \
                 carried {}, stale {}), delta {} B payload (mean {:.1} B, {:.2} B/entity; \
                 carried {}, stale {}; mean datagram {:.1} B)",
                f.len,
                full_sum as f64 / n as f64,
                per(full_sum),
                f.carried,
                f.stale,
                d.len,
                delta_sum as f64 / n as f64,
                per(delta_sum),
                d.carried,
                d.stale,
                delta_datagrams as f64 / n as f64,
            );
        }
        Self {
            game,
            full,
            delta,
            delta_client,
        }
    }
}

fn benches(c: &mut Criterion) {
    for count in COUNTS {
        let case = Case::new(count);
        let config = *Shooter::config(&case.game.world);
        let mut snapshot = c.benchmark_group("snapshot");
        for (mode, acked) in [("full", false), ("delta", true)] {
            let mut game = case.game.clone();
            let mut sender = Sender::new(&game.world);
            // Steady state: the waits, the ring and (for delta) an acknowledged baseline.
            for _ in 0..WARM_TICKS {
                game.step();
                sender.send(&game.world);
                if acked {
                    sender.ack_last();
                }
            }
            // Each iteration sends the next tick; stepping the world is not measured.
            snapshot.bench_function(format!("{mode}/{count}"), |b| {
                b.iter_batched(
                    || {
                        game.step();
                        game.world.clone()
                    },
                    |world| {
                        let sent = sender.send(&world);
                        if acked {
                            sender.ack_last();
                        }
                        black_box(sent);
                        world
                    },
                    BatchSize::SmallInput,
                );
            });
        }
        snapshot.finish();

        let mut group = c.benchmark_group("decode");
        let mut client = Baselines::default();
        group.bench_function(format!("full/{count}"), |b| {
            b.iter(|| decode(&mut client, &config, black_box(&case.full)));
        });
        let mut client = case.delta_client;
        group.bench_function(format!("delta/{count}"), |b| {
            b.iter(|| decode(&mut client, &config, black_box(&case.delta)));
        });
        group.finish();
    }
}

criterion_group!(replication, benches);
criterion_main!(replication);
