//! The `/metrics` route.

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::recorder::Exporter;
use crate::render::{render, Format};

/// A router serving `GET /metrics` from `exporter`, negotiating the format from `Accept`.
/// Merge it into a server's router; it carries its own state.
pub fn router<S>(exporter: Exporter) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .with_state(exporter)
}

async fn metrics_handler(State(exporter): State<Exporter>, headers: HeaderMap) -> Response {
    respond(&exporter, &headers)
}

/// The `/metrics` response for a request with `headers`: the format negotiated from `Accept`.
/// For servers that route `/metrics` themselves (the Dynamo system status server).
pub fn respond(exporter: &Exporter, headers: &HeaderMap) -> Response {
    let format = Format::from_accept(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    // Rendering is CPU-only and bounded by the catalog (well under a millisecond).
    let body = render(exporter, format);
    ([(CONTENT_TYPE, format.content_type())], body).into_response()
}
