//! What an operator's tools read, from the real binaries: `/metrics` as a Prometheus server
//! scrapes it (each process has its own recorder), whose figures follow what happened, and log
//! lines as a shipper reads them.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::ws::{Protocol, WsClient, graphql_url};
use crate::support::{PATIENCE, TestEnv, fixtures, free_port, readyz, started_late, terminate};

/// One scrape of a `/metrics` endpoint.
struct Scrape(String);

impl Scrape {
    async fn of(url: &str) -> Option<Self> {
        let response = reqwest::get(url).await.ok()?;
        let content_type = response.headers().get("content-type")?.to_str().ok()?;
        assert!(content_type.starts_with("text/plain"), "{content_type}");
        Some(Self(response.text().await.ok()?))
    }

    /// The value of the sample `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (sample, own) = series.split_once('{').unwrap_or((series, "}"));
            let has = |(label, value): &(&str, &str)| own.contains(&format!("{label}=\"{value}\""));
            (sample == name && labels.iter().all(has))
                .then(|| value.parse().ok())
                .flatten()
        })
    }

    /// Every sample's name.
    fn names(&self) -> impl Iterator<Item = &str> {
        self.0
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| line.split(['{', ' ']).next().unwrap_or(line))
    }
}

/// Scrapes `url` until `holds` says the figures are there, failing after [`PATIENCE`].
async fn scrape_until(url: &str, what: &str, holds: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let last = Scrape::of(url).await;
        if let Some(scrape) = last.filter(|s| holds(s)) {
            return scrape;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {PATIENCE:?} for {what} on {url}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_workers_metrics_count_jobs_done_and_dead_lettered_and_killmails_stored() {
    let mut env = TestEnv::new().await;
    let health = format!("127.0.0.1:{}", free_port());
    env.vars.insert("HEALTH_ADDR".into(), health.clone());
    let publisher = env.publisher().await;
    let _worker = env.spawn("worker-killmails", &[]);
    let (killmail, hash) = fixtures::killmails().remove(0);
    publisher
        .publish(&fixtures::job((killmail, hash)))
        .await
        .expect("publish");
    publisher.publish_raw(b"not a job").await.expect("publish");

    let queue = env.rabbit.ingest_queue.clone();
    let jobs = |outcome| [("queue", queue.as_str()), ("outcome", outcome)];
    let url = format!("http://{health}/metrics");
    let scrape = scrape_until(&url, "one job done and one dead-lettered", |s| {
        s.value("killreport_jobs_total", &jobs("done")) == Some(1.0)
            && s.value("killreport_jobs_total", &jobs("dead_lettered")) == Some(1.0)
    })
    .await;
    assert_eq!(
        scrape.value("killreport_jobs_total", &jobs("retried")),
        None
    );
    assert_eq!(
        scrape.value("killreport_killmails_stored_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        scrape.value("killreport_killmail_store_lag_seconds_count", &[]),
        Some(1.0),
        "the stored killmail's lag since its fight"
    );
    for dependency in ["postgres", "redis", "rabbitmq"] {
        assert_eq!(
            scrape.value("killreport_dependency_up", &[("dependency", dependency)]),
            Some(1.0),
            "{dependency}"
        );
    }
    assert_eq!(
        scrape.value("killreport_db_pool_max_connections", &[]),
        Some(10.0)
    );
    assert!(
        scrape
            .value("killreport_db_pool_connections", &[("state", "idle")])
            .is_some()
    );
    let foreign: Vec<&str> = scrape
        .names()
        .filter(|name| !name.starts_with("killreport_"))
        .collect();
    assert!(foreign.is_empty(), "names outside killreport_: {foreign:?}");
    // Announced after its commit (Redis is up), and that lag counted.
    let scrape = scrape_until(&url, "the announcement's lag", |s| {
        s.value("killreport_killmail_announce_lag_seconds_count", &[]) == Some(1.0)
    })
    .await;
    assert!(
        scrape
            .0
            .contains("# TYPE killreport_killmail_announce_lag_seconds histogram")
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_dependency_down_shows_as_0_until_it_is_up() {
    let mut env = TestEnv::new().await;
    let health = format!("127.0.0.1:{}", free_port());
    let late = started_late(&env.rabbit.rabbitmq_url, Duration::from_secs(8));
    env.vars.insert("HEALTH_ADDR".into(), health.clone());
    env.vars.insert("RABBITMQ_URL".into(), late);
    // Following RedisQ, worker-redisq needs RabbitMQ alone.
    env.vars
        .insert("REDISQ_URL".into(), "http://127.0.0.1:9/listen.php".into());
    let _worker = env.spawn("worker-redisq", &[]);

    let url = format!("http://{health}/metrics");
    let rabbitmq = [("dependency", "rabbitmq")];
    scrape_until(&url, "RabbitMQ down", |s| {
        s.value("killreport_dependency_up", &rabbitmq) == Some(0.0)
    })
    .await;
    let (status, _) = readyz(&format!("http://{health}/readyz"))
        .await
        .expect("readyz");
    assert_eq!(status, 503, "the scrape and /readyz agree");
    scrape_until(&url, "RabbitMQ up", |s| {
        s.value("killreport_dependency_up", &rabbitmq) == Some(1.0)
    })
    .await;
    env.cleanup().await;
}

#[tokio::test]
async fn with_metrics_off_metrics_answers_404_and_the_server_serves_on() {
    let mut env = TestEnv::new().await;
    env.vars.insert("METRICS".into(), "false".into());
    let (_server, base) = env.start_server().await;
    let scrape = reqwest::get(format!("{base}/metrics")).await.expect("GET");
    assert_eq!(scrape.status(), 404);
    assert!(scrape.text().await.expect("text").contains("METRICS=false"));
    let (status, _) = readyz(&format!("{base}/readyz")).await.expect("readyz");
    assert_eq!(status, 200);
    env.cleanup().await;
}

#[tokio::test]
async fn the_servers_metrics_follow_websocket_connections_subscriptions_and_deliveries() {
    let mut env = TestEnv::new().await;
    let (_server, base) = env.start_server().await;
    let ws_url = graphql_url(&base);
    let document = "subscription { killmailAdded { killmailId } }";
    let mut clients = Vec::new();
    for protocol in [Protocol::TransportWs, Protocol::LegacyWs] {
        let mut client = WsClient::connect(&ws_url, protocol).await;
        client.subscribe("1", document, serde_json::json!({})).await;
        clients.push(client);
    }

    let url = format!("{base}/metrics");
    let per_protocol = [
        ("protocol", "graphql-transport-ws"),
        ("protocol", "graphql-ws"),
    ];
    let scrape = scrape_until(&url, "two subscribers", |s| {
        per_protocol.iter().all(|label| {
            s.value("killreport_ws_subscriptions", &[*label]) == Some(1.0)
                && s.value("killreport_ws_connections", &[*label]) == Some(1.0)
        })
    })
    .await;
    for label in per_protocol {
        assert_eq!(
            scrape.value("killreport_ws_connections_opened_total", &[label]),
            Some(1.0)
        );
    }
    assert_eq!(
        scrape.value("killreport_ws_executions", &[]),
        Some(1.0),
        "one execution shared by both"
    );
    let upgrades = [("route", "/graphql"), ("method", "GET"), ("status", "101")];
    assert_eq!(
        scrape.value("killreport_http_requests_total", &upgrades),
        Some(2.0)
    );

    let _worker = env.spawn("worker-killmails", &[]);
    let publisher = env.publisher().await;
    let (killmail, hash) = fixtures::killmails().remove(0);
    publisher
        .publish(&fixtures::job((killmail, hash)))
        .await
        .expect("publish");
    for client in &mut clients {
        client.next_data("1").await;
    }
    scrape_until(&url, "a delivery to each", |s| {
        per_protocol
            .iter()
            .all(|label| s.value("killreport_ws_deliveries_total", &[*label]) == Some(1.0))
            && s.value("killreport_ws_delivery_seconds_count", &[]) == Some(2.0)
    })
    .await;

    for client in clients {
        client.close().await;
    }
    let scrape = scrape_until(&url, "every subscriber gone", |s| {
        s.value("killreport_ws_executions", &[]) == Some(0.0)
            && per_protocol.iter().all(|label| {
                s.value("killreport_ws_subscriptions", &[*label]) == Some(0.0)
                    && s.value("killreport_ws_connections", &[*label]) == Some(0.0)
            })
    })
    .await;
    let scrapes = [("route", "/metrics"), ("status", "200")];
    assert!(
        scrape
            .value("killreport_http_requests_total", &scrapes)
            .is_some_and(|n| n >= 2.0),
        "the scrapes before this one"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn log_format_json_writes_one_object_a_line_with_the_text_lines_fields() {
    let mut env = TestEnv::new().await;
    env.vars.insert("LOG_FORMAT".into(), "json".into());
    env.vars.insert("RUST_LOG".into(), "info".into());
    let mut worker = env
        .command("worker-killmails", &[])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning worker-killmails");
    let mut lines = BufReader::new(worker.stdout.take().expect("its stdout")).lines();
    let consuming = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("a log line") {
            let object: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            if object["message"]
                .as_str()
                .is_some_and(|m| m.ends_with("consuming"))
            {
                return object;
            }
        }
        panic!("the worker's output ended before it said it was consuming");
    })
    .await
    .expect("the worker says it is consuming");
    assert_eq!(consuming["level"], "INFO");
    assert_eq!(consuming["target"], "killreport::queue::runner");
    assert_eq!(consuming["queue"], env.rabbit.ingest_queue.as_str());
    assert_eq!(consuming["message"], "worker-killmails consuming");
    let time = consuming["timestamp"].as_str().expect("a timestamp");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    terminate(&mut worker, PATIENCE).await;
    env.cleanup().await;
}
