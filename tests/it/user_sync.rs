//! Pilots' own history (worker-user-killmails) against the fake SSO and the fake ESI, with the
//! real workers: a history read page by page and then only what is new, stored with source
//! `user` and queryable; a director's corporation history; an expired access token refreshed
//! by the worker; a refused refresh token marking its login while the other pilots go on; and
//! ESI's 420 and 429 honoured.

use std::time::Duration;

use killreport::config::UserSyncArgs;
use killreport::queue::Topology;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use serde_json::{Value, json};
use tokio::process::Child;

use crate::support::fakes::Served;
use crate::support::fakes::esi::FakeEsi;
use crate::support::fakes::sso::{FakeSso, Pilot};
use crate::support::{PATIENCE, TestEnv, fixtures, wait_until};

const CORPORATION: i64 = 98_000_001;

/// A test's environment with the fakes served and its own user-killmails queue.
struct Sync {
    env: TestEnv,
    esi: FakeEsi,
    sso: FakeSso,
    /// Fixture killmails (ESI body, hash), oldest first, each known to the fake ESI.
    killmails: Vec<(Value, String)>,
    _served: (Served, Served),
}

impl Sync {
    async fn new() -> Self {
        let mut env = TestEnv::new().await;
        env.rabbit.retry_delays_ms = vec![200, 200, 200];
        let esi = FakeEsi::default();
        let sso = FakeSso::default();
        let served = (esi.serve_for(&mut env).await, sso.serve_for(&mut env).await);
        let queue = format!("user-killmails.test.{}", env.id);
        env.vars.insert("USER_KILLMAILS_QUEUE".into(), queue);
        env.vars.insert("USER_SYNC_CHECK_SECS".into(), "1".into());
        let killmails = fixtures::esi_killmails(8);
        for (body, hash) in &killmails {
            esi.add_killmail(body.clone(), hash);
        }
        Self {
            env,
            esi,
            sso,
            killmails,
            _served: served,
        }
    }

    /// Fixture killmails `indices`, as ESI lists them: newest first.
    fn listed(&self, indices: std::ops::Range<usize>) -> Vec<(i64, String)> {
        let mut listed: Vec<(i64, String)> = self.killmails[indices]
            .iter()
            .map(|(body, hash)| (body["killmail_id"].as_i64().expect("an id"), hash.clone()))
            .collect();
        listed.reverse();
        listed
    }

    fn id(&self, index: usize) -> i64 {
        self.killmails[index].0["killmail_id"]
            .as_i64()
            .expect("an id")
    }

    /// Both workers: the sync and the store.
    fn start_workers(&self) -> (Child, Child) {
        (
            self.env.spawn("worker-user-killmails", &[]),
            self.env.spawn("worker-killmails", &[]),
        )
    }

    fn topology(&self) -> Topology {
        UserSyncArgs {
            user_killmails_queue: self.env.vars["USER_KILLMAILS_QUEUE"].clone(),
        }
        .topology(&self.env.rabbit)
    }

    /// The sources the store holds, one per killmail, by id.
    async fn sources(&self) -> Vec<(i64, String)> {
        sqlx::query_as("SELECT killmail_id, source FROM killmails ORDER BY killmail_id")
            .fetch_all(&self.env.pool)
            .await
            .expect("reading the store")
    }

    /// What the store recorded of `character_id`'s login: needs_login, synced, newest killmail.
    async fn login(&self, character_id: i64) -> (bool, bool, Option<i64>) {
        sqlx::query_as(
            "SELECT needs_login, last_sync_at IS NOT NULL, newest_killmail_id
             FROM sso_logins WHERE character_id = $1",
        )
        .bind(character_id)
        .fetch_one(&self.env.pool)
        .await
        .expect("a login")
    }

    /// Messages waiting in the user-killmails queue, its retry queues and its dead letters.
    async fn user_jobs_waiting(&self) -> u32 {
        let topology = self.topology();
        let (_connection, channel) = self.env.rabbitmq().await;
        let mut queues = vec![topology.queue.clone(), topology.dead_letter_queue()];
        queues.extend((0..topology.retry_delays.len()).map(|a| topology.retry_queue(a)));
        let mut waiting = 0;
        for queue in queues {
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let declared = channel
                .queue_declare(&queue, passive, FieldTable::default())
                .await
                .expect("the queue exists");
            waiting += declared.message_count();
        }
        waiting
    }

    /// ESI requests for `path` (with its query) so far.
    fn requests_for(&self, path: &str) -> usize {
        self.esi.requests().iter().filter(|r| *r == path).count()
    }

    async fn cleanup(&self) {
        let topology = self.topology();
        let (_connection, channel) = self.env.rabbitmq().await;
        let mut queues = vec![topology.queue.clone(), topology.dead_letter_queue()];
        queues.extend((0..topology.retry_delays.len()).map(|a| topology.retry_queue(a)));
        for queue in queues {
            let _ = channel
                .queue_delete(&queue, QueueDeleteOptions::default())
                .await;
        }
        self.env.cleanup().await;
    }
}

/// A pilot granting only their own killmails.
fn pilot(character_id: i64) -> Pilot {
    let mut pilot = Pilot::new(character_id, &format!("Pilot {character_id}"));
    pilot.scopes = vec![
        "publicData".into(),
        "esi-killmails.read_killmails.v1".into(),
    ];
    pilot
}

fn character_page(character_id: i64, page: u32) -> String {
    format!("/characters/{character_id}/killmails/recent/?page={page}")
}

#[tokio::test]
async fn a_pilots_history_is_read_page_by_page_then_only_what_is_new_and_is_queryable() {
    let mut sync = Sync::new().await;
    let pilot = pilot(2_112_000_001);
    let id = pilot.character_id;
    sync.esi.set_page_size(3);
    sync.esi.set_character_killmails(id, sync.listed(0..5));
    sync.sso.log_in(&sync.env.pool, &pilot).await;
    let (server, url) = sync.env.start_server().await;
    let _workers = sync.start_workers();

    sync.env.wait_for_killmails(5).await;
    let sources = sync.sources().await;
    let expected: Vec<(i64, String)> = (0..5).map(|i| (sync.id(i), "user".into())).collect();
    assert_eq!(
        sources, expected,
        "the whole history, stored with source user"
    );
    assert_eq!(sync.requests_for(&character_page(id, 1)), 1);
    assert_eq!(
        sync.requests_for(&character_page(id, 2)),
        1,
        "both pages read"
    );
    wait_until("the sync to be recorded", PATIENCE, || async {
        sync.login(id).await == (false, true, Some(sync.id(4)))
    })
    .await;

    let answer: Value = reqwest::Client::new()
        .post(format!("{url}/graphql"))
        .json(&json!({
            "query": "query($id: ID!) { killmail(id: $id) { killmailId hash victim { shipType { id } } } }",
            "variables": {"id": sync.id(2).to_string()},
        }))
        .send()
        .await
        .expect("the server answers")
        .json()
        .await
        .expect("JSON");
    let (body, hash) = &sync.killmails[2];
    assert_eq!(
        answer["data"]["killmail"],
        json!({
            "killmailId": sync.id(2).to_string(),
            "hash": hash,
            "victim": {"shipType": {"id": body["victim"]["ship_type_id"].to_string()}},
        }),
        "{answer}"
    );

    // Two new killmails: the next sync, asked for by hand, reads one page and stops at the
    // newest it knew.
    sync.esi.set_character_killmails(id, sync.listed(0..7));
    let queued = sync
        .env
        .run("queue", &["user-killmails", &id.to_string()])
        .await;
    assert!(queued.status.success(), "{queued:?}");
    assert!(
        String::from_utf8_lossy(&queued.stdout).contains("1 pilots queued"),
        "{queued:?}"
    );
    sync.env.wait_for_killmails(7).await;
    assert_eq!(sync.requests_for(&character_page(id, 1)), 2);
    assert_eq!(
        sync.requests_for(&character_page(id, 2)),
        1,
        "page 2 not read again"
    );
    wait_until("the newest killmail to be recorded", PATIENCE, || async {
        sync.login(id).await.2 == Some(sync.id(6))
    })
    .await;
    assert!(
        sync.sources()
            .await
            .iter()
            .all(|(_, source)| source == "user")
    );

    drop(server);
    sync.cleanup().await;
}

#[tokio::test]
async fn a_directors_corporation_history_is_read_and_a_members_is_not() {
    let sync = Sync::new().await;
    let director = Pilot::new(2_112_000_011, "Director");
    let member = Pilot::new(2_112_000_012, "Member");
    sync.esi.set_member(
        director.character_id,
        CORPORATION,
        &["Director", "Accountant"],
    );
    sync.esi
        .set_member(member.character_id, CORPORATION, &["Accountant"]);
    sync.esi
        .set_character_killmails(director.character_id, sync.listed(0..1));
    sync.esi
        .set_corporation_killmails(CORPORATION, sync.listed(1..4));
    for pilot in [&director, &member] {
        sync.sso.log_in(&sync.env.pool, pilot).await;
    }
    let _workers = sync.start_workers();

    sync.env.wait_for_killmails(4).await;
    for pilot in [&director, &member] {
        let id = pilot.character_id;
        wait_until("both pilots synced", PATIENCE, || async {
            sync.login(id).await.1
        })
        .await;
        assert_eq!(sync.requests_for(&format!("/characters/{id}/roles/")), 1);
    }
    let corporation_page = format!("/corporations/{CORPORATION}/killmails/recent/?page=1");
    assert_eq!(
        sync.requests_for(&corporation_page),
        1,
        "read once, by its director"
    );
    let stored: Vec<i64> = sync.sources().await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(stored, (0..4).map(|i| sync.id(i)).collect::<Vec<_>>());
    let corporations: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT corporation_id FROM sso_logins")
            .fetch_all(&sync.env.pool)
            .await
            .expect("the logins");
    assert_eq!(corporations, [Some(CORPORATION); 2], "recorded from ESI");
    sync.cleanup().await;
}

#[tokio::test]
async fn an_expired_access_token_is_refreshed_by_the_worker() {
    let sync = Sync::new().await;
    let pilot = pilot(2_112_000_021);
    sync.esi
        .set_character_killmails(pilot.character_id, sync.listed(0..2));
    // An access token about to expire: the worker must not use it.
    sync.sso.state().access_lifetime = 30;
    sync.sso.log_in(&sync.env.pool, &pilot).await;
    sync.sso.state().access_lifetime = 1200;
    let _workers = sync.start_workers();

    sync.env.wait_for_killmails(2).await;
    let grants = sync.sso.state().token_requests.clone();
    assert_eq!(grants, ["authorization_code", "refresh_token"]);
    let still_valid: bool = sqlx::query_scalar(
        "SELECT access_expires_at > now() + interval '10 minutes' FROM sso_logins",
    )
    .fetch_one(&sync.env.pool)
    .await
    .expect("the login");
    assert!(still_valid, "the fresh token is stored");
    sync.cleanup().await;
}

#[tokio::test]
async fn a_refused_refresh_token_marks_its_login_and_the_other_pilots_are_synced() {
    let sync = Sync::new().await;
    let (gone, staying) = (pilot(2_112_000_031), pilot(2_112_000_032));
    sync.esi
        .set_character_killmails(gone.character_id, sync.listed(0..2));
    sync.esi
        .set_character_killmails(staying.character_id, sync.listed(2..5));
    sync.sso.state().access_lifetime = 30;
    sync.sso.log_in(&sync.env.pool, &gone).await;
    sync.sso.state().access_lifetime = 1200;
    sync.sso.log_in(&sync.env.pool, &staying).await;
    // The pilot removed the application's access on EVE's site.
    sync.sso.withdraw_access(gone.character_id);
    let _workers = sync.start_workers();

    sync.env.wait_for_killmails(3).await;
    wait_until("the refused login to be marked", PATIENCE, || async {
        sync.login(gone.character_id).await.0
    })
    .await;
    assert_eq!(sync.login(gone.character_id).await, (true, false, None));
    // Not retried: no job of it waits anywhere, and the SSO is not asked again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sync.user_jobs_waiting().await, 0);
    let refreshes = sync
        .sso
        .state()
        .token_requests
        .iter()
        .filter(|g| *g == "refresh_token")
        .count();
    assert_eq!(refreshes, 1);
    let gone_page = character_page(gone.character_id, 1);
    assert_eq!(sync.requests_for(&gone_page), 0);
    let stored: Vec<i64> = sync.sources().await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(stored, (2..5).map(|i| sync.id(i)).collect::<Vec<_>>());
    sync.cleanup().await;
}

#[tokio::test]
async fn esi_rate_and_error_limits_hold_the_sync_off_until_esi_listens_again() {
    let sync = Sync::new().await;
    let pilot = pilot(2_112_000_041);
    let id = pilot.character_id;
    sync.esi.set_character_killmails(id, sync.listed(0..2));
    sync.esi
        .answer_next_user_request(429, &[("retry-after", "2")]);
    sync.esi.answer_next_user_request(
        420,
        &[
            ("x-esi-error-limit-remain", "0"),
            ("x-esi-error-limit-reset", "2"),
        ],
    );
    sync.sso.log_in(&sync.env.pool, &pilot).await;
    let _workers = sync.start_workers();

    sync.env.wait_for_killmails(2).await;
    let page = character_page(id, 1);
    let times: Vec<_> = sync
        .esi
        .timed_requests()
        .into_iter()
        .filter(|(_, path)| *path == page)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(times.len(), 3, "limited twice, then answered");
    for pair in times.windows(2) {
        let waited = pair[1] - pair[0];
        assert!(
            waited >= Duration::from_millis(1900),
            "asked again after {waited:?}"
        );
    }
    wait_until("the sync to be recorded", PATIENCE, || async {
        sync.login(id).await.1
    })
    .await;
    sync.cleanup().await;
}
