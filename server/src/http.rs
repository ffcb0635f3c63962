//! A small HTTP/1.1 client: one request per connection, plain HTTP only (a loopback or
//! fleet admin API, a pod's sidecar). The handoff's calls and the Agones SDK client share
//! it; each words its failures for its own peer.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;

/// Why a [`request`] failed, by step, so that a caller can word it for its peer
/// (`anyhow::Error::downcast` recovers it from [`request`]'s error).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// No TCP connection to the address.
    #[error("cannot reach {addr}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// What the connect said.
        #[source]
        source: std::io::Error,
    },
    /// Connected, but the HTTP/1.1 handshake failed.
    #[error("HTTP handshake with {addr} failed")]
    Handshake {
        /// The address dialled.
        addr: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The method, path or a header does not form a valid request.
    #[error("invalid request to {addr}")]
    Build {
        /// The address dialled.
        addr: String,
        /// What the request builder said.
        #[source]
        source: hyper::http::Error,
    },
    /// The request was not sent or no answer's head came back.
    #[error("the request to {addr} failed")]
    Send {
        /// The address dialled.
        addr: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// The answer's head came, its body did not.
    #[error("reading the answer from {addr} failed")]
    Body {
        /// The address dialled.
        addr: String,
        /// What hyper said.
        #[source]
        source: hyper::Error,
    },
    /// Nothing complete came back within the caller's bound.
    #[error("{addr} did not answer within {limit:?}")]
    Timeout {
        /// The address dialled.
        addr: String,
        /// The caller's bound on connect, send and read together.
        limit: Duration,
    },
}

/// Sends one request to `addr` (`host:port`) and reads the whole answer: its status and
/// body, whatever the status. `headers` go after `Host` (which is `addr`), in order.
/// `timeout` bounds connect, send and read together; `None` leaves the bound to the
/// caller. Every error is a [`RequestError`].
pub(crate) async fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    timeout: Option<Duration>,
) -> anyhow::Result<(hyper::StatusCode, Bytes)> {
    let exchange = exchange(addr, method, path, headers, body);
    let answer = match timeout {
        None => exchange.await,
        Some(limit) => tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| RequestError::Timeout {
                addr: addr.to_owned(),
                limit,
            })
            .and_then(|answer| answer),
    };
    Ok(answer?)
}

async fn exchange(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<(hyper::StatusCode, Bytes), RequestError> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|source| RequestError::Connect {
            addr: addr.to_owned(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| RequestError::Handshake {
            addr: addr.to_owned(),
            source,
        })?;
    // The connection task ends when the exchange does (the sender is dropped).
    tokio::spawn(connection);
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, addr);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|source| RequestError::Build {
            addr: addr.to_owned(),
            source,
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| RequestError::Send {
            addr: addr.to_owned(),
            source,
        })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|source| RequestError::Body {
            addr: addr.to_owned(),
            source,
        })?
        .to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released_port() -> String {
        let Ok(listener) = std::net::TcpListener::bind("127.0.0.1:0") else {
            panic!("cannot bind a loopback port");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("a bound socket has no address");
        };
        addr.to_string()
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_failure_naming_the_address() {
        let addr = released_port();
        let Err(error) = request(&addr, "GET", "/", &[], Vec::new(), None).await else {
            panic!("nothing listens on {addr}");
        };
        assert!(matches!(
            error.downcast_ref::<RequestError>(),
            Some(RequestError::Connect { .. })
        ));
        assert!(error.to_string().contains(&addr), "{error:#}");
    }

    #[tokio::test]
    async fn a_peer_that_never_answers_is_a_timeout_after_the_bound() {
        let Ok(listener) = tokio::net::TcpListener::bind("127.0.0.1:0").await else {
            panic!("cannot bind a loopback port");
        };
        let Ok(addr) = listener.local_addr() else {
            panic!("a bound socket has no address");
        };
        // Accepts, reads nothing, answers nothing; holds the connection until the test ends.
        let silent = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        let limit = Duration::from_millis(200);
        let addr = addr.to_string();
        let Err(error) = request(&addr, "GET", "/", &[], Vec::new(), Some(limit)).await else {
            panic!("a silent peer must time out");
        };
        assert!(matches!(
            error.downcast_ref::<RequestError>(),
            Some(RequestError::Timeout { limit: l, .. }) if *l == limit
        ));
        silent.abort();
    }
}
