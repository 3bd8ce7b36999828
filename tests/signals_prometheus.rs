//! The Prometheus signals against a real Prometheus (Debian's) serving
//! backfilled data: a baseline revision `web-aaa` and a new revision
//! `web-bbb` per scenario namespace, at fixed times two to three hours ago,
//! queried at fixed times so every number is exact.
//!
//! One Prometheus serves every case: it is started once by the single
//! `#[test]` below, which runs the cases as a table on its own runtime and
//! kills the process when it returns (it also runs under `timeout`). Each
//! case is an async fn named like the runbook; a failing case names itself.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use jiff::Timestamp;
use rollback_watchdog::config::{Config, Loader};
use rollback_watchdog::signals::health::HealthProber;
use rollback_watchdog::signals::prometheus::PrometheusSource;
use rollback_watchdog::signals::{
    evaluate_all, BaselineRevision, Outcome, ServingRevision, SignalId, SignalResult, Signals,
    Subject, Threshold,
};
use rollback_watchdog::sim::prometheus::{self, PrometheusServer};

/// Uniform latency up to this many seconds is the baseline's: p95 190 ms.
const BASE_LATENCY: f64 = 0.2;
/// Bucket bounds, with the latency ranges' ends among them so that
/// histogram_quantile's linear interpolation is exact.
const BOUNDS: [f64; 8] = [0.05, 0.1, 0.2, 0.26, 0.32, 0.5, 1.0, 2.5];
const STEP: i64 = 15;

/// What the pods of one revision do.
#[derive(Clone, Copy)]
struct Traffic {
    /// Requests per second per pod.
    rate: f64,
    error_ratio: f64,
    /// Latencies are uniform on [0, this] seconds.
    latency: f64,
    /// Whether the pods export a `code="500"` series at all.
    error_series: bool,
}

const HEALTHY: Traffic = Traffic {
    rate: 20.0,
    error_ratio: 0.001,
    latency: BASE_LATENCY,
    error_series: true,
};

struct Scenario {
    namespace: &'static str,
    baseline: Traffic,
    new: Traffic,
}

fn scenarios() -> Vec<Scenario> {
    let new = |f: fn(&mut Traffic)| {
        let mut t = HEALTHY;
        f(&mut t);
        t
    };
    vec![
        Scenario {
            namespace: "errors30",
            baseline: HEALTHY,
            new: new(|t| t.error_ratio = 0.3),
        },
        Scenario {
            namespace: "errors1",
            baseline: Traffic {
                error_ratio: 0.0001,
                ..HEALTHY
            },
            new: new(|t| t.error_ratio = 0.008),
        },
        Scenario {
            namespace: "errors3",
            baseline: Traffic {
                error_ratio: 0.005,
                ..HEALTHY
            },
            new: new(|t| t.error_ratio = 0.03),
        },
        Scenario {
            namespace: "slow16",
            baseline: HEALTHY,
            new: new(|t| t.latency = 0.32),
        },
        Scenario {
            namespace: "slow13",
            baseline: HEALTHY,
            new: new(|t| t.latency = 0.26),
        },
        Scenario {
            namespace: "quiet",
            baseline: HEALTHY,
            new: new(|t| t.rate = 0.25),
        },
        Scenario {
            namespace: "idle",
            baseline: HEALTHY,
            new: new(|t| t.rate = 0.0),
        },
        Scenario {
            namespace: "clean",
            baseline: HEALTHY,
            new: new(|t| {
                t.error_ratio = 0.0;
                t.error_series = false;
            }),
        },
    ]
}

/// The fixed times of the data: baseline pods serve from `t0` to the
/// rollout start, new pods from the rollout start for an hour; cases
/// query at `now`.
#[derive(Clone, Copy)]
struct Times {
    t0: i64,
    rollout: i64,
    now: i64,
    /// The rollout of issue 12's fine-grained scenarios.
    r2: i64,
}

impl Times {
    fn new() -> Self {
        let t0 = (Timestamp::now().as_second() - 3 * 3600) / 60 * 60;
        Times {
            t0,
            rollout: t0 + 3600,
            now: t0 + 3600 + 50 * 60,
            r2: t0 + 90 * 60,
        }
    }
    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("a valid time")
    }
}

fn openmetrics(times: Times) -> String {
    use std::fmt::Write;
    // (namespace, pod, traffic, from, to)
    let mut pods = Vec::new();
    for s in scenarios() {
        pods.push((
            s.namespace,
            "web-aaa-1",
            s.baseline,
            times.t0,
            times.rollout,
        ));
        for pod in ["web-bbb-1", "web-bbb-2"] {
            pods.push((s.namespace, pod, s.new, times.rollout, times.rollout + 3600));
        }
    }
    let samples = |from: i64, to: i64| (from..=to).step_by(STEP as usize);
    let (fine_counters, fine_histograms) = fine_openmetrics(times);
    let mut om = String::from("# TYPE http_requests counter\n");
    om.push_str(&fine_counters);
    for (ns, pod, t, from, to) in &pods {
        let mut codes = vec![("200", 1.0 - t.error_ratio)];
        if t.error_series {
            codes.push(("500", t.error_ratio));
        }
        for (code, share) in codes {
            for ts in samples(*from, *to) {
                let n = t.rate * (ts - from) as f64 * share;
                let _ = writeln!(
                    om,
                    "http_requests_total{{namespace=\"{ns}\",pod=\"{pod}\",code=\"{code}\"}} {n} {ts}"
                );
            }
        }
    }
    om.push_str("# TYPE http_request_duration_seconds histogram\n");
    om.push_str(&fine_histograms);
    for (ns, pod, t, from, to) in &pods {
        let labels = format!("namespace=\"{ns}\",pod=\"{pod}\"");
        for bound in BOUNDS.iter().map(|b| b.to_string()).chain(["+Inf".into()]) {
            let share = match bound.parse::<f64>() {
                Ok(b) if b.is_finite() => (b / t.latency).min(1.0),
                _ => 1.0,
            };
            for ts in samples(*from, *to) {
                let n = t.rate * (ts - from) as f64 * share;
                let _ = writeln!(
                    om,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n} {ts}"
                );
            }
        }
        for ts in samples(*from, *to) {
            let n = t.rate * (ts - from) as f64;
            let _ = writeln!(
                om,
                "http_request_duration_seconds_count{{{labels}}} {n} {ts}"
            );
            let sum = n * t.latency / 2.0;
            let _ = writeln!(
                om,
                "http_request_duration_seconds_sum{{{labels}}} {sum} {ts}"
            );
        }
    }
    om.push_str("# EOF\n");
    om
}

/// Issue 12's scenarios, sampled every second around a second rollout
/// time `r2` so that spans of a few seconds hold samples. Each pod:
/// namespace, name, requests/s, error ratio at a second relative to `r2`,
/// latency (uniform up to, seconds) if it exports a histogram, and the
/// seconds relative to `r2` it serves.
struct FinePod {
    namespace: &'static str,
    pod: &'static str,
    rate: f64,
    error_ratio: fn(i64) -> f64,
    latency: Option<f64>,
    from: i64,
    to: i64,
}

/// 100 % errors for 5 s, a minute after the rollout.
fn burst(t: i64) -> f64 {
    if (60..65).contains(&t) {
        1.0
    } else {
        0.001
    }
}

/// Old and new pods alike: 30 % errors from a minute after the rollout.
fn outage(t: i64) -> f64 {
    if t >= 60 {
        0.3
    } else {
        0.001
    }
}

fn fine_pods() -> Vec<FinePod> {
    let pod = |namespace, pod, rate, error_ratio: fn(i64) -> f64, from, to| FinePod {
        namespace,
        pod,
        rate,
        error_ratio,
        latency: None,
        from,
        to,
    };
    let healthy: fn(i64) -> f64 = |_| 0.001;
    let clean: fn(i64) -> f64 = |_| 0.0;
    let three: fn(i64) -> f64 = |_| 0.03;
    let thirty: fn(i64) -> f64 = |_| 0.3;
    let thirteen: fn(i64) -> f64 = |_| 13.0 / 1200.0;
    let mut pods = vec![
        pod("burst", "web-aaa-1", 20.0, healthy, -300, 0),
        pod("sig13", "web-aaa-1", 20.0, clean, -300, 0),
        pod("sig3", "web-aaa-1", 20.0, healthy, -300, 0),
        pod("outage", "web-aaa-1", 20.0, outage, -300, 300),
        pod("outage", "web-aaa-2", 20.0, outage, -300, 300),
        pod("canary", "web-aaa-1", 20.0, healthy, -300, 300),
        pod("canary", "web-aaa-2", 20.0, healthy, -300, 300),
    ];
    for name in ["web-bbb-1", "web-bbb-2", "web-bbb-3"] {
        pods.push(pod("burst", name, 20.0, burst, 0, 300));
        pods.push(pod("sig3", name, 20.0, three, 0, 300));
        // The previous revision served only 25 s before this rollout.
        pods.push(FinePod {
            latency: Some(BASE_LATENCY),
            ..pod("close", name, 20.0, three, 0, 300)
        });
    }
    for name in ["web-aaa-1", "web-aaa-2", "web-aaa-3"] {
        pods.push(FinePod {
            latency: Some(BASE_LATENCY),
            ..pod("close", name, 20.0, healthy, -25, 0)
        });
    }
    for name in ["web-bbb-1", "web-bbb-2"] {
        pods.push(pod("sig13", name, 20.0, thirteen, 0, 300));
        pods.push(pod("outage", name, 20.0, outage, 0, 300));
        pods.push(pod("canary", name, 20.0, thirty, 0, 300));
        pods.push(FinePod {
            latency: Some(BASE_LATENCY),
            ..pod("lowlat", name, 1.5, healthy, 0, 300)
        });
    }
    pods.push(FinePod {
        latency: Some(BASE_LATENCY),
        ..pod("lowlat", "web-aaa-1", 20.0, healthy, -300, 0)
    });
    pods
}

/// The counter lines and the histogram lines of [`fine_pods`], every second.
fn fine_openmetrics(times: Times) -> (String, String) {
    use std::fmt::Write;
    let (mut counters, mut histograms) = (String::new(), String::new());
    for p in fine_pods() {
        let (mut ok, mut errors) = (Vec::new(), Vec::new());
        let (mut n_ok, mut n_err) = (0.0, 0.0);
        for t in p.from..=p.to {
            ok.push((t, n_ok));
            errors.push((t, n_err));
            let e = (p.error_ratio)(t);
            n_ok += p.rate * (1.0 - e);
            n_err += p.rate * e;
        }
        for (code, series) in [("200", &ok), ("500", &errors)] {
            for (t, n) in series {
                let _ = writeln!(
                    counters,
                    "http_requests_total{{namespace=\"{}\",pod=\"{}\",code=\"{code}\"}} {n} {}",
                    p.namespace,
                    p.pod,
                    times.r2 + t
                );
            }
        }
        let Some(latency) = p.latency else { continue };
        let labels = format!("namespace=\"{}\",pod=\"{}\"", p.namespace, p.pod);
        for bound in BOUNDS.iter().map(|b| b.to_string()).chain(["+Inf".into()]) {
            let share = match bound.parse::<f64>() {
                Ok(b) if b.is_finite() => (b / latency).min(1.0),
                _ => 1.0,
            };
            for t in p.from..=p.to {
                let n = p.rate * (t - p.from) as f64 * share;
                let _ = writeln!(
                    histograms,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n} {}",
                    times.r2 + t
                );
            }
        }
        for t in p.from..=p.to {
            let n = p.rate * (t - p.from) as f64;
            let _ = writeln!(
                histograms,
                "http_request_duration_seconds_count{{{labels}}} {n} {}",
                times.r2 + t
            );
            let _ = writeln!(
                histograms,
                "http_request_duration_seconds_sum{{{labels}}} {} {}",
                n * latency / 2.0,
                times.r2 + t
            );
        }
    }
    (counters, histograms)
}

const RULES: &str = r#"
[[defaults.rules]]
name = "server-errors"
query = 'sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}", code="500"}[{window}])) or vector(0)'
op = ">"
threshold = 0

[[defaults.rules]]
name = "per-pod-rates"
query = 'rate(http_requests_total{namespace="{namespace}", pod=~"{pods}"}[{window}])'
op = ">"
threshold = 1000

[[defaults.rules]]
name = "share-of-itself"
query = 'sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}"}[{window}])) / sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}"}[{window}]))'
op = "!="
threshold = 1
"#;

fn config(prometheus_url: &str, timeout: &str) -> Config {
    let toml =
        format!("[prometheus]\nurl = \"{prometheus_url}\"\ntimeout = \"{timeout}\"\n{RULES}");
    Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .unwrap_or_else(|e| panic!("test config: {e}"))
        .config
}

struct Ctx {
    times: Times,
    config: Config,
    source: PrometheusSource,
}

impl Ctx {
    fn subject(&self, namespace: &str) -> Subject {
        Subject {
            namespace: namespace.into(),
            deployment: "web".into(),
            revision: 2,
            pod_template_hash: "bbb".into(),
            images: vec!["web:v2".into()],
            rollout_started: Times::ts(self.times.rollout),
            baseline: Some(BaselineRevision {
                revision: 1,
                pod_template_hash: "aaa".into(),
                since: None,
            }),
            pods: vec![],
            progress_deadline_exceeded: false,
            ..Default::default()
        }
    }

    fn now(&self) -> Timestamp {
        Times::ts(self.times.now)
    }

    /// A subject of the fine-grained scenarios: revision 2 rolled out at
    /// `r2`, revision 1 serving since `r2 + previous_since` seconds.
    fn fine_subject(&self, namespace: &str, previous_since: Option<i64>) -> Subject {
        let mut s = self.subject(namespace);
        s.rollout_started = Times::ts(self.times.r2);
        if let Some(b) = s.baseline.as_mut() {
            b.since = previous_since.map(|t| Times::ts(self.times.r2 + t));
        }
        s
    }

    /// `r2 + secs` seconds, at millisecond precision.
    fn at(&self, secs: f64) -> Timestamp {
        let ms = (self.times.r2 as f64 * 1000.0 + secs * 1000.0).round() as i64;
        Timestamp::from_millisecond(ms).expect("a valid time")
    }

    /// The error ratio at `r2 + at`, with the last counted result at
    /// `r2 + counted` (none: the first tick).
    async fn fine_error_rate(
        &self,
        subject: &Subject,
        at: f64,
        counted: Option<f64>,
    ) -> SignalResult {
        let mut subject = subject.clone();
        if let Some(c) = counted {
            subject
                .counted_until
                .insert(SignalId::ErrorRate, self.at(c));
        }
        let policy = &self.config.defaults.error_rate;
        self.source
            .error_rate(policy, &subject, "test", self.at(at))
            .await
    }

    async fn error_rate(&self, namespace: &str) -> SignalResult {
        let policy = &self.config.defaults.error_rate;
        self.source
            .error_rate(policy, &self.subject(namespace), "test", self.now())
            .await
    }

    async fn latency(&self, namespace: &str) -> SignalResult {
        let policy = &self.config.defaults.latency;
        self.source
            .latency(policy, None, &self.subject(namespace), "test", self.now())
            .await
    }

    async fn rule(&self, name: &str, namespace: &str) -> SignalResult {
        let rule = self
            .config
            .defaults
            .rules
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("rule {name}"));
        self.source
            .rule(rule, None, &self.subject(namespace), "test", self.now())
            .await
    }
}

type Check = Result<(), String>;

fn fail_parts(r: &SignalResult) -> Result<(f64, &Threshold, Option<f64>, &str), String> {
    match &r.outcome {
        Outcome::Fail {
            measured,
            threshold,
            baseline,
            sentence,
        } => Ok((measured.value, threshold, *baseline, sentence)),
        other => Err(format!("expected a Fail, got {other:?}")),
    }
}

fn expect_inconclusive(r: &SignalResult, why_contains: &str) -> Check {
    match &r.outcome {
        Outcome::Inconclusive { why } if why.contains(why_contains) => Ok(()),
        other => Err(format!(
            "expected Inconclusive mentioning {why_contains:?}, got {other:?}"
        )),
    }
}

fn expect_pass(r: &SignalResult) -> Check {
    if r.outcome.is_pass() {
        Ok(())
    } else {
        Err(format!("expected a Pass, got {:?}", r.outcome))
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6 * b.abs().max(1.0)
}

fn expect_fail_describing(r: &SignalResult, text: &str) -> Check {
    fail_parts(r)?;
    if r.describe() == text {
        Ok(())
    } else {
        Err(format!("describe: {}\n  expected: {text}", r.describe()))
    }
}

async fn a_burst_is_counted_once_the_next_tick_measures_only_new_requests(c: &Ctx) -> Check {
    let s = c.fine_subject("burst", Some(-300));
    // The tick whose span (60 s, 75 s] holds the 5 s burst fails once...
    let first = c.fine_error_rate(&s, 75.0, Some(60.0)).await;
    let (value, _, _, sentence) = fail_parts(&first)?;
    if !(0.3..0.37).contains(&value) || !sentence.contains("of 900 requests") {
        return Err(format!("first tick: {value}, {sentence}"));
    }
    if first.span_from != Some(c.at(60.0)) || first.at != c.at(75.0) {
        return Err(format!("span {:?} .. {}", first.span_from, first.at));
    }
    // ...the next one, counted from there, no longer sees it.
    let second = c.fine_error_rate(&s, 90.0, Some(75.0)).await;
    expect_pass(&second)?;
    if !second
        .describe()
        .starts_with("error ratio 0.100 % of 900 requests, passing")
    {
        return Err(format!("second tick: {}", second.describe()));
    }
    // A span too short to hold two samples is no evidence either way.
    let short = c.fine_error_rate(&s, 90.0, Some(89.5)).await;
    expect_inconclusive(&short, "no new samples since")
}

async fn thirteen_errors_in_1200_requests_against_a_zero_baseline_are_not_a_fail(c: &Ctx) -> Check {
    let s = c.fine_subject("sig13", Some(-300));
    let r = c.fine_error_rate(&s, 180.0, Some(150.0)).await;
    expect_inconclusive(
        &r,
        "1.08 % of 1,200 requests is above the 1.00 % limit (2× the baseline 0.0 % and the floor 1.0 %), but not significantly: 99 % lower bound 0.58 %",
    )
}

async fn three_percent_against_a_tenth_of_a_percent_over_300_requests_fails(c: &Ctx) -> Check {
    let s = c.fine_subject("sig3", Some(-300));
    let r = c.fine_error_rate(&s, 180.0, Some(175.0)).await;
    let (value, threshold, baseline, sentence) = fail_parts(&r)?;
    if !close(value, 0.03) || !baseline.is_some_and(|b| close(b, 0.001)) {
        return Err(format!("measured {value}, baseline {baseline:?}"));
    }
    if !matches!(threshold, Threshold::RatioToBaseline { .. }) {
        return Err(format!("threshold {threshold:?}"));
    }
    if !sentence.contains("3.0 % of 300 requests to revision 2 fail") {
        return Err(format!("sentence: {sentence}"));
    }
    Ok(())
}

async fn close_deploys_keep_their_baseline_and_three_percent_against_a_tenth_fails(
    c: &Ctx,
) -> Check {
    // Revision 1 served 25 s before revision 2 rolled out.
    let s = c.fine_subject("close", Some(-25));
    let r = c.fine_error_rate(&s, 180.0, Some(165.0)).await;
    expect_fail_describing(
        &r,
        "error ratio 3.0 % > 2× baseline 0.100 % (30.00×, floor 1.0 %) (baseline revision 1 over 25s before the rollout)",
    )?;
    // Not knowing when it started, a 30m lookback dilutes it below
    // min_request_rate: the relative test is skipped, and says so.
    let diluted = c
        .fine_error_rate(&c.fine_subject("close", None), 180.0, Some(165.0))
        .await;
    expect_pass(&diluted)?;
    if !diluted
        .describe()
        .contains("(no baseline: revision 1: traffic")
    {
        return Err(format!("diluted: {}", diluted.describe()));
    }
    // A passing latency tick shows the baseline it compared with.
    let mut s = s;
    s.counted_until.insert(SignalId::Latency, c.at(165.0));
    let latency = c
        .source
        .latency(
            &c.config.defaults.latency,
            Some(&c.config.defaults.error_rate),
            &s,
            "test",
            c.at(180.0),
        )
        .await;
    expect_pass(&latency)?;
    let text = latency.describe();
    if text != "latency 190 ms of 900 requests, passing (baseline revision 1: 190 ms over 25s before the rollout)" {
        return Err(format!("latency: {text}"));
    }
    Ok(())
}

fn serving_old(mut s: Subject, pods: u32) -> Subject {
    s.serving_others = vec![ServingRevision {
        revision: 1,
        pod_template_hash: "aaa".into(),
        ready_pods: pods,
    }];
    s
}

async fn a_downstream_outage_hurting_old_and_new_pods_alike_is_not_blamed_on_the_new_revision(
    c: &Ctx,
) -> Check {
    let s = serving_old(c.fine_subject("outage", Some(-300)), 2);
    let r = c.fine_error_rate(&s, 120.0, Some(105.0)).await;
    expect_inconclusive(
        &r,
        "older pods fail alike over the same span (30.0 % of 600 requests for revision 1 vs 30.0 % for revision 2): not blamed on revision 2",
    )?;
    // The same errors on the new pods only are theirs.
    let s = serving_old(c.fine_subject("canary", Some(-300)), 2);
    let r = c.fine_error_rate(&s, 120.0, Some(105.0)).await;
    expect_fail_describing(
        &r,
        "error ratio 30.0 % > max 5.0 % (baseline revision 1: 0.100 % over 5m before the rollout; older pods (revision 1) over the same span: 0.1 % of 600 requests)",
    )
}

async fn latency_over_too_few_requests_is_inconclusive(c: &Ctx) -> Check {
    let mut s = c.fine_subject("lowlat", Some(-300));
    s.counted_until.insert(SignalId::Latency, c.at(165.0));
    let r = c
        .source
        .latency(
            &c.config.defaults.latency,
            Some(&c.config.defaults.error_rate),
            &s,
            "test",
            c.at(180.0),
        )
        .await;
    expect_inconclusive(&r, "45 requests since")?;
    expect_inconclusive(&r, "fewer than latency.min_requests 100")
}

async fn thirty_percent_errors_fail_naming_the_ratio_and_the_max(c: &Ctx) -> Check {
    let r = c.error_rate("errors30").await;
    let (value, threshold, baseline, sentence) = fail_parts(&r)?;
    if !close(value, 0.3) {
        return Err(format!("measured {value}, expected 0.3"));
    }
    if !matches!(threshold, Threshold::Max { limit } if close(limit.value, 0.05)) {
        return Err(format!("threshold {threshold:?}"));
    }
    if !baseline.is_some_and(|b| close(b, 0.001)) {
        return Err(format!("baseline {baseline:?}, expected 0.001"));
    }
    let text = r.describe();
    if text
        != "error ratio 30.0 % > max 5.0 % (baseline revision 1: 0.1 % over 30m before the rollout)"
    {
        return Err(format!("describe: {text}"));
    }
    if !(sentence.contains("30.0 %")
        && sentence.contains("max 5.0 %")
        && sentence.contains("revision 1 had 0.1 %"))
    {
        return Err(format!("sentence: {sentence}"));
    }
    Ok(())
}

async fn one_percent_over_a_tiny_baseline_passes_under_the_relative_floor(c: &Ctx) -> Check {
    let r = c.error_rate("errors1").await;
    expect_pass(&r)?;
    match &r.outcome {
        Outcome::Pass { measured: Some(m) } if close(m.value, 0.008) => Ok(()),
        other => Err(format!("measured {other:?}, expected 0.8 %")),
    }
}

async fn six_times_the_baseline_above_the_floor_fails_against_the_baseline(c: &Ctx) -> Check {
    let r = c.error_rate("errors3").await;
    let (value, threshold, baseline, _) = fail_parts(&r)?;
    if !close(value, 0.03) || !baseline.is_some_and(|b| close(b, 0.005)) {
        return Err(format!("measured {value}, baseline {baseline:?}"));
    }
    match threshold {
        Threshold::RatioToBaseline { max_ratio, .. } if close(*max_ratio, 2.0) => Ok(()),
        other => Err(format!("threshold {other:?}")),
    }
}

async fn without_a_previous_revision_only_the_absolute_test_runs(c: &Ctx) -> Check {
    let mut subject = c.subject("errors3");
    subject.baseline = None;
    let r = c
        .source
        .error_rate(&c.config.defaults.error_rate, &subject, "test", c.now())
        .await;
    expect_pass(&r)
}

async fn latency_one_point_six_times_the_baseline_fails_showing_the_baseline_at_rollout_start(
    c: &Ctx,
) -> Check {
    let r = c.latency("slow16").await;
    let (value, threshold, baseline, sentence) = fail_parts(&r)?;
    if !close(value, 0.304) {
        return Err(format!("measured {value}, expected p95 0.304"));
    }
    // The baseline pods stopped at the rollout start: only an evaluation
    // at that time (over the 30m lookback) can see 190 ms.
    if !baseline.is_some_and(|b| close(b, 0.19)) {
        return Err(format!(
            "baseline {baseline:?}, expected 0.19 at the rollout start"
        ));
    }
    if !matches!(threshold, Threshold::RatioToBaseline { max_ratio, .. } if close(*max_ratio, 1.5))
    {
        return Err(format!("threshold {threshold:?}"));
    }
    let text = r.describe();
    if text != "latency 304 ms > 1.5× baseline 190 ms (1.60×, floor 50 ms) (baseline revision 1 over 30m before the rollout)" {
        return Err(format!("describe: {text}"));
    }
    let started = Times::ts(c.times.rollout)
        .strftime("%Y-%m-%d %H:%M:%S UTC")
        .to_string();
    if !(sentence.contains("304 ms") && sentence.contains("190 ms") && sentence.contains(&started))
    {
        return Err(format!("sentence: {sentence}"));
    }
    Ok(())
}

async fn latency_one_point_three_times_the_baseline_passes(c: &Ctx) -> Check {
    let r = c.latency("slow13").await;
    match &r.outcome {
        Outcome::Pass { measured: Some(m) } if close(m.value, 0.247) => Ok(()),
        other => Err(format!("expected a Pass at 247 ms, got {other:?}")),
    }
}

async fn traffic_below_min_request_rate_is_inconclusive(c: &Ctx) -> Check {
    let r = c.error_rate("quiet").await;
    expect_inconclusive(&r, "below min_request_rate 1 req/s")?;
    expect_inconclusive(&r, "0.5 req/s")
}

async fn no_series_at_all_is_inconclusive(c: &Ctx) -> Check {
    expect_inconclusive(
        &c.error_rate("ghost").await,
        "total_query: the query returned no series",
    )?;
    expect_inconclusive(&c.latency("ghost").await, "no series")
}

async fn no_requests_make_latency_nan_and_inconclusive(c: &Ctx) -> Check {
    expect_inconclusive(&c.latency("idle").await, "NaN")?;
    expect_inconclusive(&c.error_rate("idle").await, "below min_request_rate")
}

async fn a_service_that_never_served_a_5xx_has_a_zero_error_ratio(c: &Ctx) -> Check {
    let r = c.error_rate("clean").await;
    match &r.outcome {
        Outcome::Pass { measured: Some(m) } if m.value == 0.0 => Ok(()),
        other => Err(format!("expected a Pass at 0 %, got {other:?}")),
    }
}

async fn a_rule_fails_when_its_comparison_holds_and_passes_otherwise(c: &Ctx) -> Check {
    let failing = c.rule("server-errors", "errors30").await;
    if failing.signal != SignalId::rule("server-errors") {
        return Err(format!("signal {}", failing.signal));
    }
    let (value, threshold, _, _) = fail_parts(&failing)?;
    if !close(value, 12.0) {
        return Err(format!("measured {value}, expected 12 errors/s"));
    }
    if !matches!(threshold, Threshold::FailsWhen { op, .. } if op == ">") {
        return Err(format!("threshold {threshold:?}"));
    }
    if failing.describe() != "rule server-errors 12 > 0" {
        return Err(format!("describe: {}", failing.describe()));
    }
    expect_pass(&c.rule("server-errors", "clean").await)
}

async fn a_rule_returning_many_series_is_inconclusive_and_says_to_aggregate(c: &Ctx) -> Check {
    let r = c.rule("per-pod-rates", "errors30").await;
    expect_inconclusive(&r, "returned 4 series")?;
    expect_inconclusive(&r, "must aggregate")
}

async fn a_rule_returning_nan_is_inconclusive(c: &Ctx) -> Check {
    expect_inconclusive(&c.rule("share-of-itself", "idle").await, "NaN")?;
    expect_pass(&c.rule("share-of-itself", "errors30").await)
}

async fn an_unreachable_prometheus_is_inconclusive_for_every_prometheus_signal(c: &Ctx) -> Check {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        l.local_addr().map_err(|e| e.to_string())?
    };
    let config = config(&format!("http://{closed}"), "1s");
    let source = PrometheusSource::new(&config.prometheus).map_err(|e| e.to_string())?;
    let subject = c.subject("errors30");
    let r = bounded(source.error_rate(&config.defaults.error_rate, &subject, "t", c.now())).await?;
    expect_inconclusive(&r, "unreachable")?;
    let r = bounded(source.latency(&config.defaults.latency, None, &subject, "t", c.now())).await?;
    expect_inconclusive(&r, "unreachable")?;
    let rule = &config.defaults.rules[0];
    expect_inconclusive(
        &bounded(source.rule(rule, None, &subject, "t", c.now())).await?,
        "unreachable",
    )
}

async fn a_prometheus_that_never_answers_is_inconclusive_and_the_pod_signal_still_judges(
    c: &Ctx,
) -> Check {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let config = config(&format!("http://{addr}"), "1s");
    let signals = Signals::new(
        PrometheusSource::new(&config.prometheus).map_err(|e| e.to_string())?,
        HealthProber::new().map_err(|e| e.to_string())?,
        "test",
    );
    let mut subject = c.subject("errors30");
    subject.pods =
        vec![std::sync::Arc::new(serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-bbb-1"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": "app", "image": "web:v2", "imageID": "", "ready": false, "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        }]},
    }))
    .map_err(|e| e.to_string())?)];
    let policy = &config.defaults;

    // The pod signal is not held up by Prometheus: it comes first.
    use futures::StreamExt;
    let first = tokio::time::timeout(
        Duration::from_secs(30),
        signals.stream(policy, &subject, c.now()).next(),
    )
    .await
    .map_err(|_| "no result at all".to_owned())?;
    match first {
        Some(r) if r.signal == SignalId::Pods && r.outcome.is_fail() => {}
        other => {
            return Err(format!(
                "first result {other:?}, expected the failing pod signal"
            ))
        }
    }

    let results = bounded(evaluate_all(&signals, policy, &subject, c.now())).await?;
    hold.abort();
    let ids: Vec<SignalId> = results.iter().map(|r| r.signal.clone()).collect();
    if ids != signals.configured(policy, &subject) {
        return Err(format!("results {ids:?} are not one per configured signal"));
    }
    for r in &results {
        let ok = match r.signal {
            SignalId::Pods => r.outcome.is_fail(),
            _ => {
                matches!(&r.outcome, Outcome::Inconclusive { why } if why.contains("did not answer within 1s"))
            }
        };
        if !ok {
            return Err(format!("{}: {:?}", r.signal, r.outcome));
        }
    }
    Ok(())
}

async fn the_bearer_token_is_read_per_query_and_headers_are_sent(c: &Ctx) -> Check {
    use axum::http::{header, HeaderMap, StatusCode};
    const JSON: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "application/json")];
    const TEXT: [(header::HeaderName, &str); 1] = [(header::CONTENT_TYPE, "text/plain")];
    // An auth proxy in front of the real Prometheus: it forwards only
    // queries carrying the current token and the tenant header.
    let upstream = c.source.clone();
    let now = c.now();
    let app = axum::Router::new().route(
        "/api/v1/query",
        axum::routing::get(move |headers: HeaderMap| {
            let upstream = upstream.clone();
            async move {
                let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
                let tenant = headers.get("x-scope-orgid").and_then(|v| v.to_str().ok());
                if auth != Some("Bearer t0ken-1") || tenant != Some("team-a") {
                    return (StatusCode::UNAUTHORIZED, TEXT, "unauthorized".to_owned());
                }
                let q = "sum(rate(http_requests_total{namespace=\"errors30\", pod=~\"web-bbb-.*\"}[2m]))";
                match upstream.query(&SignalId::ErrorRate, "total_query", q, now).await {
                    Ok(v) => (
                        StatusCode::OK,
                        JSON,
                        format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[0,"{v}"]}}]}}}}"#),
                    ),
                    Err(e) => (StatusCode::BAD_GATEWAY, JSON, e.to_string()),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let proxy = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let token = dir.path().join("token");
    std::fs::write(&token, "t0ken-1\n").map_err(|e| e.to_string())?;
    let toml = format!(
        "[prometheus]\nurl = \"http://{addr}\"\ntimeout = \"2s\"\nbearer_token_file = \"{}\"\n[prometheus.headers]\nX-Scope-OrgID = \"team-a\"\n",
        token.display()
    );
    let config = Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .map_err(|e| e.to_string())?
        .config;
    let source = PrometheusSource::new(&config.prometheus).map_err(|e| e.to_string())?;
    let subject = c.subject("errors30");
    let policy = &config.defaults.error_rate;
    let r = bounded(source.error_rate(policy, &subject, "t", now)).await?;
    // Both queries go through the proxy; errors_query answers the total
    // too, so the ratio is 1, which proves the token and header arrived.
    match &r.outcome {
        Outcome::Fail { measured, .. } if close(measured.value, 1.0) => {}
        other => return Err(format!("with the token: {other:?}")),
    }
    // A rotated token is read on the next query: the old one stops working.
    std::fs::write(&token, "t0ken-2").map_err(|e| e.to_string())?;
    let r = bounded(source.error_rate(policy, &subject, "t", now)).await?;
    proxy.abort();
    expect_inconclusive(&r, "401")
}

/// Liveness bound for cases that wait on timeouts (not a timing claim).
async fn bounded<T>(fut: impl Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| "no result within 30s".to_owned())
}

type Case = for<'a> fn(&'a Ctx) -> Pin<Box<dyn Future<Output = Check> + 'a>>;

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        vec![$((stringify!($name), (|c| Box::pin($name(c))) as Case)),*]
    };
}

#[test]
fn prometheus_signals_against_backfilled_data() {
    assert!(
        prometheus::available(),
        "prometheus and promtool must be on PATH (bash .ci/run installs Debian's package)"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async {
        let times = Times::new();
        // Killed with its process group when dropped, a panic included.
        let mut server =
            PrometheusServer::start_backfilled(&openmetrics(times), Duration::from_secs(600))
                .await
                .expect("prometheus starts on the backfilled data");
        let config = config(server.url(), "5s");
        let source = PrometheusSource::new(&config.prometheus).expect("a Prometheus source");
        let ctx = Ctx {
            times,
            config,
            source,
        };

        let cases: Vec<(&str, Case)> = cases![
            thirty_percent_errors_fail_naming_the_ratio_and_the_max,
            one_percent_over_a_tiny_baseline_passes_under_the_relative_floor,
            six_times_the_baseline_above_the_floor_fails_against_the_baseline,
            without_a_previous_revision_only_the_absolute_test_runs,
            latency_one_point_six_times_the_baseline_fails_showing_the_baseline_at_rollout_start,
            latency_one_point_three_times_the_baseline_passes,
            traffic_below_min_request_rate_is_inconclusive,
            no_series_at_all_is_inconclusive,
            no_requests_make_latency_nan_and_inconclusive,
            a_service_that_never_served_a_5xx_has_a_zero_error_ratio,
            a_rule_fails_when_its_comparison_holds_and_passes_otherwise,
            a_rule_returning_many_series_is_inconclusive_and_says_to_aggregate,
            a_rule_returning_nan_is_inconclusive,
            an_unreachable_prometheus_is_inconclusive_for_every_prometheus_signal,
            a_prometheus_that_never_answers_is_inconclusive_and_the_pod_signal_still_judges,
            the_bearer_token_is_read_per_query_and_headers_are_sent,
            a_burst_is_counted_once_the_next_tick_measures_only_new_requests,
            thirteen_errors_in_1200_requests_against_a_zero_baseline_are_not_a_fail,
            three_percent_against_a_tenth_of_a_percent_over_300_requests_fails,
            close_deploys_keep_their_baseline_and_three_percent_against_a_tenth_fails,
            a_downstream_outage_hurting_old_and_new_pods_alike_is_not_blamed_on_the_new_revision,
            latency_over_too_few_requests_is_inconclusive,
        ];
        let filter = std::env::var("SIGNAL_CASE").unwrap_or_default();
        let mut failures = Vec::new();
        for (name, case) in cases {
            if !name.contains(&filter) {
                continue;
            }
            match case(&ctx).await {
                Ok(()) => eprintln!("case {name} ... ok"),
                Err(why) => {
                    eprintln!("case {name} ... FAILED: {why}");
                    failures.push(format!("{name}: {why}"));
                }
            }
        }
        let log = server.log();
        server.stop().await;
        assert!(
            failures.is_empty(),
            "{} case(s) failed:\n{}\n\nPrometheus log:\n{log}",
            failures.len(),
            failures.join("\n")
        );
    });
}
