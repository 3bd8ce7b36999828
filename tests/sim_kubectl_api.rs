//! The real kubectl against the simulated API server: discovery, tables,
//! the protobuf bodies of `kubectl create`, strategic merge from
//! `kubectl set image`, and the JSON patch of `kubectl rollout undo`.
//! Skipped, saying so, only when /usr/bin/kubectl is not installed.

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use rollback_watchdog::sim::{SimCluster, SimOptions};

mod support;
use serde_json::json;
use support::kubectl::{header, kubectl, kubectl_ok, require_kubectl};

const NS: &str = "production";

async fn sim() -> SimCluster {
    // The API alone: these tests write ReplicaSets and pod statuses by
    // hand, which the controllers would otherwise reconcile away.
    SimCluster::start(SimOptions {
        seed: true,
        api_only: true,
        ..Default::default()
    })
    .await
    .expect("the sim starts")
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": format!("{name}:v1")},
                    {"name": "proxy", "image": "proxy:v1"}
                ]}
            }
        }
    }))
    .expect("a valid Deployment")
}

fn images(d: &Deployment) -> Vec<String> {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|s| {
            s.containers
                .iter()
                .map(|c| format!("{}={}", c.name, c.image.clone().unwrap_or_default()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn kubectl_lists_namespaces_and_creates_reads_and_deletes_configmaps() {
    require_kubectl();
    let sim = sim().await;
    let ns = kubectl_ok(&sim, &["get", "ns"]).await;
    assert_eq!(header(&ns), vec!["NAME", "STATUS", "AGE"]);
    assert!(ns
        .lines()
        .any(|l| l.starts_with("production") && l.contains("Active")));

    let created = kubectl_ok(
        &sim,
        &[
            "-n",
            NS,
            "create",
            "configmap",
            "settings",
            "--from-literal=a=1",
            "--from-literal=b=2",
        ],
    )
    .await;
    assert!(created.contains("configmap/settings created"), "{created}");
    let table = kubectl_ok(&sim, &["-n", NS, "get", "cm"]).await;
    assert_eq!(header(&table), vec!["NAME", "DATA", "AGE"]);
    assert!(table
        .lines()
        .any(|l| l.split_whitespace().take(2).eq(["settings", "2"])));

    let json_out = kubectl_ok(&sim, &["-n", NS, "get", "cm", "-o", "json"]).await;
    let list: serde_json::Value = serde_json::from_str(&json_out).expect("kubectl printed JSON");
    assert_eq!(list["items"][0]["data"], json!({"a": "1", "b": "2"}));
    assert_eq!(list["items"][0]["metadata"]["name"], "settings");

    let deleted = kubectl_ok(&sim, &["-n", NS, "delete", "cm", "settings"]).await;
    assert!(deleted.contains("deleted"), "{deleted}");
    let cms: Api<ConfigMap> = Api::namespaced(sim.client().await.expect("client"), NS);
    assert!(cms.get_opt("settings").await.expect("get").is_none());
    let missing = kubectl(&sim, &["-n", NS, "get", "cm", "settings"]).await;
    assert!(!missing.ok);
    assert!(missing.stderr.contains("NotFound") || missing.stderr.contains("not found"));
}

#[tokio::test]
async fn kubectl_prints_deployment_columns_annotates_and_sets_the_image() {
    require_kubectl();
    let sim = sim().await;
    let client = sim.client().await.expect("client");
    let deploys: Api<Deployment> = Api::namespaced(client, NS);
    deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");

    let table = kubectl_ok(&sim, &["-n", NS, "get", "deploy"]).await;
    assert_eq!(
        header(&table),
        vec!["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]
    );
    assert!(table.contains("0/3"), "{table}");
    let wide = kubectl_ok(&sim, &["-n", NS, "get", "deploy", "-o", "wide"]).await;
    assert!(wide.contains("CONTAINERS") && wide.contains("IMAGES") && wide.contains("SELECTOR"));
    assert!(
        wide.contains("web:v1,proxy:v1") && wide.contains("app=web"),
        "{wide}"
    );

    kubectl_ok(
        &sim,
        &["-n", NS, "annotate", "deploy", "web", "owner=payments"],
    )
    .await;
    let d = deploys.get("web").await.expect("get");
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("owner"))
            .map(String::as_str),
        Some("payments")
    );

    kubectl_ok(
        &sim,
        &["-n", NS, "set", "image", "deploy/web", "app=web:v2"],
    )
    .await;
    let d = deploys.get("web").await.expect("get");
    assert_eq!(images(&d), vec!["app=web:v2", "proxy=proxy:v1"]);
    assert_eq!(d.metadata.generation, Some(2));
    let log = sim.request_log();
    assert!(log.entries().iter().any(|e| e.verb == "patch"
        && e.content_type
            .starts_with("application/strategic-merge-patch+json")));
}

#[tokio::test]
async fn kubectl_get_pods_shows_crash_loop_back_off_from_the_pod_status() {
    require_kubectl();
    let sim = sim().await;
    let pods: Api<Pod> = Api::namespaced(sim.client().await.expect("client"), NS);
    for name in ["web-crash", "web-ok"] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "web:v2"}]}
        }))
        .expect("pod");
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create");
    }
    pods.patch_status(
        "web-crash",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "image": "web:v2", "imageID": "", "ready": false, "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                             "finishedAt": "2020-01-01T00:00:00Z"}}
            }]}}),
        ),
    )
    .await
    .expect("status");
    pods.patch_status(
        "web-ok",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"phase": "Running", "containerStatuses": [{
                "name": "app", "image": "web:v2", "imageID": "", "ready": true, "restartCount": 0,
                "state": {"running": {"startedAt": "2020-01-01T00:00:00Z"}}
            }]}}),
        ),
    )
    .await
    .expect("status");

    let table = kubectl_ok(&sim, &["-n", NS, "get", "pods"]).await;
    assert_eq!(
        header(&table),
        vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    );
    let row = |name: &str| -> Vec<String> {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    assert_eq!(row("web-crash")[1..4], ["0/1", "CrashLoopBackOff", "4"]);
    assert_eq!(row("web-ok")[1..4], ["1/1", "Running", "0"]);
    let selected = kubectl_ok(
        &sim,
        &["-n", NS, "get", "pods", "-l", "app in (web)", "-o", "name"],
    )
    .await;
    assert_eq!(selected.lines().count(), 2, "{selected}");
}

#[tokio::test]
async fn kubectl_rollout_history_and_undo_work_over_hand_made_replicasets() {
    require_kubectl();
    let sim = sim().await;
    let client = sim.client().await.expect("client");
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let rss: Api<ReplicaSet> = Api::namespaced(client, NS);
    let mut d = deployment("web");
    // The controller keeps the revision annotation on the Deployment; the
    // JSON patch kubectl sends replaces it, so it must exist.
    d.metadata.annotations = Some(
        [(
            "deployment.kubernetes.io/revision".to_string(),
            "2".to_string(),
        )]
        .into(),
    );
    let d = deploys
        .create(&PostParams::default(), &d)
        .await
        .expect("create");
    let uid = d.metadata.uid.clone().unwrap_or_default();
    // What the deployment controller would have left after two rollouts.
    for (revision, image) in [(1, "web:v1"), (2, "web:v2")] {
        let hash = format!("h{revision}");
        let rs: ReplicaSet = serde_json::from_value(json!({
            "metadata": {
                "name": format!("web-{hash}"),
                "labels": {"app": "web", "pod-template-hash": hash},
                "annotations": {"deployment.kubernetes.io/revision": revision.to_string()},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                     "uid": uid, "controller": true, "blockOwnerDeletion": true}]
            },
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": {"app": "web", "pod-template-hash": hash}},
                "template": {
                    "metadata": {"labels": {"app": "web", "pod-template-hash": hash}},
                    "spec": {"containers": [{"name": "app", "image": image}]}
                }
            }
        }))
        .expect("rs");
        rss.create(&PostParams::default(), &rs)
            .await
            .expect("create rs");
    }

    let history = kubectl_ok(&sim, &["-n", NS, "rollout", "history", "deploy/web"]).await;
    let revisions: Vec<&str> = history
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.chars().all(|c| c.is_ascii_digit()))
        .collect();
    assert_eq!(revisions, vec!["1", "2"], "{history}");

    let rs_table = kubectl_ok(&sim, &["-n", NS, "get", "rs"]).await;
    assert_eq!(
        header(&rs_table),
        vec!["NAME", "DESIRED", "CURRENT", "READY", "AGE"]
    );

    let undo = kubectl_ok(
        &sim,
        &["-n", NS, "rollout", "undo", "deploy/web", "--to-revision=1"],
    )
    .await;
    assert!(undo.contains("rolled back"), "{undo}");
    let d = deploys.get("web").await.expect("get");
    assert_eq!(images(&d), vec!["app=web:v1"]);
    let labels = d
        .spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.labels)
        .unwrap_or_default();
    assert!(
        !labels.contains_key("pod-template-hash"),
        "undo strips the hash label: {labels:?}"
    );
    assert!(sim
        .request_log()
        .entries()
        .iter()
        .any(|e| e.verb == "patch" && e.content_type.starts_with("application/json-patch+json")));
}

#[tokio::test]
async fn kubectl_auth_can_i_follows_the_access_policy() {
    require_kubectl();
    let sim = sim().await;
    let yes = kubectl(&sim, &["auth", "can-i", "patch", "deployments", "-n", NS]).await;
    assert!(
        yes.ok && yes.stdout.trim() == "yes",
        "{}{}",
        yes.stdout,
        yes.stderr
    );
    sim.access().deny(rollback_watchdog::sim::AccessRule::new(
        "patch",
        "apps",
        "deployments",
        Some(NS),
    ));
    let no = kubectl(&sim, &["auth", "can-i", "patch", "deployments", "-n", NS]).await;
    assert!(
        !no.ok && no.stdout.trim() == "no",
        "{}{}",
        no.stdout,
        no.stderr
    );
}
