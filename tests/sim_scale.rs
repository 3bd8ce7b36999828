//! The simulated cluster at scale: 1,000 Deployments of 3 pods created
//! through the API settle to 3,000 Running pods, with pods that serve no
//! HTTP (`SimOptions::no_pod_listeners`). The full run, 10,000 Deployments
//! through `kubectl apply`, is a documented command (benches/README.md,
//! "## Scale"), too slow for every CI run.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ListParams, PostParams};
use kube::Api;
use rollback_watchdog::sim::{SimCluster, SimOptions};
use serde_json::json;

const NS: &str = "scale";
const DEPLOYMENTS: usize = 1_000;
const REPLICAS: usize = 3;

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "app:v1"}]}
            }
        }
    }))
    .expect("a valid Deployment")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_deployments_through_the_api_settle_to_running_pods_without_listeners() {
    let sim = SimCluster::start(SimOptions {
        no_pod_listeners: true,
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let client = sim.client().await.expect("a client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NS}})).expect("a Namespace"),
        )
        .await
        .expect("the namespace is created");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    // Eight writers at once, as `kubectl apply` of many files would be.
    let names: Vec<String> = (0..DEPLOYMENTS).map(|i| format!("app-{i:04}")).collect();
    let mut writers = Vec::new();
    for chunk in names.chunks(DEPLOYMENTS / 8) {
        let api = deployments.clone();
        let chunk = chunk.to_vec();
        writers.push(tokio::spawn(async move {
            for name in chunk {
                api.create(&PostParams::default(), &deployment(&name))
                    .await
                    .map_err(|e| format!("creating {name}: {e}"))?;
            }
            Ok::<(), String>(())
        }));
    }
    for w in writers {
        w.await
            .expect("a writer finishes")
            .expect("every create succeeds");
    }

    // Waits, bounded (a loaded debug build takes tens of seconds), for what
    // a user would see: every pod Running and Ready, every Deployment
    // reporting all replicas available.
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let list = pods.list(&ListParams::default()).await.expect("pods list");
        let running = list
            .items
            .iter()
            .filter(|p| {
                let status = p.status.as_ref();
                status.and_then(|s| s.phase.as_deref()) == Some("Running")
                    && status
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        let available = deployments
            .list(&ListParams::default())
            .await
            .expect("deployments list")
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.available_replicas) == Some(REPLICAS as i32)
            })
            .count();
        if running == DEPLOYMENTS * REPLICAS
            && list.items.len() == DEPLOYMENTS * REPLICAS
            && available == DEPLOYMENTS
        {
            break;
        }
        last = format!(
            "{} pods, {running} Running and Ready; {available} of {DEPLOYMENTS} Deployments available",
            list.items.len()
        );
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the sim did not settle in 5 minutes; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = last;
    // No pod listens, so there is nothing to scrape and no Service.
    assert!(sim.scrape_targets().is_empty(), "pods serve no HTTP");
    assert_eq!(sim.service_url(NS, "app-0000"), None);
    sim.shutdown().await;
}
