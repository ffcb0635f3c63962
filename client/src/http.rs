//! A minimal HTTP/1.1 client for the admin API (tokens, status). Plain HTTP only: the admin
//! API listens on loopback or a private network.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// Connect, send and read all within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to `url` (`http://host:port/path`) and returns the status and body.
pub async fn request(
    method: &str,
    url: &str,
    body: Option<String>,
) -> anyhow::Result<(u16, Bytes)> {
    request_with(method, url, body, None).await
}

/// Like [`request`], with `Authorization: Bearer <bearer>`.
pub async fn request_with(
    method: &str,
    url: &str,
    body: Option<String>,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    request_bytes(
        method,
        url,
        body.map(|b| (Bytes::from(b), "application/json")),
        bearer,
    )
    .await
}

/// Like [`request_with`], with a body of any bytes and its content type.
pub async fn request_bytes(
    method: &str,
    url: &str,
    body: Option<(Bytes, &str)>,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    tokio::time::timeout(REQUEST_TIMEOUT, request_inner(method, url, body, bearer))
        .await
        .map_err(|_| anyhow!("{method} {url}: no answer within {REQUEST_TIMEOUT:?}"))?
}

async fn request_inner(
    method: &str,
    url: &str,
    body: Option<(Bytes, &str)>,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("cannot reach the admin API at {authority}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP handshake failed")?;
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, authority);
    if let Some((_, content_type)) = &body {
        builder = builder.header(CONTENT_TYPE, *content_type);
    }
    if let Some(token) = bearer {
        builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = builder.body(Full::new(body.map(|(b, _)| b).unwrap_or_default()))?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("{method} {url} failed"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[derive(Deserialize)]
struct TokenAnswer {
    token: String,
}

/// Asks the admin API at `admin_url` for a connect token for `name`, as a spectator when
/// `spectate`, sending `Authorization: Bearer <bearer>` when given (the server's
/// `--admin-token`). A 401 says whether a token is missing or was refused.
pub async fn fetch_token_with(
    admin_url: &str,
    name: &str,
    spectate: bool,
    bearer: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let url = format!("{}/token", admin_url.trim_end_matches('/'));
    let body = serde_json::json!({ "name": name, "spectate": spectate }).to_string();
    let (status, answer) = request_with("POST", &url, Some(body), bearer).await?;
    match (status, bearer) {
        (200, _) => {}
        (401, None) => bail!(
            "POST {url} answered 401: the admin API wants a token: pass --admin-token or set ARENA_ADMIN_TOKEN"
        ),
        (401, Some(_)) => bail!(
            "POST {url} answered 401: the admin API refused the admin token (--admin-token or ARENA_ADMIN_TOKEN): it is not the server's"
        ),
        _ => bail!(
            "POST {url} answered {status}: {}",
            String::from_utf8_lossy(&answer)
        ),
    }
    let answer: TokenAnswer = serde_json::from_slice(&answer)
        .with_context(|| format!("POST {url}: unexpected answer"))?;
    base64::engine::general_purpose::STANDARD
        .decode(answer.token)
        .with_context(|| format!("POST {url}: token is not base64"))
}
