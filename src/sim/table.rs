//! Server-side printing: the `meta.k8s.io/v1 Table` that `kubectl get`
//! asks for, with the columns and cell values the real API server's
//! printers produce (so `kubectl get pods` shows `CrashLoopBackOff`). It
//! must never change an object, only describe it.

use serde_json::{json, Value};

use super::store::{
    Kind, CONFIGMAPS, CORE_EVENTS, DEPLOYMENTS, EVENTS_V1, LEASES, NAMESPACES, PODS, REPLICASETS,
    SECRETS,
};
use crate::k8s::selector::Selector;

/// What each row's `object` carries (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn from_query(v: Option<&str>) -> Self {
        match v {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let params: Vec<&str> = part.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.contains(&"g=meta.k8s.io")
    })
}

struct Column {
    name: &'static str,
    kind: &'static str,
    format: &'static str,
    priority: u8,
    description: &'static str,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column {
        name,
        kind,
        format: "",
        priority,
        description: "",
    }
}

const NAME: Column = Column {
    name: "Name",
    kind: "string",
    format: "name",
    priority: 0,
    description: "Name must be unique within a namespace. Cannot be updated.",
};
const AGE: Column = Column {
    name: "Age",
    kind: "string",
    format: "",
    priority: 0,
    description: "CreationTimestamp is a timestamp representing the server time when this object was created.",
};

fn columns(kind: &Kind) -> Vec<Column> {
    if *kind == DEPLOYMENTS {
        vec![
            NAME,
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    } else if *kind == REPLICASETS {
        vec![
            NAME,
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            AGE,
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ]
    } else if *kind == PODS {
        vec![
            NAME,
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            AGE,
            col("IP", "string", 1),
            col("Node", "string", 1),
            col("Nominated Node", "string", 1),
            col("Readiness Gates", "string", 1),
        ]
    } else if *kind == NAMESPACES {
        vec![NAME, col("Status", "string", 0), AGE]
    } else if *kind == CONFIGMAPS {
        vec![NAME, col("Data", "string", 0), AGE]
    } else if *kind == SECRETS {
        vec![
            NAME,
            col("Type", "string", 0),
            col("Data", "string", 0),
            AGE,
        ]
    } else if *kind == CORE_EVENTS || *kind == EVENTS_V1 {
        vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ]
    } else if *kind == LEASES {
        vec![NAME, col("Holder", "string", 0), AGE]
    } else {
        vec![NAME, AGE]
    }
}

fn s<'a>(obj: &'a Value, ptr: &str) -> &'a str {
    obj.pointer(ptr).and_then(Value::as_str).unwrap_or("")
}

fn n(obj: &Value, ptr: &str) -> i64 {
    obj.pointer(ptr).and_then(Value::as_i64).unwrap_or(0)
}

fn cells(kind: &Kind, obj: &Value, now: jiff::Timestamp) -> Vec<Value> {
    let name = s(obj, "/metadata/name");
    let age = since(s(obj, "/metadata/creationTimestamp"), now);
    if *kind == DEPLOYMENTS || *kind == REPLICASETS {
        let desired = obj
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let containers = obj
            .pointer("/spec/template/spec/containers")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let names: Vec<&str> = containers
            .iter()
            .map(|c| c.get("name").and_then(Value::as_str).unwrap_or(""))
            .collect();
        let images: Vec<&str> = containers
            .iter()
            .map(|c| c.get("image").and_then(Value::as_str).unwrap_or(""))
            .collect();
        let selector = obj
            .pointer("/spec/selector")
            .map(|sel| {
                Selector::from_label_selector_json(sel)
                    .map(|s| s.to_string())
                    .unwrap_or_else(|_| "<error>".into())
            })
            .unwrap_or_else(|| "<none>".into());
        let selector = if selector.is_empty() {
            "<none>".to_string()
        } else {
            selector
        };
        let ready = n(obj, "/status/readyReplicas");
        if *kind == DEPLOYMENTS {
            vec![
                json!(name),
                json!(format!("{ready}/{desired}")),
                json!(n(obj, "/status/updatedReplicas")),
                json!(n(obj, "/status/availableReplicas")),
                json!(age),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(selector),
            ]
        } else {
            vec![
                json!(name),
                json!(desired),
                json!(n(obj, "/status/replicas")),
                json!(ready),
                json!(age),
                json!(names.join(",")),
                json!(images.join(",")),
                json!(selector),
            ]
        }
    } else if *kind == PODS {
        let p = pod_row(obj, now);
        vec![
            json!(name),
            json!(format!("{}/{}", p.ready, p.total)),
            json!(p.reason),
            json!(p.restarts),
            json!(age),
            json!(none_if_empty(s(obj, "/status/podIP"))),
            json!(none_if_empty(s(obj, "/spec/nodeName"))),
            json!(none_if_empty(s(obj, "/status/nominatedNodeName"))),
            json!("<none>"),
        ]
    } else if *kind == NAMESPACES {
        let phase = match s(obj, "/status/phase") {
            "" => "Active",
            p => p,
        };
        vec![json!(name), json!(phase), json!(age)]
    } else if *kind == CONFIGMAPS || *kind == SECRETS {
        let count = |f: &str| {
            obj.get(f)
                .and_then(Value::as_object)
                .map(|m| m.len())
                .unwrap_or(0)
        };
        let data = count("data") + count("binaryData");
        if *kind == SECRETS {
            let t = match s(obj, "/type") {
                "" => "Opaque",
                t => t,
            };
            vec![json!(name), json!(t), json!(data), json!(age)]
        } else {
            vec![json!(name), json!(data), json!(age)]
        }
    } else if *kind == CORE_EVENTS || *kind == EVENTS_V1 {
        // A repeated Event of the new API counts in its series.
        let last = [
            "/series/lastObservedTime",
            "/lastTimestamp",
            "/eventTime",
            "/deprecatedLastTimestamp",
            "/metadata/creationTimestamp",
        ]
        .iter()
        .map(|p| s(obj, p))
        .find(|t| !t.is_empty())
        .unwrap_or("");
        let (okind, oname) = if *kind == EVENTS_V1 {
            (s(obj, "/regarding/kind"), s(obj, "/regarding/name"))
        } else {
            (
                s(obj, "/involvedObject/kind"),
                s(obj, "/involvedObject/name"),
            )
        };
        let message = if *kind == EVENTS_V1 {
            s(obj, "/note")
        } else {
            s(obj, "/message")
        };
        vec![
            json!(since(last, now)),
            json!(s(obj, "/type")),
            json!(s(obj, "/reason")),
            json!(format!("{}/{oname}", okind.to_ascii_lowercase())),
            json!(message),
        ]
    } else if *kind == LEASES {
        vec![
            json!(name),
            json!(s(obj, "/spec/holderIdentity")),
            json!(age),
        ]
    } else {
        vec![json!(name), json!(age)]
    }
}

fn none_if_empty(v: &str) -> &str {
    if v.is_empty() {
        "<none>"
    } else {
        v
    }
}

struct PodRow {
    ready: usize,
    total: usize,
    reason: String,
    restarts: String,
}

/// What the real pod printer computes for READY, STATUS and RESTARTS.
fn pod_row(pod: &Value, now: jiff::Timestamp) -> PodRow {
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(Vec::len)
        .unwrap_or(0);
    let mut reason = s(pod, "/status/phase").to_string();
    if !s(pod, "/status/reason").is_empty() {
        reason = s(pod, "/status/reason").to_string();
    }
    let mut restarts = 0;
    let mut ready = 0;
    let mut last_restart: Option<String> = None;
    let mut note_restart = |c: &Value| {
        let finished = s(c, "/lastState/terminated/finishedAt");
        if !finished.is_empty() && last_restart.as_deref().is_none_or(|l| finished > l) {
            last_restart = Some(finished.to_string());
        }
    };

    let mut initializing = false;
    let init = pod
        .pointer("/status/initContainerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let init_total = init.len();
    for (i, c) in init.iter().enumerate() {
        restarts += n(c, "/restartCount");
        note_restart(c);
        if s(c, "/state/terminated/reason") == "Completed"
            || (c.pointer("/state/terminated").is_some() && n(c, "/state/terminated/exitCode") == 0)
        {
            continue;
        }
        initializing = true;
        let waiting = s(c, "/state/waiting/reason");
        reason = if c.pointer("/state/terminated").is_some() {
            match s(c, "/state/terminated/reason") {
                "" => format!("Init:ExitCode:{}", n(c, "/state/terminated/exitCode")),
                r => format!("Init:{r}"),
            }
        } else if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{init_total}")
        };
        break;
    }

    if !initializing {
        restarts = 0;
        let mut has_running = false;
        let statuses = pod
            .pointer("/status/containerStatuses")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for c in statuses.iter().rev() {
            restarts += n(c, "/restartCount");
            note_restart(c);
            let waiting = s(c, "/state/waiting/reason");
            let terminated = c.pointer("/state/terminated");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if let Some(t) = terminated {
                reason = match s(t, "/reason") {
                    "" if n(t, "/signal") != 0 => format!("Signal:{}", n(t, "/signal")),
                    "" => format!("ExitCode:{}", n(t, "/exitCode")),
                    r => r.to_string(),
                };
            } else if c.get("ready").and_then(Value::as_bool) == Some(true)
                && c.pointer("/state/running").is_some()
            {
                has_running = true;
                ready += 1;
            }
        }
        if reason == "Completed" && has_running {
            let pod_ready = pod
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| s(c, "/type") == "Ready" && s(c, "/status") == "True")
                });
            reason = if pod_ready { "Running" } else { "NotReady" }.into();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = if s(pod, "/status/reason") == "NodeLost" {
            "Unknown".into()
        } else {
            "Terminating".into()
        };
    }
    let restarts = match last_restart {
        Some(at) if restarts != 0 => format!("{restarts} ({} ago)", since(&at, now)),
        _ => restarts.to_string(),
    };
    PodRow {
        ready,
        total,
        reason,
        restarts,
    }
}

/// `translateTimestampSince`: "<unknown>" or a short human duration.
fn since(ts: &str, now: jiff::Timestamp) -> String {
    let Ok(t) = ts.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = now.as_second() - t.as_second();
    human_duration(secs.max(0))
}

/// `k8s.io/apimachinery/pkg/util/duration.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let minutes = secs / 60;
    let hours = secs / 3600;
    if secs < 120 {
        format!("{secs}s")
    } else if minutes < 10 {
        match secs % 60 {
            0 => format!("{minutes}m"),
            s => format!("{minutes}m{s}s"),
        }
    } else if minutes < 180 {
        format!("{minutes}m")
    } else if hours < 8 {
        match minutes % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        match (hours / 24) % 365 {
            0 => format!("{}y", hours / 24 / 365),
            d => format!("{}y{d}d", hours / 24 / 365),
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// A Table of `items` for `kind`, at `resource_version`.
pub fn table(
    kind: &Kind,
    items: &[Value],
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    let now = jiff::Timestamp::now();
    let column_definitions: Vec<Value> = columns(kind)
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": c.format,
                "description": c.description,
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = items
        .iter()
        .map(|obj| {
            let mut row = json!({"cells": cells(kind, obj, now)});
            match include {
                IncludeObject::None => {}
                IncludeObject::Object => row["object"] = obj.clone(),
                IncludeObject::Metadata => {
                    row["object"] = json!({
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
                    })
                }
            }
            row
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod_status(status: Value) -> String {
        let pod = json!({
            "metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "app"}]},
            "status": status,
        });
        pod_row(&pod, jiff::Timestamp::now()).reason
    }

    #[test]
    fn pod_status_column_follows_the_real_printer() {
        let cases = [
            (json!({"phase": "Pending"}), "Pending"),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}]}),
                "Running",
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "ready": false, "restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff"}}, "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "finishedAt": "2020-01-01T00:00:00Z"}}}]}),
                "CrashLoopBackOff",
            ),
            (
                json!({"phase": "Pending", "containerStatuses": [{"name": "app", "state": {"waiting": {"reason": "ImagePullBackOff"}}}]}),
                "ImagePullBackOff",
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}),
                "OOMKilled",
            ),
            (
                json!({"phase": "Running", "containerStatuses": [{"name": "app", "state": {"terminated": {"exitCode": 2}}}]}),
                "ExitCode:2",
            ),
        ];
        for (status, want) in cases {
            assert_eq!(pod_status(status.clone()), want, "{status}");
        }
    }

    #[test]
    fn durations_print_like_kubectl() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (150, "2m30s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (30 * 3600, "30h"),
            (3 * 86400 + 3600, "3d1h"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn table_accept_header_is_recognised() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
