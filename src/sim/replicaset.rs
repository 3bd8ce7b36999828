//! The simulated ReplicaSet controller and garbage collector. The first
//! keeps each ReplicaSet's pod count at `spec.replicas` and reports its
//! status; the second deletes ReplicaSets and pods whose controlling owner
//! is gone, so deleting a Deployment takes its revisions and pods with it.
//! Neither must ever touch an object it does not own: pods are matched by
//! owner uid, never adopted by labels.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};

use super::objects::{
    controller_owner, i64_at, name, namespace, owner_reference, pod_is_ready, string_map, uid,
    ControllerError,
};
use super::store::{Kind, Part, Store, StoreError, DEPLOYMENTS, PODS, REPLICASETS};

/// The node every simulated pod is scheduled to.
pub const NODE_NAME: &str = "sim-node-1";

fn ignore_gone(r: Result<Value, StoreError>) -> Result<(), ControllerError> {
    match r {
        Ok(_) | Err(StoreError::NotFound { .. }) | Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Brings every ReplicaSet's pods to `spec.replicas` and writes its status
/// (a resync).
pub fn reconcile_replicasets(store: &Store) -> Result<(), ControllerError> {
    let (replicasets, _) = store.list(&REPLICASETS, None);
    for rs in replicasets {
        reconcile_replicaset(store, rs)?;
    }
    Ok(())
}

/// The same for the ReplicaSets in `keys` (namespace, name) only.
pub fn reconcile_replicaset_keys(
    store: &Store,
    keys: &BTreeSet<(String, String)>,
) -> Result<(), ControllerError> {
    for (ns, rs_name) in keys {
        match store.get(&REPLICASETS, ns, rs_name) {
            Ok(rs) => reconcile_replicaset(store, rs)?,
            Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn reconcile_replicaset(store: &Store, rs: Value) -> Result<(), ControllerError> {
    let ns = namespace(&rs).to_string();
    let pods = store.list_owned(&PODS, &ns, uid(&rs));
    let mut mine: Vec<&Value> = pods.iter().collect();
    let want = i64_at(&rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
    let mut created = Vec::new();
    if mine.len() < want {
        for _ in mine.len()..want {
            match store.create(&PODS, &ns, new_pod(&rs)) {
                Ok(p) => created.push(p),
                Err(StoreError::NotFound { .. }) => break,
                Err(e) => return Err(e.into()),
            }
        }
    } else if mine.len() > want {
        // Not ready before ready; among equals the newest first.
        mine.sort_by_key(|p| {
            (
                pod_is_ready(p),
                std::cmp::Reverse(
                    p.pointer("/metadata/creationTimestamp")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                ),
            )
        });
        let excess = mine.len() - want;
        for p in mine.drain(..excess) {
            ignore_gone(store.delete(&PODS, namespace(p), name(p)))?;
        }
    }
    let live: Vec<&Value> = mine.iter().copied().chain(created.iter()).collect();
    let template_labels = string_map(&rs, "/spec/template/metadata/labels");
    let ready = live.iter().filter(|p| pod_is_ready(p)).count();
    let fully_labeled = live
        .iter()
        .filter(|p| {
            let labels = string_map(p, "/metadata/labels");
            template_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
        })
        .count();
    let status = json!({
        "replicas": live.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": i64_at(&rs, "/metadata/generation").unwrap_or(1),
    });
    if rs.get("status") != Some(&status) {
        ignore_gone(
            store.update_with(&REPLICASETS, &ns, name(&rs), Part::Status, |o| {
                o["status"] = status;
                Ok(())
            }),
        )?;
    }
    Ok(())
}

fn new_pod(rs: &Value) -> Value {
    let template = rs
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let mut metadata = json!({
        "generateName": format!("{}-", name(rs)),
        "namespace": namespace(rs),
        "labels": template.pointer("/metadata/labels").cloned().unwrap_or_else(|| json!({})),
        "ownerReferences": owner_reference(&REPLICASETS, rs),
    });
    if let Some(a) = template.pointer("/metadata/annotations") {
        metadata["annotations"] = a.clone();
    }
    let mut spec = template.get("spec").cloned().unwrap_or_else(|| json!({}));
    if spec.is_object() {
        spec["nodeName"] = json!(NODE_NAME);
        if spec.get("restartPolicy").is_none() {
            spec["restartPolicy"] = json!("Always");
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    })
}

/// Deletes ReplicaSets whose Deployment is gone, then pods whose
/// ReplicaSet is gone (owner missing, or same name with another uid).
pub fn collect_garbage(store: &Store) -> Result<(), ControllerError> {
    for (dependent, owner_kind) in [(&REPLICASETS, &DEPLOYMENTS), (&PODS, &REPLICASETS)] {
        let owners = live_uids(store, owner_kind);
        let (objects, _) = store.list(dependent, None);
        for obj in objects {
            let Some(owner) = controller_owner(&obj) else {
                continue;
            };
            if owner.kind != owner_kind.kind {
                continue;
            }
            let key = (namespace(&obj).to_string(), owner.name.clone());
            if owners.get(&key).map(String::as_str) != Some(owner.uid.as_str()) {
                ignore_gone(store.delete(dependent, namespace(&obj), name(&obj)))?;
            }
        }
    }
    Ok(())
}

/// Garbage collection after some writes: what a deleted owner (kind,
/// namespace, uid) controlled goes, and so does each written dependent
/// (kind, namespace, name) whose owner is gone.
pub fn collect_garbage_after(
    store: &Store,
    deleted_owners: &BTreeSet<(Kind, String, String)>,
    written: &BTreeSet<(Kind, String, String)>,
) -> Result<(), ControllerError> {
    for (kind, ns, owner_uid) in deleted_owners {
        let dependent = if *kind == DEPLOYMENTS {
            &REPLICASETS
        } else if *kind == REPLICASETS {
            &PODS
        } else {
            continue;
        };
        for obj in store.list_owned(dependent, ns, owner_uid) {
            ignore_gone(store.delete(dependent, ns, name(&obj)))?;
        }
    }
    for (kind, ns, obj_name) in written {
        let owner_kind = if *kind == REPLICASETS {
            &DEPLOYMENTS
        } else if *kind == PODS {
            &REPLICASETS
        } else {
            continue;
        };
        let obj = match store.get(kind, ns, obj_name) {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let Some(owner) = controller_owner(&obj) else {
            continue;
        };
        if owner.kind != owner_kind.kind {
            continue;
        }
        let live = match store.get(owner_kind, ns, &owner.name) {
            Ok(o) => uid(&o) == owner.uid,
            Err(StoreError::NotFound { .. }) => false,
            Err(e) => return Err(e.into()),
        };
        if !live {
            ignore_gone(store.delete(kind, ns, obj_name))?;
        }
    }
    Ok(())
}

fn live_uids(store: &Store, kind: &Kind) -> BTreeMap<(String, String), String> {
    store
        .list(kind, None)
        .0
        .iter()
        .map(|o| {
            (
                (namespace(o).to_string(), name(o).to_string()),
                uid(o).to_string(),
            )
        })
        .collect()
}
