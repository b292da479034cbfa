//! Pilots logging in with EVE SSO: the SSO client and its signing keys (`sso`, `jwks`), the
//! sealing of stored tokens with `TOKEN_KEY` (`cipher`), and the tokens other parts of
//! killreport ask for (`tokens`: a valid access token for a character, refreshed as needed).
//! Tokens are only ever stored sealed and carried as `sso::Secret`s, which never print.

pub mod cipher;
pub mod jwks;
pub mod sessions;
pub mod sso;
pub mod tokens;

use self::cipher::TokenCipher;
use self::sso::Sso;

/// What a process needs to act for logged-in pilots: the SSO and the key of their tokens.
#[derive(Debug, Clone)]
pub struct Auth {
    pub sso: Sso,
    pub cipher: TokenCipher,
}
