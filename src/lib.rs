//! killreport: EVE Online killmails from zKillboard's live feed, EVE Ref archives and ESI,
//! through RabbitMQ into PostgreSQL, announced on Redis and served over GraphQL.
//!
//! How the modules depend on each other, binaries at the top; a module imports only those
//! below it:
//!
//! ```text
//! src/main.rs (server), src/bin/queue.rs, workers/*.rs   parse config, connect, call in
//! config    clap argument groups with DESIGN.md's defaults; starts nothing
//! http      axum: /graphql (graphiql, WebSocket, POST) beside health's routes    server
//!   updates   /updates (WebSocket, SSE) from the event log, the management API   server
//!   zkb_api   zKillboard's RedisQ, R2Z2 and websocket, served from the store
//!   ws        WebSocket sessions, shared executions, outboxes, both protocols, places by address
//!   graphql   schema, queries, killmailAdded, filters, loaders
//!   stats     statistics from per-day aggregates the store's triggers keep; the statistics event
//!   event_log every event with its cursor: killmails (live) and the log's others; retention
//!   live      one Redis subscription per process as hints; new killmails read from the store
//!   status    workerStatus: heartbeats of every process, queues, feeds, once per interval
//! auth      EVE SSO logins, sessions, /auth/*, who calls (Gate)                  server
//!   operations  admins' work over GraphQL: dead letters, repairs
//! backfill  EVE Ref's daily archives for a range of days → import               queue backfill
//! import    archives and files → store → announce                                queue import
//! enrich    entity.enrich jobs → ESI → characters, corporations, alliances, types  worker-enrich
//! ingest    killmail.ingest jobs (a queue::runner Handler) → store → announce  worker-killmails
//!   valuation  prices per day, estimates written with each killmail, revaluation; fittings
//! feed      the live feeds (R2Z2, RedisQ) → jobs                                 worker-redisq
//! user_sync pilots' own history from ESI with their SSO tokens → jobs    worker-user-killmails
//!   repair    zKillboard's daily history against the store → missing as jobs     queue repair
//!   announce  outbox, names and sweep: stored killmails → Redis
//!   filter, statics   killmail filters and the static universe they need
//!   zkb       zKillboard's wire formats (R2Z2 object, RedisQ package) → checked jobs
//!   health    /healthz, /readyz and /metrics for every process
//!     bus       events of any type: send_event logs one (db) and rings Redis, for every process
//!     db        PostgreSQL: migrate, killmails (and their events), the event log, outbox, names
//!     queue     RabbitMQ: topology, jobs, confirms, retries, dead letters, the job runner
//!     events    Redis pub/sub: the killmail-added event
//!     esi       ESI over HTTP, its error limit shared by processes through Redis
//!       killmail  the domain: ESI killmails, zkb, ids; no I/O
//!       backoff, shutdown, graphiql   delays and waiting for services; the signal; assets
//!       telemetry   metric names and the recorder a binary installs (served by health)
//! src/bin/loadgen/ (benchmark load, BENCHMARKS.md) is a client of all this, with its own modules.
//! ```

pub mod announce;
pub mod auth;
pub mod backfill;
pub mod backoff;
pub mod bus;
pub mod config;
pub mod db;
pub mod enrich;
pub mod esi;
pub mod event_log;
pub mod events;
pub mod feed;
pub mod filter;
pub mod graphiql;
pub mod graphql;
pub mod health;
pub mod http;
pub mod import;
pub mod ingest;
pub mod killmail;
pub mod live;
pub mod operations;
pub mod queue;
pub mod repair;
pub mod shutdown;
pub mod statics;
pub mod stats;
pub mod status;
pub mod telemetry;
pub mod updates;
pub mod user_sync;
pub mod valuation;
pub mod ws;
pub mod zkb;
pub mod zkb_api;
