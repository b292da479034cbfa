//! The live events inside a server process: one Redis subscription per process, whose messages
//! are hints that the store holds something new; what is new is read from the store once, in
//! ingest order, and routed in memory to the subscriptions whose filter it passes. Redis is not
//! believed blindly: a forged or corrupt message delivers nothing, and a subscription gone
//! silent is noticed within seconds (see [`Hub::listen`]). Subscriptions are indexed by the ids their filter
//! names (systems, entities, ships, regions), so an event is checked only against filters it
//! could pass, however many there are. A subscription that resumes (`after`) or falls behind
//! catches up from the store, so what it receives has no gap and no duplicate.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::events::KillmailAdded;
use crate::filter::{Filter, Key, event_keys};
use crate::killmail::Seq;
use crate::statics::Statics;

/// How many events a subscription may fall behind before it catches up from the store instead.
const BUFFER: usize = 1024;
/// Killmails read from the store per page when catching up.
const PAGE: i64 = 200;

/// The process's single source of live events; clone it freely.
#[derive(Clone)]
pub struct Hub {
    pool: PgPool,
    statics: Arc<Statics>,
    routes: Arc<Mutex<Routes>>,
    last: Arc<AtomicI64>,
    /// Whether the last catch-up from the store failed (logged once per outage).
    store_failing: Arc<AtomicBool>,
}

/// Every live subscription's filter and inbox, indexed by the keys of its filter.
#[derive(Default)]
struct Routes {
    next: u64,
    entries: HashMap<u64, Route>,
    by_key: HashMap<Key, Vec<u64>>,
    /// Routes whose filter names no id: every event is checked against them.
    everywhere: Vec<u64>,
}

struct Route {
    filter: Arc<Filter>,
    keys: Vec<Key>,
    inbox: mpsc::Sender<Arc<KillmailAdded>>,
    /// Set when an event did not fit in the inbox: the subscription must catch up from the
    /// store.
    lagged: Arc<AtomicBool>,
}

impl Routes {
    fn insert(&mut self, route: Route) -> u64 {
        let id = self.next;
        self.next += 1;
        if route.keys.is_empty() {
            self.everywhere.push(id);
        }
        for key in &route.keys {
            self.by_key.entry(*key).or_default().push(id);
        }
        self.entries.insert(id, route);
        id
    }

    fn remove(&mut self, id: u64) {
        let Some(route) = self.entries.remove(&id) else {
            return;
        };
        if route.keys.is_empty() {
            self.everywhere.retain(|other| *other != id);
        }
        for key in &route.keys {
            if let Some(ids) = self.by_key.get_mut(key) {
                ids.retain(|other| *other != id);
                if ids.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
    }

    /// Hands `event` to every route whose filter it passes, each once.
    fn dispatch(&self, event: &Arc<KillmailAdded>, statics: &Statics) {
        let mut candidates = self.everywhere.clone();
        if !self.by_key.is_empty() {
            for key in event_keys(&event.killmail, statics) {
                if let Some(ids) = self.by_key.get(&key) {
                    candidates.extend_from_slice(ids);
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
        }
        for id in candidates {
            let Some(route) = self.entries.get(&id) else {
                continue;
            };
            if !route
                .filter
                .matches(&event.killmail, event.zkb.as_ref(), statics)
            {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = route.inbox.try_send(Arc::clone(event))
            {
                route.lagged.store(true, Ordering::SeqCst);
            }
        }
    }
}

/// Removes its route when the subscription's stream is dropped.
struct RouteGuard {
    routes: Arc<Mutex<Routes>>,
    id: u64,
}

impl Drop for RouteGuard {
    fn drop(&mut self) {
        lock(&self.routes).remove(self.id);
    }
}

/// The route table's lock; a panic elsewhere while holding it leaves the table consistent
/// (every change is one insert or one remove), so a poisoned lock is taken as it is.
fn lock(routes: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    routes.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// Starts listening on `channel`; reconnects by itself, catching up from the store on each
    /// reconnect, until `shutdown` is cancelled. Every `check_every` the subscription is
    /// pinged and the store's newest sequence compared with the hub's (see [`Hub::listen`]).
    pub async fn start(
        pool: PgPool,
        statics: Arc<Statics>,
        redis_url: &str,
        channel: &str,
        check_every: Duration,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Self> {
        let client = redis::Client::open(redis_url)?;
        let hub = Self {
            pool,
            statics,
            routes: Arc::default(),
            last: Arc::new(AtomicI64::new(0)),
            store_failing: Arc::default(),
        };
        let pubsub = Self::subscribe_within(&client, channel, check_every).await?;
        // Subscribed first, then read: every later commit reaches the hub one way or the other.
        let latest = db::killmails::latest_seq(&hub.pool).await?;
        hub.last.store(latest.0, Ordering::SeqCst);

        let task_hub = hub.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            let mut pubsub = Some(pubsub);
            let mut backoff = Duration::from_millis(100);
            let mut outage = false;
            loop {
                let connection = match pubsub.take() {
                    Some(connection) => Ok(connection),
                    None => Self::subscribe_within(&client, &channel, check_every).await,
                };
                match connection {
                    Ok(connection) => {
                        if std::mem::take(&mut outage) {
                            tracing::info!("Redis subscription back; catching up from the store");
                        }
                        backoff = Duration::from_millis(100);
                        task_hub.catch_up_logged().await;
                        let (mut sink, mut messages) = connection.split();
                        let listened = task_hub.listen(&mut sink, &mut messages, check_every);
                        let lost = tokio::select! {
                            () = shutdown.cancelled() => return task_hub.close(),
                            lost = listened => lost,
                        };
                        tracing::warn!(why = %lost, "Redis subscription lost; subscribing again");
                        outage = true;
                    }
                    // One line per outage; the retries are for debugging.
                    Err(error) if outage => {
                        tracing::debug!(%error, retry_in = ?backoff, "Redis subscription failed");
                    }
                    Err(error) => {
                        tracing::warn!(%error, retry_in = ?backoff, "Redis subscription failed; retrying");
                        outage = true;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return task_hub.close(),
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        });
        Ok(hub)
    }

    /// A new subscription to `channel`, or an error when Redis does not give one within
    /// `patience` (a connection that opens but never answers would otherwise hang here).
    async fn subscribe_within(
        client: &redis::Client,
        channel: &str,
        patience: Duration,
    ) -> redis::RedisResult<redis::aio::PubSub> {
        let subscribing = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok(pubsub)
        };
        tokio::time::timeout(patience.max(Duration::from_secs(1)), subscribing)
            .await
            .unwrap_or_else(|_| {
                Err(redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "no answer while subscribing",
                )))
            })
    }

    /// Follows one subscription until it is lost; returns why. A message on the channel is
    /// only a hint that the store holds something new: what is passed on is read from the
    /// store, so a forged or corrupt message (a `seq` far ahead, a killmail or names the store
    /// does not hold) delivers nothing and holds nothing back. Every `every`, the
    /// subscription must answer a PING within `every`, and the store must not still hold
    /// sequences it held a check earlier that the channel never announced: either means the
    /// subscription went silent (half-open, or dropped on the way), and the hub catches up
    /// and subscribes again.
    async fn listen(
        &self,
        sink: &mut redis::aio::PubSubSink,
        messages: &mut redis::aio::PubSubStream,
        every: Duration,
    ) -> String {
        let mut checks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The store's newest sequence at the last check, when the hub had not passed it on.
        let mut ahead: Option<Seq> = None;
        loop {
            tokio::select! {
                message = messages.next() => {
                    let Some(message) = message else {
                        return "the connection closed".to_owned();
                    };
                    let mut hinted = hint(message.get_payload_bytes());
                    // A burst of messages is one read of the store.
                    while let Some(Some(more)) = messages.next().now_or_never() {
                        hinted = hinted.max(hint(more.get_payload_bytes()));
                    }
                    if hinted > self.last() {
                        self.catch_up_logged().await;
                    }
                }
                _ = checks.tick() => {
                    match tokio::time::timeout(every, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(error)) => return format!("PING failed: {error}"),
                        Err(_) => return format!("PING unanswered for {every:?}"),
                    }
                    match db::killmails::latest_seq(&self.pool).await {
                        Ok(newest) => {
                            let missed = ahead.filter(|ahead| self.last() < *ahead);
                            ahead = (newest > self.last()).then_some(newest);
                            if let Some(missed) = missed {
                                return format!(
                                    "the store held sequence {} for {every:?} and the channel never announced it",
                                    missed.0
                                );
                            }
                        }
                        Err(error) => tracing::debug!(%error, "checking the store's newest sequence failed"),
                    }
                }
            }
        }
    }

    /// The newest sequence the hub has passed on.
    pub fn last(&self) -> Seq {
        Seq(self.last.load(Ordering::SeqCst))
    }

    /// [`Hub::catch_up`], its failure logged: nothing is lost, since the next hint or check
    /// catches up from the same place.
    async fn catch_up_logged(&self) {
        match self.catch_up().await {
            Ok(()) if self.store_failing.swap(false, Ordering::SeqCst) => {
                tracing::info!("caught up from the store again");
            }
            Ok(()) => {}
            Err(error) if self.store_failing.swap(true, Ordering::SeqCst) => {
                tracing::debug!(error = format!("{error:#}"), "catching up still fails");
            }
            Err(error) => tracing::error!(
                error = format!("{error:#}"),
                "catching up from the store failed; trying again at the next event or check"
            ),
        }
    }

    /// Passes on, in order, what the store holds after the last sequence sent.
    async fn catch_up(&self) -> anyhow::Result<()> {
        loop {
            let page = replay(&self.pool, self.last(), PAGE).await?;
            let full = page.len() as i64 == PAGE;
            for event in page {
                self.send(Arc::new(event));
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn send(&self, event: Arc<KillmailAdded>) {
        // Under the lock, so a new subscription sees either this event or its sequence as
        // already passed on, never neither.
        let routes = lock(&self.routes);
        self.last.store(event.seq.0, Ordering::SeqCst);
        routes.dispatch(&event, &self.statics);
    }

    /// Ends every subscription: their inboxes close once drained.
    fn close(&self) {
        let mut routes = lock(&self.routes);
        routes.entries.clear();
        routes.by_key.clear();
        routes.everywhere.clear();
    }

    /// Every event after `after` that passes `filter` (stored ones first, then live), or only
    /// live ones from now when `after` is `None`; in ingest order, none twice. The subscription
    /// is registered at once, so nothing announced after this call is missed. When a replay
    /// from the store fails, its error is the last item: the subscriber may resume later.
    pub fn subscribe(
        &self,
        filter: Arc<Filter>,
        after: Option<Seq>,
    ) -> impl Stream<Item = anyhow::Result<Arc<KillmailAdded>>> + Send + 'static {
        struct State {
            hub: Hub,
            filter: Arc<Filter>,
            inbox: mpsc::Receiver<Arc<KillmailAdded>>,
            lagged: Arc<AtomicBool>,
            _route: RouteGuard,
            last: Seq,
            replaying: bool,
            buffer: VecDeque<Arc<KillmailAdded>>,
            failed: bool,
        }
        let (sender, inbox) = mpsc::channel(BUFFER);
        let lagged = Arc::new(AtomicBool::new(false));
        // The last sequence is read under the routes' lock: an event is either sent before
        // it (and counted in `last`) or routed to this subscription after it.
        let (id, last) = {
            let mut routes = lock(&self.routes);
            let id = routes.insert(Route {
                keys: filter.index_keys(),
                filter: Arc::clone(&filter),
                inbox: sender,
                lagged: Arc::clone(&lagged),
            });
            (id, self.last())
        };
        let state = State {
            hub: self.clone(),
            filter,
            inbox,
            lagged,
            _route: RouteGuard {
                routes: Arc::clone(&self.routes),
                id,
            },
            last: after.unwrap_or(last),
            replaying: after.is_some(),
            buffer: VecDeque::new(),
            failed: false,
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.buffer.pop_front() {
                    return Some((Ok(event), state));
                }
                if state.failed {
                    return None;
                }
                if state.replaying {
                    let page = state.hub.page_after(&mut state.last, &state.filter, None);
                    match page.await {
                        Ok(Some(page)) => state.buffer.extend(page),
                        Ok(None) => state.replaying = false,
                        Err(error) => {
                            state.failed = true;
                            return Some((Err(error), state));
                        }
                    }
                    continue;
                }
                let event = state.inbox.recv().await?;
                if state.lagged.swap(false, Ordering::SeqCst) {
                    tracing::debug!("subscription fell behind; catching up from the store");
                    state.replaying = true;
                    continue;
                }
                if event.seq > state.last {
                    state.last = event.seq;
                    return Some((Ok(event), state));
                }
            }
        })
    }

    /// The stored events after `after` and up to `until` that pass `filter`, in ingest order;
    /// then the stream ends. A store error is its last item. How a resuming subscriber catches
    /// up before it joins a shared execution (`ws::executions`).
    pub fn history(
        &self,
        filter: Arc<Filter>,
        after: Seq,
        until: Seq,
    ) -> impl Stream<Item = anyhow::Result<Arc<KillmailAdded>>> + Send + 'static {
        struct State {
            hub: Hub,
            filter: Arc<Filter>,
            last: Seq,
            until: Seq,
            buffer: VecDeque<Arc<KillmailAdded>>,
        }
        let state = State {
            hub: self.clone(),
            filter,
            last: after,
            until,
            buffer: VecDeque::new(),
        };
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.buffer.pop_front() {
                    return Some((Ok(event), state));
                }
                if state.last >= state.until {
                    return None;
                }
                let until = Some(state.until);
                match state
                    .hub
                    .page_after(&mut state.last, &state.filter, until)
                    .await
                {
                    Ok(Some(page)) => state.buffer.extend(page),
                    Ok(None) => return None,
                    Err(error) => {
                        // Ends the stream after this item.
                        state.until = state.last;
                        return Some((Err(error), state));
                    }
                }
            }
        })
    }

    /// The next page of stored events after `*last`, moving `*last` past it, with those that
    /// pass `filter` (up to `until` when given); `None` when the store has nothing after it.
    async fn page_after(
        &self,
        last: &mut Seq,
        filter: &Filter,
        until: Option<Seq>,
    ) -> anyhow::Result<Option<Vec<Arc<KillmailAdded>>>> {
        let page = replay(&self.pool, *last, PAGE).await?;
        let Some(newest) = page.last() else {
            return Ok(None);
        };
        *last = newest.seq;
        let passing = page
            .into_iter()
            .filter(|e| {
                until.is_none_or(|until| e.seq <= until)
                    && filter.matches(&e.killmail, e.zkb.as_ref(), &self.statics)
            })
            .map(Arc::new)
            .collect();
        Ok(Some(passing))
    }
}

/// The sequence a message on the channel announces; the highest there is when it names none,
/// since any message is still a hint that the store may hold something new.
fn hint(payload: &[u8]) -> Seq {
    #[derive(serde::Deserialize)]
    struct Hint {
        seq: Seq,
    }
    match serde_json::from_slice::<Hint>(payload) {
        Ok(hint) => hint.seq,
        Err(error) => {
            tracing::warn!(%error, "a message on the killmail channel that is not an event");
            Seq(i64::MAX)
        }
    }
}

/// Stored killmails after `after` as events, with the names the store has.
pub async fn replay(pool: &PgPool, after: Seq, limit: i64) -> anyhow::Result<Vec<KillmailAdded>> {
    let mut connection = pool.acquire().await?;
    let stored = db::killmails::since(&mut connection, after, limit).await?;
    Ok(db::names::events(&mut *connection, stored).await?)
}
