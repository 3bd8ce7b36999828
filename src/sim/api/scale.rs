//! The autoscaling/v1 Scale subresource of Deployments and ReplicaSets.

use serde_json::{json, Value};

use crate::k8s::selector::Selector;

/// The autoscaling/v1 Scale of a Deployment or ReplicaSet.
pub(super) fn scale_of(obj: &Value) -> Value {
    let meta = |f: &str| {
        obj.pointer(&format!("/metadata/{f}"))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| Selector::from_label_selector_json(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta("name"),
            "namespace": meta("namespace"),
            "uid": meta("uid"),
            "resourceVersion": meta("resourceVersion"),
            "creationTimestamp": meta("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)),
            "selector": selector,
        },
    })
}

/// Writes a Scale's replicas (and the resourceVersion it was read at, so a
/// stale Scale conflicts) into the object.
pub(super) fn set_replicas(obj: &mut Value, replicas: Value, rv: Option<Value>) {
    if let Some(map) = obj.as_object_mut() {
        let spec = map.entry("spec").or_insert(json!({}));
        if let Some(spec) = spec.as_object_mut() {
            spec.insert("replicas".into(), replicas);
        }
    }
    if let Some(rv) = rv.filter(|v| v.as_str().is_some_and(|s| !s.is_empty())) {
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), rv);
        }
    }
}
