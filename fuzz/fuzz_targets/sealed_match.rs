//! The body of `POST /match` on a standby: a sealed commit, opened with the fleet key
//! (`handoff::open`), then its snapshot decoded (`snapshot::decode`), as
//! `Host::receive` does before it checks the commit against the prepare under way.
//!
//! The seal is an AEAD, so random bytes never get past it: the first byte chooses what
//! the rest is.
//! - `0`: the whole body, raw (a forged or altered commit);
//! - `1`: snapshot bytes, sealed by `handoff::seal` for a fixed commit: they must open to
//!   exactly that commit and those bytes, then go to the snapshot decoder;
//! - `2`: arbitrary plaintext sealed with the fleet key (`u32 length ‖ JSON commit ‖
//!   snapshot`, as the fuzzer makes it): the commit's parser behind the seal;
//! - `3`: a snapshot payload made valid around the rest (header and checksum), sealed
//!   for the fixed commit: the payload's decoder, reached through the whole path.
//!
//! Properties: nothing panics; a body sealed by `seal` opens to what was sealed; what
//! opens and decodes round-trips (see `arena_fuzz::check_snapshot`).
#![no_main]

use std::sync::Once;

use arena_fuzz::{
    KEY, check_sealing_matches, check_snapshot, commit, header_tick, seal_plaintext,
    snapshot_around,
};
use arena_server::handoff::{open, seal};
use arena_shared::game::Game;
use arena_shared::sim::Shooter;
use libfuzzer_sys::fuzz_target;

static CHECKED: Once = Once::new();

/// What the standby does with a body: open it, then decode the match it names.
fn receive(body: &[u8]) {
    if let Ok((commit, bytes)) = open(&KEY, body) {
        check_snapshot::<Shooter>(&bytes, &commit.match_id);
    }
}

fuzz_target!(|data: &[u8]| {
    CHECKED.call_once(check_sealing_matches);
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => receive(rest),
        1 => {
            let body = seal(&KEY, &commit(), rest);
            let Ok((opened, bytes)) = open(&KEY, &body) else {
                panic!("a sealed commit does not open");
            };
            assert_eq!(opened, commit());
            assert_eq!(bytes, rest);
            receive(&body);
        }
        2 => {
            let mut nonce = [0u8; 24];
            let take = rest.len().min(24);
            nonce[..take].copy_from_slice(&rest[..take]);
            receive(&seal_plaintext(nonce, rest));
        }
        _ => {
            let (tick, payload) = header_tick(rest);
            let snapshot = snapshot_around::<Shooter>(Shooter::SCHEMA_VERSION, 3, tick, payload);
            receive(&seal(&KEY, &commit(), &snapshot));
        }
    }
});
