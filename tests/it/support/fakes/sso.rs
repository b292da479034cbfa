//! A fake EVE SSO v2: `/v2/oauth/authorize` (logs in the pilot the test put at the keyboard and
//! comes back to the callback with a code), `/v2/oauth/token` (codes with PKCE S256 checked,
//! refresh tokens rotated on each use, client credentials checked), `/v2/oauth/revoke`, and
//! `/oauth/jwks`, whose signing key the test can rotate. Access tokens are RS256 JWTs shaped as
//! CCP's, signed with the test-only keys in `fixtures/sso/` (`forger.pem` is never published).
//!
//! [`FakeSso::log_in`] logs a character in for a test without a browser: a code is issued as
//! if the pilot had logged in, exchanged through killreport's own SSO client, and the grant
//! recorded as `/auth/callback` records it.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Json};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use killreport::auth::Auth;
use killreport::auth::sso::Grant;
use killreport::config::SsoArgs;
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::PgPool;

use super::{Fake, Served};
use crate::support::TestEnv;

pub const CLIENT_ID: &str = "killreport-test-client";
pub const CLIENT_SECRET: &str = "killreport-test-secret";
/// The tests' TOKEN_KEY: 32 bytes, base64.
pub const TOKEN_KEY: &str = "a2lsbHJlcG9ydCB0ZXN0IGtleSwgMzIgYnl0ZXMgISE=";
/// Everything killreport asks for.
pub const SCOPES: [&str; 4] = [
    "publicData",
    "esi-killmails.read_killmails.v1",
    "esi-killmails.read_corporation_killmails.v1",
    "esi-characters.read_corporation_roles.v1",
];

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/fixtures/sso");

/// A test signing key: its key id, private key (PEM) and public JWK.
#[derive(Clone)]
pub struct TestKey {
    pub kid: String,
    pub pem: Vec<u8>,
    pub jwk: Value,
}

impl TestKey {
    /// `fixtures/sso/<name>.pem`, published under key id `kid`.
    pub fn load(name: &str, kid: &str) -> Self {
        let pem = std::fs::read(format!("{FIXTURES}/{name}.pem")).expect("a test key");
        let public: Value = serde_json::from_slice(
            &std::fs::read(format!("{FIXTURES}/public.json")).expect("the test keys' JWKs"),
        )
        .expect("JSON");
        let jwk = json!({
            "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
            "n": public[name]["n"], "e": public[name]["e"],
        });
        Self {
            kid: kid.to_owned(),
            pem,
            jwk,
        }
    }

    /// `claims` as a JWT signed with this key (RS256, naming this key id).
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&self.pem).expect("an RSA key");
        jsonwebtoken::encode(&header, claims, &key).expect("signing")
    }
}

/// A character that can log in.
#[derive(Debug, Clone)]
pub struct Pilot {
    pub character_id: i64,
    pub name: String,
    pub owner_hash: String,
    pub scopes: Vec<String>,
}

impl Pilot {
    /// A pilot granting every scope killreport asks for.
    pub fn new(character_id: i64, name: &str) -> Self {
        Self {
            character_id,
            name: name.to_owned(),
            owner_hash: format!("owner-of-{character_id}"),
            scopes: SCOPES.iter().map(|s| (*s).to_owned()).collect(),
        }
    }
}

struct IssuedCode {
    pilot: Pilot,
    challenge: String,
}

pub struct SsoState {
    /// The fake's `http://127.0.0.1:port`, once served.
    pub url: Option<String>,
    /// The key that signs new tokens, and the one before it (still in the JWKS).
    pub signing: TestKey,
    pub previous: Option<TestKey>,
    /// Who logs in at the next `/v2/oauth/authorize`.
    pub at_keyboard: Option<Pilot>,
    codes: HashMap<String, IssuedCode>,
    /// Valid refresh tokens → their pilot.
    refresh_tokens: HashMap<String, Pilot>,
    /// Seconds an access token lives.
    pub access_lifetime: i64,
    /// Refresh tokens revoked through `/v2/oauth/revoke`, in order.
    pub revoked: Vec<String>,
    /// `grant_type` of every token request, in order.
    pub token_requests: Vec<String>,
    pub jwks_fetches: usize,
}

impl Default for SsoState {
    fn default() -> Self {
        Self {
            url: None,
            signing: TestKey::load("a", "JWT-Signature-Key-a"),
            previous: None,
            at_keyboard: None,
            codes: HashMap::new(),
            refresh_tokens: HashMap::new(),
            access_lifetime: 1200,
            revoked: Vec::new(),
            token_requests: Vec::new(),
            jwks_fetches: 0,
        }
    }
}

pub type FakeSso = Fake<SsoState>;

impl FakeSso {
    /// Serves the fake on a port of its own.
    pub async fn serve(&self) -> Served {
        let served = self
            .serve_routes(
                axum::Router::new()
                    .route("/v2/oauth/authorize", get(authorize))
                    .route("/v2/oauth/token", post(token))
                    .route("/v2/oauth/revoke", post(revoke))
                    .route("/oauth/jwks", get(jwks)),
            )
            .await;
        self.state().url = Some(served.url());
        served
    }

    /// Serves the fake and points the test's processes at it (with the tests' application and
    /// TOKEN_KEY; the JWKS fetched again for any unknown key id at once).
    pub async fn serve_for(&self, env: &mut TestEnv) -> Served {
        let served = self.serve().await;
        for (name, value) in [
            ("EVE_SSO_URL", served.url()),
            ("EVE_CLIENT_ID", CLIENT_ID.to_owned()),
            ("EVE_CLIENT_SECRET", CLIENT_SECRET.to_owned()),
            ("TOKEN_KEY", TOKEN_KEY.to_owned()),
            ("EVE_SSO_JWKS_REFETCH_SECS", "0".to_owned()),
        ] {
            env.vars.insert(name.into(), value);
        }
        served
    }

    /// killreport's SSO client and cipher as a process configured by [`Self::serve_for`] has
    /// them.
    pub fn auth(&self) -> Auth {
        self.auth_refetching_after(0)
    }

    /// The same, fetching the JWKS for an unknown key id at most once per `seconds`.
    pub fn auth_refetching_after(&self, seconds: u64) -> Auth {
        let url = self.state().url.clone().expect("a served fake SSO");
        SsoArgs {
            eve_sso_url: url,
            eve_client_id: Some(CLIENT_ID.into()),
            eve_client_secret: Some(CLIENT_SECRET.into()),
            eve_callback_url: "http://127.0.0.1:9/auth/callback".into(),
            token_key: Some(TOKEN_KEY.into()),
            eve_sso_timeout_secs: 10,
            eve_sso_jwks_refetch_secs: seconds,
        }
        .auth()
        .expect("SSO settings")
        .expect("an SSO")
    }

    /// Logs `pilot` in without a browser: a code issued as if they had logged in, exchanged
    /// (with its PKCE verifier) by killreport's SSO client, and the grant recorded in `pool`
    /// as `/auth/callback` records it. Returns the grant (tokens in clear, for assertions).
    pub async fn log_in(&self, pool: &PgPool, pilot: &Pilot) -> Grant {
        let auth = self.auth();
        let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let code = self.issue_code(pilot, &challenge(&verifier));
        let grant = auth
            .sso
            .exchange_code(&code, &verifier)
            .await
            .expect("the fake SSO grants the code");
        killreport::auth::tokens::remember(pool, &auth, &grant)
            .await
            .expect("recording the login");
        grant
    }

    /// A code for `pilot`, as if they had logged in asking with `challenge`.
    pub fn issue_code(&self, pilot: &Pilot, challenge: &str) -> String {
        let code = random_token();
        self.state().codes.insert(
            code.clone(),
            IssuedCode {
                pilot: pilot.clone(),
                challenge: challenge.to_owned(),
            },
        );
        code
    }

    /// Signs new tokens with another key (published beside the old one), as CCP rotates them.
    pub fn rotate_key(&self) {
        let mut state = self.state();
        let next = if state.signing.kid.ends_with("-a") {
            TestKey::load("b", "JWT-Signature-Key-b")
        } else {
            TestKey::load("a", "JWT-Signature-Key-a")
        };
        let old = std::mem::replace(&mut state.signing, next);
        state.previous = Some(old);
    }

    /// Revokes every refresh token of `character_id`, as a pilot removing the application's
    /// access on EVE's site: the next refresh is refused.
    pub fn withdraw_access(&self, character_id: i64) {
        self.state()
            .refresh_tokens
            .retain(|_, pilot| pilot.character_id != character_id);
    }

    /// Whether `refresh_token` is one the fake would still honour.
    pub fn is_valid_refresh_token(&self, refresh_token: &str) -> bool {
        self.state().refresh_tokens.contains_key(refresh_token)
    }

    /// The claims of an access token for `pilot` as CCP's SSO writes them.
    pub fn claims(&self, pilot: &Pilot) -> Value {
        let lifetime = self.state().access_lifetime;
        let now = chrono::Utc::now().timestamp();
        json!({
            "scp": pilot.scopes,
            "jti": random_token(),
            "kid": "JWT-Signature-Key",
            "sub": format!("CHARACTER:EVE:{}", pilot.character_id),
            "azp": CLIENT_ID,
            "tenant": "tranquility",
            "tier": "live",
            "region": "world",
            "aud": [CLIENT_ID, "EVE Online"],
            "name": pilot.name,
            "owner": pilot.owner_hash,
            "exp": now + lifetime,
            "iat": now,
            "iss": "https://login.eveonline.com",
        })
    }

    /// `claims` signed with the current signing key.
    pub fn sign(&self, claims: &Value) -> String {
        let key = self.state().signing.clone();
        key.sign(claims)
    }

    fn grant(&self, pilot: &Pilot) -> Value {
        let access_token = self.sign(&self.claims(pilot));
        let refresh_token = random_token();
        let mut state = self.state();
        state
            .refresh_tokens
            .insert(refresh_token.clone(), pilot.clone());
        json!({
            "access_token": access_token,
            "expires_in": state.access_lifetime,
            "token_type": "Bearer",
            "refresh_token": refresh_token,
        })
    }
}

/// The PKCE S256 challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, verifier.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>())
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({ "error": error, "error_description": description });
    (status, Json(body)).into_response()
}

#[derive(Deserialize)]
struct AuthorizeQuery {
    response_type: String,
    redirect_uri: String,
    client_id: String,
    state: String,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
}

async fn authorize(State(fake): State<FakeSso>, Query(query): Query<AuthorizeQuery>) -> Response {
    if query.response_type != "code" || query.client_id != CLIENT_ID {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad client or type",
        );
    }
    let (Some(challenge), Some("S256")) =
        (query.code_challenge, query.code_challenge_method.as_deref())
    else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "PKCE S256 required",
        );
    };
    let Some(pilot) = fake.state().at_keyboard.clone() else {
        return oauth_error(StatusCode::BAD_REQUEST, "access_denied", "nobody logged in");
    };
    let code = fake.issue_code(&pilot, &challenge);
    let mut back = reqwest::Url::parse(&query.redirect_uri).expect("a redirect URI");
    back.query_pairs_mut()
        .append_pair("code", &code)
        .append_pair("state", &query.state);
    Redirect::to(back.as_str()).into_response()
}

fn client_authenticated(headers: &HeaderMap) -> bool {
    let expected = format!(
        "Basic {}",
        STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"))
    );
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes())
}

async fn token(
    State(fake): State<FakeSso>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    fake.state().token_requests.push(grant_type.clone());
    if !client_authenticated(&headers) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client credentials",
        );
    }
    let pilot = match grant_type.as_str() {
        "authorization_code" => {
            let issued = form
                .get("code")
                .and_then(|code| fake.state().codes.remove(code));
            let Some(issued) = issued else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown or used code",
                );
            };
            let verified = form
                .get("code_verifier")
                .is_some_and(|verifier| challenge(verifier) == issued.challenge);
            if !verified {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "PKCE verification failed",
                );
            }
            issued.pilot
        }
        "refresh_token" => {
            let pilot = form
                .get("refresh_token")
                .and_then(|token| fake.state().refresh_tokens.remove(token));
            let Some(pilot) = pilot else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "invalid refresh token",
                );
            };
            pilot
        }
        _ => return oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "no"),
    };
    Json(fake.grant(&pilot)).into_response()
}

async fn revoke(
    State(fake): State<FakeSso>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    if !client_authenticated(&headers) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad client credentials",
        );
    }
    let Some(token) = form.get("token") else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "no token");
    };
    let mut state = fake.state();
    state.refresh_tokens.remove(token);
    state.revoked.push(token.clone());
    StatusCode::OK.into_response()
}

async fn jwks(State(fake): State<FakeSso>) -> Json<Value> {
    let mut state = fake.state();
    state.jwks_fetches += 1;
    let keys: Vec<Value> = std::iter::once(&state.signing)
        .chain(state.previous.as_ref())
        .map(|key| key.jwk.clone())
        .collect();
    Json(json!({ "keys": keys, "SkipUnresolvedJsonWebKeys": true }))
}
