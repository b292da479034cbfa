//! killreport: EVE Online killmails from zKillboard's live feed, EVE Ref archives and ESI,
//! through RabbitMQ into PostgreSQL, announced on Redis and served over GraphQL.
//!
//! How the modules depend on each other, binaries at the top:
//!
//! ```text
//! src/main.rs (server), src/bin/queue.rs, workers/*.rs             parse config, connect, call in
//!   feed      the live feeds (R2Z2, RedisQ) → jobs                 worker-redisq
//!   ingest    jobs → store → announce (outbox, sweep)               worker-killmails
//!   import    archives and files → store → announce                 queue import
//!   http      axum: /graphql (graphql, graphiql), /healthz, /readyz server
//!     graphql   schema, queries, killmailAdded, filters, loaders
//!     live      one Redis subscription per process, in order, fanned out
//!     db      PostgreSQL: connect + migrate, killmails, announcements, names, cursors, statics
//!     queue   RabbitMQ: topology, jobs, confirmed publishing, retries, dead letters
//!     events  Redis pub/sub: the killmail-added event
//!     esi     ESI over HTTP, its error limit shared by a process
//!     zkb     zKillboard's wire formats (R2Z2 object, RedisQ package) → checked jobs
//!       killmail  the domain: ESI killmails, zkb, ids; no I/O
//! config: clap argument groups with DESIGN.md's defaults; shutdown: the signal token;
//! health: /healthz and /readyz for every process.
//! src/bin/loadgen/ (benchmark load, BENCHMARKS.md) is a client of all this, with its own modules.
//! ```

pub mod announce;
pub mod backoff;
pub mod config;
pub mod db;
pub mod esi;
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
pub mod queue;
pub mod shutdown;
pub mod statics;
pub mod ws;
pub mod zkb;
