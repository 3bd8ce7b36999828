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
//! That choice can only produce a Pass, never a Fail.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use prometheus_http_query::Client;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};
use tracing::Instrument;

use super::{Fill, Measurement, Outcome, SignalId, SignalResult, Subject, Threshold};
use crate::config::{ErrorRatePolicy, LatencyPolicy, PrometheusSettings, Rule};

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
#[derive(Debug, thiserror::Error)]
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
struct Role {
    errors: &'static str,
    total: &'static str,
    single: &'static str,
}

const CURRENT: Role = Role {
    errors: "errors_query",
    total: "total_query",
    single: "query",
};
const BASELINE: Role = Role {
    errors: "baseline errors_query",
    total: "baseline total_query",
    single: "baseline query",
};

/// errors/total of one revision.
#[derive(Debug, Clone, Copy)]
struct RatioSample {
    errors: f64,
    total: f64,
    ratio: f64,
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
        if let Some(observer) = &self.observer {
            observer(&QueryRecord {
                signal: signal.clone(),
                query: role,
                duration,
                outcome,
            });
        }
        result
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
        let answer = match tokio::time::timeout(self.timeout + GUARD, builder.get()).await {
            Err(_elapsed) => return Err(self.timed_out()),
            Ok(answer) => answer,
        };
        let result = answer.map_err(|e| self.classify(e))?;
        one_number(result.data())
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

    /// The error ratio of the revision, against `max` and the baseline.
    pub async fn error_rate(
        &self,
        policy: &ErrorRatePolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::ErrorRate;
        let current = Fill::current(subject, policy.window, cluster);
        let baseline_fill = Fill::baseline(subject, policy.baseline_lookback, cluster);
        let (measured, baseline) =
            tokio::join!(self.ratio(&signal, policy, &current, now, CURRENT), async {
                match &baseline_fill {
                    Some(fill) => Some(
                        self.ratio(&signal, policy, fill, subject.rollout_started, BASELINE)
                            .await,
                    ),
                    None => None,
                }
            });
        let outcome = match measured {
            Err(why) => Outcome::inconclusive(format!("revision {}: {why}", subject.revision)),
            Ok(m) => judge_error_ratio(policy, subject, m, baseline),
        };
        SignalResult::new(signal, outcome, now)
    }

    async fn ratio(
        &self,
        signal: &SignalId,
        policy: &ErrorRatePolicy,
        fill: &Fill,
        at: Timestamp,
        role: Role,
    ) -> Result<RatioSample, String> {
        let values = fill.placeholders();
        let errors_q = policy.errors_query.fill(&values);
        let total_q = policy.total_query.fill(&values);
        let (errors, total) = tokio::join!(
            self.query(signal, role.errors, &errors_q, at),
            self.query(signal, role.total, &total_q, at),
        );
        let total = total.map_err(|e| format!("{}: {e}", role.total))?;
        let errors = match errors {
            Ok(v) => v,
            // No 5xx series yet: zero errors (see the module doc).
            Err(QueryError::Empty) => 0.0,
            Err(e) => return Err(format!("{}: {e}", role.errors)),
        };
        if total <= 0.0 || total < policy.min_request_rate {
            return Err(format!(
                "traffic {} is below min_request_rate {}",
                Measurement::per_second(total),
                Measurement::per_second(policy.min_request_rate)
            ));
        }
        if errors < 0.0 || errors > total * (1.0 + 1e-9) {
            return Err(format!(
                "{} ({}) is not between 0 and {} ({}): the two queries do not count the same requests",
                role.errors,
                Measurement::per_second(errors),
                role.total,
                Measurement::per_second(total)
            ));
        }
        Ok(RatioSample {
            errors,
            total,
            ratio: (errors / total).min(1.0),
        })
    }

    /// The latency figure of the revision, against `max` and the baseline.
    ///
    /// With `traffic` (the error-rate policy: its `total_query` and
    /// `min_request_rate`), a quantile over too few requests is not a
    /// latency figure: below the minimum rate the signal is Inconclusive,
    /// and a baseline measured over too few requests is not used.
    pub async fn latency(
        &self,
        policy: &LatencyPolicy,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::Latency;
        let current = Fill::current(subject, policy.window, cluster);
        let query = policy.query.fill(&current.placeholders());
        let baseline_fill = Fill::baseline(subject, policy.baseline_lookback, cluster);
        let rate_of = |fill: &Fill, role: &'static str, at: Timestamp| {
            let q = traffic.map(|t| t.total_query.fill(&fill.placeholders()));
            let signal = signal.clone();
            async move {
                match q {
                    Some(q) => Some(self.query(&signal, role, &q, at).await),
                    None => None,
                }
            }
        };
        let (measured, baseline, current_rate, baseline_rate) = tokio::join!(
            self.query(&signal, CURRENT.single, &query, now),
            async {
                match &baseline_fill {
                    Some(fill) => {
                        let q = policy.query.fill(&fill.placeholders());
                        Some(
                            self.query(&signal, BASELINE.single, &q, subject.rollout_started)
                                .await,
                        )
                    }
                    None => None,
                }
            },
            rate_of(&current, CURRENT.total, now),
            async {
                match &baseline_fill {
                    Some(fill) => rate_of(fill, BASELINE.total, subject.rollout_started).await,
                    None => None,
                }
            }
        );
        let min_rate = traffic.map(|t| t.min_request_rate).unwrap_or(0.0);
        let too_quiet = |rate: &Option<Result<f64, QueryError>>| {
            matches!(rate, Some(Ok(r)) if *r < min_rate)
                || matches!(rate, Some(Err(QueryError::Empty)))
        };
        // A baseline over too few requests is noise: compare with max only.
        let baseline = if too_quiet(&baseline_rate) {
            None
        } else {
            baseline
        };
        let outcome = if too_quiet(&current_rate) {
            let rate = match &current_rate {
                Some(Ok(r)) => format!("{r:.2} req/s"),
                _ => "no requests yet".to_string(),
            };
            Outcome::inconclusive(format!(
                "revision {}: {rate}, below min_request_rate {min_rate} req/s: too few requests for a latency figure",
                subject.revision
            ))
        } else {
            match measured {
                Err(QueryError::NotFinite { value }) => Outcome::inconclusive(format!(
                    "revision {}: the latency query returned {value} (no requests in the window?)",
                    subject.revision
                )),
                Err(e) => {
                    Outcome::inconclusive(format!("revision {}: query: {e}", subject.revision))
                }
                Ok(v) => judge_latency(policy, subject, v, baseline),
            }
        };
        SignalResult::new(signal, outcome, now)
    }

    /// A custom rule: Fail when `query op threshold` holds.
    pub async fn rule(
        &self,
        rule: &Rule,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::rule(&rule.name);
        let fill = Fill::current(subject, rule.window, cluster);
        let query = rule.query.fill(&fill.placeholders());
        let outcome = match self.query(&signal, CURRENT.single, &query, now).await {
            Err(QueryError::Empty) => Outcome::inconclusive(format!(
                "revision {}: {} (if no series means zero, end the query with `or vector(0)`)",
                subject.revision,
                QueryError::Empty
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
                    "Rule {} fails for revision {}: {} {} {}",
                    rule.name,
                    subject.revision,
                    Measurement::number(value),
                    rule.op.symbol(),
                    Measurement::number(rule.threshold)
                ),
            },
            Ok(value) => Outcome::pass_with(Measurement::number(value)),
        };
        SignalResult::new(signal, outcome, now)
    }
}

fn judge_error_ratio(
    policy: &ErrorRatePolicy,
    subject: &Subject,
    m: RatioSample,
    baseline: Option<Result<RatioSample, String>>,
) -> Outcome {
    let ratio = Measurement::ratio(m.ratio);
    let (base, base_note) = match (&baseline, &subject.baseline) {
        (Some(Ok(b)), Some(rev)) => (
            Some(b.ratio),
            format!(
                "baseline: revision {} had {} at the rollout start {}",
                rev.revision,
                Measurement::ratio(b.ratio),
                when(subject.rollout_started)
            ),
        ),
        (Some(Err(why)), _) => (
            None,
            format!("baseline unknown, relative test skipped: {why}"),
        ),
        _ => (
            None,
            "no previous revision, relative test skipped".to_owned(),
        ),
    };
    let traffic = format!(
        "{} of {}",
        Measurement::per_second(m.errors),
        Measurement::per_second(m.total)
    );
    if m.ratio > policy.max {
        return Outcome::Fail {
            measured: ratio.clone(),
            threshold: Threshold::Max {
                limit: Measurement::ratio(policy.max),
            },
            baseline: base,
            sentence: format!(
                "{ratio} of requests to revision {} fail ({traffic}), above the max {}; {base_note}",
                subject.revision,
                Measurement::ratio(policy.max)
            ),
        };
    }
    if let Some(b) = base {
        if m.ratio > policy.max_ratio_to_baseline * b && m.ratio > policy.relative_floor {
            return Outcome::Fail {
                measured: ratio.clone(),
                threshold: Threshold::RatioToBaseline {
                    max_ratio: policy.max_ratio_to_baseline,
                    floor: Some(Measurement::ratio(policy.relative_floor)),
                },
                baseline: Some(b),
                sentence: format!(
                    "{ratio} of requests to revision {} fail ({traffic}), more than {}× the baseline and above the floor {}; {base_note}",
                    subject.revision,
                    policy.max_ratio_to_baseline,
                    Measurement::ratio(policy.relative_floor)
                ),
            };
        }
    }
    tracing::debug!(revision = subject.revision, ratio = m.ratio, %base_note, "error ratio passes");
    Outcome::pass_with(ratio)
}

fn judge_latency(
    policy: &LatencyPolicy,
    subject: &Subject,
    v: f64,
    baseline: Option<Result<f64, QueryError>>,
) -> Outcome {
    let measured = Measurement::seconds(v);
    let max = policy.max.as_secs_f64();
    let floor = policy.relative_floor.as_secs_f64();
    let (base, base_note) = match (&baseline, &subject.baseline) {
        (Some(Ok(b)), Some(rev)) if *b > 0.0 => (
            Some(*b),
            format!(
                "baseline: revision {} had {} at the rollout start {}",
                rev.revision,
                Measurement::seconds(*b),
                when(subject.rollout_started)
            ),
        ),
        (Some(Ok(b)), _) => (
            None,
            format!(
                "baseline {} is no reference, relative test skipped",
                Measurement::seconds(*b)
            ),
        ),
        (Some(Err(e)), _) => (
            None,
            format!("baseline unknown, relative test skipped: {e}"),
        ),
        _ => (
            None,
            "no previous revision, relative test skipped".to_owned(),
        ),
    };
    if v > max {
        return Outcome::Fail {
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
        };
    }
    if let Some(b) = base {
        if v > policy.max_ratio_to_baseline * b && v > floor {
            return Outcome::Fail {
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
            };
        }
    }
    tracing::debug!(revision = subject.revision, latency = v, %base_note, "latency passes");
    Outcome::pass_with(measured)
}

/// `2026-11-27 10:00:00 UTC`.
fn when(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The one finite number an instant query must give.
fn one_number(data: &prometheus_http_query::response::Data) -> Result<f64, QueryError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loader;
    use crate::signals::BaselineRevision;

    fn defaults() -> crate::config::Policy {
        Loader::from_toml("")
            .env(Vec::<(String, String)>::new())
            .load()
            .expect("built-in config")
            .config
            .defaults
    }

    fn subject(baseline: bool) -> Subject {
        Subject {
            namespace: "production".into(),
            deployment: "web".into(),
            revision: 5,
            pod_template_hash: "bbb".into(),
            images: vec![],
            rollout_started: "2026-01-01T10:00:00Z".parse().expect("time"),
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

    fn sample(errors: f64, total: f64) -> RatioSample {
        RatioSample {
            errors,
            total,
            ratio: errors / total,
        }
    }

    #[test]
    fn a_tripled_tiny_baseline_stays_under_the_relative_floor() {
        let p = defaults().error_rate;
        let o = judge_error_ratio(
            &p,
            &subject(true),
            sample(0.15, 20.0),
            Some(Ok(sample(0.002, 20.0))),
        );
        assert!(o.is_pass(), "{o:?}");
    }

    #[test]
    fn above_the_floor_a_multiple_of_the_baseline_fails_and_names_it() {
        let p = defaults().error_rate;
        let o = judge_error_ratio(
            &p,
            &subject(true),
            sample(0.6, 20.0),
            Some(Ok(sample(0.1, 20.0))),
        );
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
        assert_eq!(baseline, Some(0.005));
        assert!(
            sentence.contains("baseline: revision 4 had 0.5 %"),
            "{sentence}"
        );
    }

    #[test]
    fn without_a_baseline_only_the_absolute_test_runs() {
        let p = defaults().error_rate;
        let s = subject(false);
        assert!(judge_error_ratio(&p, &s, sample(0.6, 20.0), None).is_pass());
        let o = judge_error_ratio(&p, &s, sample(6.0, 20.0), None);
        let Outcome::Fail { sentence, .. } = o else {
            panic!("expected a Fail, got {o:?}");
        };
        assert!(
            sentence.contains("no previous revision, relative test skipped"),
            "{sentence}"
        );
        let unknown = judge_error_ratio(
            &p,
            &subject(true),
            sample(0.6, 20.0),
            Some(Err(
                "traffic 0 req/s is below min_request_rate 1 req/s".into()
            )),
        );
        assert!(unknown.is_pass());
    }

    #[test]
    fn a_zero_latency_baseline_is_no_reference() {
        let p = defaults().latency;
        assert!(judge_latency(&p, &subject(true), 0.3, Some(Ok(0.0))).is_pass());
        assert!(judge_latency(&p, &subject(true), 0.3, Some(Ok(0.1))).is_fail());
        assert!(judge_latency(&p, &subject(true), 2.5, None).is_fail());
    }
}
