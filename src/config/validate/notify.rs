//! `[[notify]]` sinks: kind, where the URL and the signing secret come
//! from, which events and targets, timeouts and links. The URL is a secret
//! (a Slack webhook URL is its own credential): no problem quotes it.

use std::path::PathBuf;
use std::time::Duration;

use super::{http_url, is_dns_label, is_dns_subdomain, join, Checker, LINK_PLACEHOLDERS};
use crate::config::raw::RawNotify;
use crate::config::schema::{EventKind, NotifySink, Secret, SecretSource, SinkKind, UrlSource};

/// How long one attempt may take when the sink does not say.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a message may keep being retried when the sink does not say.
const NOTIFY_DEADLINE: Duration = Duration::from_secs(120);

impl Checker<'_> {
    pub(super) fn notify(&mut self, prefix: &str, index: usize, n: &RawNotify) -> NotifySink {
        let path = |key: &str| join(prefix, key);
        let kind = self.sink_kind(&path("kind"), n.kind.as_deref());
        let name = n
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", n.kind.as_deref().unwrap_or("sink")));
        let url = self.one_url(prefix, n);
        let secret = self.one_secret(prefix, n, kind);
        let events = self.event_kinds(prefix, n);
        let targets = self.sink_targets(prefix, n);
        let (timeout, deadline) = self.timeout_and_deadline(prefix, n);
        let dashboard_url = n
            .dashboard_url
            .as_ref()
            .map(|u| self.url_template(&path("dashboard_url"), u, LINK_PLACEHOLDERS));
        let runbook_url = n
            .runbook_url
            .as_ref()
            .map(|u| self.url_template(&path("runbook_url"), u, LINK_PLACEHOLDERS));
        let ca_file = n
            .ca_file
            .as_ref()
            .map(|f| self.ca_file(&path("ca_file"), f));
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
            ca_file,
        }
    }

    /// A missing or unknown kind is reported; webhook stands in.
    fn sink_kind(&mut self, path: &str, kind: Option<&str>) -> SinkKind {
        match kind {
            None => {
                self.problem(path, "missing; use slack, teams or webhook");
                SinkKind::Webhook
            }
            Some(k) => SinkKind::parse(k).unwrap_or_else(|| {
                self.problem(
                    path,
                    format!("{k:?} is not a sink kind; use slack, teams or webhook"),
                );
                SinkKind::Webhook
            }),
        }
    }

    /// Where the URL comes from: exactly one of url, url_file, url_env.
    fn one_url(&mut self, prefix: &str, n: &RawNotify) -> UrlSource {
        let given = given([
            ("url", n.url.is_some()),
            ("url_file", n.url_file.is_some()),
            ("url_env", n.url_env.is_some()),
        ]);
        match given.len() {
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
        }
    }

    /// The signing secret: at most one of secret, secret_file, secret_env,
    /// and only on a webhook sink.
    fn one_secret(&mut self, prefix: &str, n: &RawNotify, kind: SinkKind) -> Option<SecretSource> {
        let given = given([
            ("secret", n.secret.is_some()),
            ("secret_file", n.secret_file.is_some()),
            ("secret_env", n.secret_env.is_some()),
        ]);
        match given.as_slice() {
            [] => None,
            [key] if kind != SinkKind::Webhook => {
                self.problem(
                    &join(prefix, key),
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
                        given.join(" and ")
                    ),
                );
                None
            }
        }
    }

    /// The event kinds the sink is told about; unknown ones are reported
    /// and left out.
    fn event_kinds(&mut self, prefix: &str, n: &RawNotify) -> Vec<EventKind> {
        let mut events = Vec::new();
        for (i, e) in n.events.iter().flatten().enumerate() {
            match EventKind::parse(e) {
                Some(kind) => events.push(kind),
                None => {
                    let known: Vec<_> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
                    self.problem(
                        &join(prefix, &format!("events[{i}]")),
                        format!("{e:?} is not an event kind; known: {}", known.join(", ")),
                    );
                }
            }
        }
        events
    }

    /// The targets the sink is told about, each `namespace/name`.
    fn sink_targets(&mut self, prefix: &str, n: &RawNotify) -> Vec<String> {
        let mut targets = Vec::new();
        for (i, t) in n.targets.iter().flatten().enumerate() {
            let ok = t.split_once('/').is_some_and(|(ns, name)| {
                is_dns_label(ns) && (name == "*" || is_dns_subdomain(name))
            });
            if !ok {
                self.problem(
                    &join(prefix, &format!("targets[{i}]")),
                    format!(r#"{t:?} is not "namespace/name" (name may be "*")"#),
                );
            }
            targets.push(t.clone());
        }
        targets
    }

    /// One attempt's timeout and the total deadline, which is at least it.
    fn timeout_and_deadline(&mut self, prefix: &str, n: &RawNotify) -> (Duration, Duration) {
        let path = |key: &str| join(prefix, key);
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
        (timeout, deadline)
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

/// The keys of a one-of group that are set, in the order given.
fn given(keys: [(&'static str, bool); 3]) -> Vec<&'static str> {
    keys.into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
}
