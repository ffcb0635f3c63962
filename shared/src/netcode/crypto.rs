//! The two AEADs netcode.io uses, as functions over caller-owned buffers.
//!
//! Packets and challenge tokens use ChaCha20-Poly1305 (IETF, 96-bit nonce) with the nonce
//! `00 00 00 00 ‖ sequence (u64 LE)`; the private part of a connect token uses
//! XChaCha20-Poly1305 with a random 192-bit nonce. Both encrypt in place and keep the
//! 16-byte tag separate, because netcode places the tag at fixed offsets.
//!
//! Packets go through `ring` (every datagram pays for it, and for a packet of a few
//! hundred bytes ring is about seven times faster); the connect token's XChaCha20, which
//! ring lacks, through RustCrypto's `chacha20poly1305`.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::{Key, MAC_BYTES};

/// Authentication failed: wrong key, wrong associated data, or altered bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authentication failed (wrong key, wrong associated data or altered bytes)")]
pub struct AeadError;

/// The 12-byte packet nonce for `sequence`.
pub fn sequence_nonce(sequence: u64) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&sequence.to_le_bytes());
    nonce
}

/// Encrypts `buf` in place with ChaCha20-Poly1305 and returns the tag.
pub fn seal(
    key: &Key,
    sequence: u64,
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; MAC_BYTES], AeadError> {
    let tag = packet_key(key)?
        .seal_in_place_separate_tag(packet_nonce(sequence), Aad::from(aad), buf)
        .map_err(|_| AeadError)?;
    let mut out = [0u8; MAC_BYTES];
    out.copy_from_slice(tag.as_ref());
    Ok(out)
}

/// Decrypts `buf` in place with ChaCha20-Poly1305, checking `tag`.
///
/// On failure `buf` holds no plaintext (ring zeroes what it decrypted): a caller drops it.
pub fn open(
    key: &Key,
    sequence: u64,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; MAC_BYTES],
) -> Result<(), AeadError> {
    packet_key(key)?
        .open_in_place_separate_tag(
            packet_nonce(sequence),
            Aad::from(aad),
            (*tag).into(),
            buf,
            0..,
        )
        .map(|_| ())
        .map_err(|_| AeadError)
}

/// The packet cipher for `key` (setting one up is a copy of the key; ring refuses only a
/// key of the wrong length, which a [`Key`] cannot be).
fn packet_key(key: &Key) -> Result<LessSafeKey, AeadError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| AeadError)
}

/// `sequence_nonce`, as ring takes it.
fn packet_nonce(sequence: u64) -> Nonce {
    Nonce::assume_unique_for_key(sequence_nonce(sequence))
}

/// Encrypts `buf` in place with XChaCha20-Poly1305 and returns the tag.
pub fn xseal(
    key: &Key,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
) -> Result<[u8; MAC_BYTES], AeadError> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    let tag = cipher
        .encrypt_inout_detached(&(*nonce).into(), aad, buf.into())
        .map_err(|_| AeadError)?;
    Ok(tag.into())
}

/// Decrypts `buf` in place with XChaCha20-Poly1305, checking `tag`.
pub fn xopen(
    key: &Key,
    nonce: &[u8; 24],
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; MAC_BYTES],
) -> Result<(), AeadError> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt_inout_detached(&(*nonce).into(), aad, buf.into(), &Tag::from(*tag))
        .map_err(|_| AeadError)
}
