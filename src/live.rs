//! The live feed inside a server process: one Redis subscription per process, each event decoded
//! once, put in ingest order with any gap filled from the store, and fanned out in memory to
//! every subscriber. A subscriber that resumes (`after`) or falls behind catches up from the
//! store, so what it receives has no gap and no duplicate.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use sqlx::PgPool;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::events::KillmailAdded;
use crate::killmail::Seq;

/// How many events a subscriber may fall behind before it catches up from the store instead.
const BUFFER: usize = 4096;
/// Killmails read from the store per page when catching up.
const PAGE: i64 = 200;

/// The process's single source of live events; clone it freely.
#[derive(Clone)]
pub struct Hub {
    pool: PgPool,
    sender: broadcast::Sender<Arc<KillmailAdded>>,
    last: Arc<AtomicI64>,
}

impl Hub {
    /// Starts listening on `channel`; reconnects by itself, catching up from the store on each
    /// reconnect, until `shutdown` is cancelled.
    pub async fn start(
        pool: PgPool,
        redis_url: &str,
        channel: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let (sender, _) = broadcast::channel(BUFFER);
        let hub = Self {
            pool,
            sender,
            last: Arc::new(AtomicI64::new(0)),
        };
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        // Subscribed first, then read: every later commit reaches the hub one way or the other.
        let latest = db::killmails::latest_seq(&hub.pool).await?;
        hub.last.store(latest.0, Ordering::SeqCst);

        let task_hub = hub.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let mut pubsub = Some(pubsub);
            let mut backoff = Duration::from_millis(100);
            loop {
                let connection = match pubsub.take() {
                    Some(connection) => Ok(connection),
                    None => Self::resubscribe(&client, &channel).await,
                };
                match connection {
                    Ok(connection) => {
                        backoff = Duration::from_millis(100);
                        if let Err(error) = task_hub.catch_up(None).await {
                            tracing::error!(
                                error = format!("{error:#}"),
                                "catching up from the store failed"
                            );
                        }
                        let mut messages = connection.into_on_message();
                        loop {
                            tokio::select! {
                                () = shutdown.cancelled() => return,
                                message = messages.next() => match message {
                                    Some(message) => task_hub.receive(message.get_payload_bytes()).await,
                                    None => break,
                                },
                            }
                        }
                        tracing::warn!("Redis subscription lost; reconnecting");
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "Redis subscription failed");
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Ok(hub)
    }

    async fn resubscribe(
        client: &redis::Client,
        channel: &str,
    ) -> redis::RedisResult<redis::aio::PubSub> {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(channel).await?;
        Ok(pubsub)
    }

    /// The newest sequence the hub has passed on.
    pub fn last(&self) -> Seq {
        Seq(self.last.load(Ordering::SeqCst))
    }

    async fn receive(&self, payload: &[u8]) {
        let event: KillmailAdded = match serde_json::from_slice(payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "ignoring a malformed killmail event");
                return;
            }
        };
        let last = self.last();
        if event.seq <= last {
            return;
        }
        if event.seq.0 > last.0 + 1
            && let Err(error) = self.catch_up(Some(event.seq)).await
        {
            tracing::error!(
                error = format!("{error:#}"),
                "filling a gap from the store failed"
            );
        }
        if event.seq > self.last() {
            self.send(Arc::new(event));
        }
    }

    /// Passes on, in order, what the store holds after the last sequence sent and before
    /// `until` (everything, when `None`).
    async fn catch_up(&self, until: Option<Seq>) -> anyhow::Result<()> {
        loop {
            let page = replay(&self.pool, self.last(), PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for event in page {
                if until.is_some_and(|until| event.seq >= until) {
                    return Ok(());
                }
                self.send(Arc::new(event));
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn send(&self, event: Arc<KillmailAdded>) {
        self.last.store(event.seq.0, Ordering::SeqCst);
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(event);
    }

    /// Every event after `after` (stored ones first, then live), or only live ones from now
    /// when `after` is `None`; in ingest order, none twice.
    pub fn subscribe(
        &self,
        after: Option<Seq>,
    ) -> impl Stream<Item = Arc<KillmailAdded>> + Send + 'static {
        struct State {
            hub: Hub,
            receiver: broadcast::Receiver<Arc<KillmailAdded>>,
            last: Seq,
            replaying: bool,
            buffer: VecDeque<Arc<KillmailAdded>>,
        }
        let state = State {
            hub: self.clone(),
            last: after.unwrap_or_else(|| self.last()),
            receiver: self.sender.subscribe(),
            replaying: after.is_some(),
            buffer: VecDeque::new(),
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.buffer.pop_front() {
                    return Some((event, state));
                }
                if state.replaying {
                    match replay(&state.hub.pool, state.last, PAGE).await {
                        Ok(page) if !page.is_empty() => {
                            state.last = page[page.len() - 1].seq;
                            state.buffer.extend(page.into_iter().map(Arc::new));
                        }
                        Ok(_) => state.replaying = false,
                        Err(error) => {
                            tracing::error!(
                                error = format!("{error:#}"),
                                "replay from the store failed"
                            );
                            return None;
                        }
                    }
                    continue;
                }
                match state.receiver.recv().await {
                    Ok(event) if event.seq > state.last => {
                        state.last = event.seq;
                        return Some((event, state));
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        tracing::debug!(
                            missed,
                            "subscriber fell behind; catching up from the store"
                        );
                        state.replaying = true;
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }
}

/// Stored killmails after `after` as events, with the names the store has.
pub async fn replay(pool: &PgPool, after: Seq, limit: i64) -> anyhow::Result<Vec<KillmailAdded>> {
    let mut connection = pool.acquire().await?;
    let stored = db::killmails::since(&mut connection, after, limit).await?;
    Ok(crate::ingest::events_for_stored(&mut connection, stored).await?)
}
