//! The Redis store against a real redis-server: the same rules as the file store (one
//! winner per epoch, fencing, the newest few snapshots, released leases), kept by Lua
//! scripts in Redis, with leases that expire by Redis's clock, and bounded errors when
//! Redis cannot be reached.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![allow(clippy::disallowed_methods)]

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use arena_server::store::{
    KEEP_SNAPSHOTS, Lease, Me, RedisStore, SnapshotStore, StandbyEntry, StoreError,
};
use arena_tests::redis::{TestRedis, test_redis};
use redis::Commands;

fn me(n: u16) -> Me {
    Me {
        instance: format!("pid{n}@127.0.0.1:{n}"),
        admin: format!("127.0.0.1:{n}"),
        udp: format!("127.0.0.1:{}", n + 1).parse().unwrap(),
    }
}

fn store(redis: &TestRedis, n: u16) -> RedisStore {
    RedisStore::connect(&redis.url, &redis.namespace, me(n)).unwrap()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn lease(owner: &str, epoch: u64, ms: u64) -> Lease {
    Lease {
        owner: owner.into(),
        epoch,
        expires_unix_ms: wall_ms() + ms,
        tick: 0,
        released: false,
    }
}

#[test]
fn one_owner_per_epoch_and_every_stale_write_is_fenced_in_redis() {
    let redis = test_redis("store-fence");
    let (a, b) = (store(&redis, 1), store(&redis, 2));
    a.acquire("m", &lease("a", 1, 5_000), 0, false).unwrap();
    // A live lease: a second owner is refused, saying whose it is.
    match b.acquire("m", &lease("b", 2, 5_000), 0, false) {
        Err(StoreError::Held {
            owner,
            epoch,
            remaining_ms,
        }) => {
            assert_eq!((owner.as_str(), epoch), ("a", 1));
            assert!(
                remaining_ms > 3_000 && remaining_ms <= 5_000,
                "{remaining_ms}"
            );
        }
        other => panic!("expected Held, got {other:?}"),
    }
    a.renew("m", &lease("a", 1, 5_000)).unwrap();
    // Only the holder renews.
    assert!(matches!(
        b.renew("m", &lease("b", 1, 5_000)),
        Err(StoreError::Fenced { .. })
    ));
    a.write_snapshot("m", 1, 10, b"one").unwrap();
    // A handoff moves epoch 1 to 2, whatever the lease's state; from then on epoch 1
    // cannot renew, write or release.
    b.acquire("m", &lease("b", 2, 5_000), 0, true).unwrap();
    assert!(matches!(
        a.renew("m", &lease("a", 1, 5_000)),
        Err(StoreError::Fenced { held: 2, .. })
    ));
    assert!(matches!(
        a.write_snapshot("m", 1, 11, b"stale"),
        Err(StoreError::Fenced { held: 2, .. })
    ));
    assert!(matches!(
        a.release("m", &lease("a", 1, 0)),
        Err(StoreError::Fenced { .. })
    ));
    // A replayed handoff of epoch 1 is refused too.
    assert!(matches!(
        a.acquire("m", &lease("a", 2, 5_000), 0, true),
        Err(StoreError::Fenced { .. })
    ));
    assert_eq!(a.fenced_count(), 4);
    let mut connection = redis.connection();
    let counted: u64 = connection
        .get(format!("{}:match:m:fenced", redis.namespace))
        .unwrap();
    assert_eq!(counted, 5, "the renewal by a non-holder counts too");
    let newest = a.snapshots_newest_first("m").unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].bytes.as_deref(), Ok(&b"one"[..]));
    // The directory names the new owner's addresses.
    let entry = a.directory("m").unwrap().unwrap();
    assert_eq!((entry.owner.as_str(), entry.epoch), ("b", 2));
    assert_eq!(entry.udp, me(2).udp);
    assert_eq!(entry.admin, me(2).admin);
}

#[test]
fn of_eight_processes_taking_the_same_epoch_exactly_one_wins() {
    let redis = test_redis("store-race");
    let stores: Vec<Arc<RedisStore>> = (0..8).map(|n| Arc::new(store(&redis, 10 + n))).collect();
    let barrier = Arc::new(Barrier::new(stores.len()));
    let handles: Vec<_> = stores
        .iter()
        .enumerate()
        .map(|(n, s)| {
            let (s, barrier) = (Arc::clone(s), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                s.acquire("race", &lease(&format!("p{n}"), 1, 5_000), 0, false)
                    .is_ok()
            })
        })
        .collect();
    let wins = handles
        .into_iter()
        .map(|h| h.join().unwrap())
        .filter(|won| *won)
        .count();
    assert_eq!(wins, 1);
}

#[test]
fn the_newest_snapshots_are_kept_in_epoch_then_tick_order() {
    let redis = test_redis("store-keep");
    let s = store(&redis, 20);
    s.acquire("k", &lease("a", 1, 5_000), 0, false).unwrap();
    for tick in 1..=7u64 {
        s.write_snapshot("k", 1, tick * 10, format!("t{tick}").as_bytes())
            .unwrap();
    }
    s.acquire("k", &lease("a", 2, 5_000), 0, true).unwrap();
    // A lower tick at a newer epoch is still the newest.
    s.write_snapshot("k", 2, 5, b"e2").unwrap();
    let listed = s.snapshots_newest_first("k").unwrap();
    let ids: Vec<(u64, u64)> = listed.iter().map(|x| (x.epoch, x.tick)).collect();
    assert_eq!(ids.len(), KEEP_SNAPSHOTS);
    assert_eq!(ids, vec![(2, 5), (1, 70), (1, 60), (1, 50), (1, 40)]);
    assert_eq!(s.newest_snapshot_id("k").unwrap(), Some((2, 5)));
    assert_eq!(listed[0].bytes.as_deref(), Ok(&b"e2"[..]));
    // Pruned snapshots' bytes are gone from Redis, not only from the index.
    let mut connection = redis.connection();
    let keys: Vec<String> = connection
        .keys(format!("{}:match:k:snapshot:*", redis.namespace))
        .unwrap();
    assert_eq!(keys.len(), KEEP_SNAPSHOTS, "{keys:?}");
}

#[test]
fn a_lease_expires_by_redis_clock_and_a_released_one_is_taken_at_once() {
    let redis = test_redis("store-expiry");
    let (a, b) = (store(&redis, 30), store(&redis, 31));
    a.acquire("x", &lease("a", 1, 300), 0, false).unwrap();
    assert!(!a.lease("x").unwrap().unwrap().lapsed(wall_ms()));
    // Redis drops the live lease when its PX runs out; the record stays, lapsed.
    let mut connection = redis.connection();
    let live = format!("{}:match:x:lease", redis.namespace);
    let deadline = Instant::now() + Duration::from_secs(5);
    while connection.exists::<_, bool>(&live).unwrap() {
        assert!(Instant::now() < deadline, "the lease never expired");
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = a.lease("x").unwrap().unwrap();
    assert!(held.lapsed(wall_ms()) && !held.released && held.epoch == 1);
    b.acquire("x", &lease("b", 2, 5_000), 0, false).unwrap();
    // A release with the final tick: lapsed at once, the tick kept for the successor.
    let mut release = lease("b", 2, 0);
    release.tick = 1234;
    b.release("x", &release).unwrap();
    let released = a.lease("x").unwrap().unwrap();
    assert!(released.released && released.tick == 1234, "{released:?}");
    assert!(a.directory("x").unwrap().unwrap().released);
    a.acquire("x", &lease("a", 3, 5_000), 0, false).unwrap();
    // The released holder cannot renew its way back.
    assert!(matches!(
        b.renew("x", &lease("b", 2, 5_000)),
        Err(StoreError::Fenced { held: 3, .. })
    ));
}

#[test]
fn standbys_register_expire_and_leave() {
    let redis = test_redis("store-standbys");
    let s = store(&redis, 40);
    let entry = |n: u16, watch: Option<&str>| StandbyEntry {
        instance: me(n).instance,
        admin: me(n).admin,
        udp: me(n).udp,
        watch: watch.map(str::to_owned),
    };
    s.register_standby(&entry(41, None)).unwrap();
    s.register_standby(&entry(42, Some("other"))).unwrap();
    let free = s.free_standbys().unwrap();
    assert_eq!(free.len(), 2, "{free:?}");
    assert!(free.iter().any(|e| *e == entry(42, Some("other"))));
    assert!(entry(41, None).takes("m") && !entry(42, Some("other")).takes("m"));
    s.remove_standby(&me(41).instance).unwrap();
    assert_eq!(s.free_standbys().unwrap(), vec![entry(42, Some("other"))]);
    // An entry whose expiry passed (a standby that died) is dropped when listing.
    let mut connection = redis.connection();
    let _: () = connection
        .zadd(format!("{}:standbys", redis.namespace), &me(42).instance, 1)
        .unwrap();
    assert!(s.free_standbys().unwrap().is_empty());
    let left: Vec<String> = connection
        .hkeys(format!("{}:standby-entries", redis.namespace))
        .unwrap();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_unreachable_redis_fails_every_call_within_its_bound() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = RedisStore::connect(&format!("redis://127.0.0.1:{port}"), "arena", me(50)).unwrap();
    let started = Instant::now();
    let renewal = s.renew("m", &lease("a", 1, 1_000));
    assert!(
        matches!(renewal, Err(StoreError::Unavailable(_))),
        "{renewal:?}"
    );
    assert!(matches!(s.lease("m"), Err(StoreError::Unavailable(_))));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(s.unavailable().is_some());
    let info = s.info();
    assert_eq!(info.kind, "redis");
    assert_eq!(info.address, format!("redis://127.0.0.1:{port}"));
}

#[test]
fn a_snapshot_too_big_is_refused_before_it_is_sent() {
    let redis = test_redis("store-size");
    let s = store(&redis, 60);
    s.acquire("big", &lease("a", 1, 5_000), 0, false).unwrap();
    let huge = vec![0u8; arena_server::store::MAX_SNAPSHOT_BYTES + 1];
    assert!(matches!(
        s.write_snapshot("big", 1, 1, &huge),
        Err(StoreError::Corrupt(..))
    ));
    assert!(s.snapshots_newest_first("big").unwrap().is_empty());
}
