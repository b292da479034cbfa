//! A fake R2Z2: numbered killmail files revealed over time, `sequence.json`, refusals on demand,
//! and a log of every request it answered.

use std::collections::{BTreeMap, HashMap, VecDeque};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::time::Instant;

use super::{Fake, Served};
use crate::support::TestEnv;

/// One request the fake answered.
#[derive(Debug, Clone)]
pub struct R2z2Request {
    /// `None` for `sequence.json`.
    pub sequence: Option<i64>,
    pub status: u16,
    pub at: Instant,
    pub user_agent: Option<String>,
}

#[derive(Default)]
pub struct R2z2State {
    /// sequence → the file's body, served as it is (so it may be malformed).
    pub files: BTreeMap<i64, Vec<u8>>,
    /// Files above this sequence answer 404: not produced yet.
    pub revealed: i64,
    /// What `sequence.json` names.
    pub pointer: i64,
    /// Statuses to answer a sequence with before serving it, one per request.
    pub failures: HashMap<i64, VecDeque<u16>>,
    pub requests: Vec<R2z2Request>,
}

pub type FakeR2z2 = Fake<R2z2State>;

impl FakeR2z2 {
    /// A fake holding an [`object`] for each of `killmails` (ESI body and hash), from sequence
    /// `start` on; `sequence.json` names `start`, and nothing is revealed yet.
    pub fn holding(start: i64, killmails: &[(serde_json::Value, String)]) -> Self {
        let fake = Self::default();
        for (sequence, (esi, hash)) in (start..).zip(killmails) {
            fake.add_object(sequence, &object(sequence, esi, hash));
        }
        fake.set_pointer(start);
        fake
    }

    /// Adds `object` as the file of `sequence`.
    pub fn add_object(&self, sequence: i64, object: &serde_json::Value) {
        self.add_file(sequence, serde_json::to_vec(object).expect("JSON"));
    }

    pub fn add_file(&self, sequence: i64, body: Vec<u8>) {
        self.state().files.insert(sequence, body);
    }

    /// Makes every file up to `sequence` available.
    pub fn reveal(&self, sequence: i64) {
        self.state().revealed = sequence;
    }

    pub fn set_pointer(&self, sequence: i64) {
        self.state().pointer = sequence;
    }

    pub fn fail(&self, sequence: i64, statuses: &[u16]) {
        self.state()
            .failures
            .entry(sequence)
            .or_default()
            .extend(statuses);
    }

    pub fn requests(&self) -> Vec<R2z2Request> {
        self.state().requests.clone()
    }

    /// Serves the fake and points the test's processes at it, polling again 200 ms after a
    /// sequence that is not produced yet, skipping one missing below the newest after 1.5 s,
    /// and taking over a cursor another poller let go within 300 ms.
    pub async fn serve_for(&self, env: &mut TestEnv) -> Served {
        let served = self
            .serve_routes(axum::Router::new().route("/ephemeral/{file}", get(file)))
            .await;
        env.vars.insert("R2Z2_BASE_URL".into(), served.url());
        env.vars.insert("R2Z2_IDLE_WAIT_MS".into(), "200".into());
        env.vars.insert("R2Z2_SKIP_AFTER_MS".into(), "1500".into());
        env.vars.insert("R2Z2_TAKEOVER_MS".into(), "300".into());
        served
    }
}

async fn file(
    State(fake): State<FakeR2z2>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Response {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut state = fake.state();
    let sequence = file
        .strip_suffix(".json")
        .and_then(|s| s.parse::<i64>().ok());
    let (status, response) = match sequence {
        None if file == "sequence.json" => {
            let body = serde_json::json!({"sequence": state.pointer});
            (
                StatusCode::OK,
                json(serde_json::to_vec(&body).expect("JSON")),
            )
        }
        None => (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND.into_response()),
        Some(sequence) => {
            let failure = state
                .failures
                .get_mut(&sequence)
                .and_then(VecDeque::pop_front)
                .map(|s| StatusCode::from_u16(s).expect("status"));
            match failure {
                Some(StatusCode::TOO_MANY_REQUESTS) => (
                    StatusCode::TOO_MANY_REQUESTS,
                    (
                        StatusCode::TOO_MANY_REQUESTS,
                        [(header::RETRY_AFTER, "1")],
                        "slow down",
                    )
                        .into_response(),
                ),
                Some(status) => (status, (status, "refused").into_response()),
                None => match state.files.get(&sequence) {
                    Some(body) if sequence <= state.revealed => {
                        (StatusCode::OK, json(body.clone()))
                    }
                    _ => (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND.into_response()),
                },
            }
        }
    };
    state.requests.push(R2z2Request {
        sequence,
        status: status.as_u16(),
        at: Instant::now(),
        user_agent,
    });
    response
}

fn json(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// An R2Z2 object around a real ESI killmail, with a made-up but realistic zkb.
pub fn object(sequence: i64, esi: &serde_json::Value, hash: &str) -> serde_json::Value {
    serde_json::json!({
        "killmail_id": esi["killmail_id"],
        "hash": hash,
        "esi": esi,
        "zkb": zkb(esi, hash),
        "uploaded_at": 1_638_489_600 + (sequence % 86_400),
        "sequence_id": sequence,
    })
}

/// A zkb block as zKillboard computes it, with values derived from the killmail.
pub fn zkb(esi: &serde_json::Value, hash: &str) -> serde_json::Value {
    let id = esi["killmail_id"].as_i64().expect("killmail_id");
    let attackers = esi["attackers"].as_array().map_or(0, Vec::len);
    let players = esi["attackers"].as_array().map_or(0, |a| {
        a.iter().filter(|a| a.get("character_id").is_some()).count()
    });
    let fitted = (id % 97_000) as f64 * 1_013.25;
    let dropped = (id % 13) as f64 * 2_500.5;
    let destroyed = fitted - dropped + 10_000.0;
    serde_json::json!({
        "locationID": 40_000_000 + id % 100_000,
        "hash": hash,
        "fittedValue": fitted,
        "droppedValue": dropped,
        "destroyedValue": destroyed,
        "totalValue": dropped + destroyed,
        "points": 1 + id % 20,
        "npc": players == 0,
        "solo": players == 1 && attackers == 1,
        "awox": false,
        "labels": ["cat:6", if players == 0 { "npc" } else { "pvp" }],
        "attackerCount": attackers,
        "href": format!("https://esi.evetech.net/killmails/{id}/{hash}/"),
    })
}
