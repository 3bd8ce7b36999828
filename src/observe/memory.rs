//! What the watchdog must not forget about a Deployment's current revision
//! when its process goes (a restart, a new leader): kept on the Deployment
//! itself, in the annotation `rollback-watchdog.io/memory`, one small JSON
//! record for one revision, so it is bounded whatever happens.
//!
//! It holds:
//! - when the revision's window opened and when its rollout completed (a
//!   reused ReplicaSet carries neither, so a restart would otherwise
//!   estimate them and could reopen a closed window);
//! - that the revision was Bad, and what was done about it (rolled back,
//!   refused, escalated): a new process never adopts such a revision as
//!   known-good and never decides about it a second time;
//! - which notices went out for it (degraded, unverified window, the
//!   blind episode under way), so none is sent twice.
//!
//! The leader writes it, always before the act or notice it records (a
//! crash in between loses a notice rather than sending it twice; the
//! delivery ledger is the second guard). Every replica reads it on every
//! tick and merges it into what it remembers itself.

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};

use crate::k8s::keys::MEMORY;
use crate::k8s::{annotate_deployment, PATCH_TIMEOUT};

/// What the watchdog did about a Bad verdict of the revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Acted {
    /// The rollback pipeline was started, whatever it then did (rolled
    /// back, or refused: cooldown, GitOps, irreversible, dry run).
    RolledBack,
    /// A person was asked to act.
    Escalated,
}

/// What one revision's verdicts have shown, for known-good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evidence {
    /// No healthy evaluation yet, and no bad one in the window.
    #[default]
    Unproven,
    /// At least one Healthy tick, and no Bad or Degraded one in the window.
    Healthy,
    /// Bad or Degraded during the window: never known-good, whatever follows.
    Failed,
}

impl Evidence {
    fn is_unproven(&self) -> bool {
        *self == Evidence::Unproven
    }

    /// The stronger of two accounts: Failed over Healthy over Unproven.
    pub fn merge(self, other: Evidence) -> Evidence {
        match (self, other) {
            (Evidence::Failed, _) | (_, Evidence::Failed) => Evidence::Failed,
            (Evidence::Healthy, _) | (_, Evidence::Healthy) => Evidence::Healthy,
            _ => Evidence::Unproven,
        }
    }
}

/// The record: one revision, a handful of fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    pub revision: i64,
    pub pod_template_hash: String,
    /// When its rollout started (its window opened).
    pub started: Timestamp,
    /// When its rollout completed, once it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Evidence::is_unproven")]
    pub evidence: Evidence,
    /// When a verdict that may roll back was first reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acted: Option<Acted>,
    /// The degraded-outside-window notice went out.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub degraded_reported: bool,
    /// The window closed unverified, and that was said.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified_reported: bool,
    /// The start of the blind episode under way, whose notice went out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blind_since: Option<Timestamp>,
}

impl Memory {
    /// Whether the record is about the revision `number` with `hash`.
    pub fn is_about(&self, number: i64, hash: &str) -> bool {
        self.revision == number && self.pod_template_hash == hash
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("annotation {MEMORY} on {namespace}/{name} is not the watchdog's memory record ({source}); it is ignored and rewritten at the next change")]
    Unreadable {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "cannot write the watchdog's memory (annotation {MEMORY}) on {namespace}/{name}: {source}"
    )]
    Patch {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot write the watchdog's memory (annotation {MEMORY}) on {namespace}/{name}: the API server did not answer within {PATCH_TIMEOUT:?}")]
    PatchTimeout { namespace: String, name: String },
    #[error("cannot encode the watchdog's memory record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The record on `d`, if it has one.
pub fn read(d: &Deployment) -> Result<Option<Memory>, MemoryError> {
    let Some(text) = d.annotations().get(MEMORY) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|source| MemoryError::Unreadable {
            namespace: d.namespace().unwrap_or_default(),
            name: d.name_any(),
            source,
        })
}

/// Writes `memory` on the Deployment (a merge patch of the one
/// annotation: the spec, and so the generation, are untouched).
pub async fn write(
    client: &Client,
    namespace: &str,
    name: &str,
    memory: &Memory,
) -> Result<(), MemoryError> {
    let text = serde_json::to_string(memory).map_err(MemoryError::Encode)?;
    annotate_deployment(client, namespace, name, MEMORY, &text)
        .await
        .map_err(|e| match e {
            Some(source) => MemoryError::Patch {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                source,
            },
            None => MemoryError::PatchTimeout {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("a test time")
    }

    #[test]
    fn a_fresh_record_is_short_and_reads_back() {
        let m = Memory {
            revision: 2,
            pod_template_hash: "abc".into(),
            started: ts("2026-12-03T10:00:00Z"),
            completed: None,
            evidence: Evidence::Unproven,
            bad_at: None,
            acted: None,
            degraded_reported: false,
            unverified_reported: false,
            blind_since: None,
        };
        let text = serde_json::to_string(&m).expect("encodes");
        assert_eq!(
            text,
            r#"{"revision":2,"podTemplateHash":"abc","started":"2026-12-03T10:00:00Z"}"#
        );
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "p", "annotations": {MEMORY: text}}
        }))
        .expect("a Deployment");
        assert_eq!(read(&d).expect("readable"), Some(m));
    }

    #[test]
    fn a_refused_bad_revision_reads_back_with_what_was_done() {
        let text = r#"{"revision":2,"podTemplateHash":"abc","started":"2026-12-03T10:00:00Z","completed":"2026-12-03T10:01:00Z","evidence":"failed","badAt":"2026-12-03T10:02:00Z","acted":"rolled-back","degradedReported":true,"blindSince":"2026-12-03T10:03:00Z"}"#;
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "p", "annotations": {MEMORY: text}}
        }))
        .expect("a Deployment");
        let m = read(&d).expect("readable").expect("a record");
        assert_eq!(m.evidence, Evidence::Failed);
        assert_eq!(m.acted, Some(Acted::RolledBack));
        assert!(m.degraded_reported && !m.unverified_reported);
        assert!(m.is_about(2, "abc") && !m.is_about(2, "def") && !m.is_about(3, "abc"));
    }

    #[test]
    fn a_mangled_record_is_named_not_trusted() {
        let d: Deployment = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "p", "annotations": {MEMORY: "{\"revision\":"}}
        }))
        .expect("a Deployment");
        let e = read(&d).expect_err("unreadable").to_string();
        assert!(
            e.starts_with("annotation rollback-watchdog.io/memory on p/web is not the watchdog's memory record"),
            "{e}"
        );
    }
}
