//! A fake Agones SDK sidecar: the REST gateway's lifecycle calls on a loopback port the OS
//! picks, each answered `200 {}` and recorded in order with its arrival time.
//!
//! It speaks just enough HTTP/1.1 for one request per connection (the server's client
//! opens a connection per call): a request line, headers, a `Content-Length` body, and an
//! answer with `Connection: close`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a connection may take to deliver its request before it is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest request head or body read.
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Most header lines read from one request.
const MAX_HEADER_LINES: usize = 100;
/// What `GET /gameserver` answers: the shape of the local sidecar's answer, trimmed.
const GAME_SERVER_JSON: &str = r#"{"object_meta":{"name":"local","namespace":"default"},"status":{"state":"Ready","address":"127.0.0.1","ports":[{"name":"default","port":7777}]}}"#;

/// One request the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The path without its leading slash: `ready`, `health`, `allocate`, `shutdown`,
    /// `gameserver` (or whatever else was asked).
    pub name: String,
    /// `POST` or `GET`.
    pub method: String,
    /// When its request had arrived whole.
    pub at: Instant,
}

/// A fake Agones SDK sidecar on `127.0.0.1`, stopped (its accept thread joined) when
/// dropped.
pub struct FakeSidecar {
    /// Where it listens.
    addr: SocketAddr,
    /// The calls so far, and the event that a call arrived.
    shared: Arc<Shared>,
    /// Tells the accept thread to stop (it is woken by a connection to itself).
    stop: Arc<AtomicBool>,
    /// The accept thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

/// What the accept thread and the test share.
struct Shared {
    /// Every call, in arrival order.
    calls: Mutex<Vec<Call>>,
    /// Notified after each call is recorded.
    arrived: Condvar,
    /// The status the lifecycle calls answer (200 unless a test chose a refusal).
    status: AtomicU16,
}

impl FakeSidecar {
    /// Listens on `127.0.0.1:0` and serves on a thread of its own.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind the fake Agones sidecar: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("the fake sidecar's socket has no address: {e}"));
        let shared = Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            status: AtomicU16::new(200),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let shared = Arc::clone(&shared);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || accept_loop(&listener, &shared, &stop))
        };
        Self {
            addr,
            shared,
            stop,
            thread: Some(thread),
        }
    }

    /// Makes the lifecycle calls answer `status` from now on (a refusing sidecar); they
    /// are still recorded.
    pub fn answer_with(&self, status: u16) {
        self.shared.status.store(status, Ordering::SeqCst);
    }

    /// Its port on `127.0.0.1` (what `AGONES_SDK_HTTP_PORT` would hold).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The names of the calls so far, in arrival order (`ready`, `health`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.lock().iter().map(|c| c.name.clone()).collect()
    }

    /// The calls so far with their methods and arrival times.
    pub fn timed_calls(&self) -> Vec<Call> {
        self.lock().clone()
    }

    /// How many `name` calls arrived so far.
    pub fn count(&self, name: &str) -> usize {
        count_in(&self.lock(), name)
    }

    /// Waits (at most `limit`) until at least `count` calls named `name` have arrived;
    /// false if they did not in time.
    pub fn wait_for(&self, name: &str, count: usize, limit: Duration) -> bool {
        let calls = self.lock();
        let (calls, _) = self
            .shared
            .arrived
            .wait_timeout_while(calls, limit, |calls| count_in(calls, name) < count)
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        count_in(&calls, name) >= count
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Call>> {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for FakeSidecar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; if even that connect fails the thread is not
        // accepting, and joining it would not return: leave it detached.
        if TcpStream::connect_timeout(&self.addr, Duration::from_secs(1)).is_ok()
            && let Some(thread) = self.thread.take()
        {
            let _ = thread.join();
        }
    }
}

fn count_in(calls: &[Call], name: &str) -> usize {
    calls.iter().filter(|c| c.name == name).count()
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        // One thread per connection, so a client that connects and says nothing does not
        // hold up the others; the read timeout bounds it.
        let shared = Arc::clone(shared);
        std::thread::spawn(move || serve(stream, &shared));
    }
}

// The fake stands in for another process: the arrival time it records is the wall clock's,
// as the real sidecar's would be.
#[allow(clippy::disallowed_methods)]
fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let Some((method, path)) = read_request(stream) else {
        return;
    };
    let name = path
        .trim_start_matches('/')
        .split('?')
        .next()
        .unwrap_or_default()
        .to_owned();
    let (status, body) = match (method.as_str(), name.as_str()) {
        ("POST", "ready" | "health" | "allocate" | "shutdown") => {
            (shared.status.load(Ordering::SeqCst), "{}")
        }
        ("GET", "gameserver") => (200, GAME_SERVER_JSON),
        _ => (404, r#"{"error":"Not Found"}"#),
    };
    // Record before answering: once the client has its answer, the call is in the list.
    let mut calls = shared
        .calls
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    calls.push(Call {
        name,
        method,
        at: Instant::now(),
    });
    drop(calls);
    shared.arrived.notify_all();
    let answer = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    let mut write_half = write_half;
    let _ = write_half.write_all(answer.as_bytes());
    let _ = write_half.flush();
}

/// Reads one request: its method and path, after its whole body arrived.
fn read_request(stream: TcpStream) -> Option<(String, String)> {
    let mut reader = BufReader::new(stream.take(MAX_REQUEST_BYTES as u64 * 2));
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut content_length = 0usize;
    for _ in 0..MAX_HEADER_LINES {
        let mut header = String::new();
        if reader.read_line(&mut header).ok()? == 0 {
            return None;
        }
        let header = header.trim_end();
        if header.is_empty() {
            let mut body = vec![0u8; content_length.min(MAX_REQUEST_BYTES)];
            reader.read_exact(&mut body).ok()?;
            return Some((method, path));
        }
        if let Some((name, value)) = header.split_once(':')
            && name.trim().eq_ignore_ascii_case("content-length")
        {
            content_length = value.trim().parse().ok()?;
        }
    }
    None
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}
