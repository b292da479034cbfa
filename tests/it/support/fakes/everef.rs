//! A fake EVE Ref: daily archives at `/killmails/{yyyy}/killmails-{yyyy-mm-dd}.tar.bz2`, byte
//! ranges as a CDN serves them, downloads cut off part-way on demand, and a log of every request.

use std::collections::{HashMap, HashSet};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::StreamExt;

use super::{Fake, Served};

/// One request the fake answered: the file's name and the `Range` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EverefRequest {
    pub name: String,
    pub range: Option<String>,
}

#[derive(Default)]
pub struct EverefState {
    /// `yyyy/killmails-yyyy-mm-dd.tar.bz2` → its bytes; anything else is 404.
    files: HashMap<String, Vec<u8>>,
    /// Files whose next whole download breaks off after half of the bytes.
    cut_off: HashSet<String>,
    pub requests: Vec<EverefRequest>,
}

pub type FakeEveref = Fake<EverefState>;

impl FakeEveref {
    /// Serves `bytes` as the archive of `day` ("2021-12-03").
    pub fn add_day(&self, day: &str, bytes: Vec<u8>) {
        self.state().files.insert(key(day), bytes);
    }

    /// The next download of `day` that starts from the beginning stops half-way, the
    /// connection closed under it.
    pub fn cut_off_once(&self, day: &str) {
        self.state().cut_off.insert(key(day));
    }

    /// The requests made for `day`'s archive, in order.
    pub fn requests_for(&self, day: &str) -> Vec<EverefRequest> {
        let name = format!("killmails-{day}.tar.bz2");
        self.state()
            .requests
            .iter()
            .filter(|r| r.name == name)
            .cloned()
            .collect()
    }

    pub async fn serve(&self) -> Served {
        self.serve_routes(axum::Router::new().route("/killmails/{year}/{name}", get(archive)))
            .await
    }
}

fn key(day: &str) -> String {
    format!("{}/killmails-{day}.tar.bz2", &day[..4])
}

async fn archive(
    State(fake): State<FakeEveref>,
    Path((year, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut state = fake.state();
    state.requests.push(EverefRequest {
        name: name.clone(),
        range: range.clone(),
    });
    let key = format!("{year}/{name}");
    let Some(bytes) = state.files.get(&key).cloned() else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let total = bytes.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    match start {
        Some(start) if start >= total => (
            StatusCode::RANGE_NOT_SATISFIABLE,
            [(header::CONTENT_RANGE, format!("bytes */{total}"))],
        )
            .into_response(),
        Some(start) => (
            StatusCode::PARTIAL_CONTENT,
            [(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{total}", total - 1),
            )],
            bytes[start..].to_vec(),
        )
            .into_response(),
        None if state.cut_off.remove(&key) => {
            // Announces the whole length, sends half, then fails the body: the connection is
            // closed mid-way, as a dropped download is.
            let half = bytes[..total / 2].to_vec();
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![
                Ok(half),
                Err(std::io::Error::other("the connection dropped")),
            ];
            Response::builder()
                .header(header::CONTENT_LENGTH, total)
                .body(Body::from_stream(futures::stream::iter(chunks).then(
                    |chunk| async move {
                        // The half goes out before the connection breaks.
                        if chunk.is_err() {
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                        chunk
                    },
                )))
                .expect("a response")
        }
        None => bytes.into_response(),
    }
}
