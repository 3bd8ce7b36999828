//! The process-wide tables: `[watchdog]`, `[prometheus]`,
//! `[leader_election]` and `[admin]`, each checked with its full key path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{http_url, is_dns_label, parse_duration, Checker};
use crate::config::credentials;
use crate::config::raw::RawConfig;
use crate::config::schema::{
    placeholder_regex, AdminSettings, LeaderElection, PrometheusSettings, Secret, WatchdogSettings,
};

impl Checker<'_> {
    pub(super) fn watchdog(&mut self, raw: &RawConfig) -> WatchdogSettings {
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

    pub(super) fn prometheus(&mut self, raw: &RawConfig) -> PrometheusSettings {
        let p = &raw.prometheus;
        let text = self.string("prometheus.url", &p.url);
        // Messages show the URL without its userinfo, never the credentials.
        let shown = credentials::shown(&text);
        let mut url = match http_url(&text) {
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
                        format!("{shown:?} is not an http(s) URL: {why}"),
                    );
                }
                fallback_url()
            }
        };
        let url_credentials = credentials::take_userinfo(&mut url);
        if url_credentials.is_some() {
            let explicit = p
                .headers
                .keys()
                .any(|name| name.eq_ignore_ascii_case("authorization"));
            if explicit || p.bearer_token_file.is_some() {
                let other = if explicit {
                    "prometheus.headers.Authorization"
                } else {
                    "prometheus.bearer_token_file"
                };
                self.problem(
                    "prometheus.url",
                    format!(
                        "carries credentials (user:password@) and {other} is set too; \
                         keep one of them (both would be sent as the Authorization header)"
                    ),
                );
            }
        }
        let bearer_token_file = p.bearer_token_file.as_ref().map(|f| {
            self.secret_file("prometheus.bearer_token_file", f);
            PathBuf::from(f)
        });
        let ca_file = p
            .ca_file
            .as_ref()
            .map(|f| self.ca_file("prometheus.ca_file", f));
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
            url_credentials,
            timeout: self.positive_duration("prometheus.timeout", &p.timeout),
            bearer_token_file,
            ca_file,
            headers,
        }
    }

    pub(super) fn leader_election(&mut self, raw: &RawConfig) -> LeaderElection {
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

    pub(super) fn admin(&mut self, raw: &RawConfig) -> AdminSettings {
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
}

fn fallback_url() -> url::Url {
    // Only stands in while problems are collected; never returned to callers.
    url::Url::parse("http://invalid.invalid/").expect("static URL")
}

fn is_header_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
