//! The Prometheus signals: error ratio, latency and custom PromQL rules of
//! the revision under judgment, each compared with absolute limits and, for
//! relative criteria, with the previous revision's value evaluated by
//! Prometheus at the rollout's start time (an instant query with an
//! explicit `time`; nothing is stored).
//!
//! It must never turn missing data into a Fail: Prometheus unreachable,
//! slow, erroring or answering something unexpected, an empty vector, NaN
//! or ±Inf, more than one series, or traffic below `min_request_rate` are
//! all Inconclusive, with a sentence saying which query and why. A missing
//! baseline only switches the relative test off.
//!
//! Every query has a timeout (`prometheus.timeout`, also sent to
//! Prometheus so it stops evaluating) and runs in a `prometheus_query`
//! tracing span with the query, its duration and its outcome; an optional
//! [`QueryObserver`] receives the same record for a metrics histogram.
//!
//! One deliberate exception to "empty is Inconclusive": an empty
//! `errors_query` next to a valid `total_query` counts as zero errors.
//! Client libraries create the `code="5xx"` series only at the first
//! error, so a healthy service would otherwise look blind on every rollout.
//! That choice can only produce a Pass, never a Fail, and not even a Pass
//! when the query cannot match ([`super::misconfigured`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_http_query::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tracing::Instrument;

use super::evidence::{baseline_window, hms, measured_span, span_start};
use super::limits::{judge_error_ratio, judge_latency, Counts};
use super::{
    promql_duration, requests_text, BaselineNote, ConcurrentNote, Fill, Measurement, Outcome,
    SignalId, SignalResult, Subject, Threshold,
};
use crate::config::{credentials, ErrorRatePolicy, LatencyPolicy, PrometheusSettings, Rule};

/// Extra time past the query timeout before the watchdog stops waiting on
/// its own, in case the HTTP client's timer and Prometheus's disagree.
const GUARD: Duration = Duration::from_millis(500);

/// Building the client from `[prometheus]` failed: a config problem the
/// user fixes, reported before the watchdog starts judging.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusSourceError {
    #[error("prometheus.ca_file {path}: cannot read it: {source}")]
    CaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus.ca_file {path}: not a PEM certificate bundle: {message}")]
    CaPem { path: PathBuf, message: String },
    #[error("prometheus.bearer_token_file {path}: cannot read it: {source}")]
    TokenFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("prometheus.headers.{name}: {message}")]
    Header { name: String, message: String },
    #[error("cannot build the HTTP client for Prometheus: {0}")]
    Client(#[source] reqwest::Error),
    #[error("prometheus.url {url}: {message}")]
    Url { url: String, message: String },
}

/// Why one query gave no usable number. Every variant is Inconclusive.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueryError {
    #[error("Prometheus at {url} did not answer within {timeout}")]
    Timeout { url: String, timeout: String },
    #[error("Prometheus at {url} is unreachable: {message}")]
    Unreachable { url: String, message: String },
    #[error("Prometheus at {url} refused the query: {message}")]
    Rejected { url: String, message: String },
    #[error("Prometheus at {url} gave an answer that is not a query result: {message}")]
    BadAnswer { url: String, message: String },
    #[error("the query returned no series")]
    Empty,
    #[error("the query returned {count} series ({example}); it must aggregate to one, e.g. with sum(...)")]
    MultipleSeries { count: usize, example: String },
    #[error("the query returned {value}")]
    NotFinite { value: f64 },
    #[error("the query returned a range vector; it must be an instant vector or a scalar")]
    RangeVector,
    #[error("cannot read prometheus.bearer_token_file {path}: {message}")]
    Token { path: PathBuf, message: String },
    #[error("the grouped query returned {example}; it must return one series per namespace and pod, e.g. sum by (namespace, pod) (...)")]
    NotGrouped { example: String },
    #[error("the grouped latency query has no le=\"+Inf\" bucket for these pods; it must return histogram buckets, e.g. sum by (namespace, pod, le) (rate(..._bucket[{{window}}]))")]
    NoInfBucket,
}

impl QueryError {
    /// A short stable word for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Timeout { .. } => "timeout",
            QueryError::Unreachable { .. } => "unreachable",
            QueryError::Rejected { .. } => "rejected",
            QueryError::BadAnswer { .. } => "bad_answer",
            QueryError::Empty => "empty",
            QueryError::MultipleSeries { .. } => "multiple_series",
            QueryError::NotFinite { .. } => "not_finite",
            QueryError::RangeVector => "range_vector",
            QueryError::Token { .. } => "token",
            QueryError::NotGrouped { .. } => "not_grouped",
            QueryError::NoInfBucket => "no_inf_bucket",
        }
    }
}

/// One query, as the run loop's metrics want it.
#[derive(Debug, Clone)]
pub struct QueryRecord {
    pub signal: SignalId,
    /// Which of the signal's queries: `errors_query`, `baseline total_query`, ...
    pub query: &'static str,
    pub duration: Duration,
    /// `ok` or a [`QueryError::kind`].
    pub outcome: &'static str,
}

/// Called after every query (a histogram of query durations, a counter of
/// failures). It must be cheap: it runs on the query's task.
pub type QueryObserver = Arc<dyn Fn(&QueryRecord) + Send + Sync>;

/// A Prometheus to ask, built from `[prometheus]`.
#[derive(Clone)]
pub struct PrometheusSource {
    client: Client,
    url: String,
    timeout: Duration,
    bearer_token_file: Option<PathBuf>,
    observer: Option<QueryObserver>,
}

impl std::fmt::Debug for PrometheusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusSource")
            .field("url", &self.url)
            .field("timeout", &self.timeout)
            .field("bearer_token_file", &self.bearer_token_file)
            .finish_non_exhaustive()
    }
}

/// Which query of a signal, for messages, spans and the observer.
#[derive(Debug, Clone, Copy)]
pub(super) struct Role {
    pub(super) errors: &'static str,
    pub(super) total: &'static str,
    pub(super) single: &'static str,
}

pub(super) const CURRENT: Role = Role {
    errors: "errors_query",
    total: "total_query",
    single: "query",
};
pub(super) const BASELINE: Role = Role {
    errors: "baseline errors_query",
    total: "baseline total_query",
    single: "baseline query",
};
pub(super) const OTHERS: Role = Role {
    errors: "older pods errors_query",
    total: "older pods total_query",
    single: "older pods query",
};

/// errors/total of one revision.
#[derive(Debug, Clone, Copy)]
pub(super) struct RatioSample {
    errors: f64,
    total: f64,
    ratio: f64,
    /// `errors_query` returned no series (read as zero errors).
    errors_empty: bool,
}

impl PrometheusSource {
    /// Builds the client: custom headers and the CA bundle are read now; the
    /// bearer token file must be readable now and is read again on every
    /// query, so a rotated token is picked up.
    pub fn new(settings: &PrometheusSettings) -> Result<Self, PrometheusSourceError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &settings.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| {
                PrometheusSourceError::Header {
                    name: name.clone(),
                    message: format!("not a valid header name: {e}"),
                }
            })?;
            // The value is a secret: the message must not quote it.
            let mut header_value = HeaderValue::from_str(value.expose()).map_err(|_| {
                PrometheusSourceError::Header {
                    name: name.clone(),
                    message: "the value is not a valid header value (control characters?)".into(),
                }
            })?;
            header_value.set_sensitive(true);
            headers.insert(header_name, header_value);
        }
        // Credentials that were in the URL: the loader took them out, so
        // the URL below (quoted by every error) no longer carries them.
        if let Some(auth) = &settings.url_credentials {
            let value = credentials::authorization_header(auth).ok_or_else(|| {
                PrometheusSourceError::Url {
                    url: settings.url.to_string(),
                    message: "the user name or password in it cannot be sent in an \
                              Authorization header (control characters?)"
                        .into(),
                }
            })?;
            headers.insert(AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .default_headers(headers)
            .user_agent(concat!("rollback-watchdog/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &settings.ca_file {
            let pem = std::fs::read(path).map_err(|source| PrometheusSourceError::CaFile {
                path: path.clone(),
                source,
            })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                PrometheusSourceError::CaPem {
                    path: path.clone(),
                    message: e.to_string(),
                }
            })?;
            if certs.is_empty() {
                return Err(PrometheusSourceError::CaPem {
                    path: path.clone(),
                    message: "no certificate in it".into(),
                });
            }
            builder = builder.tls_certs_merge(certs);
        }
        if let Some(path) = &settings.bearer_token_file {
            std::fs::read_to_string(path).map_err(|source| PrometheusSourceError::TokenFile {
                path: path.clone(),
                source,
            })?;
        }
        let http = builder.build().map_err(PrometheusSourceError::Client)?;
        let url = settings.url.as_str().trim_end_matches('/').to_owned();
        let client = Client::from(http, &url).map_err(|e| PrometheusSourceError::Url {
            url: url.clone(),
            message: e.to_string(),
        })?;
        Ok(PrometheusSource {
            client,
            url,
            timeout: settings.timeout,
            bearer_token_file: settings.bearer_token_file.clone(),
            observer: None,
        })
    }

    /// Reports every query to `observer` (the run loop's histogram).
    pub fn with_observer(mut self, observer: QueryObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The per-query timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The longest one signal can take: its queries run concurrently.
    pub fn signal_deadline(&self) -> Duration {
        self.timeout + GUARD * 2
    }

    /// One instant query at `at`, reduced to one finite number.
    pub async fn query(
        &self,
        signal: &SignalId,
        role: &'static str,
        promql: &str,
        at: Timestamp,
    ) -> Result<f64, QueryError> {
        let span = tracing::debug_span!(
            "prometheus_query",
            signal = %signal,
            role,
            query = promql,
            at = %at,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let result = self.query_inner(promql, at).instrument(span.clone()).await;
        let duration = started.elapsed();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        span.record("duration_ms", duration.as_secs_f64() * 1000.0);
        span.record("outcome", outcome);
        span.in_scope(|| match &result {
            Ok(value) => tracing::debug!(value, "prometheus query answered"),
            Err(error) => tracing::debug!(%error, "prometheus query gave no number"),
        });
        self.observe(&QueryRecord {
            signal: signal.clone(),
            query: role,
            duration,
            outcome,
        });
        result
    }

    /// Tells the observer about one query.
    pub(super) fn observe(&self, record: &QueryRecord) {
        if let Some(observer) = &self.observer {
            observer(record);
        }
    }

    /// Whether Prometheus answers a trivial query (`1`) with the configured
    /// token, headers and CA: the start-up check, which only warns.
    pub async fn ping(&self) -> Result<(), QueryError> {
        self.query_inner("1", Timestamp::now()).await.map(|_| ())
    }

    /// The URL queries go to, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn query_inner(&self, promql: &str, at: Timestamp) -> Result<f64, QueryError> {
        one_number(&self.query_data(promql, at).await?)
    }

    /// One instant query's answer as Prometheus gave it.
    pub(super) async fn query_data(
        &self,
        promql: &str,
        at: Timestamp,
    ) -> Result<prometheus_http_query::response::Data, QueryError> {
        let time = format!("{:.3}", at.as_millisecond() as f64 / 1000.0);
        let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
        let mut builder = self
            .client
            .query(promql)
            .query("time", time)
            .timeout(timeout_ms);
        if let Some(path) = &self.bearer_token_file {
            builder = builder.header(AUTHORIZATION, read_token(path).await?);
        }
        // Read here with a size cap (the client crate reads a body whole).
        let asked = async {
            let response = builder.get_raw().await.map_err(|e| self.classify(e))?;
            answer::read(response)
                .await
                .map_err(|e| QueryError::BadAnswer {
                    url: self.url.clone(),
                    message: e.to_string(),
                })
        };
        let answer = match tokio::time::timeout(self.timeout + GUARD, asked).await {
            Err(_elapsed) => return Err(self.timed_out()),
            Ok(answer) => answer?,
        };
        match answer {
            answer::Answer::Result(result) => Ok(result.into_inner().0),
            answer::Answer::Refused(p) => {
                Err(self.classify(prometheus_http_query::Error::Prometheus(p)))
            }
            answer::Answer::Bad(message) => Err(QueryError::BadAnswer {
                url: self.url.clone(),
                message,
            }),
        }
    }

    fn timed_out(&self) -> QueryError {
        QueryError::Timeout {
            url: self.url.clone(),
            timeout: humantime::format_duration(self.timeout).to_string(),
        }
    }

    fn classify(&self, e: prometheus_http_query::Error) -> QueryError {
        use prometheus_http_query::Error;
        let url = self.url.clone();
        match e {
            Error::Prometheus(p) if p.is_timeout() => self.timed_out(),
            Error::Prometheus(p) => QueryError::Rejected {
                url,
                message: p.to_string(),
            },
            Error::Client(c) => match c.inner() {
                Some(r) if r.is_timeout() => self.timed_out(),
                Some(r) if r.is_connect() => QueryError::Unreachable {
                    url,
                    message: root_cause(r),
                },
                Some(r) => QueryError::BadAnswer {
                    url,
                    message: match r.status() {
                        Some(status) => format!("{c}: HTTP {status}"),
                        None => format!("{c}: {}", root_cause(r)),
                    },
                },
                None => QueryError::BadAnswer {
                    url,
                    message: c.to_string(),
                },
            },
            other => QueryError::BadAnswer {
                url,
                message: other.to_string(),
            },
        }
    }

    /// The error ratio of the revision over the requests since its last
    /// counted result, against `max`, the baseline before the rollout and,
    /// while older pods serve, those pods over the same span.
    pub async fn error_rate(
        &self,
        policy: &ErrorRatePolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::ErrorRate;
        let span = match measured_span(subject, &signal, policy.window, now) {
            Ok(span) => span,
            Err(since) => return no_new_samples(signal, subject, since, now),
        };
        let current = Fill::current(subject, span, cluster);
        let baseline = baseline_plan(subject, policy.baseline_lookback);
        let others = Fill::others(subject, span, cluster);
        let (measured, base, concurrent) = tokio::join!(
            self.ratio(&signal, policy, &current, now, CURRENT),
            async {
                match &baseline {
                    Ok((rev, window)) => {
                        let fill = Fill::baseline(subject, *window, cluster)?;
                        let r = self
                            .ratio(&signal, policy, &fill, subject.rollout_started, BASELINE)
                            .await;
                        Some((*rev, *window, r))
                    }
                    Err(_) => None,
                }
            },
            async {
                match &others {
                    Some(fill) => Some(self.ratio(&signal, policy, fill, now, OTHERS).await),
                    None => None,
                }
            }
        );
        let (mut result, errors_empty) = error_rate_result(
            policy,
            subject,
            now,
            span,
            span >= policy.window,
            &baseline,
            measured,
            base,
            concurrent,
        );
        // Zero errors only if the query could have counted one.
        if errors_empty {
            if let Some(m) = self
                .errors_query_misconfigured(policy, subject, cluster, now)
                .await
            {
                result = result.with_misconfigured(m);
            }
        }
        result
    }

    async fn ratio(
        &self,
        signal: &SignalId,
        policy: &ErrorRatePolicy,
        fill: &Fill,
        at: Timestamp,
        role: Role,
    ) -> Result<RatioSample, RatioError> {
        let values = fill.placeholders();
        let errors_q = policy.errors_query.fill(&values);
        let total_q = policy.total_query.fill(&values);
        let (errors, total) = tokio::join!(
            self.query(signal, role.errors, &errors_q, at),
            self.query(signal, role.total, &total_q, at),
        );
        ratio_of(policy, role, errors, total)
    }
    /// The latency figure of the revision over the requests since its last
    /// counted result, against `max`, the baseline before the rollout and,
    /// while older pods serve, those pods over the same span.
    ///
    /// With `traffic` (the error-rate policy: its `total_query` and
    /// `min_request_rate`), a quantile over too few requests is not a
    /// latency figure: below the minimum rate, or below `min_requests` in
    /// the span, the signal is Inconclusive, and a baseline or older pods
    /// measured over too few requests are not compared with.
    pub async fn latency(
        &self,
        policy: &LatencyPolicy,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::Latency;
        let span = match measured_span(subject, &signal, policy.window, now) {
            Ok(span) => span,
            Err(since) => return no_new_samples(signal, subject, since, now),
        };
        let current = Fill::current(subject, span, cluster);
        let baseline = baseline_plan(subject, policy.baseline_lookback);
        let baseline_fill = match &baseline {
            Ok((_, window)) => Fill::baseline(subject, *window, cluster),
            Err(_) => None,
        };
        let others = Fill::others(subject, span, cluster);
        // The quantile and the request rate of one set of pods at `at`.
        let measure = |fill: Option<Fill>, role: Role, at: Timestamp| {
            let signal = signal.clone();
            async move {
                let fill = fill?;
                let q = policy.query.fill(&fill.placeholders());
                let rate_q = traffic.map(|t| t.total_query.fill(&fill.placeholders()));
                let (value, rate) = tokio::join!(self.query(&signal, role.single, &q, at), async {
                    match &rate_q {
                        Some(q) => Some(self.query(&signal, role.total, q, at).await),
                        None => None,
                    }
                });
                Some((value, rate))
            }
        };
        let (measured, base, concurrent) = tokio::join!(
            measure(Some(current), CURRENT, now),
            measure(baseline_fill, BASELINE, subject.rollout_started),
            measure(others, OTHERS, now),
        );
        let (mut result, latency_empty) = latency_result(
            policy, traffic, subject, now, span, &baseline, measured, base, concurrent,
        );
        if latency_empty {
            if let Some(m) = self
                .empty_with_traffic(
                    &result.signal,
                    &policy.query,
                    traffic,
                    subject,
                    cluster,
                    now,
                )
                .await
            {
                result = result.with_misconfigured(m);
            }
        }
        result
    }

    /// A custom rule: Fail when `query op threshold` holds. `{window}` is
    /// the span since the rule's last counted result, as for the error
    /// ratio, capped at the rule's `window`. With `traffic` (the error-rate
    /// policy), no series while `total_query` counts traffic is reported
    /// as a misconfigured query.
    pub async fn rule(
        &self,
        rule: &Rule,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::rule(&rule.name);
        let span = match measured_span(subject, &signal, rule.window, now) {
            Ok(span) => span,
            Err(since) => return no_new_samples(signal, subject, since, now),
        };
        let from = span_start(now, span);
        let fill = Fill::current(subject, span, cluster);
        let query = rule.query.fill(&fill.placeholders());
        let answer = self.query(&signal, CURRENT.single, &query, now).await;
        if let Err(QueryError::Empty) = answer {
            if let Some(m) = self
                .empty_with_traffic(&signal, &rule.query, traffic, subject, cluster, now)
                .await
            {
                return SignalResult::new(signal, Outcome::pass(), now).with_misconfigured(m);
            }
        }
        let outcome = match answer {
            Err(QueryError::Empty) => Outcome::inconclusive(format!(
                "revision {}: {} since {} (if no series means zero, end the query with `or vector(0)`)",
                subject.revision,
                QueryError::Empty,
                hms(from)
            )),
            Err(e) => Outcome::inconclusive(format!("revision {}: {e}", subject.revision)),
            Ok(value) if rule.op.holds(value, rule.threshold) => Outcome::Fail {
                measured: Measurement::number(value),
                threshold: Threshold::FailsWhen {
                    op: rule.op.symbol().to_owned(),
                    limit: Measurement::number(rule.threshold),
                },
                baseline: None,
                sentence: format!(
                    "Rule {} fails for revision {}: {} {} {} over the {} since {}",
                    rule.name,
                    subject.revision,
                    Measurement::number(value),
                    rule.op.symbol(),
                    Measurement::number(rule.threshold),
                    promql_duration(span),
                    hms(from)
                ),
            },
            Ok(value) => Outcome::pass_with(Measurement::number(value)),
        };
        SignalResult::new(signal, outcome, now).over_span(from)
    }
}

/// The error ratio's result from what was measured: the revision's
/// rates over `span`, the baseline and older pods over the same span.
/// Also says whether `errors_query` had no series (read as zero errors),
/// for the caller's misconfiguration check.
#[allow(clippy::too_many_arguments)]
pub(super) fn error_rate_result(
    policy: &ErrorRatePolicy,
    subject: &Subject,
    now: Timestamp,
    span: Duration,
    whole_window: bool,
    baseline: &Result<(i64, Duration), Box<BaselineNote>>,
    measured: Result<RatioSample, RatioError>,
    base: Option<(i64, Duration, Result<RatioSample, RatioError>)>,
    concurrent: Option<Result<RatioSample, RatioError>>,
) -> (SignalResult, bool) {
    let signal = SignalId::ErrorRate;
    let from = span_start(now, span);
    let (base_value, note) = match (baseline, base) {
        (Err(missing), _) => (None, BaselineNote::clone(missing)),
        (Ok(_), Some((rev, window, Ok(b)))) => (
            Some(b.ratio),
            BaselineNote::used(
                rev,
                Measurement::ratio(b.ratio),
                window,
                subject.rollout_started,
            ),
        ),
        (Ok(_), Some((rev, _, Err(why)))) => (
            None,
            BaselineNote::missing(Some(rev), format!("revision {rev}: {why}")),
        ),
        (Ok((rev, _)), None) => (None, BaselineNote::missing(Some(*rev), "no baseline")),
    };
    let secs = span.as_secs_f64();
    let concurrent = concurrent.map(|c| c.map(|s| s.counted(secs)).map_err(|e| e.to_string()));
    let note = note.with_concurrent(concurrent_note(subject, &concurrent, |c| {
        (Measurement::ratio(c.ratio), Some(c.n))
    }));
    let mut requests = None;
    let errors_empty = matches!(&measured, Ok(m) if m.errors_empty);
    let outcome = match measured {
        Err(RatioError::NoSamples(why)) => Outcome::inconclusive(format!(
            "revision {}: no new samples since {} ({why})",
            subject.revision,
            hms(from)
        )),
        Err(RatioError::Other(why)) => {
            Outcome::inconclusive(format!("revision {}: {why}", subject.revision))
        }
        Ok(m) => {
            let counts = m.counted(secs);
            requests = Some(counts.n);
            judge_error_ratio(
                policy,
                subject,
                counts,
                base_value,
                &note,
                concurrent.as_ref().and_then(|c| c.as_ref().ok()),
                whole_window,
            )
        }
    };
    let mut result = SignalResult::new(signal, outcome, now)
        .over_span(from)
        .with_baseline_note(note);
    result.requests = requests;
    (result, errors_empty)
}

/// errors/total from the two answers: Inconclusive reasons for no total,
/// traffic below `min_request_rate`, or errors that are not a part of it.
pub(super) fn ratio_of(
    policy: &ErrorRatePolicy,
    role: Role,
    errors: Result<f64, QueryError>,
    total: Result<f64, QueryError>,
) -> Result<RatioSample, RatioError> {
    let total = total.map_err(|e| match e {
        QueryError::Empty => RatioError::NoSamples(format!("{}: {e}", role.total)),
        e => RatioError::Other(format!("{}: {e}", role.total)),
    })?;
    let (errors, errors_empty) = match errors {
        Ok(v) => (v, false),
        // No 5xx series yet: zero errors (see the module doc).
        Err(QueryError::Empty) => (0.0, true),
        Err(e) => return Err(RatioError::Other(format!("{}: {e}", role.errors))),
    };
    if total <= 0.0 || total < policy.min_request_rate {
        return Err(RatioError::Other(format!(
            "traffic {} is below min_request_rate {}",
            Measurement::per_second(total),
            Measurement::per_second(policy.min_request_rate)
        )));
    }
    if errors < 0.0 || errors > total * (1.0 + 1e-9) {
        return Err(RatioError::Other(format!(
            "{} ({}) is not between 0 and {} ({}): the two queries do not count the same requests",
            role.errors,
            Measurement::per_second(errors),
            role.total,
            Measurement::per_second(total)
        )));
    }
    Ok(RatioSample {
        errors,
        total,
        ratio: (errors / total).min(1.0),
        errors_empty,
    })
}

/// One set of pods' latency figure and, with a traffic policy, its request
/// rate: what a latency measurement gives.
pub(super) type LatencySample = (Result<f64, QueryError>, Option<Result<f64, QueryError>>);

/// The latency result from what was measured over `span`: the revision,
/// its baseline, older pods. Also says whether the latency query had no
/// series, for the caller's misconfiguration check.
#[allow(clippy::too_many_arguments)]
pub(super) fn latency_result(
    policy: &LatencyPolicy,
    traffic: Option<&ErrorRatePolicy>,
    subject: &Subject,
    now: Timestamp,
    span: Duration,
    baseline: &Result<(i64, Duration), Box<BaselineNote>>,
    measured: Option<LatencySample>,
    base: Option<LatencySample>,
    concurrent: Option<LatencySample>,
) -> (SignalResult, bool) {
    let signal = SignalId::Latency;
    let from = span_start(now, span);
    let secs = span.as_secs_f64();
    let min_rate = traffic.map(|t| t.min_request_rate).unwrap_or(0.0);
    let min_requests = f64::from(policy.min_requests);
    let too_quiet = |rate: &Option<Result<f64, QueryError>>| {
        matches!(rate, Some(Ok(r)) if *r < min_rate) || matches!(rate, Some(Err(QueryError::Empty)))
    };
    let (base_value, note) = match (baseline, base) {
            (Err(missing), _) => (None, BaselineNote::clone(missing)),
            (Ok((rev, window)), Some((value, rate))) => match (value, &rate) {
                _ if too_quiet(&rate) => (
                    None,
                    BaselineNote::missing(
                        Some(*rev),
                        format!(
                            "revision {rev} served too few requests before the rollout for a latency figure"
                        ),
                    ),
                ),
                (Ok(b), _) if b > 0.0 => (
                    Some(b),
                    BaselineNote::used(
                        *rev,
                        Measurement::seconds(b),
                        *window,
                        subject.rollout_started,
                    ),
                ),
                (Ok(b), _) => (
                    None,
                    BaselineNote::missing(
                        Some(*rev),
                        format!(
                            "revision {rev}: {} is no reference",
                            Measurement::seconds(b)
                        ),
                    ),
                ),
                (Err(e), _) => (
                    None,
                    BaselineNote::missing(Some(*rev), format!("revision {rev}: {e}")),
                ),
            },
            (Ok((rev, _)), None) => (None, BaselineNote::missing(Some(*rev), "no baseline")),
        };
    let concurrent: Option<Result<(f64, Option<f64>), String>> = concurrent.map(|(value, rate)| {
        let n = match rate {
            Some(Ok(r)) => Some(r * secs),
            Some(Err(QueryError::Empty)) => Some(0.0),
            Some(Err(e)) => return Err(format!("{}: {e}", OTHERS.total)),
            None => None,
        };
        if let Some(n) = n {
            if n < min_requests {
                return Err(format!(
                    "{} requests in the span, fewer than latency.min_requests {}",
                    requests_text(n),
                    policy.min_requests
                ));
            }
        }
        match value {
            Ok(v) if v > 0.0 => Ok((v, n)),
            Ok(v) => Err(format!("{} is no reference", Measurement::seconds(v))),
            Err(e) => Err(format!("{}: {e}", OTHERS.single)),
        }
    });
    let note = note.with_concurrent(concurrent_note(subject, &concurrent, |c| {
        (Measurement::seconds(c.0), c.1)
    }));
    let (measured, rate) = match measured {
        Some(m) => m,
        None => (Err(QueryError::Empty), None),
    };
    let requests = match &rate {
        Some(Ok(r)) => Some(r * secs),
        _ => None,
    };
    let latency_empty = matches!(measured, Err(QueryError::Empty));
    let outcome = if too_quiet(&rate) {
        match &rate {
                Some(Ok(r)) => Outcome::inconclusive(format!(
                    "revision {}: {r:.2} req/s, below min_request_rate {min_rate} req/s: too few requests for a latency figure",
                    subject.revision
                )),
                _ => Outcome::inconclusive(format!(
                    "revision {}: no new samples since {} ({}: {})",
                    subject.revision,
                    hms(from),
                    CURRENT.total,
                    QueryError::Empty
                )),
            }
    } else if let Some(n) = requests.filter(|n| *n < min_requests) {
        Outcome::inconclusive(format!(
                "revision {}: {} requests since {}, fewer than latency.min_requests {}: too few for a latency figure",
                subject.revision,
                requests_text(n),
                hms(from),
                policy.min_requests
            ))
    } else {
        match measured {
            Err(QueryError::NotFinite { value }) => Outcome::inconclusive(format!(
                "revision {}: the latency query returned {value} (no requests since {}?)",
                subject.revision,
                hms(from)
            )),
            Err(QueryError::Empty) => Outcome::inconclusive(format!(
                "revision {}: no new samples since {} (query: {})",
                subject.revision,
                hms(from),
                QueryError::Empty
            )),
            Err(e) => Outcome::inconclusive(format!("revision {}: query: {e}", subject.revision)),
            Ok(v) => judge_latency(
                policy,
                subject,
                v,
                base_value,
                &note,
                concurrent
                    .as_ref()
                    .and_then(|c| c.as_ref().ok())
                    .map(|c| c.0),
            ),
        }
    };
    let mut result = SignalResult::new(signal, outcome, now)
        .over_span(from)
        .with_baseline_note(note);
    result.requests = requests;
    (result, latency_empty)
}

/// Why one revision's error ratio has no number.
#[derive(Debug)]
pub(super) enum RatioError {
    /// `total_query` returned no series: over a span this short, too few
    /// scrapes for `rate` (or no such pods).
    NoSamples(String),
    Other(String),
}

impl std::fmt::Display for RatioError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RatioError::NoSamples(why) | RatioError::Other(why) => f.write_str(why),
        }
    }
}

impl RatioSample {
    /// The requests behind the rates over a span of `secs` seconds.
    fn counted(&self, secs: f64) -> Counts {
        Counts {
            errors: self.errors * secs,
            n: self.total * secs,
            ratio: self.ratio,
        }
    }
}

/// Which baseline to query: the previous revision and its window, or the
/// note saying why there is none.
pub(super) fn baseline_plan(
    subject: &Subject,
    lookback: Duration,
) -> Result<(i64, Duration), Box<BaselineNote>> {
    let Some(prev) = &subject.baseline else {
        return Err(Box::new(BaselineNote::missing(
            None,
            "no previous revision",
        )));
    };
    baseline_window(lookback, subject.rollout_started, prev.since)
        .map(|w| (prev.revision, w))
        .map_err(|why| {
            Box::new(BaselineNote::missing(
                Some(prev.revision),
                format!("revision {} {why}", prev.revision),
            ))
        })
}

/// The note on older pods over the same span, from what was measured.
fn concurrent_note<T>(
    subject: &Subject,
    measured: &Option<Result<T, String>>,
    value: impl Fn(&T) -> (Measurement, Option<f64>),
) -> Option<ConcurrentNote> {
    let revisions: Vec<i64> = subject.serving_others.iter().map(|r| r.revision).collect();
    Some(match measured.as_ref()? {
        Ok(t) => {
            let (v, n) = value(t);
            ConcurrentNote {
                revisions,
                value: Some(v),
                requests: n,
                skipped: None,
            }
        }
        Err(why) => ConcurrentNote {
            revisions,
            value: None,
            requests: None,
            skipped: Some(why.clone()),
        },
    })
}

/// Inconclusive: nothing has happened since the last counted result.
pub(super) fn no_new_samples(
    signal: SignalId,
    subject: &Subject,
    since: Timestamp,
    now: Timestamp,
) -> SignalResult {
    let why = format!(
        "revision {}: no new samples since {}",
        subject.revision,
        hms(since)
    );
    SignalResult::new(signal, Outcome::inconclusive(why), now)
}

/// The one finite number an instant query must give.
pub fn one_number(data: &prometheus_http_query::response::Data) -> Result<f64, QueryError> {
    use prometheus_http_query::response::Data;
    let value = match data {
        Data::Scalar(sample) => sample.value(),
        Data::Vector(v) => match v.as_slice() {
            [] => return Err(QueryError::Empty),
            [one] => one.sample().value(),
            many => {
                let example = many
                    .iter()
                    .take(2)
                    .map(|s| {
                        let mut labels: Vec<String> = s
                            .metric()
                            .iter()
                            .map(|(k, v)| format!("{k}=\"{v}\""))
                            .collect();
                        labels.sort();
                        format!("{{{}}}", labels.join(", "))
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(QueryError::MultipleSeries {
                    count: many.len(),
                    example: if many.len() > 2 {
                        format!("{example}, ...")
                    } else {
                        example
                    },
                });
            }
        },
        Data::Matrix(_) => return Err(QueryError::RangeVector),
    };
    if value.is_finite() {
        Ok(value)
    } else {
        Err(QueryError::NotFinite { value })
    }
}

async fn read_token(path: &Path) -> Result<HeaderValue, QueryError> {
    let token = tokio::fs::read_to_string(path)
        .await
        .map_err(|e| QueryError::Token {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let mut value = HeaderValue::from_str(&format!("Bearer {}", token.trim())).map_err(|_| {
        QueryError::Token {
            path: path.to_path_buf(),
            message: "the token is not a valid header value".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok(value)
}

/// The innermost cause ("Connection refused (os error 111)"), which is what
/// an operator can act on.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

pub mod answer;

#[cfg(test)]
mod tests;
