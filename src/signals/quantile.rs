//! `histogram_quantile` of a classic histogram, as Prometheus computes it
//! (`promql/quantile.go`, `BucketQuantile`), so a grouped latency query
//! summed by the watchdog gives the same number Prometheus would have.
//!
//! Same rules, in the same order: NaN for a NaN `q`, -Inf below 0, +Inf
//! above 1; buckets sorted by upper bound; NaN unless the highest is
//! `+Inf`; buckets with equal bounds merged; counts made monotonic
//! (differences within a relative 1e-12 ignored, any decrease flattened);
//! NaN with fewer than two buckets or no observations; a quantile in the
//! `+Inf` bucket is the second-highest bound; a lowest bucket with an
//! upper bound above 0 interpolates from 0, one at or below 0 returns its
//! bound; otherwise linear interpolation inside the bucket.

/// One cumulative bucket: observations at or below `upper_bound`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub upper_bound: f64,
    pub count: f64,
}

/// Prometheus's `smallDeltaTolerance`: relative differences between
/// successive bucket counts below this are floating-point noise.
const SMALL_DELTA_TOLERANCE: f64 = 1e-12;

/// The `q` quantile of `buckets` (any order), exactly as Prometheus's
/// `histogram_quantile` over the same buckets. The slice is sorted and
/// rewritten in place.
pub fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    // Prometheus never calls it with no buckets; no buckets is no figure.
    if buckets.is_empty() {
        return f64::NAN;
    }
    buckets.sort_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    if buckets[buckets.len() - 1].upper_bound != f64::INFINITY {
        return f64::NAN;
    }
    coalesce(buckets);
    ensure_monotonic(buckets);
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // sort.Search over all but the last: the first with count >= rank.
    let searched = &buckets[..buckets.len() - 1];
    let b = searched.partition_point(|x| x.count < rank);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].upper_bound;
    }
    if b == 0 && buckets[0].upper_bound <= 0.0 {
        return buckets[0].upper_bound;
    }
    let bucket_end = buckets[b].upper_bound;
    let mut count = buckets[b].count;
    let mut bucket_start = 0.0;
    if b > 0 {
        bucket_start = buckets[b - 1].upper_bound;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Merges buckets with the same upper bound (sorted input).
fn coalesce(buckets: &mut Vec<Bucket>) {
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.iter() {
        match out.last_mut() {
            Some(last) if last.upper_bound == b.upper_bound => last.count += b.count,
            _ => out.push(*b),
        }
    }
    *buckets = out;
}

/// Prometheus's `ensureMonotonicAndIgnoreSmallDeltas`.
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let Some(first) = buckets.first() else {
        return;
    };
    let mut prev = first.count;
    for b in buckets.iter_mut().skip(1) {
        let curr = b.count;
        if curr == prev {
            continue;
        }
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) {
            b.count = prev;
            continue;
        }
        if curr < prev {
            b.count = prev;
            continue;
        }
        prev = curr;
    }
}

/// Prometheus's `util/almost.Equal` (without its stale-NaN marker, which a
/// query result never carries).
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let min_normal = f64::MIN_POSITIVE;
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < min_normal {
        return diff < epsilon * min_normal;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

/// An `le` label value as Prometheus parses it (`0.5`, `+Inf`, `1e-3`).
pub fn parse_le(le: &str) -> Option<f64> {
    le.trim().parse::<f64>().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(q: f64, b: &[(f64, f64)]) -> f64 {
        let mut v: Vec<Bucket> = b
            .iter()
            .map(|&(upper_bound, count)| Bucket { upper_bound, count })
            .collect();
        bucket_quantile(q, &mut v)
    }

    const INF: f64 = f64::INFINITY;

    #[test]
    fn interpolates_linearly_inside_a_bucket_and_from_zero_in_the_lowest() {
        let b = [(0.1, 10.0), (0.2, 30.0), (0.5, 40.0), (INF, 40.0)];
        assert!((q(0.5, &b) - 0.15).abs() < 1e-15);
        assert!((q(0.05, &b) - 0.02).abs() < 1e-15);
        assert_eq!(q(1.0, &b), 0.5);
    }

    #[test]
    fn the_edge_cases_are_prometheus_s() {
        // In the +Inf bucket: the second-highest bound.
        assert_eq!(q(0.99, &[(0.1, 1.0), (0.2, 2.0), (INF, 10.0)]), 0.2);
        // Only +Inf, or nothing observed, or no +Inf: NaN.
        assert!(q(0.5, &[(INF, 10.0)]).is_nan());
        assert!(q(0.5, &[(0.1, 0.0), (INF, 0.0)]).is_nan());
        assert!(q(0.5, &[(0.1, 1.0), (0.2, 2.0)]).is_nan());
        assert!(q(0.5, &[]).is_nan());
        assert!(q(f64::NAN, &[(0.1, 1.0), (INF, 2.0)]).is_nan());
        assert_eq!(q(-0.1, &[(0.1, 1.0), (INF, 2.0)]), f64::NEG_INFINITY);
        assert_eq!(q(1.1, &[(0.1, 1.0), (INF, 2.0)]), INF);
        // A lowest bound at or below 0 is returned as it is.
        assert_eq!(q(0.1, &[(-1.0, 5.0), (1.0, 10.0), (INF, 10.0)]), -1.0);
        // Non-monotonic: the decrease is flattened.
        assert_eq!(
            q(0.5, &[(0.1, 10.0), (0.2, 5.0), (0.4, 20.0), (INF, 20.0)]),
            0.1
        );
        // Equal bounds are merged, in any order.
        assert_eq!(
            q(0.5, &[(INF, 4.0), (0.2, 1.0), (0.2, 1.0), (INF, 4.0)]),
            0.2
        );
        assert_eq!(parse_le("+Inf"), Some(INF));
        assert_eq!(parse_le("0.25"), Some(0.25));
        assert_eq!(parse_le("x"), None);
    }
}
