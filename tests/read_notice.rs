//! A Bad revision whose rollback cannot read the cluster is never silent:
//! the real binary against a sim whose API server answers every `get` of
//! a Deployment with a 500 (the watch caches keep working, so the judge
//! still reaches Bad). Validate fails and the decision is tried again at
//! every tick; the third failure in a row is told to on-call once, as
//! `rollback_failed` naming the reads; when the reads work again the
//! rollback goes through.

use std::time::{Duration, Instant};

use rollback_watchdog::decide::refusal::READ_FAILURES_TOLD_AFTER;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::sim::{Fault, FaultRule};

mod support;
use support::binary::events_received;
use support::cluster::{count, wait_ready, Cluster};

/// Validate's failed reads in the audit log so far.
fn validate_failures(c: &Cluster) -> usize {
    c.audit()
        .iter()
        .filter(|l| l["step"] == "validate" && l["outcome"] == "failed")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_cannot_read_the_cluster_is_told_once_and_done_when_reads_work() {
    let c = Cluster::start().await;
    let (mut run, port) = c.run(&[]);
    wait_ready(port, &mut run).await;
    c.sim.faults().add(FaultRule::new(
        "get",
        "deployments",
        Fault::ServerError,
        1.0,
    ));
    c.deploy("web:v2-crash").await;

    // Tried at every tick: wait for well past the failure that is told.
    let enough = READ_FAILURES_TOLD_AFTER as usize + 3;
    let deadline = Instant::now() + Duration::from_secs(150);
    while validate_failures(&c) < enough {
        assert!(
            Instant::now() < deadline,
            "{} failed Validate reads, not {enough}: {:?}; {}",
            validate_failures(&c),
            c.reports(),
            run.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Room for a late notice to arrive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let failed: Vec<serde_json::Value> = c
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b["event"] == "rollback_failed")
        .cloned()
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "one rollback_failed for {} failed reads: {failed:?}",
        validate_failures(&c)
    );
    let error = failed[0]["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!(
            "could not read the cluster {READ_FAILURES_TOLD_AFTER} times in a row"
        )) && error.contains("Bad revision is still serving"),
        "{error}"
    );
    assert_eq!(failed[0]["failed_step"], "validate", "{:?}", failed[0]);
    // (A list: the test's own `get` meets the fault too.)
    let listed = c
        .deployments()
        .list(&Default::default())
        .await
        .expect("list deployments");
    let images: Vec<String> = listed.items.iter().map(first_image).collect();
    assert_eq!(images, ["web:v2-crash"], "nothing changed yet");

    // The reads work again: the next tick rolls back.
    c.sim.faults().clear();
    c.wait_rolled_back_and_told(|| run.log()).await;
    let events = events_received(&c.got);
    assert_eq!(count(&events, "rollback_failed"), 1, "{events:?}");
    assert_eq!(count(&events, "rollback_started"), 1, "{events:?}");
    assert_eq!(c.accepted_template_patches(), 1, "{}", run.log());
    run.assert_alive();
}
