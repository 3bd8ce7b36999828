//! One decision the watchdog took, as on-call reads it: the runbook's
//! incident report (reason, measured values against thresholds, affected
//! and target versions, times, result). The pipeline writes it, the audit
//! log stores it, and every notification sink renders it. It holds facts
//! only: nothing in here decides or sends anything.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::config::EventKind;
use crate::k8s::DeploymentKey;
use crate::signals::SignalResult;

/// An incident's id, `<namespace>/<name>/r<revision>/<suffix>`: stable per
/// decision, so the sinks and the delivery record never send one twice,
/// even after a restart. A rollback's suffix is its start in Unix
/// milliseconds; a notice's is its kind, and for a blind episode
/// `<kind>/<episode start in Unix seconds>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct IncidentId {
    pub deployment: DeploymentKey,
    pub revision: i64,
    pub suffix: String,
}

impl IncidentId {
    /// A rollback of `revision` that started at `started`.
    pub fn rollback(deployment: DeploymentKey, revision: i64, started: jiff::Timestamp) -> Self {
        IncidentId {
            deployment,
            revision,
            suffix: started.as_millisecond().to_string(),
        }
    }

    /// A notice about `revision` that is not a rollback (blind, degraded,
    /// escalation); a blind one per episode.
    pub fn notice(
        deployment: DeploymentKey,
        revision: i64,
        kind: EventKind,
        episode: Option<jiff::Timestamp>,
    ) -> Self {
        let episode = episode
            .map(|t| format!("/{}", t.as_second()))
            .unwrap_or_default();
        IncidentId {
            deployment,
            revision,
            suffix: format!("{}{episode}", kind.as_str()),
        }
    }
}

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/r{}/{}", self.deployment, self.revision, self.suffix)
    }
}

impl std::str::FromStr for IncidentId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not an incident id (<namespace>/<name>/r<revision>/<suffix>)");
        let mut parts = s.splitn(4, '/');
        let (Some(ns), Some(name), Some(rev), Some(suffix)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let revision = rev
            .strip_prefix('r')
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        if ns.is_empty() || name.is_empty() || suffix.is_empty() {
            return Err(bad());
        }
        Ok(IncidentId {
            deployment: DeploymentKey::new(ns, name),
            revision,
            suffix: suffix.to_owned(),
        })
    }
}

impl From<IncidentId> for String {
    fn from(id: IncidentId) -> String {
        id.to_string()
    }
}

impl TryFrom<String> for IncidentId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// What started the decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum Trigger {
    /// The judge's Bad verdict.
    Verdict,
    /// `rollback-watchdog rollback ...` run by a person (`user` from `$USER`
    /// or the kube identity when known).
    Cli { user: String },
    /// The annotation `rollback-watchdog.io/rollback-to` on the Deployment.
    Annotation { value: String },
    /// `rollback-watchdog restore BACKUP`.
    Restore { backup: String },
    /// Not a rollback: a report (blind, degraded outside the window).
    Report,
}

/// A revision as notifications show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevisionRef {
    pub revision: i64,
    pub pod_template_hash: String,
    pub images: Vec<String>,
    /// Recorded as known-good (verified through a whole window).
    #[serde(default)]
    pub known_good: bool,
}

/// One decision, with everything needed to explain it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Incident {
    /// Stable per decision (an [`IncidentId`]; `notify-test/<unix-ms>`
    /// for a test): sinks and the delivery record use it so a restart
    /// never sends a decision twice.
    pub id: String,
    pub kind: EventKind,
    /// `[watchdog] cluster_name`.
    pub cluster: String,
    pub namespace: String,
    pub deployment: String,
    pub trigger: Trigger,
    /// One sentence: why.
    pub reason: String,
    /// The revision that was (or would be) rolled back.
    pub from: Option<RevisionRef>,
    /// The revision rolled back to.
    pub to: Option<RevisionRef>,
    /// The failing signals behind the decision (measured, threshold, baseline).
    pub signals: Vec<SignalResult>,
    /// When the revision started rolling out.
    pub rollout_started_at: Option<String>,
    /// When the verdict turned Bad (or the human asked).
    pub detected_at: Option<String>,
    /// When this decision was taken.
    pub at: String,
    /// When the pipeline finished (succeeded, failed, escalated).
    pub finished_at: Option<String>,
    /// The pipeline step that failed, for `rollback_failed` / `escalation`.
    pub failed_step: Option<String>,
    pub error: Option<String>,
    pub dry_run: bool,
    /// The backup ConfigMap (`namespace/name`), once written.
    pub backup: Option<String>,
    /// The new revision is a re-deploy of a blocklisted template.
    pub blocklisted_redeploy: bool,
    /// What the patch changes (dry run) or changed, in words for people
    /// ([`describe_changes`]): images, revision, change-cause, backup.
    pub changes: Vec<String>,
    /// The JSON Patch operations themselves, for machines: the generic
    /// webhook carries them; Slack and Teams never show them (the audit
    /// log and the backup keep them too).
    pub patch: Vec<serde_json::Value>,
    pub dashboard_url: Option<String>,
    pub runbook_url: Option<String>,
}

impl Incident {
    pub fn target(&self) -> String {
        crate::k8s::DeploymentKey::new(&self.namespace, &self.deployment).to_string()
    }

    /// Seconds from the rollout's start to detection, when both are known.
    pub fn time_to_detect(&self) -> Option<f64> {
        seconds_between(
            self.rollout_started_at.as_deref()?,
            self.detected_at.as_deref()?,
        )
    }

    /// Seconds from detection to the end of the pipeline.
    pub fn time_to_recover(&self) -> Option<f64> {
        seconds_between(self.detected_at.as_deref()?, self.finished_at.as_deref()?)
    }
}

/// A rollback's change in words, as on-call reads it at 3 a.m.: each
/// container image that changes (`image a:v2 → a:v1`), the revision
/// (`revision 2 → 1`), the change-cause the patch sets and the backup that
/// holds what was there before. Never the raw JSON Patch.
pub fn describe_changes(
    from: &RevisionRef,
    to: &RevisionRef,
    change_cause: Option<&str>,
    backup: Option<&str>,
) -> Vec<String> {
    let mut out = Vec::new();
    if from.images.len() == to.images.len() {
        for (old, new) in from.images.iter().zip(&to.images) {
            if old != new {
                out.push(format!("image {old} → {new}"));
            }
        }
    } else {
        out.push(format!(
            "images {} → {}",
            from.images.join(", "),
            to.images.join(", ")
        ));
    }
    if to.revision > 0 {
        out.push(format!("revision {} → {}", from.revision, to.revision));
    } else {
        out.push(format!(
            "revision {} → a new revision with the image above",
            from.revision
        ));
    }
    if let Some(cause) = change_cause.filter(|c| !c.is_empty()) {
        out.push(format!("change-cause: {cause}"));
    }
    if let Some(b) = backup {
        out.push(format!("backup of the previous state: ConfigMap {b}"));
    }
    out
}

fn seconds_between(from: &str, to: &str) -> Option<f64> {
    let from: jiff::Timestamp = from.parse().ok()?;
    let to: jiff::Timestamp = to.parse().ok()?;
    Some((to - from).total(jiff::Unit::Second).ok()?.max(0.0))
}

/// Where decisions go to be told (the notifiers, a test's collector).
/// `emit` must return at once: a sink that is down must never delay or fail
/// the pipeline, so implementations only enqueue.
pub trait IncidentSink: Send + Sync {
    fn emit(&self, incident: &Incident);

    /// Enqueues like [`IncidentSink::emit`], and returns a future that is
    /// ready once every sink that takes `incident` has settled it:
    /// delivered, found it delivered before, given up at its deadline, or
    /// dropped. The pipeline awaits it (bounded) before it clears the
    /// in-flight record, so that a crash before delivery leaves the record,
    /// and the restart tells on-call. A sink that only records is settled
    /// at once.
    fn emit_settled(&self, incident: &Incident) -> Settled {
        self.emit(incident);
        Box::pin(std::future::ready(()))
    }
}

/// What [`IncidentSink::emit_settled`] returns.
pub type Settled = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Collects incidents in memory: for tests and for `--dry-run` output.
#[derive(Debug, Default, Clone)]
pub struct Collected(std::sync::Arc<std::sync::Mutex<Vec<Incident>>>);

impl Collected {
    pub fn all(&self) -> Vec<Incident> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl IncidentSink for Collected {
    fn emit(&self, incident: &Incident) {
        if let Ok(mut v) = self.0.lock() {
            v.push(incident.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incident_id_is_namespace_name_revision_and_suffix_on_the_wire() {
        let started: jiff::Timestamp = "2026-11-27T10:00:00.123Z".parse().unwrap();
        let id = IncidentId::rollback(DeploymentKey::new("production", "web"), 3, started);
        assert_eq!(id.to_string(), "production/web/r3/1795773600123");
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            r#""production/web/r3/1795773600123""#
        );
        let back: IncidentId =
            serde_json::from_str(r#""production/web/r3/1795773600123""#).unwrap();
        assert_eq!(back, id);

        let blind = IncidentId::notice(
            DeploymentKey::new("production", "web"),
            3,
            EventKind::Blind,
            Some(started),
        );
        assert_eq!(blind.to_string(), "production/web/r3/blind/1795773600");
        assert_eq!(blind.to_string().parse::<IncidentId>().unwrap(), blind);
    }

    #[test]
    fn a_malformed_incident_id_is_refused_naming_its_shape() {
        for bad in [
            "",
            "web",
            "production/web",
            "production/web/3/1",
            "production/web/rx/1",
            "/web/r3/1",
            "production/web/r3/",
        ] {
            let err = bad.parse::<IncidentId>().unwrap_err();
            assert!(
                err.contains("<namespace>/<name>/r<revision>/<suffix>"),
                "{bad}: {err}"
            );
        }
    }
}
