//! Fault injection: the real binary against a sim whose API server
//! answers a share of requests with 500, 429 and 504, slowly, drops and
//! expires watches and conflicts on a write; a Prometheus that stops,
//! restarts, slows down and answers garbage; a webhook that fails,
//! throttles, dawdles and hangs. The promises must hold: a bad release is
//! rolled back once, a good one is kept, missing data is never evidence,
//! nothing is told twice, and the watchdog recovers when the faults stop.
//! Each test prints the faults it injected by kind (the README's table).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use rollback_watchdog::k8s::keys::IN_FLIGHT;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::sim::{Fault, FaultRule, SimCluster};

mod support;
use support::binary::{events_received, status};
use support::cluster::{count, wait_heard, wait_ready, Cluster};
use support::faulty::{flaky_receiver, DelayProxy, FakePrometheus, HookFault, PromMode};

/// A share of every kind of API fault on every resource the watchdog
/// reads and writes; 429 everywhere. A 500 or 504 on the rollback patch
/// itself is left out: the patch may have landed, so the rollback stops
/// as failed and tells a person (by design, covered by the pipeline's
/// own tests), which is not what this test is about.
fn api_faults(sim: &SimCluster) {
    let f = sim.faults();
    // The Deployment and ReplicaSet reads fail often (40 % of them): the
    // pipeline retries each read, and a Validate that still cannot read
    // is tried again at the next tick, so the bad release is still rolled
    // back exactly once and the good one kept.
    for (verb, resource) in [
        ("get", "deployments"),
        ("list", "deployments"),
        ("get", "replicasets"),
        ("list", "replicasets"),
    ] {
        f.add(FaultRule::new(verb, resource, Fault::ServerError, 0.2));
        f.add(FaultRule::new(verb, resource, Fault::Timeout, 0.1));
        f.add(FaultRule::new(
            verb,
            resource,
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            0.1,
        ));
    }
    for (verb, resource) in [
        ("get", "pods"),
        ("list", "pods"),
        ("get", "configmaps"),
        ("list", "configmaps"),
        ("create", "configmaps"),
        ("update", "configmaps"),
        ("patch", "configmaps"),
        ("create", "events"),
    ] {
        f.add(FaultRule::new(verb, resource, Fault::ServerError, 0.05));
        f.add(FaultRule::new(verb, resource, Fault::Timeout, 0.05));
    }
    for (verb, resource) in [
        ("*", "pods"),
        ("*", "configmaps"),
        ("*", "events"),
        ("watch", "*"),
    ] {
        f.add(FaultRule::new(
            verb,
            resource,
            Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            0.05,
        ));
    }
    f.add(FaultRule::new(
        "*",
        "*",
        Fault::Slow(Duration::from_millis(300)),
        0.1,
    ));
    f.add(FaultRule::new(
        "watch",
        "*",
        Fault::DropWatch(Duration::from_secs(2)),
        0.3,
    ));
    f.add(FaultRule::new("watch", "*", Fault::Gone, 0.1));
}

fn webhook_script() -> Vec<HookFault> {
    vec![
        HookFault::Status500,
        HookFault::TooMany,
        HookFault::Hang,
        HookFault::Slow(Duration::from_millis(800)),
        HookFault::Status500,
    ]
}

/// Prometheus through a proxy to a fake that answers healthy figures; the
/// error-rate signal on.
async fn with_prometheus(c: &mut Cluster) -> (FakePrometheus, DelayProxy) {
    let prom = FakePrometheus::start().await;
    let proxy = DelayProxy::start(prom.addr).await;
    c.prometheus = proxy.url();
    c.defaults = "[defaults.latency]\nenabled = false\n".to_owned();
    (prom, proxy)
}

/// Prometheus breaks in every way in turn for `rounds` seconds each.
async fn prometheus_trouble(prom: &FakePrometheus, proxy: &mut DelayProxy, each: Duration) {
    for step in 0..6 {
        match step {
            0 => proxy.stop(),
            1 => proxy.restart().await,
            2 => proxy.set_delay(Duration::from_secs(3)),
            3 => {
                proxy.set_delay(Duration::ZERO);
                prom.set(PromMode::Malformed)
            }
            4 => prom.set(PromMode::Huge),
            _ => prom.set(PromMode::ServerError),
        }
        tokio::time::sleep(each).await;
    }
    prom.set(PromMode::Healthy);
}

fn print_faults(what: &str, c: &Cluster, extra: &[BTreeMap<String, u64>]) {
    let mut all = c.sim.faults().injected();
    for e in extra {
        for (k, v) in e {
            *all.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!("faults injected ({what}): {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_a_bad_release_is_rolled_back_once_and_told_once() {
    let (hook, got, hook_tally) = flaky_receiver(webhook_script()).await;
    let mut c = Cluster::start_with_hook(Some((hook, got))).await;
    let (prom, mut proxy) = with_prometheus(&mut c).await;
    let (mut run, port) = c.run(&[]);
    wait_ready(port, &mut run).await;

    // A total outage of the API server first: the watchdog must live
    // through it and come back.
    c.sim
        .faults()
        .add(FaultRule::new("*", "*", Fault::ServerError, 1.0));
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.assert_alive();
    c.sim.faults().clear();
    api_faults(&c.sim);
    // The watches opened before the rules stay open for minutes: end them,
    // so that the re-watches meet the dropped-watch and 410 rules.
    c.sim.close_watches();

    c.deploy("web:v2-crash").await;
    prometheus_trouble(&prom, &mut proxy, Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = c.deployments().get(support::watch::NAME).await;
        if d.as_ref()
            .is_ok_and(|d| first_image(d) == "web:v1" && !d.annotations().contains_key(IN_FLIGHT))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never rolled back under faults: {:?}; faults {:?}; {}",
            d.map(|d| d.status),
            c.sim.faults().injected(),
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_heard(
        &c.got,
        "rollback_succeeded",
        Duration::from_secs(90),
        || run.log(),
    )
    .await;
    // Faults stop: the watchdog is alive, ready and judging again.
    c.sim.faults().clear();
    tokio::time::sleep(Duration::from_secs(4)).await;
    run.assert_alive();
    assert!(
        status(port).await.is_some_and(|s| s.ready),
        "not ready after the faults stopped: {}",
        run.log()
    );

    assert_eq!(c.accepted_template_patches(), 1, "{}", run.log());
    assert!(c.backups().await >= 1, "no backup");
    let events = events_received(&c.got);
    assert_eq!(count(&events, "rollback_started"), 1, "{events:?}");
    assert_eq!(count(&events, "rollback_succeeded"), 1, "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| e.contains("failed") || e.contains("escalat")),
        "a failed read was told as a failure: {events:?}"
    );
    let reports = c.reports();
    let mut unique = reports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), reports.len(), "a decision twice: {reports:?}");
    print_faults(
        "bad release",
        &c,
        &[hook_tally.get(), prometheus_faults(&prom)],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_faults_a_good_release_is_kept_and_nobody_is_paged() {
    let (hook, got, hook_tally) = flaky_receiver(webhook_script()).await;
    let mut c = Cluster::start_with_hook(Some((hook, got))).await;
    let (prom, mut proxy) = with_prometheus(&mut c).await;
    let (mut run, port) = c.run(&[]);
    wait_ready(port, &mut run).await;
    api_faults(&c.sim);
    // The watches opened before the rules stay open for minutes: end them,
    // so that the re-watches meet the dropped-watch and 410 rules.
    c.sim.close_watches();

    c.deploy("web:v2").await;
    // The watchdog's next write to a Deployment (its memory, known-good)
    // conflicts, as if someone wrote first.
    c.sim.faults().conflict_next_write("deployments");
    prometheus_trouble(&prom, &mut proxy, Duration::from_secs(2)).await;
    c.wait_deployment("v2 rolled out", |d| {
        let s = d.status.clone().unwrap_or_default();
        first_image(d) == "web:v2" && s.updated_replicas == Some(3) && s.replicas == Some(3)
    })
    .await;
    // More ticks with Prometheus in trouble and the API faulty.
    prometheus_trouble(&prom, &mut proxy, Duration::from_secs(1)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    run.assert_alive();

    c.sim.faults().clear();
    let d = c.wait_deployment("read", |_| true).await;
    assert_eq!(first_image(&d), "web:v2", "the good release was replaced");
    assert_eq!(c.accepted_template_patches(), 0, "{}", run.log());
    let events = events_received(&c.got);
    assert!(
        !events.iter().any(|e| e.starts_with("rollback")),
        "on-call was paged about a good release: {events:?}"
    );
    let verdict = status(port).await.and_then(|s| {
        s.targets
            .into_iter()
            .find(|t| t.name == support::watch::NAME)
            .map(|t| format!("{:?}", t.verdict))
    });
    eprintln!("verdict of the good release after the faults: {verdict:?}");
    print_faults(
        "good release",
        &c,
        &[hook_tally.get(), prometheus_faults(&prom)],
    );
}

/// Prometheus faults served, by kind (the healthy answers left out).
fn prometheus_faults(prom: &FakePrometheus) -> BTreeMap<String, u64> {
    prom.served
        .get()
        .into_iter()
        .filter(|(k, _)| k != "Healthy")
        .map(|(k, v)| (format!("prometheus {k}"), v))
        .collect()
}
