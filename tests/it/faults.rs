//! Faults injected into one test's own connections (so parallel tests are untouched): the
//! broker drops worker-killmails' connection mid-stream; the worker reconnects by itself and
//! nothing is lost or announced twice.

use std::time::Duration;

use killreport::killmail::Source;
use killreport::queue::IngestJob;

use crate::support::{TestEnv, assert_no_more_events, fixtures, receive_events};

/// RabbitMQ's CLI: `rabbitmqctl`, or what `RABBITMQCTL` says (e.g. `docker compose exec -T
/// rabbitmq rabbitmqctl` when the broker runs in Docker).
fn rabbitmqctl(args: &[&str]) -> tokio::process::Command {
    let line = crate::support::env_or("RABBITMQCTL", "rabbitmqctl");
    let mut words = line.split_whitespace();
    let mut command = tokio::process::Command::new(words.next().unwrap_or("rabbitmqctl"));
    command.args(words).args(args);
    command
}

/// Has RabbitMQ close every connection whose client-given name contains `needle`; returns how
/// many it closed.
pub async fn close_rabbitmq_connections(needle: &str) -> usize {
    let listed = rabbitmqctl(&[
        "-q",
        "list_connections",
        "--no-table-headers",
        "pid",
        "client_properties",
    ])
    .output()
    .await
    .expect("rabbitmqctl (RabbitMQ's own CLI) runs here");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut closed = 0;
    for line in listed.lines().filter(|l| l.contains(needle)) {
        let pid = line.split_whitespace().next().expect("a pid");
        let status = rabbitmqctl(&["-q", "close_connection", pid, "fault injected by a test"])
            .status()
            .await
            .expect("rabbitmqctl close_connection");
        assert!(status.success());
        closed += 1;
    }
    closed
}

#[tokio::test]
async fn worker_killmails_reconnects_when_rabbitmq_drops_it_and_loses_nothing() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let mut worker = env.spawn("worker-killmails", &[]);
    let jobs: Vec<IngestJob> = fixtures::killmails()
        .into_iter()
        .take(120)
        .map(|(killmail, hash)| IngestJob {
            killmail_id: killmail.killmail_id,
            hash,
            killmail: Some(killmail),
            zkb: None,
            source: Source::Redisq,
        })
        .collect();

    let feeding = {
        let publisher = publisher.clone();
        let jobs = jobs.clone();
        tokio::spawn(async move {
            for job in &jobs {
                publisher.publish(job).await.expect("publish");
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    env.wait_for_killmails(30).await;
    let closed =
        close_rabbitmq_connections(&format!("worker-killmails {}", env.topology().queue)).await;
    assert_eq!(closed, 1, "the worker's connection was found and closed");
    feeding.await.expect("feeding");

    env.wait_for_killmails(120).await;
    let received = receive_events(&mut events, 120).await;
    let mut ids: Vec<i64> = received.iter().map(|e| e.killmail.killmail_id.0).collect();
    ids.sort_unstable();
    let mut expected: Vec<i64> = jobs.iter().map(|j| j.killmail_id.0).collect();
    expected.sort_unstable();
    assert_eq!(ids, expected, "every killmail announced once");
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert!(
        worker.try_wait().expect("status").is_none(),
        "the worker is still running"
    );
    env.cleanup().await;
}
