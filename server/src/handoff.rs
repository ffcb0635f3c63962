//! The wire of a two-phase handoff between two processes: the messages, the sealed
//! snapshot in transit, and the HTTP calls that carry them.
//!
//! 1. *Prepare* (`POST /handoff/prepare` on the standby, [`PrepareRequest`] ->
//!    [`Prepared`]): the standby says whether it can take this match and starts admitting
//!    its clients, who connect ahead while they keep playing on the owner. The owner polls
//!    `GET /handoff/prepared` for how many have.
//! 2. *Commit* (`POST /match`, the sealed snapshot): the standby takes epoch e+1 in the
//!    store and ticks T+1 at once.
//!
//! The outcome of a commit is never read from its HTTP answer: the old owner reads the
//! store (see `transfer`). The seal binds the snapshot to one handoff: the recipient,
//! the match, the epoch, the prepare's id and a deadline travel inside the authenticated
//! plaintext ([`Commit`]), so a replayed, stale or misdirected snapshot is refused.
//!
//! A snapshot travels sealed with XChaCha20-Poly1305 under a key derived (BLAKE3 in its
//! key-derivation mode) from the fleet's private key, so a standby restores only what a
//! server holding the same key sent. Wire form: `nonce (24) ‖ ciphertext ‖ tag (16)`, the
//! plaintext being `u32 length ‖ JSON Commit ‖ MatchSnapshot`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use arena_shared::netcode::Key;
use arena_shared::netcode::token::fill_random;
use bytes::Bytes;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};

const CONTEXT: &str = "arena 2026-12-02 match handoff transit key v2";
const AAD: &[u8] = b"arena match handoff v2";
/// Largest [`Commit`] JSON accepted inside a seal.
const MAX_COMMIT_BYTES: usize = 4096;
/// Header with the unix microseconds at which the old owner froze (for the pause figure).
pub const FROZEN_AT_HEADER: &str = "x-arena-frozen-at-unix-us";
/// How long the owner waits for the standby's answer to a prepare.
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the owner waits, ticking, for its clients to connect ahead to the standby.
pub const PREPARE_WAIT: Duration = Duration::from_millis(1500);
/// How long a standby keeps a prepare open (admitting the match's clients) without a
/// commit; after it, it drops their connections.
pub const PREPARE_TTL: Duration = Duration::from_secs(10);
/// How long the owner waits, frozen, for the standby to take the match; also the
/// deadline sealed into the commit.
pub const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);

/// Phase one, owner to standby: "can you take this match?"
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrepareRequest {
    /// The match.
    pub match_id: String,
    /// Its epoch now (the standby will own e+1).
    pub epoch: u64,
    /// Its tick now.
    pub tick: u64,
    /// Players in it now (the standby must have room).
    pub players: usize,
    /// The `MatchSnapshot` format the owner writes (the standby must read it).
    pub snapshot_format: u16,
    /// The owner's UDP address (a fallback for clients if the standby dies early).
    pub from_udp: SocketAddr,
}

/// The standby's yes to a prepare.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Prepared {
    /// Its UDP address for players.
    pub udp: SocketAddr,
    /// Who it is in leases: the commit is sealed for it alone.
    pub instance: String,
    /// This prepare's id: the commit must carry it, once.
    pub handoff_id: u64,
}

/// How far a prepare has come (`GET /handoff/prepared`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrepareProgress {
    /// The prepare asked about.
    pub handoff_id: u64,
    /// Clients connected ahead.
    pub connected: usize,
}

/// What a sealed snapshot is for: exactly one commit of one prepare.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commit {
    /// The standby it is sealed for ([`Prepared::instance`]).
    pub recipient: String,
    /// The match.
    pub match_id: String,
    /// The epoch the snapshot was written at; the recipient takes epoch + 1.
    pub epoch: u64,
    /// The prepare it commits ([`Prepared::handoff_id`]).
    pub handoff_id: u64,
    /// Unix ms after which the recipient must not act on it.
    pub deadline_unix_ms: u64,
    /// The old owner's UDP address.
    pub from_udp: SocketAddr,
}

/// What a standby answers when it took the match.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Accepted {
    /// The standby's UDP address for players.
    pub udp: SocketAddr,
    /// The epoch it owns the match at.
    pub epoch: u64,
    /// The tick it resumed from.
    pub tick: u64,
}

/// Why a sealed snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Shorter than a nonce and a tag.
    #[error("sealed snapshot of {0} bytes is too short")]
    TooShort(usize),
    /// The tag did not verify: another fleet's key, or altered bytes.
    #[error("sealed snapshot did not authenticate (another fleet's key, or altered)")]
    Forged,
    /// Authenticated, but the commit inside does not parse.
    #[error("sealed snapshot's commit is malformed: {0}")]
    Malformed(String),
}

fn transit_key(private_key: &Key) -> Key {
    blake3::derive_key(CONTEXT, private_key)
}

/// Seals snapshot bytes for one commit.
pub fn seal(private_key: &Key, commit: &Commit, snapshot: &[u8]) -> Vec<u8> {
    let commit_json = serde_json::to_vec(commit).unwrap_or_default();
    let mut nonce = [0u8; 24];
    fill_random(&mut nonce);
    let mut out = Vec::with_capacity(24 + 4 + commit_json.len() + snapshot.len() + 16);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&(commit_json.len() as u32).to_le_bytes());
    out.extend_from_slice(&commit_json);
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

/// Opens a sealed snapshot: the commit it is for, and the snapshot bytes.
pub fn open(private_key: &Key, sealed: &[u8]) -> Result<(Commit, Vec<u8>), SealError> {
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
    let Some((len, rest)) = plain.split_first_chunk::<4>() else {
        return Err(SealError::Malformed("no commit length".into()));
    };
    let len = u32::from_le_bytes(*len) as usize;
    if len > MAX_COMMIT_BYTES || len > rest.len() {
        return Err(SealError::Malformed(format!("commit of {len} bytes")));
    }
    let commit =
        serde_json::from_slice(&rest[..len]).map_err(|e| SealError::Malformed(e.to_string()))?;
    Ok((commit, rest[len..].to_vec()))
}

/// Phase one: asks the standby at `to` (its admin `host:port`) to get ready.
pub async fn prepare(
    to: &str,
    admin_token: Option<&str>,
    request: &PrepareRequest,
) -> anyhow::Result<Prepared> {
    let body = serde_json::to_vec(request)?;
    let (status, answer) = call(to, "POST", "/handoff/prepare", admin_token, body, &[])
        .await
        .and_then(|r| r.context("no answer"))
        .with_context(|| format!("standby {to} did not answer the prepare"))?;
    expect_json(to, "prepare", status, &answer)
}

/// How many clients have connected ahead to the standby for prepare `handoff_id`.
pub async fn progress(
    to: &str,
    admin_token: Option<&str>,
    handoff_id: u64,
) -> anyhow::Result<PrepareProgress> {
    let path = format!("/handoff/prepared?handoff_id={handoff_id}");
    let (status, answer) = call(to, "GET", &path, admin_token, Vec::new(), &[])
        .await
        .and_then(|r| r.context("no answer"))?;
    expect_json(to, "progress", status, &answer)
}

/// Phase two: sends the sealed snapshot. The answer is only informative: the store
/// decides the outcome.
pub async fn commit(
    to: &str,
    admin_token: Option<&str>,
    sealed: Vec<u8>,
    frozen_at_unix_us: u64,
) -> anyhow::Result<Accepted> {
    let frozen = frozen_at_unix_us.to_string();
    let headers = [(FROZEN_AT_HEADER, frozen.as_str())];
    let answer = tokio::time::timeout(
        COMMIT_TIMEOUT,
        call(to, "POST", "/match", admin_token, sealed, &headers),
    )
    .await
    .map_err(|_| anyhow!("standby {to} did not answer the commit within {COMMIT_TIMEOUT:?}"))?;
    let (status, body) = answer?.context("no answer")?;
    expect_json(to, "commit", status, &body)
}

fn expect_json<T: for<'de> Deserialize<'de>>(
    to: &str,
    what: &str,
    status: hyper::StatusCode,
    body: &[u8],
) -> anyhow::Result<T> {
    if !status.is_success() {
        bail!(
            "standby {to} refused the {what} ({status}): {}",
            String::from_utf8_lossy(body)
        );
    }
    serde_json::from_slice(body)
        .with_context(|| format!("standby {to}'s answer to the {what} is not the expected JSON"))
}

/// One HTTP/1.1 request to a loopback or fleet admin API, bounded by [`PREPARE_TIMEOUT`]
/// for everything but a commit (which has its own bound). Failures are worded for the
/// standby (a thin wrapper over [`crate::http::request`]).
async fn call(
    to: &str,
    method: &str,
    path: &str,
    admin_token: Option<&str>,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> anyhow::Result<Option<(hyper::StatusCode, Bytes)>> {
    use crate::http::RequestError;
    let bearer = admin_token.map(|token| format!("Bearer {token}"));
    let mut all = vec![(CONTENT_TYPE.as_str(), "application/octet-stream")];
    all.extend_from_slice(headers);
    if let Some(bearer) = &bearer {
        all.push((AUTHORIZATION.as_str(), bearer.as_str()));
    }
    let timeout = (path != "/match").then_some(PREPARE_TIMEOUT);
    let error = match crate::http::request(to, method, path, &all, body, timeout).await {
        Ok(answer) => return Ok(Some(answer)),
        Err(error) => error,
    };
    Err(match error.downcast::<RequestError>() {
        Ok(RequestError::Connect { source, .. }) => anyhow::Error::new(source)
            .context(format!("cannot reach the standby's admin API at {to}")),
        Ok(RequestError::Handshake { source, .. }) => {
            anyhow::Error::new(source).context("HTTP handshake with the standby failed")
        }
        Ok(RequestError::Send { source, .. }) => {
            anyhow::Error::new(source).context("the request to the standby failed")
        }
        Ok(RequestError::Build { source, .. }) => source.into(),
        Ok(RequestError::Body { source, .. }) => source.into(),
        Ok(RequestError::Timeout { .. }) => {
            anyhow!("standby {to} did not answer within {PREPARE_TIMEOUT:?}")
        }
        Err(other) => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit() -> Commit {
        Commit {
            recipient: "pid1@127.0.0.1:1".into(),
            match_id: "m".into(),
            epoch: 3,
            handoff_id: 99,
            deadline_unix_ms: 1234,
            from_udp: "127.0.0.1:7777".parse().expect("address"),
        }
    }

    #[test]
    fn only_the_same_fleet_key_opens_a_sealed_snapshot_and_the_commit_travels_inside() {
        let key = [7u8; 32];
        let sealed = seal(&key, &commit(), b"snapshot bytes");
        let (opened, bytes) = open(&key, &sealed).expect("opens");
        assert_eq!(opened, commit());
        assert_eq!(bytes, b"snapshot bytes");
        assert!(matches!(open(&[8u8; 32], &sealed), Err(SealError::Forged)));
        // Altering the commit (say, the recipient) breaks the tag: it cannot be redirected.
        let mut altered = sealed.clone();
        altered[30] ^= 1;
        assert!(matches!(open(&key, &altered), Err(SealError::Forged)));
        assert!(matches!(
            open(&key, &sealed[..20]),
            Err(SealError::TooShort(20))
        ));
    }
}
