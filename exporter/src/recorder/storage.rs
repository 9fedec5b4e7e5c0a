//! The cells behind every series: lock-free counters, gauges and fixed-bucket histograms.
//!
//! Histograms keep one atomic count per bucket (not raw samples, as metrics-util's `AtomicBucket`
//! does), so an observation is a binary search and two atomic adds, and rendering reads the
//! counts without draining anything.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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
#[derive(Debug)]
pub struct CounterCell {
    value: AtomicU64,
    created: f64,
}

impl CounterCell {
    pub(crate) fn new() -> Self {
        CounterCell {
            value: AtomicU64::new(0),
            created: unix_now(),
        }
    }
    pub fn value(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
    pub fn created(&self) -> f64 {
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
pub struct GaugeCell {
    bits: AtomicU64,
}

impl GaugeCell {
    pub(crate) fn new() -> Self {
        GaugeCell {
            bits: AtomicU64::new(0f64.to_bits()),
        }
    }
    pub fn value(&self) -> f64 {
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
pub struct Exemplar {
    pub request_id: Box<str>,
    pub value: f64,
    pub timestamp: f64,
}

/// A histogram with explicit upper bounds (`+Inf` implied).
#[derive(Debug)]
pub struct HistogramCell {
    bounds: Arc<[f64]>,
    /// Non-cumulative counts; the last one is the `+Inf` bucket.
    counts: Box<[AtomicU64]>,
    sum_bits: AtomicU64,
    /// One slot per bucket when exemplars are on for this histogram.
    exemplars: Option<Box<[Mutex<Option<Exemplar>>]>>,
    created: f64,
}

/// A consistent-enough read of a histogram for rendering: cumulative counts per bound.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)`, ending with `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum: f64,
    /// Per bucket, aligned with `buckets`; empty when exemplars are off.
    pub exemplars: Vec<Option<Exemplar>>,
}

impl HistogramCell {
    pub(crate) fn new(bounds: Arc<[f64]>, with_exemplars: bool) -> Self {
        let n = bounds.len() + 1;
        HistogramCell {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            exemplars: with_exemplars.then(|| (0..n).map(|_| Mutex::new(None)).collect()),
            bounds,
            created: unix_now(),
        }
    }

    pub fn created(&self) -> f64 {
        self.created
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (
                    self.bounds.get(i).copied().unwrap_or(f64::INFINITY),
                    cumulative,
                )
            })
            .collect();
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
            sum: f64::from_bits(self.sum_bits.load(Ordering::Relaxed)),
            exemplars,
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
        self.counts[index].fetch_add(count as u64, Ordering::Relaxed);
        let _ = self
            .sum_bits
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some((f64::from_bits(b) + value * count as f64).to_bits())
            });
        if let Some(slots) = &self.exemplars {
            exemplar::current(|id| {
                if let Some(id) = id {
                    let e = Exemplar {
                        request_id: id.into(),
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
        assert_eq!(c.value(), 3);
        c.absolute(10);
        assert_eq!(c.value(), 10);
        let g = GaugeCell::new();
        g.increment(2.5);
        g.decrement(1.0);
        assert_eq!(g.value(), 1.5);
        g.set(-4.0);
        assert_eq!(g.value(), -4.0);
    }
}
