//! The simulated cluster behaves where the watchdog's decisions depend on
//! it as a real cluster does, checked with the real kubectl and plain TCP:
//! a Deployment's annotations reach its new ReplicaSet, an Event written
//! through either Event API shows in `kubectl get events` and `kubectl
//! describe`, and each Deployment's Service balances connections over the
//! Ready pods of every revision.

use std::time::{Duration, Instant};

use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions, SEED_NAMESPACE};
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
