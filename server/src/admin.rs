//! The operator's HTTP API.
//!
//! - `GET /status`: the match and process figures as JSON ([`Status`]).
//! - `GET /metrics`: the same in Prometheus text format.
//! - `POST /token` with `{"name": "..."}`: mints a standard netcode.io connect token for
//!   this server. This is the development matchmaker; a production backend mints the same
//!   tokens with the same private key.
//!
//! The API never touches the world: it reads what the tick loop publishes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arena_shared::identity::{MAX_NAME_BYTES, TokenRequest, mint_token, random_client_id};
use arena_shared::netcode::Key;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::status::{Status, prometheus};

/// What the API needs: the published status and what minting a token takes.
pub struct AdminState {
    /// The latest status from the tick loop.
    pub status: watch::Receiver<Status>,
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
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/token", post(token))
        .with_state(state)
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let status = state.status.borrow().clone();
    axum::Json(status).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let text = prometheus(&state.status.borrow());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn token(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
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
