//! Logging in with EVE SSO, against the fake SSO: tokens verified against its JWKS (forged,
//! expired, foreign tokens refused; a rotated key picked up), PKCE, tokens sealed at rest,
//! access tokens refreshed and refused refresh tokens marking the login.

use killreport::auth::cipher::TokenCipher;
use killreport::auth::sso::SsoError;
use killreport::auth::tokens::{TokenError, access_token};
use serde_json::json;

use crate::support::TestEnv;
use crate::support::fakes::sso::{FakeSso, Pilot, TOKEN_KEY, TestKey, challenge};

/// The sealed tokens of `character_id` as stored.
async fn stored_tokens(env: &TestEnv, character_id: i64) -> (Vec<u8>, Vec<u8>, bool) {
    sqlx::query_as(
        "SELECT refresh_token, access_token, needs_login FROM sso_logins WHERE character_id = $1",
    )
    .bind(character_id)
    .fetch_one(&env.pool)
    .await
    .expect("a login row")
}

#[tokio::test]
async fn tokens_are_sealed_at_rest_and_open_only_with_the_key() {
    let env = TestEnv::new().await;
    let sso = FakeSso::default();
    let _served = sso.serve().await;
    let pilot = Pilot::new(2112625428, "Test Pilot");
    let grant = sso.log_in(&env.pool, &pilot).await;

    let (refresh, access, needs_login) = stored_tokens(&env, pilot.character_id).await;
    assert!(!needs_login);
    let clear = grant.refresh_token.expose().as_bytes();
    assert!(
        !refresh.windows(clear.len()).any(|w| w == clear),
        "the stored bytes hold the refresh token in clear"
    );
    let key = TokenCipher::from_base64(TOKEN_KEY).expect("the test key");
    assert_eq!(
        key.open(pilot.character_id, &refresh).expect("opens"),
        grant.refresh_token.expose()
    );
    assert_eq!(
        key.open(pilot.character_id, &access).expect("opens"),
        grant.access_token.expose()
    );
    let other = TokenCipher::from_bytes(&[9; 32]).expect("a key");
    assert!(other.open(pilot.character_id, &refresh).is_err());
    env.cleanup().await;
}

#[tokio::test]
async fn a_fresh_access_token_is_used_and_an_expiring_one_refreshed() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let _served = sso.serve_for(&mut env).await;
    let auth = sso.auth();
    let pilot = Pilot::new(90000001, "Fresh Pilot");
    let grant = sso.log_in(&env.pool, &pilot).await;

    let token = access_token(&env.pool, &auth, pilot.character_id)
        .await
        .expect("a token");
    assert_eq!(
        token.token, grant.access_token,
        "a fresh token is used as it is"
    );
    assert_eq!(sso.state().token_requests, ["authorization_code"]);

    // Tokens that live under the refresh margin are refreshed before use.
    sso.state().access_lifetime = 30;
    let expiring = sso.log_in(&env.pool, &pilot).await;
    let token = access_token(&env.pool, &auth, pilot.character_id)
        .await
        .expect("a refreshed token");
    assert_ne!(token.token, expiring.access_token);
    assert_eq!(
        sso.state().token_requests.last().map(String::as_str),
        Some("refresh_token")
    );
    assert!(
        !sso.is_valid_refresh_token(expiring.refresh_token.expose()),
        "the SSO rotated the refresh token"
    );
    let (refresh, _, _) = stored_tokens(&env, pilot.character_id).await;
    let stored = auth
        .cipher
        .open(pilot.character_id, &refresh)
        .expect("opens");
    assert!(
        sso.is_valid_refresh_token(&stored),
        "the rotated refresh token is stored"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_refused_refresh_token_marks_the_login_as_needing_the_pilot() {
    let env = TestEnv::new().await;
    let sso = FakeSso::default();
    let _served = sso.serve().await;
    let auth = sso.auth();
    sso.state().access_lifetime = 30;
    let pilot = Pilot::new(90000002, "Gone Pilot");
    sso.log_in(&env.pool, &pilot).await;
    sso.withdraw_access(pilot.character_id);

    let refused = access_token(&env.pool, &auth, pilot.character_id).await;
    assert!(matches!(refused, Err(TokenError::NeedsLogin(id)) if id == pilot.character_id));
    let (_, _, needs_login) = stored_tokens(&env, pilot.character_id).await;
    assert!(needs_login);
    // Asked again, it does not bother the SSO.
    let requests = sso.state().token_requests.len();
    assert!(
        access_token(&env.pool, &auth, pilot.character_id)
            .await
            .is_err()
    );
    assert_eq!(sso.state().token_requests.len(), requests);
    assert!(matches!(
        access_token(&env.pool, &auth, 1).await,
        Err(TokenError::NotLoggedIn(1))
    ));
    env.cleanup().await;
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_refused() {
    let sso = FakeSso::default();
    let _served = sso.serve().await;
    let auth = sso.auth();
    let pilot = Pilot::new(90000003, "Verified Pilot");

    let good = sso.sign(&sso.claims(&pilot));
    let verified = auth.sso.verify(&good).await.expect("a good token");
    assert_eq!(verified.character_id, pilot.character_id);
    assert_eq!(verified.character_name, pilot.name);
    assert_eq!(verified.scopes, pilot.scopes);

    // Signed by a key the SSO never published, under the SSO's own key id.
    let kid = sso.state().signing.kid.clone();
    let forged = TestKey::load("forger", &kid).sign(&sso.claims(&pilot));
    let tweaked = |change: serde_json::Value| {
        let mut claims = sso.claims(&pilot);
        for (name, value) in change.as_object().expect("an object") {
            claims[name] = value.clone();
        }
        sso.sign(&claims)
    };
    let past = chrono::Utc::now().timestamp() - 3600;
    let cases = [
        ("forged", forged),
        ("expired", tweaked(json!({ "exp": past }))),
        (
            "another application's",
            tweaked(json!({ "aud": ["someone-else", "EVE Online"] })),
        ),
        (
            "without EVE Online",
            tweaked(json!({ "aud": [crate::support::fakes::sso::CLIENT_ID] })),
        ),
        (
            "another issuer's",
            tweaked(json!({ "iss": "https://login.example.com" })),
        ),
        ("not a character's", tweaked(json!({ "sub": "APP:EVE:1" }))),
        ("not a JWT", "garbage".to_owned()),
    ];
    for (what, token) in cases {
        let refused = auth.sso.verify(&token).await;
        assert!(
            matches!(refused, Err(SsoError::Invalid(_))),
            "a {what} token: {refused:?}"
        );
    }
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_unknown_keys_do_not_flood_the_sso() {
    let sso = FakeSso::default();
    let _served = sso.serve().await;
    // One fetch per minute at most for unknown key ids.
    let auth = sso.auth_refetching_after(60);
    let pilot = Pilot::new(90000004, "Rotating Pilot");

    auth.sso
        .verify(&sso.sign(&sso.claims(&pilot)))
        .await
        .expect("the first key");
    assert_eq!(sso.state().jwks_fetches, 1);

    // Made-up key ids: refused without a fetch each (the set was fetched just now).
    for n in 0..5 {
        let stranger = TestKey::load("forger", &format!("made-up-{n}"));
        assert!(
            auth.sso
                .verify(&stranger.sign(&sso.claims(&pilot)))
                .await
                .is_err()
        );
    }
    assert_eq!(sso.state().jwks_fetches, 1);

    // With refetches allowed at once, a rotated key is picked up on its first token.
    let auth = sso.auth();
    auth.sso
        .verify(&sso.sign(&sso.claims(&pilot)))
        .await
        .expect("the first key");
    sso.rotate_key();
    let verified = auth
        .sso
        .verify(&sso.sign(&sso.claims(&pilot)))
        .await
        .expect("the rotated key");
    assert_eq!(verified.character_id, pilot.character_id);
    assert_eq!(sso.state().jwks_fetches, 3);
}

#[tokio::test]
async fn a_code_is_granted_only_with_its_pkce_verifier_and_only_once() {
    let sso = FakeSso::default();
    let _served = sso.serve().await;
    let auth = sso.auth();
    let pilot = Pilot::new(90000005, "Careful Pilot");
    let verifier = "a-verifier-of-enough-length-to-be-a-real-one-0123456789";

    let code = sso.issue_code(&pilot, &challenge(verifier));
    let refused = auth.sso.exchange_code(&code, "").await;
    assert!(matches!(refused, Err(SsoError::Refused(_))), "{refused:?}");
    let code = sso.issue_code(&pilot, &challenge(verifier));
    let refused = auth.sso.exchange_code(&code, "another-verifier").await;
    assert!(matches!(refused, Err(SsoError::Refused(_))), "{refused:?}");

    let code = sso.issue_code(&pilot, &challenge(verifier));
    let grant = auth
        .sso
        .exchange_code(&code, verifier)
        .await
        .expect("granted");
    assert_eq!(grant.character.character_id, pilot.character_id);
    let replayed = auth.sso.exchange_code(&code, verifier).await;
    assert!(
        matches!(replayed, Err(SsoError::Refused(_))),
        "{replayed:?}"
    );
}
