//! The validation pass: turns the raw layer into the typed config while
//! collecting every problem, each as `key.path: sentence`. It never stops
//! at the first mistake and never panics: a bad value is recorded and a
//! placeholder stands in so the remaining checks still run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::raw::{self, DurationStr, RawConfig, RawNotify, RawPolicy, RawRule};
use super::schema::*;
use super::{MissingSecrets, Problem};
use crate::k8s::selector::Selector;

/// Placeholders a PromQL template may use.
pub const QUERY_PLACEHOLDERS: &[&str] = &[
    "namespace",
    "deployment",
    "revision",
    "pod_template_hash",
    "pods",
    "window",
];
/// Placeholders a health URL may use.
pub const URL_PLACEHOLDERS: &[&str] = &["namespace", "deployment", "revision", "pod_template_hash"];
/// Placeholders a dashboard or runbook link may use.
pub const LINK_PLACEHOLDERS: &[&str] = &[
    "cluster",
    "namespace",
    "deployment",
    "revision",
    "pod_template_hash",
];

const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
const NOTIFY_DEADLINE: Duration = Duration::from_secs(120);

/// The samples placeholders are filled with to check that a template parses.
const SAMPLE: Placeholders<'static> = Placeholders {
    namespace: "production",
    deployment: "example",
    revision: "7",
    pod_template_hash: "5d8f7c9b4",
    pods: "example-5d8f7c9b4-.*",
    window: "2m",
    cluster: "production",
};

pub(crate) struct Outcome {
    pub config: Config,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Validates `raw`; `doc` is the same document as JSON (for merging target
/// overrides), `env` the environment used to check `url_env`-style keys.
pub(crate) fn validate(
    raw: &RawConfig,
    doc: &Value,
    env: &BTreeMap<String, String>,
    missing_secrets: MissingSecrets,
) -> Outcome {
    let mut c = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
        env,
        missing_secrets,
    };

    let watchdog = c.watchdog(raw);
    let prometheus = c.prometheus(raw);
    let leader_election = c.leader_election(raw);
    let admin = c.admin(raw);

    // [defaults] is checked with relative paths so that a target which only
    // inherits a bad value does not report it again under its own name.
    let mut d = c.child();
    let defaults = d.policy(&raw.defaults, watchdog.interval);
    for key in ["namespace", "name", "selector"] {
        if doc.pointer(&format!("/defaults/{key}")).is_some() {
            d.problem(key, "belongs in a [[targets]] entry, not in [defaults]");
        }
    }
    let inherited: BTreeSet<(String, String)> = d
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    c.adopt(d, "defaults");

    let default_doc = doc
        .get("defaults")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let mut targets = Vec::new();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, raw_target) in raw.targets.iter().enumerate() {
        let prefix = format!("targets[{i}]");
        let own = doc
            .pointer(&format!("/targets/{i}"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut t = c.child();
        let selects = t.target_identity(raw_target);
        let merged = merged_policy(&default_doc, &own);
        let policy = match serde_json::from_value::<RawPolicy>(merged) {
            Ok(merged) => t.policy(&merged, watchdog.interval),
            // Cannot happen after the raw pass accepted both halves; say so
            // instead of panicking if it ever does.
            Err(e) => {
                t.problem("", format!("cannot merge with [defaults]: {e}"));
                defaults.clone()
            }
        };
        t.problems.retain(|p| {
            !inherited.contains(&(p.path.clone(), p.message.clone()))
                || raw::has_path(&own, &p.path)
        });
        c.adopt(t, &prefix);

        let namespace = raw_target.namespace.clone().unwrap_or_default();
        if let Some(selects) = selects {
            let key = match &selects {
                Selects::Name(n) => (namespace.clone(), format!("name {n}")),
                Selects::Labels(s, _) => (namespace.clone(), format!("selector {s}")),
            };
            if let Some(first) = seen.get(&key) {
                c.problem(
                    &prefix,
                    format!("selects the same Deployments as targets[{first}] ({namespace}, {}); merge the two entries", key.1),
                );
            } else {
                seen.insert(key, i);
            }
            let mut policy = policy;
            policy.dry_run |= watchdog.dry_run;
            policy.paused |= watchdog.paused;
            targets.push(Target {
                namespace,
                selects,
                policy,
            });
        }
    }

    let mut notify = Vec::new();
    for (i, raw_sink) in raw.notify.iter().enumerate() {
        notify.push(c.notify(&format!("notify[{i}]"), i, raw_sink));
    }

    let config = Config {
        watchdog,
        prometheus,
        leader_election,
        admin,
        defaults,
        targets,
        notify,
    };
    Outcome {
        config,
        problems: c.problems,
        warnings: c.warnings,
    }
}

/// A target's policy document: `[defaults]` with the target's keys on top.
/// Giving `url` or `urls` under `[targets.health]` replaces both inherited
/// lists, so a target never probes the defaults' URL by surprise.
fn merged_policy(defaults: &Value, own: &Value) -> Value {
    let mut base = defaults.clone();
    let mut over = own.clone();
    for v in [&mut base, &mut over] {
        if let Value::Object(map) = v {
            for key in ["namespace", "name", "selector"] {
                map.remove(key);
            }
        }
    }
    let own_sets_urls = ["url", "urls"]
        .iter()
        .any(|k| own.pointer(&format!("/health/{k}")).is_some());
    if own_sets_urls {
        if let Some(Value::Object(health)) = base.get_mut("health") {
            health.remove("url");
            health.remove("urls");
        }
    }
    raw::merge_over(&base, &over)
}

struct Checker<'a> {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    env: &'a BTreeMap<String, String>,
    missing_secrets: MissingSecrets,
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

impl<'a> Checker<'a> {
    fn child(&self) -> Checker<'a> {
        Checker {
            problems: Vec::new(),
            warnings: Vec::new(),
            env: self.env,
            missing_secrets: self.missing_secrets,
        }
    }

    fn adopt(&mut self, child: Checker, prefix: &str) {
        for p in child.problems {
            self.problems
                .push(Problem::new(join(prefix, &p.path), p.message));
        }
        for p in child.warnings {
            self.warnings
                .push(Problem::new(join(prefix, &p.path), p.message));
        }
    }

    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::new(path.to_string(), message.into()));
    }

    /// A secret that is absent on this machine: an error when the
    /// watchdog is about to use it, a warning for `check-config` run away
    /// from the cluster where it is mounted.
    fn missing_secret(&mut self, path: &str, message: String) {
        match self.missing_secrets {
            MissingSecrets::Error => self.problem(path, message),
            MissingSecrets::Warn => self.warnings.push(Problem::new(path.to_string(), message)),
        }
    }

    // --- leaves ---

    fn required<'v, T>(&mut self, path: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            self.problem(path, "missing");
        }
        value.as_ref()
    }

    fn bool(&mut self, path: &str, value: Option<bool>) -> bool {
        self.required(path, &value).copied().unwrap_or(false)
    }

    fn duration(&mut self, path: &str, value: &Option<DurationStr>) -> Duration {
        let Some(DurationStr(text)) = self.required(path, value) else {
            return Duration::ZERO;
        };
        match parse_duration(text) {
            Some(d) => d,
            None => {
                self.problem(
                    path,
                    format!(r#"{text:?} is not a duration like "15s" or "5m""#),
                );
                Duration::ZERO
            }
        }
    }

    fn positive_duration(&mut self, path: &str, value: &Option<DurationStr>) -> Duration {
        let d = self.duration(path, value);
        if d.is_zero()
            && value
                .as_ref()
                .is_some_and(|v| parse_duration(&v.0).is_some())
        {
            self.problem(path, "must be longer than 0s");
        }
        d
    }

    fn string(&mut self, path: &str, value: &Option<String>) -> String {
        let Some(text) = self.required(path, value) else {
            return String::new();
        };
        if text.trim().is_empty() {
            self.problem(path, "must not be empty");
        }
        text.clone()
    }

    fn dns_label(&mut self, path: &str, value: &Option<String>, what: &str) -> String {
        let text = self.string(path, value);
        if !text.trim().is_empty() && !is_dns_label(&text) {
            self.problem(
                path,
                format!("{text:?} is not a valid {what} (lowercase letters, digits and '-', at most 63 characters)"),
            );
        }
        text
    }

    fn dns_subdomain(&mut self, path: &str, value: &Option<String>, what: &str) -> String {
        let text = self.string(path, value);
        if !text.trim().is_empty() && !is_dns_subdomain(&text) {
            self.problem(
                path,
                format!("{text:?} is not a valid {what} (lowercase letters, digits, '-' and '.', at most 253 characters)"),
            );
        }
        text
    }

    fn ratio_above_one(&mut self, path: &str, value: Option<f64>) -> f64 {
        let Some(&v) = self.required(path, &value) else {
            return 0.0;
        };
        if !(v.is_finite() && v > 1.0) {
            self.problem(path, format!("must be > 1.0, got {v}"));
        }
        v
    }

    fn placeholders(&mut self, path: &str, template: &str, known: &[&str]) -> bool {
        let unknown: Vec<String> = placeholder_regex()
            .captures_iter(template)
            .map(|c| c[1].to_string())
            .filter(|name| !known.contains(&name.as_str()))
            .collect();
        if unknown.is_empty() {
            return true;
        }
        let braced = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
        let plural = if unknown.len() > 1 { "s" } else { "" };
        self.problem(
            path,
            format!(
                "unknown placeholder{plural} {}; known: {}",
                braced(&unknown),
                braced(known)
            ),
        );
        false
    }

    fn query(&mut self, path: &str, value: &Option<String>) -> QueryTemplate {
        let text = self.string(path, value);
        if !text.trim().is_empty() && self.placeholders(path, &text, QUERY_PLACEHOLDERS) {
            if let Err(why) = promql_shape(&fill(&text, &SAMPLE)) {
                self.problem(path, format!("does not look like PromQL: {why}"));
            }
        }
        QueryTemplate(text)
    }

    fn url_template(&mut self, path: &str, text: &str, known: &[&str]) -> UrlTemplate {
        if text.trim().is_empty() {
            self.problem(path, "must not be empty");
        } else if self.placeholders(path, text, known) {
            if let Err(why) = http_url(&fill(text, &SAMPLE)) {
                self.problem(path, format!("{text:?} is not an http(s) URL: {why}"));
            }
        }
        UrlTemplate(text.to_string())
    }

    /// A file the watchdog reads at run time (token, CA, webhook URL).
    /// Returns its content when readable.
    fn secret_file(&mut self, path: &str, file: &str) -> Option<String> {
        if file.trim().is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        let p = Path::new(file);
        if p.is_dir() {
            self.problem(path, format!("{file} is a directory, not a file"));
            return None;
        }
        match std::fs::read_to_string(p) {
            Ok(content) => Some(content),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.missing_secret(path, format!("file {file} does not exist"));
                None
            }
            Err(e) => {
                self.missing_secret(path, format!("file {file} cannot be read: {e}"));
                None
            }
        }
    }

    fn secret_env(&mut self, path: &str, name: &str) -> Option<String> {
        if !is_env_name(name) {
            self.problem(
                path,
                format!("{name:?} is not an environment variable name"),
            );
            return None;
        }
        match self.env.get(name) {
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => {
                self.missing_secret(path, format!("environment variable {name} is not set"));
                None
            }
        }
    }

    // --- sections ---

    fn watchdog(&mut self, raw: &RawConfig) -> WatchdogSettings {
        let w = &raw.watchdog;
        let interval = self.duration("watchdog.interval", &w.interval);
        let parsed = w
            .interval
            .as_ref()
            .is_some_and(|d| parse_duration(&d.0).is_some());
        if parsed && interval < Duration::from_secs(1) {
            self.problem(
                "watchdog.interval",
                format!(
                    "must be at least 1s, got {}",
                    humantime::format_duration(interval)
                ),
            );
        }
        let mut opt_in = Vec::new();
        for (i, ns) in w
            .opt_in_namespaces
            .clone()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if ns != "*" && !is_dns_label(&ns) {
                self.problem(
                    &format!("watchdog.opt_in_namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name or \"*\""),
                );
            }
            opt_in.push(ns);
        }
        let max_concurrent_targets = *self
            .required("watchdog.max_concurrent_targets", &w.max_concurrent_targets)
            .unwrap_or(&1);
        if max_concurrent_targets == 0 {
            self.problem(
                "watchdog.max_concurrent_targets",
                "must be at least 1, got 0",
            );
        }
        WatchdogSettings {
            cluster_name: self.string("watchdog.cluster_name", &w.cluster_name),
            interval,
            dry_run: self.bool("watchdog.dry_run", w.dry_run),
            paused: self.bool("watchdog.paused", w.paused),
            namespace: self.dns_label("watchdog.namespace", &w.namespace, "namespace name"),
            audit_log: PathBuf::from(self.string("watchdog.audit_log", &w.audit_log)),
            opt_in_namespaces: opt_in,
            max_concurrent_targets,
            shutdown_grace: self.duration("watchdog.shutdown_grace", &w.shutdown_grace),
        }
    }

    fn prometheus(&mut self, raw: &RawConfig) -> PrometheusSettings {
        let p = &raw.prometheus;
        let text = self.string("prometheus.url", &p.url);
        let url = match http_url(&text) {
            Ok(url) if placeholder_regex().is_match(&text) => {
                self.problem(
                    "prometheus.url",
                    "takes no placeholders; give Prometheus' own address",
                );
                url
            }
            Ok(url) => url,
            Err(why) => {
                if !text.trim().is_empty() {
                    self.problem(
                        "prometheus.url",
                        format!("{text:?} is not an http(s) URL: {why}"),
                    );
                }
                fallback_url()
            }
        };
        let bearer_token_file = p.bearer_token_file.as_ref().map(|f| {
            self.secret_file("prometheus.bearer_token_file", f);
            PathBuf::from(f)
        });
        let ca_file = p.ca_file.as_ref().map(|f| {
            self.secret_file("prometheus.ca_file", f);
            PathBuf::from(f)
        });
        let mut headers = BTreeMap::new();
        for (name, value) in &p.headers {
            let path = format!("prometheus.headers.{name}");
            if !is_header_name(name) {
                self.problem(&path, format!("{name:?} is not an HTTP header name"));
            }
            if value.contains(['\r', '\n']) {
                self.problem(&path, "the value must not contain line breaks");
            }
            headers.insert(name.clone(), Secret::new(value.clone()));
        }
        PrometheusSettings {
            url,
            timeout: self.positive_duration("prometheus.timeout", &p.timeout),
            bearer_token_file,
            ca_file,
            headers,
        }
    }

    fn leader_election(&mut self, raw: &RawConfig) -> LeaderElection {
        let l = &raw.leader_election;
        let lease_duration =
            self.positive_duration("leader_election.lease_duration", &l.lease_duration);
        let renew_deadline =
            self.positive_duration("leader_election.renew_deadline", &l.renew_deadline);
        let retry_period = self.positive_duration("leader_election.retry_period", &l.retry_period);
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        if !lease_duration.is_zero()
            && !renew_deadline.is_zero()
            && renew_deadline >= lease_duration
        {
            self.problem(
                "leader_election.renew_deadline",
                format!(
                    "must be shorter than lease_duration ({}), got {}",
                    fmt(lease_duration),
                    fmt(renew_deadline)
                ),
            );
        }
        if !renew_deadline.is_zero() && !retry_period.is_zero() && retry_period >= renew_deadline {
            self.problem(
                "leader_election.retry_period",
                format!(
                    "must be shorter than renew_deadline ({}), got {}",
                    fmt(renew_deadline),
                    fmt(retry_period)
                ),
            );
        }
        LeaderElection {
            enabled: self.bool("leader_election.enabled", l.enabled),
            lease_name: self.dns_subdomain(
                "leader_election.lease_name",
                &l.lease_name,
                "Lease name",
            ),
            lease_duration,
            renew_deadline,
            retry_period,
            identity: l.identity.clone(),
        }
    }

    fn admin(&mut self, raw: &RawConfig) -> AdminSettings {
        let a = &raw.admin;
        let text = self.string("admin.listen", &a.listen);
        let listen = match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                if !text.trim().is_empty() {
                    self.problem(
                        "admin.listen",
                        format!(r#"{text:?} is not an address like "0.0.0.0:8080""#),
                    );
                }
                SocketAddr::from(([0, 0, 0, 0], 8080))
            }
        };
        AdminSettings {
            listen,
            request_timeout: self.positive_duration("admin.request_timeout", &a.request_timeout),
        }
    }

    /// Returns `Some` when the identity is usable, so a broken target is not
    /// kept (the whole config is rejected anyway).
    fn target_identity(&mut self, t: &RawPolicy) -> Option<Selects> {
        let ns = self.dns_label("namespace", &t.namespace, "namespace name");
        let selects = match (&t.name, &t.selector) {
            (None, None) => {
                self.problem("", "give one of name, selector");
                None
            }
            (Some(_), Some(_)) => {
                self.problem("", "give name or selector, not both");
                None
            }
            (Some(name), None) => {
                let name = self.dns_subdomain("name", &Some(name.clone()), "Deployment name");
                Some(Selects::Name(name))
            }
            (None, Some(selector)) => {
                if selector.trim().is_empty() {
                    self.problem("selector", "an empty selector would select every Deployment in the namespace; give labels such as \"app=web\"");
                    None
                } else {
                    match Selector::parse(selector) {
                        Ok(parsed) => Some(Selects::Labels(selector.clone(), parsed)),
                        Err(e) => {
                            self.problem("selector", e.to_string());
                            None
                        }
                    }
                }
            }
        };
        if ns.trim().is_empty() {
            None
        } else {
            selects
        }
    }

    /// A policy with paths relative to its table (`watch_window`, `latency.max`).
    fn policy(&mut self, p: &RawPolicy, interval: Duration) -> Policy {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let watch_window = self.positive_duration("watch_window", &p.watch_window);
        let failure_threshold = *self
            .required("failure_threshold", &p.failure_threshold)
            .unwrap_or(&1);
        if failure_threshold == 0 {
            self.problem("failure_threshold", "must be at least 1, got 0");
        }
        // Checked: an absurd interval is reported, not an overflow panic.
        let detect = interval
            .checked_mul(failure_threshold)
            .unwrap_or(Duration::MAX);
        if !watch_window.is_zero()
            && !interval.is_zero()
            && failure_threshold > 0
            && detect > watch_window
        {
            self.problem(
                "watch_window",
                format!(
                    "{} is shorter than failure_threshold ({failure_threshold}) x watchdog.interval ({}) = {}; no revision could turn Bad inside it",
                    fmt(watch_window),
                    fmt(interval),
                    fmt(detect)
                ),
            );
        }
        let max_rollbacks = *self
            .required("max_rollbacks_per_window", &p.max_rollbacks_per_window)
            .unwrap_or(&1);
        if max_rollbacks == 0 {
            self.problem(
                "max_rollbacks_per_window",
                "must be at least 1, got 0; for alert-only use dry_run = true",
            );
        }
        let backup_retention = *self
            .required("backup_retention", &p.backup_retention)
            .unwrap_or(&1);
        if backup_retention == 0 {
            self.problem(
                "backup_retention",
                "must be at least 1, got 0: no backup means no rollback",
            );
        }
        let error_rate = self.error_rate(p);
        let rules = self.rules(p.rules.as_deref().unwrap_or_default(), error_rate.window);
        Policy {
            watch_window,
            failure_threshold,
            rollback_outside_window: self
                .bool("rollback_outside_window", p.rollback_outside_window),
            cooldown: self.duration("cooldown", &p.cooldown),
            max_rollbacks_per_window: max_rollbacks,
            rollback_budget_window: self
                .positive_duration("rollback_budget_window", &p.rollback_budget_window),
            rollout_timeout: self.positive_duration("rollout_timeout", &p.rollout_timeout),
            verify_window: self.positive_duration("verify_window", &p.verify_window),
            backup_retention,
            blind_alert_after: self.positive_duration("blind_alert_after", &p.blind_alert_after),
            dry_run: self.bool("dry_run", p.dry_run),
            paused: self.bool("paused", p.paused),
            immediate_bad_when_all_pods_crash: self.bool(
                "immediate_bad_when_all_pods_crash",
                p.immediate_bad_when_all_pods_crash,
            ),
            allow_gitops: self.bool("allow_gitops", p.allow_gitops),
            error_rate,
            latency: self.latency(p),
            health: self.health(p),
            pods: self.pods(p),
            rules,
        }
    }

    fn error_rate(&mut self, p: &RawPolicy) -> ErrorRatePolicy {
        let e = &p.error_rate;
        let max = *self.required("error_rate.max", &e.max).unwrap_or(&1.0);
        if !(max > 0.0 && max <= 1.0) {
            self.problem(
                "error_rate.max",
                format!("must be a fraction in (0, 1], got {max}"),
            );
        }
        let relative_floor = *self
            .required("error_rate.relative_floor", &e.relative_floor)
            .unwrap_or(&0.0);
        if !(0.0..1.0).contains(&relative_floor) {
            self.problem(
                "error_rate.relative_floor",
                format!("must be a fraction in [0, 1), got {relative_floor}"),
            );
        }
        let min_request_rate = *self
            .required("error_rate.min_request_rate", &e.min_request_rate)
            .unwrap_or(&0.0);
        if !(min_request_rate.is_finite() && min_request_rate >= 0.0) {
            self.problem(
                "error_rate.min_request_rate",
                format!("must be >= 0 requests per second, got {min_request_rate}"),
            );
        }
        ErrorRatePolicy {
            enabled: self.bool("error_rate.enabled", e.enabled),
            errors_query: self.query("error_rate.errors_query", &e.errors_query),
            total_query: self.query("error_rate.total_query", &e.total_query),
            max,
            max_ratio_to_baseline: self
                .ratio_above_one("error_rate.max_ratio_to_baseline", e.max_ratio_to_baseline),
            relative_floor,
            min_request_rate,
            window: self.positive_duration("error_rate.window", &e.window),
            baseline_lookback: self
                .positive_duration("error_rate.baseline_lookback", &e.baseline_lookback),
        }
    }

    fn latency(&mut self, p: &RawPolicy) -> LatencyPolicy {
        let l = &p.latency;
        LatencyPolicy {
            enabled: self.bool("latency.enabled", l.enabled),
            query: self.query("latency.query", &l.query),
            max_ratio_to_baseline: self
                .ratio_above_one("latency.max_ratio_to_baseline", l.max_ratio_to_baseline),
            relative_floor: self.duration("latency.relative_floor", &l.relative_floor),
            max: self.positive_duration("latency.max", &l.max),
            window: self.positive_duration("latency.window", &l.window),
            baseline_lookback: self
                .positive_duration("latency.baseline_lookback", &l.baseline_lookback),
        }
    }

    fn health(&mut self, p: &RawPolicy) -> HealthPolicy {
        let h = &p.health;
        let mut urls = Vec::new();
        if let Some(url) = &h.url {
            urls.push(self.url_template("health.url", url, URL_PLACEHOLDERS));
        }
        for (i, url) in h.urls.iter().flatten().enumerate() {
            urls.push(self.url_template(&format!("health.urls[{i}]"), url, URL_PLACEHOLDERS));
        }
        let mut expect_status = Vec::new();
        let statuses = self
            .required("health.expect_status", &h.expect_status)
            .cloned()
            .unwrap_or_default();
        if h.expect_status.is_some() && statuses.is_empty() {
            self.problem(
                "health.expect_status",
                "must list at least one status, e.g. [200]",
            );
        }
        for (i, code) in statuses.into_iter().enumerate() {
            match u16::try_from(code) {
                Ok(code) if (100..=599).contains(&code) => expect_status.push(code),
                _ => self.problem(
                    &format!("health.expect_status[{i}]"),
                    format!("{code} is not an HTTP status code (100-599)"),
                ),
            }
        }
        let body_regex = h.body_regex.clone();
        if let Some(re) = &body_regex {
            if let Err(e) = regex::Regex::new(re) {
                let why = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or_default()
                    .trim()
                    .to_string();
                self.problem(
                    "health.body_regex",
                    format!("{re:?} is not a regular expression: {why}"),
                );
            }
        }
        let per_pod = match &h.per_pod {
            Some(pp) if pp.enabled.unwrap_or(true) => {
                let port = match pp.port {
                    None => {
                        self.problem(
                            "health.per_pod.port",
                            "missing; give the container port to probe",
                        );
                        0
                    }
                    Some(port) => match u16::try_from(port) {
                        Ok(port) if port > 0 => port,
                        _ => {
                            self.problem(
                                "health.per_pod.port",
                                format!("{port} is not a port (1-65535)"),
                            );
                            0
                        }
                    },
                };
                let path = pp.path.clone().unwrap_or_else(|| "/health".to_string());
                if !path.starts_with('/') {
                    self.problem(
                        "health.per_pod.path",
                        format!("{path:?} must start with '/'"),
                    );
                }
                Some(PerPodProbe { port, path })
            }
            _ => None,
        };
        let version_url = h
            .version_url
            .as_ref()
            .map(|u| self.url_template("health.version_url", u, URL_PLACEHOLDERS));
        HealthPolicy {
            enabled: self.bool("health.enabled", h.enabled),
            urls,
            timeout: self.positive_duration("health.timeout", &h.timeout),
            expect_status,
            body_regex,
            per_pod,
            version_url,
        }
    }

    fn pods(&mut self, p: &RawPolicy) -> PodsPolicy {
        let pods = &p.pods;
        let reasons = self
            .required("pods.crash_reasons", &pods.crash_reasons)
            .cloned()
            .unwrap_or_default();
        for (i, reason) in reasons.iter().enumerate() {
            if reason.trim().is_empty() || reason.contains(char::is_whitespace) {
                self.problem(
                    &format!("pods.crash_reasons[{i}]"),
                    format!(
                        "{reason:?} is not a container state reason such as \"CrashLoopBackOff\""
                    ),
                );
            }
        }
        PodsPolicy {
            enabled: self.bool("pods.enabled", pods.enabled),
            crash_reasons: reasons,
            max_restarts: *self
                .required("pods.max_restarts", &pods.max_restarts)
                .unwrap_or(&0),
            progress_deadline_is_failure: self.bool(
                "pods.progress_deadline_is_failure",
                pods.progress_deadline_is_failure,
            ),
        }
    }

    fn rules(&mut self, rules: &[RawRule], default_window: Duration) -> Vec<Rule> {
        let mut out = Vec::new();
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        for (i, r) in rules.iter().enumerate() {
            let path = |key: &str| format!("rules[{i}].{key}");
            let name = self.string(&path("name"), &r.name);
            if !name.is_empty() {
                if !is_rule_name(&name) {
                    self.problem(&path("name"), format!("{name:?} must be lowercase letters, digits, '-' or '_' (it labels metrics)"));
                }
                if let Some(first) = names.get(&name) {
                    self.problem(
                        &path("name"),
                        format!("{name:?} is already the name of rules[{first}]"),
                    );
                } else {
                    names.insert(name.clone(), i);
                }
            }
            let query = self.query(&path("query"), &r.query);
            let op = match r.op.as_deref() {
                None => {
                    self.problem(&path("op"), "missing; use one of >, >=, <, <=, ==, !=");
                    CompareOp::Gt
                }
                Some(text) => CompareOp::parse(text.trim()).unwrap_or_else(|| {
                    self.problem(
                        &path("op"),
                        format!("{text:?} is not a comparison; use one of >, >=, <, <=, ==, !="),
                    );
                    CompareOp::Gt
                }),
            };
            let threshold = *self
                .required(&path("threshold"), &r.threshold)
                .unwrap_or(&0.0);
            if !threshold.is_finite() {
                self.problem(
                    &path("threshold"),
                    format!("must be a finite number, got {threshold}"),
                );
            }
            let window = match &r.window {
                Some(_) => self.positive_duration(&path("window"), &r.window),
                None => default_window,
            };
            out.push(Rule {
                name,
                query,
                op,
                threshold,
                window,
            });
        }
        out
    }

    fn notify(&mut self, prefix: &str, index: usize, n: &RawNotify) -> NotifySink {
        let path = |key: &str| join(prefix, key);
        let kind = match n.kind.as_deref() {
            None => {
                self.problem(&path("kind"), "missing; use slack, teams or webhook");
                SinkKind::Webhook
            }
            Some(k) => SinkKind::parse(k).unwrap_or_else(|| {
                self.problem(
                    &path("kind"),
                    format!("{k:?} is not a sink kind; use slack, teams or webhook"),
                );
                SinkKind::Webhook
            }),
        };
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", n.kind.as_deref().unwrap_or("sink")));

        let given: Vec<&str> = [
            ("url", n.url.is_some()),
            ("url_file", n.url_file.is_some()),
            ("url_env", n.url_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let url = match given.len() {
            0 => {
                self.problem(prefix, "give one of url, url_file, url_env");
                UrlSource::Env(String::new())
            }
            1 => self.url_source(prefix, n),
            _ => {
                self.problem(
                    prefix,
                    format!(
                        "give only one of url, url_file, url_env; got {}",
                        given.join(" and ")
                    ),
                );
                UrlSource::Env(String::new())
            }
        };

        let secret_given: Vec<&str> = [
            ("secret", n.secret.is_some()),
            ("secret_file", n.secret_file.is_some()),
            ("secret_env", n.secret_env.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect();
        let secret = match secret_given.as_slice() {
            [] => None,
            [key] if kind != SinkKind::Webhook => {
                self.problem(
                    &path(key),
                    "only webhook sinks sign their messages; remove it or use kind = \"webhook\"",
                );
                None
            }
            [_] => Some(self.secret_source(prefix, n)),
            _ => {
                self.problem(
                    prefix,
                    format!(
                        "give only one of secret, secret_file, secret_env; got {}",
                        secret_given.join(" and ")
                    ),
                );
                None
            }
        };

        let mut events = Vec::new();
        for (i, e) in n.events.iter().flatten().enumerate() {
            match EventKind::parse(e) {
                Some(kind) => events.push(kind),
                None => {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.problem(
                        &path(&format!("events[{i}]")),
                        format!("{e:?} is not an event kind; known: {}", known.join(", ")),
                    );
                }
            }
        }
        let mut targets = Vec::new();
        for (i, t) in n.targets.iter().flatten().enumerate() {
            let ok = t.split_once('/').is_some_and(|(ns, name)| {
                is_dns_label(ns) && (name == "*" || is_dns_subdomain(name))
            });
            if !ok {
                self.problem(
                    &path(&format!("targets[{i}]")),
                    format!(r#"{t:?} is not "namespace/name" (name may be "*")"#),
                );
            }
            targets.push(t.clone());
        }
        let timeout = match &n.timeout {
            Some(_) => self.positive_duration(&path("timeout"), &n.timeout),
            None => NOTIFY_TIMEOUT,
        };
        let deadline = match &n.deadline {
            Some(_) => self.positive_duration(&path("deadline"), &n.deadline),
            None => NOTIFY_DEADLINE.max(timeout),
        };
        if !timeout.is_zero() && !deadline.is_zero() && deadline < timeout {
            self.problem(
                &path("deadline"),
                format!(
                    "must be at least the timeout ({}), got {}",
                    humantime::format_duration(timeout),
                    humantime::format_duration(deadline)
                ),
            );
        }
        let dashboard_url = n
            .dashboard_url
            .as_ref()
            .map(|u| self.url_template(&path("dashboard_url"), u, LINK_PLACEHOLDERS));
        let runbook_url = n
            .runbook_url
            .as_ref()
            .map(|u| self.url_template(&path("runbook_url"), u, LINK_PLACEHOLDERS));
        NotifySink {
            name,
            kind,
            url,
            secret,
            events,
            targets,
            timeout,
            deadline,
            dashboard_url,
            runbook_url,
        }
    }

    /// Exactly one of url, url_file, url_env is set. The URL itself is a
    /// secret (a Slack webhook URL is its own credential): problems about
    /// it never quote it.
    fn url_source(&mut self, prefix: &str, n: &RawNotify) -> UrlSource {
        let path = |key: &str| join(prefix, key);
        if let Some(url) = &n.url {
            if http_url(url.trim()).is_err() {
                self.problem(
                    &path("url"),
                    "is not an http(s) URL (value not shown: it is a secret)",
                );
            }
            UrlSource::Inline(Secret::new(url.trim()))
        } else if let Some(file) = &n.url_file {
            if let Some(content) = self.secret_file(&path("url_file"), file) {
                if http_url(content.trim()).is_err() {
                    self.problem(
                        &path("url_file"),
                        format!("the content of {file} is not an http(s) URL"),
                    );
                }
            }
            UrlSource::File(PathBuf::from(file))
        } else {
            let name = n.url_env.clone().unwrap_or_default();
            if let Some(value) = self.secret_env(&path("url_env"), &name) {
                if http_url(&value).is_err() {
                    self.problem(
                        &path("url_env"),
                        format!("the value of {name} is not an http(s) URL"),
                    );
                }
            }
            UrlSource::Env(name)
        }
    }

    fn secret_source(&mut self, prefix: &str, n: &RawNotify) -> SecretSource {
        let path = |key: &str| join(prefix, key);
        if let Some(secret) = &n.secret {
            if secret.trim().is_empty() {
                self.problem(&path("secret"), "must not be empty");
            }
            SecretSource::Inline(Secret::new(secret.clone()))
        } else if let Some(file) = &n.secret_file {
            if let Some(content) = self.secret_file(&path("secret_file"), file) {
                if content.trim().is_empty() {
                    self.problem(&path("secret_file"), format!("{file} is empty"));
                }
            }
            SecretSource::File(PathBuf::from(file))
        } else {
            let name = n.secret_env.clone().unwrap_or_default();
            self.secret_env(&path("secret_env"), &name);
            SecretSource::Env(name)
        }
    }
}

/// humantime, minus its leniency about a space between number and unit:
/// `"15 sec"` reads like a typo for `"15s"` and is refused. Components may
/// be separated (`"1h 30m"`, as the effective config prints them).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    static SHAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let shape = SHAPE.get_or_init(|| {
        regex::Regex::new(r"^\s*[0-9]+(\.[0-9]+)?[a-zµ]+(\s*[0-9]+(\.[0-9]+)?[a-zµ]+)*\s*$")
            .expect("static regex")
    });
    if !shape.is_match(text) {
        return None;
    }
    humantime::parse_duration(text.trim()).ok()
}

fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is {:?}, not http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(url)
}

fn fallback_url() -> url::Url {
    // Only stands in while problems are collected; never returned to callers.
    url::Url::parse("http://invalid.invalid/").expect("static URL")
}

/// A cheap shape check of PromQL: brackets balance and strings close.
/// It catches the usual template typos without a full parser.
fn promql_shape(query: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && quote != '`' {
                        chars.next();
                    } else if d == quote {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("a string opened with {quote} is not closed"));
                }
            }
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return Err(format!("{c:?} has no matching {open:?}"));
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some(open) => Err(format!("{open:?} is not closed")),
        None => Ok(()),
    }
}

fn is_dns_label(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex")
    });
    s.len() <= 63 && re.is_match(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_env_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex"))
        .is_match(s)
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_rule_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("static regex"))
        .is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_stuck_to_the_number() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("15 sec"), None);
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("15x"), None);
    }

    #[test]
    fn promql_shape_finds_unbalanced_brackets_and_strings() {
        assert!(promql_shape(r#"sum(rate(x{a="b)"}[2m]))"#).is_ok());
        assert_eq!(
            promql_shape("sum(rate(x[2m])").unwrap_err(),
            "'(' is not closed"
        );
        assert_eq!(
            promql_shape("x{a=\"b}").unwrap_err(),
            "a string opened with \" is not closed"
        );
        assert_eq!(promql_shape("x]").unwrap_err(), "']' has no matching '['");
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("production"));
        assert!(!is_dns_label("Production"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("kailash-kaizen.v2"));
        assert!(!is_dns_subdomain("a..b"));
    }
}
