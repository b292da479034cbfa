//! A fake zKillboard: its daily history at `/api/history/{yyyymmdd}.json` (killmail id → hash),
//! each day's body served as set (so it may be malformed), 404 for a day it has none of, and a
//! log of the days asked for.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::NaiveDate;

use super::{Fake, Served};
use crate::support::TestEnv;

#[derive(Default)]
pub struct ZkbState {
    /// `yyyymmdd` → the history's body.
    days: HashMap<String, Vec<u8>>,
    /// The days asked for, `yyyymmdd`, in order.
    pub requests: Vec<String>,
}

pub type FakeZkb = Fake<ZkbState>;

impl FakeZkb {
    /// Serves a history of `day` listing `killmails` (id and hash).
    pub fn add_history(&self, day: NaiveDate, killmails: &[(i64, String)]) {
        let history: serde_json::Map<String, serde_json::Value> = killmails
            .iter()
            .map(|(id, hash)| (id.to_string(), hash.as_str().into()))
            .collect();
        self.add_body(day, serde_json::to_vec(&history).expect("JSON"));
    }

    /// Serves `body` as the history of `day`, as it is.
    pub fn add_body(&self, day: NaiveDate, body: Vec<u8>) {
        self.state()
            .days
            .insert(day.format("%Y%m%d").to_string(), body);
    }

    /// Serves the fake and points the test's processes at it.
    pub async fn serve_for(&self, env: &mut TestEnv) -> Served {
        let served = self
            .serve_routes(axum::Router::new().route("/api/history/{file}", get(history)))
            .await;
        env.vars.insert("ZKB_BASE_URL".into(), served.url());
        served
    }
}

async fn history(State(fake): State<FakeZkb>, Path(file): Path<String>) -> Response {
    let mut state = fake.state();
    let day = file.strip_suffix(".json").unwrap_or(&file).to_owned();
    state.requests.push(day.clone());
    match state.days.get(&day) {
        Some(body) => ([(header::CONTENT_TYPE, "application/json")], body.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "no such day").into_response(),
    }
}
