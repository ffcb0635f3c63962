//! What Arena puts in a connect token beyond netcode itself: the protocol id, and the
//! player's name in the token's user data.

use crate::netcode::{ConnectToken, Key, TokenError, TokenParams, USER_DATA_BYTES, UserData};
use std::net::SocketAddr;

/// Arena's netcode protocol id ("ARENA", then a protocol revision).
pub const ARENA_PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;

/// Longest player name carried in a token, bytes.
pub const MAX_NAME_BYTES: usize = 64;
/// Where the user data says "spectator" (1) or "player" (0).
const SPECTATOR_BYTE: usize = 1 + MAX_NAME_BYTES;

/// User data for `name` joining as a spectator (sees the whole arena, has no player).
pub fn user_data_for_spectator(name: &str) -> UserData {
    let mut data = user_data_for_name(name);
    data[SPECTATOR_BYTE] = 1;
    data
}

/// Whether user data asks to spectate.
pub fn is_spectator(data: &UserData) -> bool {
    data[SPECTATOR_BYTE] == 1
}

/// User data holding `name`: a length byte, then up to 64 bytes of UTF-8 (cut at a
/// character boundary).
pub fn user_data_for_name(name: &str) -> UserData {
    let mut end = name.len().min(MAX_NAME_BYTES);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let mut data = [0u8; USER_DATA_BYTES];
    data[0] = end as u8;
    data[1..1 + end].copy_from_slice(&name.as_bytes()[..end]);
    data
}

/// The name in user data written by [`user_data_for_name`] (lossy on foreign data).
pub fn name_from_user_data(data: &UserData) -> String {
    let len = usize::from(data[0]).min(MAX_NAME_BYTES);
    String::from_utf8_lossy(&data[1..1 + len]).into_owned()
}

/// What a token minted by Arena looks like; the backend (or `POST /token`) fills it in.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The game's protocol id.
    pub protocol_id: u64,
    /// Servers the client may try, in order.
    pub server_addresses: Vec<SocketAddr>,
    /// The player's identity in this match.
    pub client_id: u64,
    /// The player's name.
    pub name: String,
    /// Unix seconds now.
    pub now_unix_s: u64,
    /// How long the token may be used to connect, seconds.
    pub expire_s: u64,
    /// Silence after which either side drops the connection, seconds.
    pub timeout_s: i32,
    /// Join as a spectator rather than a player.
    pub spectator: bool,
}

/// Mints a standard netcode.io connect token.
pub fn mint_token(request: &TokenRequest, private_key: &Key) -> Result<ConnectToken, TokenError> {
    let params = TokenParams {
        protocol_id: request.protocol_id,
        create_timestamp: request.now_unix_s,
        expire_timestamp: request.now_unix_s.saturating_add(request.expire_s),
        timeout_seconds: request.timeout_s,
        public_addresses: request.server_addresses.clone(),
        internal_addresses: None,
        client_id: request.client_id,
        user_data: if request.spectator {
            user_data_for_spectator(&request.name)
        } else {
            user_data_for_name(&request.name)
        },
    };
    ConnectToken::generate(&params, private_key)
}

/// A random client id (never 0).
pub fn random_client_id() -> u64 {
    let mut bytes = [0u8; 8];
    crate::netcode::token::fill_random(&mut bytes);
    u64::from_le_bytes(bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_long_ones_are_cut_on_a_character() {
        assert_eq!(name_from_user_data(&user_data_for_name("bot-7")), "bot-7");
        let long = "é".repeat(40); // 80 bytes
        let cut = name_from_user_data(&user_data_for_name(&long));
        assert_eq!(cut, "é".repeat(32));
    }
}
