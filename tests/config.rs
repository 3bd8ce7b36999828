//! The config as an operator meets it: the shipped example is valid and
//! says what the runbook says, the environment beats the file, and every
//! kind of mistake is reported with its key path, all of them in one run.

use std::path::PathBuf;
use std::time::Duration;

use rollback_watchdog::config::{
    CompareOp, ConfigError, Loaded, Loader, MissingSecrets, Selects, SinkKind, UrlSource,
};

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/watchdog.toml")
}

/// The example with no environment, away from the cluster (its Slack URL
/// file does not exist here).
fn load_example() -> Loaded {
    Loader::from_file(example_path())
        .env(Vec::<(String, String)>::new())
        .missing_secrets(MissingSecrets::Warn)
        .load()
        .unwrap_or_else(|e| panic!("the example config must be valid:\n{e}"))
}

/// Every problem of a config, one line each, as check-config prints them.
fn problems(toml: &str) -> Vec<String> {
    problems_with_env(toml, &[])
}

fn problems_with_env(toml: &str, env: &[(&str, &str)]) -> Vec<String> {
    match Loader::from_toml(toml).env(env.iter().copied()).load() {
        Ok(_) => panic!("expected problems, the config was accepted:\n{toml}"),
        Err(ConfigError::Invalid { problems, .. }) => {
            problems.iter().map(ToString::to_string).collect()
        }
        Err(other) => panic!("expected validation problems, got: {other}"),
    }
}

const TARGET: &str = "[[targets]]\nnamespace = \"production\"\nname = \"kailash-kaizen\"\n";

#[test]
fn the_example_watches_kailash_kaizen_as_the_runbook_says() {
    let loaded = load_example();
    let c = &loaded.config;
    assert_eq!(c.watchdog.cluster_name, "production");
    assert_eq!(c.watchdog.interval, Duration::from_secs(15));
    assert_eq!(c.targets.len(), 1);

    let t = &c.targets[0];
    assert_eq!(t.namespace, "production");
    assert!(matches!(&t.selects, Selects::Name(n) if n == "kailash-kaizen"));
    assert_eq!(t.display_name(), "production/kailash-kaizen");

    let p = &t.policy;
    assert_eq!(p.watch_window, Duration::from_secs(15 * 60));
    assert_eq!(p.failure_threshold, 3);
    assert_eq!(
        p.rollout_timeout,
        Duration::from_secs(5 * 60),
        "runbook: rollout status --timeout=5m"
    );
    assert!(p.immediate_bad_when_all_pods_crash);
    assert!(!p.dry_run && !p.paused && !p.allow_gitops && !p.rollback_outside_window);
    // Runbook: ">50 % slower" and "health < 2 s".
    assert_eq!(p.latency.max_ratio_to_baseline, 1.5);
    assert_eq!(
        p.latency.max,
        Duration::from_millis(1500),
        "the target's own override"
    );
    assert_eq!(p.latency.relative_floor, Duration::from_millis(50));
    assert_eq!(p.health.timeout, Duration::from_secs(2));
    assert_eq!(p.health.expect_status, vec![200]);
    let urls: Vec<_> = p.health.urls.iter().map(|u| u.as_str()).collect();
    assert_eq!(urls, ["http://kailash-kaizen.production.svc:8000/health"]);
    let per_pod = p
        .health
        .per_pod
        .as_ref()
        .expect("per-pod probing is configured");
    assert_eq!((per_pod.port, per_pod.path.as_str()), (8000, "/health"));
    assert_eq!(p.error_rate.max, 0.05);
    assert_eq!(p.error_rate.max_ratio_to_baseline, 2.0);
    assert_eq!(p.error_rate.relative_floor, 0.01);
    assert!(p.pods.crash_reasons.iter().any(|r| r == "CrashLoopBackOff"));
    assert!(p.pods.crash_reasons.iter().any(|r| r == "OOMKilled"));
    assert_eq!(p.pods.ready_timeout, Duration::from_secs(300));
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].name, "payment-errors");
    assert_eq!(p.rules[0].op, CompareOp::Gt);

    assert_eq!(c.notify.len(), 1);
    assert_eq!(c.notify[0].kind, SinkKind::Slack);
    assert!(matches!(&c.notify[0].url, UrlSource::File(p) if p.ends_with("slack-url")));
    // Absent here: a warning for check-config, not a failure.
    assert_eq!(
        loaded
            .warnings
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["notify[0].url_file: file /etc/rollback-watchdog/slack-url does not exist"]
    );
}

#[test]
fn the_example_fills_its_queries_for_the_revision_under_judgment() {
    let c = load_example().config;
    let q = c.targets[0].policy.error_rate.errors_query.fill(
        &rollback_watchdog::config::Placeholders {
            namespace: "production",
            deployment: "kailash-kaizen",
            pods: "kailash-kaizen-5d8f7c9b4-.*",
            window: "2m",
            ..Default::default()
        },
    );
    assert_eq!(
        q,
        r#"sum(rate(http_requests_total{namespace="production", pod=~"kailash-kaizen-5d8f7c9b4-.*", code=~"5.."}[2m]))"#
    );
}

#[test]
fn a_missing_secret_file_is_an_error_where_the_watchdog_runs() {
    let err = Loader::from_file(example_path())
        .env(Vec::<(String, String)>::new())
        .missing_secrets(MissingSecrets::Error)
        .load()
        .unwrap_err();
    let ConfigError::Invalid { problems, .. } = err else {
        panic!("{err}")
    };
    let lines: Vec<_> = problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        ["notify[0].url_file: file /etc/rollback-watchdog/slack-url does not exist"]
    );
}

#[test]
fn environment_variables_beat_the_file() {
    let env = [
        ("ROLLBACK_WATCHDOG_WATCHDOG__DRY_RUN", "true"),
        ("ROLLBACK_WATCHDOG_WATCHDOG__INTERVAL", "30s"),
        ("ROLLBACK_WATCHDOG_DEFAULTS__FAILURE_THRESHOLD", "5"),
        (
            "ROLLBACK_WATCHDOG_DEFAULTS__LATENCY__MAX_RATIO_TO_BASELINE",
            "1.8",
        ),
        (
            "ROLLBACK_WATCHDOG_PROMETHEUS__URL",
            "http://prometheus.internal:9090",
        ),
        // Read by the CLI, not config keys: must not be reported as unknown.
        ("ROLLBACK_WATCHDOG_CONFIG", "/somewhere/else.toml"),
        ("ROLLBACK_WATCHDOG_LOG_FORMAT", "json"),
        ("UNRELATED", "x"),
    ];
    let loaded = Loader::from_file(example_path())
        .env(env)
        .missing_secrets(MissingSecrets::Warn)
        .load()
        .unwrap_or_else(|e| panic!("{e}"));
    let c = loaded.config;
    assert!(c.watchdog.dry_run);
    assert_eq!(c.watchdog.interval, Duration::from_secs(30));
    assert_eq!(
        c.prometheus.url.as_str(),
        "http://prometheus.internal:9090/"
    );
    assert_eq!(c.defaults.failure_threshold, 5);
    // The target sets failure_threshold = 3 itself, so the file's target
    // value stays; the default it does not override follows the environment.
    assert_eq!(c.targets[0].policy.failure_threshold, 3);
    assert_eq!(c.targets[0].policy.latency.max_ratio_to_baseline, 1.8);
    // The global dry run reaches the target's effective policy.
    assert!(c.targets[0].policy.dry_run);
}

#[test]
fn a_missing_config_file_is_named() {
    let err = Loader::from_file("/nonexistent/watchdog.toml")
        .load()
        .unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/watchdog.toml"),
        "{err}"
    );
}

// --- broken configs, one kind of mistake each ---

#[test]
fn unknown_keys_are_errors_wherever_they_are() {
    let toml = format!(
        "[watchdog]\nintervall = \"15s\"\n[defaults.latency]\nmax_ration = 2.0\n{TARGET}[targets.helth]\nurl = \"http://x/\"\n[metrics]\nport = 1\n"
    );
    assert_eq!(
        problems(&toml),
        [
            "watchdog.intervall: unknown key",
            "defaults.latency.max_ration: unknown key",
            "targets[0].helth: unknown key",
            "metrics: unknown key",
        ]
    );
}

#[test]
fn a_duration_without_its_unit_stuck_on_is_refused() {
    assert_eq!(
        problems("[watchdog]\ninterval = \"15 sec\"\n[defaults]\ncooldown = \"half an hour\"\n"),
        [
            r#"watchdog.interval: "15 sec" is not a duration like "15s" or "5m""#,
            r#"defaults.cooldown: "half an hour" is not a duration like "15s" or "5m""#,
        ]
    );
}

#[test]
fn values_of_the_wrong_type_name_their_key() {
    assert_eq!(
        problems(&format!(
            "[watchdog]\ninterval = 15\ndry_run = \"yes\"\n{TARGET}failure_threshold = 2.5\n[[notify]]\nkind = \"slack\"\nurl_env = \"X\"\nevents = \"blind\"\n"
        )),
        [
            r#"watchdog.dry_run: expected a boolean, got string "yes""#,
            r#"watchdog.interval: expected a duration like "15s" or "5m", got integer `15`"#,
            "targets[0].failure_threshold: expected a whole number (0 or more), got floating point `2.5`",
            r#"notify[0].events: expected a list, got string "blind""#,
            "notify[0].url_env: environment variable X is not set",
        ]
    );
}

#[test]
fn a_target_needs_exactly_one_of_name_and_selector() {
    let toml = r#"
        [[targets]]
        namespace = "production"
        [[targets]]
        namespace = "production"
        name = "web"
        selector = "app=web"
        [[targets]]
        name = "api"
        [[targets]]
        namespace = "Production"
        name = "db"
    "#;
    assert_eq!(
        problems(toml),
        [
            "targets[0]: give one of name, selector",
            "targets[1]: give name or selector, not both",
            "targets[2].namespace: missing",
            r#"targets[3].namespace: "Production" is not a valid namespace name (lowercase letters, digits and '-', at most 63 characters)"#,
        ]
    );
}

#[test]
fn a_selector_that_does_not_parse_is_quoted_back() {
    // Relies on the real selector parser (src/k8s/selector.rs).
    let toml = "[[targets]]\nnamespace = \"production\"\nselector = \"app in (web\"\n";
    let got = problems(toml);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with(r#"targets[0].selector: label selector "app in (web" does not parse: "#),
        "{got:?}"
    );
    assert!(Loader::from_toml(
        "[[targets]]\nnamespace = \"production\"\nselector = \"app in (web)\"\n"
    )
    .env(Vec::<(String, String)>::new())
    .load()
    .is_ok());
}

#[test]
fn the_same_deployment_listed_twice_is_refused() {
    assert_eq!(
        problems(&format!("{TARGET}{TARGET}")),
        ["targets[1]: selects the same Deployments as targets[0] (production, name kailash-kaizen); merge the two entries"]
    );
}

#[test]
fn thresholds_out_of_range_are_explained() {
    let toml = r#"
        [defaults]
        failure_threshold = 0
        backup_retention = 0
        [defaults.error_rate]
        max = 1.5
        relative_floor = -0.1
        [[targets]]
        namespace = "a"
        name = "b"
        [[targets]]
        namespace = "a"
        name = "c"
        [[targets]]
        namespace = "a"
        name = "d"
        [targets.latency]
        max_ratio_to_baseline = 0.8
        [targets.pods]
        ready_timeout = "0s"
        "#;
    assert_eq!(
        problems(toml),
        [
            "defaults.backup_retention: must be at least 1, got 0: no backup means no rollback",
            "defaults.error_rate.max: must be a fraction in (0, 1], got 1.5",
            "defaults.error_rate.relative_floor: must be a fraction in [0, 1), got -0.1",
            "defaults.failure_threshold: must be at least 1, got 0",
            "targets[2].latency.max_ratio_to_baseline: must be > 1.0, got 0.8",
            "targets[2].pods.ready_timeout: must be longer than 0s",
        ]
    );
}

#[test]
fn a_window_too_short_to_ever_judge_is_refused() {
    assert_eq!(
        problems(&format!("{TARGET}watch_window = \"30s\"\n")),
        ["targets[0].watch_window: 30s is shorter than failure_threshold (3) x watchdog.interval (15s) = 45s; no revision could turn Bad inside it"]
    );
}

#[test]
fn a_query_with_an_unknown_placeholder_lists_the_known_ones() {
    let toml = r#"
        [defaults.error_rate]
        errors_query = 'sum(rate(http_requests_total{pod=~"{podz}", code=~"5.."}[{window}]))'
        [defaults.latency]
        query = 'histogram_quantile(0.95, sum by (le) (rate(x_bucket[{window}]))'
    "#;
    assert_eq!(
        problems(toml),
        [
            "defaults.error_rate.errors_query: unknown placeholder {podz}; known: {namespace}, {deployment}, {revision}, {pod_template_hash}, {pods}, {window}",
            "defaults.latency.query: does not look like PromQL: '(' is not closed",
        ]
    );
}

#[test]
fn rules_need_a_comparison_a_name_and_a_query() {
    let toml = r#"
        [[defaults.rules]]
        name = "payment-errors"
        query = 'sum(rate(payment_failures_total[{window}]))'
        op = "=>"
        threshold = 0
        [[defaults.rules]]
        name = "payment-errors"
        op = ">"
        threshold = 1
    "#;
    assert_eq!(
        problems(toml),
        [
            r#"defaults.rules[0].op: "=>" is not a comparison; use one of >, >=, <, <=, ==, !="#,
            r#"defaults.rules[1].name: "payment-errors" is already the name of rules[0]"#,
            "defaults.rules[1].query: missing",
        ]
    );
}

#[test]
fn health_probes_must_be_urls_with_real_status_codes() {
    let toml = format!(
        r#"{TARGET}
        [targets.health]
        url = "htp//{{deployment}}:8000/health"
        expect_status = [200, 600]
        body_regex = "ok("
        per_pod = {{ port = 70000, path = "health" }}
        version_url = "http://{{deployment}}.{{namespace}}.svc:8000/{{pods}}"
        "#
    );
    assert_eq!(
        problems(&toml),
        [
            "targets[0].health.body_regex: \"ok(\" is not a regular expression: error: unclosed group",
            "targets[0].health.expect_status[1]: 600 is not an HTTP status code (100-599)",
            "targets[0].health.per_pod.path: \"health\" must start with '/'",
            "targets[0].health.per_pod.port: 70000 is not a port (1-65535)",
            "targets[0].health.url: \"htp//{deployment}:8000/health\" is not an http(s) URL: relative URL without a base",
            "targets[0].health.version_url: unknown placeholder {pods}; known: {namespace}, {deployment}, {revision}, {pod_template_hash}",
        ]
    );
}

#[test]
fn a_notify_sink_needs_one_url_source_and_a_known_kind() {
    let toml = r#"
        [[notify]]
        kind = "slak"
        [[notify]]
        kind = "slack"
        url = "https://hooks.slack.com/services/T0/B0/secret"
        url_env = "SLACK_URL"
        [[notify]]
        kind = "teams"
        url_env = "TEAMS URL"
        secret_env = "HMAC"
        events = ["rollback_done"]
        targets = ["kailash-kaizen"]
    "#;
    assert_eq!(
        problems(toml),
        [
            "notify[0]: give one of url, url_file, url_env",
            r#"notify[0].kind: "slak" is not a sink kind; use slack, teams or webhook"#,
            "notify[1]: give only one of url, url_file, url_env; got url and url_env",
            r#"notify[2].events[0]: "rollback_done" is not an event kind; known: rollback_started, rollback_succeeded, rollback_failed, would_roll_back, conflict, escalation, blind, degraded_outside_window, misconfigured"#,
            r#"notify[2].secret_env: only webhook sinks sign their messages; remove it or use kind = "webhook""#,
            r#"notify[2].targets[0]: "kailash-kaizen" is not "namespace/name" (name may be "*")"#,
            r#"notify[2].url_env: "TEAMS URL" is not an environment variable name"#,
        ]
    );
}

#[test]
fn a_webhook_url_that_is_not_a_url_is_reported_without_showing_it() {
    let got = problems_with_env(
        "[[notify]]\nkind = \"webhook\"\nurl_env = \"HOOK\"\nsecret_file = \"/nonexistent/hmac\"\n",
        &[("HOOK", "hooks.example.com/very-secret-token")],
    );
    assert_eq!(
        got,
        [
            "notify[0].secret_file: file /nonexistent/hmac does not exist",
            "notify[0].url_env: the value of HOOK is not an http(s) URL",
        ]
    );
    assert!(!got.concat().contains("very-secret-token"));
}

#[test]
fn prometheus_leader_election_and_admin_settings_are_checked() {
    let toml = r#"
        [prometheus]
        url = "prometheus:9090"
        timeout = "0s"
        [prometheus.headers]
        "Bad Header" = "x"
        [leader_election]
        lease_name = "Rollback_Watchdog"
        lease_duration = "10s"
        renew_deadline = "15s"
        [admin]
        listen = "8080"
    "#;
    assert_eq!(
        problems(toml),
        [
            r#"prometheus.headers.Bad Header: "Bad Header" is not an HTTP header name"#,
            "prometheus.timeout: must be longer than 0s",
            r#"prometheus.url: "prometheus:9090" is not an http(s) URL: the scheme is "prometheus", not http or https"#,
            r#"leader_election.lease_name: "Rollback_Watchdog" is not a valid Lease name (lowercase letters, digits, '-' and '.', at most 253 characters)"#,
            "leader_election.renew_deadline: must be shorter than lease_duration (10s), got 15s",
            r#"admin.listen: "8080" is not an address like "0.0.0.0:8080""#,
        ]
    );
}

#[test]
fn identity_keys_do_not_belong_in_defaults() {
    assert_eq!(
        problems("[defaults]\nnamespace = \"production\"\n"),
        ["defaults.namespace: belongs in a [[targets]] entry, not in [defaults]"]
    );
}

#[test]
fn a_config_with_many_mistakes_reports_all_of_them_at_once() {
    let toml = r#"
        [watchdog]
        interval = "15 sec"
        colour = "blue"

        [defaults.error_rate]
        errors_query = 'sum(rate(http_requests_total{pod=~"{podz}"}[{window}]))'

        [[targets]]
        namespace = "production"
        name = "kailash-kaizen"

        [[targets]]
        namespace = "production"
        name = "api"
        failure_threshold = "three"

        [[targets]]
        namespace = "production"
        name = "web"
        [targets.latency]
        max_ratio_to_baseline = 0.8

        [[notify]]
        kind = "slack"
    "#;
    assert_eq!(
        problems(toml),
        [
            "watchdog.colour: unknown key",
            r#"watchdog.interval: "15 sec" is not a duration like "15s" or "5m""#,
            "defaults.error_rate.errors_query: unknown placeholder {podz}; known: {namespace}, {deployment}, {revision}, {pod_template_hash}, {pods}, {window}",
            r#"targets[1].failure_threshold: expected a whole number (0 or more), got string "three""#,
            "targets[2].latency.max_ratio_to_baseline: must be > 1.0, got 0.8",
            "notify[0]: give one of url, url_file, url_env",
        ]
    );
}

#[test]
fn an_environment_variable_with_a_typo_is_named() {
    assert_eq!(
        problems_with_env("", &[("ROLLBACK_WATCHDOG_WATCHDOG__DRYRUN", "true")]),
        ["watchdog.dryrun: unknown key (set by environment variable ROLLBACK_WATCHDOG_WATCHDOG__DRYRUN)"]
    );
}

/// A bad value names the variable that set it, whether the problem is
/// found while reading (a type) or after (a rule); the same value from
/// the file names no variable, and a variable the file's value loses to
/// is the one named.
#[test]
fn a_bad_value_from_the_environment_names_its_variable() {
    let target = format!("{TARGET}[targets.latency]\nmax_ratio_to_baseline = 0.9\n");
    assert_eq!(
        problems_with_env(
            &format!("[defaults.latency]\nmax_ratio_to_baseline = 2.0\n{target}"),
            &[
                ("ROLLBACK_WATCHDOG_DEFAULTS__LATENCY__MAX_RATIO_TO_BASELINE", "0.8"),
                ("ROLLBACK_WATCHDOG_WATCHDOG__INTERVAL", "15 sec"),
                ("ROLLBACK_WATCHDOG_DEFAULTS__FAILURE_THRESHOLD", "three"),
            ]
        ),
        [
            r#"watchdog.interval: "15 sec" is not a duration like "15s" or "5m" (set by environment variable ROLLBACK_WATCHDOG_WATCHDOG__INTERVAL)"#,
            r#"defaults.failure_threshold: expected a whole number (0 or more), got string "three" (set by environment variable ROLLBACK_WATCHDOG_DEFAULTS__FAILURE_THRESHOLD)"#,
            "defaults.latency.max_ratio_to_baseline: must be > 1.0, got 0.8 (set by environment variable ROLLBACK_WATCHDOG_DEFAULTS__LATENCY__MAX_RATIO_TO_BASELINE)",
            "targets[0].latency.max_ratio_to_baseline: must be > 1.0, got 0.9",
        ]
    );
}

#[test]
fn odd_documents_are_problems_never_panics() {
    let odd = [
        ("targets = 5", "targets: expected a list, got integer `5`"),
        ("notify = {a=1}", "notify: expected a list, got a table"),
        ("defaults = []", "defaults: expected a table, got a list"),
        (
            "watchdog = [\"prod\", \"15s\"]",
            "watchdog: expected a table, got a list",
        ),
        (
            "targets = [\"x\"]",
            r#"targets[0]: expected a table, got string "x""#,
        ),
        (
            "[defaults.health]\nper_pod = 3",
            "defaults.health.per_pod: expected a table, got integer `3`",
        ),
        (
            "[defaults.error_rate]\nmax = inf",
            "defaults.error_rate.max: must be a finite number, not nan or inf",
        ),
        (
            "[defaults.pods]\ncrash_reasons = [[1]]",
            "defaults.pods.crash_reasons[0]: expected a string, got a list",
        ),
        (
            "[defaults.health]\nurls = [\"http://x/\", 5]",
            "defaults.health.urls[1]: expected a string, got integer `5`",
        ),
        (
            "[watchdog]\ninterval = \"99999999999999999999999h\"",
            r#"watchdog.interval: "99999999999999999999999h" is not a duration like "15s" or "5m""#,
        ),
        (
            "[prometheus]\nurl = \"http://{namespace}:9090\"",
            "prometheus.url: takes no placeholders; give Prometheus' own address",
        ),
        (
            "[[notify]]\nkind = \"webhook\"\nurl_file = \"/\"",
            "notify[0].url_file: / is a directory, not a file",
        ),
    ];
    for (toml, expected) in odd {
        assert_eq!(problems(toml), [expected], "for {toml:?}");
    }
}

#[test]
fn a_grouped_template_may_not_name_a_target_and_the_quantile_is_a_fraction() {
    let toml = r#"
        [defaults.error_rate]
        grouped = true
        errors_query = 'sum by (namespace, pod) (rate(http_requests_total{code=~"5.."}[{window}]))'
        total_query = 'sum by (namespace, pod) (rate(http_requests_total{namespace="{namespace}", pod=~"{pods}"}[{window}]))'
        [defaults.latency]
        grouped = true
        query = 'sum by (namespace, pod, le) (rate(http_request_duration_seconds_bucket[{window}]))'
        quantile = 95
        "#;
    assert_eq!(
        problems(toml),
        [
            "defaults.error_rate.total_query: error_rate.grouped = true runs this query once for every target, so it cannot use {namespace}, {pods}; return one series per namespace and pod instead (sum by (namespace, pod) (...)) and use only {window}",
            "defaults.latency.quantile: must be between 0 and 1 (0.95 is p95), got 95",
        ]
    );
    // The same templates per target (the default) are fine, and so is a
    // grouped one that uses only {window}.
    let fine = toml
        .replace("grouped = true\n        errors", "errors")
        .replace("quantile = 95", "quantile = 0.99");
    if let Err(e) = Loader::from_toml(fine)
        .env(Vec::<(String, String)>::new())
        .load()
    {
        panic!("per-target templates and a grouped {{window}}-only one are refused: {e}");
    }
}

#[test]
fn a_health_ca_file_is_inherited_and_a_bad_ca_file_names_its_key() {
    let tls = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");
    let loaded = Loader::from_toml(format!(
        "[defaults.health]\nurl = \"https://web.example.com/health\"\nca_file = \"{tls}/ca.crt\"\n{TARGET}"
    ))
    .env(Vec::<(String, String)>::new())
    .load()
    .unwrap_or_else(|e| panic!("a good ca_file is accepted:\n{e}"));
    assert_eq!(
        loaded.config.targets[0].policy.health.ca_file,
        Some(PathBuf::from(format!("{tls}/ca.crt"))),
        "the target inherits [defaults.health] ca_file"
    );

    // Where the watchdog runs, a missing one is an error like a missing
    // secret file; one that holds no certificate always is.
    let got = problems(&format!(
        "{TARGET}[targets.health]\nca_file = \"{tls}/server.py\"\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"https://hooks.example.com/x\"\nca_file = \"{tls}/absent.crt\"\n"
    ));
    assert_eq!(
        got,
        [
            format!("targets[0].health.ca_file: {tls}/server.py holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
            format!("notify[0].ca_file: file {tls}/absent.crt does not exist"),
        ]
    );
}
