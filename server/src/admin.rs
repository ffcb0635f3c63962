//! The operator's HTTP API.
//!
//! - `GET /status`: the match and process figures as JSON ([`Status`]).
//! - `GET /metrics`: the same in Prometheus text format.
//! - `POST /token` with `{"name": "..."}`: mints a standard netcode.io connect token for
//!   this server. This is the development matchmaker; a production backend mints the same
//!   tokens with the same private key.
//!
//! - `POST /handoff` with `{"to": "host:port"}`: hands the match to the standby whose
//!   admin API is there (two phases: see `transfer`).
//! - `POST /handoff/prepare` (a standby): phase one, "can you take this match?".
//! - `GET /handoff/prepared?handoff_id=N` (a standby): how many clients connected ahead.
//! - `POST /match` (a standby): phase two, receives a sealed match from its owner.
//!
//! The mutating endpoints (`/token`, `/handoff`, `/handoff/*`, `/match`) require
//! `Authorization: Bearer <token>` when the server runs with `--admin-token`.
//! The API never touches the world: it reads what the tick loop publishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arena_shared::game::Game;

use crate::handoff::{FROZEN_AT_HEADER, PrepareProgress, PrepareRequest};
use crate::host::{Host, ReceiveError, parse_admin_target};
use crate::status::prometheus;
use arena_shared::identity::{MAX_NAME_BYTES, TokenRequest, mint_token, random_client_id};
use arena_shared::netcode::Key;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};

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

/// The admin router.
pub fn router<G: Game>(state: Arc<AdminState<G>>) -> Router {
    Router::new()
        .route("/status", get(status::<G>))
        .route("/metrics", get(metrics::<G>))
        .route("/token", post(token::<G>))
        .route("/handoff", post(handoff::<G>))
        .route("/handoff/prepare", post(prepare::<G>))
        .route("/handoff/prepared", get(prepared::<G>))
        .route("/match", post(receive_match::<G>))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_MATCH_BYTES))
        .with_state(state)
}

/// Largest sealed match accepted by `POST /match`.
const MAX_MATCH_BYTES: usize = 64 * 1024 * 1024;

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

async fn handoff<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
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
        Ok((to, accepted)) => axum::Json(serde_json::json!({
            "to": to,
            "udp": accepted.udp,
            "epoch": accepted.epoch,
            "tick": accepted.tick,
        }))
        .into_response(),
        Err(reason) => (
            StatusCode::BAD_GATEWAY,
            axum::Json(serde_json::json!({ "error": reason })),
        )
            .into_response(),
    }
}

async fn prepare<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
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
    headers: HeaderMap,
    query: Result<axum::extract::Query<ProgressQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
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
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
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
    let text = prometheus(&state.host.status());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn token<G: Game>(
    State(state): State<Arc<AdminState<G>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
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
