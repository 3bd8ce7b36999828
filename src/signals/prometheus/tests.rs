use super::*;
use crate::config::Loader;
use crate::signals::evidence::{wilson_lower, wilson_upper, Z_99};
use crate::signals::{BaselineRevision, ServingRevision};

fn defaults() -> crate::config::Policy {
    Loader::from_toml("")
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("built-in config")
        .config
        .defaults
}

fn ts(s: &str) -> Timestamp {
    s.parse().expect("time")
}

fn subject(baseline: bool) -> Subject {
    Subject {
        namespace: "production".into(),
        deployment: "web".into(),
        revision: 5,
        pod_template_hash: "bbb".into(),
        images: vec![],
        rollout_started: ts("2026-01-01T10:00:00Z"),
        baseline: baseline.then(|| BaselineRevision {
            revision: 4,
            pod_template_hash: "aaa".into(),
            since: None,
        }),
        pods: vec![],
        progress_deadline_exceeded: false,
        ..Default::default()
    }
}

fn serving_old(mut s: Subject) -> Subject {
    s.serving_others = vec![ServingRevision {
        revision: 4,
        pod_template_hash: "aaa".into(),
        ready_pods: 3,
    }];
    s
}

/// `errors` of `n` requests.
fn counts(errors: f64, n: f64) -> Counts {
    Counts {
        errors,
        n,
        ratio: errors / n,
    }
}

fn note() -> BaselineNote {
    BaselineNote::used(
        4,
        Measurement::ratio(0.005),
        Duration::from_secs(1800),
        ts("2026-01-01T10:00:00Z"),
    )
}

fn judge(s: &Subject, m: Counts, base: Option<f64>, old: Option<Counts>) -> Outcome {
    judge_error_ratio(
        &defaults().error_rate,
        s,
        m,
        base,
        &note(),
        old.as_ref(),
        false,
    )
}

fn why(o: &Outcome) -> &str {
    match o {
        Outcome::Inconclusive { why } => why,
        other => panic!("expected Inconclusive, got {other:?}"),
    }
}

#[test]
fn wilson_lower_bounds_match_the_textbook_values() {
    // 13 errors in 1,200 requests: 1.08 %, lower bound 0.58 % (issue 12).
    let l = wilson_lower(13.0, 1200.0, Z_99);
    assert!((l - 0.00575).abs() < 0.0001, "{l}");
    // 9 in 300 (3 %): the bound stays above 1 %.
    let l = wilson_lower(9.0, 300.0, Z_99);
    assert!((l - 0.01414).abs() < 0.0001, "{l}");
    assert_eq!(wilson_lower(0.0, 1000.0, Z_99), 0.0);
    assert_eq!(wilson_lower(0.0, 0.0, Z_99), 0.0);
    // Everything failing on a few requests is still uncertain.
    let l = wilson_lower(5.0, 5.0, Z_99);
    assert!(l > 0.4 && l < 1.0, "{l}");
    // More requests, a tighter bound.
    assert!(wilson_lower(30.0, 1000.0, Z_99) > wilson_lower(3.0, 100.0, Z_99));
}

#[test]
fn thirteen_errors_in_1200_requests_over_a_zero_baseline_are_not_significant() {
    let o = judge(&subject(true), counts(13.0, 1200.0), Some(0.0), None);
    assert_eq!(
        why(&o),
        "1.08 % of 1,200 requests is above the 1.00 % limit (2× the baseline 0.0 % and the floor 1.0 %), but not significantly: 99 % lower bound 0.58 %"
    );
}

#[test]
fn wilson_upper_bounds_match_the_textbook_values() {
    // No error in 536 requests: the bound just reaches 1 % (z²/(n+z²)).
    let u = wilson_upper(0.0, 536.0, Z_99);
    assert!((u - 0.01).abs() < 0.0002, "{u}");
    // 9 in 300 (3 %): at most 6.25 %.
    let u = wilson_upper(9.0, 300.0, Z_99);
    assert!((u - 0.0625).abs() < 0.0002, "{u}");
    assert_eq!(wilson_upper(0.0, 0.0, Z_99), 1.0);
    assert!(wilson_upper(3.0, 1000.0, Z_99) < wilson_upper(0.0, 100.0, Z_99));
    assert!(wilson_upper(5.0, 100.0, Z_99) > 0.05);
}

#[test]
fn no_error_in_118_requests_is_no_pass_yet_but_in_1000_it_is() {
    // What a 3 % release shows one time in 40: not proof of health,
    // and a Pass would reset its failing streak.
    let o = judge(&subject(true), counts(0.0, 118.0), Some(0.001), None);
    assert_eq!(
        why(&o),
        "0.00 % of 118 requests is below the 1.00 % limit (2× the baseline 0.1 % and the floor 1.0 %), but not yet significantly: 99 % upper bound 4.38 %; the span grows until it is (at most 2m)"
    );
    let o = judge(&subject(true), counts(1.0, 1000.0), Some(0.001), None);
    assert!(matches!(o, Outcome::Pass { .. }), "{o:?}");
    // The span is the whole window: what it holds is all there is.
    let o = judge_error_ratio(
        &defaults().error_rate,
        &subject(true),
        counts(0.0, 118.0),
        Some(0.001),
        &note(),
        None,
        true,
    );
    assert!(matches!(o, Outcome::Pass { .. }), "{o:?}");
}

#[test]
fn three_percent_of_300_requests_against_a_tenth_of_a_percent_fails() {
    let o = judge(&subject(true), counts(9.0, 300.0), Some(0.001), None);
    let Outcome::Fail {
        threshold,
        baseline,
        sentence,
        ..
    } = o
    else {
        panic!("expected a Fail, got {o:?}");
    };
    assert!(matches!(threshold, Threshold::RatioToBaseline { .. }));
    assert_eq!(baseline, Some(0.001));
    assert!(
        sentence.starts_with("3.0 % of 300 requests to revision 5 fail, above 2× the baseline 0.1 % and the floor 1.0 % (99 % lower bound 1.4 %)"),
        "{sentence}"
    );
    assert!(
        sentence.contains("baseline: revision 4 had 0.5 % over 30m before the rollout start 2026-01-01 10:00:00 UTC"),
        "{sentence}"
    );
}

#[test]
fn a_tripled_tiny_baseline_stays_under_the_relative_floor() {
    // 0.3 %: thirty times the baseline, but under the floor, and
    // significantly so (99 % upper bound 0.75 %).
    let o = judge(&subject(true), counts(6.0, 2000.0), Some(0.0001), None);
    assert!(o.is_pass(), "{o:?}");
}

#[test]
fn without_a_baseline_only_the_absolute_test_runs() {
    let s = subject(false);
    assert!(judge(&s, counts(60.0, 2000.0), None, None).is_pass());
    assert!(judge(&s, counts(600.0, 2000.0), None, None).is_fail());
}

#[test]
fn older_pods_failing_alike_over_the_same_span_are_not_blamed_on_the_new_revision() {
    let s = serving_old(subject(true));
    let o = judge(
        &s,
        counts(91.2, 300.0),
        Some(0.001),
        Some(counts(270.9, 900.0)),
    );
    assert_eq!(
        why(&o),
        "older pods fail alike over the same span (30.1 % of 900 requests for revision 4 vs 30.4 % for revision 5): not blamed on revision 5"
    );
    // Old pods healthy over the same span: the new ones are to blame.
    let o = judge(
        &s,
        counts(91.2, 300.0),
        Some(0.001),
        Some(counts(0.9, 900.0)),
    );
    assert!(o.is_fail(), "{o:?}");
}

#[test]
fn a_span_runs_from_the_last_counted_result_or_the_rollout_start_capped_at_the_window() {
    let mut s = subject(true);
    let window = Duration::from_secs(120);
    let signal = SignalId::ErrorRate;
    // First tick, 15.5 s after the rollout started.
    let now = ts("2026-01-01T10:00:15.5Z");
    assert_eq!(
        measured_span(&s, &signal, window, now),
        Ok(Duration::from_millis(15_500))
    );
    // Long after the rollout: the window.
    let late = ts("2026-01-01T11:00:00Z");
    assert_eq!(measured_span(&s, &signal, window, late), Ok(window));
    // Since the last counted result of this signal only.
    s.counted_until
        .insert(signal.clone(), ts("2026-01-01T10:59:45Z"));
    assert_eq!(
        measured_span(&s, &signal, window, late),
        Ok(Duration::from_secs(15))
    );
    assert_eq!(
        measured_span(&s, &SignalId::Latency, window, late),
        Ok(window)
    );
    // Nothing new since.
    assert_eq!(
        measured_span(&s, &signal, window, ts("2026-01-01T10:59:45Z")),
        Err(ts("2026-01-01T10:59:45Z"))
    );
}

#[test]
fn the_baseline_window_never_reaches_back_before_the_previous_revision() {
    let lookback = Duration::from_secs(1800);
    let start = ts("2026-01-01T10:00:00Z");
    assert_eq!(baseline_window(lookback, start, None), Ok(lookback));
    assert_eq!(
        baseline_window(lookback, start, Some(ts("2026-01-01T09:59:35Z"))),
        Ok(Duration::from_secs(25))
    );
    // A lookback shorter than the minimum is what the user asked for.
    assert_eq!(
        baseline_window(
            Duration::from_secs(10),
            start,
            Some(ts("2026-01-01T09:59:50Z"))
        ),
        Ok(Duration::from_secs(10))
    );
    assert_eq!(
        baseline_window(lookback, start, Some(ts("2026-01-01T08:00:00Z"))),
        Ok(lookback)
    );
    let young = baseline_window(lookback, start, Some(ts("2026-01-01T09:59:50Z")));
    assert_eq!(
        young,
        Err("served only 10s before the rollout (since 09:59:50), too young to be a baseline (at least 20s)".into())
    );
}

#[test]
fn a_zero_latency_baseline_is_no_reference_and_older_pods_alike_are_not_blamed() {
    let p = defaults().latency;
    let s = subject(true);
    assert!(judge_latency(&p, &s, 0.3, Some(0.1), &note(), None).is_fail());
    assert!(judge_latency(&p, &s, 0.3, None, &note(), None).is_pass());
    assert!(judge_latency(&p, &s, 2.5, None, &note(), None).is_fail());
    let s = serving_old(s);
    let o = judge_latency(&p, &s, 0.3, Some(0.1), &note(), Some(0.28));
    assert_eq!(
        why(&o),
        "older pods are slow alike over the same span (280 ms for revision 4 vs 300 ms for revision 5): not blamed on revision 5"
    );
    assert!(judge_latency(&p, &s, 0.3, Some(0.1), &note(), Some(0.1)).is_fail());
}
