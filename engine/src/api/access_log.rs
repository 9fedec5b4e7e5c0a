//! The access log: one line per request, as vLLM's server (uvicorn) writes one, when its answer
//! is done: the client, method, path, status, duration, and for generation requests the request
//! id and its prompt and output tokens. A line is written when the response body ends, or when
//! it is dropped unsent (the client went away), so aborted streams are logged too.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;

/// What a generation handler adds to its request's line.
#[derive(Debug, Default, Clone)]
pub struct Note {
    pub request_id: Option<String>,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// A request's note, shared by the handler (which fills it) and the line (which reads it).
#[derive(Debug, Clone, Default)]
pub struct AccessNote(Arc<Mutex<Note>>);

impl AccessNote {
    pub fn set(&self, note: Note) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = note;
    }

    fn get(&self) -> Note {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Middleware: gives the request a note and logs its line when the answer is done.
pub async fn log_requests(mut req: Request, next: Next) -> Response {
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
        logged: false,
    };
    req.extensions_mut().insert(line.note.clone());
    let (parts, body) = next.run(req).await.into_parts();
    let line = Line {
        status: parts.status.as_u16(),
        ..line
    };
    Response::from_parts(parts, Body::new(Logged { body, line }))
}

struct Line {
    client: String,
    method: String,
    path: String,
    version: axum::http::Version,
    status: u16,
    started: Instant,
    note: AccessNote,
    logged: bool,
}

impl Line {
    fn write(&mut self, complete: bool) {
        if std::mem::replace(&mut self.logged, true) {
            return;
        }
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

/// A response body that writes its request's line when it ends or is dropped.
struct Logged {
    body: Body,
    line: Line,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.line.write(true);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        // Ended without being polled to its end: the client went away (or the body was empty).
        // The body goes first: a generation inside it fills the note as it is dropped.
        let body = std::mem::replace(&mut self.body, Body::empty());
        let complete = body.is_end_stream();
        drop(body);
        self.line.write(complete);
    }
}
