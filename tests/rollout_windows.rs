//! Windows cover the whole rollout: a rollout slower than `watch_window`,
//! and one a person paused for longer than that, are still judged at full
//! traffic, and a bad release among them is rolled back (issue 13, item 2).

use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::observe::revision::{first_image, fully_rolled_out};
use rollback_watchdog::pipeline::{RollbackOutcome, RollbackResult};
use rollback_watchdog::report::status::WindowStatus;
use rollback_watchdog::sim::Behaviours;
use serde_json::json;

mod support;
use support::prom::shared;
use support::watch::{template_patches, verdicts, Prom, Scenario, NAME};

/// The target's keys: a short window, and a pipeline that verifies fast.
const KEYS: &str = "watch_window = \"10s\"\nverify_window = \"4s\"\nrollout_timeout = \"60s\"\n";
const WINDOW: Duration = Duration::from_secs(10);

/// `web`'s window as `/status` shows it now.
fn window_status(s: &Scenario) -> WindowStatus {
    s.daemon
        .status()
        .targets
        .iter()
        .find(|t| t.name == NAME)
        .and_then(|t| t.window.clone())
        .expect("/status shows web's window")
}

/// Ticks until the pipelines the loop started have finished; returns
/// their outcomes.
async fn rolled_back(s: &mut Scenario) -> Vec<RollbackOutcome> {
    for _ in 0..60 {
        s.tick().await;
        if !s.daemon.pipelines_running() && template_patches(&s.sim) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    s.daemon.wait_pipelines(Duration::from_secs(30)).await;
    s.tick().await;
    s.daemon.take_outcomes()
}

/// The Deployment's template is v1's again, changed by exactly one
/// patch. A patch the API server refused (422: its `test` op found a newer
/// resourceVersion, as when the controller wrote the status right after
/// the resume) changed nothing and is retried by the pipeline.
async fn back_on_v1(s: &mut Scenario, outcomes: &[RollbackOutcome]) {
    assert_eq!(outcomes.len(), 1, "one rollback: {outcomes:?}");
    assert_eq!(
        outcomes[0].result,
        RollbackResult::Succeeded,
        "{}",
        outcomes[0].why()
    );
    let d = s.deployments().get(NAME).await.expect("get web");
    assert_eq!(first_image(&d), "web:v1");
    let patches: Vec<(String, u16)> = s
        .sim
        .request_log()
        .entries()
        .iter()
        .filter(|e| e.verb == "patch" && e.path.ends_with(&format!("/deployments/{NAME}")))
        .filter(|e| e.content_type.contains("json-patch"))
        .map(|e| (e.ts.clone(), e.status))
        .collect();
    let applied = patches.iter().filter(|(_, status)| *status < 300).count();
    assert_eq!(
        applied, 1,
        "exactly one rollback patch applied: {patches:?}"
    );
}

#[tokio::test]
async fn a_rollout_slower_than_its_window_that_turns_bad_at_full_traffic_is_rolled_back() {
    let prom = shared();
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "window-slow",
        Prom::Url(&prom.url),
        behaviours.clone(),
        KEYS,
    )
    .await;
    prom.register(s.sim.scrape_target_handle());
    s.with_pipeline().await;
    s.wait_scraped().await;
    // v2 takes 6 s per pod to get Ready; maxSurge 1 for 3 replicas: ~18 s.
    let ready_after = s.sim.clock().sim(Duration::from_secs(6));
    behaviours.update("web:v2", |b| b.ready_after = ready_after);

    s.deploy("web:v2").await;
    let deployed = Instant::now();
    let mut while_rolling = Vec::new();
    loop {
        let e = s.tick().await;
        let d = s.deployments().get(NAME).await.expect("get web");
        if first_image(&d) == "web:v2" && fully_rolled_out(&d) {
            break;
        }
        if e.state.current().is_some_and(|c| c.images == ["web:v2"]) {
            while_rolling.push((e.state.in_window(), window_status(&s).why));
        }
        assert!(
            deployed.elapsed() < Duration::from_secs(60),
            "v2 never rolled out: {:?}",
            d.status
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let took = deployed.elapsed();
    assert!(
        took > WINDOW,
        "the rollout took {took:?}, not longer than the window"
    );
    assert!(
        !while_rolling.is_empty()
            && while_rolling
                .iter()
                .all(|(open, why)| *open && why == "rollout in progress"),
        "{while_rolling:?}"
    );

    // Full traffic on v2, more than a window after its start: it turns bad.
    behaviours.update("web:v2", |b| b.error_ratio = 0.3);
    let seen = s
        .tick_until(20, |e| e.verdict() == Some(Verdict::Bad))
        .await;
    assert!(
        seen.iter().all(|e| e.state.in_window()),
        "the window closed before the verdict: {:?}",
        verdicts(&seen)
    );
    assert_eq!(
        seen.last().and_then(|e| e.verdict()),
        Some(Verdict::Bad),
        "{:?}",
        verdicts(&seen)
    );
    let why = window_status(&s).why;
    assert!(why.contains("after the rollout completed"), "{why}");

    let outcomes = rolled_back(&mut s).await;
    back_on_v1(&mut s, &outcomes).await;
}

#[tokio::test]
async fn a_paused_rollout_left_longer_than_its_window_is_rolled_back_once_resumed() {
    let prom = shared();
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "window-pause",
        Prom::Url(&prom.url),
        behaviours.clone(),
        KEYS,
    )
    .await;
    prom.register(s.sim.scrape_target_handle());
    s.with_pipeline().await;
    s.wait_scraped().await;
    let ready_after = s.sim.clock().sim(Duration::from_secs(3));
    behaviours.update("web:v2-errors", |b| b.ready_after = ready_after);

    s.deploy("web:v2-errors").await;
    let deployed = Instant::now();
    // Paused once one new pod is Ready, as a person watching would.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(s.client.clone(), &s.ns);
    loop {
        let list = pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .expect("list pods");
        let ready_v2 = list.items.iter().any(|p| {
            let image = p
                .spec
                .as_ref()
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.as_deref());
            image == Some("web:v2-errors") && rollback_watchdog::signals::pods::is_ready(p)
        });
        if ready_v2 {
            break;
        }
        assert!(
            deployed.elapsed() < Duration::from_secs(30),
            "no v2 pod ever got Ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pause = |paused: bool| json!({"spec": {"paused": paused}});
    s.deployments()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&pause(true)))
        .await
        .expect("pause");

    // Paused for longer than the window: judged, held open, not acted on.
    let paused_at = Instant::now();
    let mut during = Vec::new();
    while deployed.elapsed() < WINDOW + Duration::from_secs(5) || during.len() < 5 {
        let e = s.tick().await;
        if e.state.paused {
            during.push((e.state.in_window(), e.verdict(), window_status(&s).why));
        }
        assert!(
            paused_at.elapsed() < Duration::from_secs(60),
            "the pause never showed"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        during
            .iter()
            .all(|(open, _, why)| *open && why.starts_with("paused")),
        "{during:?}"
    );
    assert!(
        during.iter().any(|(_, v, _)| *v == Some(Verdict::Bad)),
        "judged Bad while paused: {during:?}"
    );
    assert_eq!(
        template_patches(&s.sim),
        0,
        "no rollback of a paused Deployment"
    );
    assert_eq!(
        first_image(&s.deployments().get(NAME).await.expect("get web")),
        "web:v2-errors"
    );

    s.deployments()
        .patch(NAME, &PatchParams::default(), &Patch::Merge(&pause(false)))
        .await
        .expect("resume");
    let outcomes = rolled_back(&mut s).await;
    back_on_v1(&mut s, &outcomes).await;
}
