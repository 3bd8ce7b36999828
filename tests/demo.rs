//! `rollback-watchdog demo`, the README's first command, run as a user runs
//! it: the built binary, a clean environment, bounded by `timeout`. It must
//! exit 0 having told the whole story on stdout (a signal failing with its
//! value, the Bad verdict, every pipeline step, the Slack message as
//! received, the summary) and leave the Deployment on v1; with Prometheus,
//! and as if Prometheus were not installed. Its own `/metrics`, scraped at
//! the end, counts the one rollback and passes promtool and the Prometheus
//! Python client's parser.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use rollback_watchdog::sim::prometheus;
use support::metrics::{assert_promtool_accepts, assert_required_families, python_parse, value};

/// The two runs share two cores with the rest of the suite: one at a time,
/// so neither is slowed past its window.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// The demo through `timeout 120`, so a hung demo fails the test instead
/// of hanging it.
fn demo(env: &[(&str, &str)]) -> Output {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=10", "120"])
        .arg(env!("CARGO_BIN_EXE_rollback-watchdog"))
        .arg("demo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear();
    for key in ["PATH", "TMPDIR"] {
        if let Some(v) = std::env::var_os(key) {
            cmd.env(key, v);
        }
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("timeout(1) and the binary run")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Checks what every run must show, and returns the audit log's path.
fn assert_the_whole_story(out: &Output, bad_image: &str, failing: &str) -> PathBuf {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let has = |needle: &str| {
        assert!(
            stdout.contains(needle),
            "{needle:?} missing from the demo's stdout:\n{stdout}"
        )
    };
    // The timeline: stamped lines, v1 known-good, the bad deploy.
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("[") && l.contains("s] ")),
        "{stdout}"
    );
    has("revision 1 (kailash-kaizen:v1) survived its window: recorded known-good");
    has(&format!("deploying {bad_image}"));
    // A signal failing with its value and threshold, then the verdict.
    let failing_line = stdout
        .lines()
        .find(|l| l.contains("  FAIL  ") && l.contains(failing))
        .unwrap_or_else(|| panic!("no failing {failing} line:\n{stdout}"));
    assert!(
        failing_line.contains("[failing tick 1 of 3]"),
        "{failing_line}"
    );
    has("verdict for revision 2: Bad: ");
    has("rollback pipeline started");
    // Every pipeline step, as the audit log records it.
    for step in [
        "step validate ok",
        "step backup   ok",
        "step update   ok",
        "step wait     ok",
        "step verify   ok",
        "step audit     rollback_succeeded",
        "step notify   ok",
    ] {
        has(step);
    }
    // The Slack payload as the local receiver got it.
    has("Slack message received by the local receiver:");
    has("text: :rotating_light: Rolling back production/kailash-kaizen: revision 2 → revision 1");
    has("From: revision 2");
    // The summary.
    for label in [
        "time to detect",
        "time to recover",
        "backed up        ConfigMap rollback-watchdog/rb-kailash-kaizen-",
        "audit log        ",
        "final image      kailash-kaizen:v1 ",
    ] {
        has(label);
    }
    has(&format!(
        "the full Deployment as it was before the rollback ({bad_image}"
    ));
    let seconds = |label: &str| -> f64 {
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .unwrap_or_else(|| panic!("no {label} line"));
        line.trim_start()[label.len()..]
            .trim_start()
            .split('s')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no seconds in {line:?}"))
    };
    assert!(seconds("time to detect") > 0.0);
    assert!(seconds("time to recover") > 0.0);
    has("Everything the demo started has stopped. Exit code 0.");

    let audit_line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("audit log"))
        .expect("an audit log line");
    audit_line
        .split_whitespace()
        .nth(2)
        .map(PathBuf::from)
        .expect("the audit log's path")
}

/// The summary shows the rollback counter as the watchdog's `/metrics`
/// served it, and the whole scrape it kept is what Prometheus tooling
/// accepts: one succeeded rollback, one detection and one recovery timed,
/// the Slack delivery counted.
fn assert_metrics(out: &Output) {
    let stdout = text(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("metrics  "))
        .unwrap_or_else(|| panic!("no metrics line in the summary:\n{stdout}"));
    assert!(
        line.contains(
            "rollback_watchdog_rollbacks_total{target=\"production/kailash-kaizen\",outcome=\"succeeded\"} 1 (from http://127.0.0.1:"
        ),
        "{line}"
    );
    let path = line
        .split_once("the whole scrape is in ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no scrape file in {line:?}"));
    let body = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_promtool_accepts(&body);
    let families = python_parse(&body, "text");
    assert_required_families(&families, false);
    let target = ("target", "production/kailash-kaizen");
    let rollbacks = |outcome| {
        value(
            &families,
            "rollback_watchdog_rollbacks_total",
            &[target, ("outcome", outcome)],
        )
    };
    assert_eq!(rollbacks("succeeded"), Some(1.0), "{body}");
    for outcome in ["failed", "escalated", "conflict", "refused", "dry_run"] {
        assert_eq!(rollbacks(outcome), Some(0.0), "{outcome}: {body}");
    }
    for histogram in ["detection_seconds", "recovery_seconds"] {
        assert_eq!(
            value(
                &families,
                &format!("rollback_watchdog_{histogram}_count"),
                &[]
            ),
            Some(1.0),
            "{body}"
        );
    }
    let delivered: f64 = families
        .iter()
        .flat_map(|f| &f.samples)
        .filter(|s| {
            s.name == "rollback_watchdog_notifications_total"
                && s.labels.get("outcome").map(String::as_str) == Some("delivered")
        })
        .map(|s| s.value())
        .sum();
    assert!(delivered >= 1.0, "{body}");
    assert!(
        value(
            &families,
            "rollback_watchdog_evaluations_total",
            &[target, ("result", "bad")]
        )
        .is_some_and(|n| n >= 1.0),
        "{body}"
    );
}

/// The audit log the summary names holds one line per step, the incident
/// report included; then the demo's directory is cleaned up.
fn assert_audit_log(path: &Path) {
    let content = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("the audit log {} is readable: {e}", path.display()));
    let steps: Vec<String> = content
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("an audit line is JSON");
            v["step"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(
        steps,
        ["validate", "backup", "update", "wait", "verify", "report", "notify"]
    );
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[test]
fn the_demo_rolls_a_deploy_with_errors_back_and_tells_the_whole_story() {
    if !prometheus::available() {
        // Without Prometheus the demo takes the pod path, tested below; the
        // suite's prerequisites (`.ci/run`) install it.
        panic!("prometheus and promtool must be on PATH (bash .ci/run installs Debian's package)");
    }
    let out = demo(&[]);
    let stdout = text(&out.stdout);
    let path = assert_the_whole_story(&out, "kailash-kaizen:v2-errors", "error ratio");
    assert!(
        stdout.contains("Prometheus at http://127.0.0.1:"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("FAIL  error ratio ") && l.contains(" % > max 5.0 %")),
        "the measured ratio against its threshold:\n{stdout}"
    );
    assert_metrics(&out);
    assert_audit_log(&path);
}

#[test]
fn without_prometheus_the_demo_rolls_a_crash_looping_deploy_back_from_the_pod_signal() {
    let out = demo(&[("ROLLBACK_WATCHDOG_DEMO_NO_PROMETHEUS", "1")]);
    let stdout = text(&out.stdout);
    let path = assert_the_whole_story(&out, "kailash-kaizen:v2-crash", "pods ");
    assert!(
        stdout.contains("judging from the pod and health signals only"),
        "{stdout}"
    );
    assert!(!stdout.contains("Prometheus at http"), "{stdout}");
    assert!(stdout.contains("CrashLoopBackOff"), "{stdout}");
    assert_metrics(&out);
    assert_audit_log(&path);
}
