//! The node agent (`vigil probe`), which passes an existing engine's metrics through: whether
//! its last scrape of the engine worked, and how long it took.

use super::{Kind, Label, MetricDef};

/// Why a scrape of the engine did not count as the engine being up, as the values of
/// `vigil_agent_engine_scrape_errors_total`'s `reason`.
pub const SCRAPE_FAILURES: &[&str] = &[
    // No connection, or it broke.
    "unreachable",
    "timeout",
    // An answer other than 200.
    "http_status",
    // A 200 whose body is no Prometheus exposition (an HTML page, say).
    "not_exposition",
    // An exposition without a family of the configured prefixes (another exporter's).
    "no_engine_families",
];

pub static ENGINE_UP: MetricDef = MetricDef::new(
    "vigil_agent_engine_up",
    Kind::Gauge,
    "1 if the agent's last scrape of the engine gave a Prometheus exposition with the engine's \
     families, else 0.",
    &[],
);

pub static ENGINE_SCRAPE_ERRORS: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_errors",
    Kind::Counter,
    "Scrapes of the engine's metrics that failed, by reason (unreachable, timeout, HTTP status, \
     not an exposition, no engine families).",
    &[Label::OneOf {
        name: "reason",
        values: SCRAPE_FAILURES,
    }],
);

pub static ENGINE_SCRAPE_DURATION: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_duration_seconds",
    Kind::Gauge,
    "How long the last scrape of the engine's metrics took.",
    &[],
);

pub static ALL: &[&MetricDef] = &[&ENGINE_UP, &ENGINE_SCRAPE_ERRORS, &ENGINE_SCRAPE_DURATION];
