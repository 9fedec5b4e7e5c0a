//! The node agent's own series: the health of its scrapes of the engine it fronts.
//!
//! The node agent (`vigil probe`), which passes an existing engine's metrics through: whether
//! its last scrape of the engine worked, how long it took, how old the engine's series it serves
//! are, and what of the engine's exposition it had to leave out.

use super::{Kind, Label, MetricDef};

/// Why a scrape of the engine did not count as the engine being up, as the values of
/// `vigil_agent_engine_scrape_errors_total`'s `reason`.
pub const SCRAPE_FAILURES: &[&str] = &[
    // No connection, or it broke.
    "unreachable",
    "timeout",
    // A body over the agent's bound (10 MiB).
    "too_large",
    // An answer other than 200.
    "http_status",
    // A 200 whose body is no Prometheus exposition (an HTML page, say).
    "not_exposition",
    // An exposition without a family of the configured prefixes (another exporter's).
    "no_engine_families",
];

/// `vigil_agent_engine_up`.
pub static ENGINE_UP: MetricDef = MetricDef::new(
    "vigil_agent_engine_up",
    Kind::Gauge,
    "1 if the agent's last scrape of the engine gave a Prometheus exposition with the engine's \
     families, else 0.",
    &[],
);

/// `vigil_agent_engine_scrape_errors`.
pub static ENGINE_SCRAPE_ERRORS: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_errors",
    Kind::Counter,
    "Scrapes of the engine's metrics that failed, by reason (unreachable, timeout, too large, \
     HTTP status, not an exposition, no engine families).",
    &[Label::OneOf {
        name: "reason",
        values: SCRAPE_FAILURES,
    }],
);

/// `vigil_agent_engine_scrape_duration_seconds`: How long the last scrape of the engine's metrics
/// took.
pub static ENGINE_SCRAPE_DURATION: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_duration_seconds",
    Kind::Gauge,
    "How long the last scrape of the engine's metrics took.",
    &[],
);

/// What of the engine's exposition the agent left out because Prometheus would refuse it (and
/// fail the whole scrape for it), as the values of `vigil_agent_engine_exposition_problems_total`'s
/// `reason`.
pub const EXPOSITION_PROBLEMS: &[&str] = &[
    // A line that is not UTF-8.
    "invalid_utf8",
    // A sample line off the grammar: a broken label set, a label value cut by a raw newline.
    "malformed_sample",
    // A HELP or TYPE line without a valid metric name.
    "malformed_metadata",
    // A TYPE other than counter, gauge, histogram, summary, untyped (the line is dropped).
    "unknown_type",
    // A value Prometheus refuses (not a number, out of range like 1e400).
    "invalid_value",
    "invalid_timestamp",
    // One label twice in a sample.
    "duplicate_label",
    // A `__name__` label, which Prometheus's parser refuses.
    "reserved_label",
    // A second HELP or TYPE for a family.
    "duplicate_metadata",
    // A second sample with the same name and labels.
    "duplicate_series",
    // An OpenMetrics exemplar in a text scrape (the exemplar is dropped, the sample kept).
    "exemplar",
];

/// `vigil_agent_engine_exposition_problems`.
pub static ENGINE_EXPOSITION_PROBLEMS: MetricDef = MetricDef::new(
    "vigil_agent_engine_exposition_problems",
    Kind::Counter,
    "Lines of the engine's exposition the agent left out (or, for exemplars, cut short) because \
     Prometheus would fail the whole scrape on them, by reason.",
    &[Label::OneOf {
        name: "reason",
        values: EXPOSITION_PROBLEMS,
    }],
);

/// `vigil_agent_engine_scrape_age_seconds`.
pub static ENGINE_SCRAPE_AGE: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_age_seconds",
    Kind::Gauge,
    "How old the engine's series in this scrape are: the agent answers within the scraper's \
     timeout with the last good scrape of a slow engine while a new one runs (absent when the \
     scrape carries none).",
    &[],
);

/// Every series this module defines.
pub static ALL: &[&MetricDef] = &[
    &ENGINE_UP,
    &ENGINE_SCRAPE_ERRORS,
    &ENGINE_SCRAPE_DURATION,
    &ENGINE_SCRAPE_AGE,
    &ENGINE_EXPOSITION_PROBLEMS,
];
