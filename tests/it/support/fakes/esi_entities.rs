//! The fake ESI's entity routes: `POST /characters/affiliation/`, `GET /corporations/{id}/`,
//! `GET /alliances/{id}/`, `GET /alliances/{id}/corporations/` and `GET /universe/types/{id}/`,
//! answering like ESI (404 for an unknown id; affiliation refuses a whole call with one), with
//! scripted limit answers, and every request logged with the address it was sent to (which of
//! the test's fake listeners: two workers pointed at two of them are told apart).

use std::collections::{HashMap, VecDeque};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::esi::FakeEsi;

#[derive(Default)]
pub struct Entities {
    /// character id → (corporation id, alliance id).
    pub affiliations: HashMap<i64, (i64, Option<i64>)>,
    /// corporation id → its body.
    pub corporations: HashMap<i64, Value>,
    /// alliance id → its body and its corporations.
    pub alliances: HashMap<i64, (Value, Vec<i64>)>,
    /// type id → (name, group id).
    pub types: HashMap<i64, (String, i64)>,
    /// Answers to the next entity requests before any normal one: status and headers.
    pub answers: VecDeque<(u16, Vec<(String, String)>)>,
    /// (when, path, the `Host` it was sent to) of every entity request.
    pub requests: Vec<(Instant, String, String)>,
}

impl FakeEsi {
    pub fn add_corporation(
        &self,
        id: i64,
        name: &str,
        ticker: &str,
        members: i64,
        alliance: Option<i64>,
    ) {
        let mut body = json!({
            "name": name, "ticker": ticker, "member_count": members, "ceo_id": 90000001,
            "date_founded": "2010-05-01T12:00:00Z", "creator_id": 90000001, "tax_rate": 0.1,
        });
        if let Some(alliance) = alliance {
            body["alliance_id"] = json!(alliance);
        }
        self.state().entities.corporations.insert(id, body);
        self.add_name(id, "corporation", name);
    }

    pub fn add_alliance(&self, id: i64, name: &str, ticker: &str, corporations: &[i64]) {
        let body = json!({
            "name": name, "ticker": ticker, "executor_corporation_id": corporations.first(),
            "date_founded": "2012-01-01T00:00:00Z", "creator_id": 90000001,
            "creator_corporation_id": corporations.first(),
        });
        self.state()
            .entities
            .alliances
            .insert(id, (body, corporations.to_vec()));
        self.add_name(id, "alliance", name);
    }

    pub fn add_character(&self, id: i64, name: &str, corporation: i64, alliance: Option<i64>) {
        self.state()
            .entities
            .affiliations
            .insert(id, (corporation, alliance));
        self.add_name(id, "character", name);
    }

    pub fn add_type(&self, id: i64, name: &str, group: i64) {
        self.state()
            .entities
            .types
            .insert(id, (name.to_owned(), group));
    }

    /// Answers the next entity request with `status` and `headers` instead.
    pub fn answer_next_entity_request(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.state().entities.answers.push_back((status, headers));
    }

    pub fn entity_requests(&self) -> Vec<(Instant, String, String)> {
        self.state().entities.requests.clone()
    }
}

pub fn routes() -> Router<FakeEsi> {
    Router::new()
        .route("/characters/affiliation/", post(affiliation))
        .route("/corporations/{id}/", get(corporation))
        .route("/alliances/{id}/", get(alliance))
        .route("/alliances/{id}/corporations/", get(alliance_corporations))
        .route("/universe/types/{id}/", get(item_type))
}

/// Logs the request; a scripted answer when one is due.
fn scripted(esi: &FakeEsi, path: String, headers: &HeaderMap) -> Option<Response> {
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let mut state = esi.state();
    state.entities.requests.push((Instant::now(), path, host));
    let (status, headers) = state.entities.answers.pop_front()?;
    let status = StatusCode::from_u16(status).expect("status");
    let mut response = (status, Json(json!({"error": "fake limit"}))).into_response();
    for (name, value) in headers {
        response.headers_mut().insert(
            HeaderName::try_from(name).expect("a header name"),
            HeaderValue::try_from(value).expect("a header value"),
        );
    }
    Some(response)
}

fn not_found(what: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": format!("{what} not found")})),
    )
        .into_response()
}

/// Like ESI: 404 for the whole call when any id is not a character.
async fn affiliation(
    State(esi): State<FakeEsi>,
    headers: HeaderMap,
    Json(ids): Json<Vec<i64>>,
) -> Response {
    if let Some(answer) = scripted(
        &esi,
        format!("/characters/affiliation/ ({} ids)", ids.len()),
        &headers,
    ) {
        return answer;
    }
    let state = esi.state();
    let mut out = Vec::new();
    for id in ids {
        let Some((corporation, alliance)) = state.entities.affiliations.get(&id) else {
            return not_found("Character");
        };
        let mut one = json!({"character_id": id, "corporation_id": corporation});
        if let Some(alliance) = alliance {
            one["alliance_id"] = json!(alliance);
        }
        out.push(one);
    }
    Json(out).into_response()
}

async fn corporation(
    State(esi): State<FakeEsi>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Some(answer) = scripted(&esi, format!("/corporations/{id}/"), &headers) {
        return answer;
    }
    match esi.state().entities.corporations.get(&id) {
        Some(body) => Json(body.clone()).into_response(),
        None => not_found("Corporation"),
    }
}

async fn alliance(State(esi): State<FakeEsi>, headers: HeaderMap, Path(id): Path<i64>) -> Response {
    if let Some(answer) = scripted(&esi, format!("/alliances/{id}/"), &headers) {
        return answer;
    }
    match esi.state().entities.alliances.get(&id) {
        Some((body, _)) => Json(body.clone()).into_response(),
        None => not_found("Alliance"),
    }
}

async fn alliance_corporations(
    State(esi): State<FakeEsi>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Some(answer) = scripted(&esi, format!("/alliances/{id}/corporations/"), &headers) {
        return answer;
    }
    match esi.state().entities.alliances.get(&id) {
        Some((_, corporations)) => Json(corporations.clone()).into_response(),
        None => not_found("Alliance"),
    }
}

async fn item_type(
    State(esi): State<FakeEsi>,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Response {
    if let Some(answer) = scripted(&esi, format!("/universe/types/{id}/"), &headers) {
        return answer;
    }
    match esi.state().entities.types.get(&id) {
        Some((name, group)) => {
            Json(json!({"type_id": id, "name": name, "group_id": group, "published": true}))
                .into_response()
        }
        None => not_found("Type"),
    }
}
