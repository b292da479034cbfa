//! killreport's integration tests: real PostgreSQL, Redis and RabbitMQ (each test with its own
//! database, queues and channel), local fakes for the outside HTTP services, and the real
//! binaries spawned as processes where a test is about processes.

mod auth;
mod backfill;
mod db;
mod enrich;
mod fault_suite;
mod faults;
mod feed;
mod graphiql;
mod graphql;
mod hostile;
mod import;
mod ingest;
mod limits;
mod live;
mod pipeline;
mod repair;
mod robustness;
mod server;
mod slow_clients;
mod stats;
mod status;
mod store;
mod subscriptions;
mod support;
mod telemetry;
mod tls;
mod updates;
mod user_sync;
mod valuation;
mod zkb_api;
