//! The simulated deployment controller, after kube-controller-manager's:
//! one ReplicaSet per pod template (`<deploy>-<pod-template-hash>`),
//! revisions as `deployment.kubernetes.io/revision`, the Deployment's own
//! annotations copied to its new ReplicaSet (all but the controller's
//! bookkeeping and kubectl apply's record), rolling updates within
//! maxSurge/maxUnavailable, status and the Progressing/Available conditions
//! that `kubectl rollout status` reads. It must never touch pods (that is
//! the ReplicaSet controller's job) nor a Deployment's template.
//!
//! Simplifications, on purpose: minReadySeconds is not waited for (ready
//! means available); changing `spec.replicas` mid-rollout is not scaled
//! proportionally; a template change (new or reused ReplicaSet) always
//! restarts the progress-deadline clock, also after a reused ReplicaSet.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::clock::{parse_rfc3339, rfc3339, SimClock};
use super::objects::{
    annotation, canonical_json, i64_at, int_or_percent, name, namespace, owner_reference,
    set_annotation, str_at, uid, ControllerError,
};
use super::store::{Part, Store, StoreError, DEPLOYMENTS, REPLICASETS};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// What `kubectl apply` keeps on the object it applied.
pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The deprecated `extensions/v1beta1` rollback request.
pub const DEPRECATED_ROLLBACK_TO: &str = "deprecated.deployment.rollback.to";
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Fills in what the API server defaults on a Deployment: replicas 1,
/// RollingUpdate 25 %/25 %, revisionHistoryLimit 10,
/// progressDeadlineSeconds 600. Returns whether anything changed. The API
/// server may call it on create so the defaults land in generation 1.
pub fn apply_deployment_defaults(d: &mut Value) -> bool {
    let Some(spec) = d.get_mut("spec").and_then(Value::as_object_mut) else {
        return false;
    };
    let mut changed = false;
    let mut default = |key: &str, value: Value| {
        if spec.get(key).is_none_or(Value::is_null) {
            spec.insert(key.to_string(), value);
            changed = true;
        }
    };
    default("replicas", json!(1));
    default("revisionHistoryLimit", json!(10));
    default("progressDeadlineSeconds", json!(600));
    default(
        "strategy",
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
    );
    if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
        if strategy.get("type").is_none_or(Value::is_null) {
            strategy.insert("type".into(), json!("RollingUpdate"));
            changed = true;
        }
        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
            let ru = strategy.entry("rollingUpdate").or_insert_with(|| json!({}));
            if let Some(ru) = ru.as_object_mut() {
                for key in ["maxSurge", "maxUnavailable"] {
                    if ru.get(key).is_none_or(Value::is_null) {
                        ru.insert(key.into(), json!("25%"));
                        changed = true;
                    }
                }
            } else {
                *ru = json!({"maxSurge": "25%", "maxUnavailable": "25%"});
                changed = true;
            }
        }
    }
    changed
}

/// A pod template without its `pod-template-hash` label, in semantic
/// normal form: what two templates are compared (and hashed) on.
///
/// kubectl serialises Go structs, so `rollout undo` sends the template back
/// with `creationTimestamp: null` and `resources: {}`; the real controller
/// compares typed structs, where those equal absent fields. Dropping nulls
/// and empty objects and lists gives the JSON the same equality.
pub fn template_without_hash(template: &Value) -> Value {
    let mut t = semantic_normal_form(template).unwrap_or(Value::Null);
    if let Some(labels) = t
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            if let Some(meta) = t.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("labels");
            }
        }
    }
    t
}

/// `value` without nulls and empty objects or lists, at any depth; `None`
/// when nothing is left.
fn semantic_normal_form(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let kept: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| semantic_normal_form(v).map(|v| (k.clone(), v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .map(|v| semantic_normal_form(v).unwrap_or(Value::Null))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        other => Some(other.clone()),
    }
}

/// The `pod-template-hash` of a template, as Kubernetes computes it in
/// spirit: FNV-32a over the template (hash label removed, keys sorted),
/// then the collision count, written as decimal and mapped onto the
/// alphabet `bcdfghjklmnpqrstvwxz2456789`.
pub fn pod_template_hash(template: &Value, collision_count: Option<i64>) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for b in bytes {
            hash ^= u32::from(*b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(canonical_json(&template_without_hash(template)).as_bytes());
    if let Some(c) = collision_count {
        feed(&(c as u32).to_le_bytes());
    }
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[usize::from(b) % ALPHABET.len()] as char)
        .collect()
}

fn revision_of(rs: &Value) -> i64 {
    annotation(rs, REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn spec_replicas(obj: &Value) -> i64 {
    i64_at(obj, "/spec/replicas").unwrap_or(0)
}

/// Whether a status shows every replica updated and available, with no
/// old ones left: nothing but a write changes it then.
fn rolled_out(status: &Value, replicas: i64) -> bool {
    let count = |f: &str| status.get(f).and_then(Value::as_i64).unwrap_or(0);
    count("updatedReplicas") == replicas
        && count("availableReplicas") == replicas
        && count("replicas") == replicas
}

fn status_count(obj: &Value, field: &str) -> i64 {
    i64_at(obj, &format!("/status/{field}")).unwrap_or(0)
}

/// The deployment controller's state that is not in the store: when each
/// Deployment last made progress, at sub-second precision.
pub struct DeploymentController {
    clock: SimClock,
    last_progress: HashMap<String, Instant>,
    /// The uid of each Deployment seen, by (namespace, name), to forget
    /// its progress mark once it is gone.
    uids: HashMap<(String, String), String>,
    /// Deployments still rolling out, and when their progress deadline
    /// passes: looked at again then (everything else follows writes).
    active: HashMap<(String, String), Instant>,
}

/// What happened to the new ReplicaSet in this pass.
#[derive(PartialEq)]
enum NewRsEvent {
    None,
    Created,
    Found,
}

impl DeploymentController {
    pub fn new(clock: SimClock) -> Self {
        DeploymentController {
            clock,
            last_progress: HashMap::new(),
            uids: HashMap::new(),
            active: HashMap::new(),
        }
    }

    /// Looks at every Deployment (a resync).
    pub fn reconcile_all(&mut self, store: &Store) -> Result<(), ControllerError> {
        let (deployments, _) = store.list(&DEPLOYMENTS, None);
        let live: HashSet<String> = deployments.iter().map(|d| uid(d).to_string()).collect();
        self.last_progress.retain(|k, _| live.contains(k));
        self.uids.retain(|_, u| live.contains(u));
        for d in deployments {
            self.reconcile_one(store, d)?;
        }
        Ok(())
    }

    /// Looks at the Deployments in `keys` (written, or whose ReplicaSets
    /// were), and with `recheck` also at those whose progress deadline
    /// has passed.
    pub fn reconcile_keys(
        &mut self,
        store: &Store,
        keys: &BTreeSet<(String, String)>,
        recheck: bool,
    ) -> Result<(), ControllerError> {
        let mut keys = keys.clone();
        if recheck {
            let now = Instant::now();
            keys.extend(
                self.active
                    .iter()
                    .filter(|(_, due)| **due <= now)
                    .map(|(k, _)| k.clone()),
            );
        }
        for key in keys {
            match store.get(&DEPLOYMENTS, &key.0, &key.1) {
                Ok(d) => self.reconcile_one(store, d)?,
                Err(StoreError::NotFound { .. }) => {
                    self.active.remove(&key);
                    if let Some(u) = self.uids.remove(&key) {
                        self.last_progress.remove(&u);
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn reconcile_one(&mut self, store: &Store, d: Value) -> Result<(), ControllerError> {
        let key = (namespace(&d).to_string(), name(&d).to_string());
        let d_uid = uid(&d).to_string();
        self.uids.insert(key.clone(), d_uid.clone());
        let deadline = self
            .clock
            .real_secs(i64_at(&d, "/spec/progressDeadlineSeconds").unwrap_or(600) as f64);
        let settled = match self.reconcile(store, d) {
            Ok(settled) => settled,
            // Deleted or changed under us: the next pass sees the news.
            Err(ControllerError::Store(StoreError::NotFound { .. }))
            | Err(ControllerError::Store(StoreError::Conflict { .. })) => false,
            Err(e) => return Err(e),
        };
        if settled {
            self.active.remove(&key);
        } else {
            // Due when the deadline passes, counted from the last progress;
            // once it has passed, about once a second.
            let now = Instant::now();
            let due = self
                .last_progress
                .get(&d_uid)
                .map(|mark| *mark + deadline + Duration::from_millis(10))
                .filter(|due| *due > now)
                .unwrap_or(now + Duration::from_secs(1));
            self.active.insert(key, due);
        }
        Ok(())
    }

    /// One Deployment; `Ok(true)` when it has settled (nothing left that
    /// time alone would change).
    fn reconcile(&mut self, store: &Store, mut d: Value) -> Result<bool, ControllerError> {
        let ns = namespace(&d).to_string();
        let dname = name(&d).to_string();
        if d.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(true);
        }
        let mut probe = d.clone();
        if apply_deployment_defaults(&mut probe) {
            d = store.update_with(&DEPLOYMENTS, &ns, &dname, Part::Main, |o| {
                apply_deployment_defaults(o);
                Ok(())
            })?;
        }
        let Some(template) = d.pointer("/spec/template").cloned() else {
            return Ok(true);
        };
        let replicas = spec_replicas(&d).max(0);
        let paused = d.pointer("/spec/paused").and_then(Value::as_bool) == Some(true);
        let strategy = str_at(&d, "/spec/strategy/type")
            .unwrap_or("RollingUpdate")
            .to_string();
        let max_surge = if strategy == "Recreate" {
            0
        } else {
            int_or_percent(
                d.pointer("/spec/strategy/rollingUpdate/maxSurge"),
                "25%",
                replicas,
                true,
            )
        };
        let mut max_unavailable = if strategy == "Recreate" {
            replicas
        } else {
            int_or_percent(
                d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
                "25%",
                replicas,
                false,
            )
        };
        if max_surge == 0 && max_unavailable == 0 {
            max_unavailable = 1;
        }
        max_unavailable = max_unavailable.min(replicas);

        let mut owned = store.list_owned(&REPLICASETS, &ns, uid(&d));
        owned.sort_by_key(revision_of);
        let wanted = template_without_hash(&template);
        let new_idx = owned.iter().rposition(|rs| {
            rs.pointer("/spec/template")
                .map(template_without_hash)
                .as_ref()
                == Some(&wanted)
        });
        let mut new_rs = new_idx.map(|i| owned.remove(i));
        let mut old_rss = owned;
        let max_old_revision = old_rss.iter().map(revision_of).max().unwrap_or(0);

        let mut event = NewRsEvent::None;
        if !paused {
            match new_rs.take() {
                None => {
                    let collision = i64_at(&d, "/status/collisionCount");
                    let hash = pod_template_hash(&template, collision);
                    let rs_name = format!("{dname}-{hash}");
                    let body = new_replicaset(
                        &d,
                        &template,
                        &rs_name,
                        &hash,
                        max_old_revision + 1,
                        max_surge,
                    );
                    match store.create(&REPLICASETS, &ns, body) {
                        Ok(rs) => {
                            new_rs = Some(rs);
                            event = NewRsEvent::Created;
                        }
                        Err(StoreError::AlreadyExists { .. }) => {
                            // Same name, other template: a hash collision.
                            store.update_with(&DEPLOYMENTS, &ns, &dname, Part::Status, |o| {
                                let next = i64_at(o, "/status/collisionCount").unwrap_or(0) + 1;
                                o["status"]["collisionCount"] = json!(next);
                                Ok(())
                            })?;
                            return Ok(false);
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Some(rs) => {
                    let new_revision = max_old_revision + 1;
                    if revision_of(&rs) < new_revision {
                        event = NewRsEvent::Found;
                    }
                    let updated =
                        store.update_with(&REPLICASETS, &ns, name(&rs), Part::Main, |o| {
                            let old = revision_of(o);
                            if old < new_revision {
                                if old > 0 {
                                    let history = match annotation(o, REVISION_HISTORY) {
                                        Some(h) if !h.is_empty() => format!("{h},{old}"),
                                        _ => old.to_string(),
                                    };
                                    set_annotation(o, REVISION_HISTORY, Some(&history));
                                }
                                set_annotation(o, REVISION, Some(&new_revision.to_string()));
                            }
                            copy_deployment_annotations(&d, o);
                            Ok(())
                        })?;
                    new_rs = Some(updated);
                }
            }
        }

        if let Some(rs) = &new_rs {
            let revision = annotation(rs, REVISION).unwrap_or("").to_string();
            if !revision.is_empty() && annotation(&d, REVISION) != Some(revision.as_str()) {
                d = store.update_with(&DEPLOYMENTS, &ns, &dname, Part::Main, |o| {
                    set_annotation(o, REVISION, Some(&revision));
                    Ok(())
                })?;
            }
        }

        if !paused {
            if let Some(new) = new_rs.as_mut() {
                let limits = Limits {
                    replicas,
                    max_surge,
                    max_unavailable,
                };
                if strategy == "Recreate" {
                    recreate(store, new, &mut old_rss, limits)?;
                } else {
                    rolling(store, new, &mut old_rss, limits)?;
                }
            }
        }
        cleanup_history(store, &d, &old_rss)?;

        // Status, from the ReplicaSets as the ReplicaSet controller reports them.
        let owned = store.list_owned(&REPLICASETS, &ns, uid(&d));
        let new_name = new_rs.as_ref().map(|rs| name(rs).to_string());
        let status = self.status(
            &d,
            &owned,
            new_name.as_deref(),
            event,
            paused,
            replicas,
            max_unavailable,
        );
        let settled = paused || rolled_out(&status, replicas);
        store.update_with(&DEPLOYMENTS, &ns, &dname, Part::Status, |o| {
            o["status"] = status;
            Ok(())
        })?;
        Ok(settled)
    }

    #[allow(clippy::too_many_arguments)]
    fn status(
        &mut self,
        d: &Value,
        owned: &[Value],
        new_name: Option<&str>,
        event: NewRsEvent,
        paused: bool,
        replicas: i64,
        max_unavailable: i64,
    ) -> Value {
        let sum = |field: &str| owned.iter().map(|rs| status_count(rs, field)).sum::<i64>();
        let new = new_name.and_then(|n| owned.iter().find(|rs| name(rs) == n));
        let total = sum("replicas");
        let updated = new.map(|rs| status_count(rs, "replicas")).unwrap_or(0);
        let ready = sum("readyReplicas");
        let available = sum("availableReplicas");
        let spec_total: i64 = owned.iter().map(spec_replicas).sum();
        let unavailable = (spec_total - available).max(0);

        let old = d.get("status").cloned().unwrap_or_else(|| json!({}));
        let now = jiff::Timestamp::now();
        let now_text = rfc3339(now);
        let mut conditions: Vec<Value> = old
            .get("conditions")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();

        let min_available = replicas - max_unavailable;
        let available_cond = if available >= min_available {
            (
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
            )
        } else {
            (
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
            )
        };
        set_condition(
            &mut conditions,
            "Available",
            available_cond,
            &now_text,
            false,
        );

        let d_uid = uid(d).to_string();
        let progressing = conditions
            .iter()
            .find(|c| str_at(c, "/type") == Some("Progressing"))
            .cloned();
        let reason = progressing
            .as_ref()
            .and_then(|c| str_at(c, "/reason"))
            .unwrap_or("");
        let rs_label = new_name.unwrap_or("");
        let mark = *self.last_progress.entry(d_uid.clone()).or_insert_with(|| {
            // Not seen since start: the stored lastUpdateTime is the mark.
            let since = progressing
                .as_ref()
                .and_then(|c| str_at(c, "/lastUpdateTime"))
                .and_then(parse_rfc3339)
                .and_then(|t| now.duration_since(t).try_into().ok())
                .unwrap_or_default();
            Instant::now()
                .checked_sub(since)
                .unwrap_or_else(Instant::now)
        });
        let has_deadline = d.pointer("/spec/progressDeadlineSeconds").is_some();
        let deadline = self
            .clock
            .real_secs(i64_at(d, "/spec/progressDeadlineSeconds").unwrap_or(600) as f64);
        let complete = updated == replicas && available == replicas && total == replicas;
        let old_count = |s: &Value, f: &str| i64_at(s, &format!("/{f}")).unwrap_or(0);
        let progressed = updated > old_count(&old, "updatedReplicas")
            || (total - updated)
                < (old_count(&old, "replicas") - old_count(&old, "updatedReplicas"))
            || ready > old_count(&old, "readyReplicas")
            || available > old_count(&old, "availableReplicas");

        let touch = |this: &mut Self| {
            this.last_progress.insert(d_uid.clone(), Instant::now());
        };
        if paused {
            if reason != "DeploymentPaused" {
                set_condition(
                    &mut conditions,
                    "Progressing",
                    ("Unknown", "DeploymentPaused", "Deployment is paused"),
                    &now_text,
                    true,
                );
            }
        } else if reason == "DeploymentPaused" {
            touch(self);
            set_condition(
                &mut conditions,
                "Progressing",
                ("Unknown", "DeploymentResumed", "Deployment is resumed"),
                &now_text,
                true,
            );
        } else if event == NewRsEvent::Created {
            touch(self);
            let msg = format!("Created new replica set \"{rs_label}\"");
            set_condition(
                &mut conditions,
                "Progressing",
                ("True", "NewReplicaSetCreated", &msg),
                &now_text,
                true,
            );
        } else if event == NewRsEvent::Found || (progressing.is_none() && new_name.is_some()) {
            touch(self);
            let msg = format!("Found new replica set \"{rs_label}\"");
            set_condition(
                &mut conditions,
                "Progressing",
                ("True", "FoundNewReplicaSet", &msg),
                &now_text,
                true,
            );
        } else if new_name.is_some() && has_deadline {
            if reason == "NewReplicaSetAvailable" && total == updated {
                // A finished rollout stays finished, as in the real controller.
            } else if complete {
                touch(self);
                let msg = format!("ReplicaSet \"{rs_label}\" has successfully progressed.");
                set_condition(
                    &mut conditions,
                    "Progressing",
                    ("True", "NewReplicaSetAvailable", &msg),
                    &now_text,
                    true,
                );
            } else if progressed {
                touch(self);
                let msg = format!("ReplicaSet \"{rs_label}\" is progressing.");
                set_condition(
                    &mut conditions,
                    "Progressing",
                    ("True", "ReplicaSetUpdated", &msg),
                    &now_text,
                    true,
                );
            } else if reason != "ProgressDeadlineExceeded" && mark.elapsed() > deadline {
                let msg = format!("ReplicaSet \"{rs_label}\" has timed out progressing.");
                set_condition(
                    &mut conditions,
                    "Progressing",
                    ("False", "ProgressDeadlineExceeded", &msg),
                    &now_text,
                    true,
                );
            }
        }

        let mut status = json!({
            "observedGeneration": i64_at(d, "/metadata/generation").unwrap_or(1),
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": unavailable,
            "conditions": conditions,
        });
        if let Some(c) = old.get("collisionCount") {
            status["collisionCount"] = c.clone();
        }
        status
    }
}

/// Sets a condition. Without `force`, an existing condition with the same
/// status and reason is left alone (timestamps unchanged); a transition
/// time is kept while the status stays the same.
fn set_condition(
    conditions: &mut Vec<Value>,
    kind: &str,
    (status, reason, message): (&str, &str, &str),
    now: &str,
    force: bool,
) {
    let existing = conditions
        .iter()
        .position(|c| str_at(c, "/type") == Some(kind));
    let mut transition = now.to_string();
    if let Some(i) = existing {
        let c = &conditions[i];
        let same_status = str_at(c, "/status") == Some(status);
        if same_status && str_at(c, "/reason") == Some(reason) && !force {
            return;
        }
        if same_status {
            if let Some(t) = str_at(c, "/lastTransitionTime") {
                transition = t.to_string();
            }
        }
        conditions.remove(i);
    }
    conditions.push(json!({
        "type": kind,
        "status": status,
        "lastUpdateTime": now,
        "lastTransitionTime": transition,
        "reason": reason,
        "message": message,
    }));
    // Available first, then Progressing, as the real controller lists them.
    conditions.sort_by_key(|c| str_at(c, "/type") != Some("Available"));
}

fn new_replicaset(
    d: &Value,
    template: &Value,
    rs_name: &str,
    hash: &str,
    revision: i64,
    max_surge: i64,
) -> Value {
    let mut template = template.clone();
    if !template
        .pointer("/metadata/labels")
        .is_some_and(Value::is_object)
    {
        if !template.get("metadata").is_some_and(Value::is_object) {
            template["metadata"] = json!({});
        }
        template["metadata"]["labels"] = json!({});
    }
    template["metadata"]["labels"][POD_TEMPLATE_HASH] = json!(hash);
    let mut selector = d
        .pointer("/spec/selector")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if !selector.get("matchLabels").is_some_and(Value::is_object) {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][POD_TEMPLATE_HASH] = json!(hash);
    let replicas = spec_replicas(d);
    let mut annotations = json!({
        REVISION: revision.to_string(),
        DESIRED_REPLICAS: replicas.to_string(),
        MAX_REPLICAS: (replicas + max_surge).to_string(),
    });
    if let (Some(from), Some(to)) = (
        d.pointer("/metadata/annotations")
            .and_then(Value::as_object),
        annotations.as_object_mut(),
    ) {
        for (key, value) in from.iter().filter(|(k, _)| !skip_copy_annotation(k)) {
            to.insert(key.clone(), value.clone());
        }
    }
    let mut spec = json!({
        "replicas": 0,
        "selector": selector,
        "template": template.clone(),
    });
    if let Some(m) = d.pointer("/spec/minReadySeconds") {
        spec["minReadySeconds"] = m.clone();
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name,
            "namespace": namespace(d),
            "labels": template["metadata"]["labels"].clone(),
            "annotations": annotations,
            "ownerReferences": owner_reference(&DEPLOYMENTS, d),
        },
        "spec": spec,
    })
}

/// The Deployment annotations the controller never copies to a
/// ReplicaSet: its own bookkeeping, which it writes per ReplicaSet, and
/// kubectl apply's record (`skipCopyAnnotation` in kube-controller-manager).
pub fn skip_copy_annotation(key: &str) -> bool {
    [
        LAST_APPLIED,
        REVISION,
        REVISION_HISTORY,
        DESIRED_REPLICAS,
        MAX_REPLICAS,
        DEPRECATED_ROLLBACK_TO,
    ]
    .contains(&key)
}

/// Copies the Deployment's annotations onto its new ReplicaSet, as the real
/// controller does on every sync (`copyDeploymentAnnotationsToReplicaSet`):
/// added or changed ones are written, ones the Deployment dropped stay.
fn copy_deployment_annotations(d: &Value, rs: &mut Value) {
    let Some(from) = d
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
    else {
        return;
    };
    for (key, value) in from.iter().filter(|(k, _)| !skip_copy_annotation(k)) {
        if let Some(value) = value.as_str() {
            if annotation(rs, key) != Some(value) {
                set_annotation(rs, key, Some(value));
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Limits {
    replicas: i64,
    max_surge: i64,
    max_unavailable: i64,
}

/// Scales a ReplicaSet (and records the Deployment's sizes on it, as the
/// real controller does).
fn scale(store: &Store, rs: &mut Value, to: i64, limits: Limits) -> Result<(), ControllerError> {
    let desired = limits.replicas.to_string();
    let max = (limits.replicas + limits.max_surge).to_string();
    *rs = store.update_with(&REPLICASETS, namespace(rs), name(rs), Part::Main, |o| {
        o["spec"]["replicas"] = json!(to.max(0));
        set_annotation(o, DESIRED_REPLICAS, Some(&desired));
        set_annotation(o, MAX_REPLICAS, Some(&max));
        Ok(())
    })?;
    Ok(())
}

/// One step of a rolling update, as `rolloutRolling` does: scale the new
/// ReplicaSet up within maxSurge, then old ones down within maxUnavailable,
/// unhealthy old pods first.
fn rolling(
    store: &Store,
    new: &mut Value,
    old: &mut [Value],
    limits: Limits,
) -> Result<(), ControllerError> {
    let Limits {
        replicas,
        max_surge,
        max_unavailable,
    } = limits;
    let old_active: i64 = old.iter().map(spec_replicas).sum();
    let new_replicas = spec_replicas(new);
    if old_active == 0 {
        if new_replicas != replicas {
            scale(store, new, replicas, limits)?;
        }
        return Ok(());
    }
    // Scale up.
    let current: i64 = new_replicas + old_active;
    let max_total = replicas + max_surge;
    if current < max_total && new_replicas < replicas {
        let up = (max_total - current).min(replicas - new_replicas);
        scale(store, new, new_replicas + up, limits)?;
    }
    // Scale down: first old pods that are not available anyway.
    let all_pods = spec_replicas(new) + old.iter().map(spec_replicas).sum::<i64>();
    let min_available = replicas - max_unavailable;
    let new_unavailable = (spec_replicas(new) - status_count(new, "availableReplicas")).max(0);
    let max_scaled_down = all_pods - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return Ok(());
    }
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let have = spec_replicas(rs);
        let unhealthy = (have - status_count(rs, "availableReplicas")).max(0);
        if have == 0 || unhealthy == 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down - cleaned);
        scale(store, rs, have - down, limits)?;
        cleaned += down;
    }
    // Then available old pods, keeping minAvailable.
    let available: i64 = status_count(new, "availableReplicas")
        + old
            .iter()
            .map(|rs| status_count(rs, "availableReplicas").min(spec_replicas(rs)))
            .sum::<i64>();
    if available <= min_available {
        return Ok(());
    }
    let mut budget = available - min_available;
    for rs in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let have = spec_replicas(rs);
        if have == 0 {
            continue;
        }
        let down = have.min(budget);
        scale(store, rs, have - down, limits)?;
        budget -= down;
    }
    Ok(())
}

/// Recreate: every old pod gone before the new ReplicaSet scales up.
fn recreate(
    store: &Store,
    new: &mut Value,
    old: &mut [Value],
    limits: Limits,
) -> Result<(), ControllerError> {
    let mut waiting = false;
    for rs in old.iter_mut() {
        if spec_replicas(rs) > 0 {
            scale(store, rs, 0, limits)?;
            waiting = true;
        }
        if status_count(rs, "replicas") > 0 {
            waiting = true;
        }
    }
    if !waiting && spec_replicas(new) != limits.replicas {
        scale(store, new, limits.replicas, limits)?;
    }
    Ok(())
}

/// Deletes the oldest fully scaled-down old ReplicaSets beyond
/// `revisionHistoryLimit`.
fn cleanup_history(store: &Store, d: &Value, old: &[Value]) -> Result<(), ControllerError> {
    let limit = i64_at(d, "/spec/revisionHistoryLimit").unwrap_or(10).max(0);
    let excess = old.len() as i64 - limit;
    if excess <= 0 {
        return Ok(());
    }
    let mut by_revision: Vec<&Value> = old.iter().collect();
    by_revision.sort_by_key(|rs| revision_of(rs));
    let mut deleted = 0;
    for rs in by_revision {
        if deleted >= excess {
            break;
        }
        let generation = i64_at(rs, "/metadata/generation").unwrap_or(0);
        let observed = i64_at(rs, "/status/observedGeneration").unwrap_or(0);
        if spec_replicas(rs) != 0 || status_count(rs, "replicas") != 0 || generation > observed {
            continue;
        }
        match store.delete(&REPLICASETS, namespace(rs), name(rs)) {
            Ok(_) | Err(StoreError::NotFound { .. }) => deleted += 1,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image}]}})
    }

    #[test]
    fn hash_is_stable_ignores_the_hash_label_and_uses_the_safe_alphabet() {
        let a = pod_template_hash(&template("web:v1"), None);
        let mut labelled = template("web:v1");
        labelled["metadata"]["labels"][POD_TEMPLATE_HASH] = json!(a.clone());
        assert_eq!(pod_template_hash(&labelled, None), a);
        assert_ne!(pod_template_hash(&template("web:v2"), None), a);
        assert_ne!(pod_template_hash(&template("web:v1"), Some(1)), a);
        // What `kubectl rollout undo` sends back is the same template.
        let mut from_kubectl = template("web:v1");
        from_kubectl["metadata"]["creationTimestamp"] = Value::Null;
        from_kubectl["spec"]["containers"][0]["resources"] = serde_json::json!({});
        assert_eq!(pod_template_hash(&from_kubectl, None), a);
        assert_eq!(
            template_without_hash(&from_kubectl),
            template_without_hash(&template("web:v1"))
        );
        assert!(a.len() >= 6 && a.len() <= 10, "{a}");
        assert!(a
            .bytes()
            .all(|b| b"bcdfghjklmnpqrstvwxz2456789".contains(&b)));
    }

    #[test]
    fn defaults_fill_what_the_api_server_would() {
        let mut d = json!({"spec": {"template": template("web:v1")}});
        assert!(apply_deployment_defaults(&mut d));
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert!(!apply_deployment_defaults(&mut d));
        let mut r = json!({"spec": {"strategy": {"type": "Recreate"}}});
        apply_deployment_defaults(&mut r);
        assert!(r["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn conditions_keep_their_timestamps_unless_they_change() {
        let mut cs = Vec::new();
        set_condition(
            &mut cs,
            "Available",
            ("True", "MinimumReplicasAvailable", "m"),
            "t1",
            false,
        );
        set_condition(
            &mut cs,
            "Available",
            ("True", "MinimumReplicasAvailable", "m"),
            "t2",
            false,
        );
        assert_eq!(cs[0]["lastUpdateTime"], "t1");
        set_condition(&mut cs, "Available", ("True", "Other", "m"), "t3", false);
        assert_eq!(cs[0]["lastUpdateTime"], "t3");
        assert_eq!(cs[0]["lastTransitionTime"], "t1");
    }
}
