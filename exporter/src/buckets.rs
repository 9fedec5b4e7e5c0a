//! Histogram bucket families, as vLLM defines them (`vllm/v1/metrics/buckets.py`).
//!
//! Every histogram in the catalog names a family instead of spelling out its bounds, so that the
//! bounds live in one place and `--custom-histogram-buckets` can override a family for every
//! histogram that uses it. `+Inf` is implied and never listed.

use std::collections::BTreeMap;

/// A named set of histogram upper bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BucketFamily {
    /// Request-phase latencies in seconds (e2e, queue, inference, prefill, decode).
    RequestLatency,
    /// Time to first token in seconds.
    TimeToFirstToken,
    /// Inter-token latency and time per output token in seconds.
    InterTokenLatency,
    /// Tokens per engine step.
    IterationTokens,
    /// The `n` request parameter.
    RequestParamsN,
    /// Preemptions per request.
    RequestNumPreemptions,
    /// Token counts per request: 1-2-5 series up to `max_model_len`.
    RequestTokens,
    /// KV block residency times in seconds.
    KvCacheResidency,
    /// Powers of two of microseconds, in seconds (2 µs .. 2^26 µs ≈ 67 s): the log2 slots the
    /// eBPF probe aggregates in the kernel. Fixed, since the kernel's slots are.
    Log2Microseconds,
}

impl BucketFamily {
    /// Every family, in the order vLLM's `buckets.py` lists them.
    pub const ALL: [BucketFamily; 8] = [
        BucketFamily::RequestLatency,
        BucketFamily::TimeToFirstToken,
        BucketFamily::InterTokenLatency,
        BucketFamily::IterationTokens,
        BucketFamily::RequestParamsN,
        BucketFamily::RequestNumPreemptions,
        BucketFamily::RequestTokens,
        BucketFamily::KvCacheResidency,
    ];

    /// Families whose bounds mirror an aggregation made elsewhere and cannot be overridden.
    pub const FIXED: [BucketFamily; 1] = [BucketFamily::Log2Microseconds];

    /// The number of log2 slots the eBPF probe keeps (`NR_SLOTS` in probes/bpf/sched.h): slot
    /// `k` < 26 holds waits of `2^k..2^(k+1)` µs (0 and 1 µs in slot 0) and is the bucket
    /// `le=2^(k+1)` µs; the last slot is `+Inf`.
    pub const LOG2_SLOTS: usize = 27;

    /// The key vLLM's `--custom-histogram-buckets` uses for this family.
    pub const fn key(self) -> &'static str {
        match self {
            BucketFamily::RequestLatency => "request_latency",
            BucketFamily::TimeToFirstToken => "time_to_first_token",
            BucketFamily::InterTokenLatency => "inter_token_latency",
            BucketFamily::IterationTokens => "iteration_tokens",
            BucketFamily::RequestParamsN => "request_params_n",
            BucketFamily::RequestNumPreemptions => "request_num_preemptions",
            BucketFamily::RequestTokens => "request_tokens",
            BucketFamily::KvCacheResidency => "kv_cache_residency",
            BucketFamily::Log2Microseconds => "log2_microseconds",
        }
    }

    /// Looks a family up by its `--custom-histogram-buckets` key.
    pub fn from_key(key: &str) -> Option<BucketFamily> {
        Self::ALL.into_iter().find(|f| f.key() == key)
    }

    /// The default bounds; `max_model_len` matters only for [`BucketFamily::RequestTokens`].
    pub fn default_bounds(self, max_model_len: u64) -> Vec<f64> {
        match self {
            BucketFamily::RequestLatency => vec![
                0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
                120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
            ],
            BucketFamily::TimeToFirstToken => vec![
                0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
            ],
            BucketFamily::InterTokenLatency => vec![
                0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                10.0, 20.0, 40.0, 80.0,
            ],
            BucketFamily::IterationTokens => vec![
                1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0,
                16384.0,
            ],
            BucketFamily::RequestParamsN => vec![1.0, 2.0, 5.0, 10.0, 20.0],
            BucketFamily::RequestNumPreemptions => vec![1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0],
            BucketFamily::RequestTokens => build_1_2_5_buckets(max_model_len),
            BucketFamily::KvCacheResidency => vec![
                0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0,
                30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
            ],
            BucketFamily::Log2Microseconds => (1..Self::LOG2_SLOTS as i32)
                .map(|k| 2f64.powi(k) * 1e-6)
                .collect(),
        }
    }
}

/// vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, ... up to and including `max_value`,
/// stopping at the first value that exceeds it.
pub fn build_1_2_5_buckets(max_value: u64) -> Vec<f64> {
    let mut buckets = Vec::new();
    let mut scale: u64 = 1;
    loop {
        for mantissa in [1u64, 2, 5] {
            match mantissa.checked_mul(scale) {
                Some(v) if v <= max_value => buckets.push(v as f64),
                _ => return buckets,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return buckets,
        };
    }
}

/// Why a `--custom-histogram-buckets` value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BucketError {
    #[error("unknown histogram bucket family {0:?}; known families: {known}", known = known_keys())]
    UnknownFamily(String),
    #[error("bucket list for {0:?} is empty")]
    Empty(String),
    #[error("bucket bound {bound} for {family:?} must be finite and > 0")]
    NotPositive { family: String, bound: f64 },
    #[error("bucket bounds for {0:?} must be strictly increasing")]
    NotIncreasing(String),
}

fn known_keys() -> String {
    BucketFamily::ALL.map(BucketFamily::key).join(", ")
}

/// The bounds every histogram family resolves to for one run: defaults, `max_model_len`, and the
/// user's overrides, validated as vLLM's `ObservabilityConfig` validates them.
#[derive(Debug, Clone, PartialEq)]
pub struct BucketConfig {
    max_model_len: u64,
    overrides: BTreeMap<BucketFamily, Vec<f64>>,
}

impl BucketConfig {
    /// Defaults for a model whose context is `max_model_len` tokens.
    pub fn new(max_model_len: u64) -> Self {
        BucketConfig {
            max_model_len,
            overrides: BTreeMap::new(),
        }
    }

    /// Replaces the bounds of the family named `key`.
    pub fn with_override(mut self, key: &str, bounds: Vec<f64>) -> Result<Self, BucketError> {
        // `from_key` knows only the overridable families.
        let family =
            BucketFamily::from_key(key).ok_or_else(|| BucketError::UnknownFamily(key.into()))?;
        if bounds.is_empty() {
            return Err(BucketError::Empty(key.into()));
        }
        if let Some(&bound) = bounds.iter().find(|b| !b.is_finite() || **b <= 0.0) {
            return Err(BucketError::NotPositive {
                family: key.into(),
                bound,
            });
        }
        if bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err(BucketError::NotIncreasing(key.into()));
        }
        self.overrides.insert(family, bounds);
        Ok(self)
    }

    /// The `max_model_len` the token-count buckets were computed from.
    pub fn max_model_len(&self) -> u64 {
        self.max_model_len
    }

    /// The upper bounds (without `+Inf`) of `family` for this run.
    pub fn bounds(&self, family: BucketFamily) -> Vec<f64> {
        match self.overrides.get(&family) {
            Some(b) => b.clone(),
            None => family.default_bounds(self.max_model_len),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_two_five_matches_vllm_examples() {
        assert_eq!(
            build_1_2_5_buckets(1024),
            vec![1., 2., 5., 10., 20., 50., 100., 200., 500., 1000.]
        );
        assert_eq!(build_1_2_5_buckets(2048).last(), Some(&2000.0));
        assert_eq!(build_1_2_5_buckets(4096).last(), Some(&2000.0));
        assert_eq!(build_1_2_5_buckets(8192).last(), Some(&5000.0));
        assert_eq!(build_1_2_5_buckets(32768).last(), Some(&20000.0));
        assert_eq!(build_1_2_5_buckets(131072).last(), Some(&100000.0));
        assert_eq!(build_1_2_5_buckets(1048576).last(), Some(&1000000.0));
        // Inclusive at the boundary, empty below 1, and no overflow at the top.
        assert_eq!(build_1_2_5_buckets(1000).last(), Some(&1000.0));
        assert!(build_1_2_5_buckets(0).is_empty());
        assert_eq!(build_1_2_5_buckets(u64::MAX).len(), 58);
    }

    #[test]
    fn overrides_are_validated_like_vllm() {
        let c = BucketConfig::new(2048);
        assert!(matches!(
            c.clone().with_override("nope", vec![1.0]),
            Err(BucketError::UnknownFamily(_))
        ));
        assert!(matches!(
            c.clone().with_override("request_latency", vec![]),
            Err(BucketError::Empty(_))
        ));
        assert!(matches!(
            c.clone().with_override("request_latency", vec![0.0, 1.0]),
            Err(BucketError::NotPositive { .. })
        ));
        assert!(matches!(
            c.clone()
                .with_override("request_latency", vec![1.0, f64::INFINITY]),
            Err(BucketError::NotPositive { .. })
        ));
        assert!(matches!(
            c.clone().with_override("request_latency", vec![1.0, 1.0]),
            Err(BucketError::NotIncreasing(_))
        ));
        let c = c.with_override("request_tokens", vec![3.0, 7.0]).unwrap();
        assert_eq!(c.bounds(BucketFamily::RequestTokens), vec![3.0, 7.0]);
        assert_eq!(
            c.bounds(BucketFamily::RequestParamsN),
            vec![1.0, 2.0, 5.0, 10.0, 20.0]
        );
    }

    #[test]
    fn every_default_family_is_strictly_increasing_and_positive() {
        for f in BucketFamily::ALL {
            let b = f.default_bounds(8192);
            assert!(!b.is_empty(), "{f:?}");
            assert!(b.iter().all(|x| *x > 0.0), "{f:?}");
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{f:?}");
            assert_eq!(BucketFamily::from_key(f.key()), Some(f));
        }
    }
}
