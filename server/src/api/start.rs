//! What the completions and chat handlers share: parse the body and check its fields (off the
//! async workers), check the model, open Dynamo's record, turn the request into what the engine
//! runs (templates and tokenization, off the workers too), and submit it.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde::de::DeserializeOwned;

use super::access_log::AccessNote;
use super::dynamo::{RequestRecord, Route};
use super::error::{parse_json, ApiError};
use super::fields::{self, Endpoint};
use super::generate::{GenRequest, Generation};
use super::protocol::{CommonParams, StreamUsage};
use super::AppState;

/// An endpoint's own part of a generation request.
pub struct EndpointParts<R> {
    pub endpoint: Endpoint,
    pub route: Route,
    /// GenAI's operation name for the trace (`text_completion`, `chat`).
    pub operation: &'static str,
    /// Checks the request (with its shared fields) and turns it into what the engine runs.
    pub prepare: fn(&AppState, &CommonParams, &R, Instant) -> Result<GenRequest, ApiError>,
}

/// A submitted generation, and what its response needs.
pub struct Started {
    pub generation: Generation,
    /// `Some` for a stream.
    pub streaming: Option<StreamUsage>,
    pub request_id: String,
    pub model: String,
}

pub async fn start<R: DeserializeOwned + Send + 'static>(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    access: Option<AccessNote>,
    body: Bytes,
    endpoint: EndpointParts<R>,
) -> Result<Started, ApiError> {
    let arrival = Instant::now();
    let kind = endpoint.endpoint;
    let (common, req, body_len) = state
        .cpu
        .run(move || -> Result<_, ApiError> {
            let fields: serde_json::Value = parse_json(&body)?;
            let common: CommonParams = parse_json(&body)?;
            let req: R = parse_json(&body)?;
            fields::check(&fields, kind)?;
            Ok((common, req, body.len()))
        })
        .await??;
    let model = state.check_model(common.model.as_deref())?;
    let mut record = RequestRecord::start(
        &state.dynamo,
        &model,
        endpoint.route,
        common.is_stream(),
        body_len,
    );
    let prepare = endpoint.prepare;
    let work_state = Arc::clone(state);
    let prepared = state
        .cpu
        .run(move || {
            let streaming = common.streaming()?;
            Ok((streaming, prepare(&work_state, &common, &req, arrival)?))
        })
        .await
        .and_then(|r| r);
    let (streaming, request) = match prepared {
        Ok(p) => p,
        Err(e) => {
            record.fail(&e);
            return Err(e);
        }
    };
    let request_id = request.request_id.clone();
    let trace = state.start_trace(headers, &model, endpoint.operation, &request);
    let mut generation = Generation::start(Arc::clone(state), request, record, trace)?;
    generation.note_to(access);
    Ok(Started {
        generation,
        streaming,
        request_id,
        model,
    })
}
