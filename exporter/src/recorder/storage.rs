//! The cells behind every series: lock-free counters, gauges and fixed-bucket histograms.
//!
//! Histograms keep one atomic count per bucket (not raw samples, as metrics-util's `AtomicBucket`
//! does), so an observation is a binary search and two atomic adds, and rendering reads the
//! counts without draining anything.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use metrics::{CounterFn, GaugeFn, HistogramFn};

use crate::exemplar;

/// Seconds since the Unix epoch, as `_created` series and exemplar timestamps use.
pub(crate) fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A monotonic counter.
///
/// The `metrics` facade counts in whole numbers; totals read from elsewhere (seconds off CPU
/// from the kernel, joules from NVML) are fractional and set whole with [`CounterCell::set_total`].
/// Both live in one cell so a family renders the same way whichever way it was fed.
#[derive(Debug)]
pub(crate) struct CounterCell {
    value: AtomicU64,
    /// `f64` bits of a total set by [`CounterCell::set_total`].
    fractional: AtomicU64,
    created: f64,
}

impl CounterCell {
    pub(crate) fn new() -> Self {
        CounterCell {
            value: AtomicU64::new(0),
            fractional: AtomicU64::new(0f64.to_bits()),
            created: unix_now(),
        }
    }
    pub(crate) fn value(&self) -> f64 {
        self.value.load(Ordering::Relaxed) as f64
            + f64::from_bits(self.fractional.load(Ordering::Relaxed))
    }
    /// Sets a cumulative total kept by another counter (the kernel's, the driver's); it never
    /// goes down, as a counter must not between resets of the process.
    pub(crate) fn set_total(&self, total: f64) {
        let _ = self
            .fractional
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                (total > f64::from_bits(bits)).then_some(total.to_bits())
            });
    }
    pub(crate) fn created(&self) -> f64 {
        self.created
    }
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.value.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.value.fetch_max(value, Ordering::Relaxed);
    }
}

/// A gauge holding an `f64`.
#[derive(Debug)]
pub(crate) struct GaugeCell {
    bits: AtomicU64,
}

impl GaugeCell {
    pub(crate) fn new() -> Self {
        GaugeCell {
            bits: AtomicU64::new(0f64.to_bits()),
        }
    }
    pub(crate) fn value(&self) -> f64 {
        f64::from_bits(self.bits.load(Ordering::Relaxed))
    }
    fn add(&self, delta: f64) {
        let _ = self
            .bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + delta).to_bits())
            });
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        self.add(value);
    }
    fn decrement(&self, value: f64) {
        self.add(-value);
    }
    fn set(&self, value: f64) {
        self.bits.store(value.to_bits(), Ordering::Relaxed);
    }
}

/// The most recent observation that carried a request id, kept per bucket.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Exemplar {
    pub request_id: Box<str>,
    /// The request's trace id, when tracing is on.
    pub trace_id: Option<Box<str>>,
    pub value: f64,
    pub timestamp: f64,
}

/// A histogram with explicit upper bounds (`+Inf` implied).
///
/// Counts and sum are striped over a few shards, each on its own cache lines, and every thread
/// writes to one shard: two threads observing the same histogram (the engine loop and an HTTP
/// worker, say) do not bounce one cache line between cores. Rendering adds the shards up.
#[derive(Debug)]
pub(crate) struct HistogramCell {
    bounds: Arc<[f64]>,
    /// `shards` blocks of `stride` words: per shard, the non-cumulative count of each bucket
    /// (the last one is `+Inf`), then the sum's bits, then padding.
    cells: Box<[AtomicU64]>,
    stride: usize,
    /// One slot per bucket when exemplars are on for this histogram.
    exemplars: Option<Box<[Mutex<Option<Exemplar>>]>>,
    created: f64,
}

/// How many shards histograms stripe their counts over: the core count, rounded up to a power of
/// two, at most 16.
fn shard_count() -> usize {
    static SHARDS: OnceLock<usize> = OnceLock::new();
    *SHARDS.get_or_init(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .next_power_of_two()
            .min(16)
    })
}

/// The shard this thread writes to (threads are dealt shards round-robin on first use).
fn this_threads_shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    let mask = shard_count() - 1;
    SHARD.with(|s| match s.get() {
        usize::MAX => {
            let shard = NEXT.fetch_add(1, Ordering::Relaxed) & mask;
            s.set(shard);
            shard
        }
        shard => shard,
    })
}

/// A consistent-enough read of a histogram for rendering: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
    /// Per bucket, aligned with `buckets`; empty when exemplars are off.
    pub exemplars: Vec<Option<Exemplar>>,
}

impl HistogramCell {
    pub(crate) fn new(bounds: Arc<[f64]>, with_exemplars: bool) -> Self {
        let buckets = bounds.len() + 1;
        // Buckets and sum, rounded up to whole 64-byte lines, plus one line of padding.
        let stride = (buckets + 1).div_ceil(8) * 8 + 8;
        HistogramCell {
            cells: (0..stride * shard_count())
                .map(|_| AtomicU64::new(0))
                .collect(),
            stride,
            exemplars: with_exemplars.then(|| (0..buckets).map(|_| Mutex::new(None)).collect()),
            bounds,
            created: unix_now(),
        }
    }

    fn buckets(&self) -> usize {
        self.bounds.len() + 1
    }

    pub(crate) fn created(&self) -> f64 {
        self.created
    }

    pub(crate) fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = (0..self.buckets())
            .map(|i| {
                for shard in self.cells.chunks(self.stride) {
                    cumulative += shard[i].load(Ordering::Relaxed);
                }
                (
                    self.bounds.get(i).copied().unwrap_or(f64::INFINITY),
                    cumulative,
                )
            })
            .collect();
        let sum = self
            .cells
            .chunks(self.stride)
            .map(|shard| f64::from_bits(shard[self.buckets()].load(Ordering::Relaxed)))
            .sum();
        let exemplars = match &self.exemplars {
            Some(slots) => slots
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
                .collect(),
            None => Vec::new(),
        };
        HistogramSnapshot {
            buckets,
            count: cumulative,
            sum,
            exemplars,
        }
    }
}

impl HistogramCell {
    /// Replaces the whole state with counts aggregated elsewhere (the kernel's log2 histograms):
    /// `counts` per bucket, not cumulative, one per bound plus `+Inf`.
    pub(crate) fn set_counts(&self, counts: &[u64], sum: f64) {
        assert_eq!(counts.len(), self.buckets(), "one count per bucket");
        for (i, shard) in self.cells.chunks(self.stride).enumerate() {
            for (b, cell) in shard[..self.buckets()].iter().enumerate() {
                cell.store(if i == 0 { counts[b] } else { 0 }, Ordering::Relaxed);
            }
            let s = if i == 0 { sum } else { 0.0 };
            shard[self.buckets()].store(s.to_bits(), Ordering::Relaxed);
        }
    }
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        if value.is_nan() || count == 0 {
            return;
        }
        // First bucket whose bound is >= value (`le` semantics); past the end is +Inf.
        let index = self.bounds.partition_point(|b| *b < value);
        let shard = &self.cells[this_threads_shard() * self.stride..][..self.stride];
        shard[index].fetch_add(count as u64, Ordering::Relaxed);
        let _ = shard[self.buckets()].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
            Some((f64::from_bits(b) + value * count as f64).to_bits())
        });
        if let Some(slots) = &self.exemplars {
            exemplar::current(|scope| {
                if let Some(scope) = scope {
                    let e = Exemplar {
                        request_id: scope.request_id.as_str().into(),
                        trace_id: scope.trace_id.as_deref().map(Into::into),
                        value,
                        timestamp: unix_now(),
                    };
                    *slots[index].lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_le_and_cumulative() {
        let h = HistogramCell::new(Arc::from(vec![1.0, 2.0, 5.0]), false);
        for v in [0.5, 1.0, 1.5, 2.0, 7.0, f64::NAN] {
            h.record(v);
        }
        h.record_many(5.0, 3);
        let s = h.snapshot();
        assert_eq!(
            s.buckets,
            vec![(1.0, 2), (2.0, 4), (5.0, 7), (f64::INFINITY, 8)]
        );
        assert_eq!(s.count, 8);
        assert_eq!(s.sum, 0.5 + 1.0 + 1.5 + 2.0 + 7.0 + 15.0);
        assert!(s.exemplars.is_empty());
    }

    #[test]
    fn observations_from_many_threads_add_up() {
        let h = Arc::new(HistogramCell::new(Arc::from(vec![1.0, 10.0]), false));
        std::thread::scope(|s| {
            for t in 0..8 {
                let h = Arc::clone(&h);
                s.spawn(move || {
                    for _ in 0..1000 {
                        h.record(if t % 2 == 0 { 0.5 } else { 5.0 });
                    }
                });
            }
        });
        let snap = h.snapshot();
        assert_eq!(
            snap.buckets,
            vec![(1.0, 4000), (10.0, 8000), (f64::INFINITY, 8000)]
        );
        assert_eq!(snap.sum, 4000.0 * 0.5 + 4000.0 * 5.0);
    }

    #[test]
    fn exemplar_lands_in_the_observed_bucket() {
        let h = HistogramCell::new(Arc::from(vec![1.0, 2.0]), true);
        h.record(0.5); // no request id in scope: no exemplar
        exemplar::with_request_id("req-7", || h.record(1.5));
        let s = h.snapshot();
        assert_eq!(s.exemplars[0], None);
        let e = s.exemplars[1].as_ref().unwrap();
        assert_eq!((&*e.request_id, e.value), ("req-7", 1.5));
        assert!(e.timestamp > 1.6e9);
        assert_eq!(s.exemplars[2], None);
    }

    #[test]
    fn counter_and_gauge() {
        let c = CounterCell::new();
        c.increment(3);
        c.absolute(2);
        assert_eq!(c.value(), 3.0);
        c.absolute(10);
        assert_eq!(c.value(), 10.0);
        let g = GaugeCell::new();
        g.increment(2.5);
        g.decrement(1.0);
        assert_eq!(g.value(), 1.5);
        g.set(-4.0);
        assert_eq!(g.value(), -4.0);
    }
}
