//! Telling on-call: every decision the watchdog takes, rendered for Slack,
//! Microsoft Teams or a signed generic webhook, and delivered in the
//! background so that a sink that is down never delays or fails a rollback.
//! Rendering is pure (incident + sink settings → JSON); only
//! [`delivery`] does I/O. Nothing here may ever log a sink's URL or secret:
//! log lines name the sink.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::config::{EventKind, NotifySink, Placeholders, SinkKind};
use crate::report::incident::{Incident, Trigger};

pub mod cluster_ledger;
pub mod delivery;
pub mod slack;
pub mod teams;
pub mod webhook;

pub use cluster_ledger::ClusterLedger;
pub use delivery::{
    deliver, DeliveryLedger, DeliveryObserver, DeliveryOutcome, DeliveryReport, DeliveryResult,
    FileLedger, MemoryLedger, MetricsObserver, Notifier, NotifierBuilder, RetryPolicy,
};

/// Everything that can go wrong while notifying. None of the messages
/// contains a URL or a secret.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("sink {sink}: cannot read its URL: {source}")]
    Url {
        sink: String,
        #[source]
        source: crate::config::ConfigError,
    },
    #[error("sink {sink}: cannot read its signing secret: {source}")]
    Secret {
        sink: String,
        #[source]
        source: crate::config::ConfigError,
    },
    #[error("cannot encode the message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot build the HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("notify[{index}].ca_file {} (sink {sink}): {message}", path.display())]
    CaFile {
        index: usize,
        sink: String,
        path: PathBuf,
        message: String,
    },
    #[error("delivery ledger {path}: {source}")]
    Ledger {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("delivery ledger ConfigMap {namespace}/{name}: {what} (the watchdog needs get, create, update, list and watch on configmaps in {namespace}; see deploy/rbac.yaml)")]
    ClusterLedger {
        namespace: String,
        name: String,
        what: String,
    },
    #[error("--sink {index}: there are {count} [[notify]] sinks (0-based index)")]
    NoSuchSink { index: usize, count: usize },
    #[error("no [[notify]] sinks are configured")]
    NoSinks,
    #[error("the notifier must be started inside a Tokio runtime")]
    NoRuntime,
}

/// The id prefix of the incident `notify-test` sends: renderers mark such
/// messages as tests so nobody acts on them.
pub const TEST_ID_PREFIX: &str = "notify-test/";

/// Whether on-call still has a problem after this decision: the one thing a
/// reader must get from the message, also given to machines by the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Nothing happened (a test message).
    None,
    /// A rollback is running; a follow-up message will say how it ended.
    InProgress,
    /// Restored and verified.
    Resolved,
    /// Still broken: a person must act.
    Ongoing,
    /// The watchdog cannot tell (blind, or a human deploy replaced the rollback).
    Unknown,
}

/// The words every sink shares: a headline, whether on-call still has a
/// problem, and the links. Sinks only differ in layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Slack emoji code for the outcome (`:white_check_mark:`).
    pub emoji: &'static str,
    /// The same, as a Unicode emoji (Teams).
    pub unicode: &'static str,
    /// What happened, without the emoji: "Rolled back production/web to revision 4".
    pub headline: String,
    pub problem: Problem,
    /// One line on whether on-call still has a problem.
    pub status: String,
    pub links: Links,
    pub is_test: bool,
}

/// Dashboard and runbook links, from the sink's URL templates (filled with
/// the incident's placeholders) or else the incident's own.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Links {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dashboard: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
}

impl Links {
    pub fn for_sink(sink: &NotifySink, incident: &Incident) -> Links {
        let revision = incident
            .from
            .as_ref()
            .or(incident.to.as_ref())
            .map(|r| r.revision.to_string())
            .unwrap_or_default();
        let hash = incident
            .from
            .as_ref()
            .or(incident.to.as_ref())
            .map(|r| r.pod_template_hash.clone())
            .unwrap_or_default();
        let values = Placeholders {
            namespace: &incident.namespace,
            deployment: &incident.deployment,
            revision: &revision,
            pod_template_hash: &hash,
            cluster: &incident.cluster,
            ..Default::default()
        };
        Links {
            dashboard: sink
                .dashboard_url
                .as_ref()
                .map(|t| t.fill(&values))
                .or_else(|| incident.dashboard_url.clone()),
            runbook: sink
                .runbook_url
                .as_ref()
                .map(|t| t.fill(&values))
                .or_else(|| incident.runbook_url.clone()),
        }
    }
}

/// The message body a sink posts, as JSON.
pub fn payload(sink: &NotifySink, incident: &Incident) -> serde_json::Value {
    let summary = summarize(incident, Links::for_sink(sink, incident));
    match sink.kind {
        SinkKind::Slack => slack::payload(incident, &summary),
        SinkKind::Teams => teams::payload(incident, &summary),
        SinkKind::Webhook => webhook::payload(incident, &summary),
    }
}

fn revision_words(r: Option<&crate::report::incident::RevisionRef>) -> String {
    match r {
        Some(r) => format!("revision {}", r.revision),
        None => "an unknown revision".to_owned(),
    }
}

/// Headline and status line for an incident.
pub fn summarize(incident: &Incident, links: Links) -> Summary {
    let target = incident.target();
    let from = revision_words(incident.from.as_ref());
    let to = revision_words(incident.to.as_ref());
    let step = incident.failed_step.as_deref().unwrap_or("an unknown step");
    let is_test = incident.id.starts_with(TEST_ID_PREFIX);
    let (emoji, unicode, headline, problem, status) = match incident.kind {
        _ if is_test => (
            ":test_tube:",
            "🧪",
            "TEST — rollback-watchdog notify-test, no action taken".to_owned(),
            Problem::None,
            "Test message: nothing happened and nothing needs doing.".to_owned(),
        ),
        EventKind::RollbackStarted => (
            ":rotating_light:",
            "🚨",
            format!("Rolling back {target}: {from} → {to}"),
            Problem::InProgress,
            format!(
                "In progress: {from} is bad and being replaced by {to}; a follow-up message will say whether it worked."
            ),
        ),
        EventKind::RollbackSucceeded => (
            ":white_check_mark:",
            "✅",
            format!("Rolled back {target} to {to}"),
            Problem::Resolved,
            format!(
                "Service restored to {to}, verified. No action needed{}.",
                match &incident.from {
                    Some(f) => format!("; revision {} is blocklisted", f.revision),
                    None => String::new(),
                }
            ),
        ),
        EventKind::RollbackFailed => (
            ":x:",
            "❌",
            format!("Rollback of {target} failed at {step}"),
            Problem::Ongoing,
            format!("Still broken — the rollback failed at {step}; manual action needed."),
        ),
        EventKind::WouldRollBack => (
            ":eyes:",
            "👀",
            format!("Would roll back {target}: {from} → {to} (dry run)"),
            Problem::Ongoing,
            format!(
                "Still broken — dry run, nothing was changed. To roll back by hand: `rollback-watchdog rollback {target} {}`.",
                incident
                    .to
                    .as_ref()
                    .map(|r| r.revision.to_string())
                    .unwrap_or_else(|| "previous".to_owned())
            ),
        ),
        EventKind::Conflict => (
            ":no_entry:",
            "⛔",
            format!("Rollback of {target} stopped: someone deployed meanwhile"),
            Problem::Unknown,
            "Maybe still broken — a newer deploy landed during the rollback and was left in place; check that it fixed the problem.".to_owned(),
        ),
        EventKind::Escalation => (
            ":warning:",
            "⚠️",
            format!("{target}: escalation — manual action needed"),
            Problem::Ongoing,
            "Still broken — manual action needed. The watchdog has stopped acting on this Deployment (no rollback loops).".to_owned(),
        ),
        EventKind::Blind => (
            ":see_no_evil:",
            "🙈",
            format!("Watchdog is blind on {target}"),
            Problem::Unknown,
            "Unknown — the watchdog cannot judge this Deployment and will not roll it back while blind; check its metrics and probes.".to_owned(),
        ),
        EventKind::Misconfigured => (
            ":mag:",
            "🔍",
            format!("A query of the watchdog cannot match on {target}"),
            Problem::Unknown,
            "Unknown — a query returns no series while the revision serves traffic, so that signal cannot pass or fail; check its label and metric names.".to_owned(),
        ),
        EventKind::DegradedOutsideWindow => (
            ":chart_with_downwards_trend:",
            "📉",
            format!("{target} is degraded, with no recent deploy to roll back"),
            Problem::Ongoing,
            "Still broken — no recent deploy caused this, so nothing was rolled back; manual action needed.".to_owned(),
        ),
    };
    Summary {
        emoji,
        unicode,
        headline,
        problem,
        status,
        links,
        is_test,
    }
}

/// Who or what started the decision, for people.
pub fn trigger_words(trigger: &Trigger) -> String {
    match trigger {
        Trigger::Verdict => "the watchdog's verdict".to_owned(),
        Trigger::Cli { user } => format!("`rollback-watchdog rollback` by {user}"),
        Trigger::Annotation { value } => format!("annotation rollback-to={value}"),
        Trigger::Restore { backup } => format!("restore of backup {backup}"),
        Trigger::Report => "report".to_owned(),
    }
}

/// What detection-to-finish is called: only a rollback that succeeded
/// recovered anything.
pub(crate) fn recover_label(incident: &Incident) -> &'static str {
    if incident.kind == EventKind::RollbackSucceeded {
        "Time to recover"
    } else {
        "Detection to end"
    }
}

/// `42 s`, `4 min 12 s`, `1 h 3 min`.
pub fn human_seconds(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        let (m, s) = (s / 60, s % 60);
        if s == 0 {
            format!("{m} min")
        } else {
            format!("{m} min {s} s")
        }
    } else {
        let (h, m) = (s / 3600, (s % 3600) / 60);
        format!("{h} h {m} min")
    }
}

/// Cuts `text` to at most `max` characters, ending with "…" when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A revision with its hash and images, one line per image.
pub(crate) fn revision_lines(r: &crate::report::incident::RevisionRef, code: bool) -> String {
    let mut s = format!("revision {}", r.revision);
    if !r.pod_template_hash.is_empty() {
        if code {
            let _ = write!(s, " (`{}`)", r.pod_template_hash);
        } else {
            let _ = write!(s, " ({})", r.pod_template_hash);
        }
    }
    if r.known_good {
        s.push_str(", known-good");
    }
    for image in &r.images {
        if code {
            let _ = write!(s, "\n`{image}`");
        } else {
            let _ = write!(s, "\n{image}");
        }
    }
    s
}

/// The incident `notify-test` sends: clearly a test, about nothing real.
pub fn test_incident(cluster: &str, namespace: &str, now: jiff::Timestamp) -> Incident {
    Incident {
        id: format!("{TEST_ID_PREFIX}{}", now.as_millisecond()),
        kind: EventKind::RollbackSucceeded,
        cluster: cluster.to_owned(),
        namespace: namespace.to_owned(),
        deployment: "notify-test".to_owned(),
        trigger: Trigger::Report,
        reason: "TEST — rollback-watchdog notify-test, no action taken. If you can read this, notifications reach this channel.".to_owned(),
        from: None,
        to: None,
        signals: Vec::new(),
        rollout_started_at: None,
        detected_at: None,
        at: now.to_string(),
        finished_at: None,
        failed_step: None,
        error: None,
        dry_run: false,
        backup: None,
        blocklisted_redeploy: false,
        changes: Vec::new(),
        patch: Vec::new(),
        dashboard_url: None,
        runbook_url: None,
    }
}

/// One sink's result in `notify-test`.
#[derive(Debug, Clone)]
pub struct TestResult {
    pub sink: String,
    pub report: DeliveryReport,
}

impl std::fmt::Display for TestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.report.attempts;
        let attempts = if n == 1 {
            "1 attempt".to_owned()
        } else {
            format!("{n} attempts")
        };
        match &self.report.result {
            DeliveryResult::Delivered => write!(f, "{}: delivered ({attempts})", self.sink),
            DeliveryResult::GaveUp { reason } => {
                write!(f, "{}: gave up after {attempts}: {reason}", self.sink)
            }
            DeliveryResult::Dropped { reason } => write!(f, "{}: dropped: {reason}", self.sink),
            DeliveryResult::AlreadyDelivered => write!(f, "{}: already delivered", self.sink),
        }
    }
}

/// `notify-test`: sends the test incident through every sink (or only the
/// sink at `only`) directly, ignoring event filters and the delivery
/// ledger, and reports per sink. Sinks are tried concurrently.
pub async fn send_test(
    config: &crate::config::Config,
    only: Option<usize>,
    policy: &RetryPolicy,
) -> Result<Vec<TestResult>, NotifyError> {
    let sinks: Vec<&NotifySink> = match only {
        Some(index) => match config.notify.get(index) {
            Some(s) => vec![s],
            None => {
                return Err(NotifyError::NoSuchSink {
                    index,
                    count: config.notify.len(),
                })
            }
        },
        None => config.notify.iter().collect(),
    };
    if sinks.is_empty() {
        return Err(NotifyError::NoSinks);
    }
    let clients = sinks
        .iter()
        .map(|sink| {
            let index = config
                .notify
                .iter()
                .position(|s| std::ptr::eq(s, *sink))
                .unwrap_or_default();
            delivery::http_client_for(index, sink)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let incident = test_incident(
        &config.watchdog.cluster_name,
        &config.watchdog.namespace,
        jiff::Timestamp::now(),
    );
    let sends = sinks.into_iter().zip(clients).map(|(sink, client)| {
        let incident = &incident;
        async move {
            TestResult {
                sink: sink.name.clone(),
                report: deliver(&client, sink, incident, policy).await,
            }
        }
    });
    Ok(futures::future::join_all(sends).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_counts_characters_and_marks_the_cut() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 4).chars().count(), 4);
    }

    #[test]
    fn durations_read_like_a_person_says_them() {
        assert_eq!(human_seconds(42.4), "42 s");
        assert_eq!(human_seconds(252.0), "4 min 12 s");
        assert_eq!(human_seconds(120.0), "2 min");
        assert_eq!(human_seconds(3780.0), "1 h 3 min");
    }
}
