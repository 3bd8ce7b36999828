//! A pod's request counters: the traffic its image's behaviour, and any
//! error burst that hits it, describe over the time the pod is ready. By
//! default requests arrive as a Poisson process (whole numbers; 0.5 req/s
//! gives 0, 1 or 2 requests in a second), each one an error with the error
//! probability of its moment and each with a log-normal latency, drawn
//! from a generator seeded per pod so that a seed and a pod name repeat
//! the same numbers. `exact` traffic counts the expected values instead
//! (rate × seconds), smooth and fractional. The counters must never go
//! back, and a burst must count exactly over its span: every advance is
//! split at the burst boundaries inside it.

use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Binomial, Distribution, LogNormal, Normal, Poisson};
use sha2::{Digest, Sha256};

use super::behaviour::{Behaviour, Traffic};
use super::burst::Span;

/// Spread of the latency distribution (log-normal sigma): p95 is about
/// 2.3 × the median, p99 about 3.2 ×.
pub const LATENCY_SIGMA: f64 = 0.5;

/// Above this many requests in one step, latencies are no longer drawn one
/// by one: the buckets take a multinomial split and the sum its normal
/// approximation, which is as exact at that size and costs the same at any.
const PER_REQUEST_LIMIT: u64 = 100_000;

/// Histogram bucket bounds in seconds: 5 ms to 10 s, each 10 % above the
/// last (4 significant digits), fine enough that `histogram_quantile` tells
/// a 1.3 × from a 1.6 × slowdown.
pub fn bucket_bounds() -> Vec<f64> {
    let mut out = Vec::new();
    let mut b: f64 = 0.005;
    while b <= 10.0 {
        let digits = 3 - b.log10().floor() as i32;
        let scale = 10f64.powi(digits);
        out.push((b * scale).round() / scale);
        b *= 1.1;
    }
    out
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    let erf = if z >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

/// Fraction of requests at or below `bound` seconds for a median.
pub fn latency_cdf(bound: f64, median: f64) -> f64 {
    if median <= 0.0 {
        return 1.0;
    }
    normal_cdf((bound / median).ln() / LATENCY_SIGMA)
}

/// The generator seed of one pod: the sim's seed and the pod's name,
/// hashed with a hash that does not change between Rust releases.
pub fn pod_seed(seed: u64, namespace: &str, pod: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(seed.to_be_bytes())
        .chain_update(namespace.as_bytes())
        .chain_update(b"/")
        .chain_update(pod.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// A pod's counters, integrated over the time it was ready so they stay
/// monotonic when a test changes the behaviour mid-run. Poisson traffic
/// keeps whole numbers in them; exact traffic fractions, floored when
/// rendered.
#[derive(Debug)]
pub struct Counters {
    last: Instant,
    ready: bool,
    rng: StdRng,
    pub ok: f64,
    pub errors: f64,
    pub total: f64,
    pub sum: f64,
    /// Cumulative, one per bound (`le`); `total` is the `+Inf` bucket.
    pub buckets: Vec<f64>,
}

impl Counters {
    /// Counters at zero from `now`, not ready, drawing from `seed`.
    pub fn new(now: Instant, seed: u64, buckets: usize) -> Self {
        Counters {
            last: now,
            ready: false,
            rng: StdRng::seed_from_u64(seed),
            ok: 0.0,
            errors: 0.0,
            total: 0.0,
            sum: 0.0,
            buckets: vec![0.0; buckets],
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    /// Moves the last advance back, as if `by` had passed since.
    #[cfg(test)]
    pub fn backdate(&mut self, by: std::time::Duration) {
        self.last -= by;
    }

    /// Counts up to `now` under the old state, then sets readiness.
    pub fn set_ready(
        &mut self,
        now: Instant,
        ready: bool,
        b: &Behaviour,
        bursts: &[Span],
        bounds: &[f64],
    ) {
        self.advance(now, b, bursts, bounds);
        self.ready = ready;
    }

    /// Counts the traffic from the last advance to `now` (nothing while not
    /// ready), one piece per stretch between burst boundaries, each piece
    /// at the error probability of its own stretch.
    pub fn advance(&mut self, now: Instant, b: &Behaviour, bursts: &[Span], bounds: &[f64]) {
        let from = self.last;
        if now <= from {
            return;
        }
        self.last = now;
        if !self.ready {
            return;
        }
        let mut cuts: Vec<Instant> = bursts
            .iter()
            .flat_map(|s| [s.start, s.end])
            .filter(|t| from < *t && *t < now)
            .collect();
        cuts.sort();
        cuts.dedup();
        cuts.push(now);
        let mut start = from;
        for end in cuts {
            // Boundaries are cut points, so one instant inside the piece
            // tells which bursts cover all of it.
            let inside = start + (end - start) / 2;
            let ratio = bursts
                .iter()
                .filter(|s| s.start <= inside && inside < s.end)
                .map(|s| s.error_ratio)
                .fold(b.error_ratio, f64::max)
                .clamp(0.0, 1.0);
            let secs = (end - start).as_secs_f64();
            match b.traffic {
                Traffic::Poisson => self.add_sampled(secs, ratio, b, bounds),
                Traffic::Exact => self.add_expected(secs, ratio, b, bounds),
            }
            start = end;
        }
    }

    fn add_expected(&mut self, secs: f64, ratio: f64, b: &Behaviour, bounds: &[f64]) {
        let n = b.request_rate.max(0.0) * secs;
        self.errors += n * ratio;
        self.ok += n * (1.0 - ratio);
        self.total += n;
        let median = b.latency.as_secs_f64();
        self.sum += n * median * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp();
        for (count, bound) in self.buckets.iter_mut().zip(bounds) {
            *count += n * latency_cdf(*bound, median);
        }
    }

    fn add_sampled(&mut self, secs: f64, ratio: f64, b: &Behaviour, bounds: &[f64]) {
        let mean = b.request_rate.max(0.0) * secs;
        let n = match Poisson::new(mean) {
            // At most MAX_LAMBDA, so the draw fits a u64.
            Ok(poisson) => poisson.sample(&mut self.rng) as u64,
            // A mean of 0 (no traffic), or beyond any real pod.
            Err(_) => return,
        };
        if n == 0 {
            return;
        }
        let errors = Binomial::new(n, ratio).map_or(0, |d| d.sample(&mut self.rng));
        self.errors += errors as f64;
        self.ok += (n - errors) as f64;
        self.total += n as f64;

        // Requests per bucket (not cumulative); the last slot is above
        // every bound.
        let mut per_bucket = vec![0u64; bounds.len() + 1];
        let median = b.latency.as_secs_f64();
        match LogNormal::new(median.max(f64::MIN_POSITIVE).ln(), LATENCY_SIGMA) {
            Ok(latency) if n <= PER_REQUEST_LIMIT && median > 0.0 => {
                for _ in 0..n {
                    let seconds: f64 = latency.sample(&mut self.rng);
                    self.sum += seconds;
                    per_bucket[bounds.partition_point(|le| *le < seconds)] += 1;
                }
            }
            _ => self.add_split(n, median, bounds, &mut per_bucket),
        }
        let mut below = 0u64;
        for (count, in_bucket) in self.buckets.iter_mut().zip(&per_bucket) {
            below += in_bucket;
            *count += below as f64;
        }
    }

    /// `n` latencies at once: a multinomial split over the buckets (one
    /// binomial draw each, conditional on what is left) and a sum drawn
    /// from the normal its mean and variance give.
    fn add_split(&mut self, n: u64, median: f64, bounds: &[f64], per_bucket: &mut [u64]) {
        let mut left = n;
        let mut below = 0.0;
        for (i, bound) in bounds.iter().enumerate() {
            let cdf = latency_cdf(*bound, median);
            let p = if below < 1.0 {
                ((cdf - below) / (1.0 - below)).clamp(0.0, 1.0)
            } else {
                1.0
            };
            let k = Binomial::new(left, p).map_or(0, |d| d.sample(&mut self.rng));
            per_bucket[i] = k;
            left -= k;
            below = cdf;
        }
        if let Some(above) = per_bucket.last_mut() {
            *above = left;
        }
        let s2 = LATENCY_SIGMA * LATENCY_SIGMA;
        let mean = median * (s2 / 2.0).exp();
        let var = (s2.exp() - 1.0) * mean * mean;
        let (nf, sd) = (n as f64, (n as f64 * var).sqrt());
        let sum = Normal::new(nf * mean, sd).map_or(nf * mean, |d| d.sample(&mut self.rng));
        self.sum += sum.max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn behaviour(rate: f64, error_ratio: f64, traffic: Traffic) -> Behaviour {
        Behaviour {
            request_rate: rate,
            error_ratio,
            traffic,
            ..Behaviour::default()
        }
    }

    fn ready_counters(start: Instant, seed: u64) -> (Counters, Vec<f64>) {
        let bounds = bucket_bounds();
        let mut c = Counters::new(start, seed, bounds.len());
        c.set_ready(start, true, &Behaviour::default(), &[], &bounds);
        (c, bounds)
    }

    #[test]
    fn buckets_are_fine_and_sorted() {
        let b = bucket_bounds();
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b[0], 0.005);
        assert!(*b.last().unwrap() <= 10.0 && b.len() > 60);
    }

    #[test]
    fn cdf_is_one_half_at_the_median() {
        assert!((latency_cdf(0.05, 0.05) - 0.5).abs() < 1e-6);
        assert!(latency_cdf(0.2, 0.05) > 0.99);
    }

    #[test]
    fn low_traffic_arrives_in_whole_requests_with_poisson_mean_and_variance() {
        let start = Instant::now();
        let (mut c, bounds) = ready_counters(start, 7);
        let b = behaviour(0.5, 0.0, Traffic::Poisson);
        let mut per_second = Vec::new();
        let mut before = 0.0;
        for s in 1..=4000u64 {
            c.advance(start + Duration::from_secs(s), &b, &[], &bounds);
            assert_eq!(c.total.fract(), 0.0, "whole requests");
            assert!(c.total >= before, "monotonic");
            per_second.push(c.total - before);
            before = c.total;
        }
        let n = per_second.len() as f64;
        let mean = per_second.iter().sum::<f64>() / n;
        let var = per_second.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        // Poisson: mean = variance = 0.5; 4000 seconds put both within ±0.05.
        assert!((mean - 0.5).abs() < 0.05, "mean {mean}");
        assert!((var - 0.5).abs() < 0.05, "variance {var}");
        assert!(per_second.contains(&0.0) && per_second.contains(&2.0));
        // Every request lands in the histogram, in whole numbers.
        let inf = c.buckets.last().copied().unwrap_or_default();
        assert!(inf <= c.total && c.buckets.iter().all(|x| x.fract() == 0.0));
        assert!(c.buckets.windows(2).all(|w| w[0] <= w[1]), "cumulative");
    }

    #[test]
    fn the_same_seed_repeats_the_same_traffic_and_another_does_not() {
        let start = Instant::now();
        let b = behaviour(20.0, 0.1, Traffic::Poisson);
        let run = |seed| {
            let (mut c, bounds) = ready_counters(start, seed);
            c.advance(start + Duration::from_secs(30), &b, &[], &bounds);
            (c.total, c.errors, c.sum)
        };
        assert_eq!(
            run(pod_seed(1, "ns", "web-1")),
            run(pod_seed(1, "ns", "web-1"))
        );
        assert_ne!(
            run(pod_seed(1, "ns", "web-1")),
            run(pod_seed(1, "ns", "web-2"))
        );
    }

    #[test]
    fn errors_and_latencies_follow_the_behaviour_in_sampled_traffic() {
        let start = Instant::now();
        let (mut c, bounds) = ready_counters(start, 3);
        let b = behaviour(1000.0, 0.3, Traffic::Poisson);
        c.advance(start + Duration::from_secs(20), &b, &[], &bounds);
        let n = c.total;
        assert!((n - 20_000.0).abs() < 5.0 * 20_000f64.sqrt(), "{n}");
        assert_eq!(c.ok + c.errors, n);
        let ratio = c.errors / n;
        assert!((ratio - 0.3).abs() < 0.015, "{ratio}");
        // Half the requests at or below the 50 ms median.
        let i = bounds.partition_point(|le| *le < 0.05);
        let at_median = c.buckets[i] / n;
        assert!(
            (at_median - latency_cdf(bounds[i], 0.05)).abs() < 0.02,
            "{at_median}"
        );
        let mean = c.sum / n;
        let want = 0.05 * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp();
        assert!((mean / want - 1.0).abs() < 0.02, "{mean}");
    }

    #[test]
    fn a_huge_step_splits_the_buckets_and_stays_consistent() {
        let start = Instant::now();
        let (mut c, bounds) = ready_counters(start, 5);
        let b = behaviour(50_000.0, 0.01, Traffic::Poisson);
        c.advance(start + Duration::from_secs(10), &b, &[], &bounds);
        let n = c.total;
        assert!(n > PER_REQUEST_LIMIT as f64, "{n}");
        assert!(c.buckets.windows(2).all(|w| w[0] <= w[1]));
        assert!(c.buckets.last().copied().unwrap_or_default() <= n);
        let i = bounds.partition_point(|le| *le < 0.05);
        assert!((c.buckets[i] / n - latency_cdf(bounds[i], 0.05)).abs() < 0.01);
        let want = 0.05 * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp();
        assert!((c.sum / n / want - 1.0).abs() < 0.01);
    }

    #[test]
    fn a_burst_counts_exactly_over_its_span_when_an_advance_crosses_it() {
        let start = Instant::now();
        let (mut c, bounds) = ready_counters(start, 0);
        let b = behaviour(10.0, 0.0, Traffic::Exact);
        let burst = Span {
            start: start + Duration::from_secs(4),
            end: start + Duration::from_secs(6),
            error_ratio: 0.5,
        };
        // One step from before the burst to after it: 2 s of 10 req/s at 50 %.
        c.advance(start + Duration::from_secs(10), &b, &[burst], &bounds);
        assert!((c.total - 100.0).abs() < 1e-9, "{}", c.total);
        assert!((c.errors - 10.0).abs() < 1e-9, "{}", c.errors);
        // Steps that end inside it count only their own part.
        let (mut c, bounds) = ready_counters(start, 0);
        let mut seen = Vec::new();
        for s in [3, 5, 7, 9] {
            c.advance(start + Duration::from_secs(s), &b, &[burst], &bounds);
            seen.push(c.errors);
        }
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(close(seen[0], 0.0) && close(seen[1], 5.0), "{seen:?}");
        assert!(close(seen[2], 10.0) && close(seen[3], 10.0), "{seen:?}");
    }

    #[test]
    fn a_sampled_burst_raises_errors_only_inside_it_and_counters_never_go_back() {
        let start = Instant::now();
        let (mut c, bounds) = ready_counters(start, 11);
        let b = behaviour(200.0, 0.0, Traffic::Poisson);
        let burst = Span {
            start: start + Duration::from_millis(10_250),
            end: start + Duration::from_millis(20_250),
            error_ratio: 0.5,
        };
        let mut last = (0.0, 0.0);
        let mut errors_by_second = Vec::new();
        for s in 1..=30u64 {
            c.advance(start + Duration::from_secs(s), &b, &[burst], &bounds);
            assert!(c.total >= last.0 && c.errors >= last.1, "monotonic");
            errors_by_second.push(c.errors - last.1);
            last = (c.total, c.errors);
        }
        // No errors outside [10.25 s, 20.25 s): a base ratio of 0.
        assert!(errors_by_second[..10].iter().all(|e| *e == 0.0));
        assert!(errors_by_second[21..].iter().all(|e| *e == 0.0));
        // Inside, about half of 200 req/s.
        let inside: f64 = errors_by_second[10..21].iter().sum();
        assert!((inside - 1000.0).abs() < 5.0 * 1000f64.sqrt(), "{inside}");
    }

    #[test]
    fn nothing_is_counted_while_not_ready() {
        let start = Instant::now();
        let bounds = bucket_bounds();
        let b = behaviour(20.0, 0.0, Traffic::Exact);
        let mut c = Counters::new(start, 0, bounds.len());
        c.set_ready(start + Duration::from_secs(10), true, &b, &[], &bounds);
        assert_eq!(c.total, 0.0);
        c.advance(start + Duration::from_secs(20), &b, &[], &bounds);
        assert!((c.total - 200.0).abs() < 1e-9, "{}", c.total);
    }
}
