//! Structured outputs' series: constrained requests by kind, mask and compile time.
//!
//! Structured outputs (`response_format`, `structured_outputs`, vLLM's `guided_*` fields): how
//! many requests held their output to a constraint, by kind, and the time the engine spent
//! computing their token masks, and the time compiling the constraints took. The masks are computed beside the step's forward pass (the next
//! token's mask needs only the tokens already sampled), so they add to the step's latency only
//! where they outlast the pass: read them next to `vllm:inter_token_latency_seconds`.

use super::{Kind, Label, MetricDef};
use crate::buckets::BucketFamily;

/// Values of `kind`: a JSON schema, any JSON object, a regular expression, a list of choices, a
/// Lark grammar.
pub const KINDS: &[&str] = &["json", "json_object", "regex", "choice", "grammar"];

/// `vigil_structured_output_requests`: Finished requests whose output was held to a
/// structured-output constraint, by kind of constraint.
pub static REQUESTS: MetricDef = MetricDef::new(
    "vigil_structured_output_requests",
    Kind::Counter,
    "Finished requests whose output was held to a structured-output constraint, by kind of constraint.",
    &[
        Label::ModelName,
        Label::Engine,
        Label::OneOf {
            name: "kind",
            values: KINDS,
        },
    ],
)
.precreate()
.engine_stat();

/// `vigil_structured_output_mask_seconds`: Time one engine step spent computing the token masks of
/// its constrained requests (beside the forward pass; it adds to the step's latency where it
/// outlasts the pass).
pub static MASK_SECONDS: MetricDef = MetricDef::new(
    "vigil_structured_output_mask_seconds",
    Kind::Histogram,
    "Time one engine step spent computing the token masks of its constrained requests (beside the forward pass; it adds to the step's latency where it outlasts the pass).",
    &[Label::ModelName, Label::Engine],
)
.buckets(BucketFamily::Log2Microseconds)
.engine_stat();

/// `vigil_structured_output_failures`: Requests that ended with an error because their constraint
/// failed mid-answer (llguidance reached one of its limits on the grammar), by kind of constraint:
/// their output could no longer be held to it.
pub static FAILED: MetricDef = MetricDef::new(
    "vigil_structured_output_failures",
    Kind::Counter,
    "Requests that ended with an error because their constraint failed mid-answer (llguidance reached one of its limits on the grammar), by kind of constraint: their output could no longer be held to it.",
    &[
        Label::ModelName,
        Label::Engine,
        Label::OneOf {
            name: "kind",
            values: KINDS,
        },
    ],
)
.precreate()
.engine_stat();

/// Values of `outcome`: compiled, refused (invalid or past a bound: a 400), or given up at the
/// compile deadline (a 400 when it was running, a 503 when it never started).
pub const COMPILE_OUTCOMES: &[&str] = &["compiled", "refused", "timed_out"];

/// `vigil_structured_output_compile_seconds`: Time compiling requests' constraints took on the
/// grammar threads (apart from requests that have none; waiting for a thread not included), by kind
/// and outcome.
pub static COMPILE_SECONDS: MetricDef = MetricDef::new(
    "vigil_structured_output_compile_seconds",
    Kind::Histogram,
    "Time compiling requests' constraints took on the grammar threads (apart from requests that have none; waiting for a thread not included), by kind and outcome.",
    &[
        Label::OneOf {
            name: "kind",
            values: KINDS,
        },
        Label::OneOf {
            name: "outcome",
            values: COMPILE_OUTCOMES,
        },
    ],
)
// The Prometheus client's default buckets (5 ms .. 10 s) span compiles from trivial to the
// deadline; every kind and outcome is there from the start.
.buckets(BucketFamily::PrometheusDefault)
.precreate();

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[&REQUESTS, &FAILED, &MASK_SECONDS, &COMPILE_SECONDS];
