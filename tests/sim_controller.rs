//! The simulated cluster's behaviour, driven straight through the store:
//! what a user of `kubectl` would see happen to Deployments, ReplicaSets
//! and pods, and what Prometheus would scrape from the pods. Every wait is
//! bounded; nothing asserts how fast anything happens.

use std::collections::BTreeMap;
use std::time::Duration;

use rollback_watchdog::sim::behaviour::{Behaviour, Behaviours, Traffic};
use rollback_watchdog::sim::clock::SimClock;
use rollback_watchdog::sim::runtime::{spawn, ControllerHandle};
use rollback_watchdog::sim::store::{
    EventType, Part, Store, DEPLOYMENTS, NAMESPACES, PODS, REPLICASETS,
};
use serde_json::{json, Value};

mod support;
use support::eventually;

const NS: &str = "production";
fn cluster(behaviours: Behaviours) -> (Store, ControllerHandle) {
    let store = Store::default();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .unwrap();
    let handle = spawn(store.clone(), behaviours, SimClock::default());
    (store, handle)
}

fn deployment(name: &str, image: &str, replicas: i64) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "ports": [{"containerPort": 8080}]}]},
            },
        },
    })
}

fn get(store: &Store, name: &str) -> Value {
    store.get(&DEPLOYMENTS, NS, name).unwrap()
}

fn replicasets(store: &Store, deploy: &str) -> Vec<Value> {
    let d = get(store, deploy);
    let mut rss: Vec<Value> = store
        .list(&REPLICASETS, Some(NS))
        .0
        .into_iter()
        .filter(|rs| rs["metadata"]["ownerReferences"][0]["uid"] == d["metadata"]["uid"])
        .collect();
    rss.sort_by_key(revision);
    rss
}

fn revision(rs: &Value) -> i64 {
    rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn pods(store: &Store, app: &str) -> Vec<Value> {
    store
        .list(&PODS, Some(NS))
        .0
        .into_iter()
        .filter(|p| p["metadata"]["labels"]["app"] == app)
        .collect()
}

fn condition<'a>(d: &'a Value, kind: &str) -> Option<&'a Value> {
    d["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// The state `kubectl rollout status` reports as done.
fn rolled_out(d: &Value) -> Result<(), String> {
    let s = &d["status"];
    let want = &d["spec"]["replicas"];
    let done = d["metadata"]["generation"].as_i64() <= s["observedGeneration"].as_i64()
        && &s["updatedReplicas"] == want
        && &s["availableReplicas"] == want
        && &s["replicas"] == want
        && condition(d, "Progressing").is_some_and(|c| c["reason"] == "NewReplicaSetAvailable");
    if done {
        Ok(())
    } else {
        Err(s.to_string())
    }
}

fn set_image(store: &Store, name: &str, image: &str) {
    store
        .update_with(&DEPLOYMENTS, NS, name, Part::Main, |d| {
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(image);
            Ok(())
        })
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_deployment_gets_revision_1_and_ready_pods() {
    let (store, _sim) = cluster(Behaviours::builtin());
    store
        .create(&DEPLOYMENTS, NS, deployment("web", "web:v1", 3))
        .unwrap();

    let d = eventually("web rolled out", || {
        rolled_out(&get(&store, "web")).map(|_| get(&store, "web"))
    })
    .await;
    let rss = replicasets(&store, "web");
    assert_eq!(rss.len(), 1);
    let rs = &rss[0];
    let hash = rs["metadata"]["labels"]["pod-template-hash"]
        .as_str()
        .unwrap();
    assert_eq!(rs["metadata"]["name"], format!("web-{hash}"));
    assert_eq!(revision(rs), 1);
    assert_eq!(rs["metadata"]["ownerReferences"][0]["controller"], true);
    assert_eq!(
        rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"],
        hash
    );
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "1"
    );
    // Defaults the API server would have filled in.
    assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
    assert_eq!(d["spec"]["progressDeadlineSeconds"], 600);
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    let available = condition(&d, "Available").unwrap();
    assert_eq!(available["status"], "True");
    assert_eq!(available["reason"], "MinimumReplicasAvailable");
    let progressing = condition(&d, "Progressing").unwrap();
    assert_eq!(
        progressing["message"],
        format!("ReplicaSet \"web-{hash}\" has successfully progressed.")
    );

    let pods = pods(&store, "web");
    assert_eq!(pods.len(), 3);
    for p in &pods {
        assert!(p["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("web-{hash}-")));
        assert_eq!(p["status"]["phase"], "Running");
        assert_eq!(p["status"]["containerStatuses"][0]["ready"], true);
        assert!(p["status"]["podIP"].as_str().unwrap().starts_with("127."));
    }

    // Level-based and settled: a steady cluster writes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = store.revision();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store.revision(),
        settled,
        "no writes once everything is steady"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_stays_within_surge_and_undo_reuses_the_old_replicaset_as_revision_3() {
    let (store, _sim) = cluster(Behaviours::builtin());
    let mut d = deployment("web", "web:v1", 4);
    d["spec"]["strategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 1}});
    store.create(&DEPLOYMENTS, NS, d).unwrap();
    eventually("revision 1 rolled out", || rolled_out(&get(&store, "web"))).await;
    let rev1 = replicasets(&store, "web")[0].clone();
    let rollout_start = store.revision();

    store
        .update_with(&DEPLOYMENTS, NS, "web", Part::Main, |d| {
            d["metadata"]["annotations"] = json!({"kubernetes.io/change-cause": "deploy v2"});
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:v2");
            Ok(())
        })
        .unwrap();
    eventually("revision 2 rolled out", || rolled_out(&get(&store, "web"))).await;
    let rss = replicasets(&store, "web");
    assert_eq!(rss.len(), 2);
    let rev2 = &rss[1];
    assert_eq!(revision(rev2), 2);
    assert_eq!(
        rev2["metadata"]["annotations"]["kubernetes.io/change-cause"],
        "deploy v2"
    );
    assert_eq!(
        rev2["metadata"]["annotations"]["deployment.kubernetes.io/desired-replicas"],
        "4"
    );
    assert_eq!(
        rev2["metadata"]["annotations"]["deployment.kubernetes.io/max-replicas"],
        "5"
    );
    assert_eq!(
        rss[0]["spec"]["replicas"], 0,
        "the old revision is scaled to zero"
    );
    assert!(pods(&store, "web")
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "web:v2"));

    // Back to v1's template, as `kubectl rollout undo` does.
    store
        .update_with(&DEPLOYMENTS, NS, "web", Part::Main, |d| {
            d["spec"]["template"] = rev1["spec"]["template"].clone();
            if let Some(l) = d["spec"]["template"]["metadata"]["labels"].as_object_mut() {
                l.remove("pod-template-hash");
            }
            Ok(())
        })
        .unwrap();
    eventually("the undo rolled out", || {
        let d = get(&store, "web");
        rolled_out(&d)?;
        (d["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3")
            .then_some(())
            .ok_or_else(|| d["metadata"].to_string())
    })
    .await;
    let rss = replicasets(&store, "web");
    assert_eq!(rss.len(), 2, "no new ReplicaSet for a template seen before");
    assert_eq!(rss[1]["metadata"]["name"], rev1["metadata"]["name"]);
    assert_eq!(revision(&rss[1]), 3);
    assert_eq!(
        rss[1]["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );
    assert_eq!(rss[0]["spec"]["replicas"], 0);

    // Replay the store's event history: no intermediate state is missed.
    let (history, _) = store.watch_from(&PODS, 0).unwrap();
    let (mut live, mut most) = (0i64, 0i64);
    for e in history {
        match e.event_type {
            EventType::Added => live += 1,
            EventType::Deleted => live -= 1,
            EventType::Modified => {}
        }
        most = most.max(live);
    }
    assert!(
        most <= 5,
        "at most replicas + maxSurge pods at any time, saw {most}"
    );
    let (history, _) = store.watch_from(&DEPLOYMENTS, rollout_start).unwrap();
    for e in history {
        let available = e.object["status"]["availableReplicas"]
            .as_i64()
            .unwrap_or(0);
        assert!(
            available >= 3,
            "never below replicas - maxUnavailable available, saw {available}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_looping_release_shows_crashloopbackoff_and_exceeds_its_progress_deadline() {
    let (store, _sim) = cluster(Behaviours::builtin());
    let mut d = deployment("web", "web:v1", 2);
    d["spec"]["progressDeadlineSeconds"] = json!(15);
    store.create(&DEPLOYMENTS, NS, d).unwrap();
    eventually("revision 1 rolled out", || rolled_out(&get(&store, "web"))).await;
    set_image(&store, "web", "web:v2-crash");

    let crash_pod = |store: &Store| {
        pods(store, "web")
            .into_iter()
            .find(|p| p["spec"]["containers"][0]["image"] == "web:v2-crash")
    };
    let first = eventually("CrashLoopBackOff", || {
        let p = crash_pod(&store).ok_or("no v2 pod yet")?;
        let cs = &p["status"]["containerStatuses"][0];
        (cs["state"]["waiting"]["reason"] == "CrashLoopBackOff")
            .then(|| cs.clone())
            .ok_or_else(|| cs.to_string())
    })
    .await;
    assert_eq!(first["lastState"]["terminated"]["exitCode"], 1);
    assert_eq!(first["lastState"]["terminated"]["reason"], "Error");
    assert_eq!(first["ready"], false);
    let restarts = first["restartCount"].as_i64().unwrap();
    eventually("restartCount rising", || {
        let p = crash_pod(&store).ok_or("the crashing pod is gone")?;
        let now = p["status"]["containerStatuses"][0]["restartCount"]
            .as_i64()
            .unwrap_or(0);
        (now > restarts).then_some(()).ok_or(format!("{now}"))
    })
    .await;

    let d = eventually("ProgressDeadlineExceeded", || {
        let d = get(&store, "web");
        condition(&d, "Progressing")
            .filter(|c| c["reason"] == "ProgressDeadlineExceeded")
            .map(|_| d.clone())
            .ok_or_else(|| d["status"].to_string())
    })
    .await;
    let c = condition(&d, "Progressing").unwrap();
    assert_eq!(c["status"], "False");
    let new_rs = replicasets(&store, "web").pop().unwrap();
    assert_eq!(
        c["message"],
        format!(
            "ReplicaSet \"{}\" has timed out progressing.",
            new_rs["metadata"]["name"].as_str().unwrap()
        )
    );
    // The old revision keeps serving: a crash loop never takes availability below the minimum.
    assert_eq!(condition(&d, "Available").unwrap()["status"], "True");

    // Undo: back to v1, which rolls out and takes the crashing pods away.
    set_image(&store, "web", "web:v1");
    eventually("the undo rolled out", || rolled_out(&get(&store, "web"))).await;
    assert!(crash_pod(&store).is_none());
    assert_eq!(
        get(&store, "web")["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_failures_oom_kills_and_unready_pods_look_like_a_real_kubelet_reports_them() {
    let (store, _sim) = cluster(Behaviours::builtin());
    store
        .create(&DEPLOYMENTS, NS, deployment("pull", "pull:v2-pullfail", 1))
        .unwrap();
    store
        .create(&DEPLOYMENTS, NS, deployment("oom", "oom:v2-oom", 1))
        .unwrap();
    store
        .create(
            &DEPLOYMENTS,
            NS,
            deployment("unready", "unready:v2-unready", 1),
        )
        .unwrap();

    let mut reasons = Vec::new();
    eventually("ErrImagePull then ImagePullBackOff", || {
        let p = pods(&store, "pull").pop().ok_or("no pod")?;
        let reason = p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"].clone();
        assert_eq!(p["status"]["phase"], "Pending");
        if reasons.last() != Some(&reason) {
            reasons.push(reason);
        }
        (reasons.contains(&json!("ErrImagePull")) && reasons.contains(&json!("ImagePullBackOff")))
            .then_some(())
            .ok_or(format!("{reasons:?}"))
    })
    .await;

    eventually("OOMKilled then CrashLoopBackOff", || {
        let p = pods(&store, "oom").pop().ok_or("no pod")?;
        let cs = &p["status"]["containerStatuses"][0];
        let ok = cs["lastState"]["terminated"]["reason"] == "OOMKilled"
            && cs["lastState"]["terminated"]["exitCode"] == 137
            && cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
            && cs["restartCount"].as_i64() >= Some(1);
        ok.then_some(()).ok_or_else(|| cs.to_string())
    })
    .await;

    let p = eventually("the unready pod running", || {
        let p = pods(&store, "unready").pop().ok_or("no pod")?;
        (p["status"]["phase"] == "Running")
            .then_some(p.clone())
            .ok_or_else(|| p["status"].to_string())
    })
    .await;
    // Well past its ready delay, still not ready.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = store
        .get(&PODS, NS, p["metadata"]["name"].as_str().unwrap())
        .unwrap();
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(p["status"]["containerStatuses"][0]["started"], true);
    let ready = p["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "ContainersNotReady");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_deployment_does_not_roll_until_resumed() {
    let (store, _sim) = cluster(Behaviours::builtin());
    store
        .create(&DEPLOYMENTS, NS, deployment("web", "web:v1", 2))
        .unwrap();
    eventually("revision 1 rolled out", || rolled_out(&get(&store, "web"))).await;
    store
        .update_with(&DEPLOYMENTS, NS, "web", Part::Main, |d| {
            d["spec"]["paused"] = json!(true);
            d["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:v2");
            Ok(())
        })
        .unwrap();
    eventually("the pause observed", || {
        let d = get(&store, "web");
        condition(&d, "Progressing")
            .filter(|c| c["reason"] == "DeploymentPaused")
            .map(|_| ())
            .ok_or_else(|| d["status"].to_string())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        replicasets(&store, "web").len(),
        1,
        "no new ReplicaSet while paused"
    );
    assert!(pods(&store, "web")
        .iter()
        .all(|p| p["spec"]["containers"][0]["image"] == "web:v1"));

    store
        .update_with(&DEPLOYMENTS, NS, "web", Part::Main, |d| {
            d["spec"]["paused"] = json!(false);
            Ok(())
        })
        .unwrap();
    eventually("v2 rolled out after resume", || {
        let d = get(&store, "web");
        rolled_out(&d)?;
        (replicasets(&store, "web").len() == 2)
            .then_some(())
            .ok_or("one ReplicaSet".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revision_history_limit_prunes_the_oldest_replicasets() {
    let (store, _sim) = cluster(Behaviours::builtin());
    let mut d = deployment("web", "web:v1", 1);
    d["spec"]["revisionHistoryLimit"] = json!(1);
    store.create(&DEPLOYMENTS, NS, d).unwrap();
    for v in ["v1", "v2", "v3", "v4"] {
        set_image(&store, "web", &format!("web:{v}"));
        eventually(&format!("{v} rolled out"), || {
            rolled_out(&get(&store, "web"))
        })
        .await;
    }
    let rss = eventually("old revisions pruned", || {
        let rss = replicasets(&store, "web");
        (rss.len() == 2)
            .then_some(rss.clone())
            .ok_or(format!("{} ReplicaSets", rss.len()))
    })
    .await;
    let revisions: Vec<i64> = rss.iter().map(revision).collect();
    assert_eq!(revisions, vec![3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_deployment_garbage_collects_its_replicasets_and_pods() {
    let (store, sim) = cluster(Behaviours::builtin());
    store
        .create(&DEPLOYMENTS, NS, deployment("web", "web:v1", 2))
        .unwrap();
    store
        .create(&DEPLOYMENTS, NS, deployment("other", "other:v1", 1))
        .unwrap();
    eventually("both rolled out", || {
        rolled_out(&get(&store, "web"))?;
        rolled_out(&get(&store, "other"))
    })
    .await;
    store.delete(&DEPLOYMENTS, NS, "web").unwrap();
    eventually("web's ReplicaSets, pods and scrape targets gone", || {
        let rs_left = store
            .list(&REPLICASETS, Some(NS))
            .0
            .iter()
            .filter(|rs| {
                rs["metadata"]["name"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("web-")
            })
            .count();
        let pods_left = pods(&store, "web").len();
        let targets_left = sim
            .scrape_targets()
            .iter()
            .filter(|t| t.labels.get("deployment").map(String::as_str) == Some("web"))
            .count();
        (rs_left + pods_left + targets_left == 0)
            .then_some(())
            .ok_or(format!(
                "{rs_left} ReplicaSets, {pods_left} pods, {targets_left} targets"
            ))
    })
    .await;
    assert_eq!(
        pods(&store, "other").len(),
        1,
        "other Deployments keep their pods"
    );
}

/// Parses one sample of the Prometheus text format.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// `histogram_quantile` as Prometheus computes it, over one scrape.
fn quantile(text: &str, q: f64) -> f64 {
    let buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("http_request_duration_seconds_bucket{le=\""))
        .filter_map(|rest| {
            let (le, count) = rest.split_once("\"} ")?;
            Some((
                le.parse().unwrap_or(f64::INFINITY),
                count.trim().parse().ok()?,
            ))
        })
        .collect();
    let total = buckets.last().unwrap().1;
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            return prev.0 + (le - prev.0) * (rank - prev.1) / (count - prev.1);
        }
        prev = (le, count);
    }
    f64::NAN
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_pod_serves_metrics_health_and_version_as_its_image_behaves() {
    let behaviours = Behaviours::builtin();
    // Exact counts: this test measures the shapes themselves (ratio within
    // 1 %, the p95 ratio within 0.1), which sampling noise would blur.
    let fast = Behaviour {
        request_rate: 2000.0,
        traffic: Traffic::Exact,
        ..Behaviour::default()
    };
    behaviours.set(
        "shop:v1",
        Behaviour {
            error_ratio: 0.01,
            ..fast.clone()
        },
    );
    behaviours.set(
        "shop:v2",
        Behaviour {
            error_ratio: 0.3,
            latency: Duration::from_millis(80),
            health_status: 500,
            ..fast
        },
    );
    let (store, sim) = cluster(behaviours.clone());
    store
        .create(&DEPLOYMENTS, NS, deployment("good", "shop:v1", 1))
        .unwrap();
    store
        .create(&DEPLOYMENTS, NS, deployment("bad", "shop:v2", 1))
        .unwrap();
    eventually("both rolled out", || {
        rolled_out(&get(&store, "good"))?;
        rolled_out(&get(&store, "bad"))
    })
    .await;
    let targets = eventually("two scrape targets", || {
        let t = sim.scrape_targets();
        (t.len() == 2).then_some(t.clone()).ok_or(format!("{t:?}"))
    })
    .await;
    let sd = sim.scrape_targets_json();
    assert_eq!(sd.as_array().unwrap().len(), 2);
    let by_deploy: BTreeMap<String, _> = targets
        .iter()
        .map(|t| (t.labels["deployment"].clone(), t.clone()))
        .collect();
    for (deploy, t) in &by_deploy {
        let pod = store.get(&PODS, NS, &t.labels["pod"]).unwrap();
        assert_eq!(
            pod["status"]["podIP"],
            t.address.ip().to_string(),
            "{deploy}: the target is the pod's IP"
        );
        assert_eq!(t.address.port(), 8080);
        assert_eq!(t.labels["namespace"], NS);
        assert_eq!(
            t.labels["pod_template_hash"],
            pod["metadata"]["labels"]["pod-template-hash"]
        );
    }
    assert_ne!(
        by_deploy["good"].address.ip(),
        by_deploy["bad"].address.ip()
    );

    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // Let a few hundred requests accumulate (in sim arithmetic, not real traffic).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let mut p95 = BTreeMap::new();
    for (deploy, want_ratio, want_median) in [("good", 0.01, 0.05), ("bad", 0.3, 0.08)] {
        let base = format!("http://{}", by_deploy[deploy].address);
        let text = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let ok = sample(&text, "http_requests_total{code=\"200\"}");
        let errors = sample(&text, "http_requests_total{code=\"500\"}");
        let total = sample(&text, "http_request_duration_seconds_count");
        assert!(total > 500.0, "{deploy}: {total} requests");
        assert!(((ok + errors) - total).abs() <= 2.0);
        let ratio = errors / total;
        assert!(
            (ratio - want_ratio).abs() < 0.01,
            "{deploy}: error ratio {ratio}"
        );
        let median = quantile(&text, 0.5);
        assert!(
            (median / want_median - 1.0).abs() < 0.06,
            "{deploy}: median {median}"
        );
        p95.insert(deploy, quantile(&text, 0.95));

        let version = http
            .get(format!("{base}/version"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let tag = if deploy == "good" { "v1" } else { "v2" };
        assert!(
            version.contains(&format!("\"version\":\"{tag}\"")),
            "{version}"
        );
        let health = http
            .get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(health.as_u16(), if deploy == "good" { 200 } else { 500 });
    }
    let slowdown = p95["bad"] / p95["good"];
    assert!((slowdown - 1.6).abs() < 0.1, "p95 ratio {slowdown}");

    // A behaviour change applies to running pods at once; counters never go back.
    let before = http
        .get(format!("http://{}/metrics", by_deploy["bad"].address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    behaviours.update("shop:v2", |b| b.error_ratio = 0.0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = http
        .get(format!("http://{}/metrics", by_deploy["bad"].address))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let errors = |t: &str| sample(t, "http_requests_total{code=\"500\"}");
    assert!(errors(&after) >= errors(&before));
    assert!(
        errors(&after) - errors(&before) <= 1.0,
        "no new errors after the fix"
    );

    // A deleted pod stops serving.
    let addr = by_deploy["good"].address;
    store.delete(&DEPLOYMENTS, NS, "good").unwrap();
    eventually(
        "the deleted pod's listener closed",
        || match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Err(_) => Ok(()),
            Ok(_) => Err("still accepting".to_string()),
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreate_removes_every_old_pod_before_starting_new_ones() {
    let (store, _sim) = cluster(Behaviours::builtin());
    let mut d = deployment("web", "web:v1", 2);
    d["spec"]["strategy"] = json!({"type": "Recreate"});
    store.create(&DEPLOYMENTS, NS, d).unwrap();
    eventually("v1 rolled out", || rolled_out(&get(&store, "web"))).await;
    let start = store.revision();
    set_image(&store, "web", "web:v2");
    eventually("v2 rolled out", || rolled_out(&get(&store, "web"))).await;
    let (history, _) = store.watch_from(&PODS, start).unwrap();
    let mut old_left = 2;
    for e in history {
        let image = e.object["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or("")
            .to_string();
        match (e.event_type, image.as_str()) {
            (EventType::Deleted, "web:v1") => old_left -= 1,
            (EventType::Added, "web:v2") => {
                assert_eq!(old_left, 0, "a v2 pod started while v1 pods ran")
            }
            _ => {}
        }
    }
    assert_eq!(old_left, 0);
}
