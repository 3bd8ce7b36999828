//! The annotations the pipeline reads and writes on the Deployment: the
//! in-flight record, the rollback times and a person's `rollback-to`.

use super::*;

/// The in-flight record kept in [`IN_FLIGHT`] from the patch until the
/// pipeline finishes: enough to resume at Wait/Verify after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub id: String,
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
}

/// The in-flight record on a Deployment, if any.
pub fn in_flight_of(d: &Deployment) -> Result<Option<InFlight>, RollbackError> {
    match d.annotations().get(IN_FLIGHT) {
        None => Ok(None),
        Some(t) if t.trim().is_empty() => Ok(None),
        Some(t) => serde_json::from_str(t)
            .map(Some)
            .map_err(|source| RollbackError::BadInFlight {
                target: target_of(d),
                source,
            }),
    }
}

/// Times of the watchdog's rollbacks recorded on a Deployment.
pub fn rollbacks_of(d: &Deployment) -> Vec<jiff::Timestamp> {
    d.annotations()
        .get(ROLLBACKS)
        .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
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
                    "annotation {ROLLBACK_TO} on {}: {value:?} is neither `previous` nor a revision number; it is ignored",
                    target_of(d)
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

/// JSON Pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}
