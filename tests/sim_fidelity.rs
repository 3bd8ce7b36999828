//! The simulated cluster behaves where the watchdog's decisions depend on
//! it as a real cluster does, checked with the real kubectl and plain TCP:
//! a Deployment's annotations reach its new ReplicaSet, an Event written
//! through either Event API shows in `kubectl get events` and `kubectl
//! describe`, and each Deployment's Service balances connections over the
//! Ready pods of every revision.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
use k8s_openapi::api::events::v1::Event as EventsV1;
use kube::api::{Api, ListParams, PostParams};
use kube::Resource;
use rollback_watchdog::report::audit::{EventPublisher, Notice, Reason};
use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_NAMESPACE};
use serde_json::Value;

mod support;
use support::kubectl::{kubectl_ok, require_kubectl};

/// A seeded sim at 20x.
async fn seeded_sim() -> SimCluster {
    SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("the sim starts")
}

/// Polls `check` every 100 ms until it returns `Some`, for at most 30 s.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) => assert!(
                Instant::now() < deadline,
                "{what} did not happen in 30 s; last seen: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `kubectl get ... -o json` as JSON.
async fn kubectl_json(sim: &SimCluster, args: &[&str]) -> Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-o", "json"]);
    let out = kubectl_ok(sim, &all).await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl {args:?}: {e}\n{out}"))
}

fn annotations(obj: &Value) -> serde_json::Map<String, Value> {
    obj.pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

/// The ReplicaSet of `app` whose revision annotation is `revision`.
async fn replicaset(sim: &SimCluster, app: &str, revision: &str) -> Result<Value, String> {
    let list = kubectl_json(
        sim,
        &[
            "-n",
            SEED_NAMESPACE,
            "get",
            "rs",
            "-l",
            &format!("app={app}"),
        ],
    )
    .await;
    list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|rs| {
            annotations(rs)
                .get("deployment.kubernetes.io/revision")
                .and_then(Value::as_str)
                == Some(revision)
        })
        .cloned()
        .ok_or_else(|| format!("no revision {revision} among {list}"))
}

const LEDGER: &str = r#"{
  "apiVersion": "apps/v1",
  "kind": "Deployment",
  "metadata": {
    "name": "ledger",
    "namespace": "production",
    "annotations": {
      "rollback-watchdog.io/irreversible": "true",
      "team.example.com/owner": "payments"
    }
  },
  "spec": {
    "replicas": 2,
    "selector": {"matchLabels": {"app": "ledger"}},
    "template": {
      "metadata": {"labels": {"app": "ledger"}},
      "spec": {"containers": [{"name": "app", "image": "ledger:v1",
        "ports": [{"containerPort": 8080}]}]}
    }
  }
}"#;

#[tokio::test]
async fn a_release_marked_irreversible_carries_the_mark_on_its_replicaset_as_on_a_real_cluster() {
    require_kubectl();
    let sim = seeded_sim().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let manifest = dir.path().join("ledger.json");
    std::fs::write(&manifest, LEDGER).expect("write the manifest");
    let manifest = manifest.to_string_lossy().into_owned();
    // `apply` leaves kubectl's last-applied record on the Deployment.
    kubectl_ok(&sim, &["apply", "-f", &manifest]).await;
    let ns = ["-n", SEED_NAMESPACE];
    let deployment = kubectl_json(&sim, &[&ns[..], &["get", "deploy", "ledger"]].concat()).await;
    assert!(
        annotations(&deployment).contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "{deployment}"
    );

    let first = eventually("revision 1", || replicaset(&sim, "ledger", "1")).await;
    let a = annotations(&first);
    assert_eq!(a["rollback-watchdog.io/irreversible"], "true", "{first}");
    assert_eq!(a["team.example.com/owner"], "payments", "{first}");
    assert_eq!(
        a["deployment.kubernetes.io/desired-replicas"], "2",
        "{first}"
    );
    assert!(
        !a.contains_key("kubectl.kubernetes.io/last-applied-configuration"),
        "apply's record is not copied: {first}"
    );

    // A new release, then an annotation added to the Deployment while it is
    // current: the new ReplicaSet gets both, the old one keeps its own.
    kubectl_ok(
        &sim,
        &[&ns[..], &["set", "image", "deploy/ledger", "app=ledger:v2"]].concat(),
    )
    .await;
    kubectl_ok(
        &sim,
        &[
            &ns[..],
            &[
                "annotate",
                "deploy/ledger",
                "team.example.com/ticket=CHG-42",
            ],
        ]
        .concat(),
    )
    .await;
    let second = eventually("revision 2 with the ticket", || async {
        let rs = replicaset(&sim, "ledger", "2").await?;
        match annotations(&rs).get("team.example.com/ticket") {
            Some(_) => Ok(rs),
            None => Err(rs.to_string()),
        }
    })
    .await;
    let a = annotations(&second);
    assert_eq!(a["team.example.com/ticket"], "CHG-42", "{second}");
    assert_eq!(a["rollback-watchdog.io/irreversible"], "true", "{second}");
    assert_eq!(a["team.example.com/owner"], "payments", "{second}");
    for skipped in [
        "kubectl.kubernetes.io/last-applied-configuration",
        "deployment.kubernetes.io/revision-history",
    ] {
        assert!(!a.contains_key(skipped), "{skipped} copied: {second}");
    }
    let first = replicaset(&sim, "ledger", "1")
        .await
        .expect("revision 1 is kept");
    assert!(
        !annotations(&first).contains_key("team.example.com/ticket"),
        "an old ReplicaSet is not synced: {first}"
    );
    sim.shutdown().await;
}

/// The rows of a kubectl table whose line contains `needle`.
fn rows_with<'a>(table: &'a str, needle: &str) -> Vec<&'a str> {
    table.lines().filter(|l| l.contains(needle)).collect()
}

#[tokio::test]
async fn the_watchdogs_events_show_in_kubectl_get_events_and_describe_deployment() {
    require_kubectl();
    let sim = seeded_sim().await;
    let client = sim.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let deployment = deployments
        .get(SEED_DEPLOYMENT)
        .await
        .expect("the seeded Deployment");

    // Written as the watchdog writes them: kube's Recorder, events.k8s.io/v1.
    let publisher = EventPublisher::new(client.clone());
    let note = "error ratio 31.2 % above the 5 % maximum on 3 ticks";
    publisher
        .publish(
            &deployment,
            &Notice {
                reason: Reason::RevisionBad,
                action: "Judge".into(),
                note: note.into(),
            },
        )
        .await
        .expect("the Event is accepted");

    let events = kubectl_ok(&sim, &["-n", SEED_NAMESPACE, "get", "events"]).await;
    let rows = rows_with(&events, "RevisionBad");
    assert_eq!(rows.len(), 1, "{events}");
    assert!(
        rows[0].contains("deployment/kailash-kaizen") && rows[0].contains(note),
        "{events}"
    );
    assert!(rows[0].contains("Warning"), "{events}");

    let described = kubectl_ok(
        &sim,
        &[
            "-n",
            SEED_NAMESPACE,
            "describe",
            "deployment",
            SEED_DEPLOYMENT,
        ],
    )
    .await;
    let section = described
        .split_once("Events:")
        .map(|(_, rest)| rest)
        .unwrap_or_else(|| panic!("no Events section:\n{described}"));
    let rows = rows_with(section, "RevisionBad");
    assert_eq!(rows.len(), 1, "{described}");
    let cells: Vec<&str> = rows[0].split_whitespace().collect();
    assert_eq!(cells[0], "Warning", "{described}");
    assert!(rows[0].contains("rollback-watchdog"), "From: {described}");
    assert!(rows[0].contains(note), "{described}");

    // An Event on another object of the same name is not this Deployment's.
    let other = ObjectReference {
        kind: Some("ReplicaSet".into()),
        name: Some(SEED_DEPLOYMENT.into()),
        namespace: Some(SEED_NAMESPACE.into()),
        ..Default::default()
    };
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    core.create(
        &PostParams::default(),
        &CoreEvent {
            metadata: kube::api::ObjectMeta {
                name: Some("someone-else.1".into()),
                ..Default::default()
            },
            involved_object: other,
            reason: Some("SomethingElse".into()),
            message: Some("not about the Deployment".into()),
            type_: Some("Normal".into()),
            ..Default::default()
        },
    )
    .await
    .expect("a core Event is accepted");
    let described = kubectl_ok(
        &sim,
        &[
            "-n",
            SEED_NAMESPACE,
            "describe",
            "deployment",
            SEED_DEPLOYMENT,
        ],
    )
    .await;
    assert!(!described.contains("SomethingElse"), "{described}");
    sim.shutdown().await;
}

#[tokio::test]
async fn an_event_written_through_core_v1_is_read_through_events_k8s_io_and_back() {
    let sim = seeded_sim().await;
    let client = sim.client().await.expect("client");
    let deployment: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let reference = deployment
        .get(SEED_DEPLOYMENT)
        .await
        .expect("the seeded Deployment")
        .object_ref(&());
    let core: Api<CoreEvent> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let written = core
        .create(
            &PostParams::default(),
            &CoreEvent {
                metadata: kube::api::ObjectMeta {
                    name: Some("kailash-kaizen.scaled".into()),
                    ..Default::default()
                },
                involved_object: reference.clone(),
                reason: Some("ScalingReplicaSet".into()),
                message: Some("Scaled up replica set kailash-kaizen-abc to 3".into()),
                type_: Some("Normal".into()),
                count: Some(4),
                source: Some(k8s_openapi::api::core::v1::EventSource {
                    component: Some("deployment-controller".into()),
                    host: None,
                }),
                ..Default::default()
            },
        )
        .await
        .expect("a core Event is accepted");

    let v1: Api<EventsV1> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let selector = format!("regarding.name={SEED_DEPLOYMENT},regarding.kind=Deployment");
    let listed = v1
        .list(&ListParams::default().fields(&selector))
        .await
        .expect("events.k8s.io list");
    assert_eq!(listed.items.len(), 1, "{:?}", listed.items);
    let seen = &listed.items[0];
    assert_eq!(seen.metadata.name.as_deref(), Some("kailash-kaizen.scaled"));
    assert_eq!(
        seen.note.as_deref(),
        Some("Scaled up replica set kailash-kaizen-abc to 3")
    );
    assert_eq!(
        seen.regarding.as_ref().and_then(|r| r.uid.clone()),
        reference.uid
    );
    assert_eq!(seen.deprecated_count, Some(4));
    assert_eq!(
        seen.deprecated_source
            .as_ref()
            .and_then(|s| s.component.as_deref()),
        Some("deployment-controller")
    );
    assert_eq!(
        seen.metadata.resource_version,
        written.metadata.resource_version
    );

    // A change through events.k8s.io shows through core/v1: one object.
    let patch = serde_json::json!({"note": "Scaled up replica set kailash-kaizen-abc to 4"});
    v1.patch(
        "kailash-kaizen.scaled",
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await
    .expect("events.k8s.io patch");
    let again = core.get("kailash-kaizen.scaled").await.expect("core get");
    assert_eq!(
        again.message.as_deref(),
        Some("Scaled up replica set kailash-kaizen-abc to 4")
    );
    v1.delete("kailash-kaizen.scaled", &Default::default())
        .await
        .expect("events.k8s.io delete");
    let left = core.list(&ListParams::default()).await.expect("core list");
    assert!(left.items.is_empty(), "{:?}", left.items);
    sim.shutdown().await;
}
