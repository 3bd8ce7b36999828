//! What a signal says about a revision on one tick: Pass, Fail (with the
//! measured value, the threshold it broke and a sentence) or Inconclusive
//! (with why). These are the shared types the signal implementations return
//! and the judge, `/status`, the audit log and notifications read.
//! Nothing here does I/O, and nothing here turns missing data into a Fail:
//! a signal that cannot measure says Inconclusive.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::config::Placeholders;

pub mod body;
pub mod evaluate;
pub mod evidence;
pub mod grouped;
pub mod health;
mod limits;
pub mod misconfigured;
pub mod pods;
pub mod prometheus;
pub mod quantile;

pub use evaluate::{evaluate_all, Signals, SignalsError};

/// Which signal of a target a result comes from.
///
/// The string id ([`SignalId::id`]) is stable: it names the signal in
/// metrics labels, log fields, `/status` and the audit log, so renaming a
/// variant must not change it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SignalId {
    /// `errors_query / total_query` from Prometheus.
    ErrorRate,
    /// The latency query from Prometheus, against `max` and the baseline.
    Latency,
    /// One HTTP health probe: a configured URL, the per-pod probe
    /// ([`SignalId::PER_POD`]) or the version check ([`SignalId::VERSION`]).
    Health { name: String },
    /// Crash states of the revision's pods.
    Pods,
    /// A custom PromQL rule.
    Rule { name: String },
}

impl SignalId {
    /// Health name of the probe that hits every new pod directly.
    pub const PER_POD: &'static str = "per-pod";
    /// Health name of the `version_url` check.
    pub const VERSION: &'static str = "version";

    pub fn health(name: impl Into<String>) -> Self {
        SignalId::Health { name: name.into() }
    }

    pub fn rule(name: impl Into<String>) -> Self {
        SignalId::Rule { name: name.into() }
    }

    /// The stable id: `error_rate`, `latency`, `health:<name>`, `pods`,
    /// `rule:<name>`.
    pub fn id(&self) -> String {
        match self {
            SignalId::ErrorRate => "error_rate".to_owned(),
            SignalId::Latency => "latency".to_owned(),
            SignalId::Health { name } => format!("health:{name}"),
            SignalId::Pods => "pods".to_owned(),
            SignalId::Rule { name } => format!("rule:{name}"),
        }
    }

    /// How a sentence for a person names the signal ("error ratio",
    /// "health check api").
    pub fn label(&self) -> String {
        match self {
            SignalId::ErrorRate => "error ratio".to_owned(),
            SignalId::Latency => "latency".to_owned(),
            SignalId::Health { name } if name == Self::PER_POD => "per-pod health check".to_owned(),
            SignalId::Health { name } if name == Self::VERSION => "version check".to_owned(),
            SignalId::Health { name } => format!("health check {name}"),
            SignalId::Pods => "pods".to_owned(),
            SignalId::Rule { name } => format!("rule {name}"),
        }
    }
}

impl fmt::Display for SignalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id())
    }
}

// As its stable id, so maps keyed by signal serialize as JSON objects.
impl Serialize for SignalId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.id())
    }
}

/// What a measured number is, so it renders as `30.2 %`, `412 ms`,
/// `3 restarts` or `HTTP 503`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Unit {
    /// A fraction (0.302), shown as a percentage.
    Ratio,
    /// Seconds, shown in ms below one second.
    Seconds,
    /// Requests (or events) per second.
    PerSecond,
    /// A count of things, with the noun for one and for many.
    Count { one: String, many: String },
    /// An HTTP status code.
    HttpStatus,
    /// A multiple of something (a ratio to the baseline), shown as `1.60×`.
    Multiple,
    /// A plain number (custom rules).
    Number,
}

/// A measured value and its unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Measurement {
    pub value: f64,
    pub unit: Unit,
}

impl Measurement {
    pub fn new(value: f64, unit: Unit) -> Self {
        Measurement { value, unit }
    }

    pub fn ratio(value: f64) -> Self {
        Self::new(value, Unit::Ratio)
    }

    pub fn seconds(value: f64) -> Self {
        Self::new(value, Unit::Seconds)
    }

    pub fn per_second(value: f64) -> Self {
        Self::new(value, Unit::PerSecond)
    }

    pub fn count(value: f64, one: &str, many: &str) -> Self {
        Self::new(
            value,
            Unit::Count {
                one: one.to_owned(),
                many: many.to_owned(),
            },
        )
    }

    pub fn http_status(code: u16) -> Self {
        Self::new(f64::from(code), Unit::HttpStatus)
    }

    pub fn number(value: f64) -> Self {
        Self::new(value, Unit::Number)
    }

    /// The same unit with another value (a baseline or a limit rendered
    /// like the measurement it belongs to).
    pub fn with_value(&self, value: f64) -> Self {
        Self::new(value, self.unit.clone())
    }

    /// Whether the value is a real number: NaN and ±Inf are never evidence.
    pub fn is_finite(&self) -> bool {
        self.value.is_finite()
    }
}

impl fmt::Display for Measurement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.value;
        if !v.is_finite() {
            // Rendered, never hidden: a NaN in a message is a signal bug to see.
            return write!(f, "{v}");
        }
        match &self.unit {
            Unit::Ratio => {
                let pct = v * 100.0;
                if pct != 0.0 && pct.abs() < 0.1 {
                    write!(f, "{pct:.3} %")
                } else {
                    write!(f, "{pct:.1} %")
                }
            }
            Unit::Seconds => {
                let ms = v * 1000.0;
                if ms.abs() >= 1000.0 {
                    write!(f, "{v:.2} s")
                } else if ms.abs() >= 10.0 || ms == 0.0 {
                    write!(f, "{ms:.0} ms")
                } else {
                    write!(f, "{ms:.1} ms")
                }
            }
            Unit::PerSecond => write!(f, "{} req/s", plain(v)),
            Unit::Count { one, many } => {
                let noun = if v == 1.0 { one } else { many };
                write!(f, "{} {noun}", plain(v))
            }
            Unit::HttpStatus => write!(f, "HTTP {v:.0}"),
            Unit::Multiple => write!(f, "{v:.2}×"),
            Unit::Number => f.write_str(&plain(v)),
        }
    }
}

/// A number without trailing zeros: `3`, `0.25`, `1234.5`.
fn plain(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

// Value and unit for machines, the rendered text for people (`/status`).
impl Serialize for Measurement {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Measurement", 3)?;
        st.serialize_field("value", &self.value)?;
        st.serialize_field("unit", &self.unit)?;
        st.serialize_field("text", &self.to_string())?;
        st.end()
    }
}

/// The limit a failing measurement broke.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Threshold {
    /// The value must stay at or below `limit` (`max = 0.05`).
    Max { limit: Measurement },
    /// The value must stay at or above `limit`.
    Min { limit: Measurement },
    /// The value must stay at or below `max_ratio` × the baseline; the test
    /// counts only above `floor`. A Fail with this threshold must carry
    /// the baseline, or the judge treats it as Inconclusive.
    RatioToBaseline {
        max_ratio: f64,
        floor: Option<Measurement>,
    },
    /// A custom rule: the comparison `value op limit` held, and that is the
    /// failure (`op` is the failing comparison, as it should read in a message).
    FailsWhen { op: String, limit: Measurement },
    /// Something that must hold, in words: `HTTP 200 or 204`,
    /// `body containing v2.3.1`, `no pod in CrashLoopBackOff`.
    Expected { what: String },
}

/// What one signal says on one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Measured and within every limit.
    Pass {
        #[serde(skip_serializing_if = "Option::is_none")]
        measured: Option<Measurement>,
    },
    /// Measured and outside a limit. `baseline` is in the measurement's
    /// unit (the previous revision's value at the rollout's start).
    Fail {
        measured: Measurement,
        threshold: Threshold,
        #[serde(skip_serializing_if = "Option::is_none")]
        baseline: Option<f64>,
        /// The signal's own words for a person ("pod web-7d9-x2 is in
        /// CrashLoopBackOff").
        sentence: String,
    },
    /// Could not measure: Prometheus unreachable or erroring, an empty
    /// vector, NaN, too little traffic, an unresolvable URL. Never evidence.
    Inconclusive { why: String },
}

impl Outcome {
    pub fn pass() -> Self {
        Outcome::Pass { measured: None }
    }

    pub fn pass_with(measured: Measurement) -> Self {
        Outcome::Pass {
            measured: Some(measured),
        }
    }

    pub fn inconclusive(why: impl Into<String>) -> Self {
        Outcome::Inconclusive { why: why.into() }
    }

    pub fn is_pass(&self) -> bool {
        matches!(self, Outcome::Pass { .. })
    }

    pub fn is_fail(&self) -> bool {
        matches!(self, Outcome::Fail { .. })
    }

    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Outcome::Inconclusive { .. })
    }

    /// One line for a person, starting with the signal's label: "error
    /// ratio 30.2 % > max 5.0 % (baseline 0.1 %)", "latency 640 ms > 1.5×
    /// baseline 400 ms (1.60×)", "health check api HTTP 503, expected HTTP
    /// 200", "latency inconclusive: Prometheus unreachable".
    pub fn describe(&self, signal: &SignalId) -> String {
        let label = signal.label();
        match self {
            Outcome::Pass { measured: Some(m) } => format!("{label} {m}, passing"),
            Outcome::Pass { measured: None } => format!("{label} passing"),
            Outcome::Inconclusive { why } => format!("{label} inconclusive: {why}"),
            Outcome::Fail {
                measured,
                threshold,
                baseline,
                ..
            } => describe_failure(&label, measured, threshold, *baseline),
        }
    }
}

fn describe_failure(
    label: &str,
    measured: &Measurement,
    threshold: &Threshold,
    baseline: Option<f64>,
) -> String {
    let baseline_note = || match baseline {
        Some(b) => format!(" (baseline {})", measured.with_value(b)),
        None => String::new(),
    };
    match threshold {
        Threshold::Max { limit } => {
            format!("{label} {measured} > max {limit}{}", baseline_note())
        }
        Threshold::Min { limit } => {
            format!("{label} {measured} < min {limit}{}", baseline_note())
        }
        Threshold::RatioToBaseline { max_ratio, floor } => {
            let floor = match floor {
                Some(fl) => format!(", floor {fl}"),
                None => String::new(),
            };
            match baseline {
                Some(b) if b.is_finite() && b > 0.0 => format!(
                    "{label} {measured} > {}× baseline {} ({}{floor})",
                    plain(*max_ratio),
                    measured.with_value(b),
                    Measurement::new(measured.value / b, Unit::Multiple),
                ),
                Some(b) => format!(
                    "{label} {measured} > {}× baseline {}{floor}",
                    plain(*max_ratio),
                    measured.with_value(b)
                ),
                None => format!(
                    "{label} {measured} > {}× an unknown baseline{floor}",
                    plain(*max_ratio)
                ),
            }
        }
        Threshold::FailsWhen { op, limit } => {
            format!("{label} {measured} {op} {limit}{}", baseline_note())
        }
        Threshold::Expected { what } => {
            format!("{label} {measured}, expected {what}{}", baseline_note())
        }
    }
}

/// What the pod signal adds to its result: how many of the revision's pods
/// are in a crash state. The judge reads it for the optional immediate Bad.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PodsFinding {
    /// Pods of the revision under judgment.
    pub pods: u32,
    /// Of those, pods in an *established* crash (a configured crash state
    /// or over `max_restarts`, with at least 2 restarts or seen so on 2
    /// ticks): one warm-up OOM kill is not counted here.
    pub crashing: u32,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, ... as seen, for messages.
    pub reasons: Vec<String>,
}

impl PodsFinding {
    /// Every pod of the revision crashes, and there is at least one: zero
    /// pods is not "all crashing" (a scaled-down revision proves nothing).
    pub fn all_pods_crashing(&self) -> bool {
        self.crashing > 0 && self.crashing >= self.pods
    }
}

/// One signal's result on one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalResult {
    pub signal: SignalId,
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The evidence time: when the measurement was taken (not when it was
    /// judged). For a measurement over a span of requests, the span's end.
    #[serde(serialize_with = "timestamp")]
    pub at: jiff::Timestamp,
    /// For a measurement over a span of requests (a Prometheus rate), the
    /// span's start: the result says the requests in `(span_from, at]`
    /// behaved so, which proves less about *when* than a point sample.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_timestamp"
    )]
    pub span_from: Option<jiff::Timestamp>,
    /// Only from the pod signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods: Option<PodsFinding>,
    /// For a measurement over a span of requests: how many requests the
    /// span held (rate × span), the evidence behind the figure.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    /// For a relative criterion: the baseline compared with, its window,
    /// or why there is none. Shown on every result that has one, passing
    /// or not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_note: Option<BaselineNote>,
    /// The signal's query returned no series while the revision served
    /// traffic: reported to `/status` and once to on-call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub misconfigured: Option<misconfigured::Misconfigured>,
}

/// The reference a relative signal compared with on one tick: the
/// previous revision before the rollout (its value, over which window,
/// evaluated when), or why it is missing; and, while older pods still
/// serve, what they did over the same span.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineNote {
    /// The previous revision; None for the first revision of a Deployment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Its value before the rollout; None when `missing`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Measurement>,
    /// The span the baseline query covered, ending at `evaluated_at`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_duration"
    )]
    pub window: Option<Duration>,
    /// The rollout's start: the instant the baseline is evaluated at.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_timestamp"
    )]
    pub evaluated_at: Option<jiff::Timestamp>,
    /// Why there is no baseline, and so no relative test against it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Older pods over the same span as the new ones, while they serve.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<ConcurrentNote>,
}

/// What older revisions' pods did over the same span as the new pods.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConcurrentNote {
    /// The older revisions still serving, newest first.
    pub revisions: Vec<i64>,
    /// Their value over the span; None when `skipped`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Measurement>,
    /// The requests they served in the span, when counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<f64>,
    /// Why the comparison was not made (too few requests, a query error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl BaselineNote {
    /// A baseline that was measured.
    pub fn used(
        revision: i64,
        value: Measurement,
        window: Duration,
        evaluated_at: jiff::Timestamp,
    ) -> Self {
        BaselineNote {
            revision: Some(revision),
            value: Some(value),
            window: Some(window),
            evaluated_at: Some(evaluated_at),
            missing: None,
            concurrent: None,
        }
    }

    /// No baseline, and why (`revision` when there is a previous one).
    pub fn missing(revision: Option<i64>, why: impl Into<String>) -> Self {
        BaselineNote {
            revision,
            value: None,
            window: None,
            evaluated_at: None,
            missing: Some(why.into()),
            concurrent: None,
        }
    }

    pub fn with_concurrent(mut self, concurrent: Option<ConcurrentNote>) -> Self {
        self.concurrent = concurrent;
        self
    }
}

/// A count of requests as a person reads it: `1,200`, `4.5`.
pub fn requests_text(n: f64) -> String {
    let rounded = n.round();
    if (n - rounded).abs() > 0.05 && n < 100.0 {
        return format!("{n:.1}");
    }
    let digits = format!("{:.0}", rounded.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `1m30s`, `25s`, `1s500ms`: a window as people and PromQL write it.
fn window_text(d: Duration) -> String {
    promql_duration(d)
}

impl BaselineNote {
    /// Where a used baseline comes from, without its value: "baseline
    /// revision 1 over 25s before the rollout" (and the older pods).
    pub fn source(&self) -> String {
        let mut text = match (self.revision, self.window) {
            (Some(rev), Some(w)) => format!(
                "baseline revision {rev} over {} before the rollout",
                window_text(w)
            ),
            _ => "baseline".to_owned(),
        };
        if let Some(c) = &self.concurrent {
            text.push_str(&format!("; {c}"));
        }
        text
    }
}

impl fmt::Display for BaselineNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.missing, self.revision, &self.value, self.window) {
            (None, Some(rev), Some(value), Some(window)) => write!(
                f,
                "baseline revision {rev}: {value} over {} before the rollout",
                window_text(window)
            )?,
            (Some(why), _, _, _) => write!(f, "no baseline: {why}")?,
            _ => f.write_str("no baseline")?,
        }
        if let Some(c) = &self.concurrent {
            write!(f, "; {c}")?;
        }
        Ok(())
    }
}

impl fmt::Display for ConcurrentNote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let revs = revisions_text(&self.revisions);
        match (&self.skipped, &self.value) {
            (Some(why), _) => write!(f, "older pods ({revs}) not compared: {why}"),
            (None, Some(v)) => match self.requests {
                Some(n) => write!(
                    f,
                    "older pods ({revs}) over the same span: {v} of {} requests",
                    requests_text(n)
                ),
                None => write!(f, "older pods ({revs}) over the same span: {v}"),
            },
            (None, None) => write!(f, "older pods ({revs}) not compared"),
        }
    }
}

/// `revision 1`, `revisions 3, 1`.
pub fn revisions_text(revisions: &[i64]) -> String {
    let list = revisions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if revisions.len() == 1 {
        format!("revision {list}")
    } else {
        format!("revisions {list}")
    }
}

impl SignalResult {
    pub fn new(signal: SignalId, outcome: Outcome, at: jiff::Timestamp) -> Self {
        SignalResult {
            signal,
            outcome,
            at,
            span_from: None,
            pods: None,
            requests: None,
            baseline_note: None,
            misconfigured: None,
        }
    }

    /// The query cannot match ([`misconfigured`]): the result is
    /// Inconclusive naming it, and a point result, never a span still
    /// filling, so the judge cannot take it for a pending pass.
    pub fn with_misconfigured(mut self, finding: misconfigured::Misconfigured) -> Self {
        self.outcome = Outcome::inconclusive(finding.to_string());
        self.span_from = None;
        self.misconfigured = Some(finding);
        self
    }

    /// The span held `n` requests.
    pub fn with_requests(mut self, n: f64) -> Self {
        self.requests = Some(n);
        self
    }

    /// The baseline compared with, or why there is none.
    pub fn with_baseline_note(mut self, note: BaselineNote) -> Self {
        self.baseline_note = Some(note);
        self
    }

    /// The result covers the requests after `from` up to its `at`.
    pub fn over_span(mut self, from: jiff::Timestamp) -> Self {
        self.span_from = Some(from);
        self
    }

    pub fn with_pods(mut self, pods: PodsFinding) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The outcome in one line, named by the signal, with the requests
    /// behind a passing figure and the baseline note when there is one:
    /// "error ratio 0.4 % of 1,180 requests, passing (baseline revision 1:
    /// 0.1 % over 25s before the rollout)".
    pub fn describe(&self) -> String {
        let label = self.signal.label();
        let Some(note) = &self.baseline_note else {
            return match (&self.outcome, self.requests) {
                (Outcome::Pass { measured: Some(m) }, Some(n)) => {
                    format!("{label} {m} of {} requests, passing", requests_text(n))
                }
                _ => self.outcome.describe(&self.signal),
            };
        };
        let text = match (&self.outcome, self.requests) {
            (Outcome::Pass { measured: Some(m) }, Some(n)) => {
                format!("{label} {m} of {} requests, passing", requests_text(n))
            }
            // The note names the baseline: the short "(baseline x)" would
            // say it twice. The relative threshold's text needs the value.
            (
                Outcome::Fail {
                    measured,
                    threshold,
                    baseline,
                    ..
                },
                _,
            ) => match threshold {
                // The text names the baseline's value already: say only
                // where it comes from.
                Threshold::RatioToBaseline { .. } if note.missing.is_none() => {
                    let text = describe_failure(&label, measured, threshold, *baseline);
                    return format!("{text} ({})", note.source());
                }
                Threshold::RatioToBaseline { .. } => {
                    describe_failure(&label, measured, threshold, *baseline)
                }
                _ => describe_failure(&label, measured, threshold, None),
            },
            (outcome, _) => outcome.describe(&self.signal),
        };
        format!("{text} ({note})")
    }
}

impl fmt::Display for SignalResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// RFC 3339, as every other timestamp in `/status` and the audit log.
pub(crate) fn timestamp<S: Serializer>(ts: &jiff::Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(ts)
}

/// A duration as `/status` shows durations (`25s`, `30m`).
fn opt_duration<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.collect_str(&humantime::format_duration(*d)),
        None => s.serialize_none(),
    }
}

pub(crate) fn opt_timestamp<S: Serializer>(
    ts: &Option<jiff::Timestamp>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match ts {
        Some(ts) => s.collect_str(ts),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests;

/// The revision a tick judges, as the target tracker sees it in its caches.
/// Every signal implementation takes this and nothing else from the cluster,
/// so a tick needs no API-server call.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub namespace: String,
    pub deployment: String,
    /// `deployment.kubernetes.io/revision` of the revision's ReplicaSet.
    pub revision: i64,
    pub pod_template_hash: String,
    /// The images of the revision's pod template, container by container.
    pub images: Vec<String>,
    /// When the revision started rolling out (its ReplicaSet's creation, or
    /// the time the Deployment last switched to it): the baseline is
    /// evaluated at this instant.
    pub rollout_started: jiff::Timestamp,
    /// The revision it replaced, for relative criteria; None for the first
    /// revision of a Deployment.
    pub baseline: Option<BaselineRevision>,
    /// The pods of this revision only, from the pod cache.
    /// Shared with the pod cache (a tick copies no pod).
    pub pods: Vec<std::sync::Arc<k8s_openapi::api::core::v1::Pod>>,
    /// The Deployment reports `Progressing=False` with reason
    /// `ProgressDeadlineExceeded` for this rollout.
    pub progress_deadline_exceeded: bool,
    /// Other revisions of the Deployment with Ready pods now, newest
    /// first: a Service in front of the Deployment may still route to them.
    pub serving_others: Vec<ServingRevision>,
    /// Per signal, the evidence time of the last result the judge counted
    /// for this revision: a signal measures only what came after it, so
    /// evidence counts once.
    pub counted_until: BTreeMap<SignalId, jiff::Timestamp>,
    /// What the run loop remembers of this revision's pods between ticks.
    pub pod_history: PodHistory,
    /// When the pod watch was last known live, while it is not (it
    /// reported an error and is re-listing): `pods` is what it held then,
    /// so the pod signal dates its evidence there, not now. None: live.
    pub pods_seen_at: Option<jiff::Timestamp>,
}

/// The previous revision, whose metrics are the baseline.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BaselineRevision {
    pub revision: i64,
    pub pod_template_hash: String,
    /// When it started serving (its rollout start), if known: its baseline
    /// window never reaches back before this.
    pub since: Option<jiff::Timestamp>,
}

/// Another revision of the same Deployment that still has Ready pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingRevision {
    pub revision: i64,
    pub pod_template_hash: String,
    pub ready_pods: u32,
}

/// What the run loop remembers of one revision's pods between ticks
/// (keyed by pod name), for the warm-up and established-crash rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodHistory {
    /// Pods seen Ready at least once.
    pub ever_ready: BTreeSet<String>,
    /// Pods seen in a crash state now (a waiting or terminated reason, not
    /// only a last termination), and the evidence time they were first
    /// seen so on an unbroken run of ticks.
    pub crashing_since: BTreeMap<String, jiff::Timestamp>,
    /// How long a pod must have been seen in a crash state now, without a
    /// break, for that alone to establish its crash: the tick interval
    /// (less a tenth, a tick's jitter), set by the run loop. Evaluations a
    /// watch event wakes between ticks see a pod more often, and two
    /// sightings a moment apart are not two ticks. Zero: any earlier
    /// sighting.
    pub established_after: std::time::Duration,
}

impl Subject {
    /// A regex matching exactly the pods of a revision (the `{pods}`
    /// placeholder): the prefix Kubernetes gives them, `<deployment>-<hash>-`
    /// cut to [`MAX_GENERATED_PREFIX`] characters as the API server cuts a
    /// `generateName`, then `.*`. For a Deployment name of about 47
    /// characters or more the cut reaches into the hash, and from 58 on the
    /// regex matches the pods of every revision: the names no longer say
    /// which revision a pod belongs to.
    pub fn pods_regex(deployment: &str, pod_template_hash: &str) -> String {
        format!(
            "{}.*",
            regex_escape_promql(&pod_name_prefix(deployment, pod_template_hash))
        )
    }

    /// `{pods}` for this revision.
    pub fn pods(&self) -> String {
        Self::pods_regex(&self.deployment, &self.pod_template_hash)
    }

    /// A regex matching exactly the pods of several revisions:
    /// `(<prefix>|<prefix>).*` over their cut prefixes (see
    /// [`Subject::pods_regex`]), each prefix once; one prefix gives the
    /// same as that.
    pub fn pods_regex_of(deployment: &str, hashes: &[&str]) -> String {
        let mut prefixes: Vec<String> = Vec::new();
        for h in hashes {
            let p = regex_escape_promql(&pod_name_prefix(deployment, h));
            if !prefixes.contains(&p) {
                prefixes.push(p);
            }
        }
        match prefixes.as_slice() {
            [one] => format!("{one}.*"),
            many => format!("({}).*", many.join("|")),
        }
    }
}

/// The longest `generateName` prefix the API server keeps before it adds
/// five random characters (`maxGeneratedNameLength = 63 - 5` in
/// apiserver's `names.go`).
pub const MAX_GENERATED_PREFIX: usize = 58;

/// The name prefix of a revision's pods: its ReplicaSet's generateName,
/// `<deployment>-<hash>-`, cut to [`MAX_GENERATED_PREFIX`] characters.
pub fn pod_name_prefix(deployment: &str, pod_template_hash: &str) -> String {
    let mut prefix = format!("{deployment}-{pod_template_hash}-");
    // DNS-1123 names are ASCII; cut on a char boundary all the same.
    if let Some((i, _)) = prefix.char_indices().nth(MAX_GENERATED_PREFIX) {
        prefix.truncate(i);
    }
    prefix
}

/// Names and hashes are DNS-1123 (letters, digits, `-`, `.`), so only `.`
/// needs escaping inside a PromQL regex string (double backslash: one for
/// the PromQL string literal, one for the regex).
fn regex_escape_promql(s: &str) -> String {
    s.replace('.', "\\\\.")
}

/// The values one revision's templates are filled with, owned, so a query
/// or URL can be filled for the revision under judgment or for its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fill {
    pub namespace: String,
    pub deployment: String,
    pub revision: String,
    pub pod_template_hash: String,
    pub pods: String,
    /// A PromQL duration (`2m`), see [`promql_duration`].
    pub window: String,
    pub cluster: String,
}

impl Fill {
    /// For the revision under judgment, over `window`.
    pub fn current(subject: &Subject, window: Duration, cluster: &str) -> Self {
        Fill {
            namespace: subject.namespace.clone(),
            deployment: subject.deployment.clone(),
            revision: subject.revision.to_string(),
            pod_template_hash: subject.pod_template_hash.clone(),
            pods: subject.pods(),
            window: promql_duration(window),
            cluster: cluster.to_owned(),
        }
    }

    /// For the older revisions still serving ([`Subject::serving_others`])
    /// together, over the same `span` as the revision under judgment; None
    /// when none serves. `{pods}` matches all their pods; with more than
    /// one revision `{revision}` and `{pod_template_hash}` are regex
    /// alternations (`3|1`), so templates should match them with `=~`.
    /// Also None when a long Deployment name leaves pod names that cannot
    /// tell the revisions apart (see [`Subject::pods_regex`]): the
    /// comparison would set the pods against themselves.
    pub fn others(subject: &Subject, span: Duration, cluster: &str) -> Option<Self> {
        if subject.serving_others.is_empty() {
            return None;
        }
        let hashes: Vec<&str> = subject
            .serving_others
            .iter()
            .map(|r| r.pod_template_hash.as_str())
            .collect();
        let mine = pod_name_prefix(&subject.deployment, &subject.pod_template_hash);
        if hashes.iter().any(|h| {
            let theirs = pod_name_prefix(&subject.deployment, h);
            theirs.starts_with(&mine) || mine.starts_with(&theirs)
        }) {
            return None;
        }
        Some(Fill {
            namespace: subject.namespace.clone(),
            deployment: subject.deployment.clone(),
            revision: subject
                .serving_others
                .iter()
                .map(|r| r.revision.to_string())
                .collect::<Vec<_>>()
                .join("|"),
            pod_template_hash: hashes.join("|"),
            pods: Subject::pods_regex_of(&subject.deployment, &hashes),
            window: promql_duration(span),
            cluster: cluster.to_owned(),
        })
    }

    /// For the revision it replaced, over `lookback`; None when there is
    /// none (the first revision of a Deployment).
    pub fn baseline(subject: &Subject, lookback: Duration, cluster: &str) -> Option<Self> {
        let b = subject.baseline.as_ref()?;
        Some(Fill {
            namespace: subject.namespace.clone(),
            deployment: subject.deployment.clone(),
            revision: b.revision.to_string(),
            pod_template_hash: b.pod_template_hash.clone(),
            pods: Subject::pods_regex(&subject.deployment, &b.pod_template_hash),
            window: promql_duration(lookback),
            cluster: cluster.to_owned(),
        })
    }

    pub fn placeholders(&self) -> Placeholders<'_> {
        Placeholders {
            namespace: &self.namespace,
            deployment: &self.deployment,
            revision: &self.revision,
            pod_template_hash: &self.pod_template_hash,
            pods: &self.pods,
            window: &self.window,
            cluster: &self.cluster,
        }
    }
}

/// A duration as PromQL writes it: `90s` -> `1m30s`, `2m`, `1h30m`,
/// `1500ms` -> `1s500ms`. Anything under a millisecond is dropped, and a
/// zero duration is `0s` (which Prometheus refuses as a range: config
/// validation keeps windows positive).
pub fn promql_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        let n = ms / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod fill_tests;
