//! The SSO's signing keys (`{EVE_SSO_URL}/oauth/jwks`), cached by key id. CCP rotates them: a
//! token naming a key id the cache does not know makes it fetch the set again, at most once per
//! interval so that made-up key ids cannot turn into a flood of requests; and the set is fetched
//! again after an hour anyway, so a key withdrawn from it stops being trusted.

use std::collections::HashMap;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a fetched set is trusted without a fetch.
const MAX_AGE: Duration = Duration::from_secs(3600);

pub struct Jwks {
    url: String,
    http: reqwest::Client,
    refetch: Duration,
    /// Held across a fetch, so concurrent verifications wait for one fetch instead of each
    /// making their own.
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks").field("url", &self.url).finish()
    }
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, DecodingKey>,
    fetched_at: Option<Instant>,
}

/// Why no key came out of the set.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// The set, even fresh, has no key of that id: the token cannot be trusted.
    #[error("the SSO has no signing key {0:?}")]
    UnknownKey(String),
    /// The set could not be fetched: try again later.
    #[error("fetching the JWKS: {0}")]
    Unavailable(String),
}

impl Jwks {
    pub fn new(url: String, http: reqwest::Client, refetch: Duration) -> Self {
        Self {
            url,
            http,
            refetch,
            cache: Mutex::default(),
        }
    }

    /// The key `kid`, fetching the set when it is old, or when it lacks `kid` and was not
    /// fetched within the refetch interval.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, JwksError> {
        let mut cache = self.cache.lock().await;
        let age = cache.fetched_at.map(|at| at.elapsed());
        let stale = age.is_none_or(|age| age >= MAX_AGE);
        let may_refetch = age.is_none_or(|age| age >= self.refetch);
        if stale || (!cache.keys.contains_key(kid) && may_refetch) {
            *cache = self.fetch().await?;
        }
        cache
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| JwksError::UnknownKey(kid.to_owned()))
    }

    async fn fetch(&self) -> Result<Cache, JwksError> {
        let unavailable = |e: reqwest::Error| JwksError::Unavailable(e.to_string());
        let set: JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(unavailable)?
            .json()
            .await
            .map_err(unavailable)?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                match DecodingKey::from_jwk(jwk) {
                    Ok(key) => Some((kid, key)),
                    Err(error) => {
                        tracing::warn!(%kid, %error, "skipping a JWKS key of an unknown kind");
                        None
                    }
                }
            })
            .collect();
        Ok(Cache {
            keys,
            fetched_at: Some(Instant::now()),
        })
    }
}
