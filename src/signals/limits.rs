//! How a Prometheus signal's measured figure compares with its limits:
//! the error ratio against `max` and the baseline, significant in both
//! directions (Wilson bounds), and not blamed on the new revision when the
//! older pods fail alike; latency against `max` and the baseline. Pure: the
//! per-target and the grouped paths measure, this judges.

use jiff::Timestamp;

use super::evidence::{pct2, wilson_lower, wilson_upper, Z_99};
use super::{
    promql_duration, requests_text, revisions_text, BaselineNote, Measurement, Outcome, Subject,
    Threshold,
};
use crate::config::{ErrorRatePolicy, LatencyPolicy};

/// Errors and requests in a span, and their ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Counts {
    pub(super) errors: f64,
    pub(super) n: f64,
    pub(super) ratio: f64,
}

/// `the max 5.0 %` or `2× the baseline 0.1 % and the floor 1.0 %`: one
/// limit the error ratio is held to.
struct Limit {
    threshold: Threshold,
    value: f64,
    words: String,
    baseline: Option<f64>,
}

/// Pass, Fail or Inconclusive for the error ratio `m` of one span. Both
/// directions must be significant: a Fail needs the 99 % lower bound above
/// a limit, a Pass the 99 % upper bound below every limit, because one
/// Pass resets a failing streak (0 errors in 118 requests is what a 3 %
/// release shows one time in 40). An insignificant span is Inconclusive
/// and is not counted, so the next tick's span grows over it; once the
/// span is the whole `window` (`whole_window`), a ratio below the limits
/// passes on what the window holds: at low traffic that is all there is.
pub(super) fn judge_error_ratio(
    policy: &ErrorRatePolicy,
    subject: &Subject,
    m: Counts,
    base: Option<f64>,
    note: &BaselineNote,
    concurrent: Option<&Counts>,
    whole_window: bool,
) -> Outcome {
    let ratio = Measurement::ratio(m.ratio);
    let n = requests_text(m.n);
    let base_note = sentence_note(note, subject);
    let mut limits = vec![Limit {
        threshold: Threshold::Max {
            limit: Measurement::ratio(policy.max),
        },
        value: policy.max,
        words: format!("the max {}", Measurement::ratio(policy.max)),
        baseline: base,
    }];
    if let Some(b) = base {
        limits.push(Limit {
            threshold: Threshold::RatioToBaseline {
                max_ratio: policy.max_ratio_to_baseline,
                floor: Some(Measurement::ratio(policy.relative_floor)),
            },
            value: (policy.max_ratio_to_baseline * b).max(policy.relative_floor),
            words: format!(
                "{}× the baseline {} and the floor {}",
                policy.max_ratio_to_baseline,
                Measurement::ratio(b),
                Measurement::ratio(policy.relative_floor)
            ),
            baseline: Some(b),
        });
    }
    let lower = wilson_lower(m.errors, m.n, Z_99);
    let Some(broken) = limits.iter().find(|l| m.ratio > l.value) else {
        let upper = wilson_upper(m.errors, m.n, Z_99);
        let tightest = limits
            .iter()
            .min_by(|a, b| a.value.total_cmp(&b.value))
            .filter(|l| upper > l.value);
        if let (Some(limit), false) = (tightest, whole_window) {
            return Outcome::inconclusive(format!(
                "{} of {n} requests is below the {} limit ({}), but not yet significantly: 99 % upper bound {}; the span grows until it is (at most {})",
                pct2(m.ratio),
                pct2(limit.value),
                limit.words,
                pct2(upper),
                promql_duration(policy.window)
            ));
        }
        tracing::debug!(revision = subject.revision, ratio = m.ratio, %base_note, "error ratio passes");
        return Outcome::pass_with(ratio);
    };
    let Some(limit) = limits.iter().find(|l| lower > l.value) else {
        return Outcome::inconclusive(format!(
            "{} of {n} requests is above the {} limit ({}), but not significantly: 99 % lower bound {}",
            pct2(m.ratio),
            pct2(broken.value),
            broken.words,
            pct2(lower)
        ));
    };
    if let Some(old) = concurrent {
        let blame_above = (policy.max_ratio_to_baseline * old.ratio).max(policy.relative_floor);
        if lower <= blame_above {
            return Outcome::inconclusive(format!(
                "older pods fail alike over the same span ({} of {} requests for {} vs {ratio} for revision {}): not blamed on revision {}",
                Measurement::ratio(old.ratio),
                requests_text(old.n),
                revisions_text(&subject.serving_others.iter().map(|r| r.revision).collect::<Vec<_>>()),
                subject.revision,
                subject.revision
            ));
        }
    }
    Outcome::Fail {
        measured: ratio.clone(),
        threshold: limit.threshold.clone(),
        baseline: limit.baseline,
        sentence: format!(
            "{ratio} of {n} requests to revision {} fail, above {} (99 % lower bound {}); {base_note}",
            subject.revision,
            limit.words,
            Measurement::ratio(lower)
        ),
    }
}

/// The baseline as the end of a Fail's sentence: "baseline: revision 1
/// had 0.1 % over 30m before the rollout start 2026-11-27 10:00:00 UTC".
fn sentence_note(note: &BaselineNote, subject: &Subject) -> String {
    let mut text = match (&note.missing, note.revision, &note.value, note.window) {
        (None, Some(rev), Some(v), Some(w)) => format!(
            "baseline: revision {rev} had {v} over {} before the rollout start {}",
            promql_duration(w),
            when(subject.rollout_started)
        ),
        (Some(why), _, _, _) => format!("relative test skipped: {why}"),
        _ => "relative test skipped".to_owned(),
    };
    if let Some(c) = &note.concurrent {
        text.push_str(&format!("; {c}"));
    }
    text
}

pub(super) fn judge_latency(
    policy: &LatencyPolicy,
    subject: &Subject,
    v: f64,
    base: Option<f64>,
    note: &BaselineNote,
    concurrent: Option<f64>,
) -> Outcome {
    let measured = Measurement::seconds(v);
    let max = policy.max.as_secs_f64();
    let floor = policy.relative_floor.as_secs_f64();
    let base_note = sentence_note(note, subject);
    let failure = if v > max {
        Some(Outcome::Fail {
            measured: measured.clone(),
            threshold: Threshold::Max {
                limit: Measurement::seconds(max),
            },
            baseline: base,
            sentence: format!(
                "Latency of revision {} is {measured}, above the max {}; {base_note}",
                subject.revision,
                Measurement::seconds(max)
            ),
        })
    } else {
        base.filter(|b| v > policy.max_ratio_to_baseline * b && v > floor)
            .map(|b| Outcome::Fail {
                measured: measured.clone(),
                threshold: Threshold::RatioToBaseline {
                    max_ratio: policy.max_ratio_to_baseline,
                    floor: Some(Measurement::seconds(floor)),
                },
                baseline: Some(b),
                sentence: format!(
                    "Latency of revision {} is {measured}, {:.2}× the baseline {} (limit {}×, counted above {}); {base_note}",
                    subject.revision,
                    v / b,
                    Measurement::seconds(b),
                    policy.max_ratio_to_baseline,
                    Measurement::seconds(floor)
                ),
            })
    };
    let Some(failure) = failure else {
        tracing::debug!(revision = subject.revision, latency = v, %base_note, "latency passes");
        return Outcome::pass_with(measured);
    };
    match concurrent {
        Some(old) if !(v > policy.max_ratio_to_baseline * old && v > floor) => {
            Outcome::inconclusive(format!(
                "older pods are slow alike over the same span ({} for {} vs {measured} for revision {}): not blamed on revision {}",
                Measurement::seconds(old),
                revisions_text(&subject.serving_others.iter().map(|r| r.revision).collect::<Vec<_>>()),
                subject.revision,
                subject.revision
            ))
        }
        _ => failure,
    }
}

/// `2026-11-27 10:00:00 UTC`.
fn when(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}
