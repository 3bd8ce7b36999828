//! The run loop follows the Deployment's current revision, always (issue
//! 13 item 7): a bad v2 is rolled back, deployed again (its ReplicaSet
//! reused, a new revision number), rolled back again, twenty times over,
//! while the sim's watches deliver Deployment and ReplicaSet events late
//! and out of order. `/status` names the current revision within two
//! ticks of every switch, a bad re-deploy is judged as the new revision
//! and rolled back at once, and on-call never hears about a revision that
//! was already replaced.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::api::{Api, ListParams};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::pipeline::RollbackResult;
use rollback_watchdog::report::status::StatusReport;
use rollback_watchdog::runtime::admin::{self, AdminServer};
use rollback_watchdog::sim::{Behaviours, WatchLag};

mod support;
use support::binary::receiver;
use support::watch::{Prom, Scenario, NAME};

const CYCLES: usize = 20;
const REVISION: &str = "deployment.kubernetes.io/revision";
/// The longest delay of one watch event, per kind.
const LAG: Duration = Duration::from_millis(300);

/// The pause before the next tick: random, so ticks land anywhere in the
/// lag after a switch (the rollback's patch follows the Bad tick at once).
fn gap(rng: &mut StdRng) -> Duration {
    Duration::from_millis(rng.random_range(50..=700))
}

/// Short everything; a crash of every pod of the new revision is Bad at
/// once (no Prometheus needed); the rollback budget allows one rollback
/// per cycle; blind notices come after 2 s of no data (Prometheus is a
/// closed port), so a notice about the wrong revision would show.
fn extra(hook: &str) -> String {
    format!(
        r#"verify_window = "1s"
rollout_timeout = "60s"
cooldown = "0s"
max_rollbacks_per_window = 100
rollback_budget_window = "1h"
immediate_bad_when_all_pods_crash = true
blind_alert_after = "2s"

[[notify]]
kind = "webhook"
name = "oncall"
url = "{hook}"
deadline = "10s"
"#
    )
}

/// What the API server said around one tick, and what `/status` said
/// after it.
#[derive(Clone)]
struct Tick {
    /// When the tick started (the loop's `now` is a little later).
    at: jiff::Timestamp,
    /// The Deployment's current revision per the API (its revision
    /// annotation once the controller observed its spec), before and
    /// after the tick.
    api_before: Option<i64>,
    api_after: Option<i64>,
    /// (revision, pod-template-hash) per the API's ReplicaSets, after.
    replicasets: Vec<(i64, String)>,
    /// `/status`: revision and hash under judgment.
    status: Option<(i64, String)>,
    /// The verdict of the tick, and the revision it judged.
    judged: Option<(i64, Verdict)>,
    /// `/status`' reasons, for failure messages.
    reasons: Vec<String>,
}

impl std::fmt::Debug for Tick {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} api {:?}->{:?} rs {:?} status {:?} judged {:?} {:?}",
            self.at,
            self.api_before,
            self.api_after,
            self.replicasets,
            self.status,
            self.judged,
            self.reasons
                .iter()
                .map(|r| r.chars().take(100).collect::<String>())
                .collect::<Vec<_>>()
        )
    }
}

/// The API's current revision of the Deployment; None while the
/// controller has not observed its latest spec.
async fn api_revision(s: &Scenario) -> Option<i64> {
    let d: Deployment = s.deployments().get(NAME).await.ok()?;
    let observed = d.status.as_ref().and_then(|st| st.observed_generation) >= d.metadata.generation;
    observed
        .then(|| d.metadata.annotations.as_ref()?.get(REVISION)?.parse().ok())
        .flatten()
}

async fn api_replicasets(s: &Scenario) -> Vec<(i64, String)> {
    let api: Api<ReplicaSet> = Api::namespaced(s.client.clone(), &s.ns);
    let list = api
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("list replicasets");
    list.items
        .iter()
        .filter_map(|rs| {
            let meta = &rs.metadata;
            let n = meta.annotations.as_ref()?.get(REVISION)?.parse().ok()?;
            Some((n, meta.labels.as_ref()?.get("pod-template-hash")?.clone()))
        })
        .collect()
}

async fn status(http: &reqwest::Client, admin: &AdminServer) -> StatusReport {
    http.get(format!("{}/status", admin.url()))
        .send()
        .await
        .expect("/status answers")
        .json()
        .await
        .expect("/status is JSON")
}

/// One tick of the real loop, with what the API and `/status` said.
async fn tick(s: &mut Scenario, http: &reqwest::Client, admin: &AdminServer, log: &mut Vec<Tick>) {
    let api_before = api_revision(s).await;
    let at = jiff::Timestamp::now();
    let e = s.tick().await;
    let report = status(http, admin).await;
    let target = report.targets.iter().find(|t| t.name == NAME);
    log.push(Tick {
        at,
        api_before,
        api_after: api_revision(s).await,
        replicasets: api_replicasets(s).await,
        status: target.and_then(|t| Some((t.revision?, t.pod_template_hash.clone()?))),
        judged: e
            .subject
            .as_ref()
            .zip(e.verdict())
            .map(|(s, v)| (s.revision, v)),
        reasons: target.map(|t| t.reasons.clone()).unwrap_or_default(),
    });
}

/// The revisions the API named around tick `i`: at it, at every tick
/// within the watch lag before it, and at the tick before those. What the
/// watchdog may be judging then: its caches see the API up to `LAG` late,
/// which spans several ticks when ticks come quickly (a rollback's ticks
/// can be 60 ms apart), so one tick of slack was not enough.
fn current_around(log: &[Tick], i: usize) -> Vec<i64> {
    let lag = jiff::SignedDuration::try_from(LAG).expect("a short lag");
    let mut first = i;
    while first > 0 && log[first - 1].at >= log[i].at - lag {
        first -= 1;
    }
    log[first.saturating_sub(1)..=i]
        .iter()
        .flat_map(|t| [t.api_before, t.api_after])
        .flatten()
        .collect()
}

/// Every switch of the API's revision is in `/status` within two ticks
/// (of those that start once the watch lag has passed),
/// `/status` never names a revision that was not current around its
/// tick, with that revision's hash, and every Bad verdict was about the
/// revision current then.
fn assert_followed(log: &[Tick], seed: u64) {
    let show = |from: usize| {
        log[from.saturating_sub(3)..(from + 4).min(log.len())]
            .iter()
            .map(|t| format!("{t:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let lag = jiff::SignedDuration::try_from(LAG).expect("a short lag");
    let mut last = None;
    for i in 0..log.len() {
        let Some(n) = log[i].api_before else { continue };
        if last == Some(n) {
            continue;
        }
        last = Some(n);
        // The API showed n before tick i: the caches hold it at the
        // latest LAG later. Of the ticks from then on, the first two
        // must name it, if it stayed current through them.
        let settled: Vec<usize> = (i..log.len())
            .filter(|&j| log[j].at >= log[i].at + lag)
            .take(2)
            .collect();
        let stayed = (i..=settled.last().copied().unwrap_or(log.len())).all(|j| {
            log.get(j)
                .is_some_and(|t| t.api_before == Some(n) && t.api_after == Some(n))
        });
        let shown = settled
            .iter()
            .any(|&j| log[j].status.as_ref().is_some_and(|(r, _)| *r == n));
        assert!(
            !stayed || shown,
            "seed {seed}: revision {n} is current from tick {i} but /status did not name it within 2 ticks after the lag:\n{}",
            show(i)
        );
    }
    for (i, t) in log.iter().enumerate() {
        if let Some((r, hash)) = &t.status {
            assert!(
                current_around(log, i).contains(r),
                "seed {seed}: /status names revision {r} at tick {i}, not current then:\n{}",
                show(i)
            );
            if let Some((_, h)) = t.replicasets.iter().find(|(n, _)| n == r) {
                assert_eq!(h, hash, "seed {seed}: tick {i}:\n{}", show(i));
            }
        }
        if let Some((r, Verdict::Bad)) = t.judged {
            assert!(
                current_around(log, i).contains(&r),
                "seed {seed}: revision {r} judged Bad at tick {i}, not current then:\n{}",
                show(i)
            );
        }
    }
}

/// Every notice about a revision (blind, escalation, degraded, a
/// rollback started) came while that revision was current; a rollback's
/// outcome names the revision it replaced, by design.
fn assert_notices_current(got: &Arc<Mutex<Vec<serde_json::Value>>>, log: &[Tick], seed: u64) {
    let bodies = got.lock().expect("lock").clone();
    for body in &bodies {
        let event = body["event"].as_str().unwrap_or_default();
        if event == "rollback_succeeded" {
            continue;
        }
        let Some(revision) = body.pointer("/from/revision").and_then(|r| r.as_i64()) else {
            continue;
        };
        let at: jiff::Timestamp = body["at"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("a notice has its time");
        let i = log
            .iter()
            .rposition(|t| t.at <= at)
            .expect("sent on a tick");
        assert!(
            current_around(log, i).contains(&revision),
            "seed {seed}: {event} notice about revision {revision} at tick {i} ({at}), when {:?} was current: {body:#}",
            current_around(log, i)
        );
    }
}

fn seed() -> u64 {
    std::env::var("REDEPLOY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            now.as_nanos() as u64
        })
}

#[tokio::test]
async fn a_bad_revision_deployed_again_and_again_is_judged_as_the_new_revision_and_rolled_back_each_time(
) {
    let seed = seed();
    eprintln!("watch lag seed {seed} (REDEPLOY_SEED={seed} to replay)");
    let (hook, got) = receiver().await;
    let lag = WatchLag::seeded(seed)
        .kind("deployments", LAG)
        .kind("replicasets", LAG);
    let mut s = Scenario::start_lagged(
        "redeploy",
        Prom::Url("http://127.0.0.1:1"),
        Behaviours::builtin(),
        &extra(&hook),
        lag,
    )
    .await;
    s.with_pipeline().await;
    let admin = admin::start(([127, 0, 0, 1], 0).into(), s.admin.clone())
        .await
        .expect("admin server");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut log = Vec::new();
    tick(&mut s, &http, &admin, &mut log).await;

    for cycle in 0..CYCLES {
        // A person deploys v2 again at any moment between two ticks.
        tokio::time::sleep(gap(&mut rng)).await;
        s.deploy("web:v2-crash").await;
        let deployed_at = log.len();
        let mut outcomes = Vec::new();
        for _ in 0..80 {
            tokio::time::sleep(gap(&mut rng)).await;
            tick(&mut s, &http, &admin, &mut log).await;
            outcomes.extend(s.daemon.take_outcomes());
            if !outcomes.is_empty() && !s.daemon.pipelines_running() {
                break;
            }
        }
        assert_eq!(
            outcomes.len(),
            1,
            "seed {seed}: cycle {cycle}: one rollback of the bad revision: {outcomes:?}\n{:#?}",
            &log[deployed_at..]
        );
        assert_eq!(
            outcomes[0].result,
            RollbackResult::Succeeded,
            "seed {seed}: cycle {cycle}: {}",
            outcomes[0].why()
        );
        // v2 was judged as the revision the re-deploy made, at once once
        // blocklisted: the first Bad verdict is about it.
        let v2 = 2 * cycle as i64 + 2;
        let bad = log[deployed_at..]
            .iter()
            .find_map(|t| t.judged.filter(|(_, v)| *v == Verdict::Bad));
        assert_eq!(
            bad.map(|(r, _)| r),
            Some(v2),
            "seed {seed}: cycle {cycle}:\n{:#?}",
            &log[deployed_at..]
        );
        assert_eq!(
            first_image(&s.deployments().get(NAME).await.expect("get web")),
            "web:v1",
            "seed {seed}: cycle {cycle}"
        );
        // Two more ticks: `/status` follows the rollback's revision.
        for _ in 0..2 {
            tokio::time::sleep(gap(&mut rng)).await;
            tick(&mut s, &http, &admin, &mut log).await;
        }
    }
    eprintln!(
        "{} ticks, {} of them pending (the caches lagging a switch)",
        log.len(),
        log.iter().filter(|t| t.status.is_none()).count()
    );
    assert_followed(&log, seed);

    // On-call heard of each rollback, each about the v2 revision of its
    // cycle, the re-deploys flagged as such.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let succeeded = |got: &Arc<Mutex<Vec<serde_json::Value>>>| {
        got.lock()
            .expect("lock")
            .iter()
            .filter(|b| b["event"] == "rollback_succeeded")
            .count()
    };
    while succeeded(&got) < CYCLES {
        assert!(
            std::time::Instant::now() < deadline,
            "seed {seed}: {} rollback_succeeded notices",
            succeeded(&got)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let started: Vec<(i64, bool)> = got
        .lock()
        .expect("lock")
        .iter()
        .filter(|b| b["event"] == "rollback_started")
        .map(|b| {
            (
                b.pointer("/from/revision")
                    .and_then(|r| r.as_i64())
                    .unwrap_or(0),
                b["blocklisted_redeploy"] == true,
            )
        })
        .collect();
    let expected: Vec<(i64, bool)> = (0..CYCLES as i64).map(|c| (2 * c + 2, c > 0)).collect();
    assert_eq!(started, expected, "seed {seed}");
    let kinds: Vec<String> = got
        .lock()
        .expect("lock")
        .iter()
        .map(|b| b["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        kinds
            .iter()
            .all(|k| ["rollback_started", "rollback_succeeded", "blind"].contains(&k.as_str())),
        "seed {seed}: no escalation, no failure: {kinds:?}"
    );
    assert_notices_current(&got, &log, seed);
    admin.stop(Duration::from_secs(2)).await;
}
