//! A query that cannot match is reported, never read as a pass: an
//! `errors_query` filtering on a label the app does not have (`status`
//! where the app says `code`) is named by the self-check, shown on
//! `/status`, told to on-call once, and keeps the error ratio
//! Inconclusive. A correct query on a service with no errors of its kind
//! yet stays quiet. Against the sim and a real Prometheus.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rollback_watchdog::runtime::admin;
use rollback_watchdog::runtime::daemon::Evaluation;
use rollback_watchdog::signals::{Outcome, SignalId, SignalResult};
use rollback_watchdog::sim::Behaviours;

mod support;
use support::binary::{events_received, free_port, receiver, status, watchdog};
use support::prom::shared;
use support::watch::{config_toml, verdicts, Prom, Scenario};

/// The app labels its status `code`; this filters on `status`.
const WRONG_LABEL: &str = r#"sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}", status=~"5.."}[{window}]))"#;
/// Right label, and no such error yet: the app has served no 503, so the
/// series does not exist, as with a client library before its first 5xx.
const NO_503_YET: &str = r#"sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}", code="503"}[{window}]))"#;

/// A rule on a metric the app does not export, and without `or vector(0)`.
const NO_SUCH_METRIC_RULE: &str = r#"
[[targets.rules]]
name = "payments"
query = 'sum(rate(payment_failures_total{namespace="{namespace}", pod=~"{pods}"}[{window}]))'
op = ">"
threshold = 0
"#;

/// The target's keys: `errors_query`, `rules`, a window that closes
/// during the test, and on-call as a webhook.
fn extra(errors_query: &str, rules: &str, hook: &str) -> String {
    format!(
        r#"watch_window = "20s"

[targets.error_rate]
errors_query = '{errors_query}'
misconfigured_after_requests = 200
{rules}
[[notify]]
kind = "webhook"
name = "oncall"
url = "{hook}"
deadline = "10s"
"#
    )
}

type Received = Arc<Mutex<Vec<serde_json::Value>>>;

/// `web` in `ns` with these queries, acting and telling a webhook
/// receiver; the scenario, its config's target keys, what on-call got.
async fn scenario(ns: &str, errors_query: &str, rules: &str) -> (Scenario, String, Received) {
    let (hook, got) = receiver().await;
    let extra = extra(errors_query, rules, &hook);
    let mut s = Scenario::start(ns, Prom::Shared(shared()), Behaviours::builtin(), &extra).await;
    s.with_pipeline().await;
    (s, extra, got)
}

fn error_rate(e: &Evaluation) -> Option<&SignalResult> {
    e.results.iter().find(|r| r.signal == SignalId::ErrorRate)
}

/// `rollback-watchdog self-check` with the scenario's config; its stdout.
async fn self_check(s: &Scenario, extra: &str, dir: &Path) -> String {
    let config = dir.join("watchdog.toml");
    let audit = dir.join("audit.jsonl");
    let toml = config_toml(
        &s.ns,
        &s.prometheus_url,
        &audit.display().to_string(),
        extra,
    );
    std::fs::write(&config, toml).expect("write config");
    let mut cmd = watchdog(s.sim.kubeconfig_path());
    cmd.arg("--config").arg(&config).arg("self-check");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("self-check runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `misconfigured` notices on-call received.
fn misconfigured_notices(got: &Received) -> Vec<serde_json::Value> {
    got.lock()
        .expect("lock")
        .iter()
        .filter(|b| b["event"] == "misconfigured")
        .cloned()
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_errors_query_on_a_label_the_app_lacks_is_reported_once_and_never_passes_the_release() {
    let (mut s, extra, got) =
        scenario("misconfigured-label", WRONG_LABEL, NO_SUCH_METRIC_RULE).await;
    let server = admin::start(
        format!("127.0.0.1:{}", free_port()).parse().expect("addr"),
        s.admin.clone(),
    )
    .await
    .expect("admin server");
    s.wait_scraped().await;

    // (d) The error ratio turns Inconclusive naming the query while the
    // window is open, and stays so: never a pass, never Healthy.
    let seen = s
        .tick_until(30, |e| {
            error_rate(e).is_some_and(|r| r.misconfigured.is_some())
        })
        .await;
    let found = seen.last().expect("ticked");
    assert!(
        error_rate(found).is_some_and(|r| r.misconfigured.is_some()),
        "never reported: {:?}",
        seen.iter()
            .filter_map(error_rate)
            .map(SignalResult::describe)
            .collect::<Vec<_>>()
    );
    let window_open = found
        .state
        .window
        .as_ref()
        .is_some_and(|w| w.is_open(jiff::Timestamp::now()));
    assert!(window_open, "found only after the window closed");
    let mut after = vec![found.clone()];
    after.extend(
        s.tick_until(40, |e| {
            e.state
                .window
                .as_ref()
                .is_some_and(|w| !w.is_open(jiff::Timestamp::now()))
        })
        .await,
    );
    // A few ticks past the close, where a known-good record would be written.
    after.extend(s.tick_until(3, |_| false).await);
    for e in &after {
        let r = error_rate(e).expect("an error-rate result");
        match &r.outcome {
            Outcome::Inconclusive { why } => assert!(
                why.contains("errors_query `") && why.contains(r#"status=~"5..""#),
                "{why}"
            ),
            other => panic!("the error ratio was {other:?} after it was found misconfigured"),
        }
    }
    assert!(
        !verdicts(&after).iter().any(|v| v == "healthy"),
        "{:?}",
        verdicts(&after)
    );
    assert!(
        after.iter().all(|e| e.state.known_good.is_none()),
        "revision 1 was recorded known-good"
    );

    // (a) The self-check (a daemon of its own, asking once) names the query and the missing label.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = self_check(&s, &extra, dir.path()).await;
    let line = out
        .lines()
        .find(|l| l.contains("errors_query `"))
        .unwrap_or_else(|| panic!("no errors_query line in:\n{out}"));
    assert!(line.starts_with("WARNING"), "{line}");
    for needle in [
        "misconfigured-label/web revision 1",
        r#"status=~"5..""#,
        "returns no series",
        "has a label status",
        "check the query's label and metric names",
    ] {
        assert!(line.contains(needle), "{needle:?} missing from {line}");
    }
    // The rule too: no series while total_query counts traffic.
    assert!(
        out.lines().any(|l| l.starts_with("WARNING")
            && l.contains("rule payments query `")
            && l.contains("or vector(0)")),
        "{out}"
    );

    // (b) /status shows it as a warning.
    let report = status(server.addr().port()).await.expect("/status answers");
    let target = report
        .targets
        .iter()
        .find(|t| t.name == "web")
        .expect("web in /status");
    assert!(
        target
            .warnings
            .iter()
            .any(|w| w.contains("errors_query `") && w.contains("has a label status")),
        "{:?}",
        target.warnings
    );

    // (c) On-call got exactly one `misconfigured` notice, after all those
    // ticks, naming the query and what to check.
    support::eventually("the misconfigured notice", || {
        let n = misconfigured_notices(&got).len();
        (n > 0)
            .then_some(())
            .ok_or(format!("{:?}", events_received(&got)))
    })
    .await;
    s.tick_until(3, |_| false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let notices = misconfigured_notices(&got);
    assert_eq!(notices.len(), 1, "{:?}", events_received(&got));
    let reason = notices[0]["reason"].as_str().unwrap_or_default();
    for needle in [
        "errors_query `",
        r#"status=~"5..""#,
        "revision 1",
        "label and metric names",
    ] {
        assert!(reason.contains(needle), "{needle:?} missing from {reason}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_errors_query_on_a_service_with_no_such_errors_yet_stays_quiet() {
    let (mut s, extra, got) = scenario("misconfigured-none", NO_503_YET, "").await;
    s.wait_scraped().await;

    // Enough traffic for the check, and more: the ratio passes as zero.
    let seen = s.tick_until(12, |_| false).await;
    assert!(
        seen.iter()
            .all(|e| error_rate(e).is_some_and(|r| r.misconfigured.is_none())),
        "{:?}",
        seen.iter()
            .filter_map(error_rate)
            .map(SignalResult::describe)
            .collect::<Vec<_>>()
    );
    assert!(
        seen.iter()
            .any(|e| error_rate(e).is_some_and(|r| r.outcome.is_pass())),
        "{:?}",
        verdicts(&seen)
    );
    assert!(
        s.daemon
            .status()
            .targets
            .iter()
            .all(|t| t.warnings.iter().all(|w| !w.contains("returns no series"))),
        "{:?}",
        s.daemon.status().targets
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let out = self_check(&s, &extra, dir.path()).await;
    assert!(
        !out.lines().any(|l| l.starts_with("WARNING")),
        "a good config warned:\n{out}"
    );
    assert!(
        out.contains("errors_query returns no series yet: no errors counted"),
        "{out}"
    );
    assert!(out.contains("latency.query returns a series"), "{out}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        misconfigured_notices(&got).is_empty(),
        "{:?}",
        misconfigured_notices(&got)
    );
}
