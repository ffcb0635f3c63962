//! Connect tokens and challenge tokens.
//!
//! A [`ConnectToken`] is what a backend (Arena's `POST /token`, or any netcode.io backend
//! holding the same private key) hands a client: 2048 bytes with a public part the client
//! reads and a [`PrivateConnectToken`] sealed with XChaCha20-Poly1305 under the private key,
//! which only servers can open. A [`ChallengeToken`] is what a server sends back during the
//! handshake, sealed with a key only that server process knows, so that it keeps no state
//! per pending client beyond an encryption mapping.

use std::net::SocketAddr;

use super::address::{AddressError, read_address, write_address};
use super::bytes::{Reader, Truncated, Writer};
use super::crypto::{self, AeadError};
use super::packet::ConnectionRequest;
use super::{
    CHALLENGE_TOKEN_BYTES, CONNECT_TOKEN_BYTES, CONNECT_TOKEN_NONCE_BYTES,
    CONNECT_TOKEN_PRIVATE_BYTES, Key, MAC_BYTES, MAX_SERVERS_PER_CONNECT, USER_DATA_BYTES,
    UserData, VERSION_INFO,
};

/// Why a token could not be made, read or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A connect token is exactly 2048 bytes.
    #[error("a connect token is {expected} bytes, got {got}")]
    WrongSize {
        /// The size the standard fixes.
        expected: usize,
        /// The size that arrived.
        got: usize,
    },
    /// The version info is not `NETCODE 1.02\0`.
    #[error("version info is not \"NETCODE 1.02\"")]
    BadVersion,
    /// The create timestamp is after the expire timestamp.
    #[error("create timestamp {create} is after expire timestamp {expire}")]
    CreateAfterExpire {
        /// Create timestamp, unix seconds.
        create: u64,
        /// Expire timestamp, unix seconds.
        expire: u64,
    },
    /// A token lists 1 to 32 server addresses.
    #[error("a token lists 1 to 32 server addresses, this one {0}")]
    BadAddressCount(usize),
    /// An address entry is malformed.
    #[error("bad server address entry: {0}")]
    Address(#[from] AddressError),
    /// The token was minted for another protocol id (another game or version).
    #[error("token is for protocol id {got:#x}, this server speaks {expected:#x}")]
    WrongProtocolId {
        /// Ours.
        expected: u64,
        /// The token's.
        got: u64,
    },
    /// The token's expire timestamp has passed.
    #[error("token expired at unix time {expire}, now is {now}")]
    Expired {
        /// Expire timestamp, unix seconds.
        expire: u64,
        /// The time it was checked at, unix seconds.
        now: u64,
    },
    /// The private part did not authenticate: wrong private key, or altered bytes.
    #[error("private part did not decrypt: wrong private key or altered token")]
    Decrypt(#[from] AeadError),
    /// A structure ran past its fixed size.
    #[error(transparent)]
    Truncated(#[from] Truncated),
}

/// The part of a connect token only servers can read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivateConnectToken {
    /// The client's identity, unique per match.
    pub client_id: u64,
    /// Seconds of silence after which either side drops the connection; negative: never.
    pub timeout_seconds: i32,
    /// The addresses the servers bind ("internal"); a server accepts the token only if it
    /// finds one of its own addresses here.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for packets from the client to the server.
    pub client_to_server_key: Key,
    /// Key for packets from the server to the client.
    pub server_to_client_key: Key,
    /// Opaque to netcode; Arena puts the player's identity here.
    pub user_data: UserData,
}

/// Bytes of the private part that are encrypted (the rest holds the tag).
const PRIVATE_PLAINTEXT_BYTES: usize = CONNECT_TOKEN_PRIVATE_BYTES - MAC_BYTES;

impl PrivateConnectToken {
    /// The 1008-byte plaintext, zero padded.
    pub fn write(&self) -> Result<[u8; PRIVATE_PLAINTEXT_BYTES], TokenError> {
        check_address_count(self.server_addresses.len())?;
        let mut out = [0u8; PRIVATE_PLAINTEXT_BYTES];
        let mut w = Writer::new(&mut out);
        w.u64(self.client_id)?;
        w.i32(self.timeout_seconds)?;
        w.u32(self.server_addresses.len() as u32)?;
        for addr in &self.server_addresses {
            write_address(&mut w, addr)?;
        }
        w.bytes(&self.client_to_server_key)?;
        w.bytes(&self.server_to_client_key)?;
        w.bytes(&self.user_data)?;
        Ok(out)
    }

    /// Parses a decrypted plaintext. The zero padding is not checked, as in the reference.
    pub fn read(plaintext: &[u8]) -> Result<Self, TokenError> {
        let mut r = Reader::new(plaintext);
        let client_id = r.u64()?;
        let timeout_seconds = r.i32()?;
        let server_addresses = read_address_list(&mut r)?;
        Ok(Self {
            client_id,
            timeout_seconds,
            server_addresses,
            client_to_server_key: r.array()?,
            server_to_client_key: r.array()?,
            user_data: r.array()?,
        })
    }

    /// Encrypts into the 1024-byte private part: 1008 bytes of ciphertext, then the tag.
    pub fn seal(
        &self,
        protocol_id: u64,
        expire_timestamp: u64,
        nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
        private_key: &Key,
    ) -> Result<[u8; CONNECT_TOKEN_PRIVATE_BYTES], TokenError> {
        let plaintext = self.write()?;
        let mut out = [0u8; CONNECT_TOKEN_PRIVATE_BYTES];
        let (body, tag) = out.split_at_mut(PRIVATE_PLAINTEXT_BYTES);
        body.copy_from_slice(&plaintext);
        let aad = private_associated_data(protocol_id, expire_timestamp);
        tag.copy_from_slice(&crypto::xseal(private_key, nonce, &aad, body)?);
        Ok(out)
    }

    /// Decrypts and parses a 1024-byte private part.
    pub fn open(
        sealed: &[u8; CONNECT_TOKEN_PRIVATE_BYTES],
        protocol_id: u64,
        expire_timestamp: u64,
        nonce: &[u8; CONNECT_TOKEN_NONCE_BYTES],
        private_key: &Key,
    ) -> Result<Self, TokenError> {
        let mut body = [0u8; PRIVATE_PLAINTEXT_BYTES];
        body.copy_from_slice(&sealed[..PRIVATE_PLAINTEXT_BYTES]);
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&sealed[PRIVATE_PLAINTEXT_BYTES..]);
        let aad = private_associated_data(protocol_id, expire_timestamp);
        crypto::xopen(private_key, nonce, &aad, &mut body, &tag)?;
        Self::read(&body)
    }
}

/// The 29 bytes of associated data that bind the private part to its protocol and expiry.
pub fn private_associated_data(protocol_id: u64, expire_timestamp: u64) -> [u8; 29] {
    let mut aad = [0u8; 29];
    aad[..13].copy_from_slice(VERSION_INFO);
    aad[13..21].copy_from_slice(&protocol_id.to_le_bytes());
    aad[21..].copy_from_slice(&expire_timestamp.to_le_bytes());
    aad
}

/// What a backend needs to mint a token. Timestamps are arguments: nothing here reads a clock.
#[derive(Debug, Clone)]
pub struct TokenParams {
    /// Identifies the game and its version; servers refuse other protocol ids.
    pub protocol_id: u64,
    /// Unix seconds at minting.
    pub create_timestamp: u64,
    /// Unix seconds after which servers refuse the token (`u64::MAX`: never).
    pub expire_timestamp: u64,
    /// Seconds of silence before either side drops the connection; negative: never.
    pub timeout_seconds: i32,
    /// Addresses the client tries, in order (1 to 32).
    pub public_addresses: Vec<SocketAddr>,
    /// Addresses the servers bind, if they differ from `public_addresses` (behind NAT).
    pub internal_addresses: Option<Vec<SocketAddr>>,
    /// The client's identity.
    pub client_id: u64,
    /// Opaque data handed to the server on connect.
    pub user_data: UserData,
}

/// A full connect token: the public part with the sealed private part inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectToken {
    /// The protocol id the token was minted for.
    pub protocol_id: u64,
    /// Unix seconds at minting.
    pub create_timestamp: u64,
    /// Unix seconds after which servers refuse it.
    pub expire_timestamp: u64,
    /// The XChaCha20 nonce of the private part.
    pub nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
    /// The sealed private part, copied as is into connection requests.
    pub private_data: [u8; CONNECT_TOKEN_PRIVATE_BYTES],
    /// Seconds of silence before the client gives up; negative: never.
    pub timeout_seconds: i32,
    /// The addresses the client tries, in order.
    pub server_addresses: Vec<SocketAddr>,
    /// Key for packets from the client to the server.
    pub client_to_server_key: Key,
    /// Key for packets from the server to the client.
    pub server_to_client_key: Key,
}

impl ConnectToken {
    /// Mints a token with a fresh random nonce and fresh random packet keys.
    ///
    /// Randomness comes from the operating system: the keys protect the connection, so they
    /// must not be predictable (a seeded RNG would be).
    pub fn generate(params: &TokenParams, private_key: &Key) -> Result<Self, TokenError> {
        let mut nonce = [0u8; CONNECT_TOKEN_NONCE_BYTES];
        let mut keys = [0u8; 64];
        fill_random(&mut nonce);
        fill_random(&mut keys);
        let (c2s, s2c) = keys.split_at(32);
        let mut client_to_server_key = [0u8; 32];
        let mut server_to_client_key = [0u8; 32];
        client_to_server_key.copy_from_slice(c2s);
        server_to_client_key.copy_from_slice(s2c);
        Self::generate_with(
            params,
            private_key,
            nonce,
            client_to_server_key,
            server_to_client_key,
        )
    }

    /// Mints a token from a given nonce and keys: reproducible, for tests and vectors.
    pub fn generate_with(
        params: &TokenParams,
        private_key: &Key,
        nonce: [u8; CONNECT_TOKEN_NONCE_BYTES],
        client_to_server_key: Key,
        server_to_client_key: Key,
    ) -> Result<Self, TokenError> {
        check_address_count(params.public_addresses.len())?;
        if params.create_timestamp > params.expire_timestamp {
            return Err(TokenError::CreateAfterExpire {
                create: params.create_timestamp,
                expire: params.expire_timestamp,
            });
        }
        let private = PrivateConnectToken {
            client_id: params.client_id,
            timeout_seconds: params.timeout_seconds,
            server_addresses: params
                .internal_addresses
                .clone()
                .unwrap_or_else(|| params.public_addresses.clone()),
            client_to_server_key,
            server_to_client_key,
            user_data: params.user_data,
        };
        let private_data = private.seal(
            params.protocol_id,
            params.expire_timestamp,
            &nonce,
            private_key,
        )?;
        Ok(Self {
            protocol_id: params.protocol_id,
            create_timestamp: params.create_timestamp,
            expire_timestamp: params.expire_timestamp,
            nonce,
            private_data,
            timeout_seconds: params.timeout_seconds,
            server_addresses: params.public_addresses.clone(),
            client_to_server_key,
            server_to_client_key,
        })
    }

    /// The standard 2048-byte form.
    pub fn write(&self) -> Result<[u8; CONNECT_TOKEN_BYTES], TokenError> {
        check_address_count(self.server_addresses.len())?;
        let mut out = [0u8; CONNECT_TOKEN_BYTES];
        let mut w = Writer::new(&mut out);
        w.bytes(VERSION_INFO)?;
        w.u64(self.protocol_id)?;
        w.u64(self.create_timestamp)?;
        w.u64(self.expire_timestamp)?;
        w.bytes(&self.nonce)?;
        w.bytes(&self.private_data)?;
        w.i32(self.timeout_seconds)?;
        w.u32(self.server_addresses.len() as u32)?;
        for addr in &self.server_addresses {
            write_address(&mut w, addr)?;
        }
        w.bytes(&self.client_to_server_key)?;
        w.bytes(&self.server_to_client_key)?;
        Ok(out)
    }

    /// Parses the 2048-byte form, with the checks a client makes: version, create ≤
    /// expire, 1 to 32 addresses of known types. The private part stays sealed.
    pub fn read(bytes: &[u8]) -> Result<Self, TokenError> {
        if bytes.len() != CONNECT_TOKEN_BYTES {
            return Err(TokenError::WrongSize {
                expected: CONNECT_TOKEN_BYTES,
                got: bytes.len(),
            });
        }
        let mut r = Reader::new(bytes);
        if r.bytes(VERSION_INFO.len())? != VERSION_INFO {
            return Err(TokenError::BadVersion);
        }
        let protocol_id = r.u64()?;
        let create_timestamp = r.u64()?;
        let expire_timestamp = r.u64()?;
        if create_timestamp > expire_timestamp {
            return Err(TokenError::CreateAfterExpire {
                create: create_timestamp,
                expire: expire_timestamp,
            });
        }
        let nonce = r.array()?;
        let private_data = r.array()?;
        let timeout_seconds = r.i32()?;
        let server_addresses = read_address_list(&mut r)?;
        Ok(Self {
            protocol_id,
            create_timestamp,
            expire_timestamp,
            nonce,
            private_data,
            timeout_seconds,
            server_addresses,
            client_to_server_key: r.array()?,
            server_to_client_key: r.array()?,
        })
    }

    /// The connection request a client sends with this token.
    pub fn connection_request(&self) -> ConnectionRequest<'_> {
        ConnectionRequest {
            protocol_id: self.protocol_id,
            expire_timestamp: self.expire_timestamp,
            nonce: &self.nonce,
            private_data: &self.private_data,
        }
    }

    /// Opens the private part as a server would: the protocol id must be ours, the token
    /// unexpired at `now_unix_seconds`, and the private key the one it was sealed with.
    pub fn open_private(
        &self,
        protocol_id: u64,
        now_unix_seconds: u64,
        private_key: &Key,
    ) -> Result<PrivateConnectToken, TokenError> {
        if self.protocol_id != protocol_id {
            return Err(TokenError::WrongProtocolId {
                expected: protocol_id,
                got: self.protocol_id,
            });
        }
        if self.expire_timestamp <= now_unix_seconds {
            return Err(TokenError::Expired {
                expire: self.expire_timestamp,
                now: now_unix_seconds,
            });
        }
        PrivateConnectToken::open(
            &self.private_data,
            self.protocol_id,
            self.expire_timestamp,
            &self.nonce,
            private_key,
        )
    }
}

/// What the server seals into a challenge: enough to finish the handshake statelessly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChallengeToken {
    /// The client id from the connect token.
    pub client_id: u64,
    /// The user data from the connect token.
    pub user_data: UserData,
}

impl ChallengeToken {
    /// Seals into 300 bytes with the server's per-run challenge key.
    pub fn seal(
        &self,
        sequence: u64,
        key: &Key,
    ) -> Result<[u8; CHALLENGE_TOKEN_BYTES], TokenError> {
        let mut out = [0u8; CHALLENGE_TOKEN_BYTES];
        let (body, tag) = out.split_at_mut(CHALLENGE_TOKEN_BYTES - MAC_BYTES);
        let mut w = Writer::new(body);
        w.u64(self.client_id)?;
        w.bytes(&self.user_data)?;
        tag.copy_from_slice(&crypto::seal(key, sequence, &[], body)?);
        Ok(out)
    }

    /// Opens a sealed challenge token.
    pub fn open(
        sealed: &[u8; CHALLENGE_TOKEN_BYTES],
        sequence: u64,
        key: &Key,
    ) -> Result<Self, TokenError> {
        let mut body = [0u8; CHALLENGE_TOKEN_BYTES - MAC_BYTES];
        body.copy_from_slice(&sealed[..CHALLENGE_TOKEN_BYTES - MAC_BYTES]);
        let mut tag = [0u8; MAC_BYTES];
        tag.copy_from_slice(&sealed[CHALLENGE_TOKEN_BYTES - MAC_BYTES..]);
        crypto::open(key, sequence, &[], &mut body, &tag)?;
        let mut r = Reader::new(&body);
        Ok(Self {
            client_id: r.u64()?,
            user_data: r.array::<USER_DATA_BYTES>()?,
        })
    }
}

fn check_address_count(count: usize) -> Result<(), TokenError> {
    if (1..=MAX_SERVERS_PER_CONNECT).contains(&count) {
        Ok(())
    } else {
        Err(TokenError::BadAddressCount(count))
    }
}

fn read_address_list(r: &mut Reader<'_>) -> Result<Vec<SocketAddr>, TokenError> {
    let count = r.u32()? as usize;
    check_address_count(count)?;
    (0..count)
        .map(|_| read_address(r).map_err(TokenError::from))
        .collect()
}

/// Fills `buf` from the operating system's random source.
///
/// Used for keys and nonces only; the simulation has its own seeded RNG. If the OS source
/// fails there is no safe fallback for key material, so this aborts loudly: it never
/// happens on a working Linux system, and a token with predictable keys would be worse.
pub fn fill_random(buf: &mut [u8]) {
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source failed");
}
