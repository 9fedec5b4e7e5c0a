//! The node agent (`vigil probe`), which passes an existing engine's metrics through: whether
//! its last scrape of the engine worked, and how long it took.

use super::{Kind, MetricDef};

pub static ENGINE_UP: MetricDef = MetricDef::new(
    "vigil_agent_engine_up",
    Kind::Gauge,
    "1 if the agent's last scrape of the engine's metrics succeeded, else 0.",
    &[],
);

pub static ENGINE_SCRAPE_ERRORS: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_errors",
    Kind::Counter,
    "Scrapes of the engine's metrics that failed (unreachable, timeout, not HTTP 200).",
    &[],
);

pub static ENGINE_SCRAPE_DURATION: MetricDef = MetricDef::new(
    "vigil_agent_engine_scrape_duration_seconds",
    Kind::Gauge,
    "How long the last scrape of the engine's metrics took.",
    &[],
);

pub static ALL: &[&MetricDef] = &[&ENGINE_UP, &ENGINE_SCRAPE_ERRORS, &ENGINE_SCRAPE_DURATION];
