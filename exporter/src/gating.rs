//! vLLM's deprecation policy for metrics, as a pure function.
//!
//! A metric deprecated in `X.Y` is shown in `X.Y` (its HELP says so), hidden in `X.Y+1` unless the
//! operator passes `--show-hidden-metrics-for-version=X.Y`, and gone from `X.Y+2` on. Unlike vLLM,
//! which silently ignores a flag value other than the previous minor version, Vigil refuses it at
//! start-up and names the one value it accepts, as Kubernetes' `--show-hidden-metrics-for-version`
//! does.

use crate::catalog::MetricDef;
use crate::version::MinorVersion;

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

/// The gate: where `entry` stands in `running`, given the validated value of
/// `--show-hidden-metrics-for-version` (if any).
pub fn visibility(
    entry: &MetricDef,
    running: MinorVersion,
    show_hidden_for: Option<MinorVersion>,
) -> Visibility {
    let Some(dep) = entry.deprecated else {
        return Visibility::Shown;
    };
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

/// Validates the flag's value against the running version: only the previous minor version is
/// accepted, because only metrics deprecated there can be hidden rather than removed.
pub fn parse_show_hidden_flag(
    value: &str,
    running: MinorVersion,
) -> Result<MinorVersion, ShowHiddenError> {
    let hint = match running.previous() {
        Some(prev) => {
            format!("the only accepted value is {prev} (the minor version before {running})")
        }
        None => format!("no value is accepted in {running}: it has no previous minor version"),
    };
    let parsed =
        MinorVersion::parse_exact(value.trim()).ok_or_else(|| ShowHiddenError::Malformed {
            value: value.into(),
            hint: hint.clone(),
        })?;
    if Some(parsed) == running.previous() {
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

    fn v(major: u32, minor: u32) -> MinorVersion {
        MinorVersion::new(major, minor)
    }

    #[test]
    fn undeprecated_entries_always_show() {
        for running in [v(0, 0), v(0, 9), v(3, 7)] {
            assert_eq!(visibility(&REPLACEMENT, running, None), Visibility::Shown);
        }
    }

    #[test]
    fn policy_across_versions() {
        // Before and in the version that deprecates it: shown, flag or not.
        assert_eq!(visibility(&OLD, v(0, 8), None), Visibility::Shown);
        assert_eq!(visibility(&OLD, v(0, 9), None), Visibility::Shown);
        // One minor later: hidden, unless the flag names the deprecating version.
        assert_eq!(visibility(&OLD, v(0, 10), None), Visibility::Hidden);
        assert_eq!(visibility(&OLD, v(0, 10), Some(v(0, 9))), Visibility::Shown);
        assert_eq!(
            visibility(&OLD, v(0, 10), Some(v(0, 8))),
            Visibility::Hidden
        );
        // Two minors later and beyond: removed, and the flag cannot bring it back.
        assert_eq!(visibility(&OLD, v(0, 11), None), Visibility::Removed);
        assert_eq!(
            visibility(&OLD, v(0, 11), Some(v(0, 9))),
            Visibility::Removed
        );
        assert_eq!(
            visibility(&OLD, v(0, 11), Some(v(0, 10))),
            Visibility::Removed
        );
        assert_eq!(
            visibility(&OLD, v(1, 0), Some(v(0, 9))),
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
    fn flag_accepts_only_the_previous_minor() {
        assert_eq!(parse_show_hidden_flag("0.1", v(0, 2)), Ok(v(0, 1)));
        for (value, malformed) in [
            ("0.0", false),
            ("0.2", false),
            ("0.1.0", true),
            ("v0.1", true),
            ("", true),
            ("x", true),
        ] {
            let err = parse_show_hidden_flag(value, v(0, 2)).unwrap_err();
            assert_eq!(
                matches!(err, ShowHiddenError::Malformed { .. }),
                malformed,
                "{value:?}"
            );
            assert!(
                err.to_string().contains("the only accepted value is 0.1"),
                "{err}"
            );
        }
        let err = parse_show_hidden_flag("0.9", v(1, 0)).unwrap_err();
        assert!(
            err.to_string().contains("no value is accepted in 1.0"),
            "{err}"
        );
    }
}
