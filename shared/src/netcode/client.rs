//! The netcode.io client state machine (sans-IO).
//!
//! # Calling order
//!
//! Like the server: on each wake-up the driver reads the clock once, feeds every datagram
//! to [`Client::handle_packet`] (a payload comes back at once), calls [`Client::update`],
//! queues payloads with [`Client::send_payload`], and drains [`Client::poll_transmit`].
//! The client starts connecting as soon as it is made; watch [`Client::state`].

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use super::packet::{AllowedTypes, MAX_PACKET_BYTES, Packet, PacketError, read_encrypted_packet};
use super::replay::ReplayProtection;
use super::token::ConnectToken;
use super::{
    CHALLENGE_TOKEN_BYTES, NUM_DISCONNECT_PACKETS, SEND_INTERVAL, Transmit, timeout_from_seconds,
};

/// The standard client states. The failures are final; `Disconnected` too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientState {
    /// The token expired before a server accepted it.
    TokenExpired,
    /// The token could not be read.
    InvalidToken,
    /// A connected server went silent for the token's timeout.
    ConnectionTimedOut,
    /// No server answered our challenge response in time.
    ResponseTimedOut,
    /// No server answered our connection request in time.
    RequestTimedOut,
    /// Every server refused (full).
    Denied,
    /// Not connected: never started, or disconnected cleanly by either side.
    Disconnected,
    /// Sending connection requests to the current server.
    SendingRequest,
    /// Sending challenge responses to the current server.
    SendingResponse,
    /// Connected: payloads flow.
    Connected,
}

impl ClientState {
    /// The reference's numeric code (−6..3), for logs and interop.
    pub fn code(self) -> i32 {
        match self {
            Self::TokenExpired => -6,
            Self::InvalidToken => -5,
            Self::ConnectionTimedOut => -4,
            Self::ResponseTimedOut => -3,
            Self::RequestTimedOut => -2,
            Self::Denied => -1,
            Self::Disconnected => 0,
            Self::SendingRequest => 1,
            Self::SendingResponse => 2,
            Self::Connected => 3,
        }
    }

    /// Whether this is a failure state.
    pub fn is_error(self) -> bool {
        self.code() < 0
    }

    /// Whether the client is still trying to connect.
    pub fn is_connecting(self) -> bool {
        matches!(self, Self::SendingRequest | Self::SendingResponse)
    }
}

/// Why a payload could not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientSendError {
    /// Payloads go only over a connection.
    #[error("not connected (state {0:?})")]
    NotConnected(ClientState),
    /// The payload is empty or too large.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// The netcode.io client. See the module docs for the calling order.
#[derive(Debug)]
pub struct Client {
    /// The token being used; `None` if it could not be read.
    token: Option<ConnectToken>,
    state: ClientState,
    /// Which of the token's addresses is being tried.
    server_index: usize,
    /// Every packet sent uses one, requests included (as the reference does).
    sequence: u64,
    replay: ReplayProtection,
    /// Start of the current server attempt: the token's lifetime is measured from here.
    attempt_start: Duration,
    last_send: Option<Duration>,
    last_receive: Duration,
    /// The challenge to echo while in `SendingResponse`.
    challenge: Option<(u64, [u8; CHALLENGE_TOKEN_BYTES])>,
    client_index: u32,
    max_clients: u32,
    transmits: VecDeque<Transmit>,
    /// Datagrams this client dropped (forged, replayed, from elsewhere, unexpected).
    dropped: u64,
    /// The longest to wait for an answer from one address while connecting, if shorter
    /// than the token's timeout: a dead address then costs this, not the whole timeout.
    attempt_timeout: Option<Duration>,
    /// When the current connection was established (`None` while not connected).
    connected_at: Option<Duration>,
}

impl Client {
    /// A client that starts connecting with `token_bytes` (the 2048-byte token).
    ///
    /// An unreadable token gives a client in [`ClientState::InvalidToken`].
    pub fn new(now: Duration, token_bytes: &[u8]) -> Self {
        match ConnectToken::read(token_bytes) {
            Ok(token) => Self::with_token(now, token),
            Err(error) => {
                tracing::debug!(%error, "connect token refused");
                let mut client = Self::blank(now, None);
                client.state = ClientState::InvalidToken;
                client
            }
        }
    }

    /// A client that starts connecting with an already parsed token.
    pub fn with_token(now: Duration, token: ConnectToken) -> Self {
        Self::with_token_from(now, token, 0)
    }

    /// Like [`Client::with_token`], but starts with the token's address number `first`
    /// (skipping a server known to be gone); clamped to the list.
    pub fn with_token_from(now: Duration, token: ConnectToken, first: usize) -> Self {
        let first = first.min(token.server_addresses.len().saturating_sub(1));
        let mut client = Self::blank(now, Some(token));
        client.start_attempt(now, first);
        client
    }

    /// The token's server addresses, in order.
    pub fn server_addresses(&self) -> &[SocketAddr] {
        self.token
            .as_ref()
            .map_or(&[], |t| t.server_addresses.as_slice())
    }

    fn blank(now: Duration, token: Option<ConnectToken>) -> Self {
        Self {
            token,
            state: ClientState::Disconnected,
            server_index: 0,
            sequence: 0,
            replay: ReplayProtection::default(),
            attempt_start: now,
            last_send: None,
            last_receive: now,
            challenge: None,
            client_index: 0,
            max_clients: 0,
            transmits: VecDeque::new(),
            dropped: 0,
            attempt_timeout: None,
            connected_at: None,
        }
    }

    /// Caps how long the client waits for an answer from one address while connecting
    /// before it tries the token's next one (the token's timeout still governs a connected
    /// server's silence, and an attempt never waits longer than it). For a client that
    /// looks for whichever of several servers is alive: a dead address costs `limit`, not
    /// the token's whole timeout.
    pub fn set_attempt_timeout(&mut self, limit: Duration) {
        self.attempt_timeout = Some(limit);
    }

    /// Takes one datagram. Returns the payload if it was one, decrypted in `packet`.
    pub fn handle_packet<'a>(
        &mut self,
        now: Duration,
        from: SocketAddr,
        packet: &'a mut [u8],
    ) -> Option<&'a [u8]> {
        let accepted = self.process(now, from, packet);
        if accepted.is_err() {
            self.dropped += 1;
        }
        accepted.ok().flatten()
    }

    fn process<'a>(
        &mut self,
        now: Duration,
        from: SocketAddr,
        packet: &'a mut [u8],
    ) -> Result<Option<&'a [u8]>, ()> {
        let Some(token) = &self.token else {
            return Err(());
        };
        if !self.state.is_connecting() && self.state != ClientState::Connected {
            return Err(());
        }
        if Some(from) != self.server_address() {
            return Err(());
        }
        let (_, packet) = read_encrypted_packet(
            packet,
            token.protocol_id,
            &token.server_to_client_key,
            AllowedTypes::CLIENT,
            Some(&mut self.replay),
        )
        .map_err(|_| ())?;
        match (self.state, packet) {
            (
                ClientState::SendingRequest | ClientState::SendingResponse,
                Packet::ConnectionDenied,
            ) => {
                tracing::debug!(server = %from, "connection denied");
                self.next_server(now, ClientState::Denied);
            }
            (
                ClientState::SendingRequest,
                Packet::ConnectionChallenge {
                    token_sequence,
                    token_data,
                },
            ) => {
                self.challenge = Some((token_sequence, *token_data));
                self.state = ClientState::SendingResponse;
                self.last_receive = now;
                self.last_send = None;
            }
            (
                ClientState::SendingResponse,
                Packet::KeepAlive {
                    client_index,
                    max_clients,
                },
            ) => {
                self.client_index = client_index;
                self.max_clients = max_clients;
                self.state = ClientState::Connected;
                self.last_receive = now;
                self.connected_at = Some(now);
                tracing::debug!(server = %from, client_index, "connected");
            }
            (ClientState::Connected, Packet::KeepAlive { .. }) => self.last_receive = now,
            (ClientState::Connected, Packet::Payload(payload)) => {
                self.last_receive = now;
                return Ok(Some(payload));
            }
            (ClientState::Connected, Packet::Disconnect) => {
                tracing::debug!(server = %from, "server disconnected us");
                self.state = ClientState::Disconnected;
            }
            _ => return Err(()),
        }
        Ok(None)
    }

    /// Sends requests, responses and keep-alives at 10 Hz; runs the timeouts.
    pub fn update(&mut self, now: Duration) {
        let Some(token) = &self.token else {
            return;
        };
        let timeout = timeout_from_seconds(token.timeout_seconds);
        let lifetime = Duration::from_secs(
            token
                .expire_timestamp
                .saturating_sub(token.create_timestamp),
        );
        let silence = now.saturating_sub(self.last_receive);
        let silent_too_long = timeout.is_some_and(|timeout| silence >= timeout);
        match self.state {
            ClientState::SendingRequest | ClientState::SendingResponse => {
                if now.saturating_sub(self.attempt_start) >= lifetime {
                    self.state = ClientState::TokenExpired;
                    return;
                }
                let attempt_over = self.attempt_timeout.is_some_and(|limit| silence >= limit);
                if silent_too_long || attempt_over {
                    let failure = if self.state == ClientState::SendingRequest {
                        ClientState::RequestTimedOut
                    } else {
                        ClientState::ResponseTimedOut
                    };
                    self.next_server(now, failure);
                    if !self.state.is_connecting() {
                        return;
                    }
                }
            }
            ClientState::Connected => {
                if silent_too_long {
                    self.state = ClientState::ConnectionTimedOut;
                    return;
                }
            }
            _ => return,
        }
        if self
            .last_send
            .is_some_and(|last| now.saturating_sub(last) < SEND_INTERVAL)
        {
            return;
        }
        match self.state {
            ClientState::SendingRequest => self.send_request(now),
            ClientState::SendingResponse => {
                if let Some((token_sequence, token_data)) = self.challenge {
                    self.send(
                        now,
                        &Packet::ConnectionResponse {
                            token_sequence,
                            token_data: &token_data,
                        },
                    );
                }
            }
            ClientState::Connected => self.send(
                now,
                &Packet::KeepAlive {
                    client_index: 0,
                    max_clients: 0,
                },
            ),
            _ => {}
        }
    }

    /// Queues one payload (1 to 1200 bytes) to the server.
    pub fn send_payload(&mut self, now: Duration, payload: &[u8]) -> Result<(), ClientSendError> {
        if self.state != ClientState::Connected {
            return Err(ClientSendError::NotConnected(self.state));
        }
        if payload.is_empty() || payload.len() > super::MAX_PAYLOAD_BYTES {
            return Err(PacketError::PayloadSize(payload.len()).into());
        }
        self.send(now, &Packet::Payload(payload));
        Ok(())
    }

    /// Leaves cleanly: 10 redundant disconnect packets when connected, then `Disconnected`.
    pub fn disconnect(&mut self, now: Duration) {
        if self.state == ClientState::Connected {
            for _ in 0..NUM_DISCONNECT_PACKETS {
                self.send(now, &Packet::Disconnect);
            }
        }
        if self.state.is_connecting() || self.state == ClientState::Connected {
            self.state = ClientState::Disconnected;
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Where the client stands.
    pub fn state(&self) -> ClientState {
        self.state
    }

    /// Whether payloads flow.
    pub fn is_connected(&self) -> bool {
        self.state == ClientState::Connected
    }

    /// The server being tried or connected to.
    pub fn server_address(&self) -> Option<SocketAddr> {
        self.token
            .as_ref()?
            .server_addresses
            .get(self.server_index)
            .copied()
    }

    /// Our slot on the server, once connected.
    pub fn client_index(&self) -> u32 {
        self.client_index
    }

    /// The server's slot count, once connected.
    pub fn max_clients(&self) -> u32 {
        self.max_clients
    }

    /// Datagrams dropped: forged, replayed, from another address, or unexpected.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// When the current connection was established; `None` while not connected.
    pub fn connected_at(&self) -> Option<Duration> {
        self.connected_at.filter(|_| self.is_connected())
    }

    fn start_attempt(&mut self, now: Duration, server_index: usize) {
        self.server_index = server_index;
        self.state = ClientState::SendingRequest;
        self.attempt_start = now;
        self.last_receive = now;
        self.last_send = None;
        self.challenge = None;
        self.connected_at = None;
        self.replay.reset();
    }

    /// Moves to the token's next address, or ends in `failure` when none is left.
    fn next_server(&mut self, now: Duration, failure: ClientState) {
        let count = self.token.as_ref().map_or(0, |t| t.server_addresses.len());
        if self.server_index + 1 < count {
            let next = self.server_index + 1;
            tracing::debug!(?failure, next = ?self.token.as_ref().map(|t| t.server_addresses[next]), "trying next server");
            self.start_attempt(now, next);
        } else {
            self.state = failure;
        }
    }

    fn send_request(&mut self, now: Duration) {
        let (Some(token), Some(destination)) = (&self.token, self.server_address()) else {
            return;
        };
        let mut contents = vec![0u8; super::CONNECTION_REQUEST_BYTES];
        if token.connection_request().write(&mut contents).is_ok() {
            self.sequence += 1;
            self.last_send = Some(now);
            self.transmits.push_back(Transmit {
                destination,
                contents,
            });
        }
    }

    fn send(&mut self, now: Duration, packet: &Packet<'_>) {
        let (Some(token), Some(destination)) = (&self.token, self.server_address()) else {
            return;
        };
        let mut contents = vec![0u8; MAX_PACKET_BYTES];
        // Packets built here are well-formed by construction; a failure would be a bug in
        // this file, and dropping the packet is the safe answer.
        if let Ok(len) = packet.write(
            &mut contents,
            self.sequence,
            &token.client_to_server_key,
            token.protocol_id,
        ) {
            contents.truncate(len);
            self.sequence += 1;
            self.last_send = Some(now);
            self.transmits.push_back(Transmit {
                destination,
                contents,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcode::{Server, ServerConfig, TokenParams};

    const PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;
    const KEY: [u8; 32] = [7; 32];
    const START: Duration = Duration::from_secs(1_800_000_000);
    const STEP: Duration = Duration::from_millis(10);

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 7777))
    }

    fn token(addresses: Vec<SocketAddr>) -> ConnectToken {
        ConnectToken::generate(
            &TokenParams {
                protocol_id: PROTOCOL_ID,
                create_timestamp: START.as_secs(),
                expire_timestamp: START.as_secs() + 60,
                timeout_seconds: 5,
                public_addresses: addresses,
                internal_addresses: None,
                client_id: 9,
                user_data: [0; 256],
            },
            &KEY,
        )
        .unwrap()
    }

    /// Steps a client against one live server (other addresses are dead) until it is
    /// connected or `limit` passes; returns when it connected.
    fn connect(client: &mut Client, live: SocketAddr, limit: Duration) -> Option<Duration> {
        let me = SocketAddr::from(([10, 1, 0, 1], 40000));
        let mut server = Server::new(ServerConfig {
            protocol_id: PROTOCOL_ID,
            private_key: KEY,
            max_clients: 4,
            addresses: vec![live],
        });
        let mut now = START;
        while now < START + limit {
            client.update(now);
            while let Some(mut t) = client.poll_transmit() {
                if t.destination == live {
                    let _ = server.handle_packet(now, me, &mut t.contents);
                }
            }
            server.update(now);
            while let Some(mut t) = server.poll_transmit() {
                let _ = client.handle_packet(now, live, &mut t.contents);
            }
            if client.is_connected() {
                return Some(now);
            }
            now += STEP;
        }
        None
    }

    #[test]
    fn an_attempt_timeout_moves_past_a_dead_address_quickly() {
        let (dead, live) = (addr(1), addr(2));
        let mut client = Client::with_token(START, token(vec![dead, live]));
        client.set_attempt_timeout(Duration::from_secs(1));
        let at = connect(&mut client, live, Duration::from_secs(3)).unwrap();
        let took = at - START;
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_millis(1200),
            "{took:?}"
        );
        assert_eq!(client.server_address(), Some(live));
        assert_eq!(client.connected_at(), Some(at));
    }

    #[test]
    fn without_an_attempt_timeout_a_dead_address_costs_the_token_timeout() {
        let (dead, live) = (addr(1), addr(2));
        let mut client = Client::with_token(START, token(vec![dead, live]));
        assert_eq!(connect(&mut client, live, Duration::from_secs(3)), None);
        assert_eq!(client.server_address(), Some(dead));
        assert_eq!(client.connected_at(), None);
        let mut client = Client::with_token(START, token(vec![dead, live]));
        let took = connect(&mut client, live, Duration::from_secs(7)).unwrap() - START;
        assert!(took >= Duration::from_secs(5), "{took:?}");
    }
}
