//! A fake ESI: killmails by id and hash, `POST /universe/names/`, and failures and limit
//! headers on demand.

use std::collections::{HashMap, VecDeque};

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::time::Instant;

use super::{Fake, Served};
use crate::support::TestEnv;

#[derive(Default)]
pub struct EsiState {
    /// (killmail id, hash) → ESI body.
    pub killmails: HashMap<(i64, String), serde_json::Value>,
    /// id → (category, name).
    pub names: HashMap<i64, (String, String)>,
    /// Statuses to answer killmail requests with before answering normally, one per request.
    pub killmail_failures: VecDeque<u16>,
    /// The same for name requests.
    pub names_failures: VecDeque<u16>,
    /// Answers to killmail requests before the failures above, one per request: a status (200
    /// serves the killmail) with extra headers, like ESI's error-limit headers.
    pub killmail_answers: VecDeque<(u16, Vec<(String, String)>)>,
    /// Every request path served, in order.
    pub requests: Vec<String>,
    /// When each of `requests` arrived.
    pub request_times: Vec<Instant>,
    /// Corporations, alliances, affiliations and types: see `esi_entities`.
    pub entities: super::esi_entities::Entities,
    /// `GET /markets/prices/`'s answer (see `esi_market`); 404 while `None`.
    pub market_prices: Option<serde_json::Value>,
    /// The routes on a pilot's behalf (see `esi_user`).
    pub user: super::esi_user::UserEsi,
}

pub type FakeEsi = Fake<EsiState>;

impl FakeEsi {
    pub fn add_killmail(&self, body: serde_json::Value, hash: &str) {
        let id = body["killmail_id"].as_i64().expect("killmail_id");
        self.state().killmails.insert((id, hash.to_owned()), body);
    }

    pub fn add_name(&self, id: i64, category: &str, name: &str) {
        self.state()
            .names
            .insert(id, (category.to_owned(), name.to_owned()));
    }

    pub fn fail_next_killmail_requests(&self, statuses: &[u16]) {
        self.state().killmail_failures.extend(statuses);
    }

    pub fn fail_next_names_requests(&self, statuses: &[u16]) {
        self.state().names_failures.extend(statuses);
    }

    /// Answers the next killmail request with `status` (200: the killmail) and `headers`.
    pub fn answer_next_killmail_request(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.state().killmail_answers.push_back((status, headers));
    }

    /// Every request path served, with when it arrived.
    pub fn timed_requests(&self) -> Vec<(Instant, String)> {
        let state = self.state();
        state
            .request_times
            .iter()
            .copied()
            .zip(state.requests.iter().cloned())
            .collect()
    }

    pub fn requests(&self) -> Vec<String> {
        self.state().requests.clone()
    }

    pub async fn serve(&self) -> Served {
        self.serve_routes(
            axum::Router::new()
                .route("/killmails/{id}/{hash}/", get(killmail))
                .route("/universe/names/", post(names))
                .merge(super::esi_entities::routes())
                .route("/markets/prices/", get(super::esi_market::market_prices))
                .merge(super::esi_user::routes()),
        )
        .await
    }

    /// Serves the fake and points the test's processes at it.
    pub async fn serve_for(&self, env: &mut TestEnv) -> Served {
        let served = self.serve().await;
        env.vars.insert("ESI_BASE_URL".into(), served.url());
        served
    }
}

async fn killmail(State(esi): State<FakeEsi>, Path((id, hash)): Path<(i64, String)>) -> Response {
    let mut state = esi.state();
    state.requests.push(format!("/killmails/{id}/{hash}/"));
    state.request_times.push(Instant::now());
    let (status, headers) = match state.killmail_answers.pop_front() {
        Some((status, headers)) => (status, headers),
        None => (
            state.killmail_failures.pop_front().unwrap_or(200),
            Vec::new(),
        ),
    };
    let mut response = if status != 200 {
        let status = StatusCode::from_u16(status).expect("status");
        (status, Json(serde_json::json!({"error": "fake failure"}))).into_response()
    } else {
        match state.killmails.get(&(id, hash)) {
            Some(body) => Json(body.clone()).into_response(),
            None => (
                StatusCode::UNPROCESSABLE_ENTITY,
                Json(serde_json::json!({"error": "Invalid killmail_id and/or killmail_hash"})),
            )
                .into_response(),
        }
    };
    for (name, value) in headers {
        response.headers_mut().insert(
            HeaderName::try_from(name).expect("a header name"),
            HeaderValue::try_from(value).expect("a header value"),
        );
    }
    response
}

/// Like ESI: 404 for the whole call when any id is unknown.
async fn names(State(esi): State<FakeEsi>, Json(ids): Json<Vec<i64>>) -> Response {
    let mut state = esi.state();
    state
        .requests
        .push(format!("/universe/names/ ({} ids)", ids.len()));
    state.request_times.push(Instant::now());
    if ids.len() > 1000 {
        return (StatusCode::BAD_REQUEST, "too many ids").into_response();
    }
    if let Some(status) = state.names_failures.pop_front() {
        let status = StatusCode::from_u16(status).expect("status");
        return (status, Json(serde_json::json!({"error": "fake failure"}))).into_response();
    }
    let mut out = Vec::new();
    for id in ids {
        match state.names.get(&id) {
            Some((category, name)) => {
                out.push(serde_json::json!({"id": id, "category": category, "name": name}))
            }
            None => {
                return (
                    StatusCode::NOT_FOUND,
                    Json(
                        serde_json::json!({"error": "Ensure all IDs are valid before resolving."}),
                    ),
                )
                    .into_response();
            }
        }
    }
    Json(out).into_response()
}
