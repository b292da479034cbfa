//! Pilots logging in with EVE SSO: the SSO client and its signing keys (`sso`, `jwks`), the
//! sealing of stored tokens with `TOKEN_KEY` (`cipher`), and the tokens other parts of
//! killreport ask for (`tokens`: a valid access token for a character, refreshed as needed).
//! Tokens are only ever stored sealed and carried as `sso::Secret`s, which never print. API
//! sessions (`sessions`), the `/auth/*` routes (`routes`), and the [`Gate`] through which the
//! HTTP and WebSocket layers tell the GraphQL resolvers who is calling.

pub mod cipher;
pub mod jwks;
pub mod routes;
pub mod sessions;
pub mod sso;
pub mod tokens;

use self::cipher::TokenCipher;
use self::sessions::{Caller, Sessions};
use self::sso::Sso;
use crate::operations::Operations;

/// What a process needs to act for logged-in pilots: the SSO and the key of their tokens.
#[derive(Debug, Clone)]
pub struct Auth {
    pub sso: Sso,
    pub cipher: TokenCipher,
}

/// What the HTTP and WebSocket layers need to tell who calls: the sessions, and the
/// operational tools handed to admins' requests only.
#[derive(Clone)]
pub struct Gate {
    pub sessions: Sessions,
    pub operations: Operations,
}

impl Gate {
    /// Who sends `authorization` (an `Authorization` value); when the store cannot say, the
    /// caller is taken as having no session (logged).
    pub async fn caller(&self, authorization: Option<&str>) -> Caller {
        match self.sessions.caller(authorization).await {
            Ok(caller) => caller,
            Err(error) => {
                tracing::error!(%error, "looking up a session failed");
                Caller::Refused
            }
        }
    }

    /// `request` with what its resolvers may use of its caller.
    pub fn admit(
        &self,
        request: async_graphql::Request,
        caller: &Caller,
    ) -> async_graphql::Request {
        let request = request.data(caller.clone());
        if caller.session().is_some_and(|s| s.admin) {
            request.data(self.operations.clone())
        } else {
            request
        }
    }
}
