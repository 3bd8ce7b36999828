//! TLS is verified by default (issue 15, item 5): Prometheus, health
//! probes and webhooks behind a certificate from a private CA are refused
//! until a `ca_file` (`prometheus.ca_file`, `health.ca_file`,
//! `[[notify]].ca_file`) names that CA; there is no switch that turns
//! verification off. A `ca_file` that is not a readable PEM bundle is a
//! check-config error naming the key. The server is Python's, on
//! 127.0.0.1, with the test CA in tests/fixtures/tls.

use std::time::Duration;

use rollback_watchdog::config::HealthPolicy;
use rollback_watchdog::config::{Config, Loader};
use rollback_watchdog::signals::health::HealthProber;
use rollback_watchdog::signals::prometheus::PrometheusSource;
use rollback_watchdog::signals::{Outcome, SignalId, Subject};
use tokio::io::AsyncBufReadExt;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls");

/// The HTTPS server, stopped when dropped; its port.
async fn https_server() -> (tokio::process::Child, u16) {
    let mut child = tokio::process::Command::new("python3")
        .arg(format!("{FIXTURES}/server.py"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("python3 starts: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("stdout"));
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await
    .unwrap_or_else(|_| panic!("the HTTPS server printed no port within 30 s"))
    .unwrap_or_else(|e| panic!("reading its port: {e}"));
    let port = line
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("port {line:?}: {e}"));
    (child, port)
}

fn config(toml: &str) -> Config {
    match Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
    {
        Ok(l) => l.config,
        Err(e) => panic!("test config: {e}"),
    }
}

async fn ask(config: &Config) -> Result<f64, String> {
    let source = PrometheusSource::new(&config.prometheus).map_err(|e| e.to_string())?;
    tokio::time::timeout(
        Duration::from_secs(30),
        source.query(&SignalId::ErrorRate, "errors", "1", jiff::Timestamp::now()),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer within 30 s"))
    .map_err(|e| e.to_string())
}

#[tokio::test]
async fn prometheus_over_tls_is_verified_and_ca_file_trusts_a_private_ca() {
    let (_server, port) = https_server().await;
    let url = format!("https://127.0.0.1:{port}");

    let unverified = ask(&config(&format!("[prometheus]\nurl = \"{url}\"\n"))).await;
    match unverified {
        Err(e) => assert!(
            e.contains("certificate") || e.contains("UnknownIssuer"),
            "refused, but not for the certificate: {e}"
        ),
        Ok(v) => panic!("a certificate from an unknown CA was accepted (answer {v})"),
    }

    let trusted = ask(&config(&format!(
        "[prometheus]\nurl = \"{url}\"\nca_file = \"{FIXTURES}/ca.crt\"\n"
    )))
    .await;
    assert_eq!(trusted, Ok(1.0), "with ca_file the private CA is trusted");
}

/// One probe of the policy's first URL by `prober`; the outcome.
async fn probe(prober: &HealthProber, policy: &HealthPolicy) -> Outcome {
    let subject = Subject {
        namespace: "production".into(),
        deployment: "web".into(),
        revision: 3,
        images: vec!["web:v3".into()],
        ..Default::default()
    };
    let url = &policy.urls[0];
    tokio::time::timeout(
        Duration::from_secs(30),
        prober.url(url, policy, &subject, "test", jiff::Timestamp::now()),
    )
    .await
    .unwrap_or_else(|_| panic!("no probe result within 30 s"))
    .outcome
}

#[tokio::test]
async fn health_probes_over_tls_are_verified_and_health_ca_file_trusts_a_private_ca() {
    let (_server, port) = https_server().await;
    // The defaults trust the system's roots only; the target names the
    // private CA, for its own probes and no one else's.
    let config = config(&format!(
        "[defaults.health]\nurl = \"https://127.0.0.1:{port}/health\"\n\
         [[targets]]\nnamespace = \"production\"\nname = \"web\"\n\
         [targets.health]\nca_file = \"{FIXTURES}/ca.crt\"\n"
    ));
    let prober = HealthProber::for_config(&config).unwrap_or_else(|e| panic!("prober: {e}"));

    match probe(&prober, &config.defaults.health).await {
        Outcome::Inconclusive { why } => assert!(
            why.contains("certificate") || why.contains("UnknownIssuer"),
            "refused, but not for the certificate: {why}"
        ),
        other => panic!("a certificate from an unknown CA was accepted: {other:?}"),
    }

    let target = &config.targets[0].policy.health;
    let trusted = probe(&prober, target).await;
    assert!(
        matches!(trusted, Outcome::Pass { .. }),
        "with health.ca_file the private CA is trusted: {trusted:?}"
    );
}

#[tokio::test]
async fn webhooks_over_tls_are_verified() {
    let (_server, port) = https_server().await;
    let failures = notify_test(port, "").await.unwrap_err();
    assert!(
        failures
            .iter()
            .any(|f| f.contains("certificate") || f.contains("UnknownIssuer")),
        "a webhook behind an unknown CA was not refused for its certificate: {failures:?}"
    );
}

#[tokio::test]
async fn a_webhook_ca_file_trusts_a_private_ca() {
    let (_server, port) = https_server().await;
    let delivered = notify_test(port, &format!("ca_file = \"{FIXTURES}/ca.crt\"\n")).await;
    assert_eq!(delivered, Ok(()), "with ca_file the webhook is delivered");
}

/// `notify-test` of one webhook sink at the HTTPS server, with `extra`
/// keys; `Err` holds the failures of a sink not delivered to.
async fn notify_test(port: u16, extra: &str) -> Result<(), Vec<String>> {
    use rollback_watchdog::report::notify::{send_test, DeliveryResult, RetryPolicy};
    let config = config(&format!(
        "[[notify]]\nkind = \"webhook\"\nname = \"oncall\"\nurl = \"https://127.0.0.1:{port}/hook\"\n\
         timeout = \"2s\"\ndeadline = \"3s\"\n{extra}"
    ));
    let policy = RetryPolicy {
        min_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(500),
        factor: 2.0,
    };
    let results = tokio::time::timeout(Duration::from_secs(60), send_test(&config, None, &policy))
        .await
        .unwrap_or_else(|_| panic!("no result within 60 s"))
        .unwrap_or_else(|e| panic!("notify-test: {e}"));
    match results.as_slice() {
        [r] if r.report.result == DeliveryResult::Delivered => Ok(()),
        [r] => Err(r.report.failures.clone()),
        _ => panic!("one sink, {} results", results.len()),
    }
}

/// `check-config` of `toml`: its exit code and stderr.
fn check_config(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let path = dir.path().join("watchdog.toml");
    std::fs::write(&path, toml).unwrap_or_else(|e| panic!("write config: {e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"))
        .arg("check-config")
        .arg(&path)
        .env_clear()
        .output()
        .unwrap_or_else(|e| panic!("the binary runs: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_ca_file_that_is_not_a_pem_bundle_is_a_check_config_error_naming_the_key() {
    let not_pem = format!("{FIXTURES}/server.py");
    let missing = format!("{FIXTURES}/no-such-ca.crt");
    let (code, stderr) = check_config(&format!(
        "[prometheus]\nurl = \"http://127.0.0.1:9090\"\nca_file = \"{not_pem}\"\n\
         [defaults.health]\nurl = \"https://127.0.0.1:1/health\"\nca_file = \"{missing}\"\n\
         [[targets]]\nnamespace = \"production\"\nname = \"web\"\n\
         [targets.health]\nca_file = \"{not_pem}\"\n\
         [[notify]]\nkind = \"webhook\"\nurl = \"https://127.0.0.1:1/hook\"\nca_file = \"{not_pem}\"\n"
    ));
    assert_eq!(code, Some(2), "stderr:\n{stderr}");
    for key in [
        "prometheus.ca_file",
        "defaults.health.ca_file",
        "targets[0].health.ca_file",
        "notify[0].ca_file",
    ] {
        assert!(
            stderr.lines().any(|l| l.contains(key)),
            "no line names {key}:\n{stderr}"
        );
    }
    assert!(stderr.contains("no PEM certificate"), "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let (code, stderr) = check_config(&format!(
        "[defaults.health]\nurl = \"https://127.0.0.1:1/health\"\nca_file = \"{FIXTURES}/ca.crt\"\n"
    ));
    assert_eq!(code, Some(0), "a good ca_file passes:\n{stderr}");
}
