//! The simulated cluster, controllers and all, as an SRE sees it through the
//! real kubectl during an incident: `get deploy`, `set image`, `rollout
//! status`, `rollout history`, `rollout undo` and `annotate` behave as they
//! do against a real cluster, crash loops show in `get pods`, and a rollout
//! that cannot finish hits its progress deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams};
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_NAMESPACE};

mod support;
use support::kubectl::{header, kubectl, kubectl_ok, require_kubectl};

const DEPLOY: &str = "deploy/kailash-kaizen";

/// A seeded sim at 20x, with the seeded Deployment fully rolled out.
async fn seeded_sim() -> SimCluster {
    let sim = SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    wait_rolled_out(&sim, "kailash-kaizen:v1").await;
    sim
}

async fn deployments(sim: &SimCluster) -> Api<Deployment> {
    Api::namespaced(sim.client().await.expect("client"), SEED_NAMESPACE)
}

fn annotation(meta: &kube::api::ObjectMeta, key: &str) -> Option<String> {
    meta.annotations.as_ref().and_then(|a| a.get(key).cloned())
}

/// Waits (bounded) until the Deployment runs `want` on every replica.
async fn wait_rolled_out(sim: &SimCluster, want: &str) {
    let api = deployments(sim).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = api.get(SEED_DEPLOYMENT).await.expect("get deployment");
        let status = d.status.clone().unwrap_or_default();
        let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        if first_image(&d) == want
            && status.observed_generation >= d.metadata.generation
            && status.updated_replicas == Some(replicas)
            && status.available_replicas == Some(replicas)
            && status.replicas == Some(replicas)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{want} never rolled out: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `(revision, image)` of every ReplicaSet of the seeded Deployment, sorted.
async fn revisions(sim: &SimCluster) -> Vec<(i64, String)> {
    let rs: Api<ReplicaSet> = Api::namespaced(sim.client().await.expect("client"), SEED_NAMESPACE);
    let mut out: Vec<(i64, String)> = rs
        .list(&ListParams::default().labels("app=kailash-kaizen"))
        .await
        .expect("list rs")
        .items
        .iter()
        .map(|r| {
            let rev = annotation(&r.metadata, "deployment.kubernetes.io/revision")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let img = r
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone())
                .unwrap_or_default();
            (rev, img)
        })
        .collect();
    out.sort();
    out
}

/// The REVISION column of `kubectl rollout history`.
fn history_revisions(out: &str) -> Vec<i64> {
    out.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|w| w.parse().ok())
        .collect()
}

#[tokio::test]
async fn get_deploy_shows_the_seeded_service_ready() {
    require_kubectl();
    let sim = seeded_sim().await;
    let out = kubectl_ok(&sim, &["-n", SEED_NAMESPACE, "get", "deploy"]).await;
    assert_eq!(
        header(&out),
        ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "{out}"
    );
    let row: Vec<&str> = out
        .lines()
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..4], ["kailash-kaizen", "3/3", "3", "3"], "{out}");

    let all = kubectl_ok(&sim, &["get", "deploy,rs,pods", "-A"]).await;
    assert!(all.contains("deployment.apps/kailash-kaizen"), "{all}");
    assert!(all.contains("replicaset.apps/kailash-kaizen-"), "{all}");
    assert_eq!(
        all.lines()
            .filter(|l| l.contains("pod/kailash-kaizen-") && l.contains("Running"))
            .count(),
        3,
        "{all}"
    );
}

#[tokio::test]
async fn set_image_rolls_out_and_undo_returns_the_template_as_revision_max_plus_one() {
    require_kubectl();
    let sim = seeded_sim().await;
    let ns = ["-n", SEED_NAMESPACE];

    let out = kubectl_ok(
        &sim,
        &[&ns[..], &["set", "image", DEPLOY, "app=kailash-kaizen:v2"]].concat(),
    )
    .await;
    assert_eq!(out.trim(), "deployment.apps/kailash-kaizen image updated");
    let out = kubectl_ok(
        &sim,
        &[&ns[..], &["rollout", "status", DEPLOY, "--timeout=60s"]].concat(),
    )
    .await;
    assert!(
        out.trim_end()
            .ends_with("deployment \"kailash-kaizen\" successfully rolled out"),
        "{out}"
    );
    // rollout status returns only once the new revision is fully available.
    let d = deployments(&sim)
        .await
        .get(SEED_DEPLOYMENT)
        .await
        .expect("get");
    let status = d.status.clone().unwrap_or_default();
    assert_eq!(first_image(&d), "kailash-kaizen:v2");
    assert_eq!(
        (status.updated_replicas, status.available_replicas),
        (Some(3), Some(3))
    );

    let out = kubectl_ok(&sim, &[&ns[..], &["rollout", "history", DEPLOY]].concat()).await;
    assert!(
        out.contains("REVISION") && out.contains("CHANGE-CAUSE"),
        "{out}"
    );
    assert_eq!(history_revisions(&out), [1, 2], "{out}");

    let out = kubectl_ok(&sim, &[&ns[..], &["rollout", "undo", DEPLOY]].concat()).await;
    assert_eq!(out.trim(), "deployment.apps/kailash-kaizen rolled back");
    wait_rolled_out(&sim, "kailash-kaizen:v1").await;
    // As in a real cluster: v1's ReplicaSet is reused and becomes revision 3;
    // revision 1 is gone from the history.
    assert_eq!(
        revisions(&sim).await,
        [
            (2, "kailash-kaizen:v2".to_string()),
            (3, "kailash-kaizen:v1".to_string())
        ]
    );
    let d = deployments(&sim)
        .await
        .get(SEED_DEPLOYMENT)
        .await
        .expect("get");
    assert_eq!(
        annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("3")
    );
    let out = kubectl_ok(&sim, &[&ns[..], &["rollout", "history", DEPLOY]].concat()).await;
    assert_eq!(history_revisions(&out), [2, 3], "{out}");

    let out = kubectl_ok(
        &sim,
        &[
            &ns[..],
            &["annotate", DEPLOY, "rollback-watchdog.io/enabled=true"],
        ]
        .concat(),
    )
    .await;
    assert_eq!(out.trim(), "deployment.apps/kailash-kaizen annotated");
    let d = deployments(&sim)
        .await
        .get(SEED_DEPLOYMENT)
        .await
        .expect("get");
    assert_eq!(
        annotation(&d.metadata, "rollback-watchdog.io/enabled").as_deref(),
        Some("true")
    );
    assert_eq!(
        annotation(&d.metadata, "deployment.kubernetes.io/revision").as_deref(),
        Some("3"),
        "annotate keeps the other annotations"
    );
}

#[tokio::test]
async fn a_crash_looping_rollout_shows_in_get_pods_and_exceeds_its_progress_deadline() {
    require_kubectl();
    let sim = seeded_sim().await;
    let ns = ["-n", SEED_NAMESPACE];
    // 30 s of sim time is 1.5 s here.
    kubectl_ok(
        &sim,
        &[
            &ns[..],
            &[
                "patch",
                DEPLOY,
                "--type=merge",
                "-p",
                r#"{"spec":{"progressDeadlineSeconds":30}}"#,
            ],
        ]
        .concat(),
    )
    .await;
    kubectl_ok(
        &sim,
        &[
            &ns[..],
            &["set", "image", DEPLOY, "app=kailash-kaizen:v2-crash"],
        ]
        .concat(),
    )
    .await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = kubectl_ok(&sim, &[&ns[..], &["get", "pods"]].concat()).await;
        assert_eq!(
            header(&out),
            ["NAME", "READY", "STATUS", "RESTARTS", "AGE"],
            "{out}"
        );
        let crashing = out.lines().any(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            cols.get(1) == Some(&"0/1") && cols.get(2) == Some(&"CrashLoopBackOff")
        });
        if crashing {
            break;
        }
        assert!(Instant::now() < deadline, "no CrashLoopBackOff in:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = kubectl(
        &sim,
        &[&ns[..], &["rollout", "status", DEPLOY, "--timeout=60s"]].concat(),
    )
    .await;
    assert!(!out.ok, "rollout status must fail: {}", out.stdout);
    assert!(
        out.stderr
            .contains("deployment \"kailash-kaizen\" exceeded its progress deadline"),
        "stderr: {}",
        out.stderr
    );
    let d = deployments(&sim)
        .await
        .get(SEED_DEPLOYMENT)
        .await
        .expect("get");
    let progressing = d
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Progressing")
        .expect("a Progressing condition");
    assert_eq!(progressing.status, "False");
    assert_eq!(
        progressing.reason.as_deref(),
        Some("ProgressDeadlineExceeded")
    );
    // The old revision keeps serving: the rolling update never took it down.
    let ready = kubectl_ok(&sim, &[&ns[..], &["get", "pods"]].concat()).await;
    assert!(
        ready
            .lines()
            .filter(|l| l.contains(" 1/1 ") && l.contains("Running"))
            .count()
            >= 2,
        "{ready}"
    );
}
