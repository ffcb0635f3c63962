//! A client of the Agones SDK sidecar: ready, health, allocate and shutdown, over the
//! sidecar's HTTP gateway.
//!
//! On Agones, every game server pod runs an SDK sidecar on loopback. It serves the SDK as
//! gRPC and, through a gateway, as REST: `POST /ready`, `/health`, `/allocate` and
//! `/shutdown`, each with the JSON body `{}`, on `127.0.0.1:$AGONES_SDK_HTTP_PORT`
//! (default 9358), which Agones sets for the game server's container. See "REST Game
//! Server Client API" in the Agones guides (`site/content/en/docs/Guides/Client
//! SDKs/rest.md` in googleforgames/agones).
//!
//! Why REST and not the `agones` crate (gRPC): that crate compiles its protobuf files in a
//! build script (`tonic-build`), which needs `protoc` installed on every machine that
//! builds the server. A plain `cargo run --release -p arena-server` on a fresh machine
//! would then fail. Four JSON posts over the HTTP client the handoff already uses cost no
//! new dependency.
//!
//! [`keep_healthy`] is the task that pings `/health` every second while the tick loop is
//! alive (a stuck loop stops the pings, and Agones replaces the pod), and self-allocates
//! once the match has players.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// The environment variable Agones sets to the sidecar's HTTP port.
pub const PORT_VAR: &str = "AGONES_SDK_HTTP_PORT";
/// The sidecar's HTTP port when [`PORT_VAR`] is not set.
pub const DEFAULT_PORT: u16 = 9358;
/// Every call (connect, send, read) is bounded by this: the sidecar is on loopback, and a
/// late health ping is as good as a missing one.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How often [`keep_healthy`] pings.
pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Longest part of a refusal's body kept in an [`AgonesError::Refused`].
const MAX_REFUSAL_BODY_CHARS: usize = 512;

/// The Agones SDK sidecar, reached over its HTTP gateway.
#[derive(Debug, Clone)]
pub struct Agones {
    /// `host:port` of the sidecar's HTTP gateway (loopback on Agones).
    addr: String,
}

/// Why a call to the sidecar failed.
#[derive(Debug, thiserror::Error)]
pub enum AgonesError {
    /// No answer: the sidecar is not (yet) listening, hung up, or took longer than
    /// [`CALL_TIMEOUT`]. The text names the sidecar's address and the call.
    #[error("the Agones SDK sidecar is unreachable: {0}")]
    Unreachable(String),
    /// The sidecar answered with a status other than 2xx.
    #[error("the Agones SDK sidecar refused {call}: status {status}, expected 200: {body}")]
    Refused {
        /// The call (`ready`, `health`, `allocate`, `shutdown`).
        call: &'static str,
        /// The HTTP status it answered.
        status: u16,
        /// The start of its answer's body.
        body: String,
    },
}

/// What the health task reads each second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probe {
    /// The tick loop advanced recently: health pings go out only while this holds.
    pub loop_alive: bool,
    /// The match has players: the first time this holds, the server self-allocates.
    pub has_players: bool,
}

impl Agones {
    /// The sidecar at `127.0.0.1:$AGONES_SDK_HTTP_PORT`, or at port [`DEFAULT_PORT`] when
    /// the variable is not set. An error says what the variable held.
    pub fn from_env() -> Result<Self, String> {
        match std::env::var(PORT_VAR) {
            Ok(value) => Self::from_port_setting(Some(&value)),
            Err(std::env::VarError::NotPresent) => Self::from_port_setting(None),
            Err(std::env::VarError::NotUnicode(value)) => Err(format!(
                "{PORT_VAR} is {value:?}, expected a TCP port (1-65535)"
            )),
        }
    }

    /// The sidecar at `addr` (tests, or a sidecar run by hand with `--local`).
    pub fn at(addr: SocketAddr) -> Self {
        Self {
            addr: addr.to_string(),
        }
    }

    /// The sidecar's `host:port`.
    pub fn address(&self) -> &str {
        &self.addr
    }

    /// `POST /ready`: the server listens and can take players; Agones may allocate it.
    pub async fn ready(&self) -> Result<(), AgonesError> {
        self.post("ready").await
    }

    /// `POST /health`: one health ping. Agones marks the server unhealthy when pings stop.
    pub async fn health(&self) -> Result<(), AgonesError> {
        self.post("health").await
    }

    /// `POST /allocate`: marks the server allocated (players are on it), so that a fleet
    /// scale-down does not take it.
    pub async fn allocate(&self) -> Result<(), AgonesError> {
        self.post("allocate").await
    }

    /// `POST /shutdown`: the match is over; Agones deletes the pod.
    pub async fn shutdown(&self) -> Result<(), AgonesError> {
        self.post("shutdown").await
    }

    /// The address players reach this game server at, as Agones gives it (`GET
    /// /gameserver`: `status.address` and the port named `port_name`, or the first one),
    /// once Agones has filled them in (`None` until then: the pod has no node yet). A
    /// DNS name is resolved.
    pub async fn public_address(&self, port_name: &str) -> Result<Option<SocketAddr>, AgonesError> {
        let (status, body) = crate::http::request(
            &self.addr,
            "GET",
            "/gameserver",
            &[],
            Vec::new(),
            Some(CALL_TIMEOUT),
        )
        .await
        .map_err(|error| {
            AgonesError::Unreachable(format!("GET http://{}/gameserver: {error:#}", self.addr))
        })?;
        if !status.is_success() {
            return Err(AgonesError::Refused {
                call: "gameserver",
                status: status.as_u16(),
                body: String::from_utf8_lossy(&body)
                    .chars()
                    .take(MAX_REFUSAL_BODY_CHARS)
                    .collect(),
            });
        }
        let refused = |why: &str| AgonesError::Refused {
            call: "gameserver",
            status: status.as_u16(),
            body: why.to_owned(),
        };
        let game_server: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| refused(&format!("not JSON: {e}")))?;
        let state = &game_server["status"];
        let host = state["address"].as_str().unwrap_or_default();
        let ports = state["ports"].as_array().cloned().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| p["name"] == port_name)
            .or_else(|| ports.first())
            .and_then(|p| p["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let (false, Some(port)) = (host.is_empty(), port) else {
            return Ok(None);
        };
        let mut found = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| refused(&format!("cannot resolve its address {host:?}: {e}")))?;
        Ok(found.next())
    }

    /// [`Agones::public_address`], asked every second for at most a minute (Agones fills
    /// the address in once the pod has a node); why not, after that.
    pub async fn wait_for_public_address(
        &self,
        port_name: &str,
        container_port: u16,
    ) -> Result<SocketAddr, String> {
        const ATTEMPTS: u32 = 60;
        let mut last = String::from("no address yet");
        for _ in 0..ATTEMPTS {
            match self.public_address(port_name).await {
                Ok(Some(address)) => {
                    tracing::info!(%address, container_port, "players reach this server at the address Agones gave it");
                    return Ok(address);
                }
                Ok(None) => last = "the game server has no address yet".into(),
                Err(error) => last = error.to_string(),
            }
            tokio::time::sleep(HEALTH_INTERVAL).await;
        }
        Err(format!(
            "Agones gave no address within {ATTEMPTS} s ({last})"
        ))
    }

    /// [`Agones::from_env`] without reading the environment: `None` when unset.
    fn from_port_setting(value: Option<&str>) -> Result<Self, String> {
        let port = match value {
            None => DEFAULT_PORT,
            Some(value) => match value.trim().parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => {
                    return Err(format!(
                        "{PORT_VAR} is {value:?}, expected a TCP port (1-65535)"
                    ));
                }
            },
        };
        Ok(Self::at(SocketAddr::from((Ipv4Addr::LOCALHOST, port))))
    }

    async fn post(&self, call: &'static str) -> Result<(), AgonesError> {
        let path = format!("/{call}");
        let headers = [("content-type", "application/json")];
        let (status, body) = crate::http::request(
            &self.addr,
            "POST",
            &path,
            &headers,
            b"{}".to_vec(),
            Some(CALL_TIMEOUT),
        )
        .await
        .map_err(|error| {
            AgonesError::Unreachable(format!("POST http://{}{path}: {error:#}", self.addr))
        })?;
        if status.is_success() {
            return Ok(());
        }
        Err(AgonesError::Refused {
            call,
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body)
                .chars()
                .take(MAX_REFUSAL_BODY_CHARS)
                .collect(),
        })
    }
}

/// The whole lifecycle for a process that serves: `Ready` (retried every second until the
/// sidecar hears it: it may start after us), then [`keep_healthy`]. `role` is for the log.
/// Returns when `stop` becomes true.
pub async fn lifecycle(
    sdk: Agones,
    role: &'static str,
    probe: impl Fn() -> Probe + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    for attempt in 1u64.. {
        match sdk.ready().await {
            Ok(()) => {
                tracing::info!(sidecar = %sdk.address(), role, "told Agones: Ready");
                break;
            }
            Err(error) if attempt <= 3 || attempt.is_multiple_of(60) => {
                tracing::error!(%error, attempt, "could not tell Agones: Ready; retrying every second");
            }
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => return,
        }
    }
    keep_healthy(sdk, probe, stop).await;
}

/// Every [`HEALTH_INTERVAL`]: a health ping if `probe().loop_alive` (so a stuck tick loop
/// stops the pings); the first time `probe().has_players` holds, one allocate (retried
/// each second until the sidecar takes it). Returns when `stop` becomes true or its sender
/// is dropped. Failures are logged (the first few, then every 60th) and never end the
/// task: the sidecar may start after the server.
pub async fn keep_healthy(
    sdk: Agones,
    probe: impl Fn() -> Probe + Send + 'static,
    mut stop: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut health = Failures::new("health");
    let mut allocate = Failures::new("allocate");
    let mut allocated = false;
    let mut withholding = false;
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        tokio::select! {
            _ = ticker.tick() => {}
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let now = probe();
        if now.loop_alive {
            if withholding {
                tracing::info!(sidecar = %sdk.address(), "tick loop alive again: Agones health pings resume");
                withholding = false;
            }
            health.record(&sdk, sdk.health().await);
        } else if !withholding {
            tracing::warn!(sidecar = %sdk.address(), "tick loop not advancing: withholding Agones health pings");
            withholding = true;
        }
        if now.has_players && !allocated {
            let outcome = sdk.allocate().await;
            allocated = outcome.is_ok();
            if allocated {
                tracing::info!(sidecar = %sdk.address(), "players arrived: allocated on Agones");
            }
            allocate.record(&sdk, outcome);
        }
    }
}

/// Consecutive failures of one call, for rate-limited logs.
struct Failures {
    /// The call, for the log line.
    call: &'static str,
    /// Failures since the last success.
    count: u64,
}

impl Failures {
    /// Failures logged one by one before only every [`Failures::EVERY`]th is.
    const FIRST: u64 = 3;
    /// After the first few, one failure in this many is logged.
    const EVERY: u64 = 60;

    fn new(call: &'static str) -> Self {
        Self { call, count: 0 }
    }

    fn record(&mut self, sdk: &Agones, outcome: Result<(), AgonesError>) {
        match outcome {
            Ok(()) => {
                if self.count > 0 {
                    tracing::info!(
                        sidecar = %sdk.address(),
                        call = self.call,
                        failures = self.count,
                        "Agones SDK call succeeds again"
                    );
                }
                self.count = 0;
            }
            Err(error) => {
                self.count += 1;
                if self.count <= Self::FIRST || self.count.is_multiple_of(Self::EVERY) {
                    tracing::warn!(
                        sidecar = %sdk.address(),
                        call = self.call,
                        failures = self.count,
                        %error,
                        "Agones SDK call failed"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_port_comes_from_the_variable_or_defaults_to_9358() {
        let Ok(default) = Agones::from_port_setting(None) else {
            panic!("no variable must give the default port");
        };
        assert_eq!(default.address(), "127.0.0.1:9358");
        let Ok(set) = Agones::from_port_setting(Some("59358")) else {
            panic!("a port must be accepted");
        };
        assert_eq!(set.address(), "127.0.0.1:59358");
        for bad in ["", "http", "0", "65536", "-1"] {
            let Err(error) = Agones::from_port_setting(Some(bad)) else {
                panic!("{bad:?} must be refused");
            };
            assert!(
                error.contains(PORT_VAR) && error.contains("TCP port"),
                "{error}"
            );
        }
    }
}
