//! How much, and which, evidence a Prometheus signal weighs on one tick:
//! the span of requests it measures (only those since its last counted
//! result), whether an error ratio over them is significant (a one-sided
//! Wilson bound), and how far back the previous revision's baseline may
//! reach (never before it started serving). Pure arithmetic, no I/O.

use std::time::Duration;

use jiff::Timestamp;

use super::{promql_duration, SignalId, Subject};

/// z of a one-sided 99 % bound of the normal distribution.
pub const Z_99: f64 = 2.326;

/// The shortest life of a previous revision before the rollout that makes
/// a baseline (or the whole `baseline_lookback` when that is shorter: the
/// user asked for no more): a shorter window holds too few scrapes (two at
/// a 10 s scrape interval) to be a rate of anything.
pub const MIN_BASELINE_WINDOW: Duration = Duration::from_secs(20);

/// The Wilson score lower bound of a proportion `errors / n` at `z`
/// (one-sided: z = 2.326 is 99 %): the smallest true error ratio still
/// consistent with what was seen. Zero for no requests.
pub fn wilson_lower(errors: f64, n: f64, z: f64) -> f64 {
    if n.is_nan() || n <= 0.0 || !errors.is_finite() {
        return 0.0;
    }
    let p = (errors / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - spread) / (1.0 + z2 / n)).max(0.0)
}

/// The Wilson score upper bound of a proportion `errors / n` at `z`
/// (one-sided): the largest true error ratio still consistent with what
/// was seen. One for no requests: nothing rules anything out.
pub fn wilson_upper(errors: f64, n: f64, z: f64) -> f64 {
    if n.is_nan() || n <= 0.0 || !errors.is_finite() {
        return 1.0;
    }
    let p = (errors / n).clamp(0.0, 1.0);
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre + spread) / (1.0 + z2 / n)).min(1.0)
}

/// The span one tick of `signal` measures: from the evidence time of its
/// last counted result for this revision (or the rollout's start when
/// none was counted) to `now`, at most `longest`, at millisecond
/// precision. `Err(since)` when no time has passed since: nothing new.
pub fn measured_span(
    subject: &Subject,
    signal: &SignalId,
    longest: Duration,
    now: Timestamp,
) -> Result<Duration, Timestamp> {
    let since = subject
        .counted_until
        .get(signal)
        .copied()
        .map_or(subject.rollout_started, |c| c.max(subject.rollout_started));
    let elapsed = now.duration_since(since);
    let ms = elapsed.as_millis().clamp(0, i64::MAX as i128);
    let span = Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)).min(longest);
    if span.as_millis() == 0 {
        Err(since)
    } else {
        Ok(span)
    }
}

/// The window of the baseline query, evaluated at the rollout's start:
/// `lookback`, but never reaching back before the previous revision
/// started serving (`previous_since`; unknown: `lookback`). A previous
/// revision that served less than [`MIN_BASELINE_WINDOW`] (or `lookback`
/// if shorter) is too young to be a baseline: `Err(why)`.
pub fn baseline_window(
    lookback: Duration,
    rollout_started: Timestamp,
    previous_since: Option<Timestamp>,
) -> Result<Duration, String> {
    let Some(since) = previous_since else {
        return Ok(lookback);
    };
    let lived_ms = rollout_started.duration_since(since).as_millis();
    let lived = Duration::from_millis(u64::try_from(lived_ms.max(0)).unwrap_or(u64::MAX));
    let shortest = MIN_BASELINE_WINDOW.min(lookback);
    if lived < shortest {
        return Err(format!(
            "served only {} before the rollout (since {}), too young to be a baseline (at least {})",
            promql_duration(lived),
            hms(since),
            promql_duration(shortest)
        ));
    }
    Ok(lived.min(lookback))
}

/// The start of a span of `span` ending at `now`.
pub fn span_start(now: Timestamp, span: Duration) -> Timestamp {
    let ms = i64::try_from(span.as_millis()).unwrap_or(i64::MAX);
    now.checked_sub(jiff::SignedDuration::from_millis(ms))
        .unwrap_or(now)
}

/// `1.08 %`: a ratio with the precision a significance sentence needs.
pub fn pct2(ratio: f64) -> String {
    format!("{:.2} %", ratio * 100.0)
}

/// `10:00:05`, for spans within a tick or two.
pub fn hms(ts: Timestamp) -> String {
    ts.strftime("%H:%M:%S").to_string()
}
