//! Numbers written exactly as Python's prometheus_client writes them.
//!
//! Numbers exactly as prometheus_client prints them (`floatToGoString`): Python's `repr` of the
//! float, with Go-style exponents for positive values of a million or more.
//!
//! Rust's own float formatting differs (`1e16` prints as `10000000000000000`, `1e6` has no
//! exponent), and `le` labels are compared as strings by dashboards and recording rules, so the
//! exporter copies Python byte for byte.

use std::fmt::Write;

/// Appends `v` formatted as prometheus_client's `floatToGoString` does.
pub fn write_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let start = out.len();
        write_python_repr(out, v);
        let repr = &out[start..];
        let dot = repr.find('.');
        if let Some(dot) = dot.filter(|d| v > 0.0 && *d > 6) {
            // e.g. "1234567.0" -> "1.234567e+06"
            let digits: String = repr.chars().filter(|c| *c != '.').collect();
            let mantissa = format!("{}.{}", &digits[..1], &digits[1..]);
            let mantissa = mantissa.trim_end_matches(['0', '.']);
            let exponent = dot - 1;
            out.truncate(start);
            let _ = write!(out, "{mantissa}e+{exponent:02}");
        }
    }
}

/// Formats a float as a string (see [`write_float`]).
pub fn format_float(v: f64) -> String {
    let mut s = String::new();
    write_float(&mut s, v);
    s
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for decimal exponents in
/// `-4..16` (always with a fractional part), scientific otherwise with a signed, two-digit
/// (at least) exponent.
fn write_python_repr(out: &mut String, v: f64) {
    // `{:e}` gives the shortest round-trip digits: "1.234567e6", "5e-324", "-0e0".
    let sci = format!("{v:e}");
    let (mantissa, exp) = sci.split_once('e').expect("{:e} always has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exp) {
        if exp < 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-exp - 1) as usize));
            out.push_str(&digits);
        } else {
            let int_len = exp as usize + 1;
            if digits.len() <= int_len {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', int_len - digits.len()));
                out.push_str(".0");
            } else {
                out.push_str(&digits[..int_len]);
                out.push('.');
                out.push_str(&digits[int_len..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exp < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exp.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pairs printed by prometheus_client 0.26.0's `floatToGoString` on CPython 3.11.
    const PYTHON: &[(f64, &str)] = &[
        (0.0, "0.0"),
        (-0.0, "-0.0"),
        (1.0, "1.0"),
        (0.075, "0.075"),
        (1e-05, "1e-05"),
        (500000.0, "500000.0"),
        (1e6, "1e+06"),
        (2097152.0, "2.097152e+06"),
        (1234567.0, "1.234567e+06"),
        (150e6, "1.5e+08"),
        (-1234567.0, "-1234567.0"),
        (1e16, "1e+16"),
        (1.5e-05, "1.5e-05"),
        (0.30000000000000004, "0.30000000000000004"),
        (1.2345678901234568e+17, "1.2345678901234568e+17"),
        (1e22, "1e+22"),
        (5e-324, "5e-324"),
        (1795349072.2221746, "1.7953490722221746e+09"),
        (0.0001, "0.0001"),
        (0.00012345, "0.00012345"),
        (1e15, "1e+15"),
        (9999999.999, "9.999999999e+06"),
        (999999.0, "999999.0"),
        (123.456, "123.456"),
        (-0.5, "-0.5"),
        (2.5e-07, "2.5e-07"),
        (1e100, "1e+100"),
        (-1e-100, "-1e-100"),
        (3e300, "3e+300"),
        (12345678.9, "1.23456789e+07"),
        (f64::INFINITY, "+Inf"),
        (f64::NEG_INFINITY, "-Inf"),
        (f64::NAN, "NaN"),
    ];

    #[test]
    fn matches_prometheus_client() {
        for (v, want) in PYTHON {
            assert_eq!(format_float(*v), *want, "{v:e}");
        }
    }

    #[test]
    fn every_bucket_bound_round_trips() {
        for family in crate::buckets::BucketFamily::ALL {
            for b in family.default_bounds(1 << 20) {
                let s = format_float(b);
                let back: f64 = s.parse().unwrap();
                assert_eq!(back, b, "{s}");
            }
        }
    }
}
