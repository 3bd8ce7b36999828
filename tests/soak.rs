//! Soak: the real binary watching many Deployments of a sim running fast
//! (sim time), seeded random deploys, good and bad, with API faults on.
//! No panic, memory bounded (RSS at the end within 10 % of RSS after
//! warm-up), every bad deploy rolled back, no good one, no decision twice.
//!
//! The CI form is short; the full form (see README, "Reliability"):
//! `SOAK_TARGETS=1000 SOAK_SIM_MINUTES=60 cargo test --test soak -- --nocapture`.
//! `SOAK_SCALE` (sim time per real second, default 20) and `SOAK_SEED`
//! (default 15) may be set too.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::sim::{self, Fault, FaultRule, SimClock, SimCluster, SimOptions};
use serde_json::json;

mod support;
use support::binary::{free_port, receiver, status, Running};

const NS: &str = "soak";

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> T {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What the soak did to one Deployment.
#[derive(Default, Debug)]
struct Track {
    /// The image it should end on: its last good one.
    good: String,
    bad_deploys: usize,
    good_deploys: usize,
    /// Until when no new deploy goes to it (the last one settles).
    busy_until: Option<Instant>,
}

async fn retry<T, E: std::fmt::Display, F, Fut>(what: &str, mut call: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut tries = 0;
    loop {
        match call().await {
            Ok(v) => return v,
            Err(e) => {
                tries += 1;
                assert!(tries < 100, "{what}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_hour_of_random_deploys_under_faults_keeps_every_promise() {
    let targets: usize = env_or("SOAK_TARGETS", 30);
    let sim_minutes: f64 = env_or("SOAK_SIM_MINUTES", 30.0);
    let scale: f64 = env_or("SOAK_SCALE", 20.0);
    let seed: u64 = env_or("SOAK_SEED", 15);
    let run_for = Duration::from_secs_f64(sim_minutes * 60.0 / scale);
    eprintln!("soak: {targets} targets, {sim_minutes} sim minutes at {scale}x = {run_for:?} real, seed {seed}");

    let sim = SimCluster::start(SimOptions {
        clock: SimClock::new(scale),
        behaviours: sim::Behaviours::builtin(),
        ..Default::default()
    })
    .await
    .expect("sim starts");
    let client = sim.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [NS, "rollback-watchdog"] {
        let body: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &body)
            .await
            .expect("namespace");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let mut tracks: BTreeMap<String, Track> = BTreeMap::new();
    for i in 0..targets {
        let name = format!("svc-{i}");
        let mut body = sim::seed_deployment(&name, &format!("{name}:v0"), 2);
        body["metadata"]["labels"]["soak"] = json!("true");
        let body: Deployment = serde_json::from_value(body).expect("deployment");
        deployments
            .create(&PostParams::default(), &body)
            .await
            .expect("create");
        tracks.insert(
            name.clone(),
            Track {
                good: format!("{name}:v0"),
                ..Track::default()
            },
        );
    }

    let (hook, got) = receiver().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let audit = dir.path().join("audit.jsonl");
    let port = free_port();
    let config = dir.path().join("watchdog.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[watchdog]
cluster_name = "soak"
interval = "1s"
namespace = "rollback-watchdog"
audit_log = "{audit}"
shutdown_grace = "5s"

[prometheus]
url = "http://127.0.0.1:{closed}"
timeout = "1s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:{port}"

[defaults]
watch_window = "10m"
failure_threshold = 3
cooldown = "1s"
max_rollbacks_per_window = 1000
verify_window = "2s"
rollout_timeout = "120s"
blind_alert_after = "1h"
[defaults.error_rate]
enabled = false
[defaults.latency]
enabled = false

[[targets]]
namespace = "{NS}"
selector = "soak=true"

[[notify]]
kind = "webhook"
name = "oncall"
url = "{hook}"
timeout = "2s"
deadline = "60s"
"#,
            audit = audit.display(),
            closed = free_port(),
        ),
    )
    .expect("config");
    let mut run = Running::run(
        sim.kubeconfig_path(),
        &config,
        &[("RUST_LOG", "rollback_watchdog=debug")],
    );
    let pid = run.child.id();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !status(port)
        .await
        .is_some_and(|s| s.ready && s.targets.len() == targets)
    {
        run.assert_alive();
        assert!(
            Instant::now() < deadline,
            "never watched all targets: {}",
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Faults on, as in tests/faults.rs, on the Deployment and ReplicaSet
    // reads too (the pipeline retries them).
    let f = sim.faults();
    for verb in ["get", "list"] {
        for resource in ["pods", "configmaps", "deployments", "replicasets"] {
            f.add(FaultRule::new(verb, resource, Fault::ServerError, 0.03));
            f.add(FaultRule::new(verb, resource, Fault::Timeout, 0.02));
        }
    }
    f.add(FaultRule::new(
        "create",
        "configmaps",
        Fault::ServerError,
        0.05,
    ));
    for resource in ["pods", "configmaps", "events"] {
        let throttled = Fault::TooManyRequests {
            retry_after_secs: 1,
        };
        f.add(FaultRule::new("*", resource, throttled, 0.02));
    }
    f.add(FaultRule::new(
        "*",
        "*",
        Fault::Slow(Duration::from_millis(200)),
        0.05,
    ));
    f.add(FaultRule::new(
        "watch",
        "*",
        Fault::DropWatch(Duration::from_secs(5)),
        0.2,
    ));
    f.add(FaultRule::new("watch", "*", Fault::Gone, 0.05));

    let (pp, lp) = (PatchParams::default(), kube::api::ListParams::default());
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let warm_up = started + run_for / 3;
    let mut rss_warm = None;
    let mut version = 0u64;
    let names: Vec<String> = tracks.keys().cloned().collect();
    while started.elapsed() < run_for {
        run.assert_alive();
        if rss_warm.is_none() && Instant::now() >= warm_up {
            rss_warm = Some(rss_kib(pid));
        }
        let name = &names[rng.random_range(0..names.len())];
        let t = tracks.get_mut(name).expect("tracked");
        if t.busy_until.is_some_and(|u| Instant::now() < u) {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        version += 1;
        let bad = rng.random_bool(0.3);
        let image = if bad {
            format!("{name}:v{version}-crash")
        } else {
            format!("{name}:v{version}")
        };
        let patch = Patch::Strategic(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}),
        );
        retry("deploy", || deployments.patch(name, &pp, &patch)).await;
        if bad {
            t.bad_deploys += 1;
        } else {
            t.good_deploys += 1;
            t.good = image;
        }
        // Leave it alone long enough to be judged, rolled back and verified.
        t.busy_until = Some(Instant::now() + Duration::from_secs(40));
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..600))).await;
    }

    // Faults off; every Deployment must settle on its last good image.
    f.clear();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let list = retry("list", || deployments.list(&lp)).await;
        let wrong: Vec<String> =
            list.items
                .iter()
                .filter_map(|d| {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let want = &tracks.get(&name)?.good;
                    (first_image(d) != *want
                        || d.metadata.annotations.as_ref().is_some_and(|a| {
                            a.contains_key(rollback_watchdog::k8s::keys::IN_FLIGHT)
                        }))
                    .then(|| format!("{name}: {} (want {want})", first_image(d)))
                })
                .collect();
        if wrong.is_empty() {
            break;
        }
        run.assert_alive();
        assert!(
            Instant::now() < deadline,
            "not settled on the last good images: {wrong:?}; {}",
            run.log()
                .lines()
                .filter(|l| !l.contains("crashing pod") && !l.contains("kube_client"))
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("pipeline"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Room for a duplicate notice or a false rollback to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.assert_alive();
    let rss_end = rss_kib(pid);

    let log = run.log();
    assert!(!log.contains("panicked"), "a panic: {log}");
    let mut patches: BTreeMap<String, usize> = BTreeMap::new();
    for e in sim.request_log().entries() {
        if e.verb == "patch" && e.content_type.contains("json-patch") && e.status < 300 {
            if let Some(name) = e.path.rsplit('/').next() {
                *patches.entry(name.to_owned()).or_default() += 1;
            }
        }
    }
    let (mut bad_total, mut good_total) = (0, 0);
    for (name, t) in &tracks {
        bad_total += t.bad_deploys;
        good_total += t.good_deploys;
        assert_eq!(
            patches.get(name).copied().unwrap_or(0),
            t.bad_deploys,
            "{name}: rollbacks vs bad deploys ({t:?})"
        );
    }
    let bodies = got.lock().expect("lock").clone();
    let mut seen = HashSet::new();
    for b in &bodies {
        let key = format!("{} {}", b["event"], b["id"]);
        assert!(seen.insert(key.clone()), "told twice: {key}");
    }
    let reports: Vec<String> = std::fs::read_to_string(&audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["step"] == "report")
        .map(|l| format!("{} {}", l["rollback"], l["outcome"]))
        .collect();
    let unique: HashSet<&String> = reports.iter().collect();
    assert_eq!(unique.len(), reports.len(), "a decision reported twice");
    let rss_warm = rss_warm.unwrap_or(rss_end);
    eprintln!(
        "soak: {bad_total} bad and {good_total} good deploys; {} rollbacks; 0 false; RSS after warm-up {rss_warm} KiB, at the end {rss_end} KiB; faults {:?}; {} notices",
        patches.values().sum::<usize>(),
        f.injected(),
        bodies.len()
    );
    assert!(
        bad_total > 0 && good_total > 0,
        "the soak deployed both kinds"
    );
    assert!(
        rss_end as f64 <= rss_warm as f64 * 1.10,
        "RSS grew from {rss_warm} KiB after warm-up to {rss_end} KiB"
    );
    drop(run);
}
