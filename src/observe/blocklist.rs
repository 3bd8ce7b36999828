//! The blocklist: revisions the watchdog (or a person through it) rolled
//! back, kept on the Deployment as the annotation [`BLOCKLIST`] so it
//! survives restarts and is visible with `kubectl get -o yaml`. The pipeline
//! never picks a blocklisted template as a rollback target, and the run loop
//! flags (and judges with `failure_threshold = 1`) a re-deploy of one.
//! Reading it must never fail the caller: a malformed annotation reads as
//! an empty list and a warning.
//!
//! Format, a JSON list, oldest first:
//! `[{"podTemplateHash":"5d8f7c","images":["web:v2"],"revision":2,"reason":"error ratio 30.2 % > max 5.0 %","at":"2026-11-27T10:15:00Z"}]`

use crate::k8s::keys::BLOCKLIST;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;
use serde::{Deserialize, Serialize};

/// At most this many entries are kept (the oldest go first), so the
/// annotation stays far below the 256 kB limit of all annotations.
pub const MAX_ENTRIES: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum BlocklistError {
    #[error("annotation {BLOCKLIST} on {target} is not a blocklist ({source}); it is read as empty until the next rollback rewrites it")]
    Malformed {
        target: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One rolled-back revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    pub pod_template_hash: String,
    #[serde(default)]
    pub images: Vec<String>,
    /// The revision number it had when it was rolled back (a re-deploy
    /// gets a new number, the hash stays).
    #[serde(default)]
    pub revision: i64,
    #[serde(default)]
    pub reason: String,
    /// RFC 3339.
    #[serde(default)]
    pub at: String,
}

impl Entry {
    /// The same pod template: by `pod-template-hash` only. The images are
    /// kept for people; matching on them would also condemn a fix that only
    /// changed an env var or a config of the same image.
    pub fn matches(&self, hash: &str, _images: &[String]) -> bool {
        !hash.is_empty() && self.pod_template_hash == hash
    }
}

/// The blocklist on a Deployment; an error for a malformed annotation.
pub fn read(d: &Deployment) -> Result<Vec<Entry>, BlocklistError> {
    match d.annotations().get(BLOCKLIST) {
        None => Ok(Vec::new()),
        Some(text) if text.trim().is_empty() => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text).map_err(|source| BlocklistError::Malformed {
            target: crate::k8s::DeploymentKey::of(d).to_string(),
            source,
        }),
    }
}

/// The blocklist on a Deployment, empty (with a logged warning) when the
/// annotation is malformed.
pub fn entries(d: &Deployment) -> Vec<Entry> {
    read(d).unwrap_or_else(|e| {
        tracing::warn!("{e}");
        Vec::new()
    })
}

/// The entry that blocks a template with this hash or these images, if
/// any. For the run loop: a new revision for which this is `Some` is a
/// re-deploy of a rolled-back release.
pub fn is_blocklisted(d: &Deployment, hash: &str, images: &[String]) -> Option<Entry> {
    entries(d).into_iter().find(|e| e.matches(hash, images))
}

/// `list` with `entry` added (replacing an entry for the same hash) and
/// trimmed to [`MAX_ENTRIES`].
pub fn with(mut list: Vec<Entry>, entry: Entry) -> Vec<Entry> {
    list.retain(|e| e.pod_template_hash != entry.pod_template_hash);
    list.push(entry);
    let excess = list.len().saturating_sub(MAX_ENTRIES);
    list.drain(..excess);
    list
}

/// `list` without entries for this hash or these images (a person restored
/// that template on purpose).
pub fn without(mut list: Vec<Entry>, hash: &str, images: &[String]) -> Vec<Entry> {
    list.retain(|e| !e.matches(hash, images));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(hash: &str, image: &str) -> Entry {
        Entry {
            pod_template_hash: hash.into(),
            images: vec![image.into()],
            revision: 2,
            reason: "bad".into(),
            at: "2026-11-27T10:00:00Z".into(),
        }
    }

    fn deployment(annotation: &str) -> Deployment {
        let mut d = Deployment::default();
        d.metadata.annotations = Some([(BLOCKLIST.to_string(), annotation.to_string())].into());
        d
    }

    #[test]
    fn a_rolled_back_template_is_found_by_its_hash_not_by_its_images() {
        let list = serde_json::to_string(&vec![entry("abc", "web:v2")]).unwrap();
        let d = deployment(&list);
        assert!(is_blocklisted(&d, "abc", &[]).is_some());
        // The same images in another template (a config fix) is not the
        // release that was rolled back.
        assert!(is_blocklisted(&d, "zzz", &["web:v2".into()]).is_none());
        assert!(is_blocklisted(&d, "zzz", &["web:v3".into()]).is_none());
    }

    #[test]
    fn a_malformed_blocklist_reads_as_empty() {
        let d = deployment("not json");
        assert!(read(&d).is_err());
        assert!(is_blocklisted(&d, "abc", &[]).is_none());
    }

    #[test]
    fn the_list_keeps_one_entry_per_hash_and_the_newest() {
        let mut list = Vec::new();
        for i in 0..(MAX_ENTRIES + 5) {
            list = with(list, entry(&format!("h{i}"), "web"));
        }
        list = with(list, entry(&format!("h{}", MAX_ENTRIES + 4), "web"));
        assert_eq!(list.len(), MAX_ENTRIES);
        assert_eq!(list[0].pod_template_hash, "h5");
        assert!(without(list, "h6", &[])
            .iter()
            .all(|e| e.pod_template_hash != "h6"));
    }
}
