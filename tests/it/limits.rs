//! Documents priced before they run: a kilobyte of fragments that each spread the next twice
//! is refused at once, over POST and over a WebSocket, and the server goes on answering.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::ws::{Protocol, WsClient, graphql_url};

/// `n` fragments, each spreading the next twice: 2^n fields once expanded, in about 60 n
/// bytes (28 of them took 42 s to refuse before documents were priced).
fn doubling(operation: &str, n: usize) -> String {
    let mut document = format!("{operation} {{ killmailAdded {{ ...F0 }} }}\n");
    if operation == "query" {
        document = "query { killmail(id: \"1\") { ...F0 } }\n".to_owned();
    }
    for i in 0..n {
        let next = i + 1;
        document.push_str(&format!(
            "fragment F{i} on Killmail {{ ...F{next} ...F{next} }}\n"
        ));
    }
    document.push_str(&format!("fragment F{n} on Killmail {{ id }}\n"));
    document
}

fn error_code(errors: &Value) -> &str {
    errors[0]["extensions"]["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_fragment_bomb_is_refused_at_once_over_post_and_websocket() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let http = reqwest::Client::new();
    let post = |query: String| {
        let request = http
            .post(format!("{base}/graphql"))
            .json(&json!({"query": query}));
        async move {
            let answer = request.send().await.expect("post");
            answer.json::<Value>().await.expect("JSON")
        }
    };
    let bound = Duration::from_secs(1);

    let bomb = doubling("query", 28);
    assert!(bomb.len() < 3_000, "{} bytes", bomb.len());
    let started = Instant::now();
    let answer = post(bomb).await;
    let took = started.elapsed();
    assert!(took < bound, "refused after {took:?}");
    assert_eq!(error_code(&answer["errors"]), "QUERY_TOO_LARGE", "{answer}");

    let mut client = WsClient::connect(&graphql_url(&base), Protocol::TransportWs).await;
    let started = Instant::now();
    client
        .subscribe("bomb", &doubling("subscription", 28), json!({}))
        .await;
    let answer = client.receive().await;
    let took = started.elapsed();
    assert!(took < bound, "refused after {took:?}");
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(
        error_code(&answer["payload"]),
        "QUERY_TOO_LARGE",
        "{answer}"
    );

    let fine = post("{ killmails(first: 1) { edges { cursor } } }".to_owned()).await;
    assert_eq!(fine["data"]["killmails"]["edges"], json!([]), "{fine}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_empty_page_is_priced_as_one_node_of_its_kind() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    // `first: 0` ran its statements while costing nothing: twenty aliases of it under each
    // of 200 nodes fitted the limit. Counted as at least one node, they are over it.
    let aliases: String = (0..20)
        .map(|i| format!("a{i}: killmails(first: 0) {{ edges {{ cursor }} }} "))
        .collect();
    let query = format!(
        "{{ killmails(first: 200) {{ edges {{ node {{ victim {{ character {{ {aliases} }} }} }} }} }} }}"
    );
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({"query": query}))
        .send()
        .await
        .expect("post")
        .json()
        .await
        .expect("JSON");
    let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too complex"), "{answer}");
    env.cleanup().await;
}

/// POSTs `query` to the server at `base` and reads the answer, with how long it took.
async fn post(base: &str, query: &str) -> (Value, Duration) {
    let started = Instant::now();
    let answer = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({"query": query}))
        .send()
        .await
        .expect("post")
        .json::<Value>()
        .await
        .expect("JSON");
    (answer, started.elapsed())
}

/// The example: `n` aliases of a full page whose attackers each ask for their own
/// killmails (an empty page, which still runs its statement).
fn attackers_pages(n: usize) -> String {
    let page = "killmails(first: 200) { edges { node { attackers { character { killmails(first: 0) { edges { cursor } } } } } } }";
    let aliases: String = (0..n).map(|i| format!("a{i}: {page} ")).collect();
    format!("{{ {aliases} }}")
}

#[tokio::test]
async fn lists_are_priced_by_their_size_so_pages_of_attackers_pages_are_refused() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    // Priced at one attacker each, 20 aliases of this fitted the limit and asked for 50,000
    // statements on a day of killmails (12 attackers on average): now 12 each, it is over.
    let (answer, took) = post(&base, &attackers_pages(20)).await;
    let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("too complex"), "{answer}");
    assert!(took < Duration::from_secs(1), "refused after {took:?}");
    // One alias is still too much (200 × 12 pages of their own); a killboard's page is not.
    let (answer, _) = post(&base, &attackers_pages(1)).await;
    assert!(
        answer["errors"][0]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("too complex"),
        "{answer}"
    );
    let page = "{ killmails(first: 50) { edges { node { killmailId attackers { character { id name } corporation { id name } shipType { id name } damageDone finalBlow } victim { items { itemType { id name } flag quantityDropped quantityDestroyed } } } } } }";
    let (answer, _) = post(&base, page).await;
    assert!(answer["errors"].is_null(), "{answer}");
    env.cleanup().await;
}

#[tokio::test]
async fn aliases_and_deep_nesting_are_refused_with_their_reason_and_the_server_carries_on() {
    let mut env = TestEnv::new().await;
    let (mut server, base) = env.start_server().await;
    let bound = Duration::from_secs(1);

    let aliases: String = (0..=killreport::graphql::MAX_ALIASES)
        .map(|i| format!("a{i}: __typename "))
        .collect();
    let (answer, took) = post(&base, &format!("{{ {aliases} }}")).await;
    assert_eq!(error_code(&answer["errors"]), "QUERY_TOO_LARGE", "{answer}");
    let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("aliases"), "{message}");
    assert!(took < bound, "refused after {took:?}");

    // 700 `[` in a filter, 1.4 KB: the parser descended once per bracket, and this one
    // overflowed its stack and took the server down.
    let deep = format!(
        "{{ killmails(filter: {{characterIds: {}\"1\"{}}}) {{ edges {{ cursor }} }} }}",
        "[".repeat(700),
        "]".repeat(700)
    );
    let (answer, took) = post(&base, &deep).await;
    assert_eq!(error_code(&answer["errors"]), "QUERY_TOO_DEEP", "{answer}");
    assert!(took < bound, "refused after {took:?}");
    let mut client = WsClient::connect(&graphql_url(&base), Protocol::TransportWs).await;
    client
        .subscribe(
            "deep",
            &deep
                .replacen("{ killmails", "subscription { killmailAdded", 1)
                .replace("{ edges { cursor } }", "{ id }"),
            json!({}),
        )
        .await;
    let answer = client.receive().await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(error_code(&answer["payload"]), "QUERY_TOO_DEEP", "{answer}");

    assert!(
        server.try_wait().expect("status").is_none(),
        "the server died"
    );
    let (fine, _) = post(&base, "{ killmails(first: 1) { edges { cursor } } }").await;
    assert_eq!(fine["data"]["killmails"]["edges"], json!([]), "{fine}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_filter_naming_over_a_thousand_ids_is_refused_and_a_thousand_are_matched() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let max = killreport::graphql::MAX_FILTER_IDS;
    let filter = |n: usize| {
        let ids: Vec<String> = (1..=n).map(|id| format!("\"{id}\"")).collect();
        format!(
            "{{ killmails(filter: {{characterIds: [{}]}}) {{ edges {{ cursor }} }} }}",
            ids.join(",")
        )
    };
    let (answer, _) = post(&base, &filter(max + 1)).await;
    assert_eq!(error_code(&answer["errors"]), "BAD_USER_INPUT", "{answer}");
    let message = answer["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains(&format!("at most {max}")), "{message}");
    let (answer, _) = post(&base, &filter(max)).await;
    assert_eq!(answer["data"]["killmails"]["edges"], json!([]), "{answer}");

    let mut client = WsClient::connect(&graphql_url(&base), Protocol::TransportWs).await;
    let ids: Vec<String> = (1..=max + 1).map(|id| id.to_string()).collect();
    client
        .subscribe(
            "many",
            "subscription($f: KillmailFilter) { killmailAdded(filter: $f) { id } }",
            json!({"f": {"characterIds": ids}}),
        )
        .await;
    let answer = client.receive().await;
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(error_code(&answer["payload"]), "BAD_USER_INPUT", "{answer}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_query_over_its_statement_timeout_is_cancelled_and_the_server_stays_ready() {
    let mut env = TestEnv::new().await;
    env.vars
        .insert("GRAPHQL_STATEMENT_TIMEOUT_MS".into(), "500".into());
    env.vars
        .insert("GRAPHQL_DATABASE_CONNECTIONS".into(), "2".into());
    let (_server, base) = env.start_server().await;
    // A writer that holds the killmails table: every page waits for it, as behind a slow
    // statement.
    let mut holder = env.pool.begin().await.expect("a transaction");
    sqlx::query("LOCK TABLE killmails IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *holder)
        .await
        .expect("the lock");

    let page = "{ killmails(first: 1) { edges { cursor } } }";
    let started = Instant::now();
    let answers = futures::future::join_all((0..4).map(|_| post(&base, page))).await;
    let took = started.elapsed();
    for (answer, _) in &answers {
        let code = error_code(&answer["errors"]);
        assert!(code == "QUERY_TIMEOUT" || code == "BUSY", "{answer}");
    }
    assert!(
        answers
            .iter()
            .any(|(answer, _)| error_code(&answer["errors"]) == "QUERY_TIMEOUT"),
        "{answers:?}"
    );
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // The server's own pool is not the queries': /readyz is answered at once meanwhile.
    let ready = reqwest::get(format!("{base}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);

    holder.rollback().await.expect("rollback");
    let (fine, _) = post(&base, page).await;
    assert_eq!(fine["data"]["killmails"]["edges"], json!([]), "{fine}");
    env.cleanup().await;
}
