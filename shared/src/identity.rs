//! What Arena puts in a connect token beyond netcode itself: the protocol id, and the
//! player's name in the token's user data.

use crate::netcode::{ConnectToken, Key, TokenError, TokenParams, USER_DATA_BYTES, UserData};
use std::net::SocketAddr;

/// Arena's netcode protocol id ("ARENA", then a protocol revision).
pub const ARENA_PROTOCOL_ID: u64 = 0x4152_454e_4100_0001;

/// Parses a protocol id written in decimal or as 0x-hex (a command-line value).
pub fn parse_protocol_id(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|e| format!("expected a decimal or 0x-hex u64, got {text:?}: {e}"))
}

/// Parses a private key written as 64 hex characters (surrounding whitespace allowed),
/// as key files hold it.
pub fn parse_private_key(text: &str) -> Result<Key, String> {
    let text = text.trim();
    if text.len() != 64 {
        return Err(format!(
            "expected 64 hex characters (32 bytes), got {} characters",
            text.len()
        ));
    }
    let bytes = hex::decode(text).map_err(|e| format!("not hexadecimal: {e}"))?;
    bytes.try_into().map_err(|_| "expected 32 bytes".to_owned())
}

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
    fn protocol_ids_parse_in_decimal_and_hex() {
        assert_eq!(parse_protocol_id("42"), Ok(42));
        assert_eq!(parse_protocol_id("0x2a"), Ok(42));
        assert_eq!(
            parse_protocol_id("0x4152454e41000001"),
            Ok(ARENA_PROTOCOL_ID)
        );
        assert!(parse_protocol_id("0xzz").is_err());
        assert!(parse_protocol_id("-1").is_err());
    }

    #[test]
    fn keys_must_be_64_hex_characters() {
        assert_eq!(parse_private_key(&"ab".repeat(32)), Ok([0xab; 32]));
        assert_eq!(
            parse_private_key(&format!(" {}\n", "ab".repeat(32))),
            Ok([0xab; 32])
        );
        let short = parse_private_key("abcd").expect_err("short");
        assert!(short.contains("64 hex characters"), "{short}");
        assert!(parse_private_key(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn names_round_trip_and_long_ones_are_cut_on_a_character() {
        assert_eq!(name_from_user_data(&user_data_for_name("bot-7")), "bot-7");
        let long = "é".repeat(40); // 80 bytes
        let cut = name_from_user_data(&user_data_for_name(&long));
        assert_eq!(cut, "é".repeat(32));
    }
}
