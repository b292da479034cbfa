//! A fake RedisQ, shaped like zKillboard's since August 2025: `listen.php?queueID=…&ttw=…`
//! answers with a 302 to `object.php?objectID=…`, where the answer is. Packages are handed out
//! in order; with none left, a poll waits a little and answers `{"package": null}`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{Fake, Served};
use crate::support::TestEnv;

#[derive(Default)]
pub struct RedisqState {
    /// Whole answers (`{"package": …}`) to hand out, in order.
    pub answers: VecDeque<serde_json::Value>,
    /// Answers waiting behind a redirect, by object id.
    objects: HashMap<u64, serde_json::Value>,
    next_object: u64,
    /// The query parameters of every `listen.php` request.
    pub listens: Vec<HashMap<String, String>>,
    /// Answers fetched from `object.php`.
    pub objects_served: Vec<serde_json::Value>,
}

pub type FakeRedisq = Fake<RedisqState>;

impl FakeRedisq {
    pub fn push_null(&self) {
        self.push_answer(serde_json::json!({ "package": null }));
    }

    pub fn push_answer(&self, answer: serde_json::Value) {
        self.state().answers.push_back(answer);
    }

    /// Serves the fake and points the test's processes at it, with a 1 s long poll at least
    /// 50 ms apart.
    pub async fn serve_for(&self, env: &mut TestEnv) -> Served {
        let served = self
            .serve_routes(
                axum::Router::new()
                    .route("/listen.php", get(listen))
                    .route("/object.php", get(object)),
            )
            .await;
        env.vars
            .insert("REDISQ_URL".into(), format!("{}/listen.php", served.url()));
        env.vars.insert("REDISQ_TTW".into(), "1".into());
        env.vars
            .insert("REDISQ_MIN_INTERVAL_MS".into(), "50".into());
        served
    }
}

async fn listen(
    State(fake): State<FakeRedisq>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let queued = {
        let mut state = fake.state();
        state.listens.push(query);
        state.answers.pop_front()
    };
    let answer = match queued {
        Some(answer) => answer,
        None => {
            // The real one holds the poll for up to ttw seconds; a short hold keeps tests quick.
            tokio::time::sleep(Duration::from_millis(200)).await;
            serde_json::json!({ "package": null })
        }
    };
    let mut state = fake.state();
    let id = state.next_object;
    state.next_object += 1;
    state.objects.insert(id, answer);
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("/object.php?objectID={id}"))],
    )
        .into_response()
}

async fn object(
    State(fake): State<FakeRedisq>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let mut state = fake.state();
    let answer = query
        .get("objectID")
        .and_then(|id| id.parse::<u64>().ok())
        .and_then(|id| state.objects.remove(&id));
    match answer {
        Some(answer) => {
            state.objects_served.push(answer.clone());
            Json(answer).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
