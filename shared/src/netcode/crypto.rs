//! The two AEADs netcode.io uses, as functions over caller-owned buffers.
//!
//! Packets and challenge tokens use ChaCha20-Poly1305 (IETF, 96-bit nonce) with the nonce
//! `00 00 00 00 ‖ sequence (u64 LE)`; the private part of a connect token uses
//! XChaCha20-Poly1305 with a random 192-bit nonce. Both encrypt in place and keep the
//! 16-byte tag separate, because netcode places the tag at fixed offsets.

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Tag, XChaCha20Poly1305};

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
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    let tag = cipher
        .encrypt_inout_detached(&sequence_nonce(sequence).into(), aad, buf.into())
        .map_err(|_| AeadError)?;
    Ok(tag.into())
}

/// Decrypts `buf` in place with ChaCha20-Poly1305, checking `tag`.
///
/// On failure `buf` is left as it was: the AEAD checks the tag before it decrypts.
pub fn open(
    key: &Key,
    sequence: u64,
    aad: &[u8],
    buf: &mut [u8],
    tag: &[u8; MAC_BYTES],
) -> Result<(), AeadError> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    cipher
        .decrypt_inout_detached(
            &sequence_nonce(sequence).into(),
            aad,
            buf.into(),
            &Tag::from(*tag),
        )
        .map_err(|_| AeadError)
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
