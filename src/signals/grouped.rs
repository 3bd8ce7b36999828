//! Grouped Prometheus queries (`error_rate.grouped`, `latency.grouped`):
//! a template that returns one series per `namespace` and `pod` (and `le`
//! for latency buckets) is asked once per tick for every target, and each
//! revision's figure is summed here from the series of its pods, so the
//! queries per tick do not grow with the number of targets.
//!
//! The revision's pods are those `{pods}` would match: in its namespace,
//! with the name prefix its ReplicaSet gives them (so a pod that crashed and
//! was replaced still counts), plus any pod the pod cache holds for it. The
//! error ratio sums errors and totals over them; latency sums the buckets
//! by `le` and takes the quantile exactly as `histogram_quantile` does
//! ([`super::quantile`]). Everything after that (significance, baseline,
//! older pods, min traffic, Inconclusive on missing data) is the per-target
//! path's own code.
//!
//! `{window}` must be shared for one query to serve many targets: a
//! target's span (the time since its last counted result) is cut down to
//! whole seconds below 30 s and to 5 s steps above, so a tick asks at most
//! a few dozen distinct windows per template, usually one. Cutting a span
//! only ever drops its oldest requests, so none is counted twice.
//!
//! A baseline is asked at the rollout's start, which differs per target:
//! one query per revision, and its sum is kept once the rollout is a
//! minute old (Prometheus has all the samples by then).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use tracing::Instrument;

use super::evidence::{baseline_window, measured_span, span_start};
use super::misconfigured::{enough, selectors, Misconfigured, CHECK_NAMES, PROBE, TRAFFIC};
use super::prometheus::{
    baseline_plan, error_rate_result, latency_result, no_new_samples, ratio_of, LatencySample,
    PrometheusSource, QueryError, QueryRecord, BASELINE, CURRENT, OTHERS,
};
use super::quantile::{bucket_quantile, parse_le, Bucket};
use super::{pod_name_prefix, promql_duration, Fill, SignalId, SignalResult, Subject};
use crate::config::{ErrorRatePolicy, LatencyPolicy, QueryTemplate};

/// One series of a grouped answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub pod: String,
    /// The `le` label, parsed, for bucket series.
    pub le: Option<f64>,
    pub value: f64,
}

/// A grouped answer, indexed for per-revision sums: namespace, then series
/// sorted by pod name (a revision's pods are one contiguous prefix range).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupedVector {
    by_namespace: HashMap<String, Vec<Series>>,
}

/// The pods of one revision (or of several older ones) in a namespace.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub namespace: String,
    /// Pod name prefixes (`<deployment>-<hash>-`, cut as the API server cuts).
    pub prefixes: Vec<String>,
    /// Pod names the pod cache holds for the revision.
    pub pods: Vec<String>,
}

impl Members {
    /// The revision under judgment: its prefix and its cached pods.
    pub fn current(subject: &Subject) -> Self {
        Members {
            namespace: subject.namespace.clone(),
            prefixes: vec![pod_name_prefix(
                &subject.deployment,
                &subject.pod_template_hash,
            )],
            pods: subject
                .pods
                .iter()
                .filter_map(|p| p.metadata.name.clone())
                .collect(),
        }
    }

    /// The older revisions still serving, when their pod names can be told
    /// apart from the current revision's (as [`Fill::others`]).
    pub fn others(subject: &Subject) -> Option<Self> {
        Fill::others(subject, Duration::from_secs(1), "")?;
        Some(Members {
            namespace: subject.namespace.clone(),
            prefixes: subject
                .serving_others
                .iter()
                .map(|r| pod_name_prefix(&subject.deployment, &r.pod_template_hash))
                .collect(),
            pods: Vec::new(),
        })
    }

    /// The previous revision (the baseline).
    pub fn baseline(subject: &Subject) -> Option<Self> {
        let b = subject.baseline.as_ref()?;
        Some(Members {
            namespace: subject.namespace.clone(),
            prefixes: vec![pod_name_prefix(&subject.deployment, &b.pod_template_hash)],
            pods: Vec::new(),
        })
    }
}

impl GroupedVector {
    /// From `(namespace, series)` pairs in any order.
    pub fn new(series: impl IntoIterator<Item = (String, Series)>) -> Self {
        let mut by_namespace: HashMap<String, Vec<Series>> = HashMap::new();
        for (ns, s) in series {
            by_namespace.entry(ns).or_default().push(s);
        }
        for v in by_namespace.values_mut() {
            v.sort_by(|a, b| a.pod.cmp(&b.pod));
        }
        GroupedVector { by_namespace }
    }

    pub fn is_empty(&self) -> bool {
        self.by_namespace.is_empty()
    }

    /// Every series of `members`' pods, each once.
    fn each<'a>(&'a self, members: &'a Members, mut f: impl FnMut(&'a Series)) {
        let Some(all) = self.by_namespace.get(&members.namespace) else {
            return;
        };
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for prefix in &members.prefixes {
            let start = all.partition_point(|s| s.pod.as_str() < prefix.as_str());
            let len = all[start..]
                .iter()
                .take_while(|s| s.pod.starts_with(prefix.as_str()))
                .count();
            ranges.push((start, start + len));
        }
        for pod in &members.pods {
            if members.prefixes.iter().any(|p| pod.starts_with(p.as_str())) {
                continue;
            }
            let start = all.partition_point(|s| s.pod < *pod);
            let len = all[start..].iter().take_while(|s| s.pod == *pod).count();
            ranges.push((start, start + len));
        }
        // Prefixes of one Deployment may nest (long names): count each once.
        ranges.sort_unstable();
        let mut done = 0;
        for (start, end) in ranges {
            for s in &all[start.max(done)..end.max(done)] {
                f(s);
            }
            done = done.max(end);
        }
    }

    /// The sum over `members`' series; `None` when they have none.
    pub fn sum(&self, members: &Members) -> Option<f64> {
        let mut total = None;
        self.each(members, |s| *total.get_or_insert(0.0) += s.value);
        total
    }

    /// `members`' buckets summed by `le` (series without `le` ignored);
    /// empty when they have none.
    pub fn buckets(&self, members: &Members) -> Vec<Bucket> {
        let mut out: Vec<Bucket> = Vec::new();
        self.each(members, |s| {
            let Some(le) = s.le else { return };
            match out.iter_mut().find(|b| b.upper_bound == le) {
                Some(b) => b.count += s.value,
                None => out.push(Bucket {
                    upper_bound: le,
                    count: s.value,
                }),
            }
        });
        out
    }
}

/// A sum as a query's number: none is `Empty`, NaN or ±Inf `NotFinite`.
fn finite(sum: Option<f64>) -> Result<f64, QueryError> {
    match sum {
        None => Err(QueryError::Empty),
        Some(v) if v.is_finite() => Ok(v),
        Some(value) => Err(QueryError::NotFinite { value }),
    }
}

/// A revision's latency from its summed buckets: the quantile and the
/// request rate (the `+Inf` bucket), or why there is none. `Empty`: no
/// bucket series for these pods.
pub fn latency_of(
    q: f64,
    mut buckets: Vec<Bucket>,
) -> (Result<f64, QueryError>, Result<f64, QueryError>) {
    if buckets.is_empty() {
        return (Err(QueryError::Empty), Err(QueryError::Empty));
    }
    let Some(rate) = buckets
        .iter()
        .find(|b| b.upper_bound == f64::INFINITY)
        .map(|b| b.count)
    else {
        return (Err(QueryError::NoInfBucket), Err(QueryError::NoInfBucket));
    };
    let rate = finite(Some(rate));
    let value = bucket_quantile(q, &mut buckets);
    let value = if value.is_finite() {
        Ok(value)
    } else {
        Err(QueryError::NotFinite { value })
    };
    (value, rate)
}

/// The span this tick measures for `signal` and that span cut to one a
/// grouped query can share ([`grouped_span`]); else the Pending result that says why there
/// is nothing new to count yet.
fn shared_span(
    subject: &Subject,
    signal: &SignalId,
    window: Duration,
    now: Timestamp,
) -> Result<(Duration, Duration), Box<SignalResult>> {
    let full = measured_span(subject, signal, window, now)
        .map_err(|since| Box::new(no_new_samples(signal.clone(), subject, since, now)))?;
    grouped_span(full).map(|span| (full, span)).ok_or_else(|| {
        Box::new(no_new_samples(
            signal.clone(),
            subject,
            span_start(now, full),
            now,
        ))
    })
}

/// The `{window}` a grouped query uses for a span: whole seconds below
/// 30 s, 5 s steps from there, never longer than the span. None below 1 s.
pub fn grouped_span(span: Duration) -> Option<Duration> {
    let secs = span.as_secs();
    let secs = if secs < 30 { secs } else { secs / 5 * 5 };
    (secs > 0).then(|| Duration::from_secs(secs))
}

pub(super) type Answer = Arc<Result<GroupedVector, QueryError>>;

/// The grouped answers of the current tick, shared by every target, and
/// the baselines already summed.
#[derive(Debug, Default)]
pub struct GroupedCache {
    /// Keyed by query text and evaluation time (ms); one query each even
    /// when many targets ask at once.
    answers: Mutex<HashMap<(String, i64), Pending>>,
    /// The newest evaluation time asked: older answers are dropped.
    newest: Mutex<i64>,
    baselines: Mutex<HashMap<BaselineKey, (Instant, BaselineResult)>>,
}

/// One grouped answer, asked by the first target that needs it.
type Pending = Arc<tokio::sync::OnceCell<Answer>>;

/// A baseline's sum, or why there is none.
type BaselineResult = Result<BaselineSum, QueryError>;

/// A baseline's query and time (ms) and the revision's pods.
type BaselineKey = (String, i64, String, String);

/// What a baseline query summed to for one revision.
#[derive(Debug, Clone)]
pub enum BaselineSum {
    Value(f64),
    Buckets(Vec<Bucket>),
}

/// Baselines kept at most this long unused, and at most this many.
const BASELINE_TTL: Duration = Duration::from_secs(3600);
const BASELINE_CAP: usize = 50_000;
/// A baseline is kept once the rollout is this old.
const BASELINE_SETTLED: i64 = 60_000;

impl GroupedCache {
    fn cell(&self, promql: &str, at_ms: i64) -> Pending {
        let mut newest = self.newest.lock().unwrap_or_else(|p| p.into_inner());
        let mut answers = self.answers.lock().unwrap_or_else(|p| p.into_inner());
        if at_ms > *newest {
            *newest = at_ms;
            answers.retain(|(_, at), _| *at >= at_ms);
        }
        answers
            .entry((promql.to_owned(), at_ms))
            .or_default()
            .clone()
    }

    fn baseline(&self, key: &BaselineKey) -> Option<BaselineResult> {
        let mut map = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get_mut(key)?;
        entry.0 = Instant::now();
        Some(entry.1.clone())
    }

    fn keep_baseline(&self, key: BaselineKey, sum: BaselineResult) {
        let mut map = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= BASELINE_CAP {
            map.retain(|_, (used, _)| used.elapsed() < BASELINE_TTL);
            if map.len() >= BASELINE_CAP {
                map.clear();
            }
        }
        map.insert(key, (Instant::now(), sum));
    }
}

impl GroupedCache {
    /// The grouped answer to `template` with `{window}` = `window` at `at`:
    /// asked once per tick, whoever asks first; the others wait for it.
    async fn grouped(
        &self,
        source: &PrometheusSource,
        signal: &SignalId,
        role: &'static str,
        template: &QueryTemplate,
        window: Duration,
        at: Timestamp,
    ) -> Answer {
        self.grouped_query(source, signal, role, fill_window(template, window), at)
            .await
    }

    /// The grouped answer to `promql` at `at`, asked once per tick.
    async fn grouped_query(
        &self,
        source: &PrometheusSource,
        signal: &SignalId,
        role: &'static str,
        promql: String,
        at: Timestamp,
    ) -> Answer {
        let cell = self.cell(&promql, at.as_millisecond());
        cell.get_or_init(|| async {
            Arc::new(source.query_vector(signal, role, &promql, at).await)
        })
        .await
        .clone()
    }

    /// The error ratio of the revision from grouped `errors_query` and
    /// `total_query`: as `PrometheusSource::error_rate`, with the sums of
    /// the revision's pods in place of per-target queries.
    pub async fn error_rate(
        &self,
        source: &PrometheusSource,
        policy: &ErrorRatePolicy,
        subject: &Subject,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::ErrorRate;
        let (full, span) = match shared_span(subject, &signal, policy.window, now) {
            Ok(spans) => spans,
            Err(pending) => return *pending,
        };
        let baseline = baseline_plan(subject, policy.baseline_lookback);
        let (errors, total, base) = tokio::join!(
            self.grouped(
                source,
                &signal,
                CURRENT.errors,
                &policy.errors_query,
                span,
                now
            ),
            self.grouped(
                source,
                &signal,
                CURRENT.total,
                &policy.total_query,
                span,
                now
            ),
            async {
                let (rev, window) = baseline.as_ref().ok()?;
                let lookback = policy.baseline_lookback;
                let (e, t) = tokio::join!(
                    self.grouped_baseline(
                        source,
                        &signal,
                        BASELINE.errors,
                        &policy.errors_query,
                        subject,
                        lookback,
                        false
                    ),
                    self.grouped_baseline(
                        source,
                        &signal,
                        BASELINE.total,
                        &policy.total_query,
                        subject,
                        lookback,
                        false
                    ),
                );
                let value = |x: Option<Result<BaselineSum, QueryError>>| match x {
                    Some(Ok(BaselineSum::Value(v))) => finite(Some(v)),
                    Some(Ok(BaselineSum::Buckets(_))) | None => Err(QueryError::Empty),
                    Some(Err(e)) => Err(e),
                };
                Some((
                    *rev,
                    *window,
                    ratio_of(policy, BASELINE, value(e), value(t)),
                ))
            }
        );
        let pick = |answer: &Answer, members: &Members| match &**answer {
            Ok(v) => finite(v.sum(members)),
            Err(e) => Err(e.clone()),
        };
        let current = Members::current(subject);
        let measured = ratio_of(
            policy,
            CURRENT,
            pick(&errors, &current),
            pick(&total, &current),
        );
        let concurrent = Members::others(subject)
            .map(|m| ratio_of(policy, OTHERS, pick(&errors, &m), pick(&total, &m)));
        let (mut result, errors_empty) = error_rate_result(
            policy,
            subject,
            now,
            span,
            full >= policy.window,
            &baseline,
            measured,
            base,
            concurrent,
        );
        if errors_empty {
            if let Some(m) = self
                .errors_misconfigured(source, policy, subject, now)
                .await
            {
                result = result.with_misconfigured(m);
            }
        }
        result
    }

    /// The latency of the revision from a grouped bucket query: the buckets
    /// of its pods summed by `le`, the quantile as `histogram_quantile`
    /// computes it, the request count from the `+Inf` bucket; then as
    /// `PrometheusSource::latency`.
    pub async fn latency(
        &self,
        source: &PrometheusSource,
        policy: &LatencyPolicy,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::Latency;
        let (_, span) = match shared_span(subject, &signal, policy.window, now) {
            Ok(spans) => spans,
            Err(pending) => return *pending,
        };
        let baseline = baseline_plan(subject, policy.baseline_lookback);
        let (answer, base) = tokio::join!(
            self.grouped(source, &signal, CURRENT.single, &policy.query, span, now),
            async {
                baseline.as_ref().ok()?;
                self.grouped_baseline(
                    source,
                    &signal,
                    BASELINE.single,
                    &policy.query,
                    subject,
                    policy.baseline_lookback,
                    true,
                )
                .await
            }
        );
        let sample = |members: &Members| -> LatencySample {
            match &*answer {
                Ok(v) => {
                    let (value, rate) = latency_of(policy.quantile, v.buckets(members));
                    (value, Some(rate))
                }
                Err(e) => (Err(e.clone()), None),
            }
        };
        let measured = Some(sample(&Members::current(subject)));
        let concurrent = Members::others(subject).map(|m| sample(&m));
        let base = base.map(|b| match b {
            Ok(BaselineSum::Buckets(b)) => {
                let (value, rate) = latency_of(policy.quantile, b);
                (value, Some(rate))
            }
            Ok(BaselineSum::Value(_)) => (Err(QueryError::Empty), None),
            Err(e) => (Err(e), None),
        });
        let (mut result, latency_empty) = latency_result(
            policy, traffic, subject, now, span, &baseline, measured, base, concurrent,
        );
        if latency_empty {
            if let Some(m) = self
                .latency_misconfigured(source, policy, traffic, subject, cluster, now)
                .await
            {
                result = result.with_misconfigured(m);
            }
        }
        result
    }

    /// A baseline summed for `members`: from the cache, else one query.
    #[allow(clippy::too_many_arguments)]
    async fn grouped_baseline(
        &self,
        source: &PrometheusSource,
        signal: &SignalId,
        role: &'static str,
        template: &QueryTemplate,
        subject: &Subject,
        lookback: Duration,
        buckets: bool,
    ) -> Option<Result<BaselineSum, QueryError>> {
        let members = Members::baseline(subject)?;
        let since = subject.baseline.as_ref().and_then(|b| b.since);
        let window = baseline_window(lookback, subject.rollout_started, since).ok()?;
        let promql = fill_window(template, window);
        let at = subject.rollout_started;
        let key: BaselineKey = (
            promql.clone(),
            at.as_millisecond(),
            members.namespace.clone(),
            members.prefixes.join("|"),
        );
        let cache = self;
        if let Some(sum) = cache.baseline(&key) {
            return Some(sum);
        }
        // Targets whose rollouts started at the same time share one query.
        let answer = self.grouped_query(source, signal, role, promql, at).await;
        let answered = answer.is_ok();
        let sum = (*answer).clone().and_then(|v| {
            if buckets {
                let b = v.buckets(&members);
                if b.is_empty() {
                    Err(QueryError::Empty)
                } else {
                    Ok(BaselineSum::Buckets(b))
                }
            } else {
                v.sum(&members)
                    .map(BaselineSum::Value)
                    .ok_or(QueryError::Empty)
            }
        });
        // What Prometheus answered about a settled past is kept, a sum or
        // none; an error is asked again.
        if answered && Timestamp::now().as_millisecond() - at.as_millisecond() >= BASELINE_SETTLED {
            cache.keep_baseline(key, sum.clone());
        }
        Some(sum)
    }

    /// Grouped mode's `errors_query_misconfigured`: the same
    /// test with grouped probes (`count by (namespace, pod) (...)`), asked
    /// once per tick for every target, read for the revision's pods.
    async fn errors_misconfigured(
        &self,
        source: &PrometheusSource,
        traffic: &ErrorRatePolicy,
        subject: &Subject,
        now: Timestamp,
    ) -> Option<Misconfigured> {
        let signal = SignalId::ErrorRate;
        let members = Members::current(subject);
        let requests = self
            .grouped_requests(source, &signal, traffic, subject, &members, "", now)
            .await?;
        let why = self
            .grouped_missing_names(source, &signal, &traffic.errors_query, &members, now)
            .await?;
        Some(grouped_finding(
            "errors_query",
            &traffic.errors_query,
            traffic,
            subject,
            requests,
            why,
        ))
    }

    /// Grouped mode's `empty_with_traffic` for the latency query:
    /// no bucket series for the revision's pods over the whole lookback
    /// while `total_query` counts enough requests.
    async fn latency_misconfigured(
        &self,
        source: &PrometheusSource,
        policy: &LatencyPolicy,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Option<Misconfigured> {
        let traffic = traffic?;
        let signal = SignalId::Latency;
        let members = Members::current(subject);
        let requests = self
            .grouped_requests(source, &signal, traffic, subject, &members, cluster, now)
            .await?;
        let promql = fill_window(&policy.query, traffic.baseline_lookback);
        let answer = self
            .grouped_query(source, &signal, PROBE, promql, now)
            .await;
        match &*answer {
            Ok(v) if v.buckets(&members).is_empty() => Some(grouped_finding(
                "latency.query",
                &policy.query,
                traffic,
                subject,
                requests,
                "it has no bucket series for these pods while total_query counts traffic".into(),
            )),
            _ => None,
        }
    }

    /// The revision's requests over `baseline_lookback`, if enough to call
    /// a query misconfigured: by the grouped `total_query` when it is
    /// grouped, else by the per-target one.
    #[allow(clippy::too_many_arguments)]
    async fn grouped_requests(
        &self,
        source: &PrometheusSource,
        signal: &SignalId,
        traffic: &ErrorRatePolicy,
        subject: &Subject,
        members: &Members,
        cluster: &str,
        now: Timestamp,
    ) -> Option<f64> {
        let lookback = traffic.baseline_lookback;
        let rate = if traffic.grouped {
            let promql = fill_window(&traffic.total_query, lookback);
            let answer = self
                .grouped_query(source, signal, TRAFFIC, promql, now)
                .await;
            (*answer).as_ref().ok()?.sum(members)?
        } else {
            return enough(
                traffic,
                source
                    .requests_over_lookback(signal, traffic, subject, cluster, now)
                    .await
                    .ok()?,
            );
        };
        enough(traffic, rate.max(0.0) * lookback.as_secs_f64())
    }

    /// `missing_names` with grouped probes.
    async fn grouped_missing_names(
        &self,
        source: &PrometheusSource,
        signal: &SignalId,
        query: &QueryTemplate,
        members: &Members,
        now: Timestamp,
    ) -> Option<String> {
        for selector in selectors(query.as_str())? {
            let metric = &selector.metric;
            if metric.is_empty() {
                continue;
            }
            let present = |extra: Option<String>| {
                let q = match extra {
                    None => format!("count by (namespace, pod) ({metric})"),
                    Some(m) => format!("count by (namespace, pod) ({metric}{{{m}}})"),
                };
                async move { self.grouped_query(source, signal, PROBE, q, now).await }
            };
            match &*present(None).await {
                Ok(v) if v.sum(members).is_some() => {}
                Ok(v) if v.is_empty() => {
                    return Some(format!("Prometheus has no series of {metric} at all"));
                }
                // Not on these pods: an errors-only counter may not exist yet.
                Ok(_) => continue,
                Err(_) => return None,
            }
            for m in selector.matchers.iter().filter(|m| m.requires_label()) {
                let has = format!("{}!=\"\"", m.label);
                if let Ok(v) = &*present(Some(has)).await {
                    if v.sum(members).is_none() {
                        return Some(format!(
                            "no series of {metric} for these pods has a label {} (the query filters on {}{}{})",
                            m.label, m.label, m.op, m.quoted
                        ));
                    }
                }
            }
        }
        None
    }
}

impl PrometheusSource {
    /// One instant query whose answer is one series per namespace and pod.
    pub(super) async fn query_vector(
        &self,
        signal: &SignalId,
        role: &'static str,
        promql: &str,
        at: Timestamp,
    ) -> Result<GroupedVector, QueryError> {
        let span = tracing::debug_span!(
            "prometheus_query",
            signal = %signal,
            role,
            query = promql,
            at = %at,
            grouped = true,
        );
        let started = Instant::now();
        let result = async {
            let data = self.query_data(promql, at).await?;
            grouped_vector(&data)
        }
        .instrument(span)
        .await;
        self.observe(&QueryRecord {
            signal: signal.clone(),
            query: role,
            duration: started.elapsed(),
            outcome: match &result {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            },
        });
        result
    }
}

/// A finding about a grouped template, shown filled with the lookback.
fn grouped_finding(
    name: &str,
    query: &QueryTemplate,
    traffic: &ErrorRatePolicy,
    subject: &Subject,
    requests: f64,
    why: String,
) -> Misconfigured {
    Misconfigured {
        query: name.to_owned(),
        promql: fill_window(query, traffic.baseline_lookback),
        revision: subject.revision,
        requests,
        lookback: promql_duration(traffic.baseline_lookback),
        why,
        hint: CHECK_NAMES.to_owned(),
    }
}

/// A grouped template with its `{window}`.
pub fn fill_window(template: &QueryTemplate, window: Duration) -> String {
    template
        .as_str()
        .replace("{window}", &promql_duration(window))
}

/// Reads a grouped answer: every series must carry `namespace` and `pod`.
fn grouped_vector(
    data: &prometheus_http_query::response::Data,
) -> Result<GroupedVector, QueryError> {
    use prometheus_http_query::response::Data;
    let Data::Vector(v) = data else {
        return Err(QueryError::NotGrouped {
            example: match data {
                Data::Scalar(_) => "a scalar".to_owned(),
                _ => "a range vector".to_owned(),
            },
        });
    };
    let mut series = Vec::with_capacity(v.len());
    for s in v {
        let m = s.metric();
        let (Some(ns), Some(pod)) = (m.get("namespace"), m.get("pod")) else {
            let mut labels: Vec<String> = m.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            labels.sort();
            return Err(QueryError::NotGrouped {
                example: format!("{{{}}}", labels.join(", ")),
            });
        };
        series.push((
            ns.clone(),
            Series {
                pod: pod.clone(),
                le: m.get("le").and_then(|le| parse_le(le)),
                value: s.sample().value(),
            },
        ));
    }
    Ok(GroupedVector::new(series))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(rows: &[(&str, &str, Option<f64>, f64)]) -> GroupedVector {
        GroupedVector::new(rows.iter().map(|(ns, pod, le, value)| {
            (
                (*ns).to_owned(),
                Series {
                    pod: (*pod).to_owned(),
                    le: *le,
                    value: *value,
                },
            )
        }))
    }

    fn members(ns: &str, prefixes: &[&str], pods: &[&str]) -> Members {
        Members {
            namespace: ns.into(),
            prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
            pods: pods.iter().map(|p| (*p).to_owned()).collect(),
        }
    }

    #[test]
    fn a_revision_sums_its_own_pods_only() {
        let g = v(&[
            ("prod", "web-aaa-1", None, 5.0),
            ("prod", "web-bbb-1", None, 1.0),
            ("prod", "web-bbb-2", None, 2.0),
            ("prod", "web-bbbx-1", None, 100.0),
            ("prod", "webapp-bbb-1", None, 100.0),
            ("other", "web-bbb-1", None, 100.0),
        ]);
        assert_eq!(g.sum(&members("prod", &["web-bbb-"], &[])), Some(3.0));
        // A cached pod outside the prefix counts; one inside it, once.
        assert_eq!(
            g.sum(&members("prod", &["web-bbb-"], &["web-bbb-1", "web-aaa-1"])),
            Some(8.0)
        );
        assert_eq!(g.sum(&members("prod", &["web-ccc-"], &[])), None);
        assert_eq!(g.sum(&members("none", &["web-bbb-"], &[])), None);
        // Nested prefixes (long names) count a pod once.
        assert_eq!(
            g.sum(&members("prod", &["web-", "web-bbb-"], &[])),
            Some(108.0)
        );
    }

    #[test]
    fn buckets_are_summed_by_le_over_the_pods() {
        let inf = f64::INFINITY;
        let g = v(&[
            ("p", "web-bbb-1", Some(0.1), 1.0),
            ("p", "web-bbb-1", Some(inf), 2.0),
            ("p", "web-bbb-2", Some(0.1), 3.0),
            ("p", "web-bbb-2", Some(inf), 4.0),
            ("p", "web-bbb-2", None, 50.0),
        ]);
        let b = g.buckets(&members("p", &["web-bbb-"], &[]));
        assert_eq!(
            b,
            vec![
                Bucket {
                    upper_bound: 0.1,
                    count: 4.0
                },
                Bucket {
                    upper_bound: inf,
                    count: 6.0
                }
            ]
        );
        let (value, rate) = latency_of(0.5, b);
        assert_eq!(rate.ok(), Some(6.0));
        assert!((value.ok().unwrap_or(f64::NAN) - 0.075).abs() < 1e-12);
        assert!(matches!(
            latency_of(0.5, Vec::new()).0,
            Err(QueryError::Empty)
        ));
    }

    #[test]
    fn spans_are_cut_to_shared_windows_never_longer() {
        let s = |ms| grouped_span(Duration::from_millis(ms)).map(|d| d.as_secs());
        assert_eq!(s(999), None);
        assert_eq!(s(15_003), Some(15));
        assert_eq!(s(29_999), Some(29));
        assert_eq!(s(34_999), Some(30));
        assert_eq!(s(120_000), Some(120));
    }
}
