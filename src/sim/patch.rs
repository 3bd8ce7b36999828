//! The three patch formats the simulated API server accepts: JSON Patch
//! (RFC 6902, including `test`), JSON merge patch (RFC 7386) and the
//! strategic merge patch kubectl sends, for the fields the watchdog and
//! kubectl touch. It must never apply half a patch: callers patch a copy.

use serde_json::{Map, Value};

use super::store::StoreError;

/// A patch body with its format, as the Content-Type named it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    /// From the request's Content-Type; None for anything else (→ 415).
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// Applies `body` to `doc` in place. On error `doc` may be partly changed:
/// callers pass a copy (the store's `update_with` does).
pub fn apply(patch_type: PatchType, doc: &mut Value, body: &[u8]) -> Result<(), StoreError> {
    match patch_type {
        PatchType::Json => {
            let ops: json_patch::Patch = serde_json::from_slice(body).map_err(|e| {
                StoreError::BadRequest(format!("the JSON patch does not decode: {e}"))
            })?;
            // Not `json_patch::patch`: its undo of a failed patch panics
            // on some moves (found by fuzzing, issue 15). The caller's copy
            // is dropped on error, so nothing needs undoing.
            json_patch::patch_unsafe(doc, &ops).map_err(|e| match e.kind {
                json_patch::PatchErrorKind::TestFailed => StoreError::Invalid(format!(
                    "the server rejected our request due to an error in our request: test operation {} on path {:?} failed: value did not match",
                    e.operation, e.path.to_string()
                )),
                _ => StoreError::Invalid(format!(
                    "the JSON patch cannot be applied: operation {} on path {:?}: {}",
                    e.operation,
                    e.path.to_string(),
                    e.kind
                )),
            })
        }
        PatchType::Merge => {
            let patch = decode(body)?;
            json_patch::merge(doc, &patch);
            Ok(())
        }
        PatchType::Strategic => {
            let patch = decode(body)?;
            strategic_merge(doc, &patch, "")
        }
        PatchType::Apply => Err(StoreError::BadRequest(
            "server-side apply is not supported by the simulated cluster".into(),
        )),
    }
}

fn decode(body: &[u8]) -> Result<Value, StoreError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| StoreError::BadRequest(format!("the patch body does not decode: {e}")))?;
    if !v.is_object() {
        return Err(StoreError::BadRequest(
            "a merge patch must be a JSON object".into(),
        ));
    }
    Ok(v)
}

/// The merge key of a list field, as the Kubernetes types declare it with
/// `patchMergeKey` (only the lists the sim's kinds carry).
fn merge_key(field: &str, path: &str) -> Option<&'static str> {
    Some(match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets" => "name",
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        // Container ports merge by containerPort; Service ports are not
        // served by the sim.
        "ports" if path.contains("containers") => "containerPort",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "hostAliases" => "ip",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

/// Strategic merge: maps merge, `null` deletes, lists with a merge key
/// merge element by element, other lists are replaced. Honours
/// `$patch: replace|delete|merge`; `$setElementOrder/…`, `$retainKeys`
/// and `$deleteFromPrimitiveList/…` are handled or tolerated.
fn strategic_merge(doc: &mut Value, patch: &Value, path: &str) -> Result<(), StoreError> {
    let Some(patch_map) = patch.as_object() else {
        *doc = patch.clone();
        return Ok(());
    };
    match patch_map.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut replaced = patch_map.clone();
            replaced.remove("$patch");
            *doc = Value::Object(strip_directives(replaced));
            return Ok(());
        }
        Some("delete") => {
            *doc = Value::Null;
            return Ok(());
        }
        Some("merge") | None => {}
        Some(other) => {
            return Err(StoreError::BadRequest(format!(
                "unknown patch directive $patch: {other:?} at {path:?}"
            )))
        }
    }
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(target) = doc.as_object_mut() else {
        return Ok(());
    };
    let retain: Option<Vec<String>> = patch_map.get("$retainKeys").and_then(|v| {
        v.as_array().map(|a| {
            a.iter()
                .filter_map(|k| k.as_str().map(str::to_string))
                .collect()
        })
    });
    for (key, value) in patch_map {
        if key == "$patch" || key == "$retainKeys" || key.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = key.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(remove)) = (
                target.get_mut(field).and_then(Value::as_array_mut),
                value.as_array(),
            ) {
                list.retain(|item| !remove.contains(item));
            }
            continue;
        }
        let child_path = format!("{path}/{key}");
        if value.is_null() {
            target.remove(key);
            continue;
        }
        match value {
            Value::Object(_) => {
                let slot = target.entry(key.clone()).or_insert(Value::Null);
                strategic_merge(slot, value, &child_path)?;
                if slot.is_null() {
                    target.remove(key);
                }
            }
            Value::Array(items) => {
                let merged = match merge_key(key, path) {
                    Some(mk) => merge_list(target.get(key), items, mk, &child_path)?,
                    None => Value::Array(
                        items
                            .iter()
                            .filter(|i| i.get("$patch").is_none())
                            .cloned()
                            .collect(),
                    ),
                };
                target.insert(key.clone(), merged);
            }
            _ => {
                target.insert(key.clone(), value.clone());
            }
        }
    }
    if let Some(keep) = retain {
        target.retain(|k, _| keep.contains(k));
    }
    Ok(())
}

fn merge_list(
    current: Option<&Value>,
    items: &[Value],
    merge_key: &str,
    path: &str,
) -> Result<Value, StoreError> {
    // `[{"$patch": "replace"}, ...]` replaces the whole list.
    if items
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(Value::Array(
            items
                .iter()
                .filter(|i| i.get("$patch").is_none())
                .cloned()
                .map(|i| match i {
                    Value::Object(m) => Value::Object(strip_directives(m)),
                    other => other,
                })
                .collect(),
        ));
    }
    let mut out: Vec<Value> = current
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for item in items {
        let Some(key_value) = item.get(merge_key) else {
            return Err(StoreError::BadRequest(format!(
                "an element of the list at {path:?} lacks its merge key {merge_key:?}"
            )));
        };
        let pos = out.iter().position(|e| e.get(merge_key) == Some(key_value));
        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut out[i], item, path)?,
            (None, false) => {
                let mut fresh = Value::Null;
                strategic_merge(&mut fresh, item, path)?;
                out.push(fresh);
            }
        }
    }
    Ok(Value::Array(out))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    for v in m.values_mut() {
        if let Value::Object(inner) = v {
            *inner = strip_directives(std::mem::take(inner));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Found by tests/hardening.rs: a move of `/spec` to the root, then a
    /// failing op, panicked in json-patch's undo. Now it is a 422.
    #[test]
    fn a_failing_json_patch_after_a_move_to_the_root_is_refused_not_a_panic() {
        let mut doc = deployment();
        let body = br#"[{"from":"/spec","op":"move","path":"","value":null},{"from":"","op":"add","path":"/spec/template","value":null}]"#;
        match apply(PatchType::Json, &mut doc, body) {
            Err(StoreError::Invalid(message)) => assert!(
                message.contains("operation 1") && message.contains("/spec/template"),
                "{message}"
            ),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn deployment() -> Value {
        json!({
            "metadata": {"name": "web", "labels": {"app": "web", "tier": "front"}},
            "spec": {"template": {"spec": {"containers": [
                {"name": "app", "image": "web:v1",
                 "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                 "ports": [{"containerPort": 80, "name": "http"}]},
                {"name": "sidecar", "image": "proxy:v1"}
            ]}}}
        })
    }

    fn smp(doc: &mut Value, patch: Value) {
        let body = serde_json::to_vec(&patch).unwrap_or_default();
        if let Err(e) = apply(PatchType::Strategic, doc, &body) {
            panic!("patch {patch} failed: {e}");
        }
    }

    #[test]
    fn strategic_merge_merges_containers_and_env_by_name() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"name": "app", "image": "web:v2",
                                "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}]}]
            }}}}),
        );
        let c = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(c[0]["image"], "web:v2");
        assert_eq!(c[1]["image"], "proxy:v1", "the other container stays");
        assert_eq!(
            c[0]["env"],
            json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}, {"name": "C", "value": "4"}])
        );
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
    }

    #[test]
    fn strategic_merge_directives_replace_and_delete() {
        let mut d = deployment();
        smp(
            &mut d,
            json!({"metadata": {"labels": {"$patch": "replace", "app": "web2"}}}),
        );
        assert_eq!(d["metadata"]["labels"], json!({"app": "web2"}));
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "$patch": "delete"}
            ]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .map(Vec::len),
            Some(1)
        );
        smp(
            &mut d,
            json!({"spec": {"template": {"spec": {"containers": [
                {"$patch": "replace"}, {"name": "only", "image": "x:1"}
            ]}}}}),
        );
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "x:1"}])
        );
        smp(&mut d, json!({"metadata": {"labels": null}}));
        assert!(d["metadata"].get("labels").is_none());
    }

    #[test]
    fn json_patch_test_failure_is_invalid_and_merge_patch_replaces_lists() {
        let mut d = deployment();
        let body = br#"[{"op":"test","path":"/metadata/name","value":"other"},{"op":"replace","path":"/metadata/name","value":"x"}]"#;
        let err = apply(PatchType::Json, &mut d, body).err();
        assert_eq!(err.map(|e| e.code()), Some(422));
        let body = br#"{"spec":{"template":{"spec":{"containers":[{"name":"n"}]}}}}"#;
        assert!(apply(PatchType::Merge, &mut d, body).is_ok());
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"],
            json!([{"name": "n"}])
        );
        assert_eq!(
            PatchType::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchType::Merge)
        );
    }
}
