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
use rollback_watchdog::sim::store::{Part, DEPLOYMENTS};
use rollback_watchdog::sim::{
    seed_deployment, Behaviour, SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_NAMESPACE,
};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

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

/// One client connection to a Service, kept alive across requests.
struct Connection(BufReader<TcpStream>);

impl Connection {
    async fn open(url: &str) -> std::io::Result<Connection> {
        let addr = url.trim_start_matches("http://");
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other(format!("connecting to {addr} timed out")))??;
        Ok(Connection(BufReader::new(stream)))
    }

    /// `GET /version` on this connection: the body's `version` and `pod`.
    async fn version(&mut self) -> Result<(String, String), String> {
        tokio::time::timeout(Duration::from_secs(5), self.get("/version"))
            .await
            .map_err(|_| "no answer in 5 s".to_string())?
            .map_err(|e| e.to_string())
            .and_then(|body| {
                let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
                Ok((field("version"), field("pod")))
            })
    }

    async fn get(&mut self, path: &str) -> std::io::Result<Vec<u8>> {
        let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\nAccept: */*\r\n\r\n");
        self.0.get_mut().write_all(request.as_bytes()).await?;
        let mut length = 0;
        let mut status = String::new();
        self.0.read_line(&mut status).await?;
        if !status.starts_with("HTTP/1.1 200") {
            return Err(std::io::Error::other(format!("answered {status:?}")));
        }
        loop {
            let mut line = String::new();
            if self.0.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.0.read_exact(&mut body).await?;
        Ok(body)
    }
}

/// `GET /version` on a fresh connection.
async fn fresh_version(url: &str) -> Result<(String, String), String> {
    let mut conn = Connection::open(url).await.map_err(|e| e.to_string())?;
    conn.version().await
}

/// Whether `web` runs `image` on all its `replicas` and nothing else.
fn rolled_out(sim: &SimCluster, image: &str, replicas: i64) -> Result<(), String> {
    let d = sim
        .store()
        .get(&DEPLOYMENTS, SEED_NAMESPACE, "web")
        .map_err(|e| e.to_string())?;
    let status = &d["status"];
    let done = d["spec"]["template"]["spec"]["containers"][0]["image"] == image
        && status["observedGeneration"] == d["metadata"]["generation"]
        && ["replicas", "updatedReplicas", "availableReplicas"]
            .iter()
            .all(|f| status[*f].as_i64().unwrap_or(0) == replicas);
    if done {
        Ok(())
    } else {
        Err(status.to_string())
    }
}

#[tokio::test]
async fn the_service_balances_connections_over_the_ready_pods_of_every_revision() {
    let sim = SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(10.0),
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let mut web = seed_deployment("web", "web:v1", 2);
    web["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    sim.store()
        .create(&DEPLOYMENTS, SEED_NAMESPACE, web)
        .expect("create web");
    let url = sim
        .service_url(SEED_NAMESPACE, "web")
        .expect("a Deployment has a Service");
    assert!(url.starts_with("http://127."), "{url}");
    assert_eq!(sim.service_url(SEED_NAMESPACE, "nothing"), None);
    eventually("web:v1 rolled out", || async {
        rolled_out(&sim, "web:v1", 2)
    })
    .await;

    // Two Ready pods: fresh connections take turns, one kept-alive
    // connection stays on its pod.
    let mut pods = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (version, pod) = fresh_version(&url).await.expect("the Service answers");
        assert_eq!(version, "v1");
        pods.insert(pod);
    }
    assert_eq!(pods.len(), 2, "fresh connections reach both pods: {pods:?}");
    let mut kept = Connection::open(&url).await.expect("connect");
    let (_, pinned) = kept.version().await.expect("first answer");
    for _ in 0..6 {
        let (_, pod) = kept.version().await.expect("a kept-alive answer");
        assert_eq!(pod, pinned, "a kept-alive connection stays on its pod");
    }
    drop(kept);

    // v2 takes 60 sim seconds (6 s here) to get Ready: while it rolls,
    // the Service routes to both revisions.
    sim.behaviours().set(
        "web:v2",
        Behaviour {
            ready_after: Duration::from_secs(60),
            ..Behaviour::default()
        },
    );
    sim.store()
        .update_with(&DEPLOYMENTS, SEED_NAMESPACE, "web", Part::Main, |d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:v2");
            Ok(())
        })
        .expect("set image web:v2");
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "only {seen:?} answered through the Service in 30 s"
        );
        if let Ok((version, _)) = fresh_version(&url).await {
            seen.insert(version);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rolled_out(&sim, "web:v2", 2).is_err(),
        "both were seen during the rollout"
    );

    eventually("web:v2 rolled out", || async {
        rolled_out(&sim, "web:v2", 2)
    })
    .await;
    for _ in 0..6 {
        let (version, _) = fresh_version(&url).await.expect("the Service answers");
        assert_eq!(version, "v2", "after the rollout only v2 serves");
    }

    // No Ready pod: the connection is refused, as kube-proxy rejects it.
    sim.store()
        .update_with(&DEPLOYMENTS, SEED_NAMESPACE, "web", Part::Main, |d| {
            d["spec"]["replicas"] = json!(0);
            Ok(())
        })
        .expect("scale to 0");
    eventually("connections refused", || async {
        match Connection::open(&url).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(e) => Err(e.to_string()),
            Ok(_) => Err("still accepted".into()),
        }
    })
    .await;
    // The address stays the Service's.
    assert_eq!(sim.service_url(SEED_NAMESPACE, "web"), Some(url));
    sim.shutdown().await;
}
