//! The one path a generation request takes, whichever endpoint it came to.
//!
//! The one path a generation request takes, whichever endpoint it came to: parse the body once
//! and check its fields (off the async workers), check the model, open Dynamo's record, let the
//! endpoint turn the request into what the engine runs (templates and tokenization, off the
//! workers too), compile its constraint (on threads of its own), submit it, and answer with the endpoint's response or stream of chunks.
//! `/v1/completions` and `/v1/chat/completions` differ only in their [`GenerationApi`].

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use super::access_log::AccessNote;
use super::dynamo::RequestRecord;
use super::error::{parse_body, read_fields, ApiBody, ApiError};
use super::fields;
use super::generation_api::GenerationApi;
use super::protocol::{CommonParams, Head};
use super::stream::{delivered, sse};
use super::{unix_now, AppState};

/// The handler of a generation endpoint.
pub(super) async fn handle<A: GenerationApi>(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    access: Option<axum::Extension<AccessNote>>,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let arrival = Instant::now();
    let (common, request, body_len) = state
        .cpu
        .run(move || -> Result<_, ApiError> {
            let fields = parse_body(&body)?;
            fields::check(&fields, A::ENDPOINT)?;
            let common: CommonParams = read_fields(&fields)?;
            let request: A::Request = read_fields(&fields)?;
            Ok((common, request, body.len()))
        })
        .await??;
    let model = state.check_model(common.model.as_deref())?;
    let series = state
        .dynamo_series
        .model(&model)
        .expect("check_model returns a served name");
    let mut record = RequestRecord::start(series, A::ROUTE, common.is_stream(), body_len);
    let work_state = Arc::clone(&state);
    let prepared = state
        .cpu
        .run(move || {
            let streaming = common.streaming()?;
            Ok((
                streaming,
                A::prepare(&work_state, &common, &request, arrival)?,
            ))
        })
        .await
        .and_then(|r| r);
    let prepared = match prepared {
        Ok((streaming, mut request)) => match request.constraint.take() {
            Some(pending) => {
                request.constraint_param = Some(pending.param);
                state.compile_constraint(pending).await.map(|compiled| {
                    request.params.structured = Some(compiled);
                    (streaming, request)
                })
            }
            None => Ok((streaming, request)),
        },
        Err(e) => Err(e),
    };
    let (streaming, request) = match prepared {
        Ok(p) => p,
        Err(e) => {
            record.fail(&e);
            return Err(e);
        }
    };
    let head = Head {
        id: request.request_id.clone(),
        created: unix_now(),
        model,
        tool_calling: request.tool_calling.clone(),
        held_text: Vec::new(),
        released: Vec::new(),
    };
    let trace = state.start_trace(&headers, &head.model, A::OPERATION, &request);
    let mut generation =
        super::generate::Generation::start(Arc::clone(&state), request, record, trace)?;
    generation.note_to(access.map(|a| a.0));
    if let Some(usage) = streaming {
        return Ok(sse::<A>(generation, head, usage));
    }
    let logprobs = generation.wants_logprobs();
    let out = generation.collect().await?;
    let response = A::response(head, out, generation.usage, logprobs);
    Ok(delivered(&mut generation, &response))
}
