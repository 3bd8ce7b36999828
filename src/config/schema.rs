//! The validated config: typed values only, every target carrying its
//! effective policy (defaults merged with its overrides), so code after
//! loading never re-merges or re-checks. Secrets never print: they
//! serialize and debug-format as `<redacted>`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Serialize, Serializer};

use crate::k8s::selector::Selector;

/// What `check-config` prints in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// The whole validated config.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub watchdog: WatchdogSettings,
    pub prometheus: PrometheusSettings,
    pub leader_election: LeaderElection,
    pub admin: AdminSettings,
    /// The `[defaults]` policy, as applied to Deployments that opt in by
    /// annotation. Configured targets carry their own merged copy.
    pub defaults: Policy,
    pub targets: Vec<Target>,
    pub notify: Vec<NotifySink>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WatchdogSettings {
    pub cluster_name: String,
    #[serde(serialize_with = "duration")]
    pub interval: Duration,
    pub dry_run: bool,
    pub paused: bool,
    /// Where backups, the Lease and the in-flight records live.
    pub namespace: String,
    pub audit_log: PathBuf,
    /// Namespaces in which `rollback-watchdog.io/enabled: "true"` opts a
    /// Deployment in; empty turns the annotation off, `"*"` means all.
    pub opt_in_namespaces: Vec<String>,
    /// Bound on targets evaluated concurrently in one tick.
    pub max_concurrent_targets: u32,
    /// How long SIGTERM waits for an in-flight pipeline step.
    #[serde(serialize_with = "duration")]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrometheusSettings {
    /// Without userinfo: credentials written into the URL are in
    /// `url_credentials` (see [`super::credentials`]).
    pub url: url::Url,
    /// `Authorization: Basic ...` made of the URL's userinfo.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_credentials: Option<Secret>,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer_token_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// Extra request headers. Values are secrets (they often carry
    /// `Authorization`), so all of them are redacted when printed.
    pub headers: BTreeMap<String, Secret>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeaderElection {
    pub enabled: bool,
    pub lease_name: String,
    #[serde(serialize_with = "duration")]
    pub lease_duration: Duration,
    #[serde(serialize_with = "duration")]
    pub renew_deadline: Duration,
    #[serde(serialize_with = "duration")]
    pub retry_period: Duration,
    /// Holder identity; when unset, `POD_NAME` or the hostname at start-up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AdminSettings {
    pub listen: SocketAddr,
    #[serde(serialize_with = "duration")]
    pub request_timeout: Duration,
}

/// How one Deployment is judged and rolled back. For a configured target
/// this is already `[defaults]` merged with the target's overrides, and the
/// global `dry_run` / `paused` switches are folded in.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Policy {
    #[serde(serialize_with = "duration")]
    pub watch_window: Duration,
    pub failure_threshold: u32,
    pub rollback_outside_window: bool,
    #[serde(serialize_with = "duration")]
    pub cooldown: Duration,
    pub max_rollbacks_per_window: u32,
    /// The sliding window `max_rollbacks_per_window` counts over.
    #[serde(serialize_with = "duration")]
    pub rollback_budget_window: Duration,
    #[serde(serialize_with = "duration")]
    pub rollout_timeout: Duration,
    #[serde(serialize_with = "duration")]
    pub verify_window: Duration,
    pub backup_retention: u32,
    #[serde(serialize_with = "duration")]
    pub blind_alert_after: Duration,
    pub dry_run: bool,
    pub paused: bool,
    /// Every pod of the new revision in a crash state is Bad at once,
    /// without waiting for `failure_threshold` ticks.
    pub immediate_bad_when_all_pods_crash: bool,
    /// Roll back Deployments managed by Argo CD or Flux (alert-only otherwise).
    pub allow_gitops: bool,
    pub error_rate: ErrorRatePolicy,
    pub latency: LatencyPolicy,
    pub health: HealthPolicy,
    pub pods: PodsPolicy,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorRatePolicy {
    pub enabled: bool,
    pub errors_query: QueryTemplate,
    pub total_query: QueryTemplate,
    /// Absolute ceiling on errors/total, in (0, 1].
    pub max: f64,
    /// Fail when the ratio exceeds this multiple of the baseline's ratio...
    pub max_ratio_to_baseline: f64,
    /// ...and is above this floor (a fraction, 0.01 = 1 %).
    pub relative_floor: f64,
    /// Requests per second below which the signal is Inconclusive.
    pub min_request_rate: f64,
    #[serde(serialize_with = "duration")]
    pub window: Duration,
    #[serde(serialize_with = "duration")]
    pub baseline_lookback: Duration,
    /// Requests of the revision over `baseline_lookback` (counted by
    /// `total_query`) after which a query that returns no series is
    /// reported as misconfigured rather than read as zero or no data.
    pub misconfigured_after_requests: u32,
    /// The two queries return one series per `namespace`/`pod` for every
    /// target at once: run once per tick, summed per revision by the
    /// watchdog ([`crate::signals::grouped`]).
    pub grouped: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyPolicy {
    pub enabled: bool,
    /// A latency figure in seconds of the pods under judgment.
    pub query: QueryTemplate,
    pub max_ratio_to_baseline: f64,
    #[serde(serialize_with = "duration")]
    pub relative_floor: Duration,
    #[serde(serialize_with = "duration")]
    pub max: Duration,
    #[serde(serialize_with = "duration")]
    pub window: Duration,
    #[serde(serialize_with = "duration")]
    pub baseline_lookback: Duration,
    /// Requests (counted by the error-rate `total_query`) a span must hold
    /// for its quantile to be a latency figure; fewer is Inconclusive.
    pub min_requests: u32,
    /// `query` returns histogram buckets, one series per `namespace`,
    /// `pod` and `le`, for every target at once: run once per tick, the
    /// quantile computed by the watchdog as `histogram_quantile` does.
    pub grouped: bool,
    /// The quantile of a grouped `query` (0.95 = p95).
    pub quantile: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthPolicy {
    pub enabled: bool,
    /// URL templates probed each tick (`url` and `urls` of the config).
    pub urls: Vec<UrlTemplate>,
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    pub expect_status: Vec<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_regex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_pod: Option<PerPodProbe>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version_url: Option<UrlTemplate>,
    /// A PEM CA bundle trusted, besides the system's roots, for https
    /// health URLs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

/// Probe each new pod directly at `http://<pod IP>:<port><path>`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PerPodProbe {
    pub port: u16,
    pub path: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PodsPolicy {
    pub enabled: bool,
    pub crash_reasons: Vec<String>,
    pub max_restarts: u32,
    /// The Deployment's `ProgressDeadlineExceeded` condition counts as a failure.
    pub progress_deadline_is_failure: bool,
    /// A new revision with pods but none ever Ready this long after its
    /// rollout started fails, before the (longer) progress deadline.
    #[serde(serialize_with = "duration")]
    pub ready_timeout: Duration,
}

/// A custom PromQL rule: the signal fails when `query op threshold` holds
/// (`payment-errors > 0` fails on any payment error).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rule {
    pub name: String,
    pub query: QueryTemplate,
    pub op: CompareOp,
    pub threshold: f64,
    #[serde(serialize_with = "duration")]
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl CompareOp {
    pub const ALL: [CompareOp; 6] = [Self::Gt, Self::Ge, Self::Lt, Self::Le, Self::Eq, Self::Ne];

    pub fn symbol(self) -> &'static str {
        match self {
            Self::Gt => ">",
            Self::Ge => ">=",
            Self::Lt => "<",
            Self::Le => "<=",
            Self::Eq => "==",
            Self::Ne => "!=",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.symbol() == s)
    }

    /// Whether `value op threshold` holds.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::Gt => value > threshold,
            Self::Ge => value >= threshold,
            Self::Lt => value < threshold,
            Self::Le => value <= threshold,
            Self::Eq => value == threshold,
            Self::Ne => value != threshold,
        }
    }
}

impl Serialize for CompareOp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.symbol())
    }
}

/// The values a template's placeholders are filled with.
#[derive(Debug, Clone, Default)]
pub struct Placeholders<'a> {
    pub namespace: &'a str,
    pub deployment: &'a str,
    pub revision: &'a str,
    pub pod_template_hash: &'a str,
    /// A regex matching exactly the revision's pods: `<deployment>-<hash>-.*`.
    pub pods: &'a str,
    /// A PromQL range such as `2m`.
    pub window: &'a str,
    pub cluster: &'a str,
}

impl Placeholders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        Some(match name {
            "namespace" => self.namespace,
            "deployment" => self.deployment,
            "revision" => self.revision,
            "pod_template_hash" => self.pod_template_hash,
            "pods" => self.pods,
            "window" => self.window,
            "cluster" => self.cluster,
            _ => return None,
        })
    }
}

/// A PromQL query with `{namespace}`-style placeholders, checked at load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct QueryTemplate(pub(crate) String);

/// A URL with placeholders, checked at load to parse once filled. Userinfo
/// written into it (`http://user:pw@host/`) is taken out at load and kept
/// as the `Authorization` value to send ([`super::credentials`]): the text
/// never carries credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct UrlTemplate(pub(crate) String, #[serde(skip)] pub(crate) Option<Secret>);

impl QueryTemplate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn fill(&self, values: &Placeholders) -> String {
        fill(&self.0, values)
    }
}

impl UrlTemplate {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The `Authorization` value its userinfo gave, if it had any.
    pub fn authorization(&self) -> Option<&Secret> {
        self.1.as_ref()
    }
    pub fn fill(&self, values: &Placeholders) -> String {
        fill(&self.0, values)
    }
}

/// Replaces every known `{name}`; the loader has already rejected unknown ones.
pub(crate) fn fill(template: &str, values: &Placeholders) -> String {
    placeholder_regex()
        .replace_all(template, |caps: &regex::Captures| {
            values
                .get(&caps[1])
                .map(str::to_string)
                .unwrap_or_else(|| caps[0].to_string())
        })
        .into_owned()
}

pub(crate) fn placeholder_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    // An identifier in braces: PromQL's own braces always hold `=`, quotes
    // or digits-only quantifiers, so they never match.
    RE.get_or_init(|| regex::Regex::new(r"\{([A-Za-z_][A-Za-z0-9_]*)\}").expect("static regex"))
}

/// A watched Deployment (or label-selected set of them) with its effective policy.
#[derive(Debug, Clone)]
pub struct Target {
    pub namespace: String,
    pub selects: Selects,
    pub policy: Policy,
}

#[derive(Debug, Clone)]
pub enum Selects {
    Name(String),
    /// The selector as written, and parsed.
    Labels(String, Selector),
}

impl Target {
    /// `production/kailash-kaizen` or `production/app=kaizen`, for messages.
    pub fn display_name(&self) -> String {
        match &self.selects {
            Selects::Name(name) => format!("{}/{name}", self.namespace),
            Selects::Labels(selector, _) => format!("{}/{selector}", self.namespace),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Written the way a [[targets]] entry is: identity, then the
        // effective policy's keys at the same level.
        #[derive(Serialize)]
        struct Printed<'a> {
            namespace: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            name: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            selector: Option<&'a str>,
            #[serde(flatten)]
            policy: &'a Policy,
        }
        let (name, selector) = match &self.selects {
            Selects::Name(name) => (Some(name.as_str()), None),
            Selects::Labels(selector, _) => (None, Some(selector.as_str())),
        };
        Printed {
            namespace: &self.namespace,
            name,
            selector,
            policy: &self.policy,
        }
        .serialize(s)
    }
}

/// A notification sink.
#[derive(Debug, Clone, Serialize)]
pub struct NotifySink {
    /// `slack-0`, or the configured name; used in metrics and `notify-test`.
    pub name: String,
    pub kind: SinkKind,
    #[serde(flatten)]
    pub url: UrlSource,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretSource>,
    /// Event kinds delivered; empty means all.
    pub events: Vec<EventKind>,
    /// `namespace/name` (name may be `*`) the sink is for; empty means all.
    pub targets: Vec<String>,
    /// Per attempt.
    #[serde(serialize_with = "duration")]
    pub timeout: Duration,
    /// Total time for retries, after which the message is given up.
    #[serde(serialize_with = "duration")]
    pub deadline: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard_url: Option<UrlTemplate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook_url: Option<UrlTemplate>,
    /// A PEM CA bundle trusted, besides the system's roots, for this
    /// sink's https URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl NotifySink {
    /// Whether this sink wants `event` about `namespace/name`.
    pub fn wants(&self, event: EventKind, namespace: &str, name: &str) -> bool {
        let event_ok = self.events.is_empty() || self.events.contains(&event);
        let target_ok = self.targets.is_empty()
            || self.targets.iter().any(|t| match t.split_once('/') {
                Some((ns, n)) => ns == namespace && (n == "*" || n == name),
                None => false,
            });
        event_ok && target_ok
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SinkKind {
    Slack,
    Teams,
    Webhook,
}

impl SinkKind {
    pub(crate) fn parse(s: &str) -> Option<Self> {
        match s {
            "slack" => Some(Self::Slack),
            "teams" => Some(Self::Teams),
            "webhook" => Some(Self::Webhook),
            _ => None,
        }
    }
}

/// Every decision a sink can be told about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    RollbackStarted,
    RollbackSucceeded,
    RollbackFailed,
    WouldRollBack,
    Conflict,
    Escalation,
    Blind,
    DegradedOutsideWindow,
    /// A query returns no series while the revision serves traffic.
    Misconfigured,
}

impl EventKind {
    pub const ALL: [EventKind; 9] = [
        Self::RollbackStarted,
        Self::RollbackSucceeded,
        Self::RollbackFailed,
        Self::WouldRollBack,
        Self::Conflict,
        Self::Escalation,
        Self::Blind,
        Self::DegradedOutsideWindow,
        Self::Misconfigured,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RollbackStarted => "rollback_started",
            Self::RollbackSucceeded => "rollback_succeeded",
            Self::RollbackFailed => "rollback_failed",
            Self::WouldRollBack => "would_roll_back",
            Self::Conflict => "conflict",
            Self::Escalation => "escalation",
            Self::Blind => "blind",
            Self::DegradedOutsideWindow => "degraded_outside_window",
            Self::Misconfigured => "misconfigured",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// Where a sink's URL comes from. Printed as `url = "<redacted>"`,
/// `url_file = "/path"` or `url_env = "NAME"`: paths and variable names are
/// not secret, contents are.
#[derive(Debug, Clone, Serialize)]
pub enum UrlSource {
    #[serde(rename = "url")]
    Inline(Secret),
    #[serde(rename = "url_file")]
    File(PathBuf),
    #[serde(rename = "url_env")]
    Env(String),
}

/// Where a webhook's HMAC secret comes from.
#[derive(Debug, Clone, Serialize)]
pub enum SecretSource {
    #[serde(rename = "secret")]
    Inline(Secret),
    #[serde(rename = "secret_file")]
    File(PathBuf),
    #[serde(rename = "secret_env")]
    Env(String),
}

impl UrlSource {
    /// Reads the URL now (files and variables may change after start-up,
    /// e.g. a rotated Kubernetes Secret).
    pub fn resolve(&self) -> Result<Secret, super::ConfigError> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File(path) => read_secret_file(path),
            Self::Env(name) => read_secret_env(name),
        }
    }
}

impl SecretSource {
    pub fn resolve(&self) -> Result<Secret, super::ConfigError> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File(path) => read_secret_file(path),
            Self::Env(name) => read_secret_env(name),
        }
    }
}

pub(crate) fn read_secret_file(path: &std::path::Path) -> Result<Secret, super::ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| Secret::new(s.trim()))
        .map_err(|source| super::ConfigError::SecretFile {
            path: path.to_path_buf(),
            source,
        })
}

pub(crate) fn read_secret_env(name: &str) -> Result<Secret, super::ConfigError> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Ok(Secret::new(v.trim())),
        _ => Err(super::ConfigError::SecretEnv {
            name: name.to_string(),
        }),
    }
}

/// A value that must never reach a log line or printed config.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_filled_and_promql_braces_are_left_alone() {
        let t = QueryTemplate(
            r#"sum(rate(x{namespace="{namespace}", pod=~"{pods}", code=~"5.{2}"}[{window}]))"#
                .into(),
        );
        let filled = t.fill(&Placeholders {
            namespace: "production",
            pods: "web-abc-.*",
            window: "2m",
            ..Default::default()
        });
        assert_eq!(
            filled,
            r#"sum(rate(x{namespace="production", pod=~"web-abc-.*", code=~"5.{2}"}[2m]))"#
        );
    }

    #[test]
    fn secrets_do_not_show_in_debug_or_serialized_form() {
        let s = Secret::new("https://hooks.slack.com/services/T/B/xyz");
        assert_eq!(format!("{s:?}"), REDACTED);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            format!("\"{REDACTED}\"")
        );
    }

    #[test]
    fn compare_ops_parse_and_hold() {
        assert_eq!(CompareOp::parse(">="), Some(CompareOp::Ge));
        assert_eq!(CompareOp::parse("=>"), None);
        assert!(CompareOp::Gt.holds(1.0, 0.0));
        assert!(!CompareOp::Ne.holds(1.0, 1.0));
    }

    #[test]
    fn sink_filters_by_event_and_target() {
        let sink = NotifySink {
            name: "s".into(),
            kind: SinkKind::Slack,
            url: UrlSource::Env("X".into()),
            secret: None,
            events: vec![EventKind::RollbackFailed],
            targets: vec!["production/*".into()],
            timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            dashboard_url: None,
            runbook_url: None,
            ca_file: None,
        };
        assert!(sink.wants(EventKind::RollbackFailed, "production", "web"));
        assert!(!sink.wants(EventKind::Blind, "production", "web"));
        assert!(!sink.wants(EventKind::RollbackFailed, "staging", "web"));
    }
}
