//! The admission gate of the generation routes: counted in flight, or refused while draining.
//!
//! The admission gate of the generation routes: each request is counted in flight by the
//! server's [`Drain`] until its response body has been sent or dropped, or refused with 503, an
//! OpenAI-style error body and `Retry-After` once a drain has begun.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::RETRY_AFTER;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::lifecycle::drain::{Drain, Draining};

impl From<Draining> for ApiError {
    fn from(_: Draining) -> ApiError {
        ApiError::unavailable(Draining::MESSAGE)
    }
}

/// Middleware of the generation routes.
pub(super) async fn admission(
    State(drain): State<Arc<Drain>>,
    req: Request,
    next: Next,
) -> Response {
    let guard = match drain.admit() {
        Ok(guard) => guard,
        Err(draining) => {
            let mut resp = ApiError::from(draining).into_response();
            if let Ok(v) = HeaderValue::from_str(&draining.retry_after_secs.to_string()) {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            return resp;
        }
    };
    let (parts, body) = next.run(req).await.into_parts();
    // Counted in flight until the answer has been sent or dropped.
    let body = crate::body_end::on_end(body, move |_| drop(guard));
    Response::from_parts(parts, body)
}
