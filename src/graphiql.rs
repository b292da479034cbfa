//! GraphiQL, served from the binary (assets/graphiql) so it works with no internet: the page on
//! `GET /graphql` and its scripts and styles under `/graphiql/`.

use axum::Router;
use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

const PAGE: &str = include_str!("../assets/graphiql/index.html");

const ASSETS: [(&str, &str, &[u8]); 4] = [
    (
        "graphiql.min.js",
        "text/javascript",
        include_bytes!("../assets/graphiql/graphiql.min.js"),
    ),
    (
        "graphiql.min.css",
        "text/css",
        include_bytes!("../assets/graphiql/graphiql.min.css"),
    ),
    (
        "react.production.min.js",
        "text/javascript",
        include_bytes!("../assets/graphiql/react.production.min.js"),
    ),
    (
        "react-dom.production.min.js",
        "text/javascript",
        include_bytes!("../assets/graphiql/react-dom.production.min.js"),
    ),
];

/// The GraphiQL page, wired to the path it is served from for queries and subscriptions.
pub fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// `/graphiql/{file}`: the page's scripts and styles, cacheable for a day.
pub fn assets() -> Router {
    Router::new().route("/graphiql/{file}", get(asset))
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|(name, ..)| *name == file) {
        Some((_, content_type, body)) => (
            [
                (header::CONTENT_TYPE, *content_type),
                (header::CACHE_CONTROL, "public, max-age=86400"),
            ],
            *body,
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
