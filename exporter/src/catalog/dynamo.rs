//! NVIDIA Dynamo's runtime series, named and labelled as Dynamo's Rust runtime does.
//!
//! NVIDIA Dynamo's runtime series, as Dynamo's Rust runtime names and labels them
//! (`lib/llm/src/http/service/metrics.rs` for the frontend, `lib/runtime` for components), so a
//! node running Vigil fits Dynamo's dashboards.
//!
//! - Frontend (`dynamo_frontend_*`): per model, recorded by the API server. The `model` label is
//!   the served model name lower-cased, as Dynamo does; labelled families show no series until
//!   the first request for that label set, as in Dynamo.
//! - Component (`dynamo_component_*`): the engine's `generate` endpoint, labelled with
//!   `dynamo_namespace`, `dynamo_component`, `dynamo_endpoint` (sanitized as Dynamo sanitizes
//!   them) and the worker's `model`/`model_name`.

use super::{Deprecation, Kind, Label, MetricDef};
use crate::buckets::BucketFamily;
use crate::version::MinorVersion;

use Kind::*;

/// Values of `endpoint`.
pub const ENDPOINTS: &[&str] = &[
    "completions",
    "chat_completions",
    "embeddings",
    "images",
    "videos",
    "audios",
    "responses",
    "anthropic_messages",
    "tensor",
];
/// Values of `request_type`.
pub const REQUEST_TYPES: &[&str] = &["stream", "unary"];
/// Values of `status`.
pub const STATUSES: &[&str] = &["success", "error"];
/// Values of `error_type` (`""` on success).
pub const ERROR_TYPES: &[&str] = &[
    "",
    "validation",
    "not_found",
    "overload",
    "unavailable",
    "cancelled",
    "response_timeout",
    "first_token_timeout",
    "intra_token_timeout",
    "internal",
    "not_implemented",
    "backend_error",
    "truncated_stream",
];
/// Values of `dynamo_component_errors_total`'s `error_type`.
pub const COMPONENT_ERROR_TYPES: &[&str] = &[
    "deserialization",
    "invalid_message",
    "response_stream",
    "generate",
    "serialization",
    "publish_response",
    "publish_final",
];

/// The Vigil version that catalogued Dynamo's deprecated gauges as deprecated (they are shown
/// now, hidden in the next minor version, removed in the one after).
pub const DYNAMO_DEPRECATED_IN: MinorVersion = MinorVersion::new(0, 2);

const MODEL: &[Label] = &[Label::Config("model")];

const fn labels<const N: usize>(l: &'static [Label; N]) -> &'static [Label] {
    l
}

/// `dynamo_frontend_requests`: Total number of LLM requests processed.
pub static FRONTEND_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_frontend_requests",
    Counter,
    "Total number of LLM requests processed",
    labels(&[
        Label::Config("model"),
        Label::OneOf {
            name: "endpoint",
            values: ENDPOINTS,
        },
        Label::OneOf {
            name: "request_type",
            values: REQUEST_TYPES,
        },
        Label::OneOf {
            name: "status",
            values: STATUSES,
        },
        Label::OneOf {
            name: "error_type",
            values: ERROR_TYPES,
        },
    ]),
);

/// `dynamo_frontend_active_requests`: Number of active requests (HTTP entry to response complete).
pub static FRONTEND_ACTIVE_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_frontend_active_requests",
    Gauge,
    "Number of active requests (HTTP entry to response complete)",
    MODEL,
);

/// `dynamo_frontend_inflight_requests`: Number of inflight requests.
pub static FRONTEND_INFLIGHT_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_frontend_inflight_requests",
    Gauge,
    "Number of inflight requests",
    MODEL,
)
.deprecated(Deprecation {
    since: DYNAMO_DEPRECATED_IN,
    use_instead: &FRONTEND_ACTIVE_REQUESTS,
});

/// `dynamo_frontend_queued_requests`: Number of requests in HTTP processing queue.
pub static FRONTEND_QUEUED_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_frontend_queued_requests",
    Gauge,
    "Number of requests in HTTP processing queue",
    MODEL,
)
.deprecated(Deprecation {
    since: DYNAMO_DEPRECATED_IN,
    use_instead: &FRONTEND_TIME_TO_FIRST_TOKEN,
});

/// `dynamo_frontend_disconnected_clients`: Number of disconnected clients.
pub static FRONTEND_DISCONNECTED_CLIENTS: MetricDef = MetricDef::new(
    "dynamo_frontend_disconnected_clients",
    Gauge,
    "Number of disconnected clients",
    &[],
);

/// `dynamo_frontend_request_duration_seconds`: Duration of LLM requests.
pub static FRONTEND_REQUEST_DURATION: MetricDef = MetricDef::new(
    "dynamo_frontend_request_duration_seconds",
    Histogram,
    "Duration of LLM requests",
    MODEL,
)
.buckets(BucketFamily::DynamoRequestDuration);

/// `dynamo_frontend_input_sequence_tokens`: Input sequence length in tokens.
pub static FRONTEND_INPUT_SEQUENCE_TOKENS: MetricDef = MetricDef::new(
    "dynamo_frontend_input_sequence_tokens",
    Histogram,
    "Input sequence length in tokens",
    MODEL,
)
.buckets(BucketFamily::DynamoInputSequence);

/// `dynamo_frontend_output_sequence_tokens`: Output sequence length in tokens.
pub static FRONTEND_OUTPUT_SEQUENCE_TOKENS: MetricDef = MetricDef::new(
    "dynamo_frontend_output_sequence_tokens",
    Histogram,
    "Output sequence length in tokens",
    MODEL,
)
.buckets(BucketFamily::DynamoOutputSequence);

/// `dynamo_frontend_cached_tokens`: Number of cached tokens (prefix cache hits) per request.
pub static FRONTEND_CACHED_TOKENS: MetricDef = MetricDef::new(
    "dynamo_frontend_cached_tokens",
    Histogram,
    "Number of cached tokens (prefix cache hits) per request",
    MODEL,
)
.buckets(BucketFamily::DynamoInputSequence);

/// `dynamo_frontend_time_to_first_token_seconds`: Time to first token in seconds.
pub static FRONTEND_TIME_TO_FIRST_TOKEN: MetricDef = MetricDef::new(
    "dynamo_frontend_time_to_first_token_seconds",
    Histogram,
    "Time to first token in seconds",
    MODEL,
)
.buckets(BucketFamily::DynamoTimeToFirstToken);

/// `dynamo_frontend_inter_token_latency_seconds`: Inter-token latency in seconds.
pub static FRONTEND_INTER_TOKEN_LATENCY: MetricDef = MetricDef::new(
    "dynamo_frontend_inter_token_latency_seconds",
    Histogram,
    "Inter-token latency in seconds",
    MODEL,
)
.buckets(BucketFamily::DynamoInterTokenLatency);

/// `dynamo_frontend_output_tokens`: Total number of output tokens generated (updates in real-time).
pub static FRONTEND_OUTPUT_TOKENS: MetricDef = MetricDef::new(
    "dynamo_frontend_output_tokens",
    Counter,
    "Total number of output tokens generated (updates in real-time)",
    MODEL,
);

/// `dynamo_frontend_model_total_kv_blocks`: Total KV cache blocks available for a worker serving
/// the model.
pub static MODEL_TOTAL_KV_BLOCKS: MetricDef = MetricDef::new(
    "dynamo_frontend_model_total_kv_blocks",
    Gauge,
    "Total KV cache blocks available for a worker serving the model",
    MODEL,
);

/// `dynamo_frontend_model_max_num_seqs`: Maximum number of sequences for a worker serving the
/// model.
pub static MODEL_MAX_NUM_SEQS: MetricDef = MetricDef::new(
    "dynamo_frontend_model_max_num_seqs",
    Gauge,
    "Maximum number of sequences for a worker serving the model",
    MODEL,
);

/// `dynamo_frontend_model_max_num_batched_tokens`: Maximum number of batched tokens for a worker
/// serving the model.
pub static MODEL_MAX_NUM_BATCHED_TOKENS: MetricDef = MetricDef::new(
    "dynamo_frontend_model_max_num_batched_tokens",
    Gauge,
    "Maximum number of batched tokens for a worker serving the model",
    MODEL,
);

/// `dynamo_frontend_model_context_length`: Maximum context length in tokens for a worker serving
/// the model.
pub static MODEL_CONTEXT_LENGTH: MetricDef = MetricDef::new(
    "dynamo_frontend_model_context_length",
    Gauge,
    "Maximum context length in tokens for a worker serving the model",
    MODEL,
);

/// `dynamo_frontend_model_kv_cache_block_size`: KV cache block size in tokens for a worker serving
/// the model.
pub static MODEL_KV_CACHE_BLOCK_SIZE: MetricDef = MetricDef::new(
    "dynamo_frontend_model_kv_cache_block_size",
    Gauge,
    "KV cache block size in tokens for a worker serving the model",
    MODEL,
);

/// How many times a request may move to another worker when its worker fails (0: never, which
/// is Vigil's: one engine, no migration).
pub static MODEL_MIGRATION_LIMIT: MetricDef = MetricDef::new(
    "dynamo_frontend_model_migration_limit",
    Gauge,
    "Request migration limit for a worker serving the model",
    MODEL,
);

/// `dynamo_namespace, dynamo_component, dynamo_endpoint` and the worker's `model`, `model_name`.
const COMPONENT: &[Label] = &[
    Label::Config("dynamo_namespace"),
    Label::Config("dynamo_component"),
    Label::Config("dynamo_endpoint"),
    Label::Config("model"),
    Label::Config("model_name"),
];

/// `dynamo_component_requests`: Total number of requests processed by work handler.
pub static COMPONENT_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_component_requests",
    Counter,
    "Total number of requests processed by work handler",
    COMPONENT,
);

/// `dynamo_component_request_duration_seconds`: Time spent processing requests by work handler.
pub static COMPONENT_REQUEST_DURATION: MetricDef = MetricDef::new(
    "dynamo_component_request_duration_seconds",
    Histogram,
    "Time spent processing requests by work handler",
    COMPONENT,
)
.buckets(BucketFamily::PrometheusDefault);

/// `dynamo_component_inflight_requests`: Number of requests currently being processed by work
/// handler.
pub static COMPONENT_INFLIGHT_REQUESTS: MetricDef = MetricDef::new(
    "dynamo_component_inflight_requests",
    Gauge,
    "Number of requests currently being processed by work handler",
    COMPONENT,
);

/// `dynamo_component_request_bytes`: Total number of bytes received in requests by work handler.
pub static COMPONENT_REQUEST_BYTES: MetricDef = MetricDef::new(
    "dynamo_component_request_bytes",
    Counter,
    "Total number of bytes received in requests by work handler",
    COMPONENT,
);

/// `dynamo_component_response_bytes`: Total number of bytes sent in responses by work handler.
pub static COMPONENT_RESPONSE_BYTES: MetricDef = MetricDef::new(
    "dynamo_component_response_bytes",
    Counter,
    "Total number of bytes sent in responses by work handler",
    COMPONENT,
);

/// `dynamo_component_errors`: Total number of errors in work handler processing.
pub static COMPONENT_ERRORS: MetricDef = MetricDef::new(
    "dynamo_component_errors",
    Counter,
    "Total number of errors in work handler processing",
    labels(&[
        Label::Config("dynamo_namespace"),
        Label::Config("dynamo_component"),
        Label::Config("dynamo_endpoint"),
        Label::Config("model"),
        Label::Config("model_name"),
        Label::OneOf {
            name: "error_type",
            values: COMPONENT_ERROR_TYPES,
        },
    ]),
);

/// `dynamo_component_uptime_seconds`: Total uptime of the DistributedRuntime in seconds.
pub static COMPONENT_UPTIME: MetricDef = MetricDef::new(
    "dynamo_component_uptime_seconds",
    Gauge,
    "Total uptime of the DistributedRuntime in seconds",
    &[],
);

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &FRONTEND_REQUESTS,
    &FRONTEND_ACTIVE_REQUESTS,
    &FRONTEND_INFLIGHT_REQUESTS,
    &FRONTEND_QUEUED_REQUESTS,
    &FRONTEND_DISCONNECTED_CLIENTS,
    &FRONTEND_REQUEST_DURATION,
    &FRONTEND_INPUT_SEQUENCE_TOKENS,
    &FRONTEND_OUTPUT_SEQUENCE_TOKENS,
    &FRONTEND_CACHED_TOKENS,
    &FRONTEND_TIME_TO_FIRST_TOKEN,
    &FRONTEND_INTER_TOKEN_LATENCY,
    &FRONTEND_OUTPUT_TOKENS,
    &MODEL_TOTAL_KV_BLOCKS,
    &MODEL_MAX_NUM_SEQS,
    &MODEL_MAX_NUM_BATCHED_TOKENS,
    &MODEL_CONTEXT_LENGTH,
    &MODEL_KV_CACHE_BLOCK_SIZE,
    &MODEL_MIGRATION_LIMIT,
    &COMPONENT_REQUESTS,
    &COMPONENT_REQUEST_DURATION,
    &COMPONENT_INFLIGHT_REQUESTS,
    &COMPONENT_REQUEST_BYTES,
    &COMPONENT_RESPONSE_BYTES,
    &COMPONENT_ERRORS,
    &COMPONENT_UPTIME,
];
