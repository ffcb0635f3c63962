//! Starting the real binaries on loopback, with ports the OS picks, and stopping them by
//! process id.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

/// A key file every loopback test shares (written once per test process).
pub const TEST_KEY_HEX: &str = "6a6b6c6d6e6f707172737475767778797a7b7c7d7e7f80818283848586878889";

/// The path of a workspace binary, built by `cargo test --workspace` next to the tests
/// (or next to `arena-soak`).
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> or target/<profile>/<binary> -> target/<profile>/<name>
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// The path of a workspace example (`cargo test --workspace` builds examples too), such as
/// `tag-server`.
pub fn example_path(name: &str) -> PathBuf {
    let path = bin_path("examples").join(name);
    assert!(
        path.exists(),
        "{} is missing: run the tests with `cargo test --workspace`, which builds it",
        path.display()
    );
    path
}

/// A fresh, empty directory under the system temp dir, removed with everything in it when
/// the returned guard is dropped (keep it alive for as long as a process uses it).
pub fn temp_dir(label: &str) -> TempDir {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "arena-test-{}-{}-{label}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    TempDir(dir)
}

/// A directory [`temp_dir`] made; it is removed when this is dropped. Reads as its path.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes [`TEST_KEY_HEX`] into `dir` and returns the file's path.
pub fn write_key_file(dir: &Path) -> PathBuf {
    let path = dir.join("test.key");
    std::fs::write(&path, TEST_KEY_HEX).unwrap_or_else(|e| panic!("cannot write key: {e}"));
    path
}

/// A running `arena-server`, stopped (by its pid) when dropped.
pub struct ServerProcess {
    child: Child,
    /// Its UDP address.
    pub udp: SocketAddr,
    /// Its admin API address.
    pub admin: SocketAddr,
    /// Every line it logged so far arrives here.
    pub log: mpsc::Receiver<String>,
}

impl ServerProcess {
    /// Starts the server on OS-chosen loopback ports and waits (at most 20 s) until it
    /// logs that it is serving.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> Self {
        Self::start_with(data_dir, extra_args, &[])
    }

    /// Like [`ServerProcess::start`], with environment variables (such as the fault
    /// hooks' `ARENA_TEST_FAULT_DIR`).
    pub fn start_with(data_dir: &Path, extra_args: &[&str], env: &[(&str, &Path)]) -> Self {
        Self::start_program(&bin_path("arena-server"), data_dir, extra_args, env)
    }

    /// Like [`ServerProcess::start_with`], for another server program built on Arena's
    /// runner (an example such as `tag-server`: see [`example_path`]).
    pub fn start_program(
        program: &Path,
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let key = data_dir.join("test.key");
        if !key.exists() {
            write_key_file(data_dir);
        }
        let mut args: Vec<String> = vec!["--key-file".into(), key.display().to_string()];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        Self::spawn_program(program, data_dir, &args, env).wait_serving()
    }

    /// Starts the server without waiting for it (see [`Starting::wait_serving`]), and
    /// without a `--key-file` unless `args` has one.
    pub fn spawn(data_dir: &Path, args: &[String], env: &[(&str, &Path)]) -> Starting {
        Self::spawn_program(&bin_path("arena-server"), data_dir, args, env)
    }

    /// [`ServerProcess::spawn`] of another server program.
    pub fn spawn_program(
        program: &Path,
        data_dir: &Path,
        args: &[String],
        env: &[(&str, &Path)],
    ) -> Starting {
        let mut command = Command::new(program);
        // OS-chosen ports, unless the caller chose a UDP address.
        if !args.iter().any(|a| a == "--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(["--admin", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (name, value) in env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        Starting { child }
    }
}

/// An `arena-server` started but not yet serving.
pub struct Starting {
    child: Child,
}

impl Starting {
    /// Waits (at most 20 s) until the server logs that it is serving.
    pub fn wait_serving(self) -> ServerProcess {
        let mut child = self.child;
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let mut udp = None;
        let mut admin = None;
        while udp.is_none() || admin.is_none() {
            let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) else {
                let _ = child.kill();
                panic!("arena-server did not report serving within 20 s");
            };
            if line.contains("serving") {
                udp = field(&line, "udp");
                admin = field(&line, "admin");
            }
        }
        ServerProcess {
            child,
            udp: udp.unwrap_or_else(|| unreachable!()),
            admin: admin.unwrap_or_else(|| unreachable!()),
            log: rx,
        }
    }
}

impl ServerProcess {
    /// Everything it logged since the last call (for failure messages).
    pub fn logs(&self) -> String {
        self.log.try_iter().collect::<Vec<_>>().join("\n")
    }

    /// Waits (at most `limit`) for a log line containing `needle` and returns it; lines
    /// before it are consumed. Panics, with what it logged, if none comes.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> String {
        let mut seen = Vec::new();
        let mut waited = Duration::ZERO;
        let step = Duration::from_millis(100);
        while waited < limit {
            match self.log.recv_timeout(step) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => waited += step,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        panic!(
            "no log line with {needle:?} within {limit:?}; it logged:\n{}",
            seen.join("\n")
        )
    }

    /// The admin API's base URL.
    pub fn admin_url(&self) -> String {
        format!("http://{}", self.admin)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits (at most 10 s) for the process to exit.
    pub fn terminate(mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        wait_bounded(&mut self.child, Duration::from_secs(10))
    }

    /// Sends SIGKILL and reaps the process.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (at most `limit`) for the process to exit on its own.
    pub fn wait_exit(mut self, limit: Duration) -> ExitStatus {
        wait_bounded(&mut self.child, limit)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Sends a signal to a process by id with `kill(1)`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Waits for `child` at most `limit`, then kills it; returns its exit status.
pub fn wait_bounded(child: &mut Child, limit: Duration) -> ExitStatus {
    let step = Duration::from_millis(20);
    let mut waited = Duration::ZERO;
    while waited < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(step);
        waited += step;
    }
    let _ = child.kill();
    child
        .wait()
        .unwrap_or_else(|e| panic!("cannot reap a child: {e}"))
}

/// The text of `name=value` in a log line (quotes removed), if present.
pub fn log_field(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

/// The value of `name=value` in a log line.
fn field(line: &str, name: &str) -> Option<SocketAddr> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()?.parse().ok()
}

/// Runs `arena-bots` to the end (at most `limit`) and returns its exit status and stdout.
pub fn run_bots(args: &[&str], limit: Duration) -> (ExitStatus, String, String) {
    spawn_bots(args).wait(limit)
}

/// `arena-bots` running in the background.
pub struct BotsRun {
    child: Child,
    out: std::thread::JoinHandle<String>,
    err: std::thread::JoinHandle<String>,
}

/// Starts `arena-bots` with `args`.
pub fn spawn_bots(args: &[&str]) -> BotsRun {
    spawn_bots_program(&bin_path("arena-bots"), args)
}

/// Starts another bots program built on Arena's bot runner (such as `tag-bots`).
pub fn spawn_bots_program(program: &Path, args: &[&str]) -> BotsRun {
    spawn_bots_program_with(program, args, &[])
}

/// Starts `arena-bots` with `args` and environment variables (such as
/// `ARENA_ADMIN_TOKEN`).
pub fn spawn_bots_with_env(args: &[&str], env: &[(&str, &str)]) -> BotsRun {
    spawn_bots_program_with(&bin_path("arena-bots"), args, env)
}

fn spawn_bots_program_with(program: &Path, args: &[&str], env: &[(&str, &str)]) -> BotsRun {
    let mut child = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    BotsRun {
        child,
        out: std::thread::spawn(move || read_all(stdout)),
        err: std::thread::spawn(move || read_all(stderr)),
    }
}

impl BotsRun {
    /// The process id (to signal it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the bots to finish (at most `limit`): exit status, stdout, stderr.
    pub fn wait(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let status = wait_bounded(&mut self.child, limit);
        (
            status,
            self.out.join().unwrap_or_default(),
            self.err.join().unwrap_or_default(),
        )
    }
}

fn read_all(pipe: Option<impl std::io::Read>) -> String {
    let mut text = String::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_string(&mut text);
    }
    text
}

/// `GET url` on a loopback admin API; panics (a test failure) unless it answers 200 JSON.
pub fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = http(url, "GET", None);
    assert_eq!(status, 200, "GET {url}");
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// `POST url` with a JSON body; returns the status and the JSON answer (Null if none).
pub fn post_json(url: &str, body: &str) -> (u16, serde_json::Value) {
    let (status, answer) = http(url, "POST", Some(body.to_owned()));
    (
        status,
        serde_json::from_slice(&answer).unwrap_or(serde_json::Value::Null),
    )
}

/// One request through the client library's HTTP client, on a runtime of its own.
pub fn http(url: &str, method: &str, body: Option<String>) -> (u16, Vec<u8>) {
    http_with(url, method, body, None)
}

/// Like [`http`], with an `Authorization: Bearer` token.
pub fn http_with(
    url: &str,
    method: &str,
    body: Option<String>,
    bearer: Option<&str>,
) -> (u16, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"));
    runtime
        .block_on(arena_client::http::request_with(method, url, body, bearer))
        .map(|(status, body)| (status, body.to_vec()))
        .unwrap_or_else(|e| panic!("{method} {url}: {e:#}"))
}

/// `POST url` with a binary body (a sealed snapshot); returns the status and the body.
pub fn post_bytes(url: &str, body: Vec<u8>) -> (u16, Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"));
    runtime
        .block_on(arena_client::http::request_bytes(
            "POST",
            url,
            Some((body.into(), "application/octet-stream")),
            None,
        ))
        .map(|(status, body)| (status, body.to_vec()))
        .unwrap_or_else(|e| panic!("POST {url}: {e:#}"))
}

/// Loopback UDP addresses free a moment ago (the OS chose them), for processes that
/// must know each other's addresses before they start (a fleet of standbys listing one
/// another as peers).
pub fn free_udp_addresses(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<std::net::UdpSocket> = (0..count)
        .map(|_| {
            std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap_or_else(|e| panic!("cannot bind a loopback UDP socket: {e}"))
        })
        .collect();
    sockets
        .iter()
        .map(|s| {
            s.local_addr()
                .unwrap_or_else(|e| panic!("a bound socket has no address: {e}"))
        })
        .collect()
}

/// `GET /status` of `server`.
pub fn status(server: &ServerProcess) -> serde_json::Value {
    get_json(&format!("{}/status", server.admin_url()))
}

/// Polls `/status` (every 50 ms, at most `limit`) until `done` holds; returns that
/// status. Panics with the last status and the server's log otherwise.
pub fn wait_status_for(
    server: &ServerProcess,
    what: &str,
    limit: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let step = Duration::from_millis(50);
    let polls = (limit.as_millis() / step.as_millis()).max(1);
    for _ in 0..polls {
        let status = status(server);
        if done(&status) {
            return status;
        }
        std::thread::sleep(step);
    }
    panic!(
        "{what}: not reached within {limit:?}; last status {}\nits log:\n{}",
        status(server),
        server.logs()
    );
}

/// [`wait_status_for`] with 30 s.
pub fn wait_status(
    server: &ServerProcess,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    wait_status_for(server, what, Duration::from_secs(30), done)
}

/// `count` bots against `server` (tokens from its admin API, which name its address) for
/// `seconds`, plus `extra` arguments.
pub fn bots_against(server: &ServerProcess, count: u32, seconds: f64, extra: &[&str]) -> BotsRun {
    bots_program_against(&bin_path("arena-bots"), server, count, seconds, extra)
}

/// [`bots_against`] with another bots program (such as `tag-bots`).
pub fn bots_program_against(
    program: &Path,
    server: &ServerProcess,
    count: u32,
    seconds: f64,
    extra: &[&str],
) -> BotsRun {
    let admin = server.admin_url();
    let count = count.to_string();
    let seconds = seconds.to_string();
    let mut args = vec!["--admin", &admin, "--count", &count, "--duration", &seconds];
    args.extend_from_slice(extra);
    spawn_bots_program(program, &args)
}

/// Waits (at most 90 s) for the bots, asserts they exited 0, and returns their report.
pub fn bots_report(run: BotsRun) -> serde_json::Value {
    let (status, stdout, stderr) = run.wait(Duration::from_secs(90));
    assert!(
        status.success(),
        "arena-bots failed: {status:?}\n{stderr}\n{stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}\n{stderr}"))
}

/// Every input the bots sent is applied, rolled back, given up or still unacknowledged, and the sum
/// says so.
pub fn assert_accounted(report: &serde_json::Value) {
    let n = |k: &str| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("{k} missing: {report}"))
    };
    assert_eq!(report["inputs_unaccounted"], 0, "{report}");
    assert!(n("inputs_sent") > 0, "{report}");
    assert_eq!(
        n("inputs_lost"),
        n("inputs_sent") - n("inputs_applied"),
        "{report}"
    );
    assert_eq!(
        n("inputs_lost"),
        n("inputs_rolled_back") + n("inputs_given_up") + n("inputs_unacknowledged"),
        "{report}"
    );
}

/// Serializes the tests of one test binary that each start servers and bots (they share
/// two cores): hold the guard for the test's length. A test that panicked does not
/// poison it for the next.
pub fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}
