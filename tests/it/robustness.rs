//! Faults around the workers: ESI's limits honoured by every task of a process; worker-killmails
//! and worker-redisq stopped by SIGTERM or killed by SIGKILL mid-stream, with every killmail
//! stored once and announced once all the same; and the decoders fuzzed (`decoders`).

mod decoders;

use std::collections::{HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use killreport::esi::{Esi, EsiError};
use killreport::events::KillmailAdded;
use killreport::killmail::{Killmail, KillmailId, Seq, Zkb};
use killreport::queue::{IngestJob, Publisher};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::process::Child;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::support::fakes::esi::FakeEsi;
use crate::support::fakes::r2z2::{self, FakeR2z2};
use crate::support::fakes::redisq::FakeRedisq;
use crate::support::{PATIENCE, TestEnv, assert_no_more_events, fixtures, receive_events};

/// How long a process may take to exit after SIGTERM.
const STOP_BOUND: Duration = Duration::from_secs(10);

/// Jobs for the first `n` fixture killmails, with their bodies when `with_body`.
fn jobs(n: usize, with_body: bool) -> Vec<(IngestJob, serde_json::Value)> {
    fixtures::esi_killmails(n)
        .into_iter()
        .map(|(esi, hash)| {
            let killmail: Killmail = serde_json::from_value(esi.clone()).expect("an ESI killmail");
            let zkb = Zkb(r2z2::zkb(&esi, &hash));
            (
                fixtures::job_with(killmail, hash, Some(zkb), with_body),
                esi,
            )
        })
        .collect()
}

/// Publishes `jobs` one after another, `gap` apart, as a live feed would.
fn publish_in_background(
    publisher: Publisher,
    jobs: Vec<IngestJob>,
    gap: Duration,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        for job in jobs {
            publisher.publish(&job).await.expect("publishing a job");
            tokio::time::sleep(gap).await;
        }
    })
}

fn send_signal(child: &Child, signal: &str) {
    let pid = child.id().expect("the process is running");
    let status = std::process::Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill -s {signal} {pid}: {status}");
}

async fn exit_within(child: &mut Child, bound: Duration) -> ExitStatus {
    tokio::time::timeout(bound, child.wait())
        .await
        .unwrap_or_else(|_| panic!("the process still runs {bound:?} after the signal"))
        .expect("waiting for the process")
}

/// A worker-killmails taking 200 jobs as they are published 5 ms apart, sent `signal` once 50
/// are stored: the jobs, the test's events, the publishing (still going) and how the worker
/// exited.
async fn signal_mid_stream(
    env: &TestEnv,
    signal: &str,
) -> (
    Vec<(IngestJob, serde_json::Value)>,
    UnboundedReceiver<KillmailAdded>,
    JoinHandle<()>,
    ExitStatus,
) {
    let publisher = env.publisher().await;
    let events = env.subscribe().await;
    let jobs = jobs(200, true);
    let mut worker = env.spawn("worker-killmails", &[]);
    let feeding = publish_in_background(
        publisher,
        jobs.iter().map(|(job, _)| job.clone()).collect(),
        Duration::from_millis(5),
    );

    env.wait_for_killmails(50).await;
    send_signal(&worker, signal);
    let status = exit_within(&mut worker, STOP_BOUND).await;
    (jobs, events, feeding, status)
}

/// Jobs ready in the work queue: what no consumer holds.
async fn ready_jobs(env: &TestEnv) -> u32 {
    let (connection, channel) = env.rabbitmq().await;
    let queue = channel
        .queue_declare(
            &env.topology().queue,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the work queue exists");
    let _ = connection.close(200, "done").await;
    queue.message_count()
}

/// Waits until the work queue holds `n` ready jobs, failing after [`PATIENCE`].
async fn wait_for_ready_jobs(env: &TestEnv, n: u32) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = ready_jobs(env).await;
        if ready == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {PATIENCE:?} for {n} ready jobs; the queue holds {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every killmail in the store with its `seq`.
async fn stored_seqs(env: &TestEnv) -> HashMap<KillmailId, Seq> {
    let rows: Vec<(i64, i64)> = sqlx::query_as("SELECT killmail_id, seq FROM killmails")
        .fetch_all(&env.pool)
        .await
        .expect("listing stored killmails");
    rows.into_iter()
        .map(|(id, seq)| (KillmailId(id), Seq(seq)))
        .collect()
}

/// Receives events until `n` different ones (by `seq`) have come, failing after [`PATIENCE`];
/// returns them all, repeats included.
async fn receive_distinct(
    rx: &mut UnboundedReceiver<KillmailAdded>,
    n: usize,
) -> Vec<KillmailAdded> {
    let mut events = Vec::new();
    let mut seqs = HashSet::new();
    let deadline = Instant::now() + PATIENCE;
    while seqs.len() < n {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => {
                seqs.insert(event.seq);
                events.push(event);
            }
            _ => panic!("received {} of {n} killmails before giving up", seqs.len()),
        }
    }
    events
}

/// Checks that the store holds exactly the killmails of `jobs`, each announced under the `seq`
/// it is stored with, as it was sent; returns how many events repeated one already received.
async fn check_stored_and_announced(
    env: &TestEnv,
    jobs: &[(IngestJob, serde_json::Value)],
    events: &[KillmailAdded],
) -> usize {
    let stored = stored_seqs(env).await;
    let sent: HashMap<KillmailId, Killmail> = jobs
        .iter()
        .map(|(job, esi)| {
            let killmail = serde_json::from_value(esi.clone()).expect("an ESI killmail");
            (job.killmail_id, killmail)
        })
        .collect();
    assert_eq!(stored.len(), jobs.len(), "every killmail stored once");
    assert!(stored.keys().all(|id| sent.contains_key(id)));
    let mut seen: HashMap<Seq, KillmailId> = HashMap::new();
    let mut repeats = 0;
    for event in events {
        let id = event.killmail.killmail_id;
        assert_eq!(
            stored.get(&id),
            Some(&event.seq),
            "killmail {id} is announced with the seq it is stored under"
        );
        assert_eq!(
            Some(&event.killmail),
            sent.get(&id),
            "killmail {id} announced as it was sent"
        );
        if seen.insert(event.seq, id).is_some() {
            repeats += 1;
        }
    }
    assert_eq!(seen.len(), jobs.len(), "every killmail announced");
    repeats
}

/// A fake ESI serving one fixture killmail: the fake, the killmail's id and its hash.
fn esi_with_a_killmail() -> (FakeEsi, KillmailId, String) {
    let fake = FakeEsi::default();
    let (esi_body, hash) = fixtures::esi_killmails(1).remove(0);
    let id = KillmailId(esi_body["killmail_id"].as_i64().expect("id"));
    fake.add_killmail(esi_body, &hash);
    (fake, id, hash)
}

#[tokio::test]
async fn esi_error_limit_pauses_every_clone_of_the_client_until_the_reset() {
    let (fake, id, hash) = esi_with_a_killmail();
    fake.answer_next_killmail_request(
        420,
        &[
            ("x-esi-error-limit-remain", "0"),
            ("x-esi-error-limit-reset", "2"),
        ],
    );
    let served = fake.serve().await;
    let client = Esi::new(&served.url(), Duration::from_secs(10)).expect("an ESI client");
    // Cloned before the limit is met: the clones share it all the same.
    let (first, second, third) = (client.clone(), client.clone(), client.clone());

    let limited = first.killmail(id, &hash).await;
    assert!(
        matches!(&limited, Err(EsiError::Transient(reason)) if reason.contains("420")),
        "a 420 is transient: {limited:?}"
    );
    let started = Instant::now();
    let (a, b) = tokio::join!(second.killmail(id, &hash), third.killmail(id, &hash));
    a.expect("fetched after the reset");
    b.expect("fetched after the reset");

    let requests = fake.timed_requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    let limited_at = requests[0].0;
    for (at, path) in &requests[1..] {
        let after = *at - limited_at;
        assert!(
            after >= Duration::from_secs(2),
            "{path} reached ESI {after:?} after the 420, before its reset"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "no longer than the reset"
    );
}

#[tokio::test]
async fn esi_error_budget_running_low_pauses_before_esi_refuses() {
    let (fake, id, hash) = esi_with_a_killmail();
    fake.answer_next_killmail_request(
        200,
        &[
            ("x-esi-error-limit-remain", "4"),
            ("x-esi-error-limit-reset", "1"),
        ],
    );
    let served = fake.serve().await;
    let client = Esi::new(&served.url(), Duration::from_secs(10)).expect("an ESI client");

    client
        .killmail(id, &hash)
        .await
        .expect("the first answer is fine");
    client.clone().killmail(id, &hash).await.expect("fetched");
    let requests = fake.timed_requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].0 - requests[0].0;
    assert!(
        gap >= Duration::from_secs(1),
        "asked again {gap:?} after 4 errors were left"
    );
}

#[tokio::test]
async fn esi_429_is_honoured_for_its_retry_after_and_a_long_pause_fails_fast() {
    let (fake, id, hash) = esi_with_a_killmail();
    fake.answer_next_killmail_request(429, &[("retry-after", "1")]);
    fake.answer_next_killmail_request(420, &[("x-esi-error-limit-reset", "30")]);
    let served = fake.serve().await;
    let client = Esi::new(&served.url(), Duration::from_secs(2)).expect("an ESI client");

    let refused = client.killmail(id, &hash).await;
    assert!(
        matches!(refused, Err(EsiError::Transient(_))),
        "{refused:?}"
    );
    let limited = client.killmail(id, &hash).await;
    assert!(
        matches!(limited, Err(EsiError::Transient(_))),
        "{limited:?}"
    );
    let requests = fake.timed_requests();
    let gap = requests[1].0 - requests[0].0;
    assert!(
        gap >= Duration::from_secs(1),
        "asked again {gap:?} after 429"
    );

    // Longer than a request may take: the job goes round the retry queues instead of waiting.
    let started = Instant::now();
    let paused = client.clone().killmail(id, &hash).await;
    assert!(
        matches!(&paused, Err(EsiError::Transient(reason)) if reason.contains("paused")),
        "{paused:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "failed at once"
    );
    assert_eq!(
        fake.requests().len(),
        2,
        "ESI was not asked during the pause"
    );
}

#[tokio::test]
async fn sigterm_stops_worker_killmails_mid_stream_and_the_next_worker_finishes_the_stream() {
    let env = TestEnv::new().await;
    let (jobs, mut events, feeding, status) = signal_mid_stream(&env, "TERM").await;
    assert!(status.success(), "worker-killmails exits cleanly: {status}");
    let stored = env.killmail_count().await;
    assert!(stored < 200, "stopped mid-stream ({stored} stored)");
    feeding.await.expect("publishing");
    // Whatever it held and had not stored went back to the queue.
    let left = 200 - u32::try_from(stored).expect("a count");
    wait_for_ready_jobs(&env, left).await;

    let _next = env.spawn("worker-killmails", &[]);
    env.wait_for_killmails(200).await;
    let received = receive_events(&mut events, 200).await;
    assert_no_more_events(&mut events, Duration::from_secs(2)).await;
    let repeats = check_stored_and_announced(&env, &jobs, &received).await;
    assert_eq!(repeats, 0, "nothing announced twice after a clean stop");
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_while_a_fetch_waits_out_an_esi_pause_hands_the_job_back() {
    let mut env = TestEnv::new().await;
    let jobs = jobs(2, false);
    let fake = FakeEsi::default();
    for (job, esi) in &jobs {
        fake.add_killmail(esi.clone(), &job.hash);
    }
    // The first answer leaves 3 errors in ESI's window, which resets in 9 s: the worker holds
    // off ESI that long (within its 10 s request timeout), so the second job waits.
    fake.answer_next_killmail_request(
        200,
        &[
            ("x-esi-error-limit-remain", "3"),
            ("x-esi-error-limit-reset", "9"),
        ],
    );
    let _served = fake.serve_for(&mut env).await;
    env.vars.insert("NAMES_BUDGET_MS".into(), "100".into());
    let publisher = env.publisher().await;
    let mut events = env.subscribe().await;
    let mut worker = env.spawn("worker-killmails", &[]);

    publisher.publish(&jobs[0].0).await.expect("publish");
    receive_events(&mut events, 1).await;
    publisher.publish(&jobs[1].0).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopping = Instant::now();
    send_signal(&worker, "TERM");
    let status = exit_within(&mut worker, STOP_BOUND).await;
    assert!(status.success(), "worker-killmails exits cleanly: {status}");
    assert!(
        stopping.elapsed() < Duration::from_secs(3),
        "it did not wait out the pause ({:?})",
        stopping.elapsed()
    );
    let fetches = fake
        .requests()
        .iter()
        .filter(|r| r.starts_with("/killmails/"))
        .count();
    assert_eq!(fetches, 1, "the second job never reached ESI");
    assert_eq!(env.killmail_count().await, 1);
    wait_for_ready_jobs(&env, 1).await;

    let _next = env.spawn("worker-killmails", &[]);
    let received = receive_events(&mut events, 1).await;
    assert_eq!(received[0].killmail.killmail_id, jobs[1].0.killmail_id);
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    assert_eq!(env.killmail_count().await, 2);
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn sigkill_of_worker_killmails_mid_batch_loses_nothing_and_repeats_no_killmail() {
    let env = TestEnv::new().await;
    let (jobs, mut events, feeding, status) = signal_mid_stream(&env, "KILL").await;
    assert_eq!(status.signal(), Some(9), "killed: {status}");
    let stored = env.killmail_count().await;
    assert!(stored < 200, "killed mid-stream ({stored} stored)");
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM pending_announcements")
        .fetch_one(&env.pool)
        .await
        .expect("counting pending announcements");
    eprintln!("killed with {stored} killmails stored, {pending} of them not yet announced");
    feeding.await.expect("publishing");

    let _next = env.spawn("worker-killmails", &[]);
    env.wait_for_killmails(200).await;
    // A killmail committed but not announced before the kill is announced by the next
    // worker's sweep once overdue (5 s).
    let mut received = receive_distinct(&mut events, 200).await;
    let quiet = Instant::now() + Duration::from_secs(2);
    while let Ok(Some(event)) = tokio::time::timeout_at(quiet, events.recv()).await {
        received.push(event);
    }
    let repeats = check_stored_and_announced(&env, &jobs, &received).await;
    // Only a kill between Redis taking a batch's events and the commit that marks them
    // announced can repeat them (at least once, by design); the repeat carries the same seq,
    // by which the server and any resuming client tell it apart.
    assert!(
        repeats <= 100,
        "{repeats} repeated events: more than one batch"
    );
    if repeats > 0 {
        eprintln!("SIGKILL landed between publish and commit: {repeats} events repeated");
    }
    assert!(env.dead_letters().await.is_empty());
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_stops_worker_redisq_with_its_cursor_at_the_last_confirmed_job() {
    const START: i64 = 96_599_404;
    const N: usize = 40;
    let mut env = TestEnv::new().await;
    let fake = FakeR2z2::holding(START, &fixtures::esi_killmails(N));
    fake.reveal(START + i64::try_from(N).expect("small") - 1);
    let _served = fake.serve_for(&mut env).await;
    let mut events = env.subscribe().await;
    let _killmails = env.spawn("worker-killmails", &[]);
    let mut feed = env.spawn("worker-redisq", &[]);

    env.wait_for_killmails(15).await;
    send_signal(&feed, "TERM");
    let status = exit_within(&mut feed, STOP_BOUND).await;
    assert!(status.success(), "worker-redisq exits cleanly: {status}");
    let cursor = killreport::db::cursors::load(&env.pool, "r2z2")
        .await
        .expect("loading the cursor")
        .expect("a cursor");
    assert!(cursor < START + 39, "stopped mid-stream (cursor {cursor})");
    // Every sequence up to the cursor was queued, and none after it.
    let queued = cursor - START + 1;
    env.wait_for_killmails(queued).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        env.killmail_count().await,
        queued,
        "nothing past the cursor"
    );
    let before_restart = fake.requests().len();

    let _feed = env.spawn("worker-redisq", &[]);
    let received = receive_events(&mut events, N).await;
    assert_no_more_events(&mut events, Duration::from_secs(1)).await;
    let ids: HashSet<KillmailId> = received.iter().map(|e| e.killmail.killmail_id).collect();
    assert_eq!(ids.len(), N, "each killmail announced once");
    assert_eq!(env.killmail_count().await, 40);
    assert_eq!(
        fake.requests()[before_restart].sequence,
        Some(cursor + 1),
        "the restart resumes after the cursor"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_stops_worker_redisq_long_polling_after_its_poll() {
    let mut env = TestEnv::new().await;
    let upstream = fixtures::dir()
        .join("upstream/redisq/redisq-package-119455394.andimiller-killmail-router.json");
    let package: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(upstream).expect("fixture")).expect("JSON");
    let redisq = FakeRedisq::default();
    redisq.push_answer(package);
    let _served = redisq.serve_for(&mut env).await;
    let mut events = env.subscribe().await;
    let _killmails = env.spawn("worker-killmails", &[]);
    let mut feed = env.spawn("worker-redisq", &[]);

    receive_events(&mut events, 1).await;
    send_signal(&feed, "TERM");
    let status = exit_within(&mut feed, STOP_BOUND).await;
    assert!(status.success(), "worker-redisq exits cleanly: {status}");
    env.cleanup().await;
}
