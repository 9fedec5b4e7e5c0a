//! The admission count of the generation routes, and the drain at shutdown.
//!
//! Every `/v1/completions` and `/v1/chat/completions` request is admitted by [`Drain::admit`]
//! (the API's admission middleware): while the server runs it is counted in flight until its
//! response body (a whole JSON body or an SSE stream) has been sent or dropped; once a drain has
//! begun it is refused ([`Draining`], which the API answers with 503, an OpenAI-style error body
//! and `Retry-After`). [`drain`] then waits for the requests in flight,
//! aborts what is left when the grace period ends (or at a second signal), and counts each
//! request in `vigil_drain_requests_total` as it leaves, so a scrape during the drain sees them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exporter::catalog::service::DRAIN_REQUESTS;
use tokio::sync::Notify;

use engine::EngineHandle;

/// How long aborted requests get to send their last event before the server stops anyway.
const ABORT_WAIT: Duration = Duration::from_secs(5);

/// Requests in flight, and whether the server is draining.
#[derive(Default)]
pub(crate) struct Drain {
    draining: AtomicBool,
    /// Set when what is left has been aborted: requests leaving after it count as aborted.
    aborting: AtomicBool,
    in_flight: AtomicUsize,
    /// When the grace period ends (set when the drain begins), for `Retry-After`.
    deadline: Mutex<Option<Instant>>,
    /// Woken whenever a request leaves.
    left: Notify,
}

/// A request counted in flight; leaving when dropped.
pub(crate) struct InFlight(Arc<Drain>);

/// A request refused because the server is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Draining {
    /// Seconds until the grace period ends (at least 1): when this server will be gone.
    pub retry_after_secs: u64,
}

impl Draining {
    pub(crate) const MESSAGE: &'static str =
        "The server is shutting down and admits no new requests; retry later or on another replica.";
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let drain = &self.0;
        if drain.is_draining() {
            let outcome = if drain.aborting.load(Ordering::SeqCst) {
                "aborted"
            } else {
                "completed"
            };
            metrics::counter!(DRAIN_REQUESTS.name, "outcome" => outcome).increment(1);
        }
        drain.leave();
    }
}

impl Drain {
    pub(crate) fn new() -> Arc<Drain> {
        Arc::new(Drain::default())
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request in, unless the server is draining. The count goes up before the check,
    /// so a request either sees the drain or is seen by it: none slips between.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<InFlight, Draining> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.is_draining() {
            // Out again, counted as refused only (not as a request that completed).
            self.leave();
            metrics::counter!(DRAIN_REQUESTS.name, "outcome" => "rejected").increment(1);
            return Err(Draining {
                retry_after_secs: self.retry_after_secs(),
            });
        }
        Ok(InFlight(Arc::clone(self)))
    }

    fn leave(&self) {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.left.notify_waiters();
    }

    /// Starts refusing requests; returns how many are in flight.
    pub(crate) fn begin(&self, grace: Duration) -> usize {
        *self.deadline.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + grace);
        self.draining.store(true, Ordering::SeqCst);
        self.in_flight()
    }

    /// Seconds until the grace period ends (at least 1): when this server will be gone.
    fn retry_after_secs(&self) -> u64 {
        let deadline = *self.deadline.lock().unwrap_or_else(|e| e.into_inner());
        deadline
            .map(|d| {
                d.saturating_duration_since(Instant::now())
                    .as_secs_f64()
                    .ceil() as u64
            })
            .unwrap_or(0)
            .max(1)
    }

    /// Resolves once no request is in flight.
    pub(crate) async fn until_idle(&self) {
        loop {
            let left = self.left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            left.await;
        }
    }
}

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Drained {
    pub completed: usize,
    pub aborted: usize,
}

/// Drains: refuse new requests, give those in flight `grace` to finish (or until `cut_short`
/// resolves: a second signal), abort the rest.
pub(crate) async fn drain(
    drain: &Drain,
    engine: &EngineHandle,
    grace: Duration,
    cut_short: impl std::future::Future<Output = ()>,
) -> Drained {
    let started = Instant::now();
    let in_flight = drain.begin(grace);
    tracing::info!(in_flight, ?grace, "draining: new requests get 503");
    tokio::select! {
        _ = tokio::time::timeout(grace, drain.until_idle()) => {}
        () = cut_short => {
            tracing::warn!("a second signal: aborting the requests in flight and exiting");
        }
    }
    let aborted = drain.in_flight();
    if aborted > 0 {
        tracing::warn!(aborted, "aborting the requests still in flight");
        drain.aborting.store(true, Ordering::SeqCst);
        engine.abort_all();
        if tokio::time::timeout(ABORT_WAIT, drain.until_idle())
            .await
            .is_err()
        {
            tracing::warn!(
                left = drain.in_flight(),
                "aborted requests did not finish sending"
            );
        }
    }
    let done = Drained {
        completed: in_flight.saturating_sub(aborted),
        aborted,
    };
    tracing::info!(
        completed = done.completed,
        aborted = done.aborted,
        "drained in {:.2?}",
        started.elapsed()
    );
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_is_refused_once_the_drain_begins_and_the_drain_waits_for_the_rest() {
        let drain = Drain::new();
        let a = drain.admit().expect("admitted before the drain");
        let b = drain.admit().expect("admitted before the drain");
        assert_eq!(drain.begin(Duration::from_secs(30)), 2);
        let refused = drain.admit().err().expect("refused while draining");
        assert!((29..=30).contains(&refused.retry_after_secs));
        assert_eq!(drain.in_flight(), 2, "a refused request is not counted");
        drop(a);
        let idle = tokio::time::timeout(Duration::from_millis(50), drain.until_idle()).await;
        assert!(idle.is_err(), "one request is still in flight");
        drop(b);
        tokio::time::timeout(Duration::from_secs(1), drain.until_idle())
            .await
            .expect("idle once the last request left");
    }
}
