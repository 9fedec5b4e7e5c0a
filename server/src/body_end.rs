//! A body (request or response) that says how it ended: read to its end, or dropped before.
//!
//! The drain counts a request in flight until its answer ends, the access log writes its line then,
//! and the listener learns when a request has arrived whole and when it has been answered: one
//! wrapper serves them all.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes, HttpBody};

/// Wraps `body` so that `on_end(complete)` runs once: `true` when it has been read to its end,
/// `false` when it is dropped before. The inner body is dropped first (whatever it owns, a
/// generation filling the access log's note among them, is gone by then).
pub(crate) fn on_end<F>(body: Body, on_end: F) -> Body
where
    F: FnOnce(bool) + Send + Unpin + 'static,
{
    Body::new(OnEnd {
        body,
        on_end: Some(on_end),
    })
}

struct OnEnd<F: FnOnce(bool)> {
    body: Body,
    on_end: Option<F>,
}

impl<F: FnOnce(bool)> OnEnd<F> {
    fn end(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(complete);
        }
    }
}

impl<F: FnOnce(bool)> Drop for OnEnd<F> {
    fn drop(&mut self) {
        let body = std::mem::replace(&mut self.body, Body::empty());
        let complete = body.is_end_stream();
        drop(body);
        self.end(complete);
    }
}

impl<F: FnOnce(bool) + Unpin> HttpBody for OnEnd<F> {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            this.end(true);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn it_reports_a_body_read_to_its_end_and_one_dropped_before() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = |seen: &Arc<Mutex<Vec<bool>>>| {
            let seen = Arc::clone(seen);
            move |complete| seen.lock().unwrap().push(complete)
        };
        let read = on_end(Body::from("hello"), record(&seen));
        assert_eq!(axum::body::to_bytes(read, 64).await.unwrap(), "hello");
        let dropped = on_end(Body::from("never read"), record(&seen));
        drop(dropped);
        assert_eq!(*seen.lock().unwrap(), [true, false]);
    }
}
