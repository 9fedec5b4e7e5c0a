//! The routes beside the OpenAI API: `/health`, `/version` and the exporter's `/metrics`.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use exporter::Exporter;

use crate::lifecycle::drain::Drain;

/// The application's routes. `/health` answers 503 once the engine thread has died or while
/// the server drains for a stop, so that load balancers move on.
pub(crate) fn app(exporter: Exporter, engine: engine::EngineHandle, drain: Arc<Drain>) -> Router {
    let health = move || {
        let healthy = engine.is_alive() && !drain.is_draining();
        async move {
            if healthy {
                axum::http::StatusCode::OK
            } else {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }
        }
    };
    Router::new()
        .route("/health", get(health))
        .route(
            "/version",
            get(|| async { Json(serde_json::json!({ "version": env!("CARGO_PKG_VERSION") })) }),
        )
        .merge(exporter::router(exporter))
}
