//! The built binary as an operator runs it: check-config's output and exit
//! codes, the help, every subcommand wired (none "not available yet") and
//! JSON logs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary, run from the repository root with a clean environment:
/// nothing the developer exported may change what the test sees.
fn watchdog(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.args(args).current_dir(repo()).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write temp file");
    path
}

#[test]
fn check_config_accepts_the_example_and_prints_its_effective_config() {
    let out = run(&mut watchdog(&["check-config", "config/watchdog.toml"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    // Effective: the target carries the merged policy, defaults included.
    let printed: toml::Table = stdout.parse().expect("stdout is TOML");
    let target = &printed["targets"].as_array().expect("targets")[0];
    assert_eq!(target["name"].as_str(), Some("kailash-kaizen"));
    assert_eq!(target["watch_window"].as_str(), Some("15m"));
    assert_eq!(
        target["latency"]["max_ratio_to_baseline"].as_float(),
        Some(1.5)
    );
    // The Slack URL file is absent on this machine: a warning, not a failure.
    assert!(
        stderr.contains(
            "warning: notify[0].url_file: file /etc/rollback-watchdog/slack-url does not exist"
        ),
        "{stderr}"
    );
}

#[test]
fn check_config_never_prints_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let slack = "https://hooks.slack.com/services/T000/B000/XXXXsecretXXXX";
    let hmac = "hmac-key-do-not-print";
    let token = "prom-bearer-do-not-print";
    let config = write(
        dir.path(),
        "watchdog.toml",
        &format!(
            r#"
            [prometheus.headers]
            Authorization = "Bearer {token}"
            [[targets]]
            namespace = "production"
            name = "kailash-kaizen"
            [[notify]]
            kind = "slack"
            url_env = "SLACK_WEBHOOK_URL"
            [[notify]]
            kind = "webhook"
            url = "{slack}"
            secret = "{hmac}"
            "#
        ),
    );
    let out =
        run(watchdog(&["check-config", config.to_str().unwrap()]).env("SLACK_WEBHOOK_URL", slack));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    for secret in [slack, hmac, token, "XXXXsecretXXXX"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{secret} leaked:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains(r#"url_env = "SLACK_WEBHOOK_URL""#),
        "{stdout}"
    );
    assert!(stdout.contains(r#"url = "<redacted>""#), "{stdout}");
    assert!(stdout.contains(r#"secret = "<redacted>""#), "{stdout}");
    assert!(
        stdout.contains(r#"Authorization = "<redacted>""#),
        "{stdout}"
    );
}

#[test]
fn check_config_lists_every_problem_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(
        dir.path(),
        "broken.toml",
        r#"
        [watchdog]
        interval = "15 sec"
        [[targets]]
        namespace = "production"
        [targets.latency]
        max_ratio_to_baseline = 0.8
        [[notify]]
        kind = "slack"
        "#,
    );
    let out = run(&mut watchdog(&["check-config", config.to_str().unwrap()]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing on stdout for an invalid config"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.is_empty())
        .collect();
    assert_eq!(
        lines,
        [
            &format!(
                "error: {} is not a valid config (4 problems):",
                config.display()
            ),
            r#"watchdog.interval: "15 sec" is not a duration like "15s" or "5m""#,
            "targets[0]: give one of name, selector",
            "targets[0].latency.max_ratio_to_baseline: must be > 1.0, got 0.8",
            "notify[0]: give one of url, url_file, url_env",
        ]
    );
}

#[test]
fn check_config_names_a_missing_file_and_exits_2() {
    let out = run(&mut watchdog(&[
        "check-config",
        "/nonexistent/watchdog.toml",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot read config file /nonexistent/watchdog.toml"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn check_config_reports_broken_toml_with_its_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = write(dir.path(), "bad.toml", "[watchdog\ninterval = \"15s\"\n");
    let out = run(&mut watchdog(&["check-config", config.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not valid TOML") && stderr.contains("line 1"),
        "{stderr}"
    );
}

#[test]
fn check_config_takes_its_path_from_the_environment_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let broken = write(dir.path(), "broken.toml", "[watchdog]\nbogus = 1\n");
    // ROLLBACK_WATCHDOG_CONFIG picks the file...
    let out = run(watchdog(&["check-config"]).env("ROLLBACK_WATCHDOG_CONFIG", &broken));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("watchdog.bogus: unknown key"));
    // ...and a PATH argument overrides --config.
    let out = run(&mut watchdog(&[
        "--config",
        broken.to_str().unwrap(),
        "check-config",
        "config/watchdog.toml",
    ]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn check_config_strict_fails_on_a_missing_secret_file() {
    let out = run(&mut watchdog(&[
        "check-config",
        "--strict",
        "config/watchdog.toml",
    ]));
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr)
        .contains("notify[0].url_file: file /etc/rollback-watchdog/slack-url does not exist"));
}

#[test]
fn environment_overrides_show_in_the_effective_config() {
    // The command line's own variables and the kubelet's Service links
    // share the prefix but are not config keys.
    let out = run(watchdog(&["check-config", "config/watchdog.toml"])
        .env("ROLLBACK_WATCHDOG_WATCHDOG__DRY_RUN", "true")
        .env("ROLLBACK_WATCHDOG_LOG", "info")
        .env("ROLLBACK_WATCHDOG_SERVICE_HOST", "10.0.0.7")
        .env("ROLLBACK_WATCHDOG_PORT_8080_TCP_ADDR", "10.0.0.7"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: toml::Table = text(&out.stdout).parse().unwrap();
    assert_eq!(printed["watchdog"]["dry_run"].as_bool(), Some(true));
    assert_eq!(printed["targets"][0]["dry_run"].as_bool(), Some(true));
}

/// Through figment's `Env` provider on the real process environment: a
/// bad value a variable set is one line, named by key and by variable,
/// even when the problem is found after parsing.
#[test]
fn check_config_names_the_variable_behind_a_bad_value() {
    let out = run(watchdog(&["check-config", "config/watchdog.toml"])
        .env(
            "ROLLBACK_WATCHDOG_DEFAULTS__LATENCY__MAX_RATIO_TO_BASELINE",
            "0.8",
        )
        .env("ROLLBACK_WATCHDOG_WATCHDOG__INTERVAL", "soon"));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains(" INFO ") && !l.starts_with("warning: ") && !l.is_empty())
        .collect();
    assert_eq!(
        lines,
        [
            "error: config/watchdog.toml is not a valid config (2 problems):",
            r#"watchdog.interval: "soon" is not a duration like "15s" or "5m" (set by environment variable ROLLBACK_WATCHDOG_WATCHDOG__INTERVAL)"#,
            "defaults.latency.max_ratio_to_baseline: must be > 1.0, got 0.8 (set by environment variable ROLLBACK_WATCHDOG_DEFAULTS__LATENCY__MAX_RATIO_TO_BASELINE)",
        ]
    );
}

#[test]
fn help_lists_every_subcommand() {
    let out = run(&mut watchdog(&["--help"]));
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for sub in [
        "run",
        "check-config",
        "self-check",
        "status",
        "history",
        "rollback",
        "restore",
        "validate",
        "drill",
        "notify-test",
        "demo",
        "sim",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{sub} "))),
            "{sub} missing from:\n{help}"
        );
    }
    assert!(
        help.contains("--log-format") && help.contains("--config"),
        "{help}"
    );
}

/// Every subcommand is built: each one that works from a config reads it
/// (and names the missing file), none says "not available yet". `demo` and
/// `sim` need no config; `tests/demo.rs` runs the demo whole.
#[test]
fn no_subcommand_says_it_is_not_available_yet() {
    let cases: [&[&str]; 10] = [
        &["run"],
        &["check-config"],
        &["self-check"],
        &["status", "--once"],
        &["history", "production/kailash-kaizen"],
        &["rollback", "production/kailash-kaizen", "previous", "--yes"],
        &["restore", "rb-kailash-kaizen-x", "--yes"],
        &["validate", "production/kailash-kaizen"],
        &["drill", "production/kailash-kaizen"],
        &["notify-test"],
    ];
    for args in cases {
        let out = run(watchdog(args).env("ROLLBACK_WATCHDOG_CONFIG", "/nonexistent/watchdog.toml"));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("cannot read config file /nonexistent/watchdog.toml"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("not available"), "{args:?}: {stderr}");
    }
    let help = text(&run(&mut watchdog(&["--help"])).stdout);
    assert!(!help.contains("not available"), "{help}");
}

#[test]
fn bad_arguments_are_usage_errors() {
    let out = run(&mut watchdog(&["rollback", "kailash-kaizen", "previous"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("is not NAMESPACE/NAME"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn json_log_format_writes_one_json_object_per_line() {
    let out = run(&mut watchdog(&[
        "--log-format",
        "json",
        "check-config",
        "config/watchdog.toml",
    ]));
    assert_eq!(out.status.code(), Some(0));
    let logs: Vec<serde_json::Value> = text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let valid = logs
        .iter()
        .find(|l| l["message"] == "config is valid")
        .expect("a 'config is valid' log line");
    assert_eq!(valid["level"], "INFO");
    assert_eq!(valid["targets"], 1);
}

#[test]
fn the_log_filter_silences_info() {
    let out = run(watchdog(&[
        "--log-format",
        "json",
        "check-config",
        "config/watchdog.toml",
    ])
    .env("RUST_LOG", "warn"));
    assert_eq!(out.status.code(), Some(0));
    assert!(!text(&out.stderr).contains("config is valid"));
    let out = run(watchdog(&[
        "--log",
        "info",
        "--log-format",
        "json",
        "check-config",
        "config/watchdog.toml",
    ])
    .env("RUST_LOG", "warn"));
    assert!(
        text(&out.stderr).contains("config is valid"),
        "--log wins over RUST_LOG"
    );
}

/// Twelve kinds of mistake, each in its own file, each through the binary:
/// exit 2, the key path named, no panic, nothing on stdout.
#[test]
fn every_kind_of_broken_config_exits_2_naming_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let target = "[[targets]]\nnamespace = \"production\"\nname = \"web\"\n";
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "unknown key",
            "[watchdog]\nintervall = \"15s\"\n".into(),
            "watchdog.intervall: unknown key",
        ),
        (
            "bad duration",
            "[defaults]\nwatch_window = \"15 minutes\"\n".into(),
            "defaults.watch_window:",
        ),
        (
            "wrong type",
            "[defaults]\nfailure_threshold = \"three\"\n".into(),
            "defaults.failure_threshold:",
        ),
        (
            "ratio not above 1",
            format!("{target}[targets.latency]\nmax_ratio_to_baseline = 0.8\n"),
            "targets[0].latency.max_ratio_to_baseline: must be > 1.0, got 0.8",
        ),
        (
            "error ratio above 1",
            "[defaults.error_rate]\nmax = 5.0\n".into(),
            "defaults.error_rate.max:",
        ),
        (
            "unknown placeholder",
            "[defaults.error_rate]\nerrors_query = 'sum(rate(x{pod=~\"{podz}\"}[{window}]))'\n"
                .into(),
            "defaults.error_rate.errors_query: unknown placeholder {podz}",
        ),
        (
            "selector does not parse",
            "[[targets]]\nnamespace = \"production\"\nselector = \"app in (web\"\n".into(),
            "targets[0].selector: label selector \"app in (web\" does not parse",
        ),
        (
            "name and selector",
            "[[targets]]\nnamespace = \"production\"\nname = \"web\"\nselector = \"app=web\"\n"
                .into(),
            "targets[0]:",
        ),
        (
            "no url source",
            "[[notify]]\nkind = \"slack\"\n".into(),
            "notify[0]: give one of url, url_file, url_env",
        ),
        (
            "unknown sink kind",
            "[[notify]]\nkind = \"pager\"\nurl_env = \"X\"\n".into(),
            "notify[0].kind:",
        ),
        (
            "bad rule op",
            "[[defaults.rules]]\nname = \"r\"\nquery = \"up\"\nop = \"=>\"\nthreshold = 1\n".into(),
            "defaults.rules[0].op:",
        ),
        (
            "bad status code",
            "[defaults.health]\nexpect_status = [999]\n".into(),
            "defaults.health.expect_status",
        ),
        (
            "zero threshold",
            "[defaults]\nfailure_threshold = 0\n".into(),
            "defaults.failure_threshold:",
        ),
        (
            "prometheus url",
            "[prometheus]\nurl = \"not a url\"\n".into(),
            "prometheus.url:",
        ),
    ];
    for (i, (kind, toml, expected)) in cases.iter().enumerate() {
        let path = write(dir.path(), &format!("broken-{i}.toml"), toml);
        let out = run(&mut watchdog(&["check-config", path.to_str().unwrap()]));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{kind}: stderr:\n{stderr}");
        assert!(
            stderr.contains(expected),
            "{kind}: expected {expected:?} in:\n{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{kind}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{kind}: printed a config as if valid"
        );
    }
}

/// A config that loads anywhere (no secret files, audit log in `dir`).
fn plain_config(dir: &Path) -> String {
    let path = write(
        dir,
        "watchdog.toml",
        &format!(
            "[watchdog]\naudit_log = \"{}\"\n\n[[targets]]\nnamespace = \"production\"\nname = \"kailash-kaizen\"\n",
            dir.join("audit.jsonl").display()
        ),
    );
    path.display().to_string()
}

#[test]
fn a_kubeconfig_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = plain_config(dir.path());
    let out = run(
        watchdog(&["--config", &config, "history", "production/kailash-kaizen"])
            .env("KUBECONFIG", "/nonexistent/kubeconfig.yaml"),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("KUBECONFIG names /nonexistent/kubeconfig.yaml, which does not exist"),
        "{err}"
    );
}

#[test]
fn an_api_server_that_is_not_there_is_named_with_what_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A loopback port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let kubeconfig = write(
        dir.path(),
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
        ),
    );
    let config = plain_config(dir.path());
    let out = run(
        watchdog(&["--config", &config, "history", "production/kailash-kaizen"])
            .env("KUBECONFIG", &kubeconfig),
    );
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("production/kailash-kaizen: cannot read the Deployment")
            && err
                .contains("the API server was not reached: check the server address in KUBECONFIG"),
        "{err}"
    );
}

// ---- kubectl's habits, against the simulated cluster ----

/// The seeded simulated cluster (production/kailash-kaizen), served by its
/// own runtime while a test runs the binary synchronously. The cluster is
/// dropped before its runtime.
struct Sim {
    sim: SimCluster,
    _runtime: tokio::runtime::Runtime,
}

fn seeded_sim() -> Sim {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let sim = runtime
        .block_on(SimCluster::start(SimOptions {
            seed: true,
            clock: SimClock::new(20.0),
            ..Default::default()
        }))
        .expect("the sim starts");
    Sim {
        sim,
        _runtime: runtime,
    }
}

/// A kubeconfig with two contexts: `nowhere` (the current one), whose
/// server is a loopback port nothing listens on, and `sim`, the sim.
fn two_context_kubeconfig(dir: &Path, sim: &SimCluster) -> PathBuf {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    write(
        dir,
        "kubeconfig",
        &format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: nowhere\n  cluster:\n    server: http://127.0.0.1:{closed}\n- name: sim\n  cluster:\n    server: {}\ncontexts:\n- name: nowhere\n  context:\n    cluster: nowhere\n    user: u\n- name: sim\n  context:\n    cluster: sim\n    user: u\ncurrent-context: nowhere\nusers:\n- name: u\n  user: {{}}\n",
            sim.url()
        ),
    )
}

/// `history` of production/kailash-kaizen once its first ReplicaSet is
/// there (bounded wait), through `--kubeconfig KUBECONFIG --context sim`.
fn history_when_rolled_out(kubeconfig: &Path, config: &str, target: &[&str]) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut args = vec![
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--context",
            "sim",
            "--config",
            config,
            "history",
        ];
        args.extend_from_slice(target);
        let out = run(&mut watchdog(&args));
        let stdout = text(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{target:?}: {}",
            text(&out.stderr)
        );
        if stdout.contains("kailash-kaizen:v1") {
            return stdout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no revision 1 within 60s:\n{stdout}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn context_picks_the_cluster_of_the_kubeconfig_like_kubectl() {
    let sim = seeded_sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = two_context_kubeconfig(dir.path(), &sim.sim);
    let config = plain_config(dir.path());

    // --context sim reaches the sim.
    let shown = history_when_rolled_out(&kubeconfig, &config, &["production/kailash-kaizen"]);
    assert!(
        shown.starts_with("deployment.apps/kailash-kaizen\n"),
        "{shown}"
    );

    // The current context (nowhere) does not: the flag made the difference.
    let kube = kubeconfig.to_str().unwrap();
    let out = run(&mut watchdog(&[
        "--kubeconfig",
        kube,
        "--config",
        &config,
        "history",
        "production/kailash-kaizen",
    ]));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("the API server was not reached"),
        "{}",
        text(&out.stderr)
    );

    // KUBECONFIG works with --context too.
    let out = run(watchdog(&[
        "--context",
        "sim",
        "--config",
        &config,
        "history",
        "production/kailash-kaizen",
    ])
    .env("KUBECONFIG", &kubeconfig));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), shown);

    // A context the kubeconfig does not have is named, exit 1.
    let out = run(&mut watchdog(&[
        "--kubeconfig",
        kube,
        "--context",
        "staging",
        "--config",
        &config,
        "history",
        "production/kailash-kaizen",
    ]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("context \"staging\"") && stderr.contains("kubectl config get-contexts"),
        "{stderr}"
    );

    // A --kubeconfig that does not exist is named.
    let out = run(&mut watchdog(&[
        "--kubeconfig",
        "/nonexistent/kubeconfig",
        "--config",
        &config,
        "history",
        "production/kailash-kaizen",
    ]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("--kubeconfig names /nonexistent/kubeconfig, which does not exist"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_deployment_is_named_in_every_form_kubectl_takes() {
    let sim = seeded_sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = two_context_kubeconfig(dir.path(), &sim.sim);
    let config = plain_config(dir.path());
    let shown = history_when_rolled_out(&kubeconfig, &config, &["production/kailash-kaizen"]);
    for form in [
        &["deployment/kailash-kaizen", "-n", "production"][..],
        &["kailash-kaizen", "-n", "production"],
        &["kailash-kaizen", "--namespace", "production"],
        &["deploy/kailash-kaizen", "-n", "production"],
        &["deployments/kailash-kaizen", "-n", "production"],
        &["deployment.apps/kailash-kaizen", "-n", "production"],
        &["production/kailash-kaizen", "-n", "production"],
    ] {
        assert_eq!(
            history_when_rolled_out(&kubeconfig, &config, form),
            shown,
            "{form:?}"
        );
    }
    // -n before the subcommand, as kubectl allows.
    let kube = kubeconfig.to_str().unwrap();
    let out = run(&mut watchdog(&[
        "-n",
        "production",
        "--kubeconfig",
        kube,
        "--context",
        "sim",
        "--config",
        &config,
        "validate",
        "kailash-kaizen",
    ]));
    assert!(
        text(&out.stdout).contains("kailash-kaizen"),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // A namespace twice and different, or none: usage errors, exit 2,
    // before anything connects.
    for (args, expected) in [
        (
            &["history", "staging/kailash-kaizen", "-n", "production"][..],
            "names namespace \"staging\" but -n/--namespace says \"production\"",
        ),
        (
            &["history", "deploy/kailash-kaizen"],
            "is not NAMESPACE/NAME and no -n/--namespace was given",
        ),
        (
            &["rollback", "kailash-kaizen", "previous"],
            "is not NAMESPACE/NAME",
        ),
    ] {
        let mut all = vec![
            "--kubeconfig",
            kube,
            "--context",
            "sim",
            "--config",
            &config,
        ];
        all.extend_from_slice(args);
        let out = run(&mut watchdog(&all));
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

#[test]
fn status_once_writes_json_with_dash_o() {
    let sim = seeded_sim();
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = two_context_kubeconfig(dir.path(), &sim.sim);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let config = write(
        dir.path(),
        "status.toml",
        &format!(
            "[watchdog]\naudit_log = \"{}\"\n[prometheus]\nurl = \"http://127.0.0.1:{closed}\"\ntimeout = \"1s\"\n[leader_election]\nenabled = false\n[[targets]]\nnamespace = \"production\"\nname = \"kailash-kaizen\"\n",
            dir.path().join("audit.jsonl").display()
        ),
    );
    let out = run(&mut watchdog(&[
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--context",
        "sim",
        "--config",
        config.to_str().unwrap(),
        "status",
        "--once",
        "-o",
        "json",
    ]));
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(report["targets"][0]["name"], "kailash-kaizen", "{stdout}");
    assert_eq!(report["targets"][0]["namespace"], "production", "{stdout}");
}

#[test]
fn completion_scripts_are_generated_and_bash_accepts_its_own() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run(&mut watchdog(&["completion", shell]));
        let script = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        // Subcommands and the global flags (fish writes them without dashes).
        for word in [
            "rollback-watchdog",
            "check-config",
            "kubeconfig",
            "context",
            "namespace",
        ] {
            assert!(script.contains(word), "{shell}: no {word} in:\n{script}");
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let bash = run(&mut watchdog(&["completion", "bash"])).stdout;
    let path = dir.path().join("rollback-watchdog.bash");
    std::fs::write(&path, bash).expect("write script");
    let check = run(Command::new("bash").arg("-n").arg(&path));
    assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
    // Sourced, it registers the completion.
    let sourced = run(Command::new("bash").arg("-c").arg(format!(
        "source {} && complete -p rollback-watchdog",
        path.display()
    )));
    assert!(sourced.status.success(), "{}", text(&sourced.stderr));
    assert!(text(&sourced.stdout).contains("rollback-watchdog"));
    let out = run(&mut watchdog(&["completion", "powershell"]));
    assert_eq!(out.status.code(), Some(2));
}
