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

pub(super) fn changes(ops: &[Value]) -> Vec<String> {
    ops.iter().map(|o| o.to_string()).collect()
}

pub(super) fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}
