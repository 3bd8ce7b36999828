//! The run loop against the simulated cluster and a real Prometheus
//! scraping its app pods: the runbook's decision criteria, and the ways
//! the watchdog must not be fooled (missing data, low traffic, flapping).
//! Until the pipeline lands, a Bad verdict is reported, not acted on.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::signals::{Outcome, SignalId};
use rollback_watchdog::sim::{Behaviour, Behaviours, Traffic};

mod support;
use support::prom::shared;
use support::watch::{verdicts, Prom, Scenario, NAME};

/// A port nothing listens on: Prometheus "stopped".
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

fn result_of<'a>(
    e: &'a rollback_watchdog::runtime::daemon::Evaluation,
    id: &SignalId,
) -> Option<&'a Outcome> {
    e.results
        .iter()
        .find(|r| &r.signal == id)
        .map(|r| &r.outcome)
}

/// A loopback health endpoint: `fail(n)` decides whether call n (from 1)
/// answers 500. Returns its URL and the call counter.
async fn health_server(fail: fn(usize) -> bool) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move || {
            let counter = counter.clone();
            async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                if fail(n) {
                    (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down")
                } else {
                    (axum::http::StatusCode::OK, "ok")
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/health", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, calls)
}

#[tokio::test]
async fn a_revision_with_critical_errors_is_judged_bad_naming_the_error_ratio() {
    let prom = shared();
    let mut s = Scenario::start("s1-errors", Prom::Url(&prom.url), Behaviours::builtin(), "").await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;
    s.deploy("web:v2-errors").await;
    let seen = s.tick_until_bad(40).await;
    let last = seen.last().expect("ticks");
    // Three consecutive failing ticks of the error ratio, not fewer. A
    // tick whose span held no new scrape is Inconclusive and neither
    // counts nor resets (issue 12: each tick measures only new requests).
    let failing: Vec<bool> = seen
        .iter()
        .filter_map(|e| result_of(e, &SignalId::ErrorRate))
        .filter(|o| !o.is_inconclusive())
        .map(|o| o.is_fail())
        .collect();
    assert!(failing.ends_with(&[true, true, true]), "{failing:?}");
    let Some(Outcome::Fail { measured, .. }) = result_of(last, &SignalId::ErrorRate) else {
        panic!("error rate did not fail");
    };
    // 30 % in truth; a span of a second or two holds 60 to 120 noisy
    // requests, so one span's ratio varies by several points.
    assert!((0.15..0.5).contains(&measured.value), "measured {measured}");
    let judgement = last.judgement.as_ref().expect("judged");
    let reason = &judgement.reasons[0].sentence;
    assert!(
        reason.contains("error ratio") && reason.contains("> max 5.0 %"),
        "{reason}"
    );
    assert!(reason.contains(&measured.to_string()), "{reason}");
    // Reported, not acted on: an Event and /status, the template untouched.
    let events = s.events();
    assert!(
        events
            .iter()
            .any(|(reason, note)| reason == "RevisionBad" && note.contains("error ratio")),
        "{events:?}"
    );
    let status = s.admin.snapshot();
    assert_eq!(status.targets[0].verdict.as_str(), "bad");
    assert_eq!(status.targets[0].revision, Some(2));
    s.wait_rolled_out("web:v2-errors").await;
}

/// The built-in behaviours with exact traffic. These scenarios test the
/// latency rule's arithmetic: with Poisson traffic, the p95 of a 10 s
/// window at 60 req/s wanders about ±5 %, so a 1.6× slowdown reads above
/// 1.8 and a 1.3× one above 1.5 now and then (about 2 % and 1 % of
/// windows).
fn exact_traffic() -> Behaviours {
    let behaviours = Behaviours::builtin();
    behaviours.set_default(Behaviour {
        traffic: Traffic::Exact,
        ..Behaviour::default()
    });
    behaviours
}

#[tokio::test]
async fn a_revision_more_than_50_percent_slower_than_its_baseline_is_bad() {
    let prom = shared();
    // A p95 over a second's 60 requests is noise: each span holds at
    // least 300 (5 s of traffic), as a production tick holds thousands.
    let extra = "[targets.latency]\nmin_requests = 300\n";
    let mut s = Scenario::start("s2-slow", Prom::Url(&prom.url), exact_traffic(), extra).await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;
    // v1 serves long enough to be a baseline (10 s here), as a release
    // being replaced has.
    s.tick_until(4, |_| false).await;
    s.deploy("web:v2-slow").await;
    let seen = s.tick_until_bad(90).await;
    let last = seen.last().expect("ticks");
    let Some(Outcome::Fail {
        measured, baseline, ..
    }) = result_of(last, &SignalId::Latency)
    else {
        panic!("latency did not fail: {:?}", last.results);
    };
    // v1's p95 at the rollout's start: 50 ms median, lognormal σ 0.5.
    let baseline = baseline.expect("the baseline is shown");
    assert!((0.09..0.14).contains(&baseline), "baseline {baseline}");
    let ratio = measured.value / baseline;
    // 1.6× in truth; a tick now measures only the requests since the last
    // counted one, so the quantile of a span varies more than over a 10s
    // window did.
    assert!((1.45..2.1).contains(&ratio), "ratio {ratio}");
    // No errors in this scenario: a Pass, or Inconclusive on a tick whose
    // span held no new scrape (issue 12), never a Fail.
    assert!(
        matches!(
            result_of(last, &SignalId::ErrorRate),
            Some(Outcome::Pass { .. } | Outcome::Inconclusive { .. })
        ),
        "no errors in this scenario: {:?}",
        result_of(last, &SignalId::ErrorRate)
    );
    let reason = &last.judgement.as_ref().expect("judged").reasons[0].sentence;
    assert!(reason.contains("baseline"), "{reason}");
}

#[tokio::test]
async fn a_revision_30_percent_slower_is_never_bad_and_becomes_known_good() {
    let prom = shared();
    let behaviours = exact_traffic();
    behaviours.update("web:v2", |b| b.latency = Duration::from_millis(65));
    let extra = "watch_window = \"25s\"\n";
    let mut s = Scenario::start("s3-bitslower", Prom::Url(&prom.url), behaviours, extra).await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;
    s.deploy("web:v2").await;
    let seen = s
        .tick_until(45, |e| {
            e.state.known_good.as_ref().is_some_and(|k| k.revision == 2)
        })
        .await;
    let v = verdicts(&seen);
    assert!(!v.iter().any(|v| v == "bad" || v == "degraded"), "{v:?}");
    assert!(
        v.iter().any(|v| v == "healthy"),
        "it was verified at least once: {v:?}"
    );
    let d = s.deployments().get(NAME).await.expect("get");
    let record = d
        .metadata
        .annotations
        .unwrap_or_default()
        .get("rollback-watchdog.io/known-good")
        .cloned()
        .expect("the known-good annotation is written");
    let record: serde_json::Value = serde_json::from_str(&record).expect("JSON");
    assert_eq!(record["revision"], 2);
    assert_eq!(record["images"][0], "web:v2");
    assert!(s
        .events()
        .iter()
        .any(|(reason, _)| reason == "RevisionKnownGood"));
}

#[tokio::test]
async fn a_crash_looping_revision_is_bad_from_the_pod_signal_with_prometheus_stopped() {
    let mut s = Scenario::start(
        "s4-crash",
        Prom::Url(&closed_port()),
        Behaviours::builtin(),
        "",
    )
    .await;
    s.deploy("web:v2-crash").await;
    let seen = s.tick_until_bad(40).await;
    let last = seen.last().expect("ticks");
    assert!(matches!(
        result_of(last, &SignalId::Pods),
        Some(Outcome::Fail { .. })
    ));
    assert!(
        matches!(
            result_of(last, &SignalId::ErrorRate),
            Some(Outcome::Inconclusive { .. })
        ),
        "Prometheus is down: {:?}",
        result_of(last, &SignalId::ErrorRate)
    );
    let reason = &last.judgement.as_ref().expect("judged").reasons[0].sentence;
    assert!(reason.contains("CrashLoopBackOff"), "{reason}");
}

#[tokio::test]
async fn prometheus_stopping_mid_window_is_inconclusive_never_bad_and_reported_blind_once() {
    // This scenario stops its Prometheus, so it has its own.
    let mut s = Scenario::start("s5-blind", Prom::Own, Behaviours::builtin(), "").await;
    s.wait_scraped().await;
    s.deploy("web:v2-errors").await;
    s.tick().await;
    if let Some(prom) = s.own_prometheus.as_mut() {
        prom.stop().await;
    }
    // blind_alert_after is 5s: 15 ticks give it three times over.
    let seen = s.tick_until(15, |_| false).await;
    let v = verdicts(&seen);
    assert!(!v.iter().any(|v| v == "bad" || v == "suspect"), "{v:?}");
    assert_eq!(v.last().map(String::as_str), Some("inconclusive"), "{v:?}");
    let blind: Vec<_> = seen
        .iter()
        .filter_map(|e| e.judgement.as_ref()?.blind_report.clone())
        .collect();
    assert_eq!(blind.len(), 1, "one blind report per episode: {blind:?}");
    assert!(
        blind[0].sentence.contains("error ratio"),
        "{}",
        blind[0].sentence
    );
    let events = s.events();
    assert_eq!(
        events.iter().filter(|(r, _)| r == "WatchdogBlind").count(),
        1,
        "{events:?}"
    );
    assert!(s.admin.snapshot().targets[0].blind);
}

#[tokio::test]
async fn traffic_below_the_minimum_rate_is_inconclusive_not_bad() {
    let prom = shared();
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "web:v2-quiet",
        Behaviour {
            request_rate: 0.1,
            error_ratio: 0.3,
            ..Behaviour::default()
        },
    );
    let mut s = Scenario::start("s6-quiet", Prom::Url(&prom.url), behaviours, "").await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;
    s.deploy("web:v2-quiet").await;
    let seen = s.tick_until(20, |_| false).await;
    let v = verdicts(&seen);
    assert!(!v.iter().any(|v| v == "bad" || v == "suspect"), "{v:?}");
    let last = seen.last().expect("ticks");
    for id in [SignalId::ErrorRate, SignalId::Latency] {
        match result_of(last, &id) {
            Some(Outcome::Inconclusive { why }) => assert!(why.contains("req"), "{why}"),
            other => panic!("expected {id:?} inconclusive for low traffic, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_flapping_health_check_failing_one_tick_in_three_is_never_bad() {
    let (url, calls) = health_server(|n| n % 3 == 0).await;
    let extra = format!("[targets.health]\nurl = \"{url}\"\n");
    let mut s = Scenario::start(
        "s7-flap",
        Prom::Url(&closed_port()),
        Behaviours::builtin(),
        &extra,
    )
    .await;
    let seen = s.tick_until(18, |_| false).await;
    let v = verdicts(&seen);
    assert!(!v.iter().any(|v| v == "bad"), "{v:?}");
    assert!(
        v.iter().any(|v| v == "suspect"),
        "the failing ticks were seen: {v:?}"
    );
    assert!(calls.load(Ordering::SeqCst) >= 18);
}

#[tokio::test]
async fn failing_health_on_the_new_pods_only_is_bad_through_per_pod_probes() {
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "web:v2-sick",
        Behaviour {
            health_status: 500,
            ..Behaviour::default()
        },
    );
    let extra = "[targets.health]\nper_pod = { port = 8080, path = \"/health\" }\n";
    let mut s = Scenario::start("s8-perpod", Prom::Url(&closed_port()), behaviours, extra).await;
    // v1 answers 200 on every pod: healthy.
    let first = s.tick().await;
    let per_pod = SignalId::health(SignalId::PER_POD);
    assert!(
        matches!(result_of(&first, &per_pod), Some(Outcome::Pass { .. })),
        "{:?}",
        first.results
    );
    s.deploy("web:v2-sick").await;
    let seen = s.tick_until_bad(30).await;
    let last = seen.last().expect("ticks");
    assert!(matches!(
        result_of(last, &per_pod),
        Some(Outcome::Fail { .. })
    ));
    let reason = &last.judgement.as_ref().expect("judged").reasons[0].sentence;
    assert!(reason.contains("web-"), "names the pods: {reason}");
}

#[tokio::test]
async fn a_failing_service_url_alone_is_bad_after_its_own_threshold() {
    let (url, _) = health_server(|_| true).await;
    let extra = format!("[targets.health]\nurl = \"{url}\"\n");
    let mut s = Scenario::start(
        "s8-service",
        Prom::Url(&closed_port()),
        Behaviours::builtin(),
        &extra,
    )
    .await;
    let seen = s
        .tick_until(10, |e| e.verdict() == Some(Verdict::Bad))
        .await;
    let v = verdicts(&seen);
    assert_eq!(
        v,
        ["suspect", "suspect", "bad"],
        "three failing ticks, then Bad"
    );
}

#[tokio::test]
async fn a_target_whose_deployment_does_not_exist_is_a_warning_and_the_others_go_on() {
    let extra = "[[targets]]\nnamespace = \"s9-missing\"\nname = \"ghost\"\n";
    let mut s = Scenario::start(
        "s9-missing",
        Prom::Url(&closed_port()),
        Behaviours::builtin(),
        extra,
    )
    .await;
    let e = s.tick().await;
    assert!(e.judgement.is_some(), "web is still judged");
    let status = s.admin.snapshot();
    assert_eq!(status.targets.len(), 1, "{status:?}");
    assert!(
        status
            .warnings
            .iter()
            .any(|w| w.contains("s9-missing/ghost") && w.contains("Deployment not found")),
        "{:?}",
        status.warnings
    );
}

#[tokio::test]
async fn two_hundred_targets_tick_without_a_single_list_or_get_request() {
    use rollback_watchdog::sim::store::NAMESPACES;
    use rollback_watchdog::sim::{SimCluster, SimOptions};
    // The API alone with hand-made, rolled-out Deployments: only the
    // watchdog's watchers talk to the API server.
    let sim = SimCluster::start(SimOptions {
        api_only: true,
        ..Default::default()
    })
    .await
    .expect("sim");
    for ns in ["many", "rollback-watchdog"] {
        sim.store()
            .create(
                &NAMESPACES,
                "",
                serde_json::json!({"metadata": {"name": ns}}),
            )
            .expect("namespace");
    }
    let names = support::handmade::rolled_out_deployments(sim.store(), "many", 200);
    let extra: String = names
        .iter()
        .skip(1)
        .map(|n| format!("[[targets]]\nnamespace = \"many\"\nname = \"{n}\"\n"))
        .collect();
    let audit = tempfile::tempdir().expect("tempdir");
    let toml = support::watch::config_toml(
        "many",
        &closed_port(),
        &audit.path().join("audit.jsonl").display().to_string(),
        &extra,
    )
    .replace("name = \"web\"", &format!("name = \"{}\"", names[0]));
    let config = support::watch::load(&toml);
    let client = sim.client().await.expect("client");
    let mut daemon = rollback_watchdog::runtime::app::App::new(Arc::new(config), client)
        .daemon()
        .build()
        .expect("daemon");
    daemon
        .wait_synced(Duration::from_secs(60))
        .await
        .expect("sync");
    // The first tick writes verdict Events; count from the second.
    daemon.tick(jiff::Timestamp::now()).await;
    sim.request_log().clear();
    for _ in 0..5 {
        let evaluations = daemon.tick(jiff::Timestamp::now()).await;
        assert_eq!(evaluations.len(), 200);
        assert!(
            evaluations.iter().all(|e| e.judgement.is_some()),
            "every target judged"
        );
    }
    let log = sim.request_log();
    assert_eq!(
        log.count("list", ""),
        0,
        "list requests during ticks: {:?}",
        log.entries()
    );
    assert_eq!(
        log.count("get", ""),
        0,
        "get requests during ticks: {:?}",
        log.entries()
    );
}

/// Issue 13, "Long names": the API server cuts a pod's generateName
/// (`<deployment>-<hash>-`) to 58 characters, so a 60-character Deployment's
/// pods are not `<deployment>-<hash>-…`. `{pods}` must still find them.
#[tokio::test]
async fn a_deployment_with_a_60_character_name_is_judged_by_its_prometheus_signals() {
    const LONG: &str = "payments-reconciliation-worker-eu-west-primary-canary-blue01";
    assert_eq!(LONG.len(), 60);
    let prom = shared();
    let mut s = Scenario::start_named(
        "s-long-name",
        LONG,
        Prom::Url(&prom.url),
        Behaviours::builtin(),
        "",
    )
    .await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;

    // The pods really are cut short: 58 characters of the name, then the
    // API server's 5 random ones; no room for `-<hash>-`.
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(s.client.clone(), &s.ns);
    let names: Vec<String> = pods
        .list(&Default::default())
        .await
        .expect("list pods")
        .items
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.len() == 63 && n.starts_with(&LONG[..58])),
        "{names:?}"
    );

    // v1 healthy: the error ratio is measured, not "no series".
    let seen = s
        .tick_until(15, |e| {
            result_of(e, &SignalId::ErrorRate).is_some_and(|o| !o.is_inconclusive())
        })
        .await;
    let measured = match seen.last().and_then(|e| result_of(e, &SignalId::ErrorRate)) {
        Some(Outcome::Pass {
            measured: Some(m), ..
        }) => m.value,
        other => panic!("v1's error ratio was never measured: {other:?}"),
    };
    assert!(measured < 0.05, "v1 at 0.1 % errors measured {measured}");

    // A bad release of it is judged Bad on its error ratio.
    s.deploy("web:v2-errors").await;
    let seen = s.tick_until_bad(40).await;
    let last = seen.last().expect("ticks");
    let Some(Outcome::Fail { measured, .. }) = result_of(last, &SignalId::ErrorRate) else {
        panic!(
            "Bad, but not on the error ratio: {:?}",
            last.results
                .iter()
                .map(|r| r.describe())
                .collect::<Vec<_>>()
        );
    };
    assert!((0.1..0.5).contains(&measured.value), "measured {measured}");
    let status = s.admin.snapshot();
    assert_eq!(status.targets[0].name, LONG);
    assert_eq!(status.targets[0].verdict.as_str(), "bad");
}
