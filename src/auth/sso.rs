//! EVE SSO v2 over HTTP: the authorize URL (authorization code with PKCE S256), the token
//! endpoint (code exchange, refresh), revocation, and the verification of the access token, a
//! JWT signed by a key of the SSO's JWKS (see [`super::jwks`]). Every failure says whether the
//! SSO refused (the pilot must log in again), the token is not to be trusted, or the SSO could
//! not be reached (try again later). Tokens travel as [`Secret`]s, which never print.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, Validation};
use reqwest::StatusCode;
use serde::Deserialize;

use super::jwks::{Jwks, JwksError};

/// Issuers EVE's access tokens may name (the SSO has used both spellings).
pub const ISSUERS: [&str; 2] = ["login.eveonline.com", "https://login.eveonline.com"];

/// The audience every EVE access token holds beside the application's client id.
pub const EVE_AUDIENCE: &str = "EVE Online";

/// Signature algorithms EVE's JWKS keys use; anything else (`none`, HMAC) is refused.
const ALGORITHMS: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

/// Where and as whom killreport talks to the SSO.
#[derive(Debug, Clone)]
pub struct SsoSettings {
    /// `https://login.eveonline.com`, or a fake's URL.
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    /// `/auth/callback` as registered with the application.
    pub callback_url: String,
    /// Bound on each request to the SSO.
    pub timeout: Duration,
    /// Least time between two JWKS fetches for a key id the cache does not know: a rotated
    /// key is picked up at once, a flood of made-up key ids costs one fetch per interval.
    pub jwks_refetch: Duration,
}

/// A token or secret: its `Debug` shows nothing, and it has no `Serialize`, so it does not
/// reach logs, queue messages or GraphQL by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// The SSO said no (`invalid_grant`: a used or unknown code, a revoked refresh token, a
    /// wrong PKCE verifier): only a new login helps.
    #[error("the SSO refused: {0}")]
    Refused(String),
    /// A token that must not be trusted: bad signature, unknown key, expired, another
    /// application's or issuer's, or malformed.
    #[error("the SSO's token is not valid: {0}")]
    Invalid(String),
    /// The SSO could not be reached or failed: try again later.
    #[error("the SSO is unavailable: {0}")]
    Unavailable(String),
}

impl From<JwksError> for SsoError {
    fn from(error: JwksError) -> Self {
        match error {
            JwksError::UnknownKey(_) => SsoError::Invalid(error.to_string()),
            JwksError::Unavailable(_) => SsoError::Unavailable(error.to_string()),
        }
    }
}

/// The character an access token speaks for, as its verified JWT says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    pub character_id: i64,
    pub character_name: String,
    /// Changes when the character moves to another account.
    pub owner_hash: String,
    pub scopes: Vec<String>,
    pub expires_at: DateTime<Utc>,
}

/// What the token endpoint grants: the tokens and the verified access token's claims.
#[derive(Debug, Clone)]
pub struct Grant {
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub character: VerifiedToken,
}

/// The EVE SSO client; cheap to clone (one HTTP client and one JWKS cache per process).
#[derive(Debug, Clone)]
pub struct Sso(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    settings: SsoSettings,
    http: reqwest::Client,
    jwks: Jwks,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<String>,
    error_description: Option<String>,
}

/// A claim EVE sends either as one string or as a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    name: String,
    owner: String,
    exp: i64,
    aud: OneOrMany,
    scp: Option<OneOrMany>,
}

impl Sso {
    pub fn new(settings: SsoSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .user_agent(crate::esi::USER_AGENT)
            .timeout(settings.timeout)
            .build()?;
        let jwks = Jwks::new(
            format!("{}/oauth/jwks", settings.base_url.trim_end_matches('/')),
            http.clone(),
            settings.jwks_refetch,
        );
        Ok(Self(Arc::new(Inner {
            settings,
            http,
            jwks,
        })))
    }

    pub fn settings(&self) -> &SsoSettings {
        &self.0.settings
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.0.settings.base_url.trim_end_matches('/'))
    }

    /// Where to send the pilot: the SSO's login page, which comes back to the callback with a
    /// code and `state`; `challenge` is the PKCE S256 challenge of the verifier kept for it.
    pub fn authorize_url(&self, state: &str, challenge: &str, scopes: &[String]) -> String {
        let settings = &self.0.settings;
        let mut url = reqwest::Url::parse(&self.url("/v2/oauth/authorize"))
            .unwrap_or_else(|_| unreachable!("EVE_SSO_URL was checked at startup"));
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("redirect_uri", &settings.callback_url)
            .append_pair("client_id", &settings.client_id)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("code_challenge", challenge)
            .append_pair("code_challenge_method", "S256")
            .append_pair("state", state);
        url.into()
    }

    /// Exchanges an authorization code (with the PKCE verifier kept for its `state`) for
    /// tokens, and verifies the access token.
    pub async fn exchange_code(&self, code: &str, verifier: &str) -> Result<Grant, SsoError> {
        self.token(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("code_verifier", verifier),
        ])
        .await
    }

    /// A new access token (and the refresh token that replaces `refresh_token`, which the SSO
    /// may rotate).
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<Grant, SsoError> {
        self.token(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token.expose()),
        ])
        .await
    }

    /// Revokes a refresh token at the SSO (at logout), so that it can no longer be used.
    pub async fn revoke(&self, refresh_token: &Secret) -> Result<(), SsoError> {
        let response = self
            .post("/v2/oauth/revoke")
            .form(&[
                ("token_type_hint", "refresh_token"),
                ("token", refresh_token.expose()),
            ])
            .send()
            .await
            .map_err(|e| unavailable("revoking a token", &e))?;
        match response.status() {
            status if status.is_success() => Ok(()),
            status => Err(refusal("revoking a token", status, response).await),
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let settings = &self.0.settings;
        self.0
            .http
            .post(self.url(path))
            .basic_auth(&settings.client_id, Some(settings.client_secret.expose()))
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<Grant, SsoError> {
        let response = self
            .post("/v2/oauth/token")
            .form(form)
            .send()
            .await
            .map_err(|e| unavailable("asking for a token", &e))?;
        let status = response.status();
        if !status.is_success() {
            return Err(refusal("asking for a token", status, response).await);
        }
        let tokens: TokenResponse = response.json().await.map_err(|e| {
            SsoError::Invalid(format!("the token endpoint's answer is not a token: {e}"))
        })?;
        let character = self.verify(&tokens.access_token).await?;
        Ok(Grant {
            access_token: Secret(tokens.access_token),
            refresh_token: Secret(tokens.refresh_token),
            character,
        })
    }

    /// Verifies an access token: signed by a key of the SSO's JWKS (fetched again for a key
    /// id it does not know, at most once per `jwks_refetch`), issued by the SSO, for this
    /// application and `EVE Online`, not expired, naming a character.
    pub async fn verify(&self, jwt: &str) -> Result<VerifiedToken, SsoError> {
        let header = jsonwebtoken::decode_header(jwt)
            .map_err(|e| SsoError::Invalid(format!("not a JWT: {e}")))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(SsoError::Invalid(format!(
                "signed with {:?}, not RS256 or ES256",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| SsoError::Invalid("the JWT names no key (kid)".into()))?;
        let key = self.0.jwks.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&ISSUERS);
        validation.set_audience(&[&self.0.settings.client_id]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let claims = jsonwebtoken::decode::<Claims>(jwt, &key, &validation)
            .map_err(|e| SsoError::Invalid(e.to_string()))?
            .claims;
        if !claims.aud.into_vec().iter().any(|aud| aud == EVE_AUDIENCE) {
            return Err(SsoError::Invalid(format!(
                "the audience lacks {EVE_AUDIENCE:?}"
            )));
        }
        let character_id = claims
            .sub
            .strip_prefix("CHARACTER:EVE:")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| {
                SsoError::Invalid(format!("subject {:?} is no character", claims.sub))
            })?;
        let expires_at = DateTime::from_timestamp(claims.exp, 0)
            .ok_or_else(|| SsoError::Invalid("the expiry is out of range".into()))?;
        Ok(VerifiedToken {
            character_id,
            character_name: claims.name,
            owner_hash: claims.owner,
            scopes: claims.scp.map(OneOrMany::into_vec).unwrap_or_default(),
            expires_at,
        })
    }
}

fn unavailable(what: &str, error: &reqwest::Error) -> SsoError {
    SsoError::Unavailable(format!("{what}: {error}"))
}

/// A 4xx from the SSO is its refusal (with its OAuth error, if it gave one); anything else an
/// outage.
async fn refusal(what: &str, status: StatusCode, response: reqwest::Response) -> SsoError {
    if !status.is_client_error() || status == StatusCode::TOO_MANY_REQUESTS {
        return SsoError::Unavailable(format!("{what}: the SSO answered {status}"));
    }
    let reason = match response.json::<ErrorResponse>().await {
        Ok(ErrorResponse {
            error: Some(error),
            error_description,
        }) => match error_description {
            Some(description) => format!("{error}: {description}"),
            None => error,
        },
        _ => status.to_string(),
    };
    SsoError::Refused(format!("{what}: {reason}"))
}
