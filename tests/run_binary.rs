//! `rollback-watchdog run` as an operator starts it against a cluster (the
//! sim, through a kubeconfig), and `rollback-watchdog status` reading it:
//! the admin endpoints, the warning for a missing target, and one-shot
//! evaluation for CI pipelines.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rollback_watchdog::report::status::StatusReport;
use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions};

mod support;
use support::binary::{free_port, watchdog, Running};

fn write_config(dir: &Path, admin_port: u16) -> std::path::PathBuf {
    let closed = free_port();
    let path = dir.join("watchdog.toml");
    let text = format!(
        r#"
[watchdog]
cluster_name = "sim"
interval = "1s"
audit_log = "{audit}"

[prometheus]
url = "http://127.0.0.1:{closed}"
timeout = "1s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:{admin_port}"

[[targets]]
namespace = "production"
name = "kailash-kaizen"

[[targets]]
namespace = "production"
name = "ghost"
"#,
        audit = dir.join("audit.jsonl").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

// Multi-threaded: the sim serves the binaries while this test waits for
// them synchronously.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_serves_its_status_and_metrics_and_status_reads_them() {
    let sim = SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("sim");
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let config = write_config(dir.path(), port);
    let mut run = Running::run(sim.kubeconfig_path(), &config, &[]);
    let stderr_path = run.stderr.clone();

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let report: StatusReport = loop {
        if let Ok(resp) = http.get(format!("{base}/status")).send().await {
            if let Ok(report) = resp.json::<StatusReport>().await {
                if report.ready
                    && report.targets.iter().any(|t| {
                        t.name == "kailash-kaizen"
                            && t.verdict
                                != rollback_watchdog::report::status::StatusVerdict::Unknown
                    })
                {
                    break report;
                }
            }
        }
        if let Ok(Some(status)) = run.child.try_wait() {
            panic!(
                "run exited early ({status}): {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "no verdict in /status");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(report.cluster, "sim");
    assert_eq!(report.targets.len(), 1, "{report:?}");
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("production/ghost") && w.contains("Deployment not found")),
        "{:?}",
        report.warnings
    );
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .expect("readyz")
            .status(),
        200
    );
    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("rollback_watchdog_targets 1"), "{metrics}");

    // `status` asks the running watchdog.
    let out = watchdog(sim.kubeconfig_path())
        .args(["status", "--url", &base])
        .output()
        .expect("status runs");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert!(
        table.contains("production/kailash-kaizen  revision 1"),
        "{table}"
    );
    assert!(
        table.contains("production/ghost"),
        "the warning is shown: {table}"
    );

    // `status --once` evaluates by itself, as JSON.
    let out = watchdog(sim.kubeconfig_path())
        .args(["--config"])
        .arg(&config)
        .args(["status", "--once", "--output", "json"])
        .output()
        .expect("status --once runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let once: StatusReport = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(once.targets[0].name, "kailash-kaizen");
    assert_eq!(once.targets[0].revision, Some(1));

    // SIGTERM: a clean stop, exit 0; the warning was logged.
    let pid = run.child.id().to_string();
    Command::new("sh")
        .args(["-c", &format!("kill -TERM {pid}")])
        .status()
        .expect("kill");
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = run.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "run did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit {status}");
    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(log.contains("Deployment not found"), "{log}");
}
