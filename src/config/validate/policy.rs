//! A target's policy (`[defaults]` and each `[[targets]]` entry, paths
//! relative to its table): its identity, windows and budgets, and each
//! signal's settings and rules.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Checker, URL_PLACEHOLDERS};
use crate::config::raw::{RawPolicy, RawRule};
use crate::config::schema::{
    CompareOp, ErrorRatePolicy, HealthPolicy, LatencyPolicy, PerPodProbe, PodsPolicy, Policy, Rule,
    Selects,
};
use crate::k8s::selector::Selector;

impl Checker<'_> {
    /// Returns `Some` when the identity is usable, so a broken target is not
    /// kept (the whole config is rejected anyway).
    pub(super) fn target_identity(&mut self, t: &RawPolicy) -> Option<Selects> {
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
    pub(super) fn policy(&mut self, p: &RawPolicy, interval: Duration) -> Policy {
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
        let grouped = self.bool("error_rate.grouped", e.grouped);
        ErrorRatePolicy {
            enabled: self.bool("error_rate.enabled", e.enabled),
            errors_query: self.maybe_grouped("error_rate.errors_query", &e.errors_query, grouped),
            total_query: self.maybe_grouped("error_rate.total_query", &e.total_query, grouped),
            grouped,
            max,
            max_ratio_to_baseline: self
                .ratio_above_one("error_rate.max_ratio_to_baseline", e.max_ratio_to_baseline),
            relative_floor,
            min_request_rate,
            window: self.positive_duration("error_rate.window", &e.window),
            baseline_lookback: self
                .positive_duration("error_rate.baseline_lookback", &e.baseline_lookback),
            misconfigured_after_requests: *self
                .required(
                    "error_rate.misconfigured_after_requests",
                    &e.misconfigured_after_requests,
                )
                .unwrap_or(&0),
        }
    }

    fn latency(&mut self, p: &RawPolicy) -> LatencyPolicy {
        let l = &p.latency;
        let grouped = self.bool("latency.grouped", l.grouped);
        let quantile = *self
            .required("latency.quantile", &l.quantile)
            .unwrap_or(&0.95);
        if !(0.0..=1.0).contains(&quantile) {
            self.problem(
                "latency.quantile",
                format!("must be between 0 and 1 (0.95 is p95), got {quantile}"),
            );
        }
        LatencyPolicy {
            enabled: self.bool("latency.enabled", l.enabled),
            query: self.maybe_grouped("latency.query", &l.query, grouped),
            grouped,
            quantile,
            max_ratio_to_baseline: self
                .ratio_above_one("latency.max_ratio_to_baseline", l.max_ratio_to_baseline),
            relative_floor: self.duration("latency.relative_floor", &l.relative_floor),
            max: self.positive_duration("latency.max", &l.max),
            window: self.positive_duration("latency.window", &l.window),
            baseline_lookback: self
                .positive_duration("latency.baseline_lookback", &l.baseline_lookback),
            min_requests: *self
                .required("latency.min_requests", &l.min_requests)
                .unwrap_or(&0),
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
        let ca_file = h
            .ca_file
            .as_ref()
            .map(|f| self.ca_file("health.ca_file", f));
        HealthPolicy {
            enabled: self.bool("health.enabled", h.enabled),
            urls,
            timeout: self.positive_duration("health.timeout", &h.timeout),
            expect_status,
            body_regex,
            per_pod,
            version_url,
            ca_file,
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
            ready_timeout: self.positive_duration("pods.ready_timeout", &pods.ready_timeout),
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
}

fn is_rule_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^[a-z0-9][a-z0-9_-]*$").expect("static regex"))
        .is_match(s)
}
