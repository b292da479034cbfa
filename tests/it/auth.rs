//! Logging in with EVE SSO, against the fake SSO: tokens verified against its JWKS (forged,
//! expired, foreign tokens refused; a rotated key picked up), PKCE, tokens sealed at rest,
//! access tokens refreshed and refused refresh tokens marking the login; then the server's
//! whole login, sessions over HTTP and WebSocket, `me`, `myKillmailAdded` (each pilot's own,
//! 4403 when the session ends) and admin-only mutations.

use std::collections::BTreeSet;
use std::time::Duration;

use killreport::auth::cipher::TokenCipher;
use killreport::auth::sso::SsoError;
use killreport::auth::tokens::{TokenError, access_token};
use killreport::killmail::Received;
use serde_json::{Value, json};
use tokio::process::Child;

use crate::support::fakes::Served;
use crate::support::fakes::sso::{FakeSso, Pilot, TOKEN_KEY, TestKey, challenge};
use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{PATIENCE, TestEnv, fixtures};

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

/// An HTTP client that shows redirects instead of following them.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PATIENCE)
        .build()
        .expect("an HTTP client")
}

fn location(response: &reqwest::Response) -> reqwest::Url {
    assert_eq!(response.status(), 303, "a redirect");
    let location = response.headers()["location"].to_str().expect("text");
    reqwest::Url::parse(location).expect("a URL")
}

fn query_value(url: &reqwest::Url, name: &str) -> Option<String> {
    url.query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A server logging in with the fake SSO, `vars` set; its URL.
pub(crate) async fn server_with_sso(
    env: &mut TestEnv,
    sso: &FakeSso,
    vars: &[(&str, &str)],
) -> (Served, Child, String) {
    let served = sso.serve_for(env).await;
    env.vars.insert("SESSION_CHECK_SECS".into(), "1".into());
    for (name, value) in vars {
        env.vars.insert((*name).into(), (*value).into());
    }
    let (server, url) = env.start_server().await;
    (served, server, url)
}

/// `pilot` logs in through the server as a browser would; the callback's answer.
pub(crate) async fn log_in_through(url: &str, sso: &FakeSso, pilot: &Pilot) -> Value {
    let browser = browser();
    sso.at_keyboard(pilot);
    let to_sso = browser
        .get(format!("{url}/auth/login"))
        .send()
        .await
        .expect("login");
    let authorize = location(&to_sso);
    let back = browser.get(authorize).send().await.expect("the SSO");
    let back = location(&back);
    let callback = format!(
        "{url}/auth/callback?code={}&state={}",
        query_value(&back, "code").expect("a code"),
        query_value(&back, "state").expect("the state")
    );
    let answer = browser.get(callback).send().await.expect("the callback");
    assert_eq!(answer.status(), 200);
    answer.json().await.expect("JSON")
}

/// POSTs a GraphQL document to the server, with `token` as the session.
pub(crate) async fn graphql(url: &str, token: Option<&str>, query: &str) -> Value {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .json(&json!({ "query": query }));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON")
}

fn error_code(answer: &Value) -> &str {
    answer["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {answer}"))
}

/// A WebSocket on the server, initialised with `token` as its session.
async fn ws_with_session(url: &str, token: Option<&str>) -> WsClient {
    let mut client = WsClient::open(&graphql_url(url), Protocol::TransportWs)
        .await
        .expect("a WebSocket");
    let payload = token.map_or(
        json!({}),
        |t| json!({ "authorization": format!("Bearer {t}") }),
    );
    client
        .send(json!({ "type": "connection_init", "payload": payload }))
        .await;
    assert_eq!(client.receive().await["type"], "connection_ack");
    client
}

const MY_KILLMAILS: &str = "subscription { myKillmailAdded { killmailId } }";

#[tokio::test]
async fn the_whole_login_gives_a_session_for_me_until_logout() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let (_sso, _server, url) = server_with_sso(&mut env, &sso, &[]).await;
    let pilot = Pilot::new(2112625428, "Login Pilot");

    // The login page sends the browser to the SSO with PKCE S256 and a state.
    let to_sso = browser()
        .get(format!("{url}/auth/login"))
        .send()
        .await
        .expect("login");
    let authorize = location(&to_sso);
    assert_eq!(authorize.path(), "/v2/oauth/authorize");
    assert_eq!(
        query_value(&authorize, "code_challenge_method").as_deref(),
        Some("S256")
    );
    assert!(query_value(&authorize, "code_challenge").is_some());
    let scope = query_value(&authorize, "scope").expect("scopes");
    assert!(scope.contains("esi-killmails.read_killmails.v1"), "{scope}");

    let answer = log_in_through(&url, &sso, &pilot).await;
    assert_eq!(answer["characterId"], pilot.character_id);
    assert_eq!(answer["characterName"], pilot.name.as_str());
    let token = answer["token"]
        .as_str()
        .expect("a session token")
        .to_owned();

    let me = graphql(
        &url,
        Some(&token),
        "{ me { characterId characterName scopes needsLogin lastSyncAt admin } }",
    )
    .await;
    assert!(me["errors"].is_null(), "{me}");
    assert_eq!(
        me["data"]["me"]["characterId"],
        pilot.character_id.to_string()
    );
    assert_eq!(me["data"]["me"]["characterName"], pilot.name.as_str());
    assert_eq!(me["data"]["me"]["scopes"], json!(pilot.scopes));
    assert_eq!(me["data"]["me"]["needsLogin"], false);
    assert_eq!(me["data"]["me"]["admin"], false);

    // The session is stored hashed only.
    let stored: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(&env.pool)
        .await
        .expect("sessions");
    assert_eq!(stored, [killreport::auth::sessions::hash(&token)]);

    assert_eq!(
        error_code(&graphql(&url, None, "{ me { characterId } }").await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&graphql(&url, Some("made-up"), "{ me { characterId } }").await),
        "UNAUTHENTICATED"
    );

    // Logout ends the session and revokes the refresh token at the SSO.
    let (refresh, _, _) = stored_tokens(&env, pilot.character_id).await;
    let refresh = sso
        .auth()
        .cipher
        .open(pilot.character_id, &refresh)
        .expect("opens");
    let logout = reqwest::Client::new()
        .post(format!("{url}/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), 200);
    let logout: Value = logout.json().await.expect("JSON");
    assert_eq!(logout["revoked"], true, "{logout}");
    assert_eq!(sso.state().revoked, std::slice::from_ref(&refresh));
    assert!(!sso.is_valid_refresh_token(&refresh));
    assert_eq!(
        error_code(&graphql(&url, Some(&token), "{ me { characterId } }").await),
        "UNAUTHENTICATED"
    );
    let (_, _, needs_login) = stored_tokens(&env, pilot.character_id).await;
    assert!(needs_login);
    env.cleanup().await;
}

#[tokio::test]
async fn a_replayed_or_unknown_state_is_refused() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let (_sso, _server, url) = server_with_sso(&mut env, &sso, &[]).await;
    let browser = browser();
    sso.at_keyboard(&Pilot::new(90000010, "Replaying Pilot"));
    let to_sso = browser
        .get(format!("{url}/auth/login"))
        .send()
        .await
        .expect("login");
    let back = location(
        &browser
            .get(location(&to_sso))
            .send()
            .await
            .expect("the SSO"),
    );
    let (code, state) = (
        query_value(&back, "code").expect("code"),
        query_value(&back, "state").expect("state"),
    );

    let unknown = browser
        .get(format!(
            "{url}/auth/callback?code={code}&state=not-one-of-ours"
        ))
        .send()
        .await
        .expect("callback");
    assert_eq!(unknown.status(), 400);
    let first = browser
        .get(format!("{url}/auth/callback?code={code}&state={state}"))
        .send()
        .await
        .expect("callback");
    assert_eq!(first.status(), 200);
    let replayed = browser
        .get(format!("{url}/auth/callback?code={code}&state={state}"))
        .send()
        .await
        .expect("callback");
    assert_eq!(replayed.status(), 400);
    let reason: Value = replayed.json().await.expect("JSON");
    assert!(
        reason["error"]
            .as_str()
            .expect("a reason")
            .contains("state"),
        "{reason}"
    );
    env.cleanup().await;
}

/// The ids of the killmails of `batch` involving `character_id`, as victim or attacker.
fn involving(batch: &[Received], character_id: i64) -> BTreeSet<i64> {
    batch
        .iter()
        .filter(|r| {
            r.killmail.victim.character_id == Some(character_id)
                || r.killmail
                    .attackers
                    .iter()
                    .any(|a| a.character_id == Some(character_id))
        })
        .map(|r| r.killmail.killmail_id.0)
        .collect()
}

async fn received_ids(client: &mut WsClient, n: usize) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let data = client.next_data("mine").await;
        let id = data["myKillmailAdded"]["killmailId"]
            .as_str()
            .expect("an id");
        ids.insert(id.parse().expect("a number"));
    }
    ids
}

#[tokio::test]
async fn my_killmail_added_gives_each_pilot_their_own_and_ends_with_the_session() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let (_sso, _server, url) = server_with_sso(&mut env, &sso, &[]).await;
    let batch = fixtures::received(0..12, None);
    // A victim of one killmail, and an attacker of another who is not that victim.
    let a = batch
        .iter()
        .find_map(|r| r.killmail.victim.character_id)
        .expect("a victim character");
    let b = batch
        .iter()
        .flat_map(|r| r.killmail.attackers.iter().filter_map(|x| x.character_id))
        .find(|id| *id != a && involving(&batch, *id) != involving(&batch, a))
        .expect("another character");
    let (mine_a, mine_b) = (involving(&batch, a), involving(&batch, b));
    assert_ne!(mine_a, mine_b);
    let everything: BTreeSet<i64> = batch.iter().map(|r| r.killmail.killmail_id.0).collect();
    assert!(
        mine_a.union(&mine_b).count() < everything.len(),
        "some killmails are neither's"
    );

    let token_a = log_in_through(&url, &sso, &Pilot::new(a, "Pilot A")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let token_b = log_in_through(&url, &sso, &Pilot::new(b, "Pilot B")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut client_a = ws_with_session(&url, Some(&token_a)).await;
    let mut client_b = ws_with_session(&url, Some(&token_b)).await;
    client_a.subscribe("mine", MY_KILLMAILS, json!({})).await;
    client_b.subscribe("mine", MY_KILLMAILS, json!({})).await;

    // Without a session: an error for the operation, and the connection stays.
    let mut stranger = ws_with_session(&url, None).await;
    stranger.subscribe("mine", MY_KILLMAILS, json!({})).await;
    let refused = stranger.receive().await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(
        refused["payload"][0]["extensions"]["code"],
        "UNAUTHENTICATED"
    );
    stranger.send(json!({ "type": "ping" })).await;
    assert_eq!(
        stranger.close_or_pong().await,
        Ok(None),
        "the connection stays open"
    );

    // Subscriptions registered before the killmails arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.store_and_announce(&batch).await;
    assert_eq!(received_ids(&mut client_a, mine_a.len()).await, mine_a);
    assert_eq!(received_ids(&mut client_b, mine_b.len()).await, mine_b);
    client_a.assert_quiet(Duration::from_secs(1)).await;
    client_b.assert_quiet(Duration::from_millis(100)).await;

    // A's logout closes A's socket with 4403; B's stays.
    let logout = reqwest::Client::new()
        .post(format!("{url}/auth/logout"))
        .bearer_auth(&token_a)
        .send()
        .await
        .expect("logout");
    assert_eq!(logout.status(), 200);
    let (code, reason) = client_a.close_frame().await.expect("a close frame");
    assert_eq!(code, 4403);
    assert!(reason.contains("ended"), "{reason}");
    client_b.send(json!({ "type": "ping" })).await;
    assert_eq!(client_b.close_or_pong().await, Ok(None));
    env.cleanup().await;
}

#[tokio::test]
async fn an_expired_session_closes_its_socket_with_4403() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let (_sso, _server, url) = server_with_sso(&mut env, &sso, &[("SESSION_TTL_SECS", "3")]).await;
    let token = log_in_through(&url, &sso, &Pilot::new(90000020, "Brief Pilot")).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let mut client = ws_with_session(&url, Some(&token)).await;
    client.subscribe("mine", MY_KILLMAILS, json!({})).await;
    let (code, reason) = client.close_frame().await.expect("a close frame");
    assert_eq!(code, 4403);
    assert!(reason.contains("expired"), "{reason}");
    assert_eq!(
        error_code(&graphql(&url, Some(&token), "{ me { characterId } }").await),
        "UNAUTHENTICATED"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn operational_mutations_are_for_admins_only() {
    let mut env = TestEnv::new().await;
    let sso = FakeSso::default();
    let admin = Pilot::new(90000030, "Admin Pilot");
    let enrich = crate::enrich::enrich_queue(&mut env);
    let (_sso, _server, url) =
        server_with_sso(&mut env, &sso, &[("ADMIN_CHARACTER_IDS", "90000030,1")]).await;
    let admin_token = log_in_through(&url, &sso, &admin).await["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let pilot_token =
        log_in_through(&url, &sso, &Pilot::new(90000031, "Plain Pilot")).await["token"]
            .as_str()
            .expect("token")
            .to_owned();

    // A dead letter, as a worker leaves one.
    let _declared = env.publisher().await;
    let (_connection, channel) = env.rabbitmq().await;
    channel
        .basic_publish(
            "",
            &env.topology().dead_letter_queue(),
            lapin::options::BasicPublishOptions::default(),
            b"not a job",
            lapin::BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");

    let purge = "mutation { purgeDeadLetters }";
    let list = "{ deadLetters { body reason } }";
    assert_eq!(
        error_code(&graphql(&url, None, purge).await),
        "UNAUTHENTICATED"
    );
    assert_eq!(
        error_code(&graphql(&url, Some(&pilot_token), purge).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&graphql(&url, Some(&pilot_token), list).await),
        "FORBIDDEN"
    );
    let repair = r#"mutation { startRepair(from: "2026-01-02", to: "2026-01-01") }"#;
    assert_eq!(
        error_code(&graphql(&url, Some(&pilot_token), repair).await),
        "FORBIDDEN"
    );
    assert_eq!(
        error_code(&graphql(&url, Some(&admin_token), repair).await),
        "BAD_USER_INPUT"
    );

    let listed = graphql(&url, Some(&admin_token), list).await;
    assert_eq!(
        listed["data"]["deadLetters"],
        json!([{ "body": "not a job", "reason": null }]),
        "{listed}"
    );
    let purged = graphql(&url, Some(&admin_token), purge).await;
    assert_eq!(purged["data"]["purgeDeadLetters"], 1, "{purged}");
    let listed = graphql(&url, Some(&admin_token), list).await;
    assert_eq!(listed["data"]["deadLetters"], json!([]), "{listed}");

    // Entities described again by worker-enrich: the job is on its queue.
    let refresh =
        r#"mutation { refreshEntities(kind: CORPORATIONS, ids: ["98000002", "98000001"]) }"#;
    assert_eq!(
        error_code(&graphql(&url, Some(&pilot_token), refresh).await),
        "FORBIDDEN"
    );
    let not_ids = r#"mutation { refreshEntities(kind: ALLIANCES, ids: ["x"]) }"#;
    assert_eq!(
        error_code(&graphql(&url, Some(&admin_token), not_ids).await),
        "BAD_USER_INPUT"
    );
    let queued = graphql(&url, Some(&admin_token), refresh).await;
    assert_eq!(queued["data"]["refreshEntities"], 1, "{queued}");
    let snapshots = "mutation { queueSnapshots(of: ALLIANCES) }";
    assert_eq!(
        error_code(&graphql(&url, Some(&pilot_token), snapshots).await),
        "FORBIDDEN"
    );
    let none_known = graphql(&url, Some(&admin_token), snapshots).await;
    assert_eq!(none_known["data"]["queueSnapshots"], 0, "{none_known}");
    let job = channel
        .basic_get(
            &enrich.queue,
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic.get")
        .expect("the refresh job is on worker-enrich's queue");
    let job: Value = serde_json::from_slice(&job.delivery.data).expect("a JSON job");
    assert_eq!(
        job,
        json!({"kind": "corporations", "ids": [98000001, 98000002]})
    );
    crate::enrich::cleanup(&env, &enrich).await;
    env.cleanup().await;
}
