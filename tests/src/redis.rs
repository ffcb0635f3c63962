//! Redis for tests: a `redis-server` child on a loopback port the OS picked, without
//! persistence, stopped by its pid; or the shared server `.ci/run` starts
//! (`ARENA_TEST_REDIS`), with a namespace per test.
//!
//! There is no event that says "redis-server is listening", so [`RedisServer::start`]
//! polls a connect and a `PING` every 20 ms, for at most 10 s.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The environment variable naming a shared Redis (`redis://127.0.0.1:PORT`) for tests.
pub const SHARED_REDIS_VAR: &str = "ARENA_TEST_REDIS";
/// The environment variable naming the `redis-server` binary (else it is found on `PATH`).
pub const SERVER_BINARY_VAR: &str = "ARENA_TEST_REDIS_SERVER";
/// How long a start or restart may take before the test fails.
const START_LIMIT: Duration = Duration::from_secs(10);
/// How often a starting server is asked for `PING`.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Bound on one connect or `PING` answer.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Fresh ports tried when the one chosen was taken before the server bound it.
const PORT_ATTEMPTS: usize = 3;

/// A `redis-server` child process on `127.0.0.1`, killed (by its pid) when dropped.
pub struct RedisServer {
    /// The running (or last) process.
    child: Child,
    /// Its TCP port, kept across [`RedisServer::restart`].
    port: u16,
}

impl RedisServer {
    /// Starts `redis-server` on a free loopback port and waits (at most 10 s) until it
    /// answers `PING`. Panics, saying how to install it, if the binary is missing.
    pub fn start() -> Self {
        let mut last_failure = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_tcp_port();
            let mut child = spawn_server(port);
            match wait_ready(&mut child, port) {
                Ok(()) => return Self { child, port },
                Err(failure) => {
                    kill_and_reap(&mut child);
                    last_failure = failure;
                }
            }
        }
        panic!("redis-server did not start after {PORT_ATTEMPTS} attempts: {last_failure}");
    }

    /// Kills the server with SIGKILL (by its pid) and reaps it: the data is gone, as in a
    /// crash.
    pub fn kill(&mut self) {
        kill_and_reap(&mut self.child);
    }

    /// Starts a new server on the same port (killing the old one first if it still
    /// runs), and waits (at most 10 s) until it answers `PING`.
    pub fn restart(&mut self) {
        kill_and_reap(&mut self.child);
        self.child = spawn_server(self.port);
        if let Err(failure) = wait_ready(&mut self.child, self.port) {
            kill_and_reap(&mut self.child);
            panic!(
                "redis-server did not restart on port {}: {failure}",
                self.port
            );
        }
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its TCP port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id of the running (or, after [`RedisServer::kill`], the last) server.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it answers `PING` now (one try, bounded by 500 ms).
    pub fn answers_ping(&self) -> bool {
        ping(self.port).is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill_and_reap(&mut self.child);
    }
}

/// A Redis for one test: where it is, and the key namespace the test's stores use.
pub struct TestRedis {
    /// `redis://host:port`.
    pub url: String,
    /// The key prefix for this test: unique on a shared server, `arena` on its own.
    pub namespace: String,
    /// The server this test started, if it did not use the shared one; stopped on drop.
    _own: Option<RedisServer>,
}

impl TestRedis {
    /// A synchronous connection (panics, a test failure, if there is none).
    pub fn connection(&self) -> redis::Connection {
        let client = redis::Client::open(self.url.as_str())
            .unwrap_or_else(|e| panic!("{} is not a Redis URL: {e}", self.url));
        client
            .get_connection_with_timeout(START_LIMIT)
            .unwrap_or_else(|e| panic!("cannot connect to Redis at {}: {e}", self.url))
    }

    /// The server this test started (to kill or restart it); `None` on the shared one.
    pub fn own_server(&mut self) -> Option<&mut RedisServer> {
        self._own.as_mut()
    }
}

/// A Redis for the test `label`: the shared one in `ARENA_TEST_REDIS` (set by `.ci/run`)
/// with a namespace of its own (`test-{label}-{pid}-{n}`), else a `redis-server` of its
/// own (namespace `arena`).
pub fn test_redis(label: &str) -> TestRedis {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    match std::env::var(SHARED_REDIS_VAR) {
        Ok(url) if !url.trim().is_empty() => {
            let url = url.trim().to_owned();
            let namespace = format!(
                "test-{label}-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let redis = TestRedis {
                url,
                namespace,
                _own: None,
            };
            // Fail here, clearly, rather than deep in a store.
            let mut connection = redis.connection();
            let answer: String = redis::cmd("PING")
                .query(&mut connection)
                .unwrap_or_else(|e| {
                    panic!(
                        "the shared Redis {SHARED_REDIS_VAR}={} does not answer PING: {e}",
                        redis.url
                    )
                });
            assert_eq!(answer, "PONG", "the shared Redis at {}", redis.url);
            redis
        }
        _ => {
            let server = RedisServer::start();
            TestRedis {
                url: server.url(),
                namespace: "arena".to_owned(),
                _own: Some(server),
            }
        }
    }
}

/// A Redis of the test's own whatever `ARENA_TEST_REDIS` says: for tests that kill and
/// restart it ([`TestRedis::own_server`]).
pub fn own_redis(label: &str) -> TestRedis {
    let server = RedisServer::start();
    TestRedis {
        url: server.url(),
        namespace: format!("test-{label}"),
        _own: Some(server),
    }
}

/// A loopback TCP port that was free a moment ago (the OS chose it).
fn free_tcp_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a loopback TCP socket: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("a bound socket has no address: {e}"))
        .port()
}

fn spawn_server(port: u16) -> Child {
    let binary = std::env::var_os(SERVER_BINARY_VAR)
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "redis-server".into());
    let spawned = Command::new(&binary)
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .args(["--daemonize", "no"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match spawned {
        Ok(child) => child,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "the Redis tests need redis-server: install it (Debian: `apt-get install \
             redis-server`) or set ARENA_TEST_REDIS_SERVER to its path (.ci/run installs it)"
        ),
        Err(e) => panic!("cannot start {}: {e}", binary.to_string_lossy()),
    }
}

/// Polls `PING` until the server answers, it exits, or [`START_LIMIT`] (counted in poll
/// intervals) passes.
fn wait_ready(child: &mut Child, port: u16) -> Result<(), String> {
    let attempts = (START_LIMIT.as_millis() / POLL_INTERVAL.as_millis()).max(1);
    let mut last = String::from("no attempt");
    for _ in 0..attempts {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "redis-server on port {port} exited ({status}); last PING: {last}"
            ));
        }
        match ping(port) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    Err(format!(
        "redis-server on port {port} did not answer PING within {START_LIMIT:?}; last: {last}"
    ))
}

/// One `PING` over a fresh connection.
fn ping(port: u16) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, PING_TIMEOUT).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(PING_TIMEOUT))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"*1\r\n$4\r\nPING\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer).map_err(|e| e.to_string())?;
    if &answer == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(format!(
            "answered {:?}",
            String::from_utf8_lossy(&answer).trim_end()
        ))
    }
}

/// SIGKILL by pid (if it still runs) and reap.
fn kill_and_reap(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_server_stops_answering_and_a_restarted_one_answers_on_the_same_port() {
        let mut server = RedisServer::start();
        assert!(server.answers_ping(), "a started server answers PING");
        let (port, first_pid) = (server.port(), server.pid());
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));

        server.kill();
        assert!(!server.answers_ping(), "a killed server answers nothing");

        server.restart();
        assert!(server.answers_ping(), "a restarted server answers PING");
        assert_eq!(server.port(), port, "the restart keeps the port");
        assert_ne!(server.pid(), first_pid, "the restart is a new process");
    }

    #[test]
    fn a_test_redis_takes_commands_under_its_namespace() {
        let redis = test_redis("harness");
        let mut connection = redis.connection();
        let key = format!("{}:probe", redis.namespace);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg("1")
            .query(&mut connection)
            .unwrap_or_else(|e| panic!("SET on {}: {e}", redis.url));
        let value: String = redis::cmd("GET")
            .arg(&key)
            .query(&mut connection)
            .unwrap_or_else(|e| panic!("GET on {}: {e}", redis.url));
        assert_eq!(value, "1");
        let () = redis::cmd("DEL")
            .arg(&key)
            .query(&mut connection)
            .map(|_: i64| ())
            .unwrap_or_else(|e| panic!("DEL on {}: {e}", redis.url));
    }
}
