//! Grouped Prometheus queries in the real loop, against the sim and the
//! real Prometheus scraping it every second: a bad release is caught, a
//! good one is judged Healthy and never Bad.

use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::signals::SignalId;
use rollback_watchdog::sim::Behaviours;

mod support;
use support::prom::shared;
use support::watch::{verdicts, Prom, Scenario};

const GROUPED: &str = r#"
[targets.error_rate]
grouped = true
errors_query = 'sum by (namespace, pod) (rate(http_requests_total{code=~"5.."}[{window}]))'
total_query = 'sum by (namespace, pod) (rate(http_requests_total[{window}]))'

[targets.latency]
grouped = true
query = 'sum by (namespace, pod, le) (rate(http_request_duration_seconds_bucket[{window}]))'
"#;

/// `web` in `ns` with grouped templates, v1 serving a while first.
async fn start(ns: &str) -> Scenario {
    let prom = shared();
    let mut s = Scenario::start(ns, Prom::Url(&prom.url), Behaviours::builtin(), GROUPED).await;
    prom.register(s.sim.scrape_target_handle());
    s.wait_scraped().await;
    s.tick_until(10, |_| false).await;
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_release_is_caught_with_grouped_queries() {
    let mut s = start("grouped-bad").await;
    s.deploy("web:v2-errors").await;
    let seen = s.tick_until_bad(90).await;
    let decisive: Vec<String> = seen
        .last()
        .and_then(|e| e.judgement.as_ref())
        .map(|j| {
            j.reasons
                .iter()
                .filter(|r| r.is_decisive())
                .map(|r| r.signal.id())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        decisive.contains(&SignalId::ErrorRate.id()),
        "Bad, but not on the grouped error ratio: {decisive:?}; verdicts {:?}",
        verdicts(&seen)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_good_release_is_healthy_and_never_bad_with_grouped_queries() {
    let mut s = start("grouped-good").await;
    s.deploy("web:v2").await;
    s.wait_rolled_out("web:v2").await;
    let seen = s
        .tick_until(30, |e| e.verdict() == Some(Verdict::Bad))
        .await;
    let all = verdicts(&seen);
    assert!(
        !seen.iter().any(|e| e.verdict() == Some(Verdict::Bad)),
        "a good release judged Bad: {all:?}"
    );
    assert!(
        seen.iter().any(|e| e.verdict() == Some(Verdict::Healthy)),
        "a good release never Healthy: {all:?}"
    );
    // Both grouped signals measured v2 and passed, more than once.
    for signal in [SignalId::ErrorRate, SignalId::Latency] {
        let passes = seen
            .iter()
            .flat_map(|e| &e.results)
            .filter(|r| r.signal == signal && r.outcome.is_pass())
            .count();
        assert!(
            passes >= 2,
            "{signal} passed {passes} times: {:#?}",
            seen.iter()
                .rev()
                .take(2)
                .map(|e| e.results.iter().map(|r| r.describe()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
    }
}
