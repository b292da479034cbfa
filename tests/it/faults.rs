//! Faults injected into one test's own connections (so parallel tests are untouched): the
//! broker drops worker-killmails' connection mid-stream; the worker reconnects by itself and
//! nothing is lost or announced twice. A worker whose broker cannot be reached says so on
//! `/readyz` and keeps trying; one started before PostgreSQL and Redis waits for them.

use std::time::Duration;

use killreport::queue::IngestJob;

use crate::support::rabbitmqctl::close_rabbitmq_connections;
use crate::support::{
    self, PATIENCE, TestEnv, assert_no_more_events, fixtures, free_port, receive_events,
    started_late,
};

/// Jobs for the first `n` fixture killmails, with their bodies.
fn fixture_jobs(n: usize) -> Vec<IngestJob> {
    fixtures::killmails()
        .into_iter()
        .take(n)
        .map(fixtures::job)
        .collect()
}

/// What a worker's `/readyz` at `addr` answers, once its health endpoint is up.
async fn readyz(addr: &str) -> (u16, serde_json::Value) {
    let url = format!("http://{addr}/readyz");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some((status, states)) = support::readyz(&url).await {
            return (status, states.into());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{addr} never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn worker_killmails_reconnects_when_rabbitmq_drops_it_and_loses_nothing() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let health = format!("127.0.0.1:{}", free_port());
    let mut worker = env.spawn("worker-killmails", &["--health-addr", &health]);
    let all_up = serde_json::json!({"postgres": "up", "redis": "up", "rabbitmq": "up"});
    let jobs = fixture_jobs(120);

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
    assert_eq!(readyz(&health).await, (200, all_up.clone()));
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
    assert_eq!(readyz(&health).await, (200, all_up));
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_that_cannot_reach_rabbitmq_says_so_on_readyz_and_keeps_trying() {
    let env = TestEnv::new().await;
    let health = format!("127.0.0.1:{}", free_port());
    let nobody = format!("amqp://guest:guest@127.0.0.1:{}/%2f", free_port());
    let mut worker = env
        .command("worker-redisq", &["--health-addr", &health])
        .env("RABBITMQ_URL", &nobody)
        .spawn()
        .expect("spawning worker-redisq");
    let (status, states) = readyz(&health).await;
    assert_eq!(
        (status, states),
        (
            503,
            serde_json::json!({"rabbitmq": "down", "postgres": "up"})
        )
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        worker.try_wait().expect("status").is_none(),
        "worker-redisq gave up instead of retrying"
    );
    let healthz = reqwest::get(format!("http://{health}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(healthz.status(), 200);
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_started_before_postgresql_and_redis_waits_for_them_then_works() {
    let env = TestEnv::new().await;
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let late = Duration::from_secs(3);
    let mut worker = env
        .command("worker-killmails", &[])
        .env("DATABASE_URL", started_late(&env.database_url, late))
        .env("REDIS_URL", started_late(&env.redis_url, late))
        .spawn()
        .expect("spawning worker-killmails");
    let job = fixture_jobs(1).remove(0);
    publisher.publish(&job).await.expect("publish");
    tokio::time::sleep(late / 2).await;
    assert!(
        worker.try_wait().expect("status").is_none(),
        "worker-killmails exited instead of waiting"
    );
    let announced = receive_events(&mut events, 1).await;
    assert_eq!(announced[0].killmail.killmail_id, job.killmail_id);
    env.wait_for_killmails(1).await;
    env.cleanup().await;
}
