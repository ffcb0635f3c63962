//! What went wrong, in words a user can act on: why a session never connected
//! ([`ConnectFailure`]) and why it lost touch with its server ([`Interruption`]).
//!
//! netcode.io servers answer nothing to a request they cannot read: a token sealed with
//! another private key, for another protocol id, or not listing the server's own address
//! all look, from the client, exactly like a server that is down. So the first connect
//! gives up on an address after [`CONNECT_ATTEMPT_TIMEOUT`](super::CONNECT_ATTEMPT_TIMEOUT)
//! of silence (not the token's timeout, 5 to 10 s) and says which of those it likely is.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use arena_shared::netcode::ClientState;

/// Why a session never connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No server answered the connection requests: a wrong key or protocol id, a token
    /// for another address, or a server that is down or unreachable.
    NoAnswer {
        /// The last address tried.
        server: SocketAddr,
        /// How many addresses the token lists (all were tried).
        servers: usize,
    },
    /// The server answered with a denial: it is full, or it does not admit (a standby
    /// that holds no match), or it refused the token (already used, say).
    Denied {
        /// The last address tried.
        server: SocketAddr,
    },
    /// The server answered the request (so key and protocol id are right), then went
    /// silent during the handshake.
    HandshakeTimedOut {
        /// The server.
        server: SocketAddr,
    },
    /// The token expired before a server accepted it.
    TokenExpired,
    /// The token could not be read.
    InvalidToken,
}

impl ConnectFailure {
    /// The failure a final netcode state means; `None` for a state that is not a
    /// failure to connect.
    pub fn from_state(
        state: ClientState,
        server: Option<SocketAddr>,
        servers: usize,
    ) -> Option<Self> {
        let server = server.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        Some(match state {
            ClientState::RequestTimedOut => Self::NoAnswer { server, servers },
            ClientState::Denied => Self::Denied { server },
            ClientState::ResponseTimedOut => Self::HandshakeTimedOut { server },
            ClientState::TokenExpired => Self::TokenExpired,
            ClientState::InvalidToken => Self::InvalidToken,
            ClientState::ConnectionTimedOut
            | ClientState::Disconnected
            | ClientState::SendingRequest
            | ClientState::SendingResponse
            | ClientState::Connected => return None,
        })
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoAnswer { server, servers } => {
                if *servers > 1 {
                    write!(
                        f,
                        "no answer from any of the token's {servers} servers (last {server})"
                    )?;
                } else {
                    write!(f, "no answer from {server}")?;
                }
                write!(f, ": wrong key or protocol id, or the server is down")
            }
            Self::Denied { server } => write!(
                f,
                "{server} denied the connection: the server is full or refused the token"
            ),
            Self::HandshakeTimedOut { server } => write!(
                f,
                "{server} answered, then went silent during the handshake (overloaded or stopping?)"
            ),
            Self::TokenExpired => write!(
                f,
                "the connect token expired before a server accepted it (is this machine's clock right?)"
            ),
            Self::InvalidToken => write!(f, "the connect token could not be read"),
        }
    }
}

impl std::error::Error for ConnectFailure {}

/// Why a connected session lost touch with its server: the first thing that went wrong
/// since its last snapshot. Kept until a snapshot arrives again (from that server or the
/// one the session reconnected to), so it says what happened even after reconnect rounds
/// to dead addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interruption {
    /// The server it was connected (or connecting) to.
    pub server: Option<SocketAddr>,
    /// What happened.
    pub cause: InterruptionCause,
    /// When the session noticed.
    pub at: Duration,
}

/// What interrupted a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptionCause {
    /// The connected server sent nothing for this long (the session then reconnects, if
    /// it holds a reconnect token).
    Silent(Duration),
    /// The server sent disconnect packets: it stopped, or dropped this client.
    Disconnected,
    /// netcode gave the connection up after the token's timeout of silence.
    TimedOut,
    /// A connection to a new server (a redirect's) failed this way.
    Failed(ClientState),
}

impl fmt::Display for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let server = self
            .server
            .map_or_else(|| "the server".to_owned(), |s| format!("server {s}"));
        match self.cause {
            InterruptionCause::Silent(quiet) => write!(
                f,
                "{server} stopped answering (nothing for {:.1} s)",
                quiet.as_secs_f64()
            ),
            InterruptionCause::Disconnected => write!(
                f,
                "{server} disconnected this client (it stopped, or dropped the connection)"
            ),
            InterruptionCause::TimedOut => {
                write!(f, "{server} stopped answering (the connection timed out)")
            }
            InterruptionCause::Failed(state) => write!(
                f,
                "connecting to {server} failed: {}",
                ConnectFailure::from_state(state, self.server, 1)
                    .map_or_else(|| format!("{state:?}"), |failure| failure.to_string())
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_says_what_is_likely_wrong() {
        let server = SocketAddr::from(([127, 0, 0, 1], 7777));
        let text = |state| {
            ConnectFailure::from_state(state, Some(server), 1)
                .map(|f| f.to_string())
                .unwrap_or_default()
        };
        assert_eq!(
            text(ClientState::RequestTimedOut),
            "no answer from 127.0.0.1:7777: wrong key or protocol id, or the server is down"
        );
        assert!(text(ClientState::Denied).contains("the server is full or refused the token"));
        assert!(text(ClientState::TokenExpired).contains("expired"));
        assert_eq!(
            ConnectFailure::from_state(ClientState::Connected, None, 1),
            None
        );
        let lost = Interruption {
            server: Some(server),
            cause: InterruptionCause::Silent(Duration::from_millis(1000)),
            at: Duration::ZERO,
        };
        assert_eq!(
            lost.to_string(),
            "server 127.0.0.1:7777 stopped answering (nothing for 1.0 s)"
        );
    }
}
