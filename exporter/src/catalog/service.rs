//! Vigil as a service: drains, refused connections, CPU pool queueing, exported traces.
//!
//! Vigil as a service: what happened to requests while it drained for a stop (SIGTERM),
//! connections the HTTP server turned away, requests' CPU work waiting for a thread, and what became of the request traces it exports.

use super::{Kind, Label, MetricDef};

/// Values of `outcome`: a request in flight when the drain began either `completed` within the
/// grace period or was `aborted` at its end; one arriving during the drain was `rejected` (503
/// with `Retry-After`).
pub const DRAIN_OUTCOMES: &[&str] = &["completed", "aborted", "rejected"];

/// `vigil_drain_requests`: Requests seen while draining for shutdown, by what became of them.
pub static DRAIN_REQUESTS: MetricDef = MetricDef::new(
    "vigil_drain_requests",
    Kind::Counter,
    "Requests seen while draining for shutdown, by what became of them.",
    &[Label::OneOf {
        name: "outcome",
        values: DRAIN_OUTCOMES,
    }],
)
.precreate();

/// Values of `reason`: the server already held `--max-connections` (`over_limit`), the process
/// ran out of file descriptors (`out_of_files`, raise `LimitNOFILE=`), or accepting failed
/// otherwise (`accept_error`); `idle` counts connections closed after sending nothing for the
/// idle timeout.
pub const CONNECTION_DROP_REASONS: &[&str] =
    &["over_limit", "out_of_files", "accept_error", "idle"];

/// `vigil_http_connections_dropped`: Connections the HTTP server refused or closed, by reason.
pub static HTTP_CONNECTIONS_DROPPED: MetricDef = MetricDef::new(
    "vigil_http_connections_dropped",
    Kind::Counter,
    "Connections the HTTP server refused or closed, by reason.",
    &[Label::OneOf {
        name: "reason",
        values: CONNECTION_DROP_REASONS,
    }],
)
.precreate();

/// `vigil_http_connections_open`: Connections the HTTP server holds open.
pub static HTTP_CONNECTIONS_OPEN: MetricDef = MetricDef::new(
    "vigil_http_connections_open",
    Kind::Gauge,
    "Connections the HTTP server holds open.",
    &[],
);

/// `vigil_slow_client_aborts`: Requests aborted because their client stopped reading their stream
/// (its unread events reached the bound).
pub static SLOW_CLIENT_ABORTS: MetricDef = MetricDef::new(
    "vigil_slow_client_aborts",
    Kind::Counter,
    "Requests aborted because their client stopped reading their stream (its unread events reached the bound).",
    &[],
)
.precreate();

/// Values of `outcome`: spans the collector took (`exported`), spans in a batch the export of
/// which failed (`failed`: collector unreachable, refusing, or slower than the export timeout),
/// and spans dropped before export because the queue was full (`dropped`).
pub const SPAN_OUTCOMES: &[&str] = &["exported", "failed", "dropped"];

/// `vigil_trace_spans`.
pub static TRACE_SPANS: MetricDef = MetricDef::new(
    "vigil_trace_spans",
    Kind::Counter,
    "Request trace spans (--otlp-traces-endpoint) by what became of them: exported to the \
     collector, failed in export, or dropped with the export queue full.",
    &[Label::OneOf {
        name: "outcome",
        values: SPAN_OUTCOMES,
    }],
)
.precreate();

/// Values of `pool`: requests' body parsing, chat templates and tokenization (`request`), and
/// structured-output compiles (`grammar`).
pub const CPU_POOLS: &[&str] = &["request", "grammar"];

/// Values of `state`: queued for a thread of the pool, or on one.
pub const CPU_POOL_JOB_STATES: &[&str] = &["waiting", "running"];

/// `vigil_cpu_pool_jobs`: Requests' CPU work before the engine sees them (parsing, templates,
/// tokenization; constraint compiles), waiting for or running on a thread of its pool. Requests
/// here are in no vllm: queue yet.
pub static CPU_POOL_JOBS: MetricDef = MetricDef::new(
    "vigil_cpu_pool_jobs",
    Kind::Gauge,
    "Requests' CPU work before the engine sees them (parsing, templates, tokenization; constraint compiles), waiting for or running on a thread of its pool. Requests here are in no vllm: queue yet.",
    &[
        Label::OneOf {
            name: "pool",
            values: CPU_POOLS,
        },
        Label::OneOf {
            name: "state",
            values: CPU_POOL_JOB_STATES,
        },
    ],
)
.precreate();

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &CPU_POOL_JOBS,
    &DRAIN_REQUESTS,
    &SLOW_CLIENT_ABORTS,
    &HTTP_CONNECTIONS_DROPPED,
    &HTTP_CONNECTIONS_OPEN,
    &TRACE_SPANS,
];
