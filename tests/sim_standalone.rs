//! `rollback-watchdog sim --seed` as a person starts it: kubectl sees the
//! seeded service through the written kubeconfig, Debian's Prometheus
//! started on the written scrape config has `up == 1` for every app pod,
//! the request log fills, and SIGTERM stops it cleanly.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prometheus_http_query::Client;
use rollback_watchdog::sim::prometheus::{self, PrometheusOptions, PrometheusServer};

/// The sim process, killed if the test fails before stopping it.
struct SimProcess(Child);

impl Drop for SimProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for_file(path: &Path, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the sim exited early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let out = Command::new("timeout")
        .args(["--signal=KILL", "60s", "kubectl"])
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_standalone_sim_serves_kubectl_and_a_real_prometheus_scrapes_every_app_pod() {
    assert!(
        prometheus::available(),
        "prometheus and promtool must be on PATH (bash .ci/run installs Debian's package)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = dir.path().join("kubeconfig.yaml");
    let prom_config = dir.path().join("prometheus.yml");
    let request_log = dir.path().join("requests.jsonl");
    let child = Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"))
        .args([
            "sim",
            "--seed",
            "--time-scale",
            "20",
            "--scrape-interval",
            "1s",
        ])
        .arg("--kubeconfig-out")
        .arg(&kubeconfig)
        .arg("--prometheus-config-out")
        .arg(&prom_config)
        .arg("--request-log")
        .arg(&request_log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut sim = SimProcess(child);
    wait_for_file(&prom_config, &mut sim.0);
    wait_for_file(&kubeconfig, &mut sim.0);

    // kubectl sees the seeded service with three running pods.
    let deadline = Instant::now() + Duration::from_secs(30);
    let pods: Vec<String> = loop {
        let out = kubectl(&kubeconfig, &["get", "deploy,rs,pods", "-A"]);
        let running: Vec<String> = out
            .lines()
            .filter(|l| l.contains("Running"))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|name| name.strip_prefix("pod/"))
            .map(str::to_string)
            .collect();
        if running.len() == 3 && out.contains("deployment.apps/kailash-kaizen") {
            break running;
        }
        assert!(Instant::now() < deadline, "seeded app never ran:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    };

    // A real Prometheus on the written config scrapes exactly those pods.
    let config = std::fs::read_to_string(&prom_config).expect("read prometheus.yml");
    let server = PrometheusServer::start(PrometheusOptions::new(config))
        .await
        .expect("prometheus starts");
    let client = Client::try_from(server.url()).expect("client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = client
            .query(r#"up{namespace="production"}"#)
            .get()
            .await
            .expect("query up");
        let mut up: Vec<(String, f64)> = result
            .data()
            .as_vector()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|s| {
                (
                    s.metric().get("pod").cloned().unwrap_or_default(),
                    s.sample().value(),
                )
            })
            .collect();
        up.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(String, f64)> = pods.iter().map(|p| (p.clone(), 1.0)).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        if up == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "up was {up:?}, wanted {want:?}; prometheus log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The request log holds kubectl's calls as JSON lines.
    let log = std::fs::read_to_string(&request_log).expect("read request log");
    let lists = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["verb"] == "list" && e["path"] == "/api/v1/pods")
        .count();
    assert!(lists >= 1, "no pod list in the request log:\n{log}");

    // SIGTERM stops it with exit 0.
    let pid = sim.0.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = sim.0.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "the sim did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
}
