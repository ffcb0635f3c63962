//! Tokens a server sends in parts (a token is 2048 bytes, more than one datagram holds).

use arena_shared::protocol::messages::TOKEN_PARTS;
use arena_shared::protocol::{TokenPart, TokenPurpose};

/// A token arriving in parts.
#[derive(Debug, Default)]
struct IncomingToken {
    id: u32,
    parts: [Option<Vec<u8>>; TOKEN_PARTS as usize],
}

impl IncomingToken {
    /// Files a part; returns the whole token when the last part arrives.
    fn add(&mut self, part: TokenPart) -> Option<Vec<u8>> {
        if part.token_id != self.id {
            if part.token_id < self.id {
                return None; // An older token's late part.
            }
            *self = Self {
                id: part.token_id,
                ..Self::default()
            };
        }
        let slot = self.parts.get_mut(usize::from(part.part))?;
        if slot.is_some() {
            return None;
        }
        *slot = Some(part.bytes);
        if self.parts.iter().all(Option::is_some) {
            Some(self.parts.iter().flatten().flatten().copied().collect())
        } else {
            None
        }
    }
}

/// The tokens arriving from one server, one slot per purpose (token ids are per server).
#[derive(Debug, Default)]
pub(super) struct TokenInbox([IncomingToken; 3]);

impl TokenInbox {
    /// Files a part; returns the whole token and its purpose when the last part arrives.
    pub(super) fn add(&mut self, part: TokenPart) -> Option<(TokenPurpose, Vec<u8>)> {
        let purpose = part.purpose;
        let slot = match purpose {
            TokenPurpose::Reconnect => 0,
            TokenPurpose::Redirect => 1,
            TokenPurpose::Prepare => 2,
        };
        self.0[slot].add(part).map(|token| (purpose, token))
    }
}
