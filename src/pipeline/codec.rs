//! The annotations the pipeline reads and writes on the Deployment: the
//! in-flight record, the rollback times and a person's `rollback-to`. The
//! records' types and readers are [`crate::decide::request`]'s, where the
//! plan's rules read them too.

use super::*;
use crate::decide::request::read_in_flight;

pub use crate::decide::request::{rollbacks_of, InFlight};

/// The in-flight record on a Deployment, if any.
pub fn in_flight_of(d: &Deployment) -> Result<Option<InFlight>, RollbackError> {
    read_in_flight(d).map_err(|source| RollbackError::BadInFlight {
        target: target_of(d),
        source,
    })
}

/// The request a person made with [`ROLLBACK_TO`] on the Deployment, for
/// the run loop: None without the annotation, an error sentence for a
/// value that is neither `previous` nor a revision number (the run loop
/// reports it and may remove the annotation).
pub fn annotation_request(d: &Deployment) -> Option<Result<RollbackRequest, String>> {
    let value = d.annotations().get(ROLLBACK_TO)?.trim().to_owned();
    let to = if value == "previous" {
        Target::Previous
    } else {
        match value.parse::<i64>() {
            Ok(n) if n > 0 => Target::Revision(n),
            _ => {
                return Some(Err(format!(
                    "annotation {ROLLBACK_TO} on {}: {} is neither `previous` nor a revision number; it is ignored",
                    target_of(d),
                    crate::k8s::keys::quoted(&value)
                )))
            }
        }
    };
    let mut request = RollbackRequest::new(
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
        to,
        Trigger::Annotation { value },
    );
    request.detected_at = Some(jiff::Timestamp::now());
    Some(Ok(request))
}

/// JSON Pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`, by the
/// `jsonptr` that json-patch applies patches with.
pub fn escape_pointer(key: &str) -> String {
    json_patch::jsonptr::Token::new(key).encoded().to_owned()
}
