//! Vigil as a service: what happened to requests while it drained for a stop (SIGTERM).

use super::{Kind, Label, MetricDef};

/// Values of `outcome`: a request in flight when the drain began either `completed` within the
/// grace period or was `aborted` at its end; one arriving during the drain was `rejected` (503
/// with `Retry-After`).
pub const DRAIN_OUTCOMES: &[&str] = &["completed", "aborted", "rejected"];

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

pub static ALL: &[&MetricDef] = &[&DRAIN_REQUESTS];
