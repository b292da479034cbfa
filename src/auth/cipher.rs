//! Sealing SSO tokens at rest: ChaCha20-Poly1305 under the install's `TOKEN_KEY`, a fresh
//! random nonce per seal, and the character's id as associated data, so a sealed token copied
//! onto another character's row does not open. What is stored is `nonce ‖ ciphertext ‖ tag`;
//! without the key it is noise, and a changed byte makes it fail to open.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Bytes of a `TOKEN_KEY` (given base64-encoded).
pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum CipherError {
    #[error(
        "TOKEN_KEY must be {KEY_LEN} random bytes, base64-encoded (e.g. `openssl rand -base64 32`)"
    )]
    BadKey,
    /// Another key sealed it, it belongs to another row, or it was altered.
    #[error("a sealed token did not open with TOKEN_KEY")]
    Unopenable,
}

/// The AEAD key every stored token is sealed with; cheap to clone.
#[derive(Clone)]
pub struct TokenCipher(Arc<LessSafeKey>);

impl fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenCipher(..)")
    }
}

impl TokenCipher {
    /// The cipher of a `TOKEN_KEY`: 32 bytes in standard base64.
    pub fn from_base64(key: &str) -> Result<Self, CipherError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(key.trim())
            .map_err(|_| CipherError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    pub fn from_bytes(key: &[u8]) -> Result<Self, CipherError> {
        if key.len() != KEY_LEN {
            return Err(CipherError::BadKey);
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, key).map_err(|_| CipherError::BadKey)?;
        Ok(Self(Arc::new(LessSafeKey::new(key))))
    }

    /// `token` sealed for the row of `character_id`.
    pub fn seal(&self, character_id: i64, token: &str) -> Vec<u8> {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut sealed = Vec::with_capacity(NONCE_LEN + token.len() + 16);
        sealed.extend_from_slice(&nonce_bytes);
        let mut body = token.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(character_id.to_be_bytes()),
                &mut body,
            )
            // Only fails for inputs over 256 GiB.
            .unwrap_or_else(|_| unreachable!("a token is far below ChaCha20's limit"));
        sealed.extend_from_slice(&body);
        sealed
    }

    /// The token that [`Self::seal`] sealed for `character_id`.
    pub fn open(&self, character_id: i64, sealed: &[u8]) -> Result<String, CipherError> {
        if sealed.len() < NONCE_LEN {
            return Err(CipherError::Unopenable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CipherError::Unopenable)?;
        let mut body = body.to_vec();
        let opened = self
            .0
            .open_in_place(nonce, Aad::from(character_id.to_be_bytes()), &mut body)
            .map_err(|_| CipherError::Unopenable)?;
        String::from_utf8(opened.to_vec()).map_err(|_| CipherError::Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher(byte: u8) -> TokenCipher {
        TokenCipher::from_bytes(&[byte; KEY_LEN]).expect("a key")
    }

    #[test]
    fn opens_what_it_sealed_for_that_row_only() {
        let key = cipher(7);
        let sealed = key.seal(42, "refresh-token");
        assert!(!sealed.windows(7).any(|w| w == b"refresh"));
        assert_eq!(key.open(42, &sealed).expect("opens"), "refresh-token");
        assert!(key.open(43, &sealed).is_err(), "another row");
        assert!(cipher(8).open(42, &sealed).is_err(), "another key");
        let mut altered = sealed.clone();
        *altered.last_mut().expect("bytes") ^= 1;
        assert!(key.open(42, &altered).is_err(), "altered");
        assert_ne!(
            key.seal(42, "refresh-token"),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert!(TokenCipher::from_base64("c2hvcnQ=").is_err());
        assert!(TokenCipher::from_base64("not base64!").is_err());
        let good = base64::engine::general_purpose::STANDARD.encode([1u8; KEY_LEN]);
        assert!(TokenCipher::from_base64(&good).is_ok());
    }
}
