//! The runbook run by itself: the real loop judges a bad deploy, runs the
//! pipeline, and on-call hears about it through a real webhook receiver.
//! A bad deploy is rolled back to the last known-good revision exactly
//! once; a restored revision that turns bad escalates instead of looping.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::pipeline::RollbackResult;
use rollback_watchdog::sim::{Behaviour, Behaviours, Crash};

mod support;
use support::binary::{events_received, receiver};
use support::prom::shared;
use support::watch::{template_patches, verdicts, Prom, Scenario, NAME};

fn extra(hook: &str) -> String {
    format!(
        "verify_window = \"4s\"\nrollout_timeout = \"60s\"\n\n[[notify]]\nkind = \"webhook\"\nname = \"oncall\"\nurl = \"{hook}\"\ndeadline = \"10s\"\n"
    )
}

/// Ticks until the verdict is Bad, then goes on ticking while the pipeline
/// runs in the background; returns the finished pipelines.
async fn judged_bad_and_rolled_back(
    s: &mut Scenario,
) -> Vec<rollback_watchdog::pipeline::RollbackOutcome> {
    s.tick_until_bad(40).await;
    s.finish_pipelines().await
}

#[tokio::test]
async fn a_bad_deploy_is_rolled_back_to_the_known_good_revision_and_on_call_is_told_why() {
    let prom = shared();
    let (hook, got) = receiver().await;
    // The [[notify]] table must follow the target's keys: a window short
    // enough for v1 to become known-good first, long enough for v2's rate
    // signals to prove a streak on a loaded machine (about 8 ticks).
    let extra = format!("watch_window = \"20s\"\n{}", extra(&hook));
    let mut s = Scenario::start(
        "auto-errors",
        Prom::Url(&prom.url),
        Behaviours::builtin(),
        &extra,
    )
    .await;
    prom.register(s.sim.scrape_target_handle());
    s.with_pipeline().await;
    s.wait_scraped().await;
    // v1 survives its window: known-good.
    let seen = s
        .tick_until(40, |e| {
            e.state.known_good.as_ref().is_some_and(|k| k.revision == 1)
        })
        .await;
    assert!(
        seen.last()
            .and_then(|e| e.state.known_good.as_ref())
            .is_some(),
        "v1 never became known-good: {:?}",
        verdicts(&seen)
    );

    s.deploy("web:v2-errors").await;
    let outcomes = judged_bad_and_rolled_back(&mut s).await;
    assert_eq!(outcomes.len(), 1, "one rollback: {outcomes:?}");
    let outcome = &outcomes[0];
    assert_eq!(
        outcome.result,
        RollbackResult::Succeeded,
        "{}",
        outcome.why()
    );

    // The Deployment's template is v1's again.
    let d = s.deployments().get(NAME).await.expect("get");
    assert_eq!(first_image(&d), "web:v1");
    let annotations = d.metadata.annotations.clone().unwrap_or_default();
    assert!(
        annotations
            .get("rollback-watchdog.io/blocklist")
            .is_some_and(|b| b.contains("web:v2-errors")),
        "v2 is blocklisted: {annotations:?}"
    );
    assert!(
        annotations
            .get("kubernetes.io/change-cause")
            .is_some_and(|c| c.contains("error ratio")),
        "{annotations:?}"
    );

    // The backup holds the whole v2 Deployment. (The delivery ledger is
    // the watchdog's ConfigMap there too, of no Deployment.)
    let cms: Api<ConfigMap> = Api::namespaced(s.client.clone(), "rollback-watchdog");
    let backups = cms
        .list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/managed-by=rollback-watchdog,rollback-watchdog.io/deployment={NAME}"
        )))
        .await
        .expect("list backups");
    assert_eq!(backups.items.len(), 1);
    let data = backups.items[0].data.clone().unwrap_or_default();
    let saved: serde_json::Value =
        serde_json::from_str(data.get("deployment.json").expect("deployment.json")).expect("JSON");
    assert_eq!(
        saved["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v2-errors"
    );
    assert_eq!(saved["metadata"]["name"], NAME);

    // An audit line for every step; Events on the Deployment.
    let steps: Vec<String> = s
        .audit_lines()
        .iter()
        .filter(|l| l["rollback"] == serde_json::json!(outcome.incident.id))
        .map(|l| l["step"].as_str().unwrap_or_default().to_string())
        .collect();
    for step in ["validate", "backup", "update", "wait", "verify", "report"] {
        assert!(
            steps.iter().any(|s| s == step),
            "no {step} line in {steps:?}"
        );
    }
    let events = s.events();
    for reason in ["RevisionBad", "RolledBack"] {
        assert!(
            events.iter().any(|(r, _)| r == reason),
            "no {reason} Event: {events:?}"
        );
    }

    // On-call was told: started, then succeeded, once each, with the why.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !events_received(&got).contains(&"rollback_succeeded".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "received {:?}",
            events_received(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let received = events_received(&got);
    assert_eq!(
        received.iter().filter(|e| *e == "rollback_started").count(),
        1,
        "{received:?}"
    );
    assert_eq!(
        received
            .iter()
            .filter(|e| *e == "rollback_succeeded")
            .count(),
        1,
        "{received:?}"
    );
    let succeeded = got
        .lock()
        .expect("lock")
        .iter()
        .find(|b| b["event"] == "rollback_succeeded")
        .cloned()
        .expect("the message");
    assert!(
        succeeded["reason"]
            .as_str()
            .is_some_and(|r| r.contains("error ratio")),
        "{succeeded}"
    );
    assert_eq!(succeeded["to"]["images"][0], "web:v1");
    // Delivery outcomes are in the audit log too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let delivered = s
            .audit_lines()
            .iter()
            .filter(|l| l["step"] == "notify" && l["outcome"] == "delivered")
            .count();
        if delivered >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "delivery lines: {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The restored revision is verified, not judged for another rollback.
    let seen = s.tick_until(8, |_| false).await;
    assert!(
        !verdicts(&seen).iter().any(|v| v == "bad"),
        "{:?}",
        verdicts(&seen)
    );
    assert_eq!(template_patches(&s.sim), 1, "exactly one rollback patch");
}

#[tokio::test]
async fn a_crash_looping_deploy_is_rolled_back_without_prometheus_and_a_restored_revision_that_turns_bad_escalates(
) {
    let (hook, got) = receiver().await;
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "auto-crash",
        Prom::Url("http://127.0.0.1:1"),
        behaviours.clone(),
        &extra(&hook),
    )
    .await;
    s.with_pipeline().await;
    s.tick().await;
    s.deploy("web:v2-crash").await;
    let outcomes = judged_bad_and_rolled_back(&mut s).await;
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes[0].result,
        RollbackResult::Succeeded,
        "{}",
        outcomes[0].why()
    );
    assert_eq!(
        first_image(&s.deployments().get(NAME).await.expect("get")),
        "web:v1"
    );

    // Now v1 itself starts crashing: no second automatic rollback, an
    // escalation instead.
    behaviours.set(
        "web:v1",
        Behaviour {
            crash: Crash::CrashLoop,
            ..Behaviour::default()
        },
    );
    // Replace v1's pods so they pick up the new behaviour.
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(s.client.clone(), "auto-crash");
    pods.delete_collection(
        &Default::default(),
        &ListParams::default().labels("app=web"),
    )
    .await
    .expect("delete pods");
    s.tick_until_bad(40).await;
    s.tick_until(5, |_| false).await;
    assert!(!s.daemon.pipelines_running());
    assert!(s.daemon.take_outcomes().is_empty(), "no second pipeline");
    assert_eq!(
        template_patches(&s.sim),
        1,
        "exactly one rollback patch, no loop"
    );
    assert!(
        s.events().iter().any(|(r, _)| r == "RollbackEscalated"),
        "{:?}",
        s.events()
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !events_received(&got).contains(&"escalation".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "received {:?}",
            events_received(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_rollback_stopped_by_a_lease_blip_before_its_patch_is_decided_again() {
    let (hook, got) = receiver().await;
    let mut s = Scenario::start(
        "auto-blip",
        Prom::Url("http://127.0.0.1:1"),
        Behaviours::builtin(),
        &extra(&hook),
    )
    .await;
    // The pipeline finds the Lease gone when it is about to write.
    let leading = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let guard = leading.clone();
    s.with_pipeline_guarded(Arc::new(move || {
        guard.load(std::sync::atomic::Ordering::SeqCst)
    }))
    .await;
    s.tick().await;
    s.deploy("web:v2-crash").await;
    s.tick_until_bad(40).await;
    let mut stopped = Vec::new();
    for _ in 0..20 {
        s.daemon.wait_pipelines(Duration::from_secs(10)).await;
        stopped = s.daemon.take_outcomes();
        if !stopped.is_empty() {
            break;
        }
        s.tick().await;
    }
    assert_eq!(stopped.len(), 1, "{stopped:?}");
    assert_eq!(stopped[0].result, RollbackResult::HandedOver);
    assert_eq!(template_patches(&s.sim), 0, "nothing was written");

    // Leading again, with the revision still Bad: the decision was not
    // spent on the attempt that wrote nothing.
    leading.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut finished = Vec::new();
    for _ in 0..60 {
        s.tick().await;
        finished.extend(s.daemon.take_outcomes());
        if !finished.is_empty() && !s.daemon.pipelines_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.daemon.wait_pipelines(Duration::from_secs(30)).await;
    finished.extend(s.daemon.take_outcomes());
    assert_eq!(finished.len(), 1, "{finished:?}");
    assert_eq!(
        finished[0].result,
        RollbackResult::Succeeded,
        "{}",
        finished[0].why()
    );
    assert_eq!(template_patches(&s.sim), 1);
    assert_eq!(
        first_image(&s.deployments().get(NAME).await.expect("get")),
        "web:v1"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !events_received(&got).contains(&"rollback_succeeded".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "received {:?}",
            events_received(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_known_good_revision_deployed_again_by_a_person_and_bad_escalates_instead_of_rolling_back(
) {
    let (hook, got) = receiver().await;
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "auto-undo",
        Prom::Url("http://127.0.0.1:1"),
        behaviours.clone(),
        &extra(&hook),
    )
    .await;
    s.with_pipeline().await;
    // v1 is the recorded known-good revision (as an earlier window left it).
    let v1 = s.tick().await.subject.expect("v1 is judged");
    rollback_watchdog::observe::revision::record_known_good(
        &s.client,
        &s.ns,
        NAME,
        &rollback_watchdog::observe::revision::KnownGood {
            revision: v1.revision,
            pod_template_hash: v1.pod_template_hash.clone(),
            images: v1.images.clone(),
            at: jiff::Timestamp::now().to_string(),
        },
    )
    .await
    .expect("record known-good");
    s.deploy("web:v2").await;
    s.wait_rolled_out("web:v2").await;
    s.tick().await;

    // A person undoes v2: the known-good template, as revision 3. Then it
    // crashes (a dependency broke, say).
    behaviours.set(
        "web:v1",
        Behaviour {
            crash: Crash::CrashLoop,
            ..Behaviour::default()
        },
    );
    s.deploy("web:v1").await;
    let judged = s.tick_until_bad(40).await;
    assert_eq!(
        judged
            .last()
            .and_then(|e| e.subject.as_ref())
            .map(|s| s.revision),
        Some(3),
        "the undo is judged as revision 3"
    );
    s.tick_until(5, |_| false).await;
    assert!(!s.daemon.pipelines_running());
    assert!(
        s.daemon.take_outcomes().is_empty(),
        "no pipeline for the known-good revision"
    );
    assert_eq!(template_patches(&s.sim), 0, "v2 is not brought back");
    assert_eq!(
        first_image(&s.deployments().get(NAME).await.expect("get")),
        "web:v1"
    );
    let escalated = s
        .events()
        .into_iter()
        .find(|(r, _)| r == "RollbackEscalated")
        .unwrap_or_else(|| panic!("no escalation: {:?}", s.events()));
    assert!(
        escalated
            .1
            .contains("last known-good revision, deployed again"),
        "{}",
        escalated.1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !events_received(&got).contains(&"escalation".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "received {:?}",
            events_received(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_persons_undo_to_an_older_revision_that_turns_bad_escalates_with_no_patch() {
    support::kubectl::require_kubectl();
    let (hook, got) = receiver().await;
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "auto-undo-older",
        Prom::Url("http://127.0.0.1:1"),
        behaviours.clone(),
        &extra(&hook),
    )
    .await;
    s.with_pipeline().await;
    s.deploy("web:v2").await;
    s.wait_rolled_out("web:v2").await;
    s.deploy("web:v3").await;
    s.wait_rolled_out("web:v3").await;
    // v3 is the recorded known-good revision (its window closed healthy):
    // the newest template, and the one the person is about to leave.
    let v3 = s.tick().await.subject.expect("v3 is judged");
    assert_eq!(v3.revision, 3);
    rollback_watchdog::observe::revision::record_known_good(
        &s.client,
        &s.ns,
        NAME,
        &rollback_watchdog::observe::revision::KnownGood {
            revision: v3.revision,
            pod_template_hash: v3.pod_template_hash.clone(),
            images: v3.images.clone(),
            at: jiff::Timestamp::now().to_string(),
        },
    )
    .await
    .expect("record known-good");

    // A person goes back to v1's template (revision 4), which then crashes.
    support::kubectl::kubectl_ok(
        &s.sim,
        &[
            "-n",
            &s.ns,
            "rollout",
            "undo",
            &format!("deployment/{NAME}"),
            "--to-revision=1",
        ],
    )
    .await;
    s.wait_rolled_out("web:v1").await;
    // kubectl's undo is a JSON Patch too: count the watchdog's from here.
    let by_the_person = template_patches(&s.sim);
    assert_eq!(by_the_person, 1, "kubectl rollout undo patched once");
    behaviours.set(
        "web:v1",
        Behaviour {
            crash: Crash::CrashLoop,
            ..Behaviour::default()
        },
    );
    let judged = s.tick_until_bad(40).await;
    assert_eq!(
        judged
            .last()
            .and_then(|e| e.subject.as_ref())
            .map(|s| s.revision),
        Some(4),
        "the undo is judged as revision 4"
    );
    s.tick_until(5, |_| false).await;
    assert!(!s.daemon.pipelines_running());
    assert!(
        s.daemon.take_outcomes().is_empty(),
        "no pipeline: v2 and v3 are newer than the template restored"
    );
    assert_eq!(
        template_patches(&s.sim),
        by_the_person,
        "no patch from the watchdog: v3 is not brought back"
    );
    assert_eq!(
        first_image(&s.deployments().get(NAME).await.expect("get")),
        "web:v1"
    );
    let escalated = s
        .events()
        .into_iter()
        .find(|(r, _)| r == "RollbackEscalated")
        .unwrap_or_else(|| panic!("no escalation: {:?}", s.events()));
    assert!(
        escalated.1.contains(
            "revision 4 brings back the template first deployed as revision 1, and is bad now"
        ),
        "{}",
        escalated.1
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !events_received(&got).contains(&"escalation".to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "received {:?}",
            events_received(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        events_received(&got)
            .iter()
            .filter(|e| *e == "escalation")
            .count(),
        1,
        "one escalation: {:?}",
        events_received(&got)
    );
}
