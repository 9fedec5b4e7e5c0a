//! `vigil_probe_up{probe,reason}`: whether each probe runs, and a closed set of reasons why not.
//!
//! `vigil_probe_up{probe,reason}`: one series per probe, 1 while it runs, else 0 with the reason
//! it is off. The reason is a closed set (the catalog's [`probe::REASONS`]); the details go to
//! the log line, never into a label.

use exporter::catalog::probe::{self, PROBE_UP};
use exporter::Exporter;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probe {
    Nvml,
    Ebpf,
}

impl Probe {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Probe::Nvml => "nvml",
            Probe::Ebpf => "ebpf",
        }
    }
}

/// Whether a probe runs, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Running,
    Off {
        /// One of [`probe::REASONS`].
        reason: &'static str,
        /// For the log: the error as the library or kernel gave it.
        detail: String,
    },
}

impl State {
    pub fn off(reason: &'static str, detail: impl Into<String>) -> State {
        debug_assert!(probe::REASONS.contains(&reason), "{reason}");
        State::Off {
            reason,
            detail: detail.into(),
        }
    }

    pub fn disabled() -> State {
        State::off("disabled", "turned off on the command line")
    }

    /// `reason: detail`, for error messages.
    pub fn describe(&self) -> String {
        match self {
            State::Running => "running".into(),
            State::Off { reason, detail } => format!("{reason}: {detail}"),
        }
    }

    pub fn reason(&self) -> &'static str {
        match self {
            State::Running => "running",
            State::Off { reason, .. } => reason,
        }
    }
}

/// Sets the probe's status series (removing the one of its previous reason) and logs the change.
pub(crate) fn set(exporter: &Exporter, which: Probe, state: &State) {
    for reason in probe::REASONS {
        exporter.remove_series(&PROBE_UP, &labels(which, reason));
    }
    let up = if *state == State::Running { 1.0 } else { 0.0 };
    exporter
        .set_gauge(&PROBE_UP, &labels(which, state.reason()), up)
        .expect("vigil_probe_up takes probe and reason");
    match state {
        State::Running => tracing::info!(probe = which.label(), "probe running"),
        State::Off { reason, detail } => {
            tracing::warn!(probe = which.label(), reason, "probe off: {detail}")
        }
    }
}

fn labels(which: Probe, reason: &str) -> [(&'static str, String); 2] {
    [("probe", which.label().into()), ("reason", reason.into())]
}
