//! The runbook's rollback decision criteria (critical bugs, performance
//! degradation, failed health checks) met by the messy conditions of an
//! ordinary rollout: slow readiness behind a Service, warm-up 503s, one
//! OOM kill while warming up, error bursts, deploys close together, an
//! outage downstream. Each runs the real loop with the rollback pipeline
//! against the sim and the real Prometheus, and asserts what on-call would
//! see: the Deployment's template and the watchdog's patches of it.
//!
//! A good release must be kept; a bad one must still be rolled back.

use std::time::{Duration, Instant};

use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::runtime::daemon::Evaluation;
use rollback_watchdog::sim::burst::{Burst, ImageMatch, Starts};
use rollback_watchdog::sim::{Behaviour, Behaviours, Crash};

mod support;
use support::prom::shared;
use support::watch::{template_patches, verdicts, Prom, Scenario, NAME};

/// Pipeline settings every case shares, then `more` (target keys).
fn extra(more: &str) -> String {
    format!("watch_window = \"3m\"\nverify_window = \"3s\"\nrollout_timeout = \"90s\"\n{more}")
}

/// Every result sentence of every evaluation, for "did the test meet the
/// condition it is about" checks and failure messages.
fn sentences(seen: &[Evaluation]) -> Vec<String> {
    seen.iter()
        .flat_map(|e| e.results.iter().map(|r| r.describe()))
        .collect()
}

/// The decisive reasons of the last evaluation, as on-call reads them.
fn decisive(seen: &[Evaluation]) -> Vec<String> {
    seen.last()
        .and_then(|e| e.judgement.as_ref())
        .map(|j| {
            j.reasons
                .iter()
                .filter(|r| r.is_decisive())
                .map(|r| r.sentence.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Deploys `image` and ticks through its rollout and `after` more ticks;
/// asserts the release was kept: never Bad, no template patch, the
/// Deployment still on `image`. Returns the evaluations.
async fn kept(s: &mut Scenario, image: &str, after: usize, max: usize) -> Vec<Evaluation> {
    s.deploy(image).await;
    let mut done_at = None;
    let seen = s
        .tick_until(max, |e| {
            let rolled_out = e.state.fully_rolled_out
                && e.state
                    .current()
                    .is_some_and(|c| c.images.iter().any(|i| i == image));
            if rolled_out && done_at.is_none() {
                done_at = Some(0);
            }
            if let Some(n) = done_at.as_mut() {
                *n += 1;
                return *n > after;
            }
            false
        })
        .await;
    assert!(
        done_at.is_some(),
        "{image} never rolled out within {max} ticks: {:?}",
        verdicts(&seen)
    );
    let bad: Vec<&Evaluation> = seen
        .iter()
        .filter(|e| e.verdict() == Some(Verdict::Bad))
        .collect();
    assert!(
        bad.is_empty(),
        "a good release was judged Bad: {:?}\n{:#?}",
        verdicts(&seen),
        bad.iter()
            .flat_map(|e| e.judgement.iter().flat_map(|j| j.reasons.iter()))
            .map(|r| r.sentence.clone())
            .collect::<Vec<_>>()
    );
    s.daemon.wait_pipelines(Duration::from_secs(5)).await;
    assert_eq!(template_patches(&s.sim), 0, "the watchdog patched web");
    let d = s.deployments().get(NAME).await.expect("get web");
    assert_eq!(first_image(&d), image, "web's template");
    seen
}

/// Ticks until Bad, lets the pipeline finish, and asserts web was rolled
/// back to `to` with one template patch.
async fn rolled_back(s: &mut Scenario, to: &str, max: usize) -> Vec<Evaluation> {
    let seen = s.tick_until_bad(max).await;
    s.finish_pipelines().await;
    assert_eq!(template_patches(&s.sim), 1, "one rollback patch");
    let d = s.deployments().get(NAME).await.expect("get web");
    assert_eq!(first_image(&d), to, "web's template after the rollback");
    seen
}

#[tokio::test]
async fn failed_health_checks_slow_readiness_behind_the_service_is_kept() {
    // v2's pods need 15 s to get Ready; the health URL and the version URL
    // go through the Service, which answers from v1 pods until then.
    let behaviours = Behaviours::builtin();
    let toml = extra(
        "[targets.health]\nurls = [\"{service}/health\"]\nversion_url = \"{service}/version\"\n",
    );
    let mut s = Scenario::start(
        "crit-slow-ready",
        Prom::Shared(shared()),
        behaviours.clone(),
        &toml,
    )
    .await;
    s.with_pipeline().await;
    let fifteen_seconds = s.sim.clock().sim(Duration::from_secs(15));
    behaviours.update("web:v2", |b| b.ready_after = fifteen_seconds);

    let seen = kept(&mut s, "web:v2", 5, 120).await;
    let all = sentences(&seen);
    assert!(
        all.iter()
            .any(|t| t.contains("the Service may still route to")
                && t.contains("does not show revision 2's image tag v2")),
        "the Service answered from v1 during the rollout at least once: {all:#?}"
    );
    let last = seen.last().expect("ticks");
    assert!(
        last.results
            .iter()
            .any(|r| r.signal.id() == "health:version" && r.outcome.is_pass()),
        "after the rollout the version check passes through the Service: {:?}",
        last.results
    );
}

#[tokio::test]
async fn failed_health_checks_warm_up_503s_of_new_pods_are_kept() {
    // v2 answers 503 on /health until Ready (6 s), probed pod by pod.
    let behaviours = Behaviours::builtin();
    let toml = extra("[targets.health]\nper_pod = { port = 8080, path = \"/health\" }\n");
    let mut s = Scenario::start(
        "crit-warm-up",
        Prom::Shared(shared()),
        behaviours.clone(),
        &toml,
    )
    .await;
    s.with_pipeline().await;
    behaviours.warm_up("web:v2", s.sim.clock().sim(Duration::from_secs(6)), 503);

    let seen = kept(&mut s, "web:v2", 3, 90).await;
    let all = sentences(&seen);
    assert!(
        all.iter().any(|t| t.contains("never Ready yet, HTTP 503")),
        "a v2 pod answered 503 while warming up, and it did not count: {all:#?}"
    );
}

#[tokio::test]
async fn critical_bugs_one_oom_kill_of_the_only_surge_pod_while_warming_up_is_kept() {
    // Each v2 pod is OOM-killed once, then runs healthy.
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "web:v2",
        Behaviour {
            crash: Crash::OomKilled,
            crashes: Some(1),
            // 4 s (sim time 20×) to get Ready after its restart, so ticks
            // see the OOM kill in its last state meanwhile.
            ready_after: Duration::from_secs(80),
            ..Behaviour::default()
        },
    );
    let mut s = Scenario::start(
        "crit-one-oom",
        Prom::Shared(shared()),
        behaviours,
        &extra(""),
    )
    .await;
    s.with_pipeline().await;

    let seen = kept(&mut s, "web:v2", 3, 90).await;
    let all = sentences(&seen);
    assert!(
        all.iter().any(|t| t.contains("OOMKilled")),
        "a tick saw the OOM kill: {all:#?}"
    );
}

#[tokio::test]
async fn critical_bugs_an_error_burst_shorter_than_the_streak_is_kept_and_a_long_one_rolled_back() {
    let prom = shared();
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "crit-burst",
        Prom::Shared(prom),
        behaviours.clone(),
        &extra(""),
    )
    .await;
    s.with_pipeline().await;
    s.wait_scraped().await;
    kept(&mut s, "web:v2", 3, 60).await;

    // failure_threshold 3 × interval 1 s: 3 s. Half of v2's requests fail
    // for 2.5 s.
    let sim = s.sim.clock();
    let span = behaviours
        .burst(Burst {
            images: ImageMatch::Image("web:v2".into()),
            starts: Starts::In(Duration::ZERO),
            lasts: sim.sim(Duration::from_millis(2500)),
            error_ratio: 0.5,
        })
        .expect("a valid burst")
        .expect("its span");
    let quiet_after = span.end + Duration::from_secs(8);
    let seen = s.tick_until(30, |_| Instant::now() > quiet_after).await;
    assert!(
        seen.iter().all(|e| e.verdict() != Some(Verdict::Bad)),
        "a 2.5 s burst made v2 Bad: {:?}\n{:#?}",
        verdicts(&seen),
        sentences(&seen)
    );
    assert!(
        sentences(&seen)
            .iter()
            .any(|t| t.starts_with("error ratio") && t.contains('>')),
        "the burst was seen failing: {:#?}",
        sentences(&seen)
    );
    assert_eq!(template_patches(&s.sim), 0);

    // The same errors for 9 s (3 × 3 s): a regression, rolled back.
    behaviours
        .burst(Burst {
            images: ImageMatch::Image("web:v2".into()),
            starts: Starts::In(Duration::ZERO),
            lasts: sim.sim(Duration::from_secs(9)),
            error_ratio: 0.5,
        })
        .expect("a valid burst");
    let seen = rolled_back(&mut s, "web:v1", 30).await;
    let reasons = decisive(&seen);
    assert!(
        reasons.iter().any(|r| r.starts_with("error ratio")),
        "{reasons:#?}"
    );
}

#[tokio::test]
async fn critical_bugs_3_percent_against_a_young_0_1_percent_baseline_is_rolled_back() {
    // v1 has served for seconds when v2 comes, far less than the 30 min
    // baseline_lookback: the baseline must still be v1's real 0.1 %.
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "web:v2",
        Behaviour {
            error_ratio: 0.03,
            ..Behaviour::default()
        },
    );
    let toml = extra("[targets.error_rate]\nbaseline_lookback = \"30m\"\n");
    let mut s = Scenario::start("crit-close", Prom::Shared(shared()), behaviours, &toml).await;
    s.with_pipeline().await;
    s.wait_scraped().await;
    // v1 serves about 25 s: old enough to be a baseline (20 s at least),
    // far younger than the lookback.
    s.tick_until(20, |_| false).await;

    s.deploy("web:v2").await;
    let seen = rolled_back(&mut s, "web:v1", 90).await;
    let decisive = decisive(&seen);
    assert!(
        decisive
            .iter()
            .any(|r| r.starts_with("error ratio") && r.contains("baseline")),
        "Bad on the error ratio against v1's baseline: {decisive:#?}"
    );
}

#[tokio::test]
async fn critical_bugs_an_outage_downstream_of_old_and_new_pods_is_not_blamed_on_the_release() {
    // v2's pods take 8 s each to get Ready, so old and new serve side by
    // side for about 16 s; a downstream outage fails 30 % of everyone's
    // requests for 8 s of it.
    let behaviours = Behaviours::builtin();
    let mut s = Scenario::start(
        "crit-downstream",
        Prom::Shared(shared()),
        behaviours.clone(),
        &extra(""),
    )
    .await;
    s.with_pipeline().await;
    s.wait_scraped().await;
    let sim = s.sim.clock();
    behaviours.update("web:v2", |b| {
        b.ready_after = sim.sim(Duration::from_secs(8))
    });

    s.deploy("web:v2").await;
    let mut outage = false;
    let b = behaviours.clone();
    let seen = s
        .tick_until(120, |e| {
            let v2_ready = e.subject.as_ref().is_some_and(|sub| {
                sub.revision == 2
                    && sub
                        .pods
                        .iter()
                        .any(|p| rollback_watchdog::signals::pods::is_ready(p))
            });
            if v2_ready && !outage {
                outage = true;
                let _ = b.burst(Burst {
                    images: ImageMatch::All,
                    starts: Starts::In(Duration::ZERO),
                    lasts: sim.sim(Duration::from_secs(8)),
                    error_ratio: 0.3,
                });
            }
            e.state.fully_rolled_out && e.subject.as_ref().is_some_and(|sub| sub.revision == 2)
        })
        .await;
    assert!(outage, "v2 never had a Ready pod: {:?}", verdicts(&seen));
    let more = s.tick_until(4, |_| false).await;
    let all: Vec<Evaluation> = seen.into_iter().chain(more).collect();
    assert!(
        all.iter().all(|e| e.verdict() != Some(Verdict::Bad)),
        "the outage was blamed on v2: {:?}\n{:#?}",
        verdicts(&all),
        sentences(&all)
    );
    assert!(
        sentences(&all)
            .iter()
            .any(|t| t.contains("not blamed on revision 2")),
        "the error ratio saw the outage on both revisions: {:#?}",
        sentences(&all)
    );
    assert_eq!(template_patches(&s.sim), 0);
    let d = s.deployments().get(NAME).await.expect("get web");
    assert_eq!(first_image(&d), "web:v2");
}
