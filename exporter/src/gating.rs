//! vLLM's deprecation policy for metrics, as a pure function.
//!
//! A metric deprecated in `X.Y` is shown in `X.Y` (its HELP says so), hidden in `X.Y+1` unless the
//! operator passes `--show-hidden-metrics-for-version=X.Y`, and gone from `X.Y+2` on.
//!
//! Each series follows the version line of whoever defines it. The `vllm:` series are vLLM's:
//! the catalog is vLLM [`VLLM_CATALOG`]'s, so they are gated as in that release, and the value a
//! vLLM operator passes there (its previous minor) works unchanged here. Every other series is
//! Vigil's own (its `dynamo_` and hardware series included) and follows Vigil's version. The
//! flag takes the previous minor of either line. Unlike vLLM, which silently ignores any other
//! value, Vigil refuses it at start-up and lists the values it accepts, as Kubernetes'
//! `--show-hidden-metrics-for-version` does.

use crate::catalog::MetricDef;
use crate::version::MinorVersion;

/// The vLLM release whose metrics the catalog reproduces.
pub(crate) const VLLM_CATALOG: MinorVersion = MinorVersion::new(0, 33);

/// The versions the gate compares against, one per version line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Running {
    /// For the `vllm:` series: the vLLM release the catalog follows.
    pub vllm: MinorVersion,
    /// For every other series: this build of Vigil.
    pub vigil: MinorVersion,
}

impl Running {
    /// The lines of this build.
    pub fn current() -> Running {
        Running {
            vllm: VLLM_CATALOG,
            vigil: MinorVersion::running(),
        }
    }

    /// The version `entry`'s deprecation is measured in.
    pub fn of(&self, entry: &MetricDef) -> MinorVersion {
        if entry.name.starts_with("vllm:") {
            self.vllm
        } else {
            self.vigil
        }
    }

    /// The flag values accepted: each line's previous minor, with what it is.
    pub fn accepted(&self) -> Vec<(MinorVersion, String)> {
        let mut out = Vec::new();
        if let Some(p) = self.vllm.previous() {
            out.push((p, format!("the vllm: series, as vLLM {}", self.vllm)));
        }
        if let Some(p) = self.vigil.previous() {
            out.push((p, format!("Vigil's own series, as Vigil {}", self.vigil)));
        }
        out
    }
}

/// Whether a catalog entry appears on `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    /// Rendered (deprecated entries carry the notice in their HELP).
    Shown,
    /// Deprecated one minor version ago: hidden unless the flag brings it back.
    Hidden,
    /// Deprecated two or more minor versions ago (or in an older major series): gone for good.
    Removed,
}

/// The gate: where `entry` stands in its version line, given the validated value of
/// `--show-hidden-metrics-for-version` (if any).
pub fn visibility(
    entry: &MetricDef,
    running: Running,
    show_hidden_for: Option<MinorVersion>,
) -> Visibility {
    let Some(dep) = entry.deprecated else {
        return Visibility::Shown;
    };
    let running = running.of(entry);
    let since = dep.since;
    if running <= since {
        return Visibility::Shown;
    }
    if running.major != since.major || running.minor >= since.minor + 2 {
        return Visibility::Removed;
    }
    // running is exactly since + 1 minor.
    if show_hidden_for == Some(since) {
        Visibility::Shown
    } else {
        Visibility::Hidden
    }
}

/// Why a `--show-hidden-metrics-for-version` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShowHiddenError {
    #[error("{value:?} is not a version of the form MAJOR.MINOR; {hint}")]
    Malformed { value: String, hint: String },
    #[error("{value:?} is not accepted; {hint}")]
    NotPreviousMinor { value: String, hint: String },
}

/// Validates the flag's value: only a line's previous minor version is accepted, because only
/// metrics deprecated there can be hidden rather than removed.
pub fn parse_show_hidden_flag(
    value: &str,
    running: Running,
) -> Result<MinorVersion, ShowHiddenError> {
    let accepted = running.accepted();
    let hint = if accepted.is_empty() {
        "no value is accepted: no version line has a previous minor version".to_owned()
    } else {
        let list: Vec<String> = accepted
            .iter()
            .map(|(v, what)| format!("{v} ({what} hides them)"))
            .collect();
        format!("the accepted values are {}", list.join(" and "))
    };
    let parsed =
        MinorVersion::parse_exact(value.trim()).ok_or_else(|| ShowHiddenError::Malformed {
            value: value.into(),
            hint: hint.clone(),
        })?;
    if accepted.iter().any(|(v, _)| *v == parsed) {
        Ok(parsed)
    } else {
        Err(ShowHiddenError::NotPreviousMinor {
            value: value.into(),
            hint,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Deprecation, Kind, MetricDef};

    static REPLACEMENT: MetricDef = MetricDef::new("vigil_test_new", Kind::Gauge, "New.", &[]);
    static OLD: MetricDef =
        MetricDef::new("vigil_test_old", Kind::Gauge, "Old.", &[]).deprecated(Deprecation {
            since: MinorVersion::new(0, 9),
            use_instead: &REPLACEMENT,
        });

    static VLLM_NEW: MetricDef = MetricDef::new("vllm:test_new", Kind::Gauge, "New.", &[]);
    static VLLM_OLD: MetricDef = MetricDef::new("vllm:test_old", Kind::Gauge, "Old.", &[])
        .deprecated(Deprecation {
            since: MinorVersion::new(0, 32),
            use_instead: &VLLM_NEW,
        });

    fn v(major: u32, minor: u32) -> MinorVersion {
        MinorVersion::new(major, minor)
    }

    /// Vigil at `vigil`, its catalog vLLM 0.33's.
    fn at(vigil: MinorVersion) -> Running {
        Running {
            vllm: v(0, 33),
            vigil,
        }
    }

    #[test]
    fn undeprecated_entries_always_show() {
        for running in [v(0, 0), v(0, 9), v(3, 7)] {
            assert_eq!(
                visibility(&REPLACEMENT, at(running), None),
                Visibility::Shown
            );
        }
    }

    #[test]
    fn policy_across_versions() {
        // Before and in the version that deprecates it: shown, flag or not.
        assert_eq!(visibility(&OLD, at(v(0, 8)), None), Visibility::Shown);
        assert_eq!(visibility(&OLD, at(v(0, 9)), None), Visibility::Shown);
        // One minor later: hidden, unless the flag names the deprecating version.
        assert_eq!(visibility(&OLD, at(v(0, 10)), None), Visibility::Hidden);
        assert_eq!(
            visibility(&OLD, at(v(0, 10)), Some(v(0, 9))),
            Visibility::Shown
        );
        assert_eq!(
            visibility(&OLD, at(v(0, 10)), Some(v(0, 8))),
            Visibility::Hidden
        );
        // Two minors later and beyond: removed, and the flag cannot bring it back.
        assert_eq!(visibility(&OLD, at(v(0, 11)), None), Visibility::Removed);
        assert_eq!(
            visibility(&OLD, at(v(0, 11)), Some(v(0, 9))),
            Visibility::Removed
        );
        assert_eq!(
            visibility(&OLD, at(v(0, 11)), Some(v(0, 10))),
            Visibility::Removed
        );
        assert_eq!(
            visibility(&OLD, at(v(1, 0)), Some(v(0, 9))),
            Visibility::Removed
        );
    }

    #[test]
    fn deprecated_help_names_the_replacement() {
        assert_eq!(
            OLD.help_text(),
            "Old.DEPRECATED: Use vigil_test_new instead."
        );
        assert_eq!(REPLACEMENT.help_text(), "New.");
    }

    #[test]
    fn vllm_series_follow_vllms_line_and_the_rest_vigils() {
        let running = at(v(0, 2));
        // Deprecated in vLLM 0.32: hidden in 0.33, shown with 0.32, whatever Vigil's version.
        assert_eq!(visibility(&VLLM_OLD, running, None), Visibility::Hidden);
        assert_eq!(
            visibility(&VLLM_OLD, running, Some(v(0, 32))),
            Visibility::Shown
        );
        assert_eq!(
            visibility(&VLLM_OLD, running, Some(v(0, 1))),
            Visibility::Hidden
        );
        // Vigil's own entry deprecated in Vigil 0.1: the other way round.
        let mine =
            MetricDef::new("vigil_test_old", Kind::Gauge, "Old.", &[]).deprecated(Deprecation {
                since: v(0, 1),
                use_instead: &REPLACEMENT,
            });
        assert_eq!(visibility(&mine, running, Some(v(0, 1))), Visibility::Shown);
        assert_eq!(
            visibility(&mine, running, Some(v(0, 32))),
            Visibility::Hidden
        );
    }

    #[test]
    fn flag_accepts_each_lines_previous_minor() {
        let running = at(v(0, 2));
        assert_eq!(parse_show_hidden_flag("0.32", running), Ok(v(0, 32)));
        assert_eq!(parse_show_hidden_flag("0.1", running), Ok(v(0, 1)));
        for (value, malformed) in [
            ("0.0", false),
            ("0.2", false),
            ("0.33", false),
            ("0.31", false),
            ("0.32.0", true),
            ("v0.32", true),
            ("", true),
            ("x", true),
        ] {
            let err = parse_show_hidden_flag(value, running).unwrap_err();
            assert_eq!(
                matches!(err, ShowHiddenError::Malformed { .. }),
                malformed,
                "{value:?}"
            );
            let text = err.to_string();
            assert!(text.contains("0.32 (the vllm: series"), "{text}");
            assert!(text.contains("0.1 (Vigil's own series"), "{text}");
        }
        let none = Running {
            vllm: v(1, 0),
            vigil: v(1, 0),
        };
        let err = parse_show_hidden_flag("0.9", none).unwrap_err();
        assert!(err.to_string().contains("no value is accepted"), "{err}");
    }
}
