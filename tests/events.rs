//! The event-driven pod signal: a pod of the watched revision entering a
//! crash state wakes an evaluation of its target at once, not at the next
//! tick; an evaluation between ticks adds no failing tick, so
//! `failure_threshold` still counts ticks and a storm of events counts for
//! nothing; and a good release with a messy start (one restart during
//! warm-up, pods slow to become Ready) is kept.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::observe::wake::Wake;
use rollback_watchdog::report::status::StatusVerdict;
use rollback_watchdog::runtime::app::{App, PipelineOptions, Record};
use rollback_watchdog::signals::SignalId;
use rollback_watchdog::sim::{Behaviour, Behaviours, Crash};

mod support;
use support::watch::{template_patches, verdicts, Prom, Scenario, NAME};

/// No Prometheus: the pod signal needs none.
const NO_PROMETHEUS: &str = "http://127.0.0.1:1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_is_bad_and_rolled_back_before_the_next_tick_is_due() {
    let s = Scenario::start(
        "ev-crash",
        Prom::Url(NO_PROMETHEUS),
        Behaviours::builtin(),
        "immediate_bad_when_all_pods_crash = true\nrollout_timeout = \"60s\"\nverify_window = \"2s\"\n",
    )
    .await;
    // The real loop, ticking every 60 s: its first tick is at once, its
    // second a minute later.
    let interval = Duration::from_secs(60);
    let mut config = (*s.config).clone();
    config.watchdog.interval = interval;
    let app = App::new(Arc::new(config), s.client.clone());
    let notifier = Arc::new(app.notifier(Record::AuditLog).await.expect("notifiers"));
    let daemon = app
        .daemon()
        .pipeline(PipelineOptions::new(notifier).poll_interval(Duration::from_millis(250)))
        .build()
        .expect("daemon");
    let metrics = app.metrics().clone();
    let admin = app.admin().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let run = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));
    // The first tick has judged v1.
    support::eventually("the first tick", || {
        let status = admin.snapshot();
        match status.targets.iter().find(|t| t.name == NAME) {
            Some(t) if t.revision == Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert_eq!(metrics.event_evaluations.get(), 0, "nothing woke it yet");
    s.deploy("web:v2-crash").await;

    // Bad, and rolled back, while the second tick is not due yet.
    let next_tick = started + interval;
    let status = loop {
        let status = admin.snapshot();
        let web = status.targets.iter().find(|t| t.name == NAME).cloned();
        if template_patches(&s.sim) == 1 {
            break web;
        }
        assert!(
            Instant::now() + Duration::from_secs(5) < next_tick,
            "not rolled back before the next tick; /status: {web:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        metrics.event_evaluations.get() > 0,
        "a watch event woke the evaluation"
    );
    let web = status.expect("web in /status");
    assert_eq!(web.verdict, StatusVerdict::Bad, "{web:?}");
    assert!(
        web.reasons
            .first()
            .is_some_and(|r| r.contains("Bad at once (immediate_bad_when_all_pods_crash)")),
        "{:?}",
        web.reasons
    );
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the loop stops")
        .expect("the loop's task")
        .expect("the loop");
}

/// Wakes `web`'s pods `n` times, as a burst of watch events would, and
/// evaluates after each; the evaluations of `web`.
async fn storm(
    s: &mut Scenario,
    hash: &str,
    n: usize,
) -> Vec<rollback_watchdog::runtime::daemon::Evaluation> {
    let mut seen = Vec::new();
    for _ in 0..n {
        s.daemon.caches().wakeups().push(Wake::Pods {
            namespace: s.ns.clone(),
            hash: hash.to_owned(),
        });
        seen.extend(
            s.daemon
                .wake(jiff::Timestamp::now())
                .await
                .into_iter()
                .filter(|e| e.target.name == NAME),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

fn pods_failing_ticks(s: &Scenario) -> u32 {
    s.admin
        .snapshot()
        .targets
        .iter()
        .find(|t| t.name == NAME)
        .and_then(|t| t.signals.iter().find(|sig| sig.signal == "pods"))
        .map_or(0, |sig| sig.failing_ticks)
}

#[tokio::test]
async fn evaluations_between_ticks_add_no_failing_tick_so_a_storm_of_events_counts_for_nothing() {
    // Without immediate_bad_when_all_pods_crash: failure_threshold (3)
    // ticks, 1 s apart.
    let mut s = Scenario::start(
        "ev-storm",
        Prom::Url(NO_PROMETHEUS),
        Behaviours::builtin(),
        "",
    )
    .await;
    s.tick().await;
    s.deploy("web:v2-crash").await;
    // Until the crash is established and fails the pod signal on a tick.
    let seen = s
        .tick_until(30, |e| {
            e.results
                .iter()
                .any(|r| r.signal == SignalId::Pods && r.outcome.is_fail())
        })
        .await;
    let first = seen.last().expect("ticked");
    assert_eq!(
        first.verdict(),
        Some(Verdict::Suspect),
        "{:?}",
        verdicts(&seen)
    );
    let hash = first
        .subject
        .as_ref()
        .map(|sub| sub.pod_template_hash.clone())
        .expect("v2 judged");
    assert_eq!(pods_failing_ticks(&s), 1);

    // A storm of events between ticks: each evaluation sees the pods
    // failing, none adds a failing tick.
    let between = storm(&mut s, &hash, 10).await;
    assert_eq!(between.len(), 10, "each wake-up evaluated web");
    assert!(
        between.iter().all(|e| e.results.len() == 1
            && e.results[0].signal == SignalId::Pods
            && e.results[0].outcome.is_fail()),
        "only the pod signal, failing: {:?}",
        between
            .iter()
            .map(|e| e.results.iter().map(|r| r.describe()).collect::<Vec<_>>())
            .collect::<Vec<_>>()
    );
    assert!(
        between.iter().all(|e| e.verdict() != Some(Verdict::Bad)),
        "{:?}",
        verdicts(&between)
    );
    assert_eq!(pods_failing_ticks(&s), 1, "the storm counted nothing");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = s.tick().await;
    assert_eq!(second.verdict(), Some(Verdict::Suspect));
    assert_eq!(pods_failing_ticks(&s), 2, "the tick counted once");
    let between = storm(&mut s, &hash, 5).await;
    assert!(
        between.iter().all(|e| e.verdict() != Some(Verdict::Bad)),
        "{:?}",
        verdicts(&between)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let third = s.tick().await;
    assert_eq!(
        third.verdict(),
        Some(Verdict::Bad),
        "on the third failing tick"
    );
}

#[tokio::test]
async fn a_good_release_with_a_restart_during_warm_up_and_slow_readiness_is_kept() {
    // v2 crashes once as it starts on every pod (one restart, a moment
    // in CrashLoopBackOff), then takes 2 s to become Ready: a storm of
    // pod events, none of them an established crash.
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "web:v2",
        Behaviour {
            crash: Crash::CrashLoop,
            crashes: Some(1),
            ready_after: Duration::from_secs(40),
            ..Behaviour::default()
        },
    );
    let mut s = Scenario::start(
        "ev-good",
        Prom::Url(NO_PROMETHEUS),
        behaviours,
        "immediate_bad_when_all_pods_crash = true\n",
    )
    .await;
    s.with_pipeline().await;
    s.tick().await;
    s.deploy("web:v2").await;
    // The loop as it runs: wake-ups evaluated as they come, a tick every
    // second, until v2 is rolled out and judged for a few ticks more.
    let mut woken = Vec::new();
    let mut ticks = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut next_tick = Instant::now() + Duration::from_secs(1);
    let mut rolled_out_ticks = 0;
    while rolled_out_ticks < 3 {
        assert!(
            Instant::now() < deadline,
            "v2 never rolled out; ticks {:?}",
            verdicts(&ticks)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        woken.extend(
            s.daemon
                .wake(jiff::Timestamp::now())
                .await
                .into_iter()
                .filter(|e| e.target.name == NAME),
        );
        if Instant::now() >= next_tick {
            next_tick += Duration::from_secs(1);
            let e = s.tick().await;
            let ready = e.subject.as_ref().is_some_and(|sub| {
                sub.images == ["web:v2"]
                    && sub.pods.len() == 3
                    && sub
                        .pods
                        .iter()
                        .all(|p| rollback_watchdog::signals::pods::is_ready(p))
            });
            if ready {
                rolled_out_ticks += 1;
            }
            ticks.push(e);
        }
    }
    assert!(!woken.is_empty(), "v2's restarts woke evaluations");
    let all: Vec<_> = woken.iter().chain(&ticks).collect();
    assert!(
        all.iter().all(|e| e.verdict() != Some(Verdict::Bad)),
        "ticks {:?}, between ticks {:?}",
        verdicts(&ticks),
        verdicts(&woken)
    );
    assert!(
        all.iter().all(|e| !e
            .results
            .iter()
            .any(|r| r.signal == SignalId::Pods && r.outcome.is_fail())),
        "the one restart never failed the pod signal"
    );
    assert_eq!(pods_failing_ticks(&s), 0);
    assert_eq!(template_patches(&s.sim), 0, "kept");
    assert!(!s.daemon.pipelines_running());
}
