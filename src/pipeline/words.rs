//! How revisions, requests and measurements are put into words for the
//! audit trail, Events and notifications.

use super::*;

/// "revision 5 (v2)".
pub fn describe_ref(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("revision {} ({})", r.revision, tags(&r.images))
    } else {
        format!("a new revision ({})", r.images.join(", "))
    }
}

pub(super) fn describe_to(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("{} ({})", r.revision, tags(&r.images))
    } else {
        format!("image {}", r.images.join(", "))
    }
}

pub(super) fn tags(images: &[String]) -> String {
    images
        .iter()
        .map(|i| crate::signals::health::image_tag(i).unwrap_or(i).to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn default_reason(request: &RollbackRequest) -> String {
    let m = measured(&request.signals);
    if !m.is_empty() {
        return m.join("; ");
    }
    match &request.trigger {
        Trigger::Cli { user } => format!(
            "requested by {} on the command line",
            if user.is_empty() { "a person" } else { user }
        ),
        Trigger::Annotation { value } => {
            format!("requested with the annotation rollback-to: {value}")
        }
        Trigger::Restore { backup } => format!("restore of backup {backup} requested"),
        Trigger::Verdict => "the revision was judged Bad".to_owned(),
        Trigger::Report => "report".to_owned(),
    }
}

pub(super) fn measured(signals: &[SignalResult]) -> Vec<String> {
    signals
        .iter()
        .filter(|s| s.outcome.is_fail())
        .map(SignalResult::describe)
        .collect()
}

pub(super) fn changes(ops: &[Value]) -> Vec<String> {
    ops.iter().map(|o| o.to_string()).collect()
}

pub(super) fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub(super) fn revision_ref(r: &Revision, known_good: bool) -> RevisionRef {
    RevisionRef {
        revision: r.number,
        pod_template_hash: r.pod_template_hash.clone(),
        images: r.images.clone(),
        known_good,
    }
}
