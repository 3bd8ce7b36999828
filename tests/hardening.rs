//! Hostile input and hardening (issue 15, items 4 and 5): proptest-driven
//! fuzzing of the config loader, the annotations a person can write on a
//! Deployment, query-template filling, Prometheus answers and the sim's
//! patch application; size caps on answers; an admin server that changes
//! nothing. `PROPTEST_CASES` raises the number of cases per target (CI
//! runs the defaults below; the README gives the long run).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use proptest::prelude::*;
use rollback_watchdog::config::{Config, Loader, Placeholders};
use rollback_watchdog::k8s::keys;
use rollback_watchdog::observe::cache::Snapshot;
use rollback_watchdog::observe::targets::resolve;
use serde_json::{json, Value};

const CASES: u32 = 256;

fn cases(default: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// A config whose defaults and target carry every URL and query kind, a
/// notification target and the RBAC-relevant names.
const BASE: &str = r#"
[watchdog]
opt_in_namespaces = ["production"]
[prometheus]
url = "http://127.0.0.1:9/"
[defaults.health]
url = "http://{deployment}.{namespace}.svc:8080/health"
[[defaults.rules]]
name = "payments"
query = 'sum(rate(payment_errors_total{namespace="{namespace}"}[{window}]))'
op = ">"
threshold = 0
[[targets]]
namespace = "production"
name = "web"
[targets.health]
url = "http://web.production.svc:8000/health"
[[notify]]
kind = "webhook"
name = "oncall"
url = "http://127.0.0.1:9/hook"
"#;

fn load(toml: &str) -> Config {
    match Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
    {
        Ok(l) => l.config,
        Err(e) => panic!("test config: {e}"),
    }
}

fn deployment(name: &str, annotations: &BTreeMap<String, String>) -> Deployment {
    let d = json!({
        "metadata": {"name": name, "namespace": "production", "uid": format!("uid-{name}"),
                     "labels": {"app": name}, "annotations": annotations},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "app", "image": "x:v1"}]}}},
    });
    serde_json::from_value(d).unwrap_or_else(|e| panic!("test Deployment: {e}"))
}

/// Every key a person might write: the documented ones, the watchdog's own
/// records (a person can write those too), near misses and foreign keys.
fn annotation_key() -> impl Strategy<Value = String> {
    let known: Vec<String> = [
        keys::ENABLED,
        keys::WATCH_WINDOW,
        keys::FAILURE_THRESHOLD,
        keys::DRY_RUN,
        keys::PAUSED,
        keys::ROLLBACK_TO,
        keys::IRREVERSIBLE,
        keys::KNOWN_GOOD,
        keys::BLOCKLIST,
        keys::IN_FLIGHT,
        keys::ROLLBACKS,
        keys::RESTORED,
        keys::MEMORY,
        keys::CHANGE_CAUSE,
        keys::REVISION,
        "rollback-watchdog.io/url",
        "rollback-watchdog.io/query",
        "rollback-watchdog.io/notify",
        "rollback-watchdog.io/namespace",
        "rollback-watchdog.io/lease-name",
        "rollback-watchdog.io/health-url",
        "rollback-watchdog.io/errors_query",
        "argocd.argoproj.io/instance",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        6 => prop::sample::select(known),
        1 => "rollback-watchdog\\.io/[a-z_.-]{1,20}",
    ]
}

/// Values: well-formed ones, near misses, JSON, any text, and oversized.
fn annotation_value() -> impl Strategy<Value = String> {
    let plausible: Vec<String> = [
        "true",
        "false",
        " true ",
        "TRUE",
        "yes",
        "",
        "15m",
        "1s",
        "0s",
        "7d",
        "8d",
        "1h30m",
        "-5m",
        "3",
        "0",
        "1",
        "1000",
        "1001",
        "-1",
        "99999999999999999999",
        "previous",
        "2",
        "[]",
        "{}",
        "null",
        "[\"2026-11-27T11:45:00Z\"]",
        "{\"podTemplateHash\":\"h\"}",
        "http://evil.example/hook",
        "sum(rate(x[5m]))",
        "cluster-admin",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        4 => prop::sample::select(plausible),
        3 => "\\PC{0,40}",
        1 => any::<String>(),
        1 => (1usize..300_000, any::<char>()).prop_map(|(n, c)| c.to_string().repeat(n)),
    ]
}

fn annotations() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map(annotation_key(), annotation_value(), 0..8)
}

/// The policy as JSON without the keys annotations may set.
fn untouchable(p: &rollback_watchdog::config::Policy) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or_else(|e| panic!("policy json: {e}"));
    if let Some(o) = v.as_object_mut() {
        for k in ["watch_window", "failure_threshold", "dry_run", "paused"] {
            o.remove(k);
        }
    }
    v
}

proptest! {
    #![proptest_config(cases(CASES))]

    /// No annotation changes anything but the four documented overrides:
    /// URLs, queries, rules, budgets, notification targets and the names
    /// RBAC is granted on stay as configured; dry-run and paused can be
    /// set, never lifted; a value that does not parse is a warning (the
    /// Warning Event), quoted short, never a panic.
    #[test]
    fn annotations_only_tighten_policy(
        on_target in annotations(),
        on_opt_in in annotations(),
        config_dry_run in any::<bool>(),
        config_paused in any::<bool>(),
    ) {
        let mut config = load(BASE);
        config.targets[0].policy.dry_run = config_dry_run;
        config.targets[0].policy.paused = config_paused;
        let before = format!("{config:?}");
        let mut opt_in = on_opt_in.clone();
        opt_in.insert(keys::ENABLED.into(), "true".into());
        let snapshot = Snapshot::from_objects(
            [deployment("web", &on_target), deployment("api", &opt_in)],
            [],
            [],
        );
        let resolution = resolve(&config, &snapshot);
        prop_assert_eq!(before, format!("{config:?}"), "the config changed");
        let web = resolution.targets.iter().find(|t| t.name == "web");
        let web = web.ok_or_else(|| TestCaseError::fail("web is not watched"))?;
        prop_assert_eq!(untouchable(&web.policy), untouchable(&config.targets[0].policy));
        prop_assert!(web.policy.dry_run || !config_dry_run, "dry-run lifted");
        prop_assert!(web.policy.paused || !config_paused, "paused lifted");
        if let Some(api) = resolution.targets.iter().find(|t| t.name == "api") {
            let base = config.opt_in_policy();
            prop_assert_eq!(untouchable(&api.policy), untouchable(&base));
        }
        for w in &resolution.warnings {
            prop_assert!(w.message.len() < 1000, "a warning of {} bytes: {}", w.message.len(), &w.message[..200]);
        }
        // A malformed override is said, naming the annotation.
        for (deployment, set) in [("web", &on_target), ("api", &opt_in)] {
            if let Some(v) = set.get(keys::FAILURE_THRESHOLD) {
                let ok = v.trim().parse::<u32>().is_ok_and(|n| (1..=1000).contains(&n));
                if !ok {
                    prop_assert!(
                        resolution.warnings.iter().any(|w| w.subject == deployment
                            && w.message.contains(keys::FAILURE_THRESHOLD)),
                        "no warning for {}={v:?} on {deployment}", keys::FAILURE_THRESHOLD
                    );
                }
            }
        }
        // Every reader of the watchdog's records takes any text.
        for d in [deployment("web", &on_target), deployment("api", &opt_in)] {
            let _ = rollback_watchdog::observe::blocklist::read(&d);
            let _ = rollback_watchdog::observe::memory::read(&d);
            let _ = rollback_watchdog::observe::revision::known_good_of(&d);
            let _ = rollback_watchdog::decide::request::read_in_flight(&d);
            let _ = rollback_watchdog::decide::request::rollbacks_of(&d);
            let _ = rollback_watchdog::decide::plan::gitops_manager(&d);
            if let Some(Err(e)) = rollback_watchdog::pipeline::annotation_request(&d) {
                prop_assert!(e.len() < 1000, "a rollback-to warning of {} bytes", e.len());
            }
        }
    }
}

// ---- The config loader ----

const EXAMPLE: &str = include_str!("../config/watchdog.toml");

#[derive(Debug, Clone)]
enum Mutation {
    DropLine(usize),
    Value(usize, String),
    Insert(usize, String),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let values: Vec<String> = [
        "\"\"",
        "\"-1s\"",
        "\"0s\"",
        "1e309",
        "-5",
        "0",
        "[]",
        "{}",
        "\"{unknown}\"",
        "\"http://\"",
        "\"ftp://x\"",
        "18446744073709551616",
        "nan",
        "true",
        "\"15m\"",
        "\"http://user:pw@127.0.0.1:1/\"",
        "'sum(x{a=\"{namespace}\"})'",
        "[1, \"a\"]",
        "\"999999999999999d\"",
        "\"\\u0000\"",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    prop_oneof![
        (0usize..400).prop_map(Mutation::DropLine),
        (
            0usize..400,
            prop_oneof![prop::sample::select(values), "\\PC{0,20}"]
        )
            .prop_map(|(l, v)| Mutation::Value(l, v)),
        (
            0usize..20_000,
            prop_oneof![
                Just("[[targets]]\n".to_string()),
                Just("[[notify]]\nkind = \"slack\"\n".to_string()),
                Just("[defaults.latency]\n".to_string()),
                "\\PC{0,30}",
                any::<String>(),
            ]
        )
            .prop_map(|(at, s)| Mutation::Insert(at, s)),
        (0usize..20_000).prop_map(Mutation::Truncate),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let n = lines.len().max(1);
    let cut = |at: usize| {
        let mut at = at % (text.len() + 1);
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match m {
        Mutation::DropLine(l) => {
            if !lines.is_empty() {
                lines.remove(l % n);
            }
            lines.join("\n")
        }
        Mutation::Value(l, v) => {
            let candidates: Vec<usize> = (0..lines.len())
                .filter(|i| lines[*i].contains(" = "))
                .collect();
            if let Some(i) = candidates.get(l % candidates.len().max(1)) {
                let key = lines[*i].split(" = ").next().unwrap_or("").to_owned();
                lines[*i] = format!("{key} = {v}");
            }
            lines.join("\n")
        }
        Mutation::Insert(at, s) => {
            let at = cut(*at);
            format!("{}{s}{}", &text[..at], &text[at..])
        }
        Mutation::Truncate(at) => text[..cut(*at)].to_owned(),
    }
}

proptest! {
    #![proptest_config(cases(CASES * 2))]

    /// Any mutation of the example config loads or is refused with a
    /// message: never a panic.
    #[test]
    fn the_config_loader_never_panics(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut text = EXAMPLE.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        match Loader::from_toml(text).env(Vec::<(String, String)>::new()).load() {
            Ok(_) => {}
            Err(e) => prop_assert!(!e.to_string().trim().is_empty(), "an empty error"),
        }
    }

    /// Filling a query template: any values, no panic; each placeholder is
    /// filled once (a value that looks like a placeholder stays as it is).
    #[test]
    fn query_templates_fill_any_values(
        values in prop::collection::vec("\\PC{0,30}", 7),
        inject in any::<bool>(),
    ) {
        let config = load(BASE);
        let v: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, s)| if inject && i == 1 { "{namespace}".to_string() } else { s.clone() })
            .collect();
        let p = Placeholders {
            namespace: &v[0],
            deployment: &v[1],
            revision: &v[2],
            pod_template_hash: &v[3],
            pods: &v[4],
            window: &v[5],
            cluster: &v[6],
        };
        let policy = &config.targets[0].policy;
        let rule = policy.rules[0].query.fill(&p);
        prop_assert!(rule.contains(&format!("namespace=\"{}\"", v[0])), "{rule}");
        prop_assert!(rule.contains(&format!("[{}]", v[5])), "{rule}");
        let errors = policy.error_rate.errors_query.fill(&p);
        prop_assert!(!errors.is_empty());
        for url in &policy.health.urls {
            let filled = url.fill(&p);
            let injected = v.iter().any(|x| x.contains('{'));
            prop_assert!(injected || !filled.contains('{'), "a placeholder left in {}", filled);
        }
    }
}

// ---- Prometheus answers ----

fn json_leaf() -> impl Strategy<Value = Value> + Clone {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "NaN", "+Inf", "-Inf", "1", "0.5", "1e308", "x", "", "-0"
        ])
        .prop_map(Value::from),
        "\\PC{0,12}".prop_map(Value::from),
    ]
}

fn json_any() -> impl Strategy<Value = Value> + Clone {
    json_leaf().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-zA-Z_]{0,10}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Answers shaped like Prometheus's, with random parts.
fn prometheus_answer() -> impl Strategy<Value = Vec<u8>> {
    let sample = (json_leaf(), json_leaf()).prop_map(|(t, v)| json!([t, v]));
    let series = (
        prop::collection::btree_map("[a-z]{1,5}", "[a-z]{0,5}", 0..3),
        sample.clone(),
        prop::collection::vec(sample.clone(), 0..3),
    )
        .prop_map(
            |(metric, value, values)| json!({"metric": metric, "value": value, "values": values}),
        );
    let result_type = prop::sample::select(vec!["vector", "matrix", "scalar", "string", "other"]);
    let result = prop_oneof![
        prop::collection::vec(series, 0..4).prop_map(Value::Array),
        sample,
        json_any(),
    ];
    let shaped = (
        prop::sample::select(vec!["success", "error", "Success", "warning"]),
        result_type,
        result,
        json_any(),
    )
        .prop_map(|(status, rt, result, extra)| {
            serde_json::to_vec(&json!({"status": status, "data": {"resultType": rt, "result": result},
                                        "errorType": "bad_data", "error": extra, "warnings": extra}))
            .unwrap_or_default()
        });
    prop_oneof![
        6 => shaped,
        1 => json_any().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => prop::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(cases(CASES * 4))]

    /// Any answer is a number, Prometheus's refusal, or a bad answer: never
    /// a panic, never a non-finite number.
    #[test]
    fn prometheus_answers_never_panic(body in prometheus_answer(), status in prop::sample::select(vec![200u16, 400, 422, 503])) {
        use rollback_watchdog::signals::prometheus::{answer, one_number};
        let status = reqwest::StatusCode::from_u16(status).unwrap_or(reqwest::StatusCode::OK);
        if let answer::Answer::Result(r) = answer::decode(status, &body) {
            if let Ok(n) = one_number(r.data()) {
                prop_assert!(n.is_finite(), "{n} from {}", String::from_utf8_lossy(&body));
            }
        }
    }

    /// The sim applies any patch body of any type to a Deployment, or
    /// refuses it: never a panic.
    #[test]
    fn sim_patches_never_panic(body in sim_patch(), kind in 0usize..4) {
        use rollback_watchdog::sim::patch::{apply, PatchType};
        let kind = [PatchType::Json, PatchType::Merge, PatchType::Strategic, PatchType::Apply][kind];
        let mut doc = serde_json::to_value(deployment("web", &BTreeMap::from([
            (keys::REVISION.to_string(), "3".to_string()),
        ]))).unwrap_or_default();
        let _ = apply(kind, &mut doc, &body);
    }
}

fn pointer() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "/",
            "/spec",
            "/spec/template",
            "/spec/template/spec/containers/0/image",
            "/spec/template/spec/containers/-",
            "/spec/template/spec/containers/9",
            "/spec/replicas",
            "/metadata/annotations/rollback-watchdog.io~1memory",
            "/metadata/resourceVersion",
            "/metadata/annotations",
            "/-",
            "/spec/template/spec/containers/00",
            "/spec/template/spec/containers/-1",
            "/spec/template/spec/containers/18446744073709551616",
            "/a~2b",
            "~1",
        ])
        .prop_map(str::to_owned),
        "(/[a-z0-9~-]{0,6}){0,5}",
    ]
}

fn sim_patch() -> impl Strategy<Value = Vec<u8>> {
    let op = (
        prop::sample::select(vec![
            "add", "remove", "replace", "move", "copy", "test", "nope",
        ]),
        pointer(),
        pointer(),
        json_any(),
    )
        .prop_map(
            |(op, path, from, value)| json!({"op": op, "path": path, "from": from, "value": value}),
        );
    let merge = json_any().prop_map(|v| {
        json!({"metadata": {"annotations": v.clone(), "labels": v.clone()},
               "spec": {"replicas": v.clone(), "template": {"spec": {"containers": [
                   {"name": "app", "image": v.clone()}, v.clone()]}},
                        "$patch": v.clone()}, "$setElementOrder/containers": v})
    });
    prop_oneof![
        3 => prop::collection::vec(op, 0..5).prop_map(|ops| serde_json::to_vec(&ops).unwrap_or_default()),
        3 => merge.prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => json_any().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        1 => prop::collection::vec(any::<u8>(), 0..100),
    ]
}

// ---- Size caps ----

/// A server answering every request with `size` bytes of JSON-looking
/// text, with a Content-Length or streamed without one; counts requests.
async fn flood(size: usize, declared: bool, status: u16) -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let chunk = axum::body::Bytes::from(vec![b' '; 64 * 1024]);
            let chunks = size / chunk.len();
            let body = if declared {
                axum::body::Body::from(vec![b' '; size])
            } else {
                let stream = futures::stream::iter(
                    (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
                );
                axum::body::Body::from_stream(stream)
            };
            axum::http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(body)
                .unwrap_or_default()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, hits)
}

const TEN_MB: usize = 10 * 1024 * 1024;

#[tokio::test]
async fn a_ten_megabyte_prometheus_answer_is_refused_as_inconclusive() {
    use rollback_watchdog::signals::prometheus::{PrometheusSource, QueryError};
    use rollback_watchdog::signals::SignalId;
    for declared in [true, false] {
        let (addr, hits) = flood(TEN_MB, declared, 200).await;
        let config = load(&BASE.replace("http://127.0.0.1:9/\"", &format!("http://{addr}/\"")));
        let source =
            PrometheusSource::new(&config.prometheus).unwrap_or_else(|e| panic!("source: {e}"));
        let answer = tokio::time::timeout(
            Duration::from_secs(60),
            source.query(&SignalId::ErrorRate, "errors", "up", jiff::Timestamp::now()),
        )
        .await
        .unwrap_or_else(|_| panic!("no answer within 60 s"));
        assert_eq!(hits.load(Ordering::SeqCst), 1, "Prometheus was not asked");
        match answer {
            Err(e @ QueryError::BadAnswer { .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("larger than 4194304 bytes") && text.contains(&addr),
                    "declared {declared}: {text}"
                );
            }
            other => panic!("declared {declared}: a 10 MB answer gave {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_ten_megabyte_webhook_error_answer_is_not_read_whole() {
    use rollback_watchdog::report::notify::{send_test, RetryPolicy};
    for declared in [true, false] {
        let (addr, hits) = flood(TEN_MB, declared, 500).await;
        let toml = BASE.replace(
            "http://127.0.0.1:9/hook\"",
            &format!("http://{addr}/hook\"\ntimeout = \"2s\"\ndeadline = \"3s\""),
        );
        let config = load(&toml);
        let policy = RetryPolicy {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(500),
            factor: 2.0,
        };
        let results =
            tokio::time::timeout(Duration::from_secs(60), send_test(&config, None, &policy))
                .await
                .unwrap_or_else(|_| panic!("no result within 60 s"))
                .unwrap_or_else(|e| panic!("notify-test: {e}"));
        assert!(
            hits.load(Ordering::SeqCst) >= 1,
            "the receiver was not asked"
        );
        let failures = results
            .iter()
            .flat_map(|r| r.report.failures.iter())
            .cloned()
            .collect::<Vec<_>>();
        assert!(
            failures
                .iter()
                .any(|f| f.contains("HTTP 500") && f.contains("larger than")),
            "declared {declared}: {failures:?}"
        );
        assert!(
            failures.iter().all(|f| f.len() < 400),
            "declared {declared}: {failures:?}"
        );
    }
}

/// A health endpoint whose body never ends (a misrouted stream, a broken
/// proxy): the probe reads its first 64 KiB only, so the answer's status
/// decides at once. Read whole, it would run into the probe's timeout and
/// fail the revision.
#[tokio::test]
async fn a_health_body_that_never_ends_is_read_to_its_cap_only() {
    use rollback_watchdog::signals::health::HealthProber;
    use rollback_watchdog::signals::{Outcome, Subject};
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            let chunk = axum::body::Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::repeat_with(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>(chunk.clone())
            });
            axum::body::Body::from_stream(stream)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let config = Loader::from_toml(format!(
        "[defaults.health]\nurls = [\"http://{addr}/health\"]\ntimeout = \"3s\"\n"
    ))
    .env(Vec::<(String, String)>::new())
    .load()
    .unwrap_or_else(|e| panic!("test config: {e}"))
    .config;
    let policy = &config.defaults.health;
    let prober = HealthProber::new().unwrap_or_else(|e| panic!("a prober: {e}"));
    let subject = Subject {
        namespace: "production".into(),
        deployment: "web".into(),
        ..Subject::default()
    };
    let r = prober
        .url(
            &policy.urls[0],
            policy,
            &subject,
            "test",
            jiff::Timestamp::now(),
        )
        .await;
    assert!(
        matches!(r.outcome, Outcome::Pass { .. }),
        "an endless 200 body is a pass on its status: {:?}",
        r.outcome
    );
    // Far less than what 3 s of loopback would carry (gigabytes).
    let chunks = sent.load(Ordering::SeqCst);
    assert!(chunks < 1_000, "{chunks} chunks of 64 KiB were pulled");
}

// ---- The admin server ----

/// Read-only by design: every route and a few that do not exist answer
/// POST, PUT, PATCH and DELETE with 405 or 404, and nothing changes
/// (the snapshot, readiness, the metrics).
#[tokio::test]
async fn the_admin_server_has_no_mutating_endpoint() {
    use rollback_watchdog::report::metrics::Metrics;
    use rollback_watchdog::report::status::StatusReport;
    use rollback_watchdog::runtime::admin::{start, AdminState};

    let (metrics, registry) = Metrics::new();
    metrics.targets.set(2);
    let state = AdminState::new(registry, Duration::from_secs(5));
    state.publish(StatusReport {
        cluster: "production".into(),
        warnings: vec!["a warning".into()],
        ..StatusReport::default()
    });
    state.set_synced();
    let addr = "127.0.0.1:0"
        .parse()
        .unwrap_or_else(|e| panic!("addr: {e}"));
    let server = start(addr, state.clone())
        .await
        .unwrap_or_else(|e| panic!("admin: {e}"));
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("client: {e}"));
    let get = |path: &str| {
        let request = http.get(format!("{}{path}", server.url()));
        async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("GET: {e}"));
            (
                response.status().as_u16(),
                response.text().await.unwrap_or_default(),
            )
        }
    };
    let status_before = get("/status").await;
    let metrics_before = get("/metrics").await;
    assert_eq!(status_before.0, 200);
    assert!(status_before.1.contains("a warning"), "{}", status_before.1);

    let mut answers = Vec::new();
    for path in [
        "/livez",
        "/readyz",
        "/metrics",
        "/status",
        "/",
        "/status/production/web",
        "/rollback",
        "/admin",
        "/debug/pprof",
        "/shutdown",
    ] {
        for method in ["POST", "PUT", "PATCH", "DELETE"] {
            let method = reqwest::Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|e| panic!("method: {e}"));
            let response = http
                .request(method.clone(), format!("{}{path}", server.url()))
                .header("content-type", "application/json")
                .body(r#"{"paused": true, "ready": false, "targets": []}"#)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
            let code = response.status().as_u16();
            assert!(
                code == 405 || code == 404,
                "{method} {path} answered {code}: the admin server must change nothing"
            );
            answers.push(code);
        }
    }
    assert!(
        answers.contains(&405),
        "no route was there to refuse a method"
    );
    let status_after = get("/status").await;
    let strip = |s: &str| -> Value {
        let mut v: Value = serde_json::from_str(s).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.remove("generated_at");
        }
        v
    };
    assert_eq!(
        strip(&status_before.1),
        strip(&status_after.1),
        "/status changed"
    );
    assert!(state.is_ready(), "readiness changed");
    let metrics_after = get("/metrics").await;
    assert!(
        metrics_after.1.contains("rollback_watchdog_targets 2"),
        "{}",
        metrics_after.1
    );
    assert_eq!(metrics_before.0, metrics_after.0);
    server.stop(Duration::from_secs(5)).await;
}
