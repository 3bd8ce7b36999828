//! How revisions, requests and measurements are put into words for the
//! audit trail, Events and notifications.

use super::*;

pub use crate::decide::words::describe_ref;
pub(super) use crate::decide::words::{default_reason, measured, tags};

pub(super) fn describe_to(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("{} ({})", r.revision, tags(&r.images))
    } else {
        format!("image {}", r.images.join(", "))
    }
}

/// The patch in words for the notifications (the raw operations stay in
/// the audit line and go to machines as the incident's `patch`).
pub(super) fn changes(in_flight: &InFlight, ops: &[Value]) -> Vec<String> {
    let cause_path = format!("/metadata/annotations/{}", escape_pointer(CHANGE_CAUSE));
    let cause = ops
        .iter()
        .find(|o| o.get("path").and_then(Value::as_str) == Some(cause_path.as_str()))
        .and_then(|o| o.get("value"))
        .and_then(Value::as_str);
    crate::report::incident::describe_changes(
        &in_flight.from,
        &in_flight.to,
        cause,
        in_flight.backup.as_deref(),
    )
}

pub(super) fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
