//! The Redis store (`--store redis://HOST:PORT[/DB]`): processes on any machines share
//! one Redis (a single primary; not Redis Cluster).
//!
//! ```text
//! <ns>:match:<id>:epoch            the match's current epoch (integer, no expiry)
//! <ns>:match:<id>:lease            the live lease (JSON), with a PX expiry kept by Redis's
//!                                  clock: it exists while the lease holds
//! <ns>:match:<id>:last             the current epoch's lease as last written (JSON, no
//!                                  expiry): the final tick after a release, the tick of
//!                                  the last renewal after a crash
//! <ns>:match:<id>:snapshots        sorted set of snapshot names "<epoch>-<tick>" (zero
//!                                  padded, so lexical order is (epoch, tick) order)
//! <ns>:match:<id>:snapshot:<name>  a MatchSnapshot's bytes
//! <ns>:match:<id>:fenced           writes refused by fencing, from any process
//! <ns>:directory                   hash: match id -> where it lives (JSON DirectoryEntry)
//! <ns>:standbys                    sorted set: standby instance -> expiry (Redis ms)
//! <ns>:standby-entries             hash: standby instance -> JSON StandbyEntry
//! ```
//!
//! `<ns>` is `--store-namespace` (default `arena`): fleets sharing a Redis keep apart.
//!
//! Every write goes through a Lua script, which Redis runs atomically: it refuses the
//! write unless the writer's epoch is the current one (fencing in the store itself, so a
//! paused or partitioned old owner cannot write whatever it believes), and counts the
//! refusal. A lease is taken with `SET NX PX` and expires by Redis's clock, so no two
//! processes' clocks need to agree. If Redis restarted without persistence and forgot a
//! match altogether (no epoch), its owner's next renewal records it again at its epoch;
//! nobody else can have taken it meanwhile, since taking a match needs its record.
//!
//! The [`SnapshotStore`] trait is blocking, as the owner's writer and renewer threads
//! want it; the `redis` crate is async. The store runs its own current-thread runtime on
//! a thread of its own, with a connection manager that reconnects by itself, and every
//! call waits at most [`CALL_TIMEOUT`] (a snapshot write, [`SNAPSHOT_TIMEOUT`]) for an
//! answer: Redis down means [`StoreError::Unavailable`] in bounded time, never a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{AsyncCommands, Script};

use super::{
    DirectoryEntry, KEEP_SNAPSHOTS, Lease, MAX_SNAPSHOT_BYTES, Me, STANDBY_TTL_MS, SnapshotStore,
    StandbyEntry, StoreError, StoreInfo, StoredSnapshot,
};

/// The longest a lease, directory or registry call waits for Redis.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(500);

/// The longest a snapshot write or read waits for Redis.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes epoch ARGV[1]. KEYS: epoch, lease, last, directory, fenced.
/// ARGV: epoch, lease JSON, ttl ms, handoff ("1"/"0"), match id, directory JSON.
/// Returns {"ok"} | {"held", lease JSON, pttl} | {"fenced", current epoch, last JSON} |
/// {"nolease"}.
const ACQUIRE: &str = r#"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local epoch = tonumber(ARGV[1])
local last = redis.call('GET', KEYS[3]) or ''
if ARGV[4] == '1' then
  if current == 0 then return {'nolease'} end
  if current ~= epoch - 1 then
    redis.call('INCR', KEYS[5])
    return {'fenced', tostring(current), last}
  end
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
else
  local live = redis.call('GET', KEYS[2])
  if live then return {'held', live, tostring(redis.call('PTTL', KEYS[2]))} end
  if epoch <= current then
    redis.call('INCR', KEYS[5])
    return {'fenced', tostring(current), last}
  end
  if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
    return {'held', redis.call('GET', KEYS[2]) or '', tostring(redis.call('PTTL', KEYS[2]))}
  end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
return {'ok'}
"#;

/// Renews (ARGV[4] = "0") or releases (ARGV[4] = "1") our lease. KEYS: epoch, lease,
/// last, directory, fenced. ARGV: epoch, lease JSON, ttl ms, release, owner, match id,
/// directory JSON. Returns {"ok"} | {"fenced", current epoch, last JSON} |
/// {"reseeded"} (Redis had forgotten the match; recorded again at our epoch).
const RENEW: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then
  if ARGV[4] == '1' then return {'nolease'} end
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
  redis.call('SET', KEYS[3], ARGV[2])
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
  return {'reseeded'}
end
local last = redis.call('GET', KEYS[3]) or ''
local held = cjson.decode(last ~= '' and last or '{}')
if tonumber(current) ~= tonumber(ARGV[1]) or held.owner ~= ARGV[5]
   or (held.released and ARGV[4] ~= '1') then
  redis.call('INCR', KEYS[5])
  return {'fenced', current, last}
end
redis.call('SET', KEYS[3], ARGV[2])
if ARGV[4] == '1' then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[4], ARGV[6], ARGV[7])
else
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
end
return {'ok'}
"#;

/// Writes a snapshot of epoch ARGV[1] and prunes to ARGV[4]; refused unless ARGV[1] is
/// the current epoch (or Redis forgot the match: the owner's next renewal records it
/// again). KEYS: epoch, snapshots, fenced. ARGV: epoch, name, bytes, keep, snapshot key prefix.
/// Returns {"ok"} | {"fenced", current epoch}.
const WRITE_SNAPSHOT: &str = r#"
local current = redis.call('GET', KEYS[1])
if current and tonumber(current) ~= tonumber(ARGV[1]) then
  redis.call('INCR', KEYS[3])
  return {'fenced', current}
end
redis.call('SET', ARGV[5] .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
local extra = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if extra > 0 then
  for _, old in ipairs(redis.call('ZRANGE', KEYS[2], 0, extra - 1)) do
    redis.call('DEL', ARGV[5] .. old)
    redis.call('ZREM', KEYS[2], old)
  end
end
return {'ok'}
"#;

/// Registers a standby until Redis's now + ARGV[3] ms. KEYS: standbys, entries.
/// ARGV: instance, entry JSON, ttl ms.
const REGISTER_STANDBY: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {'ok'}
"#;

/// Drops expired standbys, then lists the live ones, freshest first. KEYS: standbys,
/// entries.
const FREE_STANDBYS: &str = r#"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ms)) do
  redis.call('HDEL', KEYS[2], gone)
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
local entries = {}
for _, instance in ipairs(redis.call('ZREVRANGE', KEYS[1], 0, -1)) do
  local entry = redis.call('HGET', KEYS[2], instance)
  if entry then table.insert(entries, entry) end
end
return entries
"#;

/// The Redis store.
pub struct RedisStore {
    runtime: tokio::runtime::Handle,
    /// Ends the store's runtime thread when the store is dropped.
    _stop: tokio::sync::oneshot::Sender<()>,
    connection: ConnectionManager,
    namespace: String,
    address: String,
    me: Me,
    fenced: AtomicU64,
    scripts: Scripts,
    /// Why the latest call failed, until one succeeds.
    last_failure: std::sync::Mutex<Option<String>>,
}

struct Scripts {
    acquire: Script,
    renew: Script,
    write_snapshot: Script,
    register_standby: Script,
    free_standbys: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host:port[/db]`), keys
    /// under `namespace`. Connects lazily: a Redis that is down now is not an error here
    /// (an owner's first acquire says so; a standby waits for it). `me` goes into the
    /// directory entry of every match this process acquires.
    pub fn connect(url: &str, namespace: &str, me: Me) -> Result<Self, StoreError> {
        if namespace.is_empty() || namespace.contains(char::is_whitespace) {
            return Err(StoreError::Unavailable(format!(
                "--store-namespace {namespace:?}: give a non-empty name without spaces"
            )));
        }
        let address = redacted(url);
        let client = ::redis::Client::open(url).map_err(|e| {
            StoreError::Unavailable(format!("cannot use the Redis address {address}: {e}"))
        })?;
        let (runtime, stop) = spawn_runtime()?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(SNAPSHOT_TIMEOUT))
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500))
            .set_number_of_retries(2);
        let connection = {
            let _inside = runtime.enter();
            ConnectionManager::new_lazy_with_config(client, config).map_err(|e| {
                StoreError::Unavailable(format!("cannot set up the connection to {address}: {e}"))
            })?
        };
        Ok(Self {
            runtime,
            _stop: stop,
            connection,
            namespace: namespace.to_owned(),
            address,
            me,
            fenced: AtomicU64::new(0),
            last_failure: std::sync::Mutex::new(None),
            scripts: Scripts {
                acquire: Script::new(ACQUIRE),
                renew: Script::new(RENEW),
                write_snapshot: Script::new(WRITE_SNAPSHOT),
                register_standby: Script::new(REGISTER_STANDBY),
                free_standbys: Script::new(FREE_STANDBYS),
            },
        })
    }

    /// Whether Redis answers a PING within [`CALL_TIMEOUT`].
    pub fn ping(&self) -> Result<(), StoreError> {
        let mut connection = self.connection.clone();
        self.call(CALL_TIMEOUT, async move {
            ::redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await
        })
        .map(|_| ())
    }

    /// A match's key `<ns>:match:<id>:<what>`.
    fn key(&self, match_id: &str, what: &str) -> String {
        format!("{}:match:{match_id}:{what}", self.namespace)
    }

    /// Runs one Redis exchange on the store's runtime and waits at most `timeout`.
    fn call<T: Send + 'static>(
        &self,
        timeout: Duration,
        exchange: impl Future<Output = ::redis::RedisResult<T>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let answer = tokio::time::timeout(timeout, exchange).await;
            let _ = tx.send(answer);
        });
        let address = &self.address;
        let answer = match rx.recv_timeout(timeout + Duration::from_millis(100)) {
            Ok(Ok(Ok(value))) => Ok(value),
            Ok(Ok(Err(error))) => Err(format!("Redis {address}: {error}")),
            Ok(Err(_)) | Err(_) => {
                Err(format!("Redis {address} did not answer within {timeout:?}"))
            }
        };
        if let Ok(mut last) = self.last_failure.lock() {
            *last = answer.as_ref().err().cloned();
        }
        answer.map_err(StoreError::Unavailable)
    }

    fn script(
        &self,
        script: &Script,
        keys: &[String],
        args: Vec<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        // The invocation borrows its script, and the exchange runs on the store's thread:
        // it is built there, from owned copies.
        let (script, keys) = (script.clone(), keys.to_vec());
        let mut connection = self.connection.clone();
        self.call(timeout, async move {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation
                .invoke_async::<Vec<Vec<u8>>>(&mut connection)
                .await
        })
    }

    /// A refusal from a script's `{"fenced", current epoch, last JSON}` answer.
    fn fenced(&self, answer: &[Vec<u8>], ours: u64) -> StoreError {
        self.fenced.fetch_add(1, Ordering::Relaxed);
        let held = answer
            .get(1)
            .and_then(|e| std::str::from_utf8(e).ok()?.parse().ok())
            .unwrap_or(0);
        let owner = answer
            .get(2)
            .and_then(|last| serde_json::from_slice::<Lease>(last).ok())
            .map_or_else(|| "another process".to_owned(), |l| l.owner);
        StoreError::Fenced { held, owner, ours }
    }

    fn directory_entry(&self, match_id: &str, lease: &Lease, released: bool) -> Vec<u8> {
        json(&DirectoryEntry {
            match_id: match_id.to_owned(),
            owner: lease.owner.clone(),
            epoch: lease.epoch,
            udp: self.me.udp,
            admin: self.me.admin.clone(),
            released,
        })
    }

    fn match_keys(&self, match_id: &str) -> Vec<String> {
        vec![
            self.key(match_id, "epoch"),
            self.key(match_id, "lease"),
            self.key(match_id, "last"),
            format!("{}:directory", self.namespace),
            self.key(match_id, "fenced"),
        ]
    }

    /// Renews our lease, or releases it (with `lease.tick` as the final tick), through
    /// the [`RENEW`] script.
    fn rewrite_lease(
        &self,
        match_id: &str,
        lease: &Lease,
        release: bool,
    ) -> Result<(), StoreError> {
        let record = Lease {
            expires_unix_ms: if release { 0 } else { lease.expires_unix_ms },
            released: release,
            ..lease.clone()
        };
        let answer = self.script(
            &self.scripts.renew,
            &self.match_keys(match_id),
            vec![
                text(lease.epoch),
                json(&record),
                ttl_ms(lease),
                text(u8::from(release)),
                text(&lease.owner),
                text(match_id),
                self.directory_entry(match_id, lease, release),
            ],
            CALL_TIMEOUT,
        )?;
        match status(&answer) {
            b"ok" => Ok(()),
            b"reseeded" => {
                tracing::warn!(
                    match_id,
                    epoch = lease.epoch,
                    "Redis had no record of the match (restarted without persistence?): recorded it again at our epoch; its snapshots are gone until the next one is written"
                );
                Ok(())
            }
            b"nolease" => Err(StoreError::NoLease { ours: lease.epoch }),
            b"fenced" => Err(self.fenced(&answer, lease.epoch)),
            _ => Err(unexpected(
                if release { "release" } else { "renewal" },
                &answer,
            )),
        }
    }

    fn standby_keys(&self) -> Vec<String> {
        vec![
            format!("{}:standbys", self.namespace),
            format!("{}:standby-entries", self.namespace),
        ]
    }
}

/// The lease's time to live: until its expiry on our clock (at least 1 ms). Redis counts
/// it from when it runs the script, which is after we computed it: the lease never ends
/// before the owner's own deadline.
fn ttl_ms(lease: &Lease) -> Vec<u8> {
    let now = crate::net::wall_ms();
    lease
        .expires_unix_ms
        .saturating_sub(now)
        .max(1)
        .to_string()
        .into_bytes()
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    // Serializing our own plain structs cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

fn text(value: impl ToString) -> Vec<u8> {
    value.to_string().into_bytes()
}

fn status(answer: &[Vec<u8>]) -> &[u8] {
    answer.first().map_or(&b""[..], Vec::as_slice)
}

fn unexpected(what: &str, answer: &[Vec<u8>]) -> StoreError {
    StoreError::Corrupt(
        what.to_owned(),
        format!(
            "unexpected answer {:?}",
            String::from_utf8_lossy(status(answer))
        ),
    )
}

/// Snapshot names sort by (epoch, tick).
fn snapshot_name(epoch: u64, tick: u64) -> String {
    format!("{epoch:020}-{tick:020}")
}

fn parse_snapshot_name(name: &str) -> Option<(u64, u64)> {
    let (epoch, tick) = name.split_once('-')?;
    Some((epoch.parse().ok()?, tick.parse().ok()?))
}

impl SnapshotStore for RedisStore {
    fn write_snapshot(
        &self,
        match_id: &str,
        epoch: u64,
        tick: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        super::check_size(tick, bytes)?;
        let keys = [
            self.key(match_id, "epoch"),
            self.key(match_id, "snapshots"),
            self.key(match_id, "fenced"),
        ];
        let answer = self.script(
            &self.scripts.write_snapshot,
            &keys,
            vec![
                text(epoch),
                text(snapshot_name(epoch, tick)),
                bytes.to_vec(),
                text(KEEP_SNAPSHOTS),
                text(self.key(match_id, "snapshot:")),
            ],
            SNAPSHOT_TIMEOUT,
        )?;
        match status(&answer) {
            b"ok" => Ok(()),
            b"fenced" => Err(self.fenced(&answer, epoch)),
            _ => Err(unexpected("snapshot write", &answer)),
        }
    }

    fn snapshots_newest_first(&self, match_id: &str) -> Result<Vec<StoredSnapshot>, StoreError> {
        let index = self.key(match_id, "snapshots");
        let prefix = self.key(match_id, "snapshot:");
        let mut connection = self.connection.clone();
        let listed: Vec<(String, Option<Vec<u8>>)> = self.call(SNAPSHOT_TIMEOUT, async move {
            let names: Vec<String> = connection.zrevrange(&index, 0, -1).await?;
            let mut found = Vec::with_capacity(names.len());
            for name in names {
                let size: usize = connection.strlen(format!("{prefix}{name}")).await?;
                let bytes = if size > MAX_SNAPSHOT_BYTES {
                    Some(Vec::new())
                } else {
                    connection.get(format!("{prefix}{name}")).await?
                };
                found.push((name, bytes));
            }
            Ok(found)
        })?;
        Ok(listed
            .into_iter()
            .filter_map(|(name, bytes)| {
                let (epoch, tick) = parse_snapshot_name(&name)?;
                let bytes = match bytes {
                    None => Err("pruned while it was being read".to_owned()),
                    Some(b) if b.is_empty() => {
                        Err(format!("empty, or more than {MAX_SNAPSHOT_BYTES} bytes"))
                    }
                    Some(b) => Ok(b),
                };
                Some(StoredSnapshot {
                    name,
                    epoch,
                    tick,
                    bytes,
                })
            })
            .collect())
    }

    fn newest_snapshot_id(&self, match_id: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let index = self.key(match_id, "snapshots");
        let mut connection = self.connection.clone();
        let newest: Vec<String> = self.call(CALL_TIMEOUT, async move {
            connection.zrevrange(&index, 0, 0).await
        })?;
        Ok(newest.first().and_then(|n| parse_snapshot_name(n)))
    }

    fn lease(&self, match_id: &str) -> Result<Option<Lease>, StoreError> {
        let (live, last) = (self.key(match_id, "lease"), self.key(match_id, "last"));
        let mut connection = self.connection.clone();
        let (live, pttl, last): (Option<Vec<u8>>, i64, Option<Vec<u8>>) =
            self.call(CALL_TIMEOUT, async move {
                ::redis::pipe()
                    .get(&live)
                    .pttl(&live)
                    .get(&last)
                    .query_async(&mut connection)
                    .await
            })?;
        let parse = |bytes: &[u8]| {
            serde_json::from_slice::<Lease>(bytes)
                .map_err(|e| StoreError::Corrupt(format!("lease of {match_id:?}"), e.to_string()))
        };
        match (live, last) {
            (Some(live), _) if pttl > 0 => {
                let mut lease = parse(&live)?;
                // Redis keeps the expiry; say it on our clock for the caller's comparisons.
                lease.expires_unix_ms = crate::net::wall_ms() + pttl as u64;
                Ok(Some(lease))
            }
            (_, Some(last)) => {
                let mut lease = parse(&last)?;
                lease.expires_unix_ms = 0;
                Ok(Some(lease))
            }
            (_, None) => Ok(None),
        }
    }

    fn acquire(
        &self,
        match_id: &str,
        lease: &Lease,
        _now_unix_ms: u64,
        handoff: bool,
    ) -> Result<(), StoreError> {
        let record = Lease {
            released: false,
            ..lease.clone()
        };
        let answer = self.script(
            &self.scripts.acquire,
            &self.match_keys(match_id),
            vec![
                text(lease.epoch),
                json(&record),
                ttl_ms(lease),
                text(if handoff { 1 } else { 0 }),
                text(match_id),
                self.directory_entry(match_id, lease, false),
            ],
            CALL_TIMEOUT,
        )?;
        match status(&answer) {
            b"ok" => Ok(()),
            b"fenced" => Err(self.fenced(&answer, lease.epoch)),
            b"nolease" => Err(StoreError::NoLease { ours: lease.epoch }),
            b"held" => {
                let held = answer
                    .get(1)
                    .and_then(|l| serde_json::from_slice::<Lease>(l).ok());
                let remaining_ms = answer
                    .get(2)
                    .and_then(|t| std::str::from_utf8(t).ok()?.parse::<i64>().ok())
                    .unwrap_or(0)
                    .max(0) as u64;
                Err(StoreError::Held {
                    owner: held
                        .as_ref()
                        .map_or_else(|| "another process".into(), |l| l.owner.clone()),
                    epoch: held.map_or(0, |l| l.epoch),
                    remaining_ms,
                })
            }
            _ => Err(unexpected("acquire", &answer)),
        }
    }

    fn renew(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError> {
        self.rewrite_lease(match_id, lease, false)
    }

    fn release(&self, match_id: &str, lease: &Lease) -> Result<(), StoreError> {
        self.rewrite_lease(match_id, lease, true)
    }

    fn fenced_count(&self) -> u64 {
        self.fenced.load(Ordering::Relaxed)
    }

    fn directory(&self, match_id: &str) -> Result<Option<DirectoryEntry>, StoreError> {
        let key = format!("{}:directory", self.namespace);
        let field = match_id.to_owned();
        let mut connection = self.connection.clone();
        let entry: Option<Vec<u8>> =
            self.call(
                CALL_TIMEOUT,
                async move { connection.hget(&key, &field).await },
            )?;
        entry
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    StoreError::Corrupt(format!("directory entry of {match_id:?}"), e.to_string())
                })
            })
            .transpose()
    }

    fn matches(&self) -> Result<Vec<DirectoryEntry>, StoreError> {
        let key = format!("{}:directory", self.namespace);
        let mut connection = self.connection.clone();
        let entries: Vec<Vec<u8>> =
            self.call(CALL_TIMEOUT, async move { connection.hvals(&key).await })?;
        // An entry this build cannot read is not a match it can take over.
        Ok(entries
            .iter()
            .filter_map(|e| serde_json::from_slice(e).ok())
            .collect())
    }

    fn register_standby(&self, standby: &StandbyEntry) -> Result<(), StoreError> {
        self.script(
            &self.scripts.register_standby,
            &self.standby_keys(),
            vec![text(&standby.instance), json(standby), text(STANDBY_TTL_MS)],
            CALL_TIMEOUT,
        )
        .map(|_| ())
    }

    fn remove_standby(&self, instance: &str) -> Result<(), StoreError> {
        let [index, entries] = [
            format!("{}:standbys", self.namespace),
            format!("{}:standby-entries", self.namespace),
        ];
        let instance = instance.to_owned();
        let mut connection = self.connection.clone();
        self.call(CALL_TIMEOUT, async move {
            ::redis::pipe()
                .zrem(&index, &instance)
                .hdel(&entries, &instance)
                .query_async::<()>(&mut connection)
                .await
        })
    }

    fn free_standbys(&self) -> Result<Vec<StandbyEntry>, StoreError> {
        let entries = self.script(
            &self.scripts.free_standbys,
            &self.standby_keys(),
            Vec::new(),
            CALL_TIMEOUT,
        )?;
        // An entry this build cannot read is not a standby it can hand a match to.
        Ok(entries
            .iter()
            .filter_map(|e| serde_json::from_slice(e).ok())
            .collect())
    }

    fn unavailable(&self) -> Option<String> {
        self.last_failure.lock().ok().and_then(|l| l.clone())
    }

    fn info(&self) -> StoreInfo {
        StoreInfo {
            kind: "redis",
            address: self.address.clone(),
        }
    }
}

/// The store's runtime, on a thread of its own until the returned sender is dropped.
fn spawn_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), StoreError>
{
    let (handle_tx, handle_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("redis-store".into())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => {
                    let _ = handle_tx.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async {
                        let _ = stop_rx.await;
                    });
                }
                Err(error) => {
                    let _ = handle_tx.send(Err(error));
                }
            }
        })
        .map_err(|e| StoreError::Unavailable(format!("cannot start the Redis thread: {e}")))?;
    match handle_rx.recv() {
        Ok(Ok(handle)) => Ok((handle, stop_tx)),
        Ok(Err(error)) => Err(StoreError::Unavailable(format!(
            "cannot start the Redis runtime: {error}"
        ))),
        Err(_) => Err(StoreError::Unavailable(
            "the Redis thread ended at start".into(),
        )),
    }
}

/// `url` without its password (`redis://user:***@host:port/db`), for logs and `/status`.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((credentials, host)) => {
            let user = credentials.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// Checks the part of a `redis://` URL after the scheme: `[credentials@]host:port[/db]`.
pub fn parse_address(rest: &str) -> Result<(), String> {
    let host_part = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let (host_port, db) = match host_part.split_once('/') {
        Some((host_port, db)) => (host_port, Some(db)),
        None => (host_part, None),
    };
    let Some((host, port)) = host_port.rsplit_once(':') else {
        return Err("expected redis://HOST:PORT[/DB] (the port is required)".into());
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    port.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("port {port:?} is not 1-65535"))?;
    if let Some(db) = db.filter(|d| !d.is_empty()) {
        db.parse::<u32>()
            .map_err(|_| format!("database {db:?} is not a number"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_the_url() {
        assert_eq!(
            redacted("redis://:hunter2@10.0.0.5:6379/2"),
            "redis://:***@10.0.0.5:6379/2"
        );
        assert_eq!(
            redacted("redis://app:hunter2@redis:6379"),
            "redis://app:***@redis:6379"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn store_addresses_are_checked() {
        use crate::store::StoreSpec;
        assert_eq!("file".parse::<StoreSpec>(), Ok(StoreSpec::File));
        assert!(matches!(
            "redis://127.0.0.1:6379/0".parse::<StoreSpec>(),
            Ok(StoreSpec::Redis(_))
        ));
        for bad in [
            "redis://127.0.0.1",
            "redis://:6379",
            "redis://h:0",
            "redis://h:99999",
            "redis://h:6379/x",
            "rediss://h:6379",
            "postgres://h:5432",
        ] {
            assert!(bad.parse::<StoreSpec>().is_err(), "{bad} accepted");
        }
        let error = "redis://u:secret@h".parse::<StoreSpec>().unwrap_err();
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn snapshot_names_sort_as_epoch_then_tick() {
        let mut names = [
            snapshot_name(2, 5),
            snapshot_name(10, 1),
            snapshot_name(2, 40),
        ];
        names.sort();
        assert_eq!(
            names
                .iter()
                .map(|n| parse_snapshot_name(n))
                .collect::<Vec<_>>(),
            vec![Some((2, 5)), Some((2, 40)), Some((10, 1))]
        );
    }
}
