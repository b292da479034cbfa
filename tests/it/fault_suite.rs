//! The fault suite (issue 4): real fixture killmails stream through the whole pipeline — a fake
//! R2Z2, worker-redisq, RabbitMQ, worker-killmails, PostgreSQL, Redis, the server, and a
//! WebSocket subscriber that resumes with `after` whenever its connection drops — while, one
//! phase after another, RabbitMQ, Redis and PostgreSQL restart, each worker is killed with
//! SIGKILL and started again, and the server restarts; then (issue 11) PostgreSQL stays down
//! longer than the retry ladder, forged and corrupt events appear on the channel, the server's
//! Redis subscription goes silent without an error, and two worker-redisq run on one cursor
//! until the first is killed. The processes under test are left alone
//! through the service restarts: they must heal by themselves, and meanwhile each one's
//! `/readyz` must name the service that is down, and be 200 again afterwards. Every killmail
//! must end up stored once and delivered to the subscriber once; a table of what each phase
//! sent, stored, delivered, lost and duplicated, and what `/readyz` said was down, is printed
//! (`--nocapture`) and is the failure message.
//!
//! The services are the suite's own (`support::private_services`), so restarting them disturbs
//! no other test; the processes' logs are kept beside them when the suite fails.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use tokio::process::Child;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use killreport::events::KillmailAdded;
use killreport::killmail::{Killmail, Seq};

use crate::support::fakes::Served;
use crate::support::fakes::esi::FakeEsi;
use crate::support::fakes::r2z2::FakeR2z2;
use crate::support::private_services::PrivateServices;
use crate::support::proxy::{SilentProxy, host_port};
use crate::support::ws::{ResumingSubscriber, graphql_url};
use crate::support::{self, PATIENCE, TestEnv, fixtures, free_port, terminate};

/// The R2Z2 sequence of the first killmail.
const START: i64 = 96_599_404;
/// Killmails each phase streams (the fixture day holds 226).
const PER_PHASE: usize = 22;
/// One killmail appears on the feed every so often: about 6 s a phase.
const PACE: Duration = Duration::from_millis(150);
/// How many killmails of a phase have appeared when its fault strikes.
const FAULT_AFTER: u32 = 8;
/// How long a stopped service or a killed process stays down before it is started again, so
/// that killmails arrive meanwhile and pile up, or are committed but cannot be announced.
const DOWNTIME: Duration = Duration::from_secs(3);
/// The retry ladder of the suite's processes (0.7 s in all) and a PostgreSQL outage that
/// outlasts it several times over: a worker that retried through the ladder would dead-letter.
const LADDER_MS: [u64; 3] = [100, 200, 400];
const LONG_DOWNTIME: Duration = Duration::from_secs(5);
/// How often the server checks its Redis subscription (`LIVE_CHECK_MS`).
const LIVE_CHECK_MS: &str = "500";
/// After the last phase, how long to watch for late duplicates: longer than worker-killmails'
/// 5 s sweep of pending announcements, the one thing that announces late.
const QUIET: Duration = Duration::from_secs(7);

#[derive(Debug, Clone, Copy)]
enum Fault {
    RestartRabbitmq,
    RestartRedis,
    RestartPostgres,
    KillWorkerKillmails,
    KillWorkerRedisq,
    RestartServer,
    PostgresDownBeyondLadder,
    ForgedEvents,
    SilentSubscription,
    TwoWorkerRedisq,
}

const FAULTS: [Fault; 10] = [
    Fault::RestartRabbitmq,
    Fault::RestartRedis,
    Fault::RestartPostgres,
    Fault::KillWorkerKillmails,
    Fault::KillWorkerRedisq,
    Fault::RestartServer,
    Fault::PostgresDownBeyondLadder,
    Fault::ForgedEvents,
    Fault::SilentSubscription,
    Fault::TwoWorkerRedisq,
];

impl Fault {
    fn describe(self) -> &'static str {
        match self {
            Fault::RestartRabbitmq => "restart RabbitMQ",
            Fault::RestartRedis => "restart Redis",
            Fault::RestartPostgres => "restart PostgreSQL",
            Fault::KillWorkerKillmails => "kill -9 worker-killmails, start it",
            Fault::KillWorkerRedisq => "kill -9 worker-redisq, start it",
            Fault::RestartServer => "restart the server (client resumes)",
            Fault::PostgresDownBeyondLadder => "PostgreSQL down 5 s, ladder 0.7 s",
            Fault::ForgedEvents => "forged and corrupt events on Redis",
            Fault::SilentSubscription => "server's subscription goes silent",
            Fault::TwoWorkerRedisq => "2nd worker-redisq, kill -9 the 1st",
        }
    }

    /// What `/readyz` must report down while this fault lasts: which process, which service.
    fn makes_unready(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Fault::RestartRabbitmq => &[
                ("worker-killmails", "rabbitmq"),
                ("worker-redisq", "rabbitmq"),
            ],
            Fault::RestartRedis => &[("server", "redis"), ("worker-killmails", "redis")],
            Fault::RestartPostgres | Fault::PostgresDownBeyondLadder => &[
                ("server", "postgres"),
                ("worker-killmails", "postgres"),
                ("worker-redisq", "postgres"),
            ],
            Fault::KillWorkerKillmails
            | Fault::KillWorkerRedisq
            | Fault::RestartServer
            | Fault::ForgedEvents
            | Fault::SilentSubscription
            | Fault::TwoWorkerRedisq => &[],
        }
    }
}

/// A process's name and a dependency its `/readyz` reported down.
type Down = (&'static str, String);

/// Polls each process's `/readyz` until `stop`; returns every dependency reported down. A
/// process that does not answer (it is being restarted) reports nothing.
async fn watch_readiness(
    readyz: Vec<(&'static str, String)>,
    stop: CancellationToken,
) -> BTreeSet<Down> {
    let mut down = BTreeSet::new();
    while !stop.is_cancelled() {
        let answers =
            futures::future::join_all(readyz.iter().map(|(process, url)| async move {
                Some((*process, support::readyz(url).await?.1))
            }))
            .await;
        for (process, states) in answers.into_iter().flatten() {
            for (dependency, state) in states {
                if state != "up" {
                    down.insert((process, dependency));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    down
}

/// The processes under test.
const PROCESSES: [&str; 3] = ["worker-killmails", "worker-redisq", "server"];

/// The whole pipeline on the suite's own services.
struct Pipeline {
    env: TestEnv,
    r2z2: FakeR2z2,
    processes: HashMap<&'static str, Child>,
    /// Where each worker serves `/healthz` and `/readyz`.
    health: HashMap<&'static str, String>,
    /// Each process's `/readyz`.
    readyz: Vec<(&'static str, String)>,
    subscriber: ResumingSubscriber,
    /// Between the server and Redis, to silence its subscription.
    server_redis: SilentProxy,
    /// A killmail no source sends, for forged events.
    forged: Killmail,
    _fakes: [Served; 2],
    // Last, so that the processes above are gone before their services stop.
    services: PrivateServices,
}

impl Pipeline {
    /// Starts the services, a fake R2Z2 holding `killmails` (none revealed
    /// yet), a fake ESI that names everyone, the three processes and the subscriber.
    async fn start(killmails: &[(serde_json::Value, String)]) -> Self {
        let services = PrivateServices::start().await;
        let mut env = TestEnv::on(services.services()).await;
        env.log_dir = Some(services.dir().to_path_buf());
        env.vars.insert("RUST_LOG".into(), "info".into());
        env.rabbit.retry_delays_ms = LADDER_MS.to_vec();
        env.vars
            .insert("LIVE_CHECK_MS".into(), LIVE_CHECK_MS.into());
        let server_redis = SilentProxy::start(&host_port(&env.redis_url)).await;
        let mut forged: Killmail =
            serde_json::from_value(killmails[0].0.clone()).expect("an ESI killmail");
        forged.killmail_id = killreport::killmail::KillmailId(1);

        let r2z2 = FakeR2z2::holding(START, killmails);
        let esi = FakeEsi::default();
        for (body, _) in killmails {
            let killmail: killreport::killmail::Killmail =
                serde_json::from_value(body.clone()).expect("an ESI killmail");
            for id in killmail.entity_ids() {
                esi.add_name(id, "character", &format!("Pilot {id}"));
            }
        }
        let r2z2_served = r2z2.serve_for(&mut env).await;
        let esi_served = esi.serve_for(&mut env).await;

        let (server, base) = {
            let direct = env.redis_url.clone();
            env.redis_url = server_redis.url_for(&direct);
            let started = env.start_server().await;
            env.redis_url = direct;
            started
        };
        let subscriber = ResumingSubscriber::start(graphql_url(&base));
        let health: HashMap<&'static str, String> = ["worker-killmails", "worker-redisq"]
            .into_iter()
            .map(|binary| (binary, format!("127.0.0.1:{}", free_port())))
            .collect();
        let readyz = health
            .iter()
            .map(|(binary, addr)| (*binary, format!("http://{addr}/readyz")))
            .chain([("server", format!("{base}/readyz"))])
            .collect();
        let mut pipeline = Self {
            env,
            r2z2,
            processes: HashMap::from([("server", server)]),
            health,
            readyz,
            subscriber,
            server_redis,
            forged,
            _fakes: [r2z2_served, esi_served],
            services,
        };
        for binary in ["worker-killmails", "worker-redisq"] {
            pipeline.launch(binary).await;
        }
        pipeline
    }

    async fn inject(&mut self, fault: Fault) {
        match fault {
            Fault::RestartRabbitmq => self.services.restart_rabbitmq(DOWNTIME).await,
            Fault::RestartRedis => self.services.restart_redis(DOWNTIME).await,
            Fault::RestartPostgres => self.services.restart_postgres(DOWNTIME).await,
            Fault::KillWorkerKillmails => self.kill_and_start("worker-killmails").await,
            Fault::KillWorkerRedisq => self.kill_and_start("worker-redisq").await,
            Fault::RestartServer => {
                let server = self.process("server");
                terminate(server, PATIENCE).await;
                tokio::time::sleep(DOWNTIME).await;
                self.launch("server").await;
            }
            Fault::PostgresDownBeyondLadder => {
                self.services.restart_postgres(LONG_DOWNTIME).await;
            }
            Fault::ForgedEvents => self.forge_events().await,
            Fault::SilentSubscription => {
                let silenced = self
                    .server_redis
                    .silence_carrying(self.env.channel.as_bytes());
                assert_eq!(silenced, 1, "the server's one killmail subscription");
                tokio::time::sleep(DOWNTIME).await;
            }
            Fault::TwoWorkerRedisq => {
                let health = format!("127.0.0.1:{}", free_port());
                let second = self.env.spawn("worker-redisq", &["--health-addr", &health]);
                tokio::time::sleep(DOWNTIME).await;
                self.process("worker-redisq").kill().await.expect("SIGKILL");
                self.processes.insert("worker-redisq", second);
                for (process, url) in &mut self.readyz {
                    if *process == "worker-redisq" {
                        *url = format!("http://{health}/readyz");
                    }
                }
                self.health.insert("worker-redisq", health);
            }
        }
    }

    /// Publishes on the killmail channel what anyone with access to Redis could: an event with
    /// a sequence far ahead, one with the next real sequence and a killmail no source sent,
    /// both with forged names, and a message that is no event at all.
    async fn forge_events(&self) {
        let next = killreport::db::killmails::latest_seq(&self.env.pool)
            .await
            .expect("the store")
            .0
            + 1;
        let mut redis = killreport::events::connect(&self.env.redis_url)
            .await
            .expect("Redis");
        let forged = |seq: i64| KillmailAdded {
            seq: Seq(seq),
            killmail: self.forged.clone(),
            zkb: None,
            hash: Some("0".repeat(40)),
            names: [("1".to_owned(), "Forged".to_owned())].into(),
        };
        let payloads = [
            serde_json::to_string(&forged(1_000_000_000_000)).expect("JSON"),
            serde_json::to_string(&forged(next)).expect("JSON"),
            "{\"seq\": \"corrupt".to_owned(),
        ];
        for payload in payloads {
            redis::cmd("PUBLISH")
                .arg(&self.env.channel)
                .arg(payload)
                .query_async::<i64>(&mut redis)
                .await
                .expect("PUBLISH");
        }
    }

    fn process(&mut self, binary: &str) -> &mut Child {
        self.processes
            .get_mut(binary)
            .expect("a process under test")
    }

    async fn kill_and_start(&mut self, binary: &'static str) {
        self.process(binary).kill().await.expect("SIGKILL");
        tokio::time::sleep(DOWNTIME).await;
        self.launch(binary).await;
    }

    async fn launch(&mut self, binary: &'static str) {
        let child = match binary {
            "server" => {
                let direct = self.env.redis_url.clone();
                self.env.redis_url = self.server_redis.url_for(&direct);
                let server = self.env.start_server_again().await;
                self.env.redis_url = direct;
                server
            }
            worker => self
                .env
                .spawn(worker, &["--health-addr", &self.health[worker]]),
        };
        self.processes.insert(binary, child);
    }

    /// Processes that exited by themselves, each started again so the suite can go on.
    async fn restart_exited(&mut self) -> Vec<String> {
        let mut exited = Vec::new();
        for binary in PROCESSES {
            if let Some(status) = self.process(binary).try_wait().expect("a status") {
                exited.push(format!("{binary} exited ({status})"));
                self.launch(binary).await;
            }
        }
        exited
    }

    /// Whether every process's `/readyz` is 200 (waiting [`PATIENCE`] at most).
    async fn all_ready(&self) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answers =
                futures::future::join_all(self.readyz.iter().map(|(_, url)| support::readyz(url)))
                    .await;
            if answers
                .iter()
                .all(|a| a.as_ref().is_some_and(|(status, _)| *status == 200))
            {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// How many rows the store holds for each of `ids`; `None` while PostgreSQL is away.
    async fn stored(&self, ids: &[i64]) -> Option<HashMap<i64, i64>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT killmail_id, count(*) FROM killmails WHERE killmail_id = ANY($1)
             GROUP BY killmail_id",
        )
        .bind(ids)
        .fetch_all(&self.env.pool)
        .await
        .ok()?;
        Some(rows.into_iter().collect())
    }

    /// Waits until every one of `ids` is stored and delivered; false after [`PATIENCE`].
    async fn wait_until_through(&self, ids: &[i64]) -> bool {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stored = self.stored(ids).await.is_some_and(|s| s.len() == ids.len());
            let delivered: HashSet<i64> = self
                .subscriber
                .deliveries()
                .killmail_ids
                .into_iter()
                .collect();
            if stored && ids.iter().all(|id| delivered.contains(id)) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Reveals the killmails `ids` (from sequence `first` on) on the feed at [`PACE`], injects
    /// `fault` after [`FAULT_AFTER`] of them, and waits until all are through.
    async fn phase(&mut self, fault: Fault, first: i64, ids: Vec<i64>) -> Phase {
        let started = Instant::now();
        let resumes_before = self.subscriber.deliveries().resumed_after.len();
        let streaming = {
            let r2z2 = self.r2z2.clone();
            let last = first + i64::try_from(ids.len()).expect("few") - 1;
            tokio::spawn(async move {
                for sequence in first..=last {
                    r2z2.reveal(sequence);
                    tokio::time::sleep(PACE).await;
                }
            })
        };
        tokio::time::sleep(PACE * FAULT_AFTER).await;
        let stop_watching = CancellationToken::new();
        let watching = tokio::spawn(watch_readiness(self.readyz.clone(), stop_watching.clone()));
        let fault_started = Instant::now();
        self.inject(fault).await;
        let fault_took = fault_started.elapsed();
        stop_watching.cancel();
        let reported_down = watching.await.expect("watching /readyz");
        streaming.await.expect("streaming the phase");
        // The streaming task sleeps one pace after revealing the last killmail.
        let last_revealed = Instant::now() - PACE;
        let through = self.wait_until_through(&ids).await;
        let caught_up = last_revealed.elapsed();
        let ready_again = self.all_ready().await;
        let exited = self.restart_exited().await;
        let resumed_after = self.subscriber.deliveries().resumed_after[resumes_before..].to_vec();
        Phase {
            fault,
            ids,
            through,
            reported_down,
            ready_again,
            exited,
            resumed_after,
            fault_took,
            caught_up,
            took: started.elapsed(),
        }
    }
}

/// What happened in one phase.
struct Phase {
    fault: Fault,
    ids: Vec<i64>,
    /// Whether everything was stored and delivered within [`PATIENCE`].
    through: bool,
    /// What the processes' `/readyz` reported down while the fault lasted.
    reported_down: BTreeSet<Down>,
    /// Whether every `/readyz` was 200 once the phase was through.
    ready_again: bool,
    /// Processes under test that exited by themselves.
    exited: Vec<String>,
    /// Why the subscriber's sessions ended during the phase.
    resumed_after: Vec<String>,
    fault_took: Duration,
    /// From the last killmail's appearance on the feed until all were stored and delivered.
    caught_up: Duration,
    took: Duration,
}

impl Phase {
    /// What the fault should have made `/readyz` report, and it did not.
    fn unreported(&self) -> Vec<String> {
        self.fault
            .makes_unready()
            .iter()
            .filter(|(p, d)| !self.reported_down.contains(&(*p, (*d).to_owned())))
            .map(|(p, d)| format!("{p}: {d}"))
            .collect()
    }

    /// `/readyz`'s reports, as `process: dependency` with the `worker-` prefix dropped.
    fn reported(&self) -> String {
        let reports: Vec<String> = self
            .reported_down
            .iter()
            .map(|(p, d)| format!("{}:{d}", p.trim_start_matches("worker-")))
            .collect();
        if reports.is_empty() {
            "-".to_owned()
        } else {
            reports.join(" ")
        }
    }
}

/// One row of the table, counted once the whole suite has run.
struct Row {
    sent: usize,
    stored: usize,
    delivered: usize,
    /// Sent but not stored, or stored but never delivered.
    lost: usize,
    /// Rows stored beyond one per killmail, plus deliveries beyond one per killmail.
    duplicated: usize,
}

impl Row {
    fn count(ids: &[i64], stored: &HashMap<i64, i64>, deliveries: &HashMap<i64, usize>) -> Self {
        let stored_once = ids.iter().filter(|id| stored.contains_key(id)).count();
        let delivered = ids.iter().filter(|id| deliveries.contains_key(id)).count();
        let lost = ids
            .iter()
            .filter(|id| !stored.contains_key(id) || !deliveries.contains_key(id))
            .count();
        let extra_rows: i64 = ids
            .iter()
            .filter_map(|id| stored.get(id))
            .map(|n| n - 1)
            .sum();
        let extra_deliveries: usize = ids
            .iter()
            .filter_map(|id| deliveries.get(id))
            .map(|n| n - 1)
            .sum();
        Self {
            sent: ids.len(),
            stored: stored_once,
            delivered,
            lost,
            duplicated: usize::try_from(extra_rows).expect("no negative count") + extra_deliveries,
        }
    }
}

/// The table, with what went wrong below it.
fn table(phases: &[Phase], rows: &[Row], unexpected: &[i64]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<37} {:>5} {:>6} {:>9} {:>4} {:>10} {:>7} {:>7} {:>10} {:>7}  readyz said down",
        "fault",
        "sent",
        "stored",
        "delivered",
        "lost",
        "duplicated",
        "resumes",
        "fault s",
        "catch-up s",
        "phase s"
    );
    for (phase, row) in phases.iter().zip(rows) {
        let _ = writeln!(
            out,
            "{:<37} {:>5} {:>6} {:>9} {:>4} {:>10} {:>7} {:>7.1} {:>10.1} {:>7.1}  {}",
            phase.fault.describe(),
            row.sent,
            row.stored,
            row.delivered,
            row.lost,
            row.duplicated,
            phase.resumed_after.len(),
            phase.fault_took.as_secs_f64(),
            phase.caught_up.as_secs_f64(),
            phase.took.as_secs_f64(),
            phase.reported(),
        );
    }
    for phase in phases {
        let fault = phase.fault.describe();
        if !phase.through {
            let _ = writeln!(out, "{fault}: not all through within {PATIENCE:?}");
        }
        for unreported in phase.unreported() {
            let _ = writeln!(out, "{fault}: /readyz never said down: {unreported}");
        }
        if !phase.ready_again {
            let _ = writeln!(out, "{fault}: a /readyz was not 200 again afterwards");
        }
        for exited in &phase.exited {
            let _ = writeln!(out, "{fault}: {exited}, started again");
        }
        // A client retrying while the server is down fails the same way many times over.
        let mut reasons = phase.resumed_after.iter().peekable();
        while let Some(reason) = reasons.next() {
            let mut times = 1;
            while reasons.next_if_eq(&reason).is_some() {
                times += 1;
            }
            let times = if times > 1 {
                format!(" (×{times})")
            } else {
                String::new()
            };
            let _ = writeln!(out, "{fault}: subscriber resumed after: {reason}{times}");
        }
    }
    if !unexpected.is_empty() {
        let _ = writeln!(out, "delivered killmails nobody sent: {unexpected:?}");
    }
    out
}

#[tokio::test]
async fn every_killmail_is_stored_and_delivered_once_whatever_restarts() {
    if PrivateServices::skipped() {
        eprintln!("SKIP_FAULT_SUITE is set: the fault suite did not run");
        return;
    }
    let suite_started = Instant::now();
    let killmails = fixtures::esi_killmails(PER_PHASE * FAULTS.len());
    let mut pipeline = Pipeline::start(&killmails).await;
    let started_in = suite_started.elapsed();

    let ids: Vec<i64> = killmails
        .iter()
        .map(|(body, _)| body["killmail_id"].as_i64().expect("killmail_id"))
        .collect();
    let mut phases = Vec::new();
    for (n, (fault, ids)) in FAULTS.into_iter().zip(ids.chunks(PER_PHASE)).enumerate() {
        let first = START + i64::try_from(n * PER_PHASE).expect("few");
        phases.push(pipeline.phase(fault, first, ids.to_vec()).await);
    }

    tokio::time::sleep(QUIET).await;
    let stored = pipeline.stored(&ids).await.expect("PostgreSQL is back");
    let received = pipeline.subscriber.deliveries();
    let mut deliveries: HashMap<i64, usize> = HashMap::new();
    for id in &received.killmail_ids {
        *deliveries.entry(*id).or_default() += 1;
    }
    let sent: HashSet<i64> = ids.iter().copied().collect();
    let mut unexpected: Vec<i64> = deliveries
        .keys()
        .filter(|id| !sent.contains(id))
        .copied()
        .collect();
    unexpected.sort_unstable();
    let rows: Vec<Row> = phases
        .iter()
        .map(|phase| Row::count(&phase.ids, &stored, &deliveries))
        .collect();
    let dead_letters = pipeline.env.dead_letters().await.len();
    let mut table = table(&phases, &rows, &unexpected);
    if dead_letters > 0 {
        let _ = writeln!(table, "dead-lettered: {dead_letters}");
    }
    println!(
        "{table}services up in {:.1} s; whole suite {:.1} s",
        started_in.as_secs_f64(),
        suite_started.elapsed().as_secs_f64()
    );

    let clean = rows.iter().all(|r| r.lost == 0 && r.duplicated == 0)
        && phases.iter().all(|p| {
            p.through && p.exited.is_empty() && p.ready_again && p.unreported().is_empty()
        })
        && unexpected.is_empty()
        && dead_letters == 0;
    assert!(
        clean,
        "killmails lost or duplicated, a process gave up, or /readyz was wrong (logs in {}):\n{table}",
        pipeline.services.dir().display()
    );
}
