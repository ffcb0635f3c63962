//! The operator's HTTP API.
//!
//! - `GET /healthz`: 200 while the loop serving the socket keeps its rate, 503 with the
//!   reason otherwise ([`Host::health`]). For liveness probes: no token.
//! - `GET /readyz`: 200 while this process can do its job (an owner admitting players, a
//!   standby able to receive a match), 503 with the reason otherwise
//!   ([`Host::readiness`]). For readiness probes: no token.
//! - `GET /status`: the match and process figures as JSON ([`crate::status::Status`]).
//! - `GET /metrics`: the same in Prometheus text format.
//! - `GET /clients`: every connected client ([`crate::core::ClientInfo`]), as of the
//!   loop's last report (at most half a second old).
//! - `POST /token` with `{"name": "..."}`: mints a standard netcode.io connect token for
//!   this server. This is the development matchmaker; a production backend mints the same
//!   tokens with the same private key.
//!
//! - `POST /handoff` with `{"to": "host:port"}`: hands the match to the standby whose
//!   admin API is there (two phases: see `transfer`).
//! - `POST /handoff/prepare` (a standby): phase one, "can you take this match?".
//! - `GET /handoff/prepared?handoff_id=N` (a standby): how many clients connected ahead.
//! - `POST /match` (a standby): phase two, receives a sealed match from its owner.
//! - `POST /drain`, optionally with `{"handoff": true, "to": "host:port" or "auto"}`:
//!   admit no new connection from now on ([`Host::drain`]); with `handoff`, then hand the
//!   match off.
//!
//! `/clients` and the mutating endpoints (`/token`, `/handoff`, `/handoff/*`, `/match`,
//! `/drain`) require `Authorization: Bearer <token>` when the server runs with
//! `--admin-token`; the token is checked before a body is read, so a stranger cannot make
//! the server buffer one.
//! The API never touches the world: it reads what the tick loop publishes.
//!
//! # Limits ([`AdminLimits`])
//!
//! Each route reads at most its body limit (413 beyond it, at once when the
//! `Content-Length` says so); each request has a deadline (408 past it, body reading
//! included); at most so many requests are served at once (the rest wait, within their
//! deadline), the probes apart; at most so many connections are open (the rest wait in
//! the listen backlog); and a connection that does not send a request's head in time
//! (a slow-loris client, or one idle between requests) is closed ([`serve`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arena_shared::game::Game;

use crate::handoff::{FROZEN_AT_HEADER, PrepareProgress, PrepareRequest};
use crate::host::{Host, ReceiveError, parse_admin_target};
use arena_shared::identity::{MAX_NAME_BYTES, TokenRequest, mint_token, random_client_id};
use arena_shared::netcode::Key;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// What the API needs: the process and what minting a token takes.
pub struct AdminState<G: Game> {
    /// The process: status, role, handoffs.
    pub host: Arc<Host<G>>,
    /// Token minting.
    pub tokens: TokenMinter,
}

/// Mints tokens for this server.
pub struct TokenMinter {
    /// The game's protocol id.
    pub protocol_id: u64,
    /// The private key shared with the servers.
    pub private_key: Key,
    /// Addresses listed in the token, in the order clients try them.
    pub server_addresses: Vec<SocketAddr>,
    /// Seconds a token may be used to connect.
    pub expire_s: u64,
    /// Connection timeout written into tokens.
    pub timeout_s: i32,
}

/// The body of `POST /token`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// The player's display name (1 to 64 bytes of UTF-8).
    pub name: String,
    /// Join as a spectator: see the whole arena, have no player.
    #[serde(default)]
    pub spectate: bool,
}

/// The answer to `POST /token`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The 2048-byte connect token, base64 (standard alphabet, padded).
    pub token: String,
    /// The identity the token carries.
    pub client_id: u64,
    /// Unix seconds after which servers refuse the token.
    pub expires_at: u64,
}

/// What the admin API allows each request and connection ([`router_with`], [`serve`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminLimits {
    /// Largest body of `/token`, `/handoff`, `/handoff/prepare` and `/drain`, bytes.
    pub small_body_bytes: usize,
    /// Largest body of `POST /match` (a sealed snapshot), bytes.
    pub match_body_bytes: usize,
    /// Deadline of a request (body reading and answer) on most routes.
    pub request_timeout: Duration,
    /// Deadline of `/handoff`, `/drain` and `/match`, which wait for a handoff.
    pub handoff_timeout: Duration,
    /// Requests served at once (the probes `/healthz` and `/readyz` apart); more wait,
    /// within their deadline.
    pub max_concurrent_requests: usize,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// The time a connection has to send a request's head (from its opening, or from the
    /// end of the previous request); then it is closed.
    pub header_read_timeout: Duration,
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self {
            small_body_bytes: SMALL_BODY_BYTES,
            match_body_bytes: MAX_MATCH_BYTES,
            request_timeout: Duration::from_secs(5),
            // A handoff attempt is bounded by about 7.5 s, `auto` tries two standbys.
            handoff_timeout: Duration::from_secs(30),
            max_concurrent_requests: 32,
            max_connections: 256,
            header_read_timeout: Duration::from_secs(3),
        }
    }
}

/// Largest body of the small JSON routes. The largest of them is a prepare request
/// (`/handoff/prepare`: the match id, epoch, tick, players, format, and the owner's UDP
/// address; no client list): about 170 bytes with a 32-byte match id, under 1.7 KiB
/// with a 255-byte one (the longest a file name allows) escaped at its worst.
pub const SMALL_BODY_BYTES: usize = 4 * 1024;

/// Largest sealed match accepted by `POST /match`: the largest snapshot the store takes,
/// and the seal around it (nonce, tag, the commit's JSON: under 5 KiB).
pub const MAX_MATCH_BYTES: usize = crate::store::MAX_SNAPSHOT_BYTES + 64 * 1024;

/// The admin router with the default [`AdminLimits`].
pub fn router<G: Game>(state: Arc<AdminState<G>>) -> Router {
    router_with(state, AdminLimits::default())
}

/// The admin router with `limits` (tests shorten them).
pub fn router_with<G: Game>(state: Arc<AdminState<G>>, limits: AdminLimits) -> Router {
    let concurrency = GlobalConcurrencyLimitLayer::new(limits.max_concurrent_requests);
    // Outermost first: the token, the body's size, the deadline, a place among the
    // requests served at once, the handler (which reads the body).
    let limited = |route: MethodRouter<Arc<AdminState<G>>>,
                   body_bytes: usize,
                   timeout|
     -> MethodRouter<Arc<AdminState<G>>> {
        route
            .layer::<_, std::convert::Infallible>(concurrency.clone())
            .layer::<_, std::convert::Infallible>(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                timeout,
            ))
            .layer::<_, std::convert::Infallible>(RequestBodyLimitLayer::new(body_bytes))
    };
    let (small, short, long) = (
        limits.small_body_bytes,
        limits.request_timeout,
        limits.handoff_timeout,
    );
    let protected = Router::new()
        .route("/clients", limited(get(clients::<G>), small, short))
        .route("/token", limited(post(token::<G>), small, short))
        .route("/handoff", limited(post(handoff::<G>), small, long))
        .route(
            "/handoff/prepare",
            limited(post(prepare::<G>), small, short),
        )
        .route(
            "/handoff/prepared",
            limited(get(prepared::<G>), small, short),
        )
        .route("/drain", limited(post(drain::<G>), small, long))
        .route(
            "/match",
            limited(
                post(receive_match::<G>).layer(DefaultBodyLimit::disable()),
                limits.match_body_bytes,
                long,
            ),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            require_token::<G>,
        ));
    Router::new()
        // Probes answer whatever else is being served: no place among the requests to
        // wait for, no token (an orchestrator's probe has none).
        .route(
            "/healthz",
            get(healthz::<G>).layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                short,
            )),
        )
        .route(
            "/readyz",
            get(readyz::<G>).layer(TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                short,
            )),
        )
        .route("/status", limited(get(status::<G>), small, short))
        .route("/metrics", limited(get(metrics::<G>), small, short))
        .merge(protected)
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` turns true: HTTP/1.1, at most
/// `limits.max_connections` connections at once, each closed if a request's head does
/// not arrive within `limits.header_read_timeout` (`axum::serve` has no such timer).
/// At shutdown it stops accepting, lets each connection finish its request, and
/// returns within 5 s.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: AdminLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let (closing_tx, closing_rx) = watch::channel(false);
    let mut open = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before it was
                    // accepted: breathe, then go on.
                    tracing::debug!(%error, "admin API: accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut closing = closing_rx.clone();
        open.spawn(async move {
            let _permit = permit;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(error) = served {
                        tracing::debug!(%error, "admin API: connection ended with an error");
                    }
                }
                () = stopped(&mut closing) => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
        // Forget the connections that have ended.
        while open.try_join_next().is_some() {}
    }
    let _ = closing_tx.send(true);
    let drained = tokio::time::timeout(Duration::from_secs(5), async {
        while open.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = open.len(),
            "admin API: connections still open at shutdown; closing them"
        );
        open.abort_all();
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Answers 401 before the route (and its body) is touched, unless the request carries
/// the bearer token (or none is configured).
async fn require_token<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(refusal) = unauthorized(&state, request.headers()) {
        return refusal;
    }
    next.run(request).await
}

/// Refuses a request without the bearer token, when one is configured.
fn unauthorized<G: Game>(state: &AdminState<G>, headers: &HeaderMap) -> Option<Response> {
    let expected = state.host.admin_token()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Constant-time enough for a loopback admin API: compare lengths, then all bytes.
    let matches = given.is_some_and(|g| {
        g.len() == expected.len()
            && g.bytes()
                .zip(expected.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    (!matches).then(|| {
        (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                serde_json::json!({ "error": "missing or wrong Authorization: Bearer token" }),
            ),
        )
            .into_response()
    })
}

async fn status<G: Game>(State(state): State<Arc<AdminState<G>>>) -> Response {
    axum::Json(state.host.status()).into_response()
}

/// `GET /healthz`.
async fn healthz<G: Game>(State(state): State<Arc<AdminState<G>>>) -> Response {
    match state.host.health() {
        Ok(()) => axum::Json(serde_json::json!({ "ok": true })).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ok": false, "reason": reason })),
        )
            .into_response(),
    }
}

/// `GET /readyz`.
async fn readyz<G: Game>(State(state): State<Arc<AdminState<G>>>) -> Response {
    match state.host.readiness() {
        Ok(role) => axum::Json(serde_json::json!({ "ready": true, "role": role })).into_response(),
        Err((role, reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "role": role, "reason": reason })),
        )
            .into_response(),
    }
}

/// `GET /clients`: the list the loop published last.
async fn clients<G: Game>(State(state): State<Arc<AdminState<G>>>) -> Response {
    let clients = Arc::clone(&state.host.status().clients);
    axum::Json(clients.as_slice()).into_response()
}

/// The body of `POST /drain` (all of it optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainBody {
    /// Hand the match off once draining.
    #[serde(default)]
    handoff: bool,
    /// Where to (a standby's admin address), or "auto" (the default).
    to: Option<String>,
    /// Make before break (the default), as for `/handoff`.
    #[serde(default = "yes")]
    prepare: bool,
}

/// `POST /drain`: answers `{"draining": true}`, and with `"handoff": true` the handoff's
/// outcome beside it (`"handoff": {...}` as `/handoff` answers, or 502 with
/// `"handoff_error"`: the match then goes on here, still draining).
async fn drain<G: Game>(State(state): State<Arc<AdminState<G>>>, body: Bytes) -> Response {
    let request: DrainBody = if body.iter().all(u8::is_ascii_whitespace) {
        DrainBody {
            prepare: true,
            ..DrainBody::default()
        }
    } else {
        match serde_json::from_slice(&body) {
            Ok(request) => request,
            Err(error) => {
                return bad_request(format!(
                    "expected nothing, or {{\"handoff\": true, \"to\": \"host:port\" or \"auto\"}}: {error}"
                ));
            }
        }
    };
    let to = match &request.to {
        Some(to) if !request.handoff => {
            return bad_request(format!(
                "\"to\": {to:?} without \"handoff\": true; say both to hand the match off"
            ));
        }
        Some(to) => match parse_admin_target(to) {
            Ok(to) => to,
            Err(reason) => return bad_request(reason),
        },
        None => crate::host::AUTO.to_owned(),
    };
    state.host.drain().await;
    let players = state.host.status().players;
    if !request.handoff {
        return axum::Json(serde_json::json!({ "draining": true, "players": players }))
            .into_response();
    }
    match state.host.hand_off(to, request.prepare).await {
        Ok((to, accepted)) => axum::Json(serde_json::json!({
            "draining": true,
            "handoff": handed_off(&to, &accepted),
        }))
        .into_response(),
        Err(reason) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({
                "draining": true,
                "players": players,
                "handoff_error": reason,
            })),
        )
            .into_response(),
    }
}

/// A handoff's outcome as `/handoff` answers it (and `/drain` under `"handoff"`).
fn handed_off(to: &str, accepted: &crate::handoff::Accepted) -> serde_json::Value {
    serde_json::json!({
        "to": to,
        "udp": accepted.udp,
        "epoch": accepted.epoch,
        "tick": accepted.tick,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HandoffBody {
    to: String,
    /// Make before break (the default): clients connect to the standby before the
    /// freeze. `false`: they are only redirected at the commit (for comparisons).
    #[serde(default = "yes")]
    prepare: bool,
}

fn yes() -> bool {
    true
}

async fn handoff<G: Game>(State(state): State<Arc<AdminState<G>>>, body: Bytes) -> Response {
    let request: HandoffBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return bad_request(format!(
                "expected {{\"to\": \"host:port\" or \"auto\", \"prepare\": true}}: {error}"
            ));
        }
    };
    let to = match parse_admin_target(&request.to) {
        Ok(to) => to,
        Err(reason) => return bad_request(reason),
    };
    match state.host.hand_off(to, request.prepare).await {
        Ok((to, accepted)) => axum::Json(handed_off(&to, &accepted)).into_response(),
        Err(reason) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({ "error": reason })),
        )
            .into_response(),
    }
}

async fn prepare<G: Game>(State(state): State<Arc<AdminState<G>>>, body: Bytes) -> Response {
    let request: PrepareRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("expected a prepare request: {error}")),
    };
    match state.host.prepare(&request) {
        Ok(prepared) => axum::Json(prepared).into_response(),
        Err(error) => {
            tracing::warn!(%error, match_id = %request.match_id, "refused to prepare for a handoff");
            refusal(&error)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ProgressQuery {
    handoff_id: u64,
}

async fn prepared<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    query: Result<axum::extract::Query<ProgressQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(axum::extract::Query(query)) = query else {
        return bad_request("expected ?handoff_id=N".into());
    };
    match state.host.prepare_progress(query.handoff_id) {
        Some(connected) => axum::Json(PrepareProgress {
            handoff_id: query.handoff_id,
            connected,
        })
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({ "error": format!("no handoff {} is being prepared here", query.handoff_id) })),
        )
            .into_response(),
    }
}

fn refusal(error: &ReceiveError) -> Response {
    let code = match error {
        ReceiveError::Refused(_) => StatusCode::FORBIDDEN,
        ReceiveError::Busy(_) => StatusCode::CONFLICT,
    };
    (
        code,
        axum::Json(serde_json::json!({ "error": error.to_string() })),
    )
        .into_response()
}

async fn receive_match<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let frozen_at = headers
        .get(FROZEN_AT_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let host = Arc::clone(&state.host);
    let received = tokio::task::spawn_blocking(move || host.receive(&body, frozen_at)).await;
    match received {
        Ok(Ok(accepted)) => axum::Json(accepted).into_response(),
        Ok(Err(error)) => {
            tracing::warn!(%error, "refused a handed-over match");
            refusal(&error)
        }
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "receiving the match failed",
        )
            .into_response(),
    }
}

async fn metrics<G: Game>(State(state): State<Arc<AdminState<G>>>) -> Response {
    match crate::metrics::encode(state.host.status()) {
        Ok(text) => ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "encoding the metrics failed",
        )
            .into_response(),
    }
}

async fn token<G: Game>(State(state): State<Arc<AdminState<G>>>, body: Bytes) -> Response {
    let request: TokenBody = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return bad_request(format!("expected {{\"name\": \"...\"}}: {error}")),
    };
    if request.name.is_empty() || request.name.len() > MAX_NAME_BYTES {
        return bad_request(format!(
            "name must be 1 to {MAX_NAME_BYTES} bytes, got {}",
            request.name.len()
        ));
    }
    let minter = &state.tokens;
    let client_id = random_client_id();
    let now_unix_s = unix_now_s();
    let minted = mint_token(
        &TokenRequest {
            protocol_id: minter.protocol_id,
            server_addresses: minter.server_addresses.clone(),
            client_id,
            name: request.name.clone(),
            now_unix_s,
            expire_s: minter.expire_s,
            timeout_s: minter.timeout_s,
            spectator: request.spectate,
        },
        &minter.private_key,
    )
    .and_then(|token| Ok((token.expire_timestamp, token.write()?)));
    match minted {
        Ok((expires_at, bytes)) => {
            tracing::debug!(client_id, name = %request.name, "minted a connect token");
            axum::Json(TokenResponse {
                token: base64::engine::general_purpose::STANDARD.encode(bytes),
                client_id,
                expires_at,
            })
            .into_response()
        }
        Err(error) => {
            tracing::error!(%error, "could not mint a token");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({ "error": error.to_string() })),
            )
                .into_response()
        }
    }
}

fn bad_request(reason: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(serde_json::json!({ "error": reason })),
    )
        .into_response()
}

/// Unix seconds now. The admin API is a driver, so it may read the clock.
#[allow(clippy::disallowed_methods)]
fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    //! The router and [`serve`] in-process, over real loopback TCP (a body that never
    //! arrives, a head that trickles), around a standby [`Host`] (cheap: no match).

    use std::time::Instant;

    use arena_shared::game::MatchConfig;
    use arena_shared::sim::Shooter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::core::{CoreConfig, TokenConfig};
    use crate::host::HostConfig;

    const TOKEN: &str = "s3cret";

    /// Now, for the tests' own deadlines: a test drives the API, so it may read the clock.
    #[allow(clippy::disallowed_methods)]
    fn clock_now() -> Instant {
        Instant::now()
    }

    /// A standby host with `--admin-token`, and the admin API on a loopback port.
    struct Api {
        addr: SocketAddr,
        host: Arc<Host<Shooter>>,
        stop: watch::Sender<bool>,
        dir: std::path::PathBuf,
    }

    impl Drop for Api {
        fn drop(&mut self) {
            let _ = self.stop.send(true);
            self.host.stop_waiting();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn api(label: &str, limits: AdminLimits) -> Api {
        let dir = std::env::temp_dir().join(format!("arena-admin-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let Ok(()) = std::fs::create_dir_all(&dir) else {
            panic!("cannot create {}", dir.display());
        };
        let Ok(udp) = crate::net::bind_udp(
            "127.0.0.1:0"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0))),
            4,
        ) else {
            panic!("cannot bind UDP");
        };
        let Ok(udp_addr) = udp.local_addr() else {
            panic!("no UDP address");
        };
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("cannot bind TCP");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("no TCP address");
        };
        let key = [7u8; 32];
        let config = HostConfig {
            core: CoreConfig {
                match_id: "default".into(),
                netcode: arena_shared::netcode::ServerConfig {
                    protocol_id: 1,
                    private_key: key,
                    max_clients: 4,
                    addresses: vec![udp_addr],
                },
                world: MatchConfig {
                    max_players: 4,
                    tick_hz: 60,
                    seed: 1,
                },
                view_radius_m: 30.0,
                client_bytes_per_s: 16_000,
                workers: 1,
                tokens: TokenConfig {
                    own_address: udp_addr,
                    peers: Vec::new(),
                    timeout_s: 5,
                    expire_s: 60,
                },
            },
            private_key: key,
            owner_id: format!("test@{addr}"),
            lease: Duration::from_secs(1),
            snapshot_every: Duration::from_secs(1),
            admin_token: Some(TOKEN.into()),
            watch: None,
            faults: crate::faults::Faults::default(),
            store: crate::store::StoreSpec::File,
            store_namespace: "arena".into(),
            admin: addr,
            match_flags: crate::config::MatchFlags::default(),
        };
        let (stop, stopped) = watch::channel(false);
        let Ok((host, _thread)) = Host::<Shooter>::start(config, &dir, udp, stopped.clone()) else {
            panic!("cannot start the host");
        };
        let state = Arc::new(AdminState {
            host: Arc::clone(&host),
            tokens: TokenMinter {
                protocol_id: 1,
                private_key: key,
                server_addresses: vec![udp_addr],
                expire_s: 60,
                timeout_s: 5,
            },
        });
        tokio::spawn(serve(listener, router_with(state, limits), limits, stopped));
        Api {
            addr,
            host,
            stop,
            dir,
        }
    }

    /// Writes `request` and reads one answer: its status code and body. `None` if the
    /// server closed the connection without answering. Bounded by 5 s.
    async fn exchange(stream: &mut TcpStream, request: &[u8]) -> Option<(u16, String)> {
        let Ok(()) = stream.write_all(request).await else {
            return None;
        };
        read_answer(stream).await
    }

    async fn read_answer(stream: &mut TcpStream) -> Option<(u16, String)> {
        let read = async {
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&got[..end]).to_string();
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + length {
                        let code = head.split_whitespace().nth(1)?.parse().ok()?;
                        let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]);
                        return Some((code, body.to_string()));
                    }
                }
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    }

    async fn connect(addr: SocketAddr) -> TcpStream {
        let Ok(stream) = TcpStream::connect(addr).await else {
            panic!("cannot connect to {addr}");
        };
        stream
    }

    fn get(path: &str, token: Option<&str>) -> Vec<u8> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n{auth}Connection: close\r\n\r\n").into_bytes()
    }

    /// The head of a POST announcing `length` bytes of body, and the first `sent` of them.
    fn post_head(path: &str, token: Option<&str>, length: usize, sent: usize) -> Vec<u8> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
        )
        .into_bytes();
        request.extend(std::iter::repeat_n(b' ', sent));
        request
    }

    /// Polls `GET path` (every 20 ms, at most 3 s) until it answers `code`.
    async fn answers(addr: SocketAddr, path: &str, token: Option<&str>, code: u16) -> String {
        let mut last = None;
        for _ in 0..150 {
            let answer = exchange(&mut connect(addr).await, &get(path, token)).await;
            if let Some((got, body)) = &answer
                && *got == code
            {
                return body.clone();
            }
            last = answer;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("GET {path}: expected {code}, last answer {last:?}");
    }

    #[tokio::test]
    async fn probes_need_no_token_and_a_free_standby_is_ready() {
        let api = api("probes", AdminLimits::default()).await;
        let health = answers(api.addr, "/healthz", None, 200).await;
        assert!(health.contains("\"ok\":true"), "{health}");
        let ready = answers(api.addr, "/readyz", None, 200).await;
        assert!(ready.contains("\"role\":\"standby\""), "{ready}");
        // The status, open as before, says draining and the version.
        let status = answers(api.addr, "/status", None, 200).await;
        assert!(status.contains("\"draining\":false"), "{status}");
        assert!(status.contains(env!("CARGO_PKG_VERSION")), "{status}");
        assert!(!status.contains("\"clients\""), "{status}");
    }

    #[tokio::test]
    async fn a_drained_standby_is_not_ready_and_refuses_a_prepare() {
        let api = api("drain", AdminLimits::default()).await;
        answers(api.addr, "/readyz", None, 200).await;
        let drained = exchange(
            &mut connect(api.addr).await,
            &post_head("/drain", Some(TOKEN), 0, 0),
        )
        .await;
        let Some((200, body)) = drained else {
            panic!("POST /drain: {drained:?}");
        };
        assert!(body.contains("\"draining\":true"), "{body}");
        let ready = answers(api.addr, "/readyz", None, 503).await;
        assert!(ready.contains("draining"), "{ready}");
        // Still alive: draining is not dying.
        answers(api.addr, "/healthz", None, 200).await;
        let request = PrepareRequest {
            match_id: "default".into(),
            epoch: 1,
            tick: 10,
            players: 1,
            snapshot_format: arena_shared::snapshot::FORMAT_VERSION,
            from_udp: SocketAddr::from(([127, 0, 0, 1], 9)),
        };
        let Err(ReceiveError::Busy(reason)) = api.host.prepare(&request) else {
            panic!("a draining standby accepted a prepare");
        };
        assert!(reason.contains("draining"), "{reason}");
    }

    #[tokio::test]
    async fn clients_need_the_token() {
        let api = api("clients", AdminLimits::default()).await;
        let refused = exchange(&mut connect(api.addr).await, &get("/clients", None)).await;
        assert!(matches!(refused, Some((401, _))), "{refused:?}");
        let wrong = exchange(&mut connect(api.addr).await, &get("/clients", Some("nope"))).await;
        assert!(matches!(wrong, Some((401, _))), "{wrong:?}");
        let listed = answers(api.addr, "/clients", Some(TOKEN), 200).await;
        assert_eq!(listed, "[]");
    }

    #[tokio::test]
    async fn an_oversized_body_is_refused_before_it_is_read() {
        let api = api("oversized", AdminLimits::default()).await;
        // Ten megabytes announced, a hundred bytes sent: any answer proves the rest was
        // never waited for.
        let announced = 10 << 20;
        for (token, expected) in [(None, 401), (Some("nope"), 401), (Some(TOKEN), 413)] {
            let started = clock_now();
            let answer = exchange(
                &mut connect(api.addr).await,
                &post_head("/token", token, announced, 100),
            )
            .await;
            assert!(
                matches!(answer, Some((code, _)) if code == expected),
                "token {token:?}: expected {expected}, got {answer:?}"
            );
            assert!(started.elapsed() < Duration::from_secs(2));
        }
        // The same on every small route, and the big one takes a snapshot's worth only.
        for path in ["/handoff", "/handoff/prepare", "/drain"] {
            let answer = exchange(
                &mut connect(api.addr).await,
                &post_head(path, Some(TOKEN), SMALL_BODY_BYTES + 1, 0),
            )
            .await;
            assert!(matches!(answer, Some((413, _))), "{path}: {answer:?}");
        }
        let answer = exchange(
            &mut connect(api.addr).await,
            &post_head("/match", Some(TOKEN), MAX_MATCH_BYTES + 1, 0),
        )
        .await;
        assert!(matches!(answer, Some((413, _))), "/match: {answer:?}");
        let answer = exchange(
            &mut connect(api.addr).await,
            &post_head("/match", None, MAX_MATCH_BYTES + 1, 0),
        )
        .await;
        assert!(matches!(answer, Some((401, _))), "/match: {answer:?}");
        // A snapshot bigger than axum's default 2 MB reaches the seal's check.
        let big = post_head("/match", Some(TOKEN), 3 << 20, 3 << 20);
        let answer = exchange(&mut connect(api.addr).await, &big).await;
        assert!(
            matches!(answer, Some((403, _))),
            "/match, 3 MiB: {answer:?}"
        );
        // A body without a length is cut at the limit as it is read.
        let mut chunked = format!(
            "POST /token HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
            SMALL_BODY_BYTES + 10
        )
        .into_bytes();
        chunked.extend(std::iter::repeat_n(b' ', SMALL_BODY_BYTES + 10));
        chunked.extend_from_slice(b"\r\n0\r\n\r\n");
        let answer = exchange(&mut connect(api.addr).await, &chunked).await;
        assert!(matches!(answer, Some((413, _))), "chunked: {answer:?}");
    }

    #[tokio::test]
    async fn a_body_that_stalls_gets_408_and_a_trickled_head_is_cut_off() {
        let limits = AdminLimits {
            request_timeout: Duration::from_millis(300),
            header_read_timeout: Duration::from_millis(300),
            ..AdminLimits::default()
        };
        let api = api("slow", limits).await;
        let started = clock_now();
        let answer = exchange(
            &mut connect(api.addr).await,
            &post_head("/token", Some(TOKEN), 100, 10),
        )
        .await;
        assert!(matches!(answer, Some((408, _))), "{answer:?}");
        assert!(started.elapsed() >= Duration::from_millis(300));
        // A slow-loris request to /status: half a head, then nothing. The connection is
        // closed without an answer once the head is late.
        let mut stream = connect(api.addr).await;
        let started = clock_now();
        let answer = exchange(&mut stream, b"GET /status HTTP/1.1\r\nHost: te").await;
        assert!(
            answer.is_none() || matches!(answer, Some((408, _))),
            "{answer:?}"
        );
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
        // Everyone else is served as usual.
        answers(api.addr, "/status", None, 200).await;
    }

    #[tokio::test]
    async fn requests_beyond_the_concurrency_limit_wait_for_a_place_and_probes_do_not() {
        let limits = AdminLimits {
            max_concurrent_requests: 1,
            request_timeout: Duration::from_millis(800),
            ..AdminLimits::default()
        };
        let api = api("concurrency", limits).await;
        answers(api.addr, "/healthz", None, 200).await;
        // One request holds the only place until its deadline (its body never comes).
        let mut slow = connect(api.addr).await;
        let Ok(()) = slow
            .write_all(&post_head("/token", Some(TOKEN), 100, 10))
            .await
        else {
            panic!("cannot write");
        };
        // On this one-thread runtime the server reads that head before the next
        // connection's: the place is taken when the status request arrives.
        let started = clock_now();
        let probe = exchange(&mut connect(api.addr).await, &get("/healthz", None)).await;
        assert!(matches!(probe, Some((200, _))), "{probe:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
        let status = exchange(&mut connect(api.addr).await, &get("/status", None)).await;
        let waited = started.elapsed();
        assert!(
            matches!(status, Some((200 | 408, _))),
            "{status:?} after {waited:?}"
        );
        assert!(waited >= Duration::from_millis(600), "{waited:?}");
        let freed = read_answer(&mut slow).await;
        assert!(matches!(freed, Some((408, _))), "{freed:?}");
    }

    #[test]
    fn the_largest_small_bodies_fit_the_small_limit() {
        let typical = PrepareRequest {
            match_id: "default".into(),
            epoch: u64::MAX,
            tick: u64::MAX,
            players: 1024,
            snapshot_format: u16::MAX,
            from_udp: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 1))),
        };
        let Ok(typical_json) = serde_json::to_vec(&typical) else {
            panic!("cannot encode");
        };
        // The worst: a 255-byte match id of control characters, each escaped as \u00XX.
        let worst = PrepareRequest {
            match_id: "\u{1}".repeat(255),
            ..typical
        };
        let Ok(worst_json) = serde_json::to_vec(&worst) else {
            panic!("cannot encode");
        };
        println!(
            "prepare request: {} bytes (id \"default\"), {} bytes at worst",
            typical_json.len(),
            worst_json.len()
        );
        assert!(typical_json.len() < 300, "{}", typical_json.len());
        assert!(
            worst_json.len() <= SMALL_BODY_BYTES / 2,
            "{}",
            worst_json.len()
        );
        let token = serde_json::json!({ "name": "\u{1}".repeat(MAX_NAME_BYTES), "spectate": true });
        assert!(token.to_string().len() <= SMALL_BODY_BYTES / 8);
    }
}
