//! Grouped Prometheus queries against a real Prometheus (Debian's) serving
//! backfilled data:
//!
//! - the watchdog's sum of a revision's buckets and its quantile give the
//!   numbers Prometheus's own `histogram_quantile` gives on the same data,
//!   over many bucket layouts (`+Inf` only, empty, non-monotonic, bounds at
//!   or below 0, no `+Inf`, the same bound written two ways, pods with
//!   different layouts) and quantiles (below 0, 0, 1, above 1);
//! - a bad release is caught in grouped mode; a good one meeting a messy
//!   condition is kept (old pods erroring behind the Service, low traffic,
//!   a warm-up burst);
//! - the queries of a tick are the same for 10 and for 1,000 targets.
//!
//! One Prometheus serves every case: started by the single `#[test]`, on
//! its own runtime, stopped when it returns (and killed after 10 minutes
//! whatever happens).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use rand::{Rng, SeedableRng};
use rollback_watchdog::config::{Config, Loader};
use rollback_watchdog::signals::grouped::{GroupedCache, GroupedVector, Members, Series};
use rollback_watchdog::signals::health::HealthProber;
use rollback_watchdog::signals::prometheus::PrometheusSource;
use rollback_watchdog::signals::quantile::{bucket_quantile, parse_le};
use rollback_watchdog::signals::{
    BaselineRevision, Outcome, ServingRevision, SignalId, SignalResult, Signals, Subject,
};
use rollback_watchdog::sim::prometheus::{self, PrometheusServer};

const STEP: i64 = 15;
const BOUNDS: [f64; 6] = [0.05, 0.1, 0.2, 0.5, 1.0, 2.5];

const GROUPED: &str = r#"
[defaults.error_rate]
grouped = true
errors_query = 'sum by (namespace, pod) (rate(http_requests_total{code=~"5.."}[{window}]))'
total_query = 'sum by (namespace, pod) (rate(http_requests_total[{window}]))'

[defaults.latency]
grouped = true
query = 'sum by (namespace, pod, le) (rate(http_request_duration_seconds_bucket[{window}]))'
quantile = 0.95
"#;

/// The fixed times of the data, a few hours ago.
#[derive(Clone, Copy)]
struct Times {
    t0: i64,
    rollout: i64,
    now: i64,
    /// When the histogram cases' samples are.
    tq: i64,
}

impl Times {
    fn new() -> Self {
        let t0 = (Timestamp::now().as_second() - 3 * 3600) / 60 * 60;
        Times {
            t0,
            rollout: t0 + 3600,
            now: t0 + 3600 + 30 * 60,
            tq: t0 + 600,
        }
    }
}

fn ts(s: i64) -> Timestamp {
    Timestamp::from_second(s).expect("a valid time")
}

/// What one pod does from `from` to `to` (seconds), sampled every `step`.
struct Pod {
    namespace: &'static str,
    pod: &'static str,
    rate: f64,
    /// Error ratio and latency bound (uniform on [0, this]) at second `t`
    /// relative to the rollout.
    behaviour: fn(i64) -> (f64, f64),
    from: i64,
    to: i64,
    step: i64,
}

fn healthy(_: i64) -> (f64, f64) {
    (0.001, 0.2)
}
fn bad(_: i64) -> (f64, f64) {
    (0.3, 0.5)
}
/// Old pods that start failing at the rollout (a shared dependency they
/// alone use, say), healthy before.
fn old_failing(t: i64) -> (f64, f64) {
    if t >= 0 {
        (0.3, 0.2)
    } else {
        (0.001, 0.2)
    }
}
/// A warm-up: every request fails for the first 20 s.
fn warmup(t: i64) -> (f64, f64) {
    if t < 20 {
        (1.0, 0.2)
    } else {
        (0.001, 0.2)
    }
}

fn pods(times: Times) -> Vec<Pod> {
    let r = times.rollout;
    let p = |namespace, pod, rate, behaviour: fn(i64) -> (f64, f64), from, to, step| Pod {
        namespace,
        pod,
        rate,
        behaviour,
        from,
        to,
        step,
    };
    let mut v = Vec::new();
    for ns in ["bad", "oldbad", "quiet"] {
        v.push(p(ns, "web-aaa-1", 20.0, healthy, times.t0, r, STEP));
    }
    for pod in ["web-bbb-1", "web-bbb-2"] {
        v.push(p("bad", pod, 20.0, bad, r, r + 3600, STEP));
        v.push(p("oldbad", pod, 20.0, healthy, r, r + 3600, STEP));
        v.push(p("quiet", pod, 0.1, healthy, r, r + 3600, STEP));
    }
    // Old pods still Ready behind the Service, failing, next to healthy new ones.
    v.push(p(
        "oldbad",
        "web-aaa-2",
        20.0,
        old_failing,
        times.t0,
        r + 3600,
        STEP,
    ));
    // The warm-up, every second around its own rollout (the main one).
    v.push(p("warmup", "web-aaa-1", 20.0, healthy, r - 600, r, 1));
    for pod in ["web-bbb-1", "web-bbb-2"] {
        v.push(p("warmup", pod, 20.0, warmup, r, r + 300, 1));
    }
    v
}

fn openmetrics(times: Times) -> String {
    use std::fmt::Write;
    let mut counters = String::from("# TYPE http_requests counter\n");
    let mut histograms = String::from("# TYPE http_request_duration_seconds histogram\n");
    for p in pods(times) {
        let labels = format!("namespace=\"{}\",pod=\"{}\"", p.namespace, p.pod);
        let (mut ok, mut err) = (0.0, 0.0);
        let mut buckets = vec![0.0; BOUNDS.len() + 1];
        let mut t = p.from;
        while t <= p.to {
            let _ = writeln!(
                counters,
                "http_requests_total{{{labels},code=\"200\"}} {ok} {t}"
            );
            let _ = writeln!(
                counters,
                "http_requests_total{{{labels},code=\"500\"}} {err} {t}"
            );
            for (i, b) in buckets.iter().enumerate() {
                let le = BOUNDS.get(i).map_or("+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    histograms,
                    "http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {b} {t}"
                );
            }
            let (ratio, latency) = (p.behaviour)(t - times.rollout);
            let n = p.rate * p.step as f64;
            ok += n * (1.0 - ratio);
            err += n * ratio;
            for (i, b) in buckets.iter_mut().enumerate() {
                let share = BOUNDS
                    .get(i)
                    .map_or(1.0, |bound| (bound / latency).min(1.0));
                *b += n * share;
            }
            t += p.step;
        }
    }
    let mut om = counters;
    om.push_str(&histograms);
    om.push_str(&histogram_cases_openmetrics(times.tq));
    om.push_str("# EOF\n");
    om
}

/// One histogram case: per pod of revision `web-bbb`, its buckets as
/// (`le` as written, cumulative count).
type Case = Vec<Vec<(String, f64)>>;

fn histogram_cases() -> Vec<Case> {
    let c = |pods: &[&[(&str, f64)]]| -> Case {
        pods.iter()
            .map(|b| b.iter().map(|(le, n)| ((*le).to_owned(), *n)).collect())
            .collect()
    };
    let mut cases = vec![
        c(&[
            &[
                ("0.05", 1.0),
                ("0.1", 3.0),
                ("0.25", 7.0),
                ("0.5", 9.0),
                ("1", 10.0),
                ("+Inf", 10.0),
            ],
            &[
                ("0.05", 0.0),
                ("0.1", 2.0),
                ("0.25", 2.0),
                ("0.5", 5.0),
                ("1", 8.0),
                ("+Inf", 12.0),
            ],
        ]),
        // +Inf only.
        c(&[&[("+Inf", 10.0)], &[("+Inf", 5.0)]]),
        // Nothing observed.
        c(&[
            &[("0.1", 0.0), ("+Inf", 0.0)],
            &[("0.1", 0.0), ("+Inf", 0.0)],
        ]),
        // Empty buckets below and between.
        c(&[&[
            ("0.1", 0.0),
            ("0.2", 0.0),
            ("0.4", 5.0),
            ("0.8", 5.0),
            ("+Inf", 5.0),
        ]]),
        // Not monotonic.
        c(&[&[("0.1", 10.0), ("0.2", 4.0), ("0.4", 12.0), ("+Inf", 11.0)]]),
        // Bounds at and below 0.
        c(&[&[("-1", 2.0), ("0", 4.0), ("1", 8.0), ("+Inf", 10.0)]]),
        c(&[&[("-0.5", 6.0), ("+Inf", 10.0)]]),
        // No +Inf bucket.
        c(&[&[("0.1", 3.0), ("0.2", 6.0)]]),
        // One bound written two ways, across pods and within one.
        c(&[
            &[("0.1", 3.0), ("1", 5.0), ("+Inf", 6.0)],
            &[("0.10", 1.0), ("1.0", 2.0), ("+Inf", 4.0)],
        ]),
        // Pods with different layouts.
        c(&[
            &[("0.1", 4.0), ("0.5", 6.0), ("+Inf", 8.0)],
            &[("0.2", 1.0), ("1", 9.0), ("+Inf", 10.0)],
        ]),
        // Most observations in +Inf.
        c(&[&[("0.1", 1.0), ("0.2", 2.0), ("+Inf", 100.0)]]),
        // Everything in the lowest bucket.
        c(&[&[("0.3", 10.0), ("0.6", 10.0), ("+Inf", 10.0)]]),
        // Fractional rates, as rate() gives.
        c(&[
            &[("0.05", 0.35), ("0.1", 1.2), ("0.5", 3.75), ("+Inf", 4.1)],
            &[("0.05", 0.05), ("0.1", 0.4), ("0.5", 0.45), ("+Inf", 2.05)],
        ]),
    ];
    // Random layouts: 1 to 3 pods, some decreases and empty buckets.
    let mut rng = rand::rngs::StdRng::seed_from_u64(14);
    let layouts: [&[&str]; 4] = [
        &[
            "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
        ],
        &["0.1", "0.2", "0.4", "0.8", "1.6"],
        &["1", "2", "3"],
        &["0.5"],
    ];
    for _ in 0..40 {
        let pods = rng.random_range(1..=3);
        let mut case = Vec::new();
        for _ in 0..pods {
            let layout = layouts[rng.random_range(0..layouts.len())];
            let mut n = 0.0;
            let mut buckets = Vec::new();
            for le in layout {
                if rng.random_bool(0.1) {
                    n -= f64::from(rng.random_range(0..3u8));
                } else if !rng.random_bool(0.3) {
                    n += f64::from(rng.random_range(0..50u8));
                }
                buckets.push(((*le).to_owned(), n.max(0.0)));
            }
            if !rng.random_bool(0.05) {
                n += f64::from(rng.random_range(0..20u8));
                buckets.push(("+Inf".to_owned(), n.max(0.0)));
            }
            case.push(buckets);
        }
        cases.push(case);
    }
    cases
}

/// The cases as gauges `hq_bucket` at `tq`, namespace `q<i>`, plus a pod
/// of another revision in each namespace that must not count.
fn histogram_cases_openmetrics(tq: i64) -> String {
    use std::fmt::Write;
    let mut om = String::from("# TYPE hq_bucket gauge\n");
    for (i, case) in histogram_cases().iter().enumerate() {
        for (p, buckets) in case.iter().enumerate() {
            for (le, n) in buckets {
                let _ = writeln!(
                    om,
                    "hq_bucket{{namespace=\"q{i}\",pod=\"web-bbb-{p}\",le=\"{le}\"}} {n} {tq}"
                );
            }
        }
        let _ = writeln!(
            om,
            "hq_bucket{{namespace=\"q{i}\",pod=\"web-aaa-1\",le=\"0.001\"}} 1000 {tq}"
        );
        let _ = writeln!(
            om,
            "hq_bucket{{namespace=\"q{i}\",pod=\"web-aaa-1\",le=\"+Inf\"}} 1000 {tq}"
        );
    }
    om
}

fn config(url: &str, extra: &str) -> Config {
    let toml = format!("[prometheus]\nurl = \"{url}\"\ntimeout = \"10s\"\n{extra}");
    Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .unwrap_or_else(|e| panic!("test config: {e}"))
        .config
}

fn subject(times: Times, namespace: &str) -> Subject {
    Subject {
        namespace: namespace.into(),
        deployment: "web".into(),
        revision: 2,
        pod_template_hash: "bbb".into(),
        rollout_started: ts(times.rollout),
        baseline: Some(BaselineRevision {
            revision: 1,
            pod_template_hash: "aaa".into(),
            since: None,
        }),
        ..Default::default()
    }
}

struct Ctx {
    times: Times,
    url: String,
}

impl Ctx {
    fn source(&self, extra: &str) -> PrometheusSource {
        PrometheusSource::new(&config(&self.url, extra).prometheus).expect("a Prometheus source")
    }

    async fn both(&self, s: &Subject, at: Timestamp) -> (SignalResult, SignalResult) {
        let c = config(&self.url, GROUPED);
        let source = self.source(GROUPED);
        let cache = GroupedCache::default();
        let p = &c.defaults;
        tokio::join!(
            cache.error_rate(&source, &p.error_rate, s, at),
            cache.latency(&source, &p.latency, Some(&p.error_rate), s, "test", at)
        )
    }
}

fn same(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

async fn quantiles_match_prometheus(ctx: &Ctx) -> Result<(), String> {
    let client =
        prometheus_http_query::Client::try_from(ctx.url.as_str()).map_err(|e| e.to_string())?;
    let raw = client
        .query("hq_bucket")
        .at(ctx.times.tq)
        .get()
        .await
        .map_err(|e| e.to_string())?;
    let series = raw.data().as_vector().ok_or("not a vector")?;
    let grouped = GroupedVector::new(series.iter().map(|s| {
        let m = s.metric();
        (
            m.get("namespace").cloned().unwrap_or_default(),
            Series {
                pod: m.get("pod").cloned().unwrap_or_default(),
                le: m.get("le").and_then(|le| parse_le(le)),
                value: s.sample().value(),
            },
        )
    }));
    let cases = histogram_cases().len();
    let mut compared = 0;
    let mut mismatches = Vec::new();
    for q in [
        -0.5, 0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0, 1.5,
    ] {
        let promql = format!(
            "histogram_quantile({q}, sum by (namespace, le) (hq_bucket{{pod=~\"web-bbb-.*\"}}))"
        );
        let answer = client
            .query(promql.as_str())
            .at(ctx.times.tq)
            .get()
            .await
            .map_err(|e| format!("{promql}: {e}"))?;
        let theirs: HashMap<String, f64> = answer
            .data()
            .as_vector()
            .ok_or("not a vector")?
            .iter()
            .map(|s| {
                (
                    s.metric().get("namespace").cloned().unwrap_or_default(),
                    s.sample().value(),
                )
            })
            .collect();
        for i in 0..cases {
            let ns = format!("q{i}");
            let members = Members {
                namespace: ns.clone(),
                prefixes: vec!["web-bbb-".into()],
                pods: vec![],
            };
            let mut buckets = grouped.buckets(&members);
            let ours = bucket_quantile(q, &mut buckets);
            let Some(&prom) = theirs.get(&ns) else {
                mismatches.push(format!("case {i} q {q}: Prometheus gave no result"));
                continue;
            };
            compared += 1;
            if !same(ours, prom) {
                mismatches.push(format!(
                    "case {i} q {q}: ours {ours}, Prometheus {prom} ({:?})",
                    histogram_cases()[i]
                ));
            }
        }
    }
    if !mismatches.is_empty() {
        return Err(mismatches.join("\n"));
    }
    eprintln!("compared {compared} quantiles with Prometheus's histogram_quantile");
    if compared < cases * 12 {
        return Err(format!("only {compared} compared"));
    }
    Ok(())
}

async fn a_bad_release_fails_both_signals_in_grouped_mode(ctx: &Ctx) -> Result<(), String> {
    let s = subject(ctx.times, "bad");
    let (errors, latency) = ctx.both(&s, ts(ctx.times.now)).await;
    if !errors.outcome.is_fail() {
        return Err(format!("error ratio: {}", errors.describe()));
    }
    if !latency.outcome.is_fail() {
        return Err(format!("latency: {}", latency.describe()));
    }
    // The numbers are the revision's own: 30 % errors, p95 of uniform [0, 0.5 s].
    let Outcome::Fail { measured, .. } = &errors.outcome else {
        return Err("no fail".into());
    };
    if (measured.value - 0.3).abs() > 0.01 {
        return Err(format!("error ratio {}", errors.describe()));
    }
    let Outcome::Fail {
        measured, baseline, ..
    } = &latency.outcome
    else {
        return Err("no fail".into());
    };
    if (measured.value - 0.475).abs() > 1e-6 || baseline.is_none_or(|b| (b - 0.19).abs() > 1e-6) {
        return Err(format!("latency {}", latency.describe()));
    }
    Ok(())
}

async fn old_pods_erroring_behind_the_service_do_not_count_against_the_new_revision(
    ctx: &Ctx,
) -> Result<(), String> {
    let mut s = subject(ctx.times, "oldbad");
    s.serving_others = vec![ServingRevision {
        revision: 1,
        pod_template_hash: "aaa".into(),
        ready_pods: 2,
    }];
    let (errors, latency) = ctx.both(&s, ts(ctx.times.now)).await;
    if !errors.outcome.is_pass() || !latency.outcome.is_pass() {
        return Err(format!("{} / {}", errors.describe(), latency.describe()));
    }
    // The older pods were measured (and are shown), not mixed in.
    let shown = errors.describe();
    if !shown.contains("older pods (revision 1)") || !shown.contains("30.0 %") {
        return Err(format!("older pods not shown: {shown}"));
    }
    Ok(())
}

async fn low_traffic_is_inconclusive_never_a_fail(ctx: &Ctx) -> Result<(), String> {
    let s = subject(ctx.times, "quiet");
    let (errors, latency) = ctx.both(&s, ts(ctx.times.now)).await;
    if !errors.outcome.is_inconclusive() || !latency.outcome.is_inconclusive() {
        return Err(format!("{} / {}", errors.describe(), latency.describe()));
    }
    if !errors.describe().contains("min_request_rate") {
        return Err(errors.describe());
    }
    Ok(())
}

async fn a_warm_up_burst_fails_fewer_ticks_than_the_threshold_and_then_passes(
    ctx: &Ctx,
) -> Result<(), String> {
    let mut s = subject(ctx.times, "warmup");
    if let Some(b) = s.baseline.as_mut() {
        b.since = Some(ts(ctx.times.rollout - 600));
    }
    let (mut run, mut fails, mut last_pass) = (0, 0, false);
    let mut seen = Vec::new();
    // Ticks every 15 s for two minutes; a Pass or a Fail is counted (the
    // next span starts after it), an Inconclusive is not (the span grows).
    for tick in 1..=8 {
        let at = ts(ctx.times.rollout + 15 * tick);
        let (errors, _) = ctx.both(&s, at).await;
        seen.push(format!("{}: {}", 15 * tick, errors.describe()));
        last_pass = errors.outcome.is_pass();
        if errors.outcome.is_fail() {
            fails += 1;
            run += 1;
            if run >= 3 {
                return Err(format!(
                    "three failing ticks in a row:\n{}",
                    seen.join("\n")
                ));
            }
        } else if last_pass {
            run = 0;
        }
        if !errors.outcome.is_inconclusive() {
            s.counted_until.insert(SignalId::ErrorRate, at);
        }
    }
    if fails == 0 || !last_pass {
        return Err(format!(
            "expected the burst seen, then passing:\n{}",
            seen.join("\n")
        ));
    }
    Ok(())
}

/// Queries in the second tick of `n` targets: the four scenario targets
/// and `n - 4` others with no data, each with its own rollout time.
async fn queries_in_a_tick(ctx: &Ctx, n: usize, extra: &str) -> usize {
    let counted = Arc::new(AtomicUsize::new(0));
    let c = counted.clone();
    let source = ctx.source(extra).with_observer(Arc::new(move |_| {
        c.fetch_add(1, Ordering::Relaxed);
    }));
    let config = config(&ctx.url, extra);
    let p = &config.defaults;
    let mut subjects: Vec<Subject> = ["bad", "oldbad", "quiet", "warmup"]
        .iter()
        .map(|ns| subject(ctx.times, ns))
        .collect();
    for i in 0..n.saturating_sub(4) {
        let mut s = subject(ctx.times, &format!("idle{i}"));
        s.rollout_started = ts(ctx.times.rollout + i as i64);
        subjects.push(s);
    }
    let signals = Signals::new(source, HealthProber::new().expect("a prober"), "test");
    let tick = |at: Timestamp, subjects: Vec<Subject>| {
        let signals = &signals;
        async move {
            futures::stream::iter(subjects.into_iter().map(|s| async move {
                // Every signal, as the loop asks them.
                let results = signals.evaluate(p, &s, at).await;
                (s, results)
            }))
            .buffer_unordered(16)
            .collect::<Vec<_>>()
            .await
        }
    };
    let first = ts(ctx.times.now);
    let done = tick(first, subjects).await;
    let subjects: Vec<Subject> = done
        .into_iter()
        .map(|(mut s, _)| {
            s.counted_until.insert(SignalId::ErrorRate, first);
            s.counted_until.insert(SignalId::Latency, first);
            s
        })
        .collect();
    counted.store(0, Ordering::Relaxed);
    tick(ts(ctx.times.now + 15), subjects).await;
    counted.load(Ordering::Relaxed)
}

async fn many_targets_share_one_query_per_tick(ctx: &Ctx) -> Result<(), String> {
    let ten = queries_in_a_tick(ctx, 10, GROUPED).await;
    let thousand = queries_in_a_tick(ctx, 1000, GROUPED).await;
    eprintln!("grouped: {ten} queries per tick for 10 targets, {thousand} for 1,000");
    if ten != thousand || ten == 0 || ten > 10 {
        return Err(format!(
            "{ten} queries for 10 targets, {thousand} for 1,000"
        ));
    }
    // Per-target templates: the count does grow, so the counter counts.
    let per_ten = queries_in_a_tick(ctx, 10, "").await;
    let per_twenty = queries_in_a_tick(ctx, 20, "").await;
    eprintln!("per-target: {per_ten} queries per tick for 10 targets, {per_twenty} for 20");
    if per_twenty <= per_ten {
        return Err(format!("per-target: {per_ten} for 10, {per_twenty} for 20"));
    }
    Ok(())
}

#[test]
fn grouped_queries_against_backfilled_data() {
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
        let ctx = Ctx {
            times,
            url: server.url().to_owned(),
        };
        let filter = std::env::var("GROUPED_CASE").unwrap_or_default();
        let mut failures = Vec::new();
        macro_rules! run {
            ($($case:ident),* $(,)?) => {$(
                let name = stringify!($case);
                if name.contains(&filter) {
                    match $case(&ctx).await {
                        Ok(()) => eprintln!("case {name} ... ok"),
                        Err(why) => {
                            eprintln!("case {name} ... FAILED: {why}");
                            failures.push(format!("{name}: {why}"));
                        }
                    }
                }
            )*};
        }
        run!(
            quantiles_match_prometheus,
            a_bad_release_fails_both_signals_in_grouped_mode,
            old_pods_erroring_behind_the_service_do_not_count_against_the_new_revision,
            low_traffic_is_inconclusive_never_a_fail,
            a_warm_up_burst_fails_fewer_ticks_than_the_threshold_and_then_passes,
            many_targets_share_one_query_per_tick,
        );
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
