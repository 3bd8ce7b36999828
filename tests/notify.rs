//! Telling on-call, as on-call and the receivers see it: the messages each
//! sink renders (checked by Slack's own SDK and held as snapshots), and
//! their delivery over real HTTP to receivers on loopback that fail, rate
//! limit, hang, verify signatures, and log-capture that never shows a
//! secret. Also `notify-test` through the built binary.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use rollback_watchdog::config::{EventKind, Loader, NotifySink};
use rollback_watchdog::report::incident::{
    describe_changes, Incident, IncidentSink, RevisionRef, Trigger,
};
use rollback_watchdog::report::notify::{
    self, DeliveryOutcome, DeliveryResult, FileLedger, MetricsObserver, Notifier, RetryPolicy,
};
use rollback_watchdog::signals::{
    BaselineNote, Measurement, Outcome, SignalId, SignalResult, Threshold,
};
use serde_json::Value;
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// Fixtures: one decision per event kind, at fixed times.

fn ts(s: &str) -> jiff::Timestamp {
    s.parse().expect("fixture timestamp")
}

fn bad_revision() -> RevisionRef {
    RevisionRef {
        revision: 5,
        pod_template_hash: "7d9f8c6b5".into(),
        images: vec!["registry.example.com/kailash-kaizen:v2.3.1".into()],
        known_good: false,
    }
}

fn good_revision() -> RevisionRef {
    RevisionRef {
        revision: 4,
        pod_template_hash: "5c4b3a291".into(),
        images: vec!["registry.example.com/kailash-kaizen:v2.3.0".into()],
        known_good: true,
    }
}

fn failing_signals() -> Vec<SignalResult> {
    vec![
        SignalResult::new(
            SignalId::ErrorRate,
            Outcome::Fail {
                measured: Measurement::ratio(0.302),
                threshold: Threshold::Max {
                    limit: Measurement::ratio(0.05),
                },
                baseline: Some(0.001),
                sentence: "30.2 % of requests fail".into(),
            },
            ts("2025-03-01T12:04:10Z"),
        )
        .with_requests(4800.0)
        .with_baseline_note(BaselineNote::used(
            3,
            Measurement::ratio(0.001),
            std::time::Duration::from_secs(25),
            ts("2025-03-01T12:00:00Z"),
        )),
        SignalResult::new(
            SignalId::Latency,
            Outcome::Fail {
                measured: Measurement::seconds(0.64),
                threshold: Threshold::RatioToBaseline {
                    max_ratio: 1.5,
                    floor: Some(Measurement::seconds(0.05)),
                },
                baseline: Some(0.4),
                sentence: "p99 latency is 1.6 times the baseline".into(),
            },
            ts("2025-03-01T12:04:10Z"),
        )
        .with_baseline_note(BaselineNote::used(
            3,
            Measurement::seconds(0.4),
            std::time::Duration::from_secs(25),
            ts("2025-03-01T12:00:00Z"),
        )),
    ]
}

/// The decision as the pipeline would record it for `kind`.
fn incident(kind: EventKind) -> Incident {
    let mut i = Incident {
        id: format!(
            "production/kailash-kaizen/r5/1740830652000/{}",
            kind.as_str()
        ),
        kind,
        cluster: "production".into(),
        namespace: "production".into(),
        deployment: "kailash-kaizen".into(),
        trigger: Trigger::Verdict,
        reason: "error ratio 30.2 % > max 5.0 % on 3 consecutive ticks after revision 5 rolled out"
            .into(),
        from: Some(bad_revision()),
        to: Some(good_revision()),
        signals: failing_signals(),
        rollout_started_at: Some("2025-03-01T12:00:00Z".into()),
        detected_at: Some("2025-03-01T12:04:12Z".into()),
        at: "2025-03-01T12:04:12Z".into(),
        finished_at: None,
        failed_step: None,
        error: None,
        dry_run: false,
        backup: None,
        blocklisted_redeploy: false,
        changes: Vec::new(),
        patch: Vec::new(),
        dashboard_url: None,
        runbook_url: None,
    };
    let backup = Some("rollback-watchdog/backup-kailash-kaizen-r5-1740830652".to_string());
    match kind {
        EventKind::RollbackStarted => {
            i.backup = backup;
            i.blocklisted_redeploy = true;
        }
        EventKind::RollbackSucceeded => {
            i.backup = backup;
            i.at = "2025-03-01T12:06:02Z".into();
            i.finished_at = Some("2025-03-01T12:06:02Z".into());
        }
        EventKind::RollbackFailed => {
            i.backup = backup;
            i.at = "2025-03-01T12:09:15Z".into();
            i.finished_at = Some("2025-03-01T12:09:15Z".into());
            i.failed_step = Some("wait".into());
            i.error = Some(
                "rollout did not finish within 5m: 2 of 3 pods of revision 6 are in ImagePullBackOff"
                    .into(),
            );
        }
        EventKind::WouldRollBack => {
            i.dry_run = true;
        }
        EventKind::Conflict => {
            i.backup = backup;
            i.at = "2025-03-01T12:04:14Z".into();
            i.failed_step = Some("update".into());
            i.error = Some(
                "the Deployment changed since it was read (resourceVersion 48211 → 48230): a newer deploy landed"
                    .into(),
            );
        }
        EventKind::Escalation => {
            i.backup = backup;
            i.at = "2025-03-01T12:08:40Z".into();
            i.finished_at = Some("2025-03-01T12:08:40Z".into());
            i.failed_step = Some("verify".into());
            i.reason =
                "the restored revision 4 failed verification: error ratio 12.0 % > max 5.0 %"
                    .into();
            i.signals = vec![SignalResult::new(
                SignalId::ErrorRate,
                Outcome::Fail {
                    measured: Measurement::ratio(0.12),
                    threshold: Threshold::Max {
                        limit: Measurement::ratio(0.05),
                    },
                    baseline: Some(0.001),
                    sentence: "12.0 % of requests fail".into(),
                },
                ts("2025-03-01T12:08:30Z"),
            )];
        }
        EventKind::Blind => {
            i.trigger = Trigger::Report;
            i.to = None;
            i.reason =
                "every signal has been inconclusive for 5m: Prometheus is unreachable".into();
            i.detected_at = None;
            i.at = "2025-03-01T12:05:00Z".into();
            i.signals = vec![
                SignalResult::new(
                    SignalId::ErrorRate,
                    Outcome::Inconclusive {
                        why: "Prometheus unreachable: connection refused".into(),
                    },
                    ts("2025-03-01T12:05:00Z"),
                ),
                SignalResult::new(
                    SignalId::health("api"),
                    Outcome::Inconclusive {
                        why: "host kailash-kaizen.production.svc does not resolve".into(),
                    },
                    ts("2025-03-01T12:05:00Z"),
                ),
            ];
        }
        EventKind::Misconfigured => {
            i.trigger = Trigger::Report;
            i.to = None;
            i.reason = "errors_query `sum(rate(http_requests_total{namespace=\"production\", pod=~\"kailash-kaizen-7f9c6d5b8-.*\", status=~\"5..\"}[30m]))` returns no series for revision 5, which served 48,211 requests over the last 30m: no series of http_requests_total for these pods has a label status (the query filters on status=~\"5..\"); check the query's label and metric names against the series the app exports".into();
            i.detected_at = None;
            i.at = "2025-03-01T12:05:00Z".into();
            i.signals = Vec::new();
        }
        EventKind::DegradedOutsideWindow => {
            i.trigger = Trigger::Report;
            i.to = None;
            i.from = Some(RevisionRef {
                known_good: true,
                ..bad_revision()
            });
            i.rollout_started_at = Some("2025-03-01T09:00:00Z".into());
            i.reason = "error ratio 30.2 % > max 5.0 %, but revision 5 rolled out 3 h ago, outside its 15m window".into();
        }
    }
    // What the pipeline records for a patch sent (or, dry, that would be).
    if matches!(
        kind,
        EventKind::RollbackStarted
            | EventKind::RollbackSucceeded
            | EventKind::RollbackFailed
            | EventKind::Escalation
            | EventKind::WouldRollBack
    ) {
        i.patch = rollback_patch();
        i.changes = describe_changes(
            &bad_revision(),
            &good_revision(),
            Some(CHANGE_CAUSE),
            i.backup.as_deref(),
        );
    }
    i
}

const CHANGE_CAUSE: &str =
    "rollback-watchdog: rolled back from 5 (v2.3.1) to 4 (v2.3.0): error ratio 30.2 % > max 5.0 %";

/// The JSON Patch of a rollback, shaped as the pipeline sends it.
fn rollback_patch() -> Vec<Value> {
    vec![
        serde_json::json!({"op": "test", "path": "/metadata/resourceVersion", "value": "48211"}),
        serde_json::json!({"op": "replace", "path": "/spec/template", "value": {
            "metadata": {"labels": {"app": "kailash-kaizen"}},
            "spec": {"containers": [{"name": "kailash-kaizen", "image": "registry.example.com/kailash-kaizen:v2.3.0"}]},
        }}),
        serde_json::json!({"op": "add", "path": "/metadata/annotations/kubernetes.io~1change-cause", "value": CHANGE_CAUSE}),
    ]
}

/// Sinks as a user configures them, through the real config loader.
fn sinks(toml: &str) -> Vec<NotifySink> {
    match Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
    {
        Ok(loaded) => loaded.config.notify,
        Err(e) => panic!("test config does not load: {e}\n{toml}"),
    }
}

const LINKS: &str = r#"
dashboard_url = "https://grafana.example.com/d/deploys?var-namespace={namespace}&var-deployment={deployment}"
runbook_url = "https://runbooks.example.com/deployment-rollback#{deployment}"
"#;

fn snapshot_sinks() -> Vec<NotifySink> {
    sinks(&format!(
        "[[notify]]\nkind = \"slack\"\nurl = \"https://hooks.example.com/slack\"\n{LINKS}\
         [[notify]]\nkind = \"teams\"\nurl = \"https://hooks.example.com/teams\"\n{LINKS}\
         [[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/hook\"\n{LINKS}"
    ))
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------
// Messages.

#[test]
fn every_event_kind_renders_as_its_snapshot_in_slack_teams_and_webhook_form() {
    let dir = repo().join("tests/snapshots/notify");
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|v| v == "1");
    if update {
        std::fs::create_dir_all(&dir).expect("create snapshot dir");
    }
    let mut mismatches = Vec::new();
    for sink in snapshot_sinks() {
        let form = match sink.kind {
            rollback_watchdog::config::SinkKind::Slack => "slack",
            rollback_watchdog::config::SinkKind::Teams => "teams",
            rollback_watchdog::config::SinkKind::Webhook => "webhook",
        };
        for kind in EventKind::ALL {
            let message = notify::payload(&sink, &incident(kind));
            let path = dir.join(format!("{}.{form}.json", kind.as_str()));
            let pretty = serde_json::to_string_pretty(&message).expect("render") + "\n";
            if update {
                std::fs::write(&path, &pretty).expect("write snapshot");
                continue;
            }
            let stored = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run UPDATE_SNAPSHOTS=1 cargo test --test notify",
                    path.display()
                )
            });
            let stored: Value = serde_json::from_str(&stored).expect("snapshot is JSON");
            if stored != message {
                mismatches.push(format!("{}:\n{pretty}", path.display()));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "messages differ from their snapshots (UPDATE_SNAPSHOTS=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

fn slack_text(message: &Value) -> String {
    // Everything a reader sees: the blocks' texts.
    let mut out = String::new();
    for b in message["blocks"].as_array().into_iter().flatten() {
        if let Some(t) = b["text"]["text"].as_str() {
            out.push_str(t);
            out.push('\n');
        }
        for f in b["fields"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(b["elements"].as_array().into_iter().flatten())
        {
            out.push_str(f["text"].as_str().unwrap_or(""));
            out.push('\n');
        }
    }
    out
}

#[test]
fn on_call_reads_what_happened_and_whether_they_still_have_a_problem() {
    let slack = &snapshot_sinks()[0];
    let read = |kind| slack_text(&notify::payload(slack, &incident(kind)));

    let ok = read(EventKind::RollbackSucceeded);
    assert!(
        ok.contains(":white_check_mark: Rolled back production/kailash-kaizen to revision 4"),
        "{ok}"
    );
    assert!(
        ok.contains("Service restored to revision 4, verified"),
        "{ok}"
    );
    assert!(
        ok.contains("error ratio 30.2 % &gt; max 5.0 % (baseline revision 3: 0.1 % over 25s before the rollout)"),
        "{ok}"
    );
    assert!(ok.contains("*Time to detect*\n4 min 12 s"), "{ok}");
    assert!(ok.contains("*Time to recover*\n1 min 50 s"), "{ok}");
    assert!(
        ok.contains("`registry.example.com/kailash-kaizen:v2.3.1`"),
        "{ok}"
    );
    assert!(ok.contains(
        "<https://grafana.example.com/d/deploys?var-namespace=production&var-deployment=kailash-kaizen|Dashboard>"
    ), "{ok}");

    let esc = read(EventKind::Escalation);
    assert!(
        esc.contains(":warning:") && esc.contains("Still broken — manual action needed"),
        "{esc}"
    );
    let failed = read(EventKind::RollbackFailed);
    assert!(
        failed.contains(":x: Rollback of production/kailash-kaizen failed at wait"),
        "{failed}"
    );
    assert!(failed.contains("ImagePullBackOff"), "{failed}");
    let dry = read(EventKind::WouldRollBack);
    assert!(
        dry.contains(":eyes:") && dry.contains("dry run, nothing was changed"),
        "{dry}"
    );
    assert!(read(EventKind::RollbackStarted)
        .contains("re-deploys a template that was rolled back before"));
    for (kind, emoji) in [
        (EventKind::RollbackStarted, ":rotating_light:"),
        (EventKind::Conflict, ":no_entry:"),
        (EventKind::Blind, ":see_no_evil:"),
        (
            EventKind::DegradedOutsideWindow,
            ":chart_with_downwards_trend:",
        ),
    ] {
        let text = read(kind);
        assert!(text.starts_with(emoji), "{kind:?}: {text}");
    }

    let webhook = &snapshot_sinks()[2];
    let doc = notify::payload(webhook, &incident(EventKind::RollbackSucceeded));
    assert_eq!(doc["schema"], "rollback-watchdog/v1");
    assert_eq!(doc["event"], "rollback_succeeded");
    assert_eq!(doc["problem"], "resolved");
    assert_eq!(doc["to"]["revision"], 4);
    assert_eq!(doc["signals"][0]["measured"]["value"], 0.302);
    assert_eq!(doc["time_to_recover_seconds"], 110.0);

    let teams = &snapshot_sinks()[1];
    let card = notify::payload(teams, &incident(EventKind::Escalation));
    assert_eq!(card["type"], "message");
    let attachment = &card["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["version"], "1.4");
    assert!(attachment["content"]["body"]
        .as_array()
        .is_some_and(|b| b.iter().any(|e| e["type"] == "FactSet")));
    assert_eq!(attachment["content"]["actions"][1]["title"], "Runbook");
}

#[test]
fn what_changed_is_said_in_words_in_slack_and_teams_and_the_raw_patch_goes_only_to_machines() {
    let sinks = snapshot_sinks();
    let (slack, teams, webhook) = (&sinks[0], &sinks[1], &sinks[2]);
    let mut told = 0;
    for kind in EventKind::ALL {
        let i = incident(kind);
        for (sink, name) in [(slack, "Slack"), (teams, "Teams")] {
            let text = notify::payload(sink, &i).to_string();
            for raw in ["\\\"op\\\"", "\"op\"", "/spec/template", "~1change-cause"] {
                assert!(
                    !text.contains(raw),
                    "{name} message for {kind:?} shows the raw JSON Patch ({raw}):\n{text}"
                );
            }
        }
        let doc = notify::payload(webhook, &i);
        assert_eq!(doc["patch"], Value::from(i.patch.clone()), "{kind:?}");
        if i.patch.is_empty() {
            continue;
        }
        told += 1;
        assert_eq!(doc["patch"][1]["path"], "/spec/template");
        let slack_words = slack_text(&notify::payload(slack, &i));
        let teams_words = notify::payload(teams, &i).to_string();
        for words in [
            "image registry.example.com/kailash-kaizen:v2.3.1 → registry.example.com/kailash-kaizen:v2.3.0",
            "revision 5 → 4",
            "change-cause: rollback-watchdog: rolled back from 5 (v2.3.1) to 4 (v2.3.0)",
        ] {
            assert!(slack_words.contains(words), "Slack, {kind:?}: no {words:?}:\n{slack_words}");
            assert!(teams_words.contains(words), "Teams, {kind:?}: no {words:?}:\n{teams_words}");
            assert!(
                doc["changes"].to_string().contains(words),
                "webhook, {kind:?}: no {words:?}"
            );
        }
        if let Some(backup) = &i.backup {
            let line = format!("backup of the previous state: ConfigMap {backup}");
            assert!(slack_words.contains(&line), "{kind:?}:\n{slack_words}");
            assert!(teams_words.contains(&line), "{kind:?}");
        }
    }
    assert!(told >= 4, "only {told} kinds carry a patch");
}

/// A decision with everything too long: Slack must still accept it.
fn oversized() -> Incident {
    let mut i = incident(EventKind::RollbackFailed);
    i.deployment = format!("{}-service", "very-long-name".repeat(12));
    i.reason = format!("<b>&{}", "a reason that goes on & on > ".repeat(200));
    i.error = Some(format!("```{}", "<error> & more ".repeat(400)));
    i.signals = (0..60)
        .map(|n| {
            SignalResult::new(
                SignalId::rule(format!("rule-{n}-{}", "x".repeat(40))),
                Outcome::Fail {
                    measured: Measurement::number(f64::from(n)),
                    threshold: Threshold::FailsWhen {
                        op: ">".into(),
                        limit: Measurement::number(0.0),
                    },
                    baseline: None,
                    sentence: String::new(),
                },
                ts("2025-03-01T12:04:10Z"),
            )
        })
        .collect();
    i.from = Some(RevisionRef {
        images: (0..40)
            .map(|n| format!("registry.example.com/team/sidecar-{n}:{}", "v".repeat(60)))
            .collect(),
        ..bad_revision()
    });
    i.changes = (0..100).map(|n| format!("change {n} <&>")).collect();
    i
}

#[test]
fn slack_messages_are_valid_block_kit_by_slacks_own_sdk() {
    let slack = &snapshot_sinks()[0];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut incidents: Vec<(String, Incident)> = EventKind::ALL
        .into_iter()
        .map(|k| (k.as_str().to_owned(), incident(k)))
        .collect();
    incidents.push(("oversized".into(), oversized()));
    incidents.push((
        "notify-test".into(),
        notify::test_incident(
            "production",
            "rollback-watchdog",
            ts("2025-03-01T12:00:00Z"),
        ),
    ));
    for (name, i) in &incidents {
        let message = notify::payload(slack, i);
        let body = serde_json::to_vec_pretty(&message).expect("encode");
        std::fs::write(dir.path().join(format!("{name}.json")), body).expect("write");
    }
    let out = std::process::Command::new("python3")
        .arg(repo().join("tests/slack_blocks_check.py"))
        .arg(dir.path())
        .output()
        .expect("python3 runs (.ci/run installs it with slack_sdk)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "Slack's SDK rejects a message (pip install slack_sdk if it is missing):\n{text}"
    );
    assert!(
        text.contains(&format!("{} passed, 0 failed", incidents.len())),
        "{text}"
    );
}

// ---------------------------------------------------------------------------
// A receiver on loopback.

#[derive(Clone)]
enum Reply {
    Status(u16, Vec<(&'static str, String)>, String),
    /// Never answers.
    Hang,
    /// Answers with this status and the request's path in the body: a
    /// receiver that quotes the URL back, secret and all.
    Echo(u16),
}

#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Default)]
struct ReceiverState {
    script: Mutex<VecDeque<Reply>>,
    /// Used once the script is exhausted; 200 "ok" when unset.
    otherwise: Mutex<Option<Reply>>,
    received: Mutex<Vec<Received>>,
}

struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
}

impl Receiver {
    async fn start(script: Vec<Reply>, otherwise: Option<Reply>) -> Receiver {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.into()),
            otherwise: Mutex::new(otherwise),
            received: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(receive)
            .with_state(Arc::clone(&state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().expect("lock").clone()
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    state.received.lock().expect("lock").push(Received {
        at: Instant::now(),
        path: path.clone(),
        headers,
        body,
    });
    let next = state.script.lock().expect("lock").pop_front();
    let reply = next
        .or_else(|| state.otherwise.lock().expect("lock").clone())
        .unwrap_or(Reply::Status(200, vec![], "ok".into()));
    match reply {
        Reply::Hang => std::future::pending().await,
        Reply::Echo(code) => (
            StatusCode::from_u16(code).expect("status"),
            format!("no such hook: {path}"),
        )
            .into_response(),
        Reply::Status(code, headers, body) => {
            let mut r = (StatusCode::from_u16(code).expect("status"), body).into_response();
            for (k, v) in headers {
                r.headers_mut().insert(k, v.parse().expect("header value"));
            }
            r
        }
    }
}

type Outcomes = Arc<Mutex<Vec<DeliveryOutcome>>>;

fn collector() -> (Outcomes, impl Fn(&DeliveryOutcome) + Send + Sync + 'static) {
    let outcomes: Outcomes = Arc::default();
    let sink = Arc::clone(&outcomes);
    (outcomes, move |o: &DeliveryOutcome| {
        sink.lock().expect("lock").push(o.clone())
    })
}

/// Waits until `n` outcomes have been observed (or fails after `within`).
async fn wait_for(outcomes: &Outcomes, n: usize, within: Duration) -> Vec<DeliveryOutcome> {
    let until = Instant::now() + within;
    loop {
        let now = outcomes.lock().expect("lock").clone();
        if now.len() >= n {
            return now;
        }
        assert!(
            Instant::now() < until,
            "expected {n} delivery outcomes within {within:?}, got {now:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn fast() -> RetryPolicy {
    RetryPolicy {
        min_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(100),
        factor: 2.0,
    }
}

// ---------------------------------------------------------------------------
// Delivery.

#[tokio::test]
async fn a_sink_failing_three_times_is_told_once_on_the_fourth_attempt_and_the_retries_are_recorded(
) {
    let http500 = Reply::Status(500, vec![], String::new());
    let receiver = Receiver::start(vec![http500.clone(), http500.clone(), http500], None).await;
    let (outcomes, observer) = collector();
    let (metrics, registry) = rollback_watchdog::report::metrics::Metrics::new();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"flaky\"\nkind = \"slack\"\nurl = \"{}/services/T0/B0\"\ndeadline = \"20s\"\n",
        receiver.url
    )))
    .retry_policy(fast())
    .observer(observer)
    .observer(MetricsObserver(metrics))
    .start()
    .expect("start");

    notifier.emit(&incident(EventKind::RollbackSucceeded));
    let seen = wait_for(&outcomes, 1, Duration::from_secs(15)).await;
    notifier.shutdown(Duration::from_secs(1)).await;

    assert_eq!(seen.len(), 1, "one outcome per decision: {seen:#?}");
    let o = &seen[0];
    assert_eq!(o.result, DeliveryResult::Delivered);
    assert_eq!(o.attempts, 4);
    assert_eq!(o.failures, vec!["HTTP 500"; 3]);
    assert_eq!(o.sink, "flaky");
    // The audit log gets the outcome as JSON, retries included.
    let line = serde_json::to_value(o).expect("outcome serializes");
    assert_eq!(line["result"], "delivered");
    assert_eq!(line["failures"].as_array().map(Vec::len), Some(3));

    let received = receiver.received();
    assert_eq!(received.len(), 4, "three failed attempts and one delivery");
    assert!(
        received.iter().all(|r| r.body == received[0].body),
        "every attempt sends the same message"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode metrics");
    assert!(
        text.contains(
            r#"rollback_watchdog_notifications_total{sink="flaky",outcome="delivered"} 1"#
        ),
        "{text}"
    );
}

#[tokio::test]
async fn a_rate_limited_sink_is_not_asked_again_before_its_retry_after() {
    let receiver = Receiver::start(
        vec![Reply::Status(
            429,
            vec![("retry-after", "1".into())],
            "rate_limited".into(),
        )],
        None,
    )
    .await;
    let (outcomes, observer) = collector();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"limited\"\nkind = \"webhook\"\nurl = \"{}/hook\"\n",
        receiver.url
    )))
    .retry_policy(fast())
    .observer(observer)
    .start()
    .expect("start");

    notifier.emit(&incident(EventKind::RollbackStarted));
    let seen = wait_for(&outcomes, 1, Duration::from_secs(10)).await;
    assert_eq!(seen[0].result, DeliveryResult::Delivered);
    assert_eq!(seen[0].failures, vec!["HTTP 429: rate_limited"]);
    let received = receiver.received();
    assert_eq!(received.len(), 2);
    let gap = received[1].at - received[0].at;
    // A lower bound only: the backoff alone would retry after 20-40 ms.
    assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    notifier.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_sink_that_never_answers_never_blocks_the_pipeline_and_is_given_up_at_its_deadline() {
    let receiver = Receiver::start(vec![], Some(Reply::Hang)).await;
    let (outcomes, observer) = collector();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"black-hole\"\nkind = \"slack\"\nurl = \"{}/services/x\"\ntimeout = \"1s\"\ndeadline = \"2s\"\n",
        receiver.url
    )))
    .retry_policy(fast())
    .queue_capacity(8)
    .observer(observer)
    .start()
    .expect("start");

    // This test runs on a single-threaded runtime: the worker cannot run
    // while the loop below runs, so a waiting `emit` would never return.
    let started = Instant::now();
    for n in 0..100 {
        let mut i = incident(EventKind::RollbackStarted);
        i.id = format!("{}/{n}", i.id);
        notifier.emit(&i);
    }
    let emitted_in = started.elapsed();
    let dropped: Vec<DeliveryOutcome> = outcomes.lock().expect("lock").clone();
    assert_eq!(dropped.len(), 92, "8 queued, the rest dropped and counted");
    assert!(dropped.iter().all(|o| o.result
        == DeliveryResult::Dropped {
            reason: "queue full".into()
        }));
    assert!(
        emitted_in < Duration::from_secs(5),
        "emit took {emitted_in:?}"
    );

    // The first queued message is tried until its deadline, then given up;
    // the ones queued behind it have run out of time meanwhile.
    let seen = wait_for(&outcomes, 100, Duration::from_secs(10)).await;
    let gave_up: Vec<&DeliveryOutcome> = seen
        .iter()
        .filter(|o| matches!(o.result, DeliveryResult::GaveUp { .. }))
        .collect();
    assert_eq!(gave_up.len(), 8, "{seen:#?}");
    let first = gave_up[0];
    let DeliveryResult::GaveUp { reason } = &first.result else {
        unreachable!()
    };
    assert!(
        reason.contains("timed out") && reason.contains("deadline 2s reached"),
        "{reason}"
    );
    assert!(first.attempts >= 2, "{first:?}");
    assert!(started.elapsed() >= Duration::from_millis(1900));
    notifier.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_signed_webhook_verifies_at_the_receiver_and_a_tampered_body_does_not() {
    use hmac::{Hmac, Mac};
    let receiver = Receiver::start(vec![], None).await;
    let secret = "whsec-correct-horse-battery";
    let (outcomes, observer) = collector();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"audit-hook\"\nkind = \"webhook\"\nurl = \"{}/hook\"\nsecret = \"{secret}\"\n",
        receiver.url
    )))
    .observer(observer)
    .start()
    .expect("start");
    let decision = incident(EventKind::RollbackFailed);
    notifier.emit(&decision);
    wait_for(&outcomes, 1, Duration::from_secs(10)).await;
    notifier.shutdown(Duration::from_secs(1)).await;

    let got = receiver.received().pop().expect("one request");
    let header = got.headers["x-rollback-watchdog-signature"]
        .to_str()
        .expect("ascii");
    let verify = |body: &[u8]| {
        let hex = header.strip_prefix("sha256=").expect("sha256= prefix");
        let expected: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(body);
        mac.verify_slice(&expected).is_ok()
    };
    assert!(verify(&got.body), "the receiver authenticates the message");
    let mut tampered = got.body.to_vec();
    let at = tampered.len() / 2;
    tampered[at] ^= 1;
    assert!(!verify(&tampered), "a tampered body must not verify");

    assert_eq!(got.headers["x-rollback-watchdog-event"], "rollback_failed");
    assert_eq!(
        got.headers["x-rollback-watchdog-delivery"],
        decision.id.as_str()
    );
    let doc: Value = serde_json::from_slice(&got.body).expect("JSON body");
    assert_eq!(doc["schema"], "rollback-watchdog/v1");
    assert_eq!(doc["failed_step"], "wait");
}

#[tokio::test]
async fn a_restarted_watchdog_does_not_tell_a_decision_twice() {
    let receiver = Receiver::start(vec![], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ledger_path = dir.path().join("notified.jsonl");
    let config = sinks(&format!(
        "[[notify]]\nname = \"oncall\"\nkind = \"slack\"\nurl = \"{}/services/x\"\n",
        receiver.url
    ));
    let decision = incident(EventKind::RollbackSucceeded);

    let (outcomes, observer) = collector();
    let before = Notifier::builder(&config)
        .ledger(Arc::new(FileLedger::open(&ledger_path).expect("ledger")))
        .observer(observer)
        .start()
        .expect("start");
    before.emit(&decision);
    before.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        outcomes.lock().expect("lock")[0].result,
        DeliveryResult::Delivered
    );

    // The new process replays the same decision (it resumed the in-flight
    // record): the ledger says this sink already has it.
    let (outcomes, observer) = collector();
    let after = Notifier::builder(&config)
        .ledger(Arc::new(FileLedger::open(&ledger_path).expect("ledger")))
        .observer(observer)
        .start()
        .expect("start");
    after.emit(&decision);
    let next = incident(EventKind::Escalation);
    after.emit(&next);
    let seen = wait_for(&outcomes, 2, Duration::from_secs(10)).await;
    after.shutdown(Duration::from_secs(1)).await;

    assert_eq!(seen[0].incident_id, decision.id);
    assert_eq!(seen[0].result, DeliveryResult::AlreadyDelivered);
    assert_eq!(seen[1].result, DeliveryResult::Delivered);
    let bodies: Vec<Value> = receiver
        .received()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).expect("JSON"))
        .collect();
    assert_eq!(bodies.len(), 2, "one rollback_succeeded, one escalation");
    assert!(bodies[0]["text"]
        .as_str()
        .is_some_and(|t| t.contains("Rolled back")));
    assert!(bodies[1]["text"]
        .as_str()
        .is_some_and(|t| t.contains("manual action needed")));
}

#[tokio::test]
async fn sinks_are_told_only_the_events_and_targets_they_asked_for() {
    let receiver = Receiver::start(vec![], None).await;
    let (outcomes, observer) = collector();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"failures-only\"\nkind = \"webhook\"\nurl = \"{0}/failures\"\n\
         events = [\"rollback_failed\", \"escalation\"]\n\
         [[notify]]\nname = \"staging\"\nkind = \"webhook\"\nurl = \"{0}/staging\"\ntargets = [\"staging/*\"]\n",
        receiver.url
    )))
    .observer(observer)
    .start()
    .expect("start");
    for kind in EventKind::ALL {
        notifier.emit(&incident(kind));
    }
    let seen = wait_for(&outcomes, 2, Duration::from_secs(10)).await;
    notifier.shutdown(Duration::from_secs(1)).await;
    let paths: Vec<String> = receiver.received().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/failures", "/failures"], "{seen:#?}");
}

/// A writer the log subscriber appends to.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn urls_and_secrets_never_reach_the_logs_or_the_delivery_record() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // This test's runtime is single-threaded: the workers log here too.
    let _guard = tracing::subscriber::set_default(subscriber);

    let token = "T0SECRETTOKEN/B0SECRETTOKEN/xoxSECRETTOKEN";
    let hmac_secret = "HMACSECRETVALUE";
    let ok = Receiver::start(vec![], None).await;
    let quoting = Receiver::start(vec![], Some(Reply::Echo(500))).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (outcomes, observer) = collector();
    let notifier = Notifier::builder(&sinks(&format!(
        "[[notify]]\nname = \"ok-slack\"\nkind = \"slack\"\nurl = \"{}/services/{token}\"\n\
         [[notify]]\nname = \"quoting-hook\"\nkind = \"webhook\"\nurl = \"{}/services/{token}?key={token}\"\n\
         secret = \"{hmac_secret}\"\ntimeout = \"1s\"\ndeadline = \"1s\"\n\
         [[notify]]\nname = \"refused-hook\"\nkind = \"webhook\"\nurl = \"http://{closed}/services/{token}\"\n\
         secret = \"{hmac_secret}\"\ntimeout = \"1s\"\ndeadline = \"1s\"\n",
        ok.url, quoting.url
    )))
    .retry_policy(fast())
    .observer(observer)
    .start()
    .expect("start");
    notifier.emit(&incident(EventKind::RollbackFailed));
    let seen = wait_for(&outcomes, 3, Duration::from_secs(10)).await;
    notifier.shutdown(Duration::from_secs(1)).await;
    drop(_guard);

    let logs = String::from_utf8_lossy(&logs.0.lock().expect("lock")).into_owned();
    assert!(
        logs.contains("notification delivered") && logs.contains("ok-slack"),
        "capture works:\n{logs}"
    );
    assert!(
        logs.contains("quoting-hook") && logs.contains("refused-hook"),
        "{logs}"
    );
    let record = serde_json::to_string(&seen).expect("outcomes serialize");
    for secret in ["SECRETTOKEN", hmac_secret] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(
            !record.contains(secret),
            "{secret} in the delivery record:\n{record}"
        );
    }
    assert!(
        quoting.received().len() >= 2,
        "the quoting receiver was retried"
    );
    assert!(record.contains("no such hook: <path>"), "{record}");
}

// ---------------------------------------------------------------------------
// notify-test through the binary.

fn write_config(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("watchdog.toml");
    let text = format!(
        "[[notify]]\nname = \"oncall-slack\"\nkind = \"slack\"\nurl = \"{url}/services/T/B/x\"\ntimeout = \"1s\"\ndeadline = \"3s\"\n"
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn notify_test(config: &Path, extra: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.arg("--config")
        .arg(config)
        .arg("notify-test")
        .args(extra)
        .env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("the binary runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_sends_a_marked_test_message_and_says_it_was_delivered() {
    let receiver = Receiver::start(vec![], None).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &receiver.url);
    let out = notify_test(&config, &[]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.trim(), "oncall-slack: delivered (1 attempt)");
    let got = receiver.received();
    assert_eq!(got.len(), 1);
    let message: Value = serde_json::from_slice(&got[0].body).expect("JSON");
    assert!(message["text"]
        .as_str()
        .is_some_and(|t| t.contains("TEST — rollback-watchdog notify-test, no action taken")));

    let out = notify_test(&config, &["--sink", "3"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--sink 3: there are 1 [[notify]] sinks"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_test_exits_1_and_says_why_when_a_sink_fails() {
    let receiver = Receiver::start(vec![], Some(Reply::Status(500, vec![], String::new()))).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = write_config(dir.path(), &receiver.url);
    let out = notify_test(&config, &["--sink", "0"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let n = receiver.received().len();
    assert!(n >= 1);
    assert!(
        stdout.starts_with(&format!("oncall-slack: gave up after {n} attempt")),
        "{stdout}"
    );
    assert!(stdout.contains("HTTP 500"), "{stdout}");
}
