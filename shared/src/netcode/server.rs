//! The netcode.io server state machine (sans-IO).
//!
//! # Calling order
//!
//! A driver owns one [`Server`] and, on every wake-up, reads the clock once and then:
//! 1. [`Server::handle_packet`] for each datagram that arrived (a payload comes back at
//!    once, borrowing the datagram buffer);
//! 2. [`Server::update`] to run keep-alives and timeouts;
//! 3. [`Server::send_payload`] for what the game wants to send;
//! 4. drains [`Server::poll_event`] (connects, disconnects) and [`Server::poll_transmit`]
//!    (datagrams to send), handing each datagram's buffer back with [`Server::recycle`]
//!    once it is sent.
//!
//! Time is a [`Duration`] since the unix epoch, passed in: token expiry is compared with
//! its seconds, timeouts with the whole value. Nothing here reads a clock or a socket.
//!
//! Remote bytes never make an error escape: every refused datagram is a counted drop
//! ([`DropReason`]), visible in [`Server::stats`], traced at `trace` level, and logged
//! (a warning for the reasons that point at a misconfigured client or an attack) at most
//! once per reason per [`DROP_LOG_INTERVAL`], the line naming the source and counting
//! the drops it stands for.
//!
//! # Floods
//!
//! Every reply is smaller than the request that caused it (no amplification), and a
//! connection request reaches the decryption of its token only if its source address
//! (IP and port) and the server as a whole are under their rates ([`REQUEST_LIMITS`]);
//! the rest are dropped as [`DropReason::RateLimited`] before any cryptography. The
//! per-source table has a fixed size, so memory does not grow with the number of sources.
//!
//! # Allocation
//!
//! Once warmed up, the per-datagram paths allocate nothing: a payload from a connected
//! client is decrypted in place and handed back borrowing the caller's buffer, and every
//! outgoing datagram is written into a buffer taken from a free list that
//! [`Server::recycle`] refills. A driver that never recycles still works; each datagram
//! then costs one allocation, as a fresh buffer.

mod limits;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use super::address::same_endpoint;
use super::packet::{
    AllowedTypes, ConnectionRequest, MAX_PACKET_BYTES, Packet, PacketError,
    read_connection_request, read_encrypted_packet,
};
use super::replay::ReplayProtection;
use super::token::{ChallengeToken, PrivateConnectToken, TokenError, fill_random};
use super::{
    CONNECT_TOKEN_PRIVATE_BYTES, Key, MAC_BYTES, NUM_DISCONNECT_PACKETS, SEND_INTERVAL,
    SERVER_GLOBAL_SEQUENCE_START, Transmit, UserData, timeout_from_seconds,
};
pub use limits::{DROP_LOG_INTERVAL, REQUEST_LIMITS, RequestLimits};
use limits::{DropLine, DropLog, DropLogLevel, RequestLimiter};

/// A client's slot on the server: stable for the connection's lifetime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientIndex(pub u32);

/// How a server is set up.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Refuses tokens and packets of any other protocol id.
    pub protocol_id: u64,
    /// Opens connect tokens; shared with the backend that mints them.
    pub private_key: Key,
    /// Slots. The reference stops at 256; Arena defaults to 1024.
    pub max_clients: usize,
    /// The addresses this server is reached at; a token must list one of them.
    pub addresses: Vec<SocketAddr>,
}

/// Why a datagram was dropped. Every drop is counted under exactly one reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Too short, or a request not exactly 1078 bytes.
    BadSize,
    /// Unknown type, bad sequence byte count, or a type a server never takes.
    BadPrefix,
    /// A request whose version info is not `NETCODE 1.02`.
    BadVersion,
    /// A request for another protocol id.
    WrongProtocolId,
    /// A tag that did not verify: forged, altered, or sealed with another key.
    DecryptFailed,
    /// A sequence already seen, or older than the replay window.
    Replayed,
    /// Authenticated, but the body size is wrong for the type.
    BadBodySize,
    /// Anything but a request from an address with neither a slot nor a pending handshake.
    UnknownAddress,
    /// A request whose token has expired.
    ExpiredToken,
    /// A token whose private part is malformed, or lists none of this server's addresses.
    BadToken,
    /// A request or response from an address or client id that is already connected.
    AlreadyConnected,
    /// A token already used from another address.
    TokenReuse,
    /// Every slot taken: the client was sent a denied packet.
    ServerFull,
    /// Too many handshakes in progress; the request was ignored.
    PendingFull,
    /// A valid request while this server admits nobody (it does not own the match):
    /// the client was sent a denied packet, so it tries its token's next address at once.
    NotAdmitting,
    /// A packet type that is valid but means nothing in this state.
    Unexpected,
    /// A connection request beyond its source address's rate or the server's overall
    /// rate of decryptions: ignored before its token is opened (see [`REQUEST_LIMITS`]).
    RateLimited,
}

impl DropReason {
    /// Every reason, in a fixed order (for metrics).
    pub const ALL: [Self; 17] = [
        Self::BadSize,
        Self::BadPrefix,
        Self::BadVersion,
        Self::WrongProtocolId,
        Self::DecryptFailed,
        Self::Replayed,
        Self::BadBodySize,
        Self::UnknownAddress,
        Self::ExpiredToken,
        Self::BadToken,
        Self::AlreadyConnected,
        Self::TokenReuse,
        Self::ServerFull,
        Self::PendingFull,
        Self::NotAdmitting,
        Self::Unexpected,
        Self::RateLimited,
    ];

    /// A snake_case name for logs, JSON and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::BadSize => "bad_size",
            Self::BadPrefix => "bad_prefix",
            Self::BadVersion => "bad_version",
            Self::WrongProtocolId => "wrong_protocol_id",
            Self::DecryptFailed => "decrypt_failed",
            Self::Replayed => "replayed",
            Self::BadBodySize => "bad_body_size",
            Self::UnknownAddress => "unknown_address",
            Self::ExpiredToken => "expired_token",
            Self::BadToken => "bad_token",
            Self::AlreadyConnected => "already_connected",
            Self::TokenReuse => "token_reuse",
            Self::ServerFull => "server_full",
            Self::PendingFull => "pending_full",
            Self::NotAdmitting => "not_admitting",
            Self::Unexpected => "unexpected",
            Self::RateLimited => "rate_limited",
        }
    }

    /// How loudly a drop is logged (at most once per [`DROP_LOG_INTERVAL`] per reason):
    /// a warning for what points at a misconfigured client (another key, protocol id or
    /// version, an expired token) or at an attack (forgeries, floods); debug for what a
    /// healthy server sees every day (duplicates, stragglers after a disconnect, clients
    /// trying a standby listed in their token).
    fn log_level(self) -> DropLogLevel {
        match self {
            Self::BadSize
            | Self::BadPrefix
            | Self::BadVersion
            | Self::WrongProtocolId
            | Self::DecryptFailed
            | Self::BadBodySize
            | Self::ExpiredToken
            | Self::BadToken
            | Self::TokenReuse
            | Self::PendingFull
            | Self::RateLimited => DropLogLevel::Warn,
            Self::ServerFull => DropLogLevel::Info,
            Self::Replayed
            | Self::UnknownAddress
            | Self::AlreadyConnected
            | Self::NotAdmitting
            | Self::Unexpected => DropLogLevel::Debug,
        }
    }

    fn from_packet_error(error: PacketError) -> Self {
        match error {
            PacketError::BadSize(_) => Self::BadSize,
            PacketError::BadPrefix(_) | PacketError::TypeNotAllowed(_) => Self::BadPrefix,
            PacketError::BadVersion => Self::BadVersion,
            PacketError::WrongProtocolId(_) => Self::WrongProtocolId,
            PacketError::Replayed(_) => Self::Replayed,
            PacketError::Decrypt => Self::DecryptFailed,
            PacketError::BadBodySize { .. } => Self::BadBodySize,
            // Write-side errors cannot come out of a reader; count them somewhere visible.
            PacketError::PayloadSize(_) | PacketError::BufferTooSmall => Self::BadSize,
        }
    }
}

/// Counters a server keeps; read them with [`Server::stats`].
#[derive(Debug, Clone, Default)]
pub struct ServerStats {
    drops: [u64; DropReason::ALL.len()],
    /// Datagrams handed to `handle_packet`.
    pub packets_received: u64,
    /// Bytes of those datagrams.
    pub bytes_received: u64,
    /// Datagrams queued for sending.
    pub packets_sent: u64,
    /// Bytes of those datagrams.
    pub bytes_sent: u64,
    /// Clients that completed the handshake.
    pub connects: u64,
    /// Clients that left, for any reason.
    pub disconnects: u64,
}

impl ServerStats {
    /// Datagrams dropped for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize]
    }

    /// Datagrams dropped for any reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Every reason with its count.
    pub fn drop_counts(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL.iter().map(|&r| (r, self.drops(r)))
    }
}

/// Why a client left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisconnectReason {
    /// The client sent a disconnect packet.
    ClientDisconnected,
    /// Nothing arrived from the client within the token's timeout.
    TimedOut,
    /// The server called [`Server::disconnect`].
    ServerDisconnected,
}

/// A change in who is connected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A client finished the handshake.
    ClientConnected {
        /// Its slot.
        client: ClientIndex,
        /// Its id from the connect token.
        client_id: u64,
        /// Where its packets come from.
        address: SocketAddr,
        /// The user data from its connect token.
        user_data: Box<UserData>,
    },
    /// A client left; its slot is free again.
    ClientDisconnected {
        /// Its former slot.
        client: ClientIndex,
        /// Its id.
        client_id: u64,
        /// Why it left.
        reason: DisconnectReason,
    },
}

/// Why the game could not send to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No client in that slot (it may have just left).
    #[error("no client in slot {0:?}")]
    NotConnected(ClientIndex),
    /// The payload is empty or larger than 1200 bytes.
    #[error(transparent)]
    Packet(#[from] PacketError),
}

/// One connected client.
#[derive(Debug)]
struct Connection {
    client_id: u64,
    address: SocketAddr,
    send_key: Key,
    receive_key: Key,
    /// Next sequence for packets to this client (per-slot space, from 0).
    sequence: u64,
    replay: ReplayProtection,
    timeout: Option<Duration>,
    last_send: Duration,
    last_receive: Duration,
    /// Until the client's first keep-alive or payload, every payload is preceded by a
    /// keep-alive so a client whose handshake keep-alive was lost still learns its slot.
    confirmed: bool,
}

/// A handshake in progress: the keys from a valid request, kept until the response.
#[derive(Debug)]
struct Pending {
    send_key: Key,
    receive_key: Key,
    timeout: Option<Duration>,
    last_access: Duration,
    /// Token expiry (unix seconds): the mapping dies with the token.
    expire_timestamp: u64,
}

/// The first address a token was seen from, kept until the token expires.
#[derive(Debug)]
struct TokenUse {
    address: SocketAddr,
    expire_timestamp: u64,
}

/// The netcode.io server. See the module docs for the calling order.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    /// Seals challenge tokens; random per process, so only this process can open them.
    challenge_key: Key,
    /// Nonce of the next challenge token.
    challenge_sequence: u64,
    /// Sequence for denied and challenge packets, which go out before a slot exists.
    /// Starts at 2^63 so its nonces never meet the per-slot ones under the same key.
    global_sequence: u64,
    slots: Vec<Option<Connection>>,
    /// Free slot numbers; the lowest is handed out first, as in the reference.
    free_slots: BTreeSet<u32>,
    by_address: HashMap<SocketAddr, ClientIndex>,
    by_client_id: HashMap<u64, ClientIndex>,
    pending: HashMap<SocketAddr, Pending>,
    /// Token tag (last 16 bytes of the sealed private part) to its first address.
    token_history: HashMap<[u8; MAC_BYTES], TokenUse>,
    transmits: VecDeque<Transmit>,
    /// Emptied datagram buffers (capacity [`MAX_PACKET_BYTES`]) handed back by the driver
    /// through [`Server::recycle`], so the send path allocates nothing once warmed up.
    free_buffers: Vec<Vec<u8>>,
    events: VecDeque<ServerEvent>,
    stats: ServerStats,
    /// Whether new connections are accepted. A process that neither owns the match nor
    /// is about to receive it denies every request (valid ones get a denied packet).
    admitting: bool,
    /// Connections admitted at most ([`Server::set_capacity`]); at most the slots.
    capacity: usize,
    /// Which connection requests may cost a decryption ([`REQUEST_LIMITS`]).
    limiter: RequestLimiter,
    /// Which drops are worth a log line ([`DROP_LOG_INTERVAL`]).
    drop_log: DropLog,
}

impl Server {
    /// A server with a fresh random challenge key.
    pub fn new(config: ServerConfig) -> Self {
        let mut challenge_key = [0u8; 32];
        fill_random(&mut challenge_key);
        Self::with_challenge_key(config, challenge_key)
    }

    /// A server with a given challenge key (reproducible tests).
    pub fn with_challenge_key(config: ServerConfig, challenge_key: Key) -> Self {
        let max_clients = config.max_clients.clamp(1, u32::MAX as usize);
        // The limiter's hash key comes from the challenge key: secret, and reproducible
        // in tests that choose the challenge key.
        let mut hash_key = [0u8; 8];
        hash_key.copy_from_slice(&challenge_key[..8]);
        let limiter = RequestLimiter::new(
            REQUEST_LIMITS,
            max_clients,
            u64::from_le_bytes(hash_key).rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
        );
        Self {
            limiter,
            drop_log: DropLog::default(),
            slots: (0..max_clients).map(|_| None).collect(),
            free_slots: (0..max_clients as u32).collect(),
            by_address: HashMap::with_capacity(max_clients),
            by_client_id: HashMap::with_capacity(max_clients),
            pending: HashMap::new(),
            token_history: HashMap::new(),
            transmits: VecDeque::new(),
            free_buffers: Vec::new(),
            events: VecDeque::new(),
            stats: ServerStats::default(),
            admitting: true,
            capacity: max_clients,
            challenge_key,
            challenge_sequence: 0,
            global_sequence: SERVER_GLOBAL_SEQUENCE_START,
            config: ServerConfig {
                max_clients,
                ..config
            },
        }
    }

    /// Admits new connections (`true`, the default) or denies every request. Existing
    /// connections are not touched.
    pub fn set_admitting(&mut self, admitting: bool) {
        self.admitting = admitting;
        if !admitting {
            self.pending.clear();
        }
    }

    /// Whether new connections are admitted.
    pub fn is_admitting(&self) -> bool {
        self.admitting
    }

    /// Admits at most `capacity` connections (clamped to the slots this server was made
    /// with): a match with fewer players than the process's slots, received by a
    /// standby. Connections beyond it are not touched; new ones are denied as when full.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.clamp(1, self.slots.len());
    }

    /// Connections admitted at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The slots this server was made with (client indices are below it).
    pub fn num_slots(&self) -> usize {
        self.slots.len()
    }

    /// No slot, or the capacity reached.
    fn full(&self) -> bool {
        self.free_slots.is_empty() || self.by_client_id.len() >= self.capacity
    }

    /// Takes one datagram. Returns the payload if it was one, decrypted in `packet`.
    pub fn handle_packet<'a>(
        &mut self,
        now: Duration,
        from: SocketAddr,
        packet: &'a mut [u8],
    ) -> Option<(ClientIndex, &'a [u8])> {
        self.stats.packets_received += 1;
        self.stats.bytes_received += packet.len() as u64;
        match self.process(now, from, packet) {
            Ok(payload) => payload,
            Err(reason) => {
                self.stats.drops[reason as usize] += 1;
                tracing::trace!(%from, reason = reason.name(), "netcode drop");
                if let Some(line) = self.drop_log.note(now, reason, from) {
                    log_drop(&line);
                }
                None
            }
        }
    }

    /// Sends keep-alives to quiet connections, times out silent clients and stale
    /// handshakes, and forgets expired tokens.
    pub fn update(&mut self, now: Duration) {
        for index in 0..self.slots.len() {
            let Some(conn) = &self.slots[index] else {
                continue;
            };
            let client = ClientIndex(index as u32);
            if conn
                .timeout
                .is_some_and(|timeout| now.saturating_sub(conn.last_receive) >= timeout)
            {
                tracing::debug!(client_id = conn.client_id, "netcode client timed out");
                self.remove_client(now, client, DisconnectReason::TimedOut);
            } else if now.saturating_sub(conn.last_send) >= SEND_INTERVAL {
                self.send_keep_alive(now, client);
            }
        }
        let now_secs = now.as_secs();
        self.pending.retain(|_, p| {
            p.expire_timestamp > now_secs
                && p.timeout
                    .is_none_or(|timeout| now.saturating_sub(p.last_access) < timeout)
        });
        self.token_history
            .retain(|_, used| used.expire_timestamp > now_secs);
        self.drop_log.flush(now, |line| log_drop(&line));
    }

    /// Queues one payload (1 to 1200 bytes) for a connected client.
    pub fn send_payload(
        &mut self,
        now: Duration,
        client: ClientIndex,
        payload: &[u8],
    ) -> Result<(), SendError> {
        let confirmed = self
            .connection(client)
            .ok_or(SendError::NotConnected(client))?
            .confirmed;
        if !confirmed {
            self.send_keep_alive(now, client);
        }
        self.send_to_client(now, client, &Packet::Payload(payload))
    }

    /// Disconnects a client: 10 redundant disconnect packets, then the slot is freed.
    pub fn disconnect(&mut self, now: Duration, client: ClientIndex) {
        if self.connection(client).is_some() {
            self.remove_client(now, client, DisconnectReason::ServerDisconnected);
        }
    }

    /// Disconnects every client (shutdown).
    pub fn disconnect_all(&mut self, now: Duration) {
        for index in 0..self.slots.len() {
            self.disconnect(now, ClientIndex(index as u32));
        }
    }

    /// The next datagram to send. Hand its `contents` back with [`Server::recycle`] once
    /// sent.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Takes back a sent datagram's buffer (a [`Transmit`]'s `contents`) for a later
    /// datagram: the send path then allocates nothing.
    ///
    /// Kept only up to about two buffers per slot (a tick's snapshots and keep-alives);
    /// a buffer beyond that, or one not made by this server, is dropped.
    pub fn recycle(&mut self, mut contents: Vec<u8>) {
        if contents.capacity() >= MAX_PACKET_BYTES
            && self.free_buffers.len() < self.max_free_buffers()
        {
            contents.clear();
            self.free_buffers.push(contents);
        }
    }

    /// The next connect or disconnect.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Counters: drops by reason, traffic, connects.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// How the server was set up (max clients clamped to at least 1).
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Clients connected now.
    pub fn num_connected(&self) -> usize {
        self.by_address.len()
    }

    /// Handshakes in progress.
    pub fn num_pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether `client` holds a slot.
    pub fn is_connected(&self, client: ClientIndex) -> bool {
        self.connection(client).is_some()
    }

    /// The client id in `client`'s slot.
    pub fn client_id(&self, client: ClientIndex) -> Option<u64> {
        self.connection(client).map(|c| c.client_id)
    }

    /// The address `client`'s packets come from.
    pub fn client_address(&self, client: ClientIndex) -> Option<SocketAddr> {
        self.connection(client).map(|c| c.address)
    }

    /// The slot holding `client_id`.
    pub fn find_client(&self, client_id: u64) -> Option<ClientIndex> {
        self.by_client_id.get(&client_id).copied()
    }

    fn connection(&self, client: ClientIndex) -> Option<&Connection> {
        self.slots.get(client.0 as usize)?.as_ref()
    }

    /// Everything `handle_packet` does; an `Err` is the reason for a drop.
    fn process<'a>(
        &mut self,
        now: Duration,
        from: SocketAddr,
        packet: &'a mut [u8],
    ) -> Result<Option<(ClientIndex, &'a [u8])>, DropReason> {
        if packet.len() <= 1 {
            return Err(DropReason::BadSize);
        }
        if packet[0] == 0 {
            self.handle_request(now, from, packet)?;
            return Ok(None);
        }
        if let Some(&client) = self.by_address.get(&from) {
            return self.handle_connected(now, client, packet);
        }
        let Some(pending) = self.pending.get_mut(&from) else {
            return Err(DropReason::UnknownAddress);
        };
        pending.last_access = now;
        let receive_key = pending.receive_key;
        let protocol_id = self.config.protocol_id;
        let (_, packet) = read_encrypted_packet(
            packet,
            protocol_id,
            &receive_key,
            AllowedTypes::SERVER,
            None,
        )
        .map_err(DropReason::from_packet_error)?;
        match packet {
            Packet::ConnectionResponse {
                token_sequence,
                token_data,
            } => {
                let token = ChallengeToken::open(token_data, token_sequence, &self.challenge_key)
                    .map_err(|_| DropReason::DecryptFailed)?;
                self.accept_response(now, from, token)
            }
            _ => Err(DropReason::Unexpected),
        }
    }

    fn handle_request(
        &mut self,
        now: Duration,
        from: SocketAddr,
        packet: &[u8],
    ) -> Result<(), DropReason> {
        let request = read_connection_request(packet, self.config.protocol_id)
            .map_err(DropReason::from_packet_error)?;
        let now_secs = now.as_secs();
        if request.expire_timestamp <= now_secs {
            return Err(DropReason::ExpiredToken);
        }
        // Everything above is free; opening the token is the cost a flood would impose.
        if !self.limiter.allow(now, from) {
            return Err(DropReason::RateLimited);
        }
        let private = open_request(&request, &self.config.private_key)?;
        if !private.server_addresses.iter().any(|listed| {
            self.config
                .addresses
                .iter()
                .any(|own| same_endpoint(own, listed))
        }) {
            return Err(DropReason::BadToken);
        }
        if self.by_address.contains_key(&from) || self.by_client_id.contains_key(&private.client_id)
        {
            return Err(DropReason::AlreadyConnected);
        }
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&request.private_data[CONNECT_TOKEN_PRIVATE_BYTES - MAC_BYTES..]);
        self.record_token_use(tag, from, request.expire_timestamp)?;

        let send_key = private.server_to_client_key;
        if !self.admitting {
            self.send_global(now, from, &send_key, &Packet::ConnectionDenied);
            return Err(DropReason::NotAdmitting);
        }
        if self.full() {
            self.send_global(now, from, &send_key, &Packet::ConnectionDenied);
            return Err(DropReason::ServerFull);
        }
        let timeout = timeout_from_seconds(private.timeout_seconds);
        if !self.pending.contains_key(&from) && self.pending.len() >= self.max_pending() {
            return Err(DropReason::PendingFull);
        }
        self.pending.insert(
            from,
            Pending {
                send_key,
                receive_key: private.client_to_server_key,
                timeout,
                last_access: now,
                expire_timestamp: request.expire_timestamp,
            },
        );
        let token = ChallengeToken {
            client_id: private.client_id,
            user_data: private.user_data,
        };
        let token_sequence = self.challenge_sequence;
        self.challenge_sequence += 1;
        let token_data = token
            .seal(token_sequence, &self.challenge_key)
            .map_err(|_| DropReason::BadToken)?;
        self.send_global(
            now,
            from,
            &send_key,
            &Packet::ConnectionChallenge {
                token_sequence,
                token_data: &token_data,
            },
        );
        Ok(())
    }

    /// Refuses a token seen from another address; remembers the first address otherwise.
    fn record_token_use(
        &mut self,
        tag: [u8; MAC_BYTES],
        from: SocketAddr,
        expire_timestamp: u64,
    ) -> Result<(), DropReason> {
        match self.token_history.get(&tag) {
            Some(used) if used.address != from => Err(DropReason::TokenReuse),
            Some(_) => Ok(()),
            None if self.token_history.len() >= self.max_token_history() => {
                Err(DropReason::PendingFull)
            }
            None => {
                self.token_history.insert(
                    tag,
                    TokenUse {
                        address: from,
                        expire_timestamp,
                    },
                );
                Ok(())
            }
        }
    }

    fn accept_response(
        &mut self,
        now: Duration,
        from: SocketAddr,
        token: ChallengeToken,
    ) -> Result<Option<(ClientIndex, &'static [u8])>, DropReason> {
        if self.by_client_id.contains_key(&token.client_id) {
            return Err(DropReason::AlreadyConnected);
        }
        let Some(pending) = self.pending.remove(&from) else {
            return Err(DropReason::UnknownAddress);
        };
        if !self.admitting {
            self.send_global(now, from, &pending.send_key, &Packet::ConnectionDenied);
            return Err(DropReason::NotAdmitting);
        }
        let index = if self.full() {
            None
        } else {
            self.free_slots.pop_first()
        };
        let Some(index) = index else {
            self.send_global(now, from, &pending.send_key, &Packet::ConnectionDenied);
            return Err(DropReason::ServerFull);
        };
        let client = ClientIndex(index);
        self.slots[index as usize] = Some(Connection {
            client_id: token.client_id,
            address: from,
            send_key: pending.send_key,
            receive_key: pending.receive_key,
            sequence: 0,
            replay: ReplayProtection::default(),
            timeout: pending.timeout,
            last_send: now,
            last_receive: now,
            confirmed: false,
        });
        self.by_address.insert(from, client);
        self.by_client_id.insert(token.client_id, client);
        self.stats.connects += 1;
        tracing::debug!(client_id = token.client_id, %from, slot = index, "netcode client connected");
        self.events.push_back(ServerEvent::ClientConnected {
            client,
            client_id: token.client_id,
            address: from,
            user_data: Box::new(token.user_data),
        });
        self.send_keep_alive(now, client);
        Ok(None)
    }

    fn handle_connected<'a>(
        &mut self,
        now: Duration,
        client: ClientIndex,
        packet: &'a mut [u8],
    ) -> Result<Option<(ClientIndex, &'a [u8])>, DropReason> {
        let protocol_id = self.config.protocol_id;
        let Some(conn) = self.slots[client.0 as usize].as_mut() else {
            return Err(DropReason::UnknownAddress);
        };
        let (_, packet) = read_encrypted_packet(
            packet,
            protocol_id,
            &conn.receive_key,
            AllowedTypes::SERVER,
            Some(&mut conn.replay),
        )
        .map_err(DropReason::from_packet_error)?;
        match packet {
            Packet::KeepAlive { .. } => {
                conn.last_receive = now;
                conn.confirmed = true;
                Ok(None)
            }
            Packet::Payload(payload) => {
                conn.last_receive = now;
                conn.confirmed = true;
                Ok(Some((client, payload)))
            }
            Packet::Disconnect => {
                tracing::debug!(client_id = conn.client_id, "netcode client disconnected");
                self.free_slot(client, DisconnectReason::ClientDisconnected);
                Ok(None)
            }
            // A repeated response after the slot exists: the client will move on when our
            // keep-alives reach it.
            _ => Err(DropReason::AlreadyConnected),
        }
    }

    fn send_keep_alive(&mut self, now: Duration, client: ClientIndex) {
        let packet = Packet::KeepAlive {
            client_index: client.0,
            max_clients: self.config.max_clients as u32,
        };
        // Only fails for a slot that is empty, which callers have checked.
        let _ = self.send_to_client(now, client, &packet);
    }

    fn send_to_client(
        &mut self,
        now: Duration,
        client: ClientIndex,
        packet: &Packet<'_>,
    ) -> Result<(), SendError> {
        let protocol_id = self.config.protocol_id;
        let mut contents = self.take_buffer();
        let Some(conn) = self
            .slots
            .get_mut(client.0 as usize)
            .and_then(Option::as_mut)
        else {
            self.recycle(contents);
            return Err(SendError::NotConnected(client));
        };
        let len = match packet.write(&mut contents, conn.sequence, &conn.send_key, protocol_id) {
            Ok(len) => len,
            Err(error) => {
                self.recycle(contents);
                return Err(error.into());
            }
        };
        contents.truncate(len);
        conn.sequence += 1;
        conn.last_send = now;
        let destination = conn.address;
        self.queue(destination, contents);
        Ok(())
    }

    /// Sends a denied or challenge packet at the global sequence.
    fn send_global(&mut self, _now: Duration, to: SocketAddr, key: &Key, packet: &Packet<'_>) {
        let mut contents = self.take_buffer();
        // Denied and challenge packets are fixed-size and always fit.
        match packet.write(
            &mut contents,
            self.global_sequence,
            key,
            self.config.protocol_id,
        ) {
            Ok(len) => {
                contents.truncate(len);
                self.global_sequence += 1;
                self.queue(to, contents);
            }
            Err(_) => self.recycle(contents),
        }
    }

    /// A buffer of [`MAX_PACKET_BYTES`] to write a datagram into: a recycled one if any.
    fn take_buffer(&mut self) -> Vec<u8> {
        let mut buffer = self
            .free_buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(MAX_PACKET_BYTES));
        // Within the capacity: fills, never allocates.
        buffer.resize(MAX_PACKET_BYTES, 0);
        buffer
    }

    fn queue(&mut self, destination: SocketAddr, contents: Vec<u8>) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += contents.len() as u64;
        self.transmits.push_back(Transmit {
            destination,
            contents,
        });
    }

    fn remove_client(&mut self, now: Duration, client: ClientIndex, reason: DisconnectReason) {
        for _ in 0..NUM_DISCONNECT_PACKETS {
            let _ = self.send_to_client(now, client, &Packet::Disconnect);
        }
        self.free_slot(client, reason);
    }

    fn free_slot(&mut self, client: ClientIndex, reason: DisconnectReason) {
        let Some(conn) = self.slots[client.0 as usize].take() else {
            return;
        };
        self.by_address.remove(&conn.address);
        self.by_client_id.remove(&conn.client_id);
        self.free_slots.insert(client.0);
        self.stats.disconnects += 1;
        self.events.push_back(ServerEvent::ClientDisconnected {
            client,
            client_id: conn.client_id,
            reason,
        });
    }

    /// Handshakes in flight are bounded so that a flood of valid requests (replayed by an
    /// observer from many addresses) cannot grow memory without limit.
    fn max_pending(&self) -> usize {
        (self.config.max_clients * 4).max(256)
    }

    fn max_token_history(&self) -> usize {
        (self.config.max_clients * 8).max(1024)
    }

    /// A tick queues about one snapshot per client, and a keep-alive before it while the
    /// client is unconfirmed; bursts beyond that (shutdown's ten disconnect packets per
    /// client) allocate.
    fn max_free_buffers(&self) -> usize {
        self.slots.len() * 2 + 64
    }
}

/// Logs one drop line at its reason's level, naming the reason and the source:
/// `dropped datagrams (and 41 more in the last 10 s) reason=decrypt_failed from=…`.
fn log_drop(line: &DropLine) {
    let reason = line.reason.name();
    let from = line.from;
    match line.reason.log_level() {
        DropLogLevel::Warn => {
            tracing::warn!(reason = %reason, %from, "dropped datagrams{line}");
        }
        DropLogLevel::Info => {
            tracing::info!(reason = %reason, %from, "dropped datagrams{line}");
        }
        DropLogLevel::Debug => {
            tracing::debug!(reason = %reason, %from, "dropped datagrams{line}");
        }
    }
}

/// Opens a request's private token, mapping failures to drop reasons.
fn open_request(
    request: &ConnectionRequest<'_>,
    private_key: &Key,
) -> Result<PrivateConnectToken, DropReason> {
    PrivateConnectToken::open(
        request.private_data,
        request.protocol_id,
        request.expire_timestamp,
        request.nonce,
        private_key,
    )
    .map_err(|e| match e {
        TokenError::Decrypt(_) => DropReason::DecryptFailed,
        _ => DropReason::BadToken,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netcode::{Client, ConnectToken, TokenParams};

    const PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;
    const KEY: Key = [7; 32];
    const NOW: Duration = Duration::from_secs(1_800_000_000);

    /// A server with one connected client, everything in flight delivered.
    fn connected() -> (Server, Client, SocketAddr) {
        let server_address = SocketAddr::from(([10, 0, 0, 1], 7777));
        let client_address = SocketAddr::from(([10, 1, 0, 1], 40000));
        let token = ConnectToken::generate(
            &TokenParams {
                protocol_id: PROTOCOL_ID,
                create_timestamp: NOW.as_secs(),
                expire_timestamp: NOW.as_secs() + 60,
                timeout_seconds: 5,
                public_addresses: vec![server_address],
                internal_addresses: None,
                client_id: 9,
                user_data: [0; 256],
            },
            &KEY,
        )
        .unwrap();
        let mut server = Server::new(ServerConfig {
            protocol_id: PROTOCOL_ID,
            private_key: KEY,
            max_clients: 4,
            addresses: vec![server_address],
        });
        let mut client = Client::with_token(NOW, token);
        for _ in 0..10 {
            client.update(NOW);
            while let Some(mut t) = client.poll_transmit() {
                let _ = server.handle_packet(NOW, client_address, &mut t.contents);
            }
            while let Some(mut t) = server.poll_transmit() {
                let _ = client.handle_packet(NOW, server_address, &mut t.contents);
            }
        }
        assert!(client.is_connected());
        // The client's first payload confirms it: no keep-alive goes before ours.
        client.send_payload(NOW, b"hello").unwrap();
        let mut hello = client.poll_transmit().unwrap();
        assert!(
            server
                .handle_packet(NOW, client_address, &mut hello.contents)
                .is_some()
        );
        (server, client, server_address)
    }

    #[test]
    fn a_recycled_buffer_carries_the_next_datagram() {
        let (mut server, mut client, server_address) = connected();
        let slot = ClientIndex(0);
        server.send_payload(NOW, slot, b"first").unwrap();
        let first = server.poll_transmit().unwrap();
        let reused = first.contents.as_ptr();
        server.recycle(first.contents);

        server.send_payload(NOW, slot, b"second").unwrap();
        let mut second = server.poll_transmit().unwrap();
        assert_eq!(
            second.contents.as_ptr(),
            reused,
            "a fresh buffer was allocated"
        );
        // What a recycled buffer carries is a whole datagram, not the previous one's tail.
        client.update(NOW);
        assert_eq!(
            client.handle_packet(NOW, server_address, &mut second.contents),
            Some(&b"second"[..])
        );
    }

    #[test]
    fn recycling_keeps_a_bounded_free_list() {
        let (mut server, _, _) = connected();
        for _ in 0..1000 {
            server.recycle(Vec::with_capacity(MAX_PACKET_BYTES));
        }
        server.recycle(Vec::with_capacity(10));
        assert_eq!(server.free_buffers.len(), server.max_free_buffers());
        assert!(
            server
                .free_buffers
                .iter()
                .all(|b| b.capacity() >= MAX_PACKET_BYTES)
        );
    }

    /// A request-shaped datagram with the right version, protocol id and a future
    /// expiry, and garbage where the sealed token goes: it costs a decryption.
    fn forged_request(seed: u8) -> Vec<u8> {
        let mut request = vec![seed; crate::netcode::CONNECTION_REQUEST_BYTES];
        request[0] = 0;
        request[1..14].copy_from_slice(crate::netcode::VERSION_INFO);
        request[14..22].copy_from_slice(&PROTOCOL_ID.to_le_bytes());
        request[22..30].copy_from_slice(&(NOW.as_secs() + 60).to_le_bytes());
        request
    }

    fn server(max_clients: usize) -> (Server, SocketAddr) {
        let address = SocketAddr::from(([10, 0, 0, 1], 7777));
        let server = Server::with_challenge_key(
            ServerConfig {
                protocol_id: PROTOCOL_ID,
                private_key: KEY,
                max_clients,
                addresses: vec![address],
            },
            [5; 32],
        );
        (server, address)
    }

    fn token(client_id: u64, server_address: SocketAddr) -> ConnectToken {
        ConnectToken::generate(
            &TokenParams {
                protocol_id: PROTOCOL_ID,
                create_timestamp: NOW.as_secs(),
                expire_timestamp: NOW.as_secs() + 60,
                timeout_seconds: 5,
                public_addresses: vec![server_address],
                internal_addresses: None,
                client_id,
                user_data: [0; 256],
            },
            &KEY,
        )
        .unwrap()
    }

    #[test]
    fn a_burst_of_requests_from_one_address_beyond_its_rate_is_dropped_and_counted() {
        let (mut server, _) = server(8);
        let flooder = SocketAddr::from(([10, 66, 0, 1], 5000));
        for i in 0..100 {
            let mut request = forged_request(i);
            assert!(server.handle_packet(NOW, flooder, &mut request).is_none());
        }
        let burst = u64::from(REQUEST_LIMITS.per_source_burst);
        assert_eq!(server.stats().drops(DropReason::DecryptFailed), burst);
        assert_eq!(server.stats().drops(DropReason::RateLimited), 100 - burst);
        assert_eq!(server.stats().total_drops(), 100);
        // Nothing was answered: a forged request earns no reply.
        assert!(server.poll_transmit().is_none());
        // Cheap refusals come first and are not rate-limited: a request of the wrong
        // size or protocol id costs no decryption and keeps its own reason.
        let mut short = forged_request(1);
        short.pop();
        let _ = server.handle_packet(NOW, flooder, &mut short);
        assert_eq!(server.stats().drops(DropReason::BadSize), 1);
        // Its rate comes back with time.
        let later = NOW + Duration::from_secs(1);
        let mut request = forged_request(200);
        let _ = server.handle_packet(later, flooder, &mut request);
        assert_eq!(server.stats().drops(DropReason::DecryptFailed), burst + 1);
    }

    #[test]
    fn a_client_connects_while_many_addresses_flood_the_server() {
        let (mut server, server_address) = server(8);
        let client_address = SocketAddr::from(([10, 1, 0, 1], 40000));
        let mut client = Client::with_token(NOW, token(9, server_address));
        let mut replies_to_flood = 0;
        // A flood from 250 addresses, each at 1000 requests a second (250,000 a second in
        // all; 5000 a second within their own rates, more than the overall rate). After
        // a second of it, a client starts connecting at its usual 10 Hz. Each millisecond
        // the flood goes first, so the overall bucket is always empty when the client asks.
        let mut connected_after = None;
        for ms in 0..3000u64 {
            let now = NOW + Duration::from_millis(ms);
            for n in 0..250u32 {
                let from = SocketAddr::from(([10, 66, (n >> 8) as u8, n as u8], 5000));
                let mut request = forged_request(n as u8);
                let _ = server.handle_packet(now, from, &mut request);
            }
            if ms >= 1000 {
                client.update(now);
                while let Some(mut t) = client.poll_transmit() {
                    let _ = server.handle_packet(now, client_address, &mut t.contents);
                }
            }
            server.update(now);
            while let Some(mut t) = server.poll_transmit() {
                if t.destination == client_address {
                    let _ = client.handle_packet(now, server_address, &mut t.contents);
                } else {
                    replies_to_flood += 1;
                }
            }
            if client.is_connected() {
                connected_after = Some(ms - 1000);
                break;
            }
        }
        println!("connected after {connected_after:?} ms of flood");
        assert!(client.is_connected(), "the client did not connect");
        assert_eq!(replies_to_flood, 0);
        let stats = server.stats();
        assert!(stats.drops(DropReason::RateLimited) > 0);
        // The decryptions stayed within the overall rates: their bursts and at most
        // 4096 + 1024 a second since.
        let limits = REQUEST_LIMITS;
        assert!(
            stats.drops(DropReason::DecryptFailed)
                <= u64::from(limits.burst + limits.quiet_burst)
                    + 3 * u64::from(limits.per_s + limits.quiet_per_s),
            "{} decryptions",
            stats.drops(DropReason::DecryptFailed)
        );
    }

    #[test]
    fn a_flood_from_a_million_addresses_leaves_memory_as_it_was() {
        let (mut server, _) = server(8);
        let buckets = server.limiter.num_buckets();
        for n in 0..1_000_000u32 {
            let now = NOW + Duration::from_micros(u64::from(n));
            let from = SocketAddr::from(([10, (n >> 16) as u8, (n >> 8) as u8, n as u8], 5000));
            let mut request = forged_request(n as u8);
            let _ = server.handle_packet(now, from, &mut request);
        }
        assert_eq!(server.limiter.num_buckets(), buckets);
        assert_eq!(server.num_pending(), 0);
        assert!(server.token_history.is_empty());
        assert_eq!(server.stats().total_drops(), 1_000_000);
        assert!(server.stats().drops(DropReason::RateLimited) > 900_000);
    }
}
