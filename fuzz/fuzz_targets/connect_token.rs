//! Arbitrary bytes through the connect token reader and the private-part opener.
#![no_main]

use arena_shared::netcode::{ConnectToken, PrivateConnectToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = ConnectToken::read(data) {
        // A token that reads must write back to the same 2048 bytes, padding aside.
        let written = token.write().unwrap();
        assert_eq!(ConnectToken::read(&written).unwrap(), token);
        let _ = token.open_private(token.protocol_id, 0, &[0; 32]);
    }
    // The plaintext parser behind the private part.
    let _ = PrivateConnectToken::read(data);
});
