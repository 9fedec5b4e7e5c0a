//! What happened between two scrapes, as PromQL's `rate` and `histogram_quantile` define it.
//!
//! What happened between two scrapes, as PromQL defines it: `rate` of a counter over the
//! window (a counter that went down was reset, and counts from zero), and
//! `histogram_quantile` of the buckets' increases (linear interpolation inside the bucket the
//! rank falls in; the first bucket starts at 0; a rank in the `+Inf` bucket gives the highest
//! finite bound; no observations give NaN).

/// A counter's increase between two readings. A counter that went down was reset and counts
/// from zero; a negative or NaN reading is no counter value (the exposition is broken) and
/// counts nothing, so that no rate comes out negative.
pub(super) fn increase(before: f64, after: f64) -> f64 {
    if after.is_nan() || after < 0.0 {
        0.0
    } else if before.is_nan() || before < 0.0 || before > after {
        after
    } else {
        after - before
    }
}

/// The per-second rate of a counter between two readings `seconds` apart.
pub(super) fn rate(before: f64, after: f64, seconds: f64) -> f64 {
    increase(before, after) / seconds
}

/// The `q` quantile of a histogram's observations in the window, from its cumulative buckets
/// (upper bound `le`, count) before and after; buckets in any order, `+Inf` included.
pub(super) fn histogram_quantile(q: f64, before: &[(f64, f64)], after: &[(f64, f64)]) -> f64 {
    let mut buckets: Vec<(f64, f64)> = after
        .iter()
        .map(|&(le, count)| {
            let was = before
                .iter()
                .find(|(b, _)| *b == le)
                .map_or(0.0, |(_, c)| *c);
            (le, increase(was, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    quantile(q, &buckets)
}

/// Prometheus's `bucketQuantile` over cumulative `(le, count)` buckets sorted by `le`.
pub(super) fn quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    if q.is_nan() || buckets.len() < 2 || buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let total = buckets[buckets.len() - 1].1;
    if total == 0.0 {
        return f64::NAN;
    }
    let rank = q * total;
    // The first bucket whose count reaches the rank.
    let b = buckets
        .iter()
        .position(|(_, count)| *count >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].0;
    }
    if b == 0 && buckets[0].0 <= 0.0 {
        return buckets[0].0;
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, buckets[b - 1].1)
    };
    let (end, count) = (buckets[b].0, buckets[b].1 - below);
    start + (end - start) * ((rank - below) / count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_reset_to_zero() {
        assert_eq!(rate(10.0, 30.0, 4.0), 5.0);
        assert_eq!(rate(30.0, 6.0, 2.0), 3.0);
        assert_eq!(increase(5.0, 2.0), 2.0);
    }

    /// A counter is never negative: a reading below zero (a broken exposition) counts nothing,
    /// and one after it counts from zero, so no rate is negative.
    #[test]
    fn negative_readings_give_no_negative_rate() {
        assert_eq!(rate(0.0, -4.0, 2.0), 0.0);
        assert_eq!(rate(-4.0, 6.0, 2.0), 3.0);
        assert_eq!(rate(f64::NAN, 6.0, 2.0), 3.0);
        assert_eq!(rate(1.0, f64::NAN, 2.0), 0.0);
    }

    /// The examples follow Prometheus's documentation of `histogram_quantile`.
    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let inf = f64::INFINITY;
        // 100 observations: 50 in (0, 0.1], 40 in (0.1, 0.5], 10 in (0.5, +Inf).
        let b = [(0.1, 50.0), (0.5, 90.0), (inf, 100.0)];
        assert_eq!(quantile(0.5, &b), 0.1);
        assert!((quantile(0.25, &b) - 0.05).abs() < 1e-12);
        // Rank 70 is 20 of the 40 in (0.1, 0.5]: halfway.
        assert!((quantile(0.7, &b) - 0.3).abs() < 1e-12);
        // Rank 99 falls in +Inf: the highest finite bound.
        assert_eq!(quantile(0.99, &b), 0.5);
        assert!(quantile(0.5, &[(0.1, 0.0), (inf, 0.0)]).is_nan());
        assert!(quantile(0.5, &[(0.1, 3.0)]).is_nan(), "no +Inf bucket");
    }

    #[test]
    fn the_window_counts_only_new_observations() {
        let inf = f64::INFINITY;
        let before = [(0.1, 10.0), (0.5, 10.0), (inf, 10.0)];
        let after = [(inf, 20.0), (0.5, 20.0), (0.1, 10.0)];
        // All ten new observations lie in (0.1, 0.5]: the median is its middle.
        assert!((histogram_quantile(0.5, &before, &after) - 0.3).abs() < 1e-12);
    }
}
