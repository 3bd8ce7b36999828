//! One Event store behind two APIs, as on a real API server: every Event
//! is stored as a `core/v1` Event, and `events.k8s.io/v1` is a view of the
//! same objects, converted field by field on the way in and out (after
//! `pkg/apis/events/v1/conversion.go`). So an Event written through either
//! API is read, listed, watched, patched and deleted through both. It must
//! never keep a second copy of an Event.

use serde_json::{Map, Value};

/// `(core/v1 field, events.k8s.io/v1 field)` pairs that differ by name.
const RENAMED: &[(&str, &str)] = &[
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
];

/// Fields both versions share.
const SHARED: &[&str] = &[
    "metadata",
    "eventTime",
    "series",
    "reportingInstance",
    "action",
    "reason",
    "type",
    "related",
];

/// An `events.k8s.io/v1` Event as it is stored: a `core/v1` Event.
pub fn to_core(obj: Value) -> Value {
    convert(obj, "v1", |(core, v1)| (v1, core))
}

/// A stored `core/v1` Event as the `events.k8s.io/v1` API shows it.
pub fn to_v1(obj: Value) -> Value {
    convert(obj, "events.k8s.io/v1", |(core, v1)| (core, v1))
}

/// Keeps the shared fields, renames the others `from` → `to`, and drops
/// what the target version does not have (as the API server drops unknown
/// fields). A non-object is passed through for the caller to reject.
fn convert(
    obj: Value,
    api_version: &str,
    direction: impl Fn((&'static str, &'static str)) -> (&'static str, &'static str),
) -> Value {
    let Value::Object(mut from) = obj else {
        return obj;
    };
    let mut out = Map::new();
    out.insert("apiVersion".into(), Value::String(api_version.to_owned()));
    out.insert("kind".into(), Value::String("Event".to_owned()));
    for field in SHARED {
        if let Some(v) = from.remove(*field) {
            out.insert((*field).to_string(), v);
        }
    }
    for pair in RENAMED {
        let (source, target) = direction(*pair);
        if let Some(v) = from.remove(source) {
            out.insert(target.to_string(), v);
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// What kube's `Recorder` sends.
    fn recorder_event() -> Value {
        json!({
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "production"},
            "eventTime": "2025-01-01T00:00:00.000000Z",
            "action": "Judge",
            "reason": "RevisionBad",
            "note": "error ratio 31 % above 5 %",
            "type": "Warning",
            "regarding": {"kind": "Deployment", "name": "web", "namespace": "production", "uid": "u1", "apiVersion": "apps/v1"},
            "reportingController": "rollback-watchdog",
            "reportingInstance": "rollback-watchdog-0",
            "series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"},
        })
    }

    #[test]
    fn an_events_k8s_io_event_is_stored_as_a_core_event_and_read_back_unchanged() {
        let stored = to_core(recorder_event());
        assert_eq!(stored["apiVersion"], "v1");
        assert_eq!(stored["involvedObject"]["name"], "web");
        assert_eq!(stored["message"], "error ratio 31 % above 5 %");
        assert_eq!(stored["reportingComponent"], "rollback-watchdog");
        assert_eq!(stored["series"]["count"], 2);
        assert!(stored.get("note").is_none() && stored.get("regarding").is_none());
        assert_eq!(to_v1(stored), recorder_event());
    }

    #[test]
    fn a_core_event_shows_its_legacy_fields_as_deprecated_ones() {
        let core = json!({
            "metadata": {"name": "web.2"},
            "involvedObject": {"kind": "Deployment", "name": "web"},
            "message": "Scaled up",
            "source": {"component": "deployment-controller"},
            "firstTimestamp": "2025-01-01T00:00:00Z",
            "lastTimestamp": "2025-01-01T00:05:00Z",
            "count": 3,
            "bogus": 1,
        });
        let v1 = to_v1(core.clone());
        assert_eq!(v1["apiVersion"], "events.k8s.io/v1");
        assert_eq!(v1["regarding"]["name"], "web");
        assert_eq!(v1["note"], "Scaled up");
        assert_eq!(v1["deprecatedSource"]["component"], "deployment-controller");
        assert_eq!(v1["deprecatedCount"], 3);
        assert_eq!(v1["deprecatedLastTimestamp"], "2025-01-01T00:05:00Z");
        assert!(v1.get("bogus").is_none());
    }
}
