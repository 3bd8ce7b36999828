//! Small readers for the JSON objects the sim's controllers work on:
//! names, labels, owner references, int-or-percent fields. They exist so
//! the controllers never `unwrap()` on an object's data: a field that is
//! missing or of the wrong type reads as absent, never as a panic.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::store::{Kind, StoreError};

/// Errors of the sim's controllers.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("app server of pod {pod}: could not listen on {addr}: {source}")]
    Listen {
        pod: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> Option<&'a str> {
    obj.pointer(pointer).and_then(Value::as_str)
}

pub fn name(obj: &Value) -> &str {
    str_at(obj, "/metadata/name").unwrap_or("")
}

pub fn namespace(obj: &Value) -> &str {
    str_at(obj, "/metadata/namespace").unwrap_or("")
}

pub fn uid(obj: &Value) -> &str {
    str_at(obj, "/metadata/uid").unwrap_or("")
}

pub fn i64_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// A string map (labels, annotations, matchLabels) at `pointer`.
pub fn string_map(obj: &Value, pointer: &str) -> BTreeMap<String, String> {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

pub fn annotation<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.pointer("/metadata/annotations")
        .and_then(|a| a.get(key))
        .and_then(Value::as_str)
}

/// Sets (or with `None` removes) an annotation.
pub fn set_annotation(obj: &mut Value, key: &str, value: Option<&str>) {
    let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let annotations = meta.entry("annotations").or_insert_with(|| json!({}));
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(map) = annotations.as_object_mut() {
        match value {
            Some(v) => {
                map.insert(key.to_string(), Value::String(v.to_string()));
            }
            None => {
                map.remove(key);
            }
        }
    }
}

/// The owner reference marked `controller: true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerRef {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

pub fn controller_owner(obj: &Value) -> Option<OwnerRef> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|r| OwnerRef {
            kind: str_at(r, "/kind").unwrap_or("").to_string(),
            name: str_at(r, "/name").unwrap_or("").to_string(),
            uid: str_at(r, "/uid").unwrap_or("").to_string(),
        })
}

/// Whether `obj` is controlled by `owner` (same uid).
pub fn is_controlled_by(obj: &Value, owner: &Value) -> bool {
    controller_owner(obj).is_some_and(|o| !o.uid.is_empty() && o.uid == uid(owner))
}

/// The owner reference a controller of `kind` puts on what it creates.
pub fn owner_reference(kind: &Kind, owner: &Value) -> Value {
    json!([{
        "apiVersion": kind.api_version(),
        "kind": kind.kind,
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    }])
}

/// `spec.selector.matchLabels` against labels (every pair must match; an
/// empty selector matches nothing, as for a Deployment).
pub fn match_labels(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// An int-or-percent field (maxSurge, maxUnavailable) resolved against
/// `total`, rounding percentages up or down as the deployment controller
/// does. Unreadable values count as `default`.
pub fn int_or_percent(value: Option<&Value>, default: &str, total: i64, round_up: bool) -> i64 {
    let from_percent = |p: &str| -> Option<i64> {
        let pct: f64 = p.strip_suffix('%')?.trim().parse().ok()?;
        let exact = pct * total as f64 / 100.0;
        Some(if round_up {
            exact.ceil()
        } else {
            exact.floor()
        } as i64)
    };
    let resolved = match value {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => from_percent(s).or_else(|| s.parse().ok()),
        _ => None,
    };
    resolved
        .or_else(|| from_percent(default))
        .unwrap_or(0)
        .max(0)
}

/// A pod's `Ready` condition is True.
pub fn pod_is_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True")
            })
        })
}

/// JSON with every object's keys sorted, whatever serde_json's map order:
/// the pod-template hash must not depend on key order.
pub fn canonical_json(v: &Value) -> String {
    fn walk(v: &Value, out: &mut String) {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String(k.clone()).to_string());
                    out.push(':');
                    if let Some(x) = m.get(k) {
                        walk(x, out);
                    }
                }
                out.push('}');
            }
            Value::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    walk(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    walk(v, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_or_percent_rounds_like_the_deployment_controller() {
        assert_eq!(int_or_percent(Some(&json!("25%")), "25%", 3, true), 1);
        assert_eq!(int_or_percent(Some(&json!("25%")), "25%", 3, false), 0);
        assert_eq!(int_or_percent(Some(&json!(2)), "25%", 3, false), 2);
        assert_eq!(int_or_percent(None, "25%", 10, true), 3);
        assert_eq!(int_or_percent(Some(&json!("junk")), "25%", 10, false), 2);
    }

    #[test]
    fn canonical_json_sorts_keys() {
        let a: Value =
            serde_json::from_str(r#"{"b":1,"a":{"d":[1,{"y":2,"x":1}],"c":"s"}}"#).unwrap();
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"c":"s","d":[1,{"x":1,"y":2}]},"b":1}"#
        );
    }
}
