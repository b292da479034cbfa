//! The fake ESI's routes on a pilot's behalf, as ESI serves them: recent killmails of a
//! character and of a corporation (newest first, paged with `page=`, `X-Pages`), and a
//! character's roles. Each wants `Authorization: Bearer` with an access token of the fake SSO
//! (a JWT: its subject the character, not expired, holding the route's scope), read as ESI
//! does, without a signature check (the fake SSO's keys are the SSO's business); a missing or
//! expired token gets 401, a missing scope or role 403.

use std::collections::{HashMap, VecDeque};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use tokio::time::Instant;

use super::esi::FakeEsi;

/// ESI's page size for recent killmails.
const PAGE_SIZE: usize = 50;

#[derive(Default)]
pub struct UserEsi {
    /// Character id → their killmails (id, hash), newest first.
    pub character_killmails: HashMap<i64, Vec<(i64, String)>>,
    /// Corporation id → its killmails (id, hash), newest first.
    pub corporation_killmails: HashMap<i64, Vec<(i64, String)>>,
    /// Character id → (corporation id, roles there).
    pub members: HashMap<i64, (i64, Vec<String>)>,
    /// Entries per page; 0: ESI's 50.
    pub page_size: usize,
    /// Answers to these routes before answering normally, one per request: a status with
    /// extra headers (a 420 or 429 with ESI's limit headers).
    pub answers: VecDeque<(u16, Vec<(String, String)>)>,
}

impl FakeEsi {
    /// Lists `killmails` (id, hash), newest first, as `character_id`'s recent killmails.
    pub fn set_character_killmails(&self, character_id: i64, killmails: Vec<(i64, String)>) {
        self.state()
            .user
            .character_killmails
            .insert(character_id, killmails);
    }

    pub fn set_corporation_killmails(&self, corporation_id: i64, killmails: Vec<(i64, String)>) {
        self.state()
            .user
            .corporation_killmails
            .insert(corporation_id, killmails);
    }

    /// Makes `character_id` a member of `corporation_id` with `roles` (e.g. `Director`).
    pub fn set_member(&self, character_id: i64, corporation_id: i64, roles: &[&str]) {
        let roles = roles.iter().map(|r| (*r).to_owned()).collect();
        self.state()
            .user
            .members
            .insert(character_id, (corporation_id, roles));
    }

    pub fn set_page_size(&self, size: usize) {
        self.state().user.page_size = size;
    }

    /// Answers the next request to a pilot's route with `status` and `headers`.
    pub fn answer_next_user_request(&self, status: u16, headers: &[(&str, &str)]) {
        let headers = headers
            .iter()
            .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
            .collect();
        self.state().user.answers.push_back((status, headers));
    }
}

/// The routes, merged into the fake ESI's.
pub fn routes() -> Router<FakeEsi> {
    Router::new()
        .route(
            "/characters/{id}/killmails/recent/",
            get(character_killmails),
        )
        .route(
            "/corporations/{id}/killmails/recent/",
            get(corporation_killmails),
        )
        .route("/characters/{id}/roles/", get(roles))
        .route("/characters/{id}/", get(character))
}

#[derive(serde::Deserialize)]
struct Page {
    page: Option<usize>,
}

async fn character_killmails(
    State(esi): State<FakeEsi>,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let path = format!(
        "/characters/{id}/killmails/recent/?page={}",
        page.page.unwrap_or(1)
    );
    serve(
        &esi,
        &path,
        &headers,
        "esi-killmails.read_killmails.v1",
        |user, character| {
            if character != id {
                return Err(forbidden("token is for another character"));
            }
            Ok(paged(user, user.character_killmails.get(&id), page.page))
        },
    )
}

async fn corporation_killmails(
    State(esi): State<FakeEsi>,
    Path(id): Path<i64>,
    Query(page): Query<Page>,
    headers: HeaderMap,
) -> Response {
    let path = format!(
        "/corporations/{id}/killmails/recent/?page={}",
        page.page.unwrap_or(1)
    );
    let scope = "esi-killmails.read_corporation_killmails.v1";
    serve(&esi, &path, &headers, scope, |user, character| {
        match user.members.get(&character) {
            Some((corporation, roles))
                if *corporation == id && roles.iter().any(|r| r == "Director") =>
            {
                Ok(paged(user, user.corporation_killmails.get(&id), page.page))
            }
            _ => Err(forbidden("Character does not have required role(s)")),
        }
    })
}

async fn roles(State(esi): State<FakeEsi>, Path(id): Path<i64>, headers: HeaderMap) -> Response {
    let path = format!("/characters/{id}/roles/");
    let scope = "esi-characters.read_corporation_roles.v1";
    serve(&esi, &path, &headers, scope, |user, character| {
        if character != id {
            return Err(forbidden("token is for another character"));
        }
        let roles = user
            .members
            .get(&id)
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        Ok(Json(serde_json::json!({"roles": roles})).into_response())
    })
}

/// Public: the character's corporation, from `members`.
async fn character(State(esi): State<FakeEsi>, Path(id): Path<i64>) -> Response {
    let mut state = esi.state();
    state.requests.push(format!("/characters/{id}/"));
    state.request_times.push(Instant::now());
    match state.user.members.get(&id) {
        Some((corporation, _)) => Json(serde_json::json!({
            "name": format!("Pilot {id}"),
            "corporation_id": corporation,
            "birthday": "2015-03-24T11:37:00Z",
            "gender": "female",
            "race_id": 1,
            "bloodline_id": 1,
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "Character not found"})),
        )
            .into_response(),
    }
}

/// Records the request, answers with a queued answer if any, checks the token, then answers
/// with `answer(state, the token's character)`.
fn serve(
    esi: &FakeEsi,
    path: &str,
    headers: &HeaderMap,
    scope: &str,
    answer: impl FnOnce(&UserEsi, i64) -> Result<Response, Refused>,
) -> Response {
    let mut state = esi.state();
    state.requests.push(path.to_owned());
    state.request_times.push(Instant::now());
    if let Some((status, extra)) = state.user.answers.pop_front() {
        let status = StatusCode::from_u16(status).expect("status");
        let mut response =
            (status, Json(serde_json::json!({"error": "fake failure"}))).into_response();
        for (name, value) in extra {
            response.headers_mut().insert(
                HeaderName::try_from(name).expect("a header name"),
                HeaderValue::try_from(value).expect("a header value"),
            );
        }
        return response;
    }
    bearer_character(headers, scope)
        .and_then(|character| answer(&state.user, character))
        .unwrap_or_else(IntoResponse::into_response)
}

/// The character of a valid bearer token holding `scope`.
fn bearer_character(headers: &HeaderMap, scope: &str) -> Result<i64, Refused> {
    let unauthorized = |why| Refused(StatusCode::UNAUTHORIZED, why);
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| unauthorized("authorization header missing"))?;
    let claims: serde_json::Value = token
        .split('.')
        .nth(1)
        .and_then(|payload| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .ok()
        })
        .and_then(|json| serde_json::from_slice(&json).ok())
        .ok_or_else(|| unauthorized("authorization not valid"))?;
    let now = chrono::Utc::now().timestamp();
    if claims["exp"].as_i64().is_none_or(|exp| exp <= now) {
        return Err(unauthorized("token is expired"));
    }
    let character = claims["sub"]
        .as_str()
        .and_then(|sub| sub.strip_prefix("CHARACTER:EVE:"))
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| unauthorized("authorization not valid"))?;
    let has_scope = match &claims["scp"] {
        serde_json::Value::String(one) => one == scope,
        serde_json::Value::Array(many) => many.iter().any(|s| s.as_str() == Some(scope)),
        _ => false,
    };
    if !has_scope {
        return Err(forbidden("token not valid for scope(s)"));
    }
    Ok(character)
}

/// Why ESI refuses a request, answered as ESI does: the status and `{"error": why}`.
struct Refused(StatusCode, &'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({"error": self.1}))).into_response()
    }
}

fn forbidden(why: &'static str) -> Refused {
    Refused(StatusCode::FORBIDDEN, why)
}

/// Page `page` (from 1) of `killmails`, with `X-Pages`.
fn paged(user: &UserEsi, killmails: Option<&Vec<(i64, String)>>, page: Option<usize>) -> Response {
    let size = if user.page_size == 0 {
        PAGE_SIZE
    } else {
        user.page_size
    };
    let killmails = killmails.map(Vec::as_slice).unwrap_or_default();
    let pages = killmails.len().div_ceil(size).max(1);
    let page = page.unwrap_or(1).max(1);
    let listed: Vec<serde_json::Value> = killmails
        .iter()
        .skip((page - 1) * size)
        .take(size)
        .map(|(id, hash)| serde_json::json!({"killmail_id": id, "killmail_hash": hash}))
        .collect();
    let mut response = Json(listed).into_response();
    response
        .headers_mut()
        .insert("x-pages", HeaderValue::from(pages));
    response
}
