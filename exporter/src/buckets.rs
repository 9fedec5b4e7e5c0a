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
    /// Dynamo's frontend request duration in seconds: log buckets (1, 512, 10).
    DynamoRequestDuration,
    /// Dynamo's input sequence (and cached) tokens: log buckets (50, 128000, 12).
    DynamoInputSequence,
    /// Dynamo's output sequence tokens: log buckets (50, 32000, 10).
    DynamoOutputSequence,
    /// Dynamo's time to first token in seconds: log buckets (0.001, 480, 18).
    DynamoTimeToFirstToken,
    /// Dynamo's inter-token latency in seconds: log buckets (0.001, 2, 13).
    DynamoInterTokenLatency,
    /// The Prometheus client's default buckets (Dynamo's component request duration).
    PrometheusDefault,
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

    /// Families whose bounds are not set by `--custom-histogram-buckets`: the kernel's log2
    /// slots, and Dynamo's (set by its `DYN_METRICS_*` environment, see `DynamoLogBuckets`).
    pub const FIXED: [BucketFamily; 7] = [
        BucketFamily::Log2Microseconds,
        BucketFamily::DynamoRequestDuration,
        BucketFamily::DynamoInputSequence,
        BucketFamily::DynamoOutputSequence,
        BucketFamily::DynamoTimeToFirstToken,
        BucketFamily::DynamoInterTokenLatency,
        BucketFamily::PrometheusDefault,
    ];

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
            BucketFamily::DynamoRequestDuration => "dynamo_request_duration",
            BucketFamily::DynamoInputSequence => "dynamo_input_sequence",
            BucketFamily::DynamoOutputSequence => "dynamo_output_sequence",
            BucketFamily::DynamoTimeToFirstToken => "dynamo_ttft",
            BucketFamily::DynamoInterTokenLatency => "dynamo_itl",
            BucketFamily::PrometheusDefault => "prometheus_default",
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
            BucketFamily::PrometheusDefault => vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
            dynamo => {
                let d = DynamoLogBuckets::of(dynamo).expect("a Dynamo family");
                generate_log_buckets(d.min, d.max, d.count)
            }
        }
    }
}

/// One of Dynamo's log-spaced histogram families: its defaults and the environment variables
/// that override them (`DYN_METRICS_<KEY>_{MIN,MAX,COUNT}`, and the older
/// `DYN_HISTOGRAM_DYN_METRICS_<KEY>_*` spelling Dynamo still reads).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct DynamoLogBuckets {
    pub family: BucketFamily,
    pub env_key: &'static str,
    pub min: f64,
    pub max: f64,
    pub count: u32,
}

impl DynamoLogBuckets {
    pub(crate) const ALL: [DynamoLogBuckets; 5] = [
        DynamoLogBuckets::new(
            BucketFamily::DynamoRequestDuration,
            "REQUEST_DURATION",
            1.0,
            512.0,
            10,
        ),
        DynamoLogBuckets::new(
            BucketFamily::DynamoInputSequence,
            "INPUT_SEQUENCE",
            50.0,
            128000.0,
            12,
        ),
        DynamoLogBuckets::new(
            BucketFamily::DynamoOutputSequence,
            "OUTPUT_SEQUENCE",
            50.0,
            32000.0,
            10,
        ),
        DynamoLogBuckets::new(
            BucketFamily::DynamoTimeToFirstToken,
            "TTFT",
            0.001,
            480.0,
            18,
        ),
        DynamoLogBuckets::new(BucketFamily::DynamoInterTokenLatency, "ITL", 0.001, 2.0, 13),
    ];

    const fn new(
        family: BucketFamily,
        env_key: &'static str,
        min: f64,
        max: f64,
        count: u32,
    ) -> Self {
        DynamoLogBuckets {
            family,
            env_key,
            min,
            max,
            count,
        }
    }

    pub(crate) fn of(family: BucketFamily) -> Option<DynamoLogBuckets> {
        Self::ALL.into_iter().find(|d| d.family == family)
    }

    /// The bounds after the environment's overrides, read through `env` (so tests need not
    /// touch the process environment). Invalid settings (min <= 0, min >= max, count 0 or
    /// above 512, unparsable) fall back to the defaults, as in Dynamo; the warning says so.
    pub(crate) fn bounds_from_env(&self, env: &dyn Fn(&str) -> Option<String>) -> Vec<f64> {
        let read = |part: &str| {
            let name = format!("DYN_METRICS_{}_{part}", self.env_key);
            env(&name).or_else(|| env(&format!("DYN_HISTOGRAM_{name}")))
        };
        let parse = |part: &str, default: f64| match read(part) {
            None => Some(default),
            Some(v) => v.trim().parse::<f64>().ok(),
        };
        let (min, max, count) = (
            parse("MIN", self.min),
            parse("MAX", self.max),
            parse("COUNT", f64::from(self.count)),
        );
        match (min, max, count) {
            (Some(min), Some(max), Some(count))
                if min > 0.0
                    && min < max
                    && (1.0..=512.0).contains(&count)
                    && count.fract() == 0.0 =>
            {
                generate_log_buckets(min, max, count as u32)
            }
            _ => {
                tracing::warn!(
                    "DYN_METRICS_{}_{{MIN,MAX,COUNT}} invalid; using the defaults ({}, {}, {})",
                    self.env_key,
                    self.min,
                    self.max,
                    self.count
                );
                generate_log_buckets(self.min, self.max, self.count)
            }
        }
    }
}

/// Dynamo's `generate_log_buckets`: `0`, then `count - 1` log-spaced values from
/// `min * (max/min)^(1/(count-1))` up to `max`, each rounded to two significant figures, with
/// consecutive duplicates removed.
pub(crate) fn generate_log_buckets(min: f64, max: f64, count: u32) -> Vec<f64> {
    let mut buckets = vec![0.0];
    if count <= 1 {
        return buckets;
    }
    let steps = f64::from(count - 1);
    for i in 1..count {
        let v = round_to_significant(min * (max / min).powf(f64::from(i) / steps), 2);
        if buckets.last() != Some(&v) {
            buckets.push(v);
        }
    }
    buckets
}

fn round_to_significant(v: f64, figures: i32) -> f64 {
    if v == 0.0 {
        return 0.0;
    }
    let magnitude = v.abs().log10().floor() as i32;
    let scale = 10f64.powi(figures - 1 - magnitude);
    (v * scale).round() / scale
}

/// vLLM's `build_1_2_5_buckets`: 1, 2, 5, 10, 20, 50, ... up to and including `max_value`,
/// stopping at the first value that exceeds it.
pub(crate) fn build_1_2_5_buckets(max_value: u64) -> Vec<f64> {
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

    /// Applies Dynamo's `DYN_METRICS_*` environment (read through `env`) to its histogram
    /// families; see `DynamoLogBuckets::bounds_from_env`.
    pub fn with_dynamo_env(mut self, env: &dyn Fn(&str) -> Option<String>) -> Self {
        for d in DynamoLogBuckets::ALL {
            self.overrides.insert(d.family, d.bounds_from_env(env));
        }
        self
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
    fn dynamo_log_buckets_match_dynamos_defaults() {
        let b = |f| BucketFamily::default_bounds(f, 0);
        assert_eq!(
            b(BucketFamily::DynamoRequestDuration),
            vec![0., 2., 4., 8., 16., 32., 64., 130., 260., 510.]
        );
        assert_eq!(
            b(BucketFamily::DynamoInputSequence),
            vec![0., 100., 210., 430., 870., 1800., 3600., 7400., 15000., 31000., 63000., 130000.]
        );
        assert_eq!(
            b(BucketFamily::DynamoOutputSequence),
            vec![0., 100., 210., 430., 880., 1800., 3700., 7600., 16000., 32000.]
        );
        assert_eq!(
            b(BucketFamily::DynamoTimeToFirstToken),
            vec![
                0., 0.0022, 0.0047, 0.01, 0.022, 0.047, 0.1, 0.22, 0.47, 1., 2.2, 4.7, 10., 22.,
                48., 100., 220., 480.
            ]
        );
        assert_eq!(
            b(BucketFamily::DynamoInterTokenLatency),
            vec![0., 0.0019, 0.0035, 0.0067, 0.013, 0.024, 0.045, 0.084, 0.16, 0.3, 0.56, 1.1, 2.]
        );
    }

    #[test]
    fn dynamo_env_overrides_and_their_fallbacks() {
        let ttft = DynamoLogBuckets::of(BucketFamily::DynamoTimeToFirstToken).unwrap();
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        let set = env(&[
            ("DYN_METRICS_TTFT_MIN", "1"),
            ("DYN_METRICS_TTFT_MAX", "100"),
            ("DYN_METRICS_TTFT_COUNT", "3"),
        ]);
        assert_eq!(ttft.bounds_from_env(&set), vec![0., 10., 100.]);
        // The older doubled spelling is read too.
        let old = env(&[
            ("DYN_HISTOGRAM_DYN_METRICS_TTFT_COUNT", "3"),
            ("DYN_METRICS_TTFT_MIN", "1"),
            ("DYN_METRICS_TTFT_MAX", "100"),
        ]);
        assert_eq!(ttft.bounds_from_env(&old), vec![0., 10., 100.]);
        // Invalid: defaults.
        let defaults = BucketFamily::DynamoTimeToFirstToken.default_bounds(0);
        for bad in [
            &[("DYN_METRICS_TTFT_MIN", "0")][..],
            &[("DYN_METRICS_TTFT_MIN", "500")],
            &[("DYN_METRICS_TTFT_COUNT", "0")],
            &[("DYN_METRICS_TTFT_COUNT", "513")],
            &[("DYN_METRICS_TTFT_MAX", "lots")],
        ] {
            let vars: &'static [(&'static str, &'static str)] = bad;
            assert_eq!(ttft.bounds_from_env(&env(vars)), defaults, "{bad:?}");
        }
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
