//! What became of every exported span, counted where a scrape can see it.
//!
//! What became of every span: the OpenTelemetry SDK logs nothing here (its internal logs are
//! off with its default features) and counts nothing a scrape can see, so a closed port, a black
//! hole or a slow collector would lose every trace unseen. Two wrappers around the SDK's own
//! parts count each span once as `exported`, `failed` or `dropped` (`vigil_trace_spans_total`)
//! and log failures and drops, at most once per [`LOG_INTERVAL`] each:
//!
//! - [`CountedExporter`] wraps the OTLP exporter: a batch's spans are exported or failed.
//! - [`Admission`] wraps the batch processor and refuses a span (dropped) when the spans handed
//!   on and not yet taken by the exporter fill the processor's queue. Since that count includes
//!   the queue's, the SDK's own queue never overflows (it would drop silently).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use exporter::catalog::service::TRACE_SPANS;
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;

/// The least time between two log lines about the same kind of loss.
pub(super) const LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The spans' counts, shared by the two wrappers.
#[derive(Debug, Default)]
pub(super) struct SpanCounts {
    /// Handed on to the batch processor.
    admitted: AtomicU64,
    /// Taken by the exporter in a batch.
    taken: AtomicU64,
    failures: Throttled,
    drops: Throttled,
}

impl SpanCounts {
    fn count(outcome: &'static str, n: u64) {
        metrics::counter!(TRACE_SPANS.name, "outcome" => outcome).increment(n);
    }
}

/// A log line at most once per [`LOG_INTERVAL`], saying how many events it stands for.
#[derive(Debug, Default)]
struct Throttled {
    last: Mutex<Option<Instant>>,
    unlogged: AtomicU64,
}

impl Throttled {
    /// Counts `n` events; the events since the last line if one is due now.
    fn due(&self, n: u64) -> Option<u64> {
        let pending = self.unlogged.fetch_add(n, Ordering::Relaxed) + n;
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|at| at.elapsed() < LOG_INTERVAL) {
            return None;
        }
        *last = Some(Instant::now());
        self.unlogged.fetch_sub(pending, Ordering::Relaxed);
        Some(pending)
    }
}

/// The OTLP exporter, counting what it exports and what fails.
#[derive(Debug)]
pub(super) struct CountedExporter<E> {
    inner: E,
    counts: Arc<SpanCounts>,
    endpoint: String,
}

impl<E> CountedExporter<E> {
    pub(super) fn new(inner: E, counts: Arc<SpanCounts>, endpoint: &str) -> Self {
        CountedExporter {
            inner,
            counts,
            endpoint: endpoint.to_owned(),
        }
    }
}

impl<E: SpanExporter> SpanExporter for CountedExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        self.counts.taken.fetch_add(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => SpanCounts::count("exported", n),
            Err(err) => {
                SpanCounts::count("failed", n);
                if let Some(spans) = self.counts.failures.due(n) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        spans,
                        "exporting request traces failed: {err} (counted in \
                         vigil_trace_spans_total{{outcome=\"failed\"}}; logged at most every {}s)",
                        LOG_INTERVAL.as_secs()
                    );
                }
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The batch processor, refusing spans its queue has no room for (and counting them).
#[derive(Debug)]
pub(super) struct Admission<P> {
    inner: P,
    counts: Arc<SpanCounts>,
    /// The processor's queue size.
    capacity: u64,
}

impl<P> Admission<P> {
    pub(super) fn new(inner: P, counts: Arc<SpanCounts>, capacity: usize) -> Self {
        Admission {
            inner,
            counts,
            capacity: capacity as u64,
        }
    }

    /// Takes a place for one span, unless the spans not yet taken by the exporter fill the
    /// queue.
    fn admit(&self) -> bool {
        let c = &self.counts;
        c.admitted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |admitted| {
                // `taken` only grows: read late, it can only overstate what waits.
                let waiting = admitted.saturating_sub(c.taken.load(Ordering::Acquire));
                (waiting < self.capacity).then_some(admitted + 1)
            })
            .is_ok()
    }
}

impl<P: SpanProcessor> SpanProcessor for Admission<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.admit() {
            self.inner.on_end(span);
            return;
        }
        SpanCounts::count("dropped", 1);
        if let Some(spans) = self.counts.drops.due(1) {
            tracing::warn!(
                spans,
                queue = self.capacity,
                "request trace spans dropped: the export queue is full (the collector is slow \
                 or unreachable; counted in vigil_trace_spans_total{{outcome=\"dropped\"}}; \
                 logged at most every {}s)",
                LOG_INTERVAL.as_secs()
            );
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_stands_for_every_event_since_the_last() {
        let t = Throttled::default();
        assert_eq!(t.due(3), Some(3));
        assert_eq!(t.due(2), None);
        assert_eq!(t.due(1), None);
        *t.last.lock().unwrap() = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(t.due(1), Some(4));
    }

    #[test]
    fn admission_stops_at_the_queue_size_until_the_exporter_takes_spans() {
        let counts = Arc::new(SpanCounts::default());
        let a = Admission::new((), Arc::clone(&counts), 3);
        assert!(a.admit() && a.admit() && a.admit());
        assert!(!a.admit());
        counts.taken.fetch_add(2, Ordering::Relaxed);
        assert!(a.admit() && a.admit());
        assert!(!a.admit());
    }
}
