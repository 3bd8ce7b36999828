//! What a rollback is asked to do, and what the Deployment records of the
//! watchdog's own rollbacks: the one in flight and the times of past ones.
//! The pipeline writes those records; the plan's rules (in flight,
//! cooldown, budget) are judged on them. Reading never fails the caller.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde::{Deserialize, Serialize};

use crate::config::Policy;
use crate::k8s::keys::{IN_FLIGHT, RESTORED, ROLLBACKS};
use crate::report::incident::{RevisionRef, Trigger};
use crate::signals::SignalResult;

/// What to roll back to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The last known-good revision, else the highest older revision that
    /// is not blocklisted.
    Previous,
    /// A revision number, as `kubectl rollout history` lists it.
    Revision(i64),
    /// `kubectl set image` semantics: this tag on the named container, or on
    /// the only one.
    ImageTag {
        container: Option<String>,
        tag: String,
    },
    /// A pod template from a backup (`restore`).
    Template {
        backup: String,
        template: Box<PodTemplateSpec>,
    },
}

/// One request to roll a Deployment back.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub namespace: String,
    pub name: String,
    pub to: Target,
    pub trigger: Trigger,
    /// Why, in one sentence; derived from the failing signals when None.
    pub reason: Option<String>,
    /// The failing signals behind the decision.
    pub signals: Vec<SignalResult>,
    /// Validate and report the patch only (ORed with the policy's and the
    /// global `dry_run`).
    pub dry_run: bool,
    pub rollout_started_at: Option<jiff::Timestamp>,
    pub detected_at: Option<jiff::Timestamp>,
    /// The target's effective policy (the run loop has it); None: resolved
    /// from the config like the run loop would.
    pub policy: Option<Policy>,
    /// The bad revision re-deploys a blocklisted template (flagged in the
    /// notifications).
    pub blocklisted_redeploy: bool,
    /// The `pod-template-hash` the verdict was about. When the Deployment's
    /// current revision is another one by the time Validate reads it (a
    /// person deployed or undid meanwhile), the rollback is refused: a
    /// verdict on one revision never rolls back another.
    pub judged_hash: Option<String>,
    /// For a verdict: how many rollbacks of this revision in a row before
    /// this one stopped because Validate could not read the cluster. The
    /// failure that makes it [`crate::decide::refusal::READ_FAILURES_TOLD_AFTER`]
    /// is told to on-call, once; the others only log and retry.
    pub read_failures_before: u32,
}

impl RollbackRequest {
    /// A request with nothing but the essentials; fill in the rest.
    pub fn new(namespace: &str, name: &str, to: Target, trigger: Trigger) -> Self {
        RollbackRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            to,
            trigger,
            reason: None,
            signals: Vec::new(),
            dry_run: false,
            rollout_started_at: None,
            detected_at: None,
            policy: None,
            blocklisted_redeploy: false,
            judged_hash: None,
            read_failures_before: 0,
        }
    }

    pub fn target(&self) -> String {
        crate::k8s::DeploymentKey::new(&self.namespace, &self.name).to_string()
    }
}

/// The in-flight record kept in [`IN_FLIGHT`] from the patch until the
/// pipeline finishes: enough to resume at Wait/Verify after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub id: crate::report::incident::IncidentId,
    /// The next step: always `wait` (Wait then Verify).
    pub step: String,
    pub trigger: Trigger,
    pub reason: String,
    pub from: RevisionRef,
    pub to: RevisionRef,
    /// The backup ConfigMap, `namespace/name`.
    pub backup: Option<String>,
    /// When the pipeline started, RFC 3339.
    pub started: String,
    /// The Deployment's generation our patch produced: a higher one means
    /// someone changed it after us.
    pub generation: i64,
    #[serde(default)]
    pub rollout_started_at: Option<String>,
    #[serde(default)]
    pub detected_at: Option<String>,
    /// The failing signals as sentences.
    #[serde(default)]
    pub measured: Vec<String>,
    /// The rolled-back template had been rolled back before: the notices
    /// of this rollback say it was a re-deploy of a blocklisted one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub blocklisted_redeploy: bool,
}

/// The in-flight record on a Deployment: None without one (or with an
/// empty annotation), the parse error when the annotation is not a record.
pub fn read_in_flight(d: &Deployment) -> Result<Option<InFlight>, serde_json::Error> {
    match annotation(d, IN_FLIGHT) {
        None => Ok(None),
        Some(t) if t.trim().is_empty() => Ok(None),
        Some(t) => serde_json::from_str(t).map(Some),
    }
}

/// Whether a rollback may be in flight on `d`: a record that reads, or one
/// that does not (malformed, or an id of another shape) — never taken for
/// "nothing in flight". An empty annotation is no record.
pub fn may_be_in_flight(d: &Deployment) -> bool {
    !matches!(read_in_flight(d), Ok(None))
}

/// Times of the watchdog's rollbacks recorded on a Deployment.
pub fn rollbacks_of(d: &Deployment) -> Vec<jiff::Timestamp> {
    annotation(d, ROLLBACKS)
        .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// What the watchdog's latest rollback of a Deployment restored: the
/// template it wrote, by the revision and hash it came from and its images.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    pub revision: i64,
    pub pod_template_hash: String,
    pub images: Vec<String>,
}

impl Restored {
    /// Whether a revision (its hash and images) is the template restored:
    /// the same ReplicaSet taken over, or one made again from the same
    /// template (the old one was pruned), or the same images when the hash
    /// of a written template was never known (`--to-image`, `restore`).
    pub fn is(&self, pod_template_hash: &str, images: &[String]) -> bool {
        (!self.pod_template_hash.is_empty() && self.pod_template_hash == pod_template_hash)
            || self.images == images
    }
}

/// The [`RESTORED`] record on a Deployment; None without one, or when it
/// does not read (the decision then goes by the rollback times alone).
pub fn restored_of(d: &Deployment) -> Option<Restored> {
    annotation(d, RESTORED).and_then(|t| serde_json::from_str(t).ok())
}

pub(crate) fn annotation<'a>(d: &'a Deployment, key: &str) -> Option<&'a String> {
    d.metadata.annotations.as_ref().and_then(|a| a.get(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_record(value: Option<&str>) -> Deployment {
        let mut d = Deployment::default();
        if let Some(v) = value {
            d.metadata.annotations = Some([(IN_FLIGHT.to_string(), v.to_string())].into());
        }
        d
    }

    #[test]
    fn an_unreadable_in_flight_record_still_counts_as_a_rollback_in_flight() {
        let readable = r#"{"id":"production/web/r2/1","step":"wait","trigger":{"by":"verdict"},"reason":"x","from":{"revision":2,"pod_template_hash":"a","images":[]},"to":{"revision":1,"pod_template_hash":"b","images":[]},"backup":null,"started":"2026-01-01T00:00:00Z","generation":3}"#;
        assert!(may_be_in_flight(&with_record(Some(readable))));
        assert!(read_in_flight(&with_record(Some(readable))).is_ok());
        // Malformed JSON, and a record whose id is not an incident id.
        assert!(may_be_in_flight(&with_record(Some("{not json"))));
        let foreign = readable.replace("production/web/r2/1", "rollback-42");
        assert!(read_in_flight(&with_record(Some(&foreign))).is_err());
        assert!(may_be_in_flight(&with_record(Some(&foreign))));
        // No record, or an empty one.
        assert!(!may_be_in_flight(&with_record(None)));
        assert!(!may_be_in_flight(&with_record(Some("  "))));
    }
}
