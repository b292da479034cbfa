//! Prometheus metrics: the names every process records under (all `killreport_…`, counters
//! ending `_total`, times in `_seconds`), and the recorder a binary installs for its process.
//! The library only records (`metrics::counter!` and the like), which costs next to nothing and
//! goes nowhere while no recorder is installed: tests run many servers in one process without
//! sharing figures, and those that read `/metrics` spawn the real binaries, one recorder each.
//! `health` serves what the recorder holds on `/metrics`.

use std::time::Duration;

use anyhow::Context;
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Killmails new to the store (`queue import` and `worker-killmails`).
pub const KILLMAILS_STORED: &str = "killreport_killmails_stored_total";
/// From a killmail's own time to its commit.
pub const STORE_LAG: &str = "killreport_killmail_store_lag_seconds";
/// From a commit to its event on Redis, for those announced at once (not by the sweep).
pub const ANNOUNCE_LAG: &str = "killreport_killmail_announce_lag_seconds";
/// Jobs settled, by `queue` and `outcome` (`done`, `retried`, `dead_lettered`).
pub const JOBS: &str = "killreport_jobs_total";
/// The last R2Z2 sequence whose job RabbitMQ confirmed, by `feed`.
pub const FEED_CURSOR: &str = "killreport_feed_cursor";
/// Requests to a live feed, by `feed` and `outcome` (`ok`, `not_found`, or `retry`: refused
/// or failed, asked again after a delay).
pub const FEED_REQUEST: &str = "killreport_feed_request_duration_seconds";
/// Requests to ESI, by `endpoint` (`killmail`, `names`) and `status` (the HTTP status, or
/// `failed` when none came, or `paused` when not sent for ESI's limits).
pub const ESI_REQUESTS: &str = "killreport_esi_requests_total";
/// ESI's `X-ESI-Error-Limit-Remain` as last answered.
pub const ESI_ERROR_LIMIT_REMAIN: &str = "killreport_esi_error_limit_remain";
/// WebSocket connections open, by `protocol`.
pub const WS_CONNECTIONS: &str = "killreport_ws_connections";
/// WebSocket connections accepted since start, by `protocol`.
pub const WS_CONNECTIONS_OPENED: &str = "killreport_ws_connections_opened_total";
/// Subscriptions running, by `protocol`.
pub const WS_SUBSCRIPTIONS: &str = "killreport_ws_subscriptions";
/// Subscription executions running (each shared by every subscriber of its document).
pub const WS_EXECUTIONS: &str = "killreport_ws_executions";
/// Subscription results written to sockets, by `protocol`.
pub const WS_DELIVERIES: &str = "killreport_ws_deliveries_total";
/// From an event's result being ready to its write to a socket.
pub const WS_DELIVERY: &str = "killreport_ws_delivery_seconds";
/// Clients closed with 1008 for not reading their messages.
pub const WS_CLOSED_TOO_SLOW: &str = "killreport_ws_closed_too_slow_total";
/// HTTP requests answered, by `route` (the matched pattern), `method` and `status`.
pub const HTTP_REQUESTS: &str = "killreport_http_requests_total";
/// Time to answer an HTTP request, by `route` and `method`.
pub const HTTP_REQUEST: &str = "killreport_http_request_duration_seconds";
/// Connections of the PostgreSQL pool, by `state` (`idle`, `in_use`).
pub const DB_POOL_CONNECTIONS: &str = "killreport_db_pool_connections";
/// The most connections the pool may open.
pub const DB_POOL_MAX: &str = "killreport_db_pool_max_connections";
/// 1 while a dependency (`dependency`: postgres, redis, rabbitmq) answers, else 0; checked at
/// each scrape and each `/readyz`.
pub const DEPENDENCY_UP: &str = "killreport_dependency_up";

/// Buckets of quick things: requests, writes.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Buckets of a killmail's way from the fight to the store: seconds to a day.
const LAG_BUCKETS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0, 86400.0,
];
/// How often the recorder folds its histograms' recent samples in.
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs this process's recorder and returns the handle `/metrics` renders, unless metrics
/// are off (`METRICS=false`: nothing recorded, no `/metrics`). For binaries: once per process,
/// inside its Tokio runtime.
pub fn install(enabled: bool) -> anyhow::Result<Option<PrometheusHandle>> {
    if !enabled {
        return Ok(None);
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(STORE_LAG.to_owned()), LAG_BUCKETS)?
        .install_recorder()
        .context("installing the metrics recorder")?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP);
        loop {
            ticks.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(Some(handle))
}

fn describe() {
    describe_counter!(KILLMAILS_STORED, "Killmails new to the store");
    describe_histogram!(
        STORE_LAG,
        Unit::Seconds,
        "From a killmail's time to its commit"
    );
    describe_histogram!(
        ANNOUNCE_LAG,
        Unit::Seconds,
        "From a commit to its event on Redis (announced at once)"
    );
    describe_counter!(JOBS, "Jobs settled, by queue and outcome");
    describe_gauge!(
        FEED_CURSOR,
        "The last feed sequence whose job was confirmed"
    );
    describe_histogram!(FEED_REQUEST, Unit::Seconds, "Requests to a live feed");
    describe_counter!(ESI_REQUESTS, "Requests to ESI, by endpoint and status");
    describe_gauge!(
        ESI_ERROR_LIMIT_REMAIN,
        "ESI's error limit left in its window"
    );
    describe_gauge!(WS_CONNECTIONS, "WebSocket connections open");
    describe_counter!(WS_CONNECTIONS_OPENED, "WebSocket connections accepted");
    describe_gauge!(WS_SUBSCRIPTIONS, "Subscriptions running");
    describe_gauge!(WS_EXECUTIONS, "Subscription executions running (shared)");
    describe_counter!(WS_DELIVERIES, "Subscription results written to sockets");
    describe_histogram!(
        WS_DELIVERY,
        Unit::Seconds,
        "From an event's result to its write to a socket"
    );
    describe_counter!(WS_CLOSED_TOO_SLOW, "Clients closed for not reading (1008)");
    describe_counter!(HTTP_REQUESTS, "HTTP requests, by route, method and status");
    describe_histogram!(
        HTTP_REQUEST,
        Unit::Seconds,
        "Time to answer an HTTP request"
    );
    describe_gauge!(DB_POOL_CONNECTIONS, "PostgreSQL pool connections, by state");
    describe_gauge!(DB_POOL_MAX, "The most connections the pool may open");
    describe_gauge!(DEPENDENCY_UP, "1 while a dependency answers, else 0");
}
