//! Moving a match between processes: the sealed snapshot in transit, and the HTTP call
//! that carries it.
//!
//! A snapshot travels sealed with XChaCha20-Poly1305 under a key derived (BLAKE3 in its
//! key-derivation mode) from the fleet's private key, so a standby restores only what a
//! server holding the same key sent. Wire form: `nonce (24) ‖ ciphertext ‖ tag (16)`.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use arena_shared::netcode::Key;
use arena_shared::netcode::token::fill_random;
use bytes::Bytes;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};

const CONTEXT: &str = "arena 2026-11-28 match handoff transit key v1";
const AAD: &[u8] = b"arena match handoff";
/// Header with the unix microseconds at which the old owner froze (for the pause figure).
pub const FROZEN_AT_HEADER: &str = "x-arena-frozen-at-unix-us";
/// How long the old owner waits for the standby to take the match.
pub const HANDOFF_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a sealed snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Shorter than a nonce and a tag.
    #[error("sealed snapshot of {0} bytes is too short")]
    TooShort(usize),
    /// The tag did not verify: another fleet's key, or altered bytes.
    #[error("sealed snapshot did not authenticate (another fleet's key, or altered)")]
    Forged,
}

fn transit_key(private_key: &Key) -> Key {
    blake3::derive_key(CONTEXT, private_key)
}

/// Seals snapshot bytes for transit.
pub fn seal(private_key: &Key, snapshot: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; 24];
    fill_random(&mut nonce);
    let mut out = Vec::with_capacity(24 + snapshot.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(snapshot);
    let cipher = XChaCha20Poly1305::new(&transit_key(private_key).into());
    // Encryption fails only past 256 GiB: snapshots are bounded far below that.
    let tag = cipher
        .encrypt_inout_detached(&nonce.into(), AAD, out[24..].as_mut().into())
        .map(|t| t.to_vec())
        .unwrap_or_default();
    out.extend_from_slice(&tag);
    out
}

/// Opens a sealed snapshot.
pub fn open(private_key: &Key, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.len() < 24 + 16 {
        return Err(SealError::TooShort(sealed.len()));
    }
    let (nonce, rest) = sealed.split_at(24);
    let (body, tag) = rest.split_at(rest.len() - 16);
    let nonce: [u8; 24] = nonce
        .try_into()
        .map_err(|_| SealError::TooShort(sealed.len()))?;
    let tag: [u8; 16] = tag
        .try_into()
        .map_err(|_| SealError::TooShort(sealed.len()))?;
    let mut plain = body.to_vec();
    let cipher = XChaCha20Poly1305::new(&transit_key(private_key).into());
    cipher
        .decrypt_inout_detached(
            &nonce.into(),
            AAD,
            plain.as_mut_slice().into(),
            &Tag::from(tag),
        )
        .map_err(|_| SealError::Forged)?;
    Ok(plain)
}

/// What a standby answers when it took the match.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// The standby's UDP address for players.
    pub udp: std::net::SocketAddr,
    /// The epoch it owns the match at.
    pub epoch: u64,
    /// The tick it resumed from.
    pub tick: u64,
}

/// Sends a sealed snapshot to a standby's admin API (`host:port`) and returns its answer.
pub async fn send_to_standby(
    to: &str,
    admin_token: Option<&str>,
    sealed: Vec<u8>,
    frozen_at_unix_us: u64,
) -> anyhow::Result<Accepted> {
    tokio::time::timeout(
        HANDOFF_TIMEOUT,
        post(to, admin_token, sealed, frozen_at_unix_us),
    )
    .await
    .map_err(|_| anyhow!("standby {to} did not answer within {HANDOFF_TIMEOUT:?}"))?
}

async fn post(
    to: &str,
    admin_token: Option<&str>,
    sealed: Vec<u8>,
    frozen_at_unix_us: u64,
) -> anyhow::Result<Accepted> {
    let stream = tokio::net::TcpStream::connect(to)
        .await
        .with_context(|| format!("cannot reach the standby's admin API at {to}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake with the standby failed")?;
    tokio::spawn(connection);
    let mut request = Request::post("/match")
        .header(HOST, to)
        .header(CONTENT_TYPE, "application/octet-stream")
        .header(FROZEN_AT_HEADER, frozen_at_unix_us.to_string());
    if let Some(token) = admin_token {
        request = request.header(AUTHORIZATION, format!("Bearer {token}"));
    }
    let response = sender
        .send_request(request.body(Full::new(Bytes::from(sealed)))?)
        .await
        .context("sending the snapshot to the standby failed")?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!(
            "standby refused the match ({status}): {}",
            String::from_utf8_lossy(&body)
        );
    }
    serde_json::from_slice(&body).context("standby's answer is not the expected JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_same_fleet_key_opens_a_sealed_snapshot() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"snapshot bytes");
        assert_eq!(open(&key, &sealed).expect("opens"), b"snapshot bytes");
        assert!(matches!(open(&[8u8; 32], &sealed), Err(SealError::Forged)));
        let mut altered = sealed.clone();
        altered[30] ^= 1;
        assert!(matches!(open(&key, &altered), Err(SealError::Forged)));
        assert!(matches!(
            open(&key, &sealed[..20]),
            Err(SealError::TooShort(20))
        ));
    }
}
