//! Arbitrary bytes through the `MatchSnapshot` decoder (what a restore reads from the
//! store and a standby from a handoff), for both games behind the `Game` trait.
//!
//! A checksum guards the payload, so random bytes rarely get past it: the first byte
//! chooses what the rest is.
//! - `0`: a whole snapshot, as found on disk or in Redis;
//! - `1`: the payload of a snapshot of the shooter whose header and checksum are made
//!   valid around it (the header's tick from the first 8 bytes: `arena_fuzz::header_tick`);
//! - `2`: the same for tag;
//! - `3`: the same for the shooter with another schema version (the `migrate` path).
//!
//! Properties: nothing panics; what decodes has a header `read_header` agrees with, and
//! encodes back to a snapshot that decodes to the same match (see
//! `arena_fuzz::check_snapshot`).
#![no_main]

use arena_fuzz::{MATCH_ID, check_snapshot, header_tick, snapshot_around};
use arena_shared::game::Game;
use arena_shared::sim::Shooter;
use arena_tag::Tag;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            check_snapshot::<Shooter>(rest, MATCH_ID);
            check_snapshot::<Tag>(rest, MATCH_ID);
        }
        mode => {
            let (tick, payload) = header_tick(rest);
            match mode {
                1 => {
                    let bytes =
                        snapshot_around::<Shooter>(Shooter::SCHEMA_VERSION, 3, tick, payload);
                    check_snapshot::<Shooter>(&bytes, MATCH_ID);
                }
                2 => {
                    let bytes = snapshot_around::<Tag>(Tag::SCHEMA_VERSION, 3, tick, payload);
                    check_snapshot::<Tag>(&bytes, MATCH_ID);
                }
                _ => {
                    let schema = Shooter::SCHEMA_VERSION.wrapping_sub(1 + (tick as u32 & 1));
                    let bytes = snapshot_around::<Shooter>(schema, 3, tick, payload);
                    check_snapshot::<Shooter>(&bytes, MATCH_ID);
                }
            }
        }
    }
});
