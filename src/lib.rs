//! killreport: EVE Online killmails from zKillboard's live feed, EVE Ref archives and ESI,
//! through RabbitMQ into PostgreSQL, announced on Redis and served over GraphQL.
//!
//! How the modules depend on each other, binaries at the top:
//!
//! ```text
//! src/main.rs (server), src/bin/queue.rs, workers/*.rs   parse config, connect, call in here
//!   feed      the live feeds (R2Z2, RedisQ) → jobs          worker-redisq
//!   ingest    jobs → store → announce                        worker-killmails
//!   import    archives and files → store → announce          queue import
//!   http      the axum router: /graphql, /healthz, /readyz   server
//!     db      PostgreSQL: connect + migrate, killmails, names, cursors, static data
//!     queue   RabbitMQ: topology, jobs, confirmed publishing, retries and dead letters
//!     events  Redis pub/sub: the killmail-added event
//!     esi     ESI over HTTP
//!       killmail  the domain: ESI killmails, zkb, ids; no I/O
//! config: clap argument groups with DESIGN.md's defaults, shared by the binaries.
//! ```

pub mod config;
pub mod db;
pub mod esi;
pub mod events;
pub mod feed;
pub mod graphiql;
pub mod graphql;
pub mod http;
pub mod import;
pub mod ingest;
pub mod killmail;
pub mod live;
pub mod loadgen;
pub mod queue;
pub mod shutdown;
