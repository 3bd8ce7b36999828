//! The story in order: the stage, the watchdog, v1 known-good, the bad
//! v2 deployed, its rollback watched tick by tick, the summary. Each wait is
//! bounded and says what did not happen when it runs out.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

use super::feeds::{AuditTail, Feeds};
use super::stage::set_stage;
use super::summary::{scrape_metrics, summary};
use super::timeline::Timeline;
use super::watchdog::start_watchdog;
use super::watcher::Watcher;
use super::{
    bounded, lock, DemoError, DemoOptions, DemoReport, Parts, DELIVERY_LIMIT, KNOWN_GOOD_LIMIT,
    POLL, ROLLBACK_LIMIT, TICK, TICK_LIMIT, V2_CRASH, V2_ERRORS, WATCH_WINDOW,
};
use crate::decide::judge::Verdict;
use crate::pipeline::{RollbackOutcome, RollbackResult};
use crate::runtime::daemon::{Daemon, Evaluation};
use crate::sim::{SEED_DEPLOYMENT, SEED_NAMESPACE};

pub(super) async fn tell(
    tl: &Timeline,
    options: &DemoOptions,
    parts: &mut Parts,
) -> Result<DemoReport, DemoError> {
    let stage = set_stage(tl, options, parts).await?;
    let with_prometheus = stage.prometheus_url.is_some();
    let mut w = start_watchdog(tl, &stage, parts).await?;
    let mut watch = Watcher::new(w.config.defaults.failure_threshold);
    let feeds = Feeds::start(
        tl,
        AuditTail::new(&w.audit_path),
        stage.messages.clone(),
        w.deliveries.clone(),
    );
    wait_known_good(tl, &mut w.daemon, &mut watch).await?;

    // 4. The bad v2.
    let bad = if with_prometheus { V2_ERRORS } else { V2_CRASH };
    let what = if with_prometheus {
        "30 % of its requests answer 5xx"
    } else {
        "every pod crash-loops"
    };
    deploy(&stage.client, bad).await?;
    let deployed = Instant::now();
    tl.say(format!(
        "deploying {bad} ({what}), like `kubectl set image deployment/{SEED_DEPLOYMENT} app={bad}`"
    ));
    let outcome = wait_rolled_back(tl, &mut w.daemon, &mut watch, bad, deployed).await?;
    feeds.poll(tl);
    tl.say(format!(
        "rollback finished: {}",
        outcome
            .steps
            .iter()
            .map(|s| format!("{} {}", s.step.as_str(), s.outcome.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Every decision handed to the notifier has been dealt with (bounded).
    let emitted = w.collected.all();
    let wait_until = Instant::now() + DELIVERY_LIMIT;
    while lock(&w.deliveries).len() < emitted.len() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let feeds = feeds.stop(tl).await;
    if feeds.shown_messages == 0 {
        return Err(DemoError::NotVerified(
            "no Slack message reached the local receiver".into(),
        ));
    }

    // 6. Read back what a user would check, and the summary.
    let scrape = scrape_metrics(&w.metrics_url, &w.dir).await?;
    summary(
        tl,
        &stage.client,
        &outcome,
        &emitted,
        &feeds,
        &scrape,
        bad,
        with_prometheus,
        deployed,
        &watch,
    )
    .await
}

/// Step 3: v1 becomes known-good.
async fn wait_known_good(
    tl: &Timeline,
    daemon: &mut Daemon,
    watch: &mut Watcher,
) -> Result<(), DemoError> {
    let limit = Instant::now() + KNOWN_GOOD_LIMIT;
    loop {
        let e = tick(daemon).await?;
        watch.observe(tl, &e);
        if e.state.known_good.as_ref().is_some_and(|k| k.revision == 1) {
            return Ok(());
        }
        if Instant::now() >= limit {
            return Err(DemoError::TimedOut(format!(
                "v1 did not become known-good within {}s (last verdict: {}); the watchdog never saw a whole healthy window",
                KNOWN_GOOD_LIMIT.as_secs(),
                e.verdict().map_or("none".to_string(), |v| v.to_string())
            )));
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Step 5: the loop judges the bad release, the pipeline rolls it back;
/// what happens is printed as it happens. Ok only for a verified rollback.
async fn wait_rolled_back(
    tl: &Timeline,
    daemon: &mut Daemon,
    watch: &mut Watcher,
    bad: &str,
    deployed: Instant,
) -> Result<RollbackOutcome, DemoError> {
    let limit = deployed + ROLLBACK_LIMIT;
    let mut next_tick = Instant::now();
    let outcome: RollbackOutcome = loop {
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            let e = tick(daemon).await?;
            watch.observe(tl, &e);
            if daemon.pipelines_running() && !watch.pipeline_seen {
                watch.pipeline_seen = true;
                tl.say("rollback pipeline started: validate -> backup -> update -> wait -> verify -> audit -> notify");
            }
            if let Some(o) = daemon.take_outcomes().into_iter().next() {
                break o;
            }
            if e.verdict() == Some(Verdict::Degraded) && !daemon.pipelines_running() {
                return Err(DemoError::TimedOut(format!(
                    "{bad} turned bad only after its {WATCH_WINDOW} observation window closed (verdict Degraded), so the watchdog reported it and, as designed, did not roll back; this machine was too slow for the demo's short window"
                )));
            }
        }
        if Instant::now() >= limit {
            daemon.wait_pipelines(Duration::from_secs(5)).await;
            if let Some(o) = daemon.take_outcomes().into_iter().next() {
                break o;
            }
            return Err(DemoError::TimedOut(format!(
                "{bad} was not rolled back within {}s of its deploy (last verdict: {}); the watchdog did not finish a rollback",
                ROLLBACK_LIMIT.as_secs(),
                watch.last_verdict()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    if outcome.result != RollbackResult::Succeeded {
        return Err(DemoError::NotRolledBack {
            result: outcome.result,
            why: outcome.why(),
            steps: outcome
                .steps
                .iter()
                .map(|s| format!("{} {}: {}", s.step.as_str(), s.outcome.as_str(), s.summary))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(outcome)
}

async fn tick(daemon: &mut Daemon) -> Result<Evaluation, DemoError> {
    let evaluations = tokio::time::timeout(TICK_LIMIT, daemon.tick(Timestamp::now()))
        .await
        .map_err(|_| {
            DemoError::TimedOut(format!(
                "one tick of the run loop took longer than {}s",
                TICK_LIMIT.as_secs()
            ))
        })?;
    evaluations
        .into_iter()
        .find(|e| e.target.namespace == SEED_NAMESPACE && e.target.name == SEED_DEPLOYMENT)
        .ok_or_else(|| {
            DemoError::NotVerified(format!(
                "the run loop does not watch {SEED_NAMESPACE}/{SEED_DEPLOYMENT}"
            ))
        })
}

/// `kubectl set image`: what a person deploying v2 does.
async fn deploy(client: &kube::Client, image: &str) -> Result<(), DemoError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    let what = format!("set the image of {SEED_NAMESPACE}/{SEED_DEPLOYMENT} to {image}");
    bounded(
        &what,
        api.patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        ),
    )
    .await
    .map(|_| ())
}
