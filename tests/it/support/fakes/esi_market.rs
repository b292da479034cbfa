//! The fake ESI's market: `GET /markets/prices/`, answering the list a test sets.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::time::Instant;

use super::esi::FakeEsi;

impl FakeEsi {
    /// Answers `GET /markets/prices/` with `prices` (ESI's shape: `type_id`, `average_price`,
    /// `adjusted_price`) from now on.
    pub fn set_market_prices(&self, prices: serde_json::Value) {
        self.state().market_prices = Some(prices);
    }
}

pub(super) async fn market_prices(State(esi): State<FakeEsi>) -> Response {
    let mut state = esi.state();
    state.requests.push("/markets/prices/".to_owned());
    state.request_times.push(Instant::now());
    match &state.market_prices {
        Some(prices) => Json(prices.clone()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no prices set"})),
        )
            .into_response(),
    }
}
