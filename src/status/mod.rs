//! The operators' view of the pipeline (`workerStatus` in GraphQL, the `worker-status` event):
//! the processes alive by their heartbeats, the queues' depth, consumers and rate, the dead
//! letters, the feeds' cursors and how fresh they are, and how fast killmails are stored.
//! Each server works it out once per interval for all its subscribers ([`Monitor`]); one server
//! per interval (whichever takes the lease on Redis) also sends it as a `worker-status` event.

pub mod heartbeat;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_graphql::{Enum, SimpleObject};
use chrono::{DateTime, TimeZone, Utc};
use futures::Stream;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use redis::aio::ConnectionManager;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::killmail::Seq;
use crate::queue::Topology;

use self::heartbeat::{Beat, Keys};

/// The event type the status is sent as on the bus.
pub const EVENT_TYPE: &str = "worker-status";
/// How long RabbitMQ may take to answer for the queues.
const RABBITMQ_TIMEOUT: Duration = Duration::from_secs(3);

/// The pipeline at one moment.
#[derive(Debug, Clone, Serialize, SimpleObject)]
#[graphql(complex)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    #[graphql(skip)]
    pub at: DateTime<Utc>,
    /// Processes heard from in the last ten minutes, newest beat first; those whose beat is
    /// older than three intervals are no longer `alive` (a process that stops cleanly leaves
    /// the list at once).
    pub processes: Vec<ProcessStatus>,
    /// The work queue, its retry queues and its dead-letter queue; empty when RabbitMQ did
    /// not answer (see `rabbitmqError`).
    pub queues: Vec<QueueStatus>,
    /// Jobs in the dead-letter queue (`queue dlq list` shows them with their reasons).
    pub dead_letters: Option<i64>,
    /// Why the queues are missing, when they are.
    pub rabbitmq_error: Option<String>,
    pub feeds: Vec<FeedStatus>,
    /// Killmails new to the store per second over the last interval.
    pub killmails_stored_per_second: f64,
}

#[derive(Debug, Clone, Serialize, SimpleObject)]
#[graphql(complex)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStatus {
    pub id: String,
    /// The binary: `server`, `worker-killmails`, `worker-redisq`.
    pub name: String,
    pub host: String,
    pub pid: i64,
    pub version: String,
    #[graphql(skip)]
    pub started_at: DateTime<Utc>,
    #[graphql(skip)]
    pub last_seen: DateTime<Utc>,
    pub alive: bool,
    /// Each dependency the process needs and whether it answered at the last beat.
    pub dependencies: Vec<DependencyState>,
}

#[derive(Debug, Clone, Serialize, SimpleObject)]
pub struct DependencyState {
    pub name: String,
    pub up: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Enum)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum QueueRole {
    Work,
    Retry,
    DeadLetter,
}

#[derive(Debug, Clone, Serialize, SimpleObject)]
#[serde(rename_all = "camelCase")]
pub struct QueueStatus {
    pub name: String,
    pub role: QueueRole,
    /// Jobs waiting; null when the queue does not exist (yet).
    pub depth: Option<i64>,
    /// Workers consuming it.
    pub consumers: Option<i64>,
    /// How fast the depth changed over the last interval (negative: draining).
    pub depth_change_per_second: Option<f64>,
}

#[derive(Debug, Clone, Serialize, SimpleObject)]
#[graphql(complex)]
#[serde(rename_all = "camelCase")]
pub struct FeedStatus {
    /// The feed's cursor name (`r2z2` by default).
    pub feed: String,
    /// The last sequence whose job RabbitMQ confirmed.
    pub sequence: i64,
    #[graphql(skip)]
    pub updated_at: DateTime<Utc>,
    /// Seconds since the cursor last moved: a few while the feed is live, growing while the
    /// poller is stopped or stuck.
    pub lag_seconds: f64,
}

/// What the server reads the status from.
#[derive(Clone)]
pub struct Sources {
    pub pool: PgPool,
    pub redis: ConnectionManager,
    pub keys: Keys,
    pub rabbitmq_url: String,
    pub topology: Topology,
    /// Where the `worker-status` event is sent: the bus channel; `None`, it is not sent.
    pub bus_channel: Option<String>,
    pub interval: Duration,
}

/// The latest status a server worked out; clone it freely.
#[derive(Clone)]
pub struct Status(watch::Receiver<Option<Arc<WorkerStatus>>>);

impl Status {
    /// The latest status, waiting for the first one.
    pub async fn current(&self) -> Option<Arc<WorkerStatus>> {
        let mut receiver = self.0.clone();
        let latest = receiver.wait_for(Option::is_some).await.ok()?;
        latest.clone()
    }

    /// The latest status, then each new one.
    pub fn updates(&self) -> impl Stream<Item = Arc<WorkerStatus>> + use<> {
        let receiver = self.0.clone();
        futures::stream::unfold((receiver, true), |(mut receiver, first)| async move {
            if !first {
                receiver.changed().await.ok()?;
            }
            let latest = receiver.wait_for(Option::is_some).await.ok()?.clone();
            Some((latest?, (receiver, false)))
        })
    }
}

/// Works the status out every interval until `shutdown`.
pub struct Monitor {
    sources: Sources,
    /// The server's own RabbitMQ connection and a channel on it, opened when first needed.
    rabbitmq: Option<(lapin::Connection, lapin::Channel)>,
    last: Option<Sample>,
}

/// What the rates are measured against.
struct Sample {
    taken: Instant,
    newest_seq: Seq,
    depths: Vec<(String, Option<i64>)>,
}

impl Monitor {
    /// Starts working the status out, at once and then every interval, in the background.
    pub fn start(sources: Sources, shutdown: CancellationToken) -> Status {
        let (sender, receiver) = watch::channel(None);
        let mut monitor = Self {
            sources,
            rabbitmq: None,
            last: None,
        };
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(monitor.sources.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = ticks.tick() => {}
                }
                match monitor.work_out().await {
                    Ok(status) => {
                        let status = Arc::new(status);
                        sender.send_replace(Some(Arc::clone(&status)));
                        monitor.send_event(&status).await;
                    }
                    Err(error) => {
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "working out the worker status failed"
                        );
                    }
                }
            }
        });
        Status(receiver)
    }

    async fn work_out(&mut self) -> anyhow::Result<WorkerStatus> {
        let now = Utc::now();
        let taken = Instant::now();
        let beats = heartbeat::recent(&mut self.sources.redis, &self.sources.keys).await?;
        let processes = beats
            .into_iter()
            .map(|beat| self.process(beat, now))
            .collect();
        let feeds = db::cursors::all(&self.sources.pool)
            .await?
            .into_iter()
            .map(|(feed, sequence, updated_at)| FeedStatus {
                feed,
                sequence,
                updated_at,
                lag_seconds: (now - updated_at).as_seconds_f64().max(0.0),
            })
            .collect();
        let (mut queues, rabbitmq_error) = match self.queues().await {
            Ok(queues) => (queues, None),
            Err(error) => {
                self.rabbitmq = None;
                (Vec::new(), Some(format!("{error:#}")))
            }
        };
        let pool = &self.sources.pool;
        let mut stored_per_second = 0.0;
        let newest_seq = if let Some(last) = &self.last {
            let seconds = taken.duration_since(last.taken).as_secs_f64().max(0.001);
            let (newest, new) = db::killmails::stored_since(pool, last.newest_seq).await?;
            stored_per_second = new as f64 / seconds;
            for queue in &mut queues {
                let before = last.depths.iter().find(|(name, _)| *name == queue.name);
                if let (Some((_, Some(before))), Some(now)) = (before, queue.depth) {
                    queue.depth_change_per_second = Some((now - before) as f64 / seconds);
                }
            }
            newest
        } else {
            db::killmails::latest_seq(pool).await?
        };
        let dead_letters = queues
            .iter()
            .find(|q| q.role == QueueRole::DeadLetter)
            .and_then(|q| q.depth);
        self.last = Some(Sample {
            taken,
            newest_seq,
            depths: queues.iter().map(|q| (q.name.clone(), q.depth)).collect(),
        });
        Ok(WorkerStatus {
            at: now,
            processes,
            queues,
            dead_letters,
            rabbitmq_error,
            feeds,
            killmails_stored_per_second: stored_per_second,
        })
    }

    fn process(&self, beat: Beat, now: DateTime<Utc>) -> ProcessStatus {
        let time = |ms| Utc.timestamp_millis_opt(ms).single().unwrap_or(now);
        let last_seen = time(beat.beat_at);
        let silence = (now - last_seen).to_std().unwrap_or_default();
        ProcessStatus {
            id: beat.id,
            name: beat.name,
            host: beat.host,
            pid: beat.pid.into(),
            version: beat.version,
            started_at: time(beat.started_at),
            last_seen,
            alive: silence <= self.sources.interval * 3,
            dependencies: beat
                .dependencies
                .into_iter()
                .map(|(name, up)| DependencyState { name, up })
                .collect(),
        }
    }

    /// Each queue's depth and consumers. The topology is declared first (as every worker
    /// does; it is safe to repeat), so the queues exist and are asked with passive declares on
    /// one channel, each queue's depth null only if somebody deleted it meanwhile.
    async fn queues(&mut self) -> anyhow::Result<Vec<QueueStatus>> {
        let (connection, channel) =
            match self.rabbitmq.take().filter(|(_, c)| c.status().connected()) {
                Some(open) => open,
                None => {
                    let url = &self.sources.rabbitmq_url;
                    let opened = async {
                        let connection = crate::queue::connect(url, "server-status").await?;
                        let channel = connection.create_channel().await?;
                        self.sources.topology.declare(&channel).await?;
                        Ok::<_, lapin::Error>((connection, channel))
                    };
                    tokio::time::timeout(RABBITMQ_TIMEOUT, opened).await??
                }
            };
        let topology = &self.sources.topology;
        let names = std::iter::once((topology.queue.clone(), QueueRole::Work))
            .chain(
                (0..topology.retry_delays.len())
                    .map(|a| (topology.retry_queue(a), QueueRole::Retry)),
            )
            .chain(std::iter::once((
                topology.dead_letter_queue(),
                QueueRole::DeadLetter,
            )));
        let options = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let mut queues = Vec::new();
        for (name, role) in names {
            let declared = channel.queue_declare(&name, options, FieldTable::default());
            let queue = tokio::time::timeout(RABBITMQ_TIMEOUT, declared).await?.ok();
            queues.push(QueueStatus {
                name,
                role,
                depth: queue.as_ref().map(|q| q.message_count().into()),
                consumers: queue.as_ref().map(|q| q.consumer_count().into()),
                depth_change_per_second: None,
            });
        }
        if channel.status().connected() {
            self.rabbitmq = Some((connection, channel));
        }
        Ok(queues)
    }

    /// Sends `status` as a `worker-status` event, if this server holds the interval's lease.
    async fn send_event(&mut self, status: &WorkerStatus) {
        let Some(channel) = &self.sources.bus_channel else {
            return;
        };
        let (pool, redis) = (&self.sources.pool, &mut self.sources.redis);
        let lease_ms = (self.sources.interval.as_millis() as u64).max(1) * 9 / 10;
        let leased: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&self.sources.keys.lease)
            .arg(std::process::id())
            .arg("NX")
            .arg("PX")
            .arg(lease_ms.max(1))
            .query_async(redis)
            .await;
        if !matches!(leased, Ok(Some(_))) {
            return;
        }
        let data = serde_json::to_value(status).expect("a status always serializes");
        let sent = crate::bus::send_event(pool, redis, channel, EVENT_TYPE, data).await;
        if let Err(error) = sent {
            tracing::debug!(%error, "the worker-status event was not sent");
        }
    }
}
