//! The checks' verdicts, printed as they come and summed up at the end.

/// One verdict: what was compared, whether it passed, and the numbers behind it.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

#[derive(Debug, Default)]
pub(crate) struct Report {
    pub checks: Vec<Check>,
    /// The device checked is the simulator's (its name says so).
    pub simulated: bool,
}

impl Report {
    /// Records and prints a verdict.
    pub(crate) fn check(
        &mut self,
        name: impl Into<String>,
        passed: bool,
        detail: impl Into<String>,
    ) {
        let check = Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        };
        println!(
            "{} {:<44} {}",
            if check.passed { "PASS" } else { "FAIL" },
            check.name,
            check.detail
        );
        self.checks.push(check);
    }

    /// Records a section that could not run at all as a failure with its reason.
    pub(crate) fn error(&mut self, name: &str, error: impl std::fmt::Display) {
        self.check(name, false, format!("error: {error}"));
    }

    pub(crate) fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.passed)
    }

    pub(crate) fn failures(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }
}

/// The largest of `|got - want| / (1 + |want|)`: absolute near zero, relative for large values.
pub(crate) fn max_error(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len(), "compared buffers differ in length");
    got.iter()
        .zip(want)
        .map(|(g, w)| {
            let e = (g - w).abs() / (1.0 + w.abs());
            if e.is_nan() {
                f32::INFINITY
            } else {
                e
            }
        })
        .fold(0.0, f32::max)
}

/// bf16 rounding on the host (what the device sees of an input).
pub(crate) fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter()
        .map(|v| half::bf16::from_f32(*v).to_f32())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_relative_for_large_values_and_nan_is_infinite() {
        assert_eq!(max_error(&[1.0, 101.0], &[1.0, 100.0]), 1.0 / 101.0);
        assert_eq!(max_error(&[0.5], &[0.0]), 0.5);
        assert_eq!(max_error(&[f32::NAN], &[0.0]), f32::INFINITY);
        let mut report = Report::default();
        report.check("a", true, "");
        assert!(report.passed());
        report.check("b", false, "");
        assert_eq!((report.passed(), report.failures()), (false, 1));
    }

    #[test]
    fn bf16_rounding_keeps_eight_bits_of_mantissa() {
        assert_eq!(round_bf16(&[1.0 + 1.0 / 512.0]), [1.0]);
        assert_eq!(round_bf16(&[1.0 + 1.0 / 128.0]), [1.0 + 1.0 / 128.0]);
    }
}
