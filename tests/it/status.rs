//! `workerStatus`: the real server and two real workers, each reporting itself by heartbeat;
//! the server works out processes, queues, dead letters and feeds once a second for all its
//! subscribers, and sends the same as a `worker-status` event on the bus.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{PATIENCE, TestEnv, terminate, wait_until};

const STATUS: &str = "{ workerStatus { at processes { name alive pid dependencies { name up } }
    queues { name role depth consumers } deadLetters rabbitmqError
    feeds { feed sequence lagSeconds } killmailsStoredPerSecond } }";

async fn worker_status(base: &str) -> Value {
    let answer: Value = reqwest::Client::new()
        .post(format!("{base}/graphql"))
        .json(&json!({ "query": format!("query {STATUS}") }))
        .send()
        .await
        .expect("POST /graphql")
        .json()
        .await
        .expect("JSON");
    assert!(answer["errors"].is_null(), "{answer}");
    answer["data"]["workerStatus"].clone()
}

fn names(status: &Value) -> Vec<String> {
    let mut names: Vec<String> = status["processes"]
        .as_array()
        .expect("processes")
        .iter()
        .filter(|p| p["alive"] == true)
        .map(|p| p["name"].as_str().expect("a name").to_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn worker_status_shows_two_workers_their_queue_dead_letters_and_the_feed_cursor() {
    let mut env = TestEnv::new().await;
    env.vars.insert("STATUS_INTERVAL_SECS".into(), "1".into());
    env.vars.insert("STATUS_EVENTS".into(), "true".into());
    killreport::db::cursors::save(&env.pool, "r2z2", 4242)
        .await
        .expect("a cursor");
    let (_server, base) = env.start_server().await;
    let publisher = env.publisher().await;
    let _killmails = env.spawn("worker-killmails", &[]);
    let mut redisq = env.spawn("worker-redisq", &[]);
    publisher.publish_raw(b"not a job").await.expect("publish");
    publisher.publish_raw(b"nor this").await.expect("publish");
    let bus = redis::Client::open(env.redis_url.as_str()).expect("Redis URL");
    let mut pubsub = bus.get_async_pubsub().await.expect("Redis");
    pubsub
        .subscribe(env.bus_channel())
        .await
        .expect("subscribe");

    let all_three = vec!["server", "worker-killmails", "worker-redisq"];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let status = loop {
        let status = worker_status(&base).await;
        let all_up = status["processes"].as_array().is_some_and(|processes| {
            processes
                .iter()
                .flat_map(|p| p["dependencies"].as_array().cloned().unwrap_or_default())
                .all(|dependency| dependency["up"] == true)
        });
        if names(&status) == all_three && status["deadLetters"] == 2 && all_up {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for both workers and the server, their dependencies up, and two dead letters: {status}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let processes = status["processes"].as_array().expect("processes");
    let killmails = processes
        .iter()
        .find(|p| p["name"] == "worker-killmails")
        .expect("worker-killmails");
    assert_eq!(
        killmails["dependencies"],
        json!([{"name": "postgres", "up": true}, {"name": "rabbitmq", "up": true}, {"name": "redis", "up": true}]),
        "{killmails}"
    );
    let queue = &env.rabbit.ingest_queue;
    let queues = status["queues"].as_array().expect("queues");
    let work = queues
        .iter()
        .find(|q| q["name"] == *queue)
        .expect("the work queue");
    assert_eq!(work["role"], "WORK");
    assert_eq!(work["consumers"], 1, "worker-killmails consumes it");
    let dead = queues
        .iter()
        .find(|q| q["role"] == "DEAD_LETTER")
        .expect("the dead-letter queue");
    assert_eq!(dead["depth"], 2);
    assert_eq!(queues.iter().filter(|q| q["role"] == "RETRY").count(), 5);
    assert!(status["rabbitmqError"].is_null(), "{status}");
    assert_eq!(status["feeds"][0]["feed"], "r2z2");
    assert_eq!(status["feeds"][0]["sequence"], 4242);

    // The same, as a `worker-status` event on the bus: kept in the event log like any event.
    let event: Value =
        sqlx::query_scalar("SELECT data FROM events WHERE type = 'worker-status' LIMIT 1")
            .fetch_one(&env.pool)
            .await
            .expect("a worker-status event in the event log");
    assert!(event["processes"].is_array(), "{event}");
    assert!(event["queues"].is_array(), "{event}");

    // A subscriber sees the status now, then again each interval; a worker that stops leaves.
    let mut client = WsClient::connect(&graphql_url(&base), Protocol::TransportWs).await;
    let query = format!("subscription {STATUS}");
    client.subscribe("1", &query, json!({})).await;
    let first = client.next_data("1").await;
    assert_eq!(names(&first["workerStatus"]), all_three);
    terminate(&mut redisq, Duration::from_secs(10)).await;
    let mut updates = 0;
    loop {
        let next = client.next_data("1").await;
        updates += 1;
        if names(&next["workerStatus"]) == ["server", "worker-killmails"] {
            break;
        }
        assert!(updates < 15, "worker-redisq still listed: {next}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_process_killed_without_a_word_is_shown_as_not_alive() {
    let mut env = TestEnv::new().await;
    env.vars.insert("STATUS_INTERVAL_SECS".into(), "1".into());
    let (_server, base) = env.start_server().await;
    let mut worker = env.spawn("worker-killmails", &[]);
    wait_until("the worker's heartbeat", PATIENCE, || {
        let base = base.clone();
        async move { names(&worker_status(&base).await).contains(&"worker-killmails".into()) }
    })
    .await;
    worker.kill().await.expect("SIGKILL");
    wait_until("the worker shown as not alive", PATIENCE, || {
        let base = base.clone();
        async move {
            let status = worker_status(&base).await;
            let processes = status["processes"].as_array().cloned().unwrap_or_default();
            processes
                .iter()
                .any(|p| p["name"] == "worker-killmails" && p["alive"] == false)
        }
    })
    .await;
    env.cleanup().await;
}
