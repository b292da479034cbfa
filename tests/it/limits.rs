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
    // `first: 0` ran its statements while costing nothing: a hundred aliases of it under each
    // of 200 nodes fitted the limit. Counted as at least one node, they are over it.
    let aliases: String = (0..100)
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
