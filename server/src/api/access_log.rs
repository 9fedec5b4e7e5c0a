//! The access log: one line per request, as vLLM's uvicorn writes it.
//!
//! The access log: one line per request, as vLLM's server (uvicorn) writes one, when its answer
//! is done: the client, method, path, status, duration, and for generation requests the request
//! id and its prompt and output tokens. A line is written when the response body ends, or when
//! it is dropped unsent (the client went away), so aborted streams are logged too, and so is a
//! request whose client left before its answer existed (status 499).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

/// What a generation handler adds to its request's line.
#[derive(Debug, Default, Clone)]
pub(crate) struct Note {
    pub request_id: Option<String>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A request's note, shared by the handler (which fills it) and the line (which reads it).
#[derive(Debug, Clone, Default)]
pub(crate) struct AccessNote(Arc<Mutex<Note>>);

impl AccessNote {
    pub(crate) fn set(&self, note: Note) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    fn get(&self) -> Note {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Middleware: gives the request a note and logs its line when the answer is done.
pub(crate) async fn log_requests(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let client = req
        .extensions()
        .get::<ConnectInfo<crate::listener::ClientAddr>>()
        .map(|c| c.0 .0.to_string())
        .unwrap_or_else(|| "-".to_owned());
    let line = Line {
        client,
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        version: req.version(),
        status: 0,
        started,
        note: AccessNote::default(),
    };
    req.extensions_mut().insert(line.note.clone());
    // A client that goes away before the answer (a request that is not streamed) drops this
    // future at the await, and the guard writes the line then: status 499, nginx's "client
    // closed request", since no status was sent.
    let mut unanswered = Unanswered(Some(line));
    let (parts, body) = next.run(req).await.into_parts();
    let mut line = Line {
        status: parts.status.as_u16(),
        ..unanswered.0.take().expect("taken once")
    };
    let body = crate::body_end::on_end(body, move |complete| line.write(complete));
    Response::from_parts(parts, body)
}

/// The status an access line gives a request whose client went away before its answer.
pub(crate) const CLIENT_CLOSED_REQUEST: u16 = 499;

/// A request's line until its answer exists; dropped unanswered, it writes the line itself.
struct Unanswered(Option<Line>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(mut line) = self.0.take() {
            line.status = CLIENT_CLOSED_REQUEST;
            line.write(false);
        }
    }
}

struct Line {
    client: String,
    method: String,
    path: String,
    version: axum::http::Version,
    status: u16,
    started: Instant,
    note: AccessNote,
}

impl Line {
    fn write(&mut self, complete: bool) {
        let note = self.note.get();
        tracing::info!(
            target: "vigil::access",
            status = self.status,
            duration_ms = (self.started.elapsed().as_secs_f64() * 1e3).round() as u64,
            request_id = note.request_id.as_deref().unwrap_or("-"),
            prompt_tokens = note.prompt_tokens,
            output_tokens = note.completion_tokens,
            complete,
            "{} - \"{} {} {:?}\" {}",
            self.client,
            self.method,
            self.path,
            self.version,
            self.status,
        );
    }
}
