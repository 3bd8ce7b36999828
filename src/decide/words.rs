//! How revisions and requests are put into words: shared by the plan's
//! refusals and the pipeline's audit lines, Events and notifications, so a
//! revision reads the same everywhere.

use super::request::RollbackRequest;
use crate::report::incident::{RevisionRef, Trigger};
use crate::signals::SignalResult;

/// "revision 5 (v2)".
pub fn describe_ref(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("revision {} ({})", r.revision, tags(&r.images))
    } else {
        format!("a new revision ({})", r.images.join(", "))
    }
}

pub(crate) fn tags(images: &[String]) -> String {
    images
        .iter()
        .map(|i| crate::signals::health::image_tag(i).unwrap_or(i).to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn default_reason(request: &RollbackRequest) -> String {
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

pub(crate) fn measured(signals: &[SignalResult]) -> Vec<String> {
    signals
        .iter()
        .filter(|s| s.outcome.is_fail())
        .map(SignalResult::describe)
        .collect()
}
