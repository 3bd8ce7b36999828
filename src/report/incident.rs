//! One decision the watchdog took, as on-call reads it: the runbook's
//! incident report (reason, measured values against thresholds, affected
//! and target versions, times, result). The pipeline writes it, the audit
//! log stores it, and every notification sink renders it. It holds facts
//! only: nothing in here decides or sends anything.

use serde::{Deserialize, Serialize};

use crate::config::EventKind;
use crate::signals::SignalResult;

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
    /// Stable per decision (`<ns>/<name>/r<revision>/<unix-ms>`): sinks and
    /// the delivery record use it so a restart never sends a decision twice.
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
    /// What the patch changes (dry run) or changed, for people.
    pub changes: Vec<String>,
    pub dashboard_url: Option<String>,
    pub runbook_url: Option<String>,
}

impl Incident {
    pub fn target(&self) -> String {
        format!("{}/{}", self.namespace, self.deployment)
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
}

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
