//! The admin port of `rollback-watchdog run` as kubelet probes and
//! Prometheus see it: `/readyz` unready until the caches have synced and
//! again from SIGTERM, `/metrics` that promtool and the Prometheus
//! project's parsers accept in both formats with every metric issue 6
//! lists, and a client that never finishes its request cut off after
//! `admin.request_timeout`. The binary runs against the sim through a
//! kubeconfig, standalone (`[leader_election] enabled = false`).

mod support;
use support::binary::free_port;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rollback_watchdog::report::status::StatusReport;
use rollback_watchdog::sim::{SimClock, SimCluster, SimOptions};
use support::metrics::{
    assert_promtool_accepts, assert_required_families, family, python_parse, value,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What Prometheus 2.x sends (Debian's 2.42 among them).
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// The running binary; killed when the test ends, however it ends.
struct Watchdog {
    child: Child,
    stderr: PathBuf,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, admin_port: u16, request_timeout: &str) -> PathBuf {
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
request_timeout = "{request_timeout}"

[[targets]]
namespace = "production"
name = "kailash-kaizen"

[[notify]]
kind = "webhook"
name = "oncall"
url = "http://127.0.0.1:{closed}/hook"
"#,
        audit = dir.join("audit.jsonl").display()
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn sim() -> SimCluster {
    SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("sim")
}

impl Watchdog {
    /// `rollback-watchdog --config ... run` against `sim`; returns once the
    /// admin port answers `/livez`.
    async fn start(sim: &SimCluster, request_timeout: &str) -> Watchdog {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = write_config(dir.path(), port, request_timeout);
        let stderr = dir.path().join("run.stderr");
        let child = Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"))
            .env("KUBECONFIG", sim.kubeconfig_path())
            .env_remove("ROLLBACK_WATCHDOG_CONFIG")
            .env_remove("RUST_LOG")
            .arg("--config")
            .arg(&config)
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&stderr).expect("stderr file"),
            ))
            .spawn()
            .expect("run starts");
        let mut w = Watchdog {
            child,
            stderr,
            base: format!("http://127.0.0.1:{port}"),
            // A fresh connection per request, as the kubelet probes: a
            // pooled one may be closed by the server's idle (header) timeout
            // just as it is reused, and that race is the client's, not ours.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .pool_max_idle_per_host(0)
                .build()
                .expect("client"),
            _dir: dir,
        };
        w.wait_until("/livez to answer", "/livez", |a| {
            matches!(a, Some((200, _)))
        })
        .await;
        w
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// GET `path`: (status, body), or None when nothing answers.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.text().await.ok()?))
    }

    /// GET /metrics with `accept` (none when None): (content type, body).
    async fn metrics(&self, accept: Option<&str>) -> (String, String) {
        let mut req = self.http.get(format!("{}/metrics", self.base));
        if let Some(accept) = accept {
            req = req.header("accept", accept);
        }
        let resp = req.send().await.expect("/metrics answers");
        assert_eq!(resp.status(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (content_type, resp.text().await.expect("body"))
    }

    /// Polls GET `path` every 100 ms for up to 60 s until `check` accepts
    /// the answer; fails the test (with the watchdog's log) if the process
    /// exits or time runs out first.
    async fn wait_until(
        &mut self,
        what: &str,
        path: &str,
        check: impl Fn(Option<(u16, String)>) -> bool,
    ) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if check(self.get(path).await) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("run exited ({status}) waiting for {what}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, as kubelet stops a pod.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait")
    }
}

// Multi-threaded: the sim serves the binary while the test waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_unready_until_the_caches_have_synced_and_again_once_shutdown_starts() {
    let sim = sim().await;
    // The API server answers everything but the Deployment list: the
    // Deployment cache cannot sync.
    let hold = sim.api_state().hold_lists("deployments");
    let mut w = Watchdog::start(&sim, "5s").await;

    // Alive, not ready, and it says why; for as long as the list is held.
    for _ in 0..10 {
        let (status, body) = w.get("/readyz").await.expect("/readyz answers");
        assert_eq!(
            (status, body.as_str()),
            (503, "not ready: caches have not synced yet\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, body) = w.get("/status").await.expect("/status answers");
    assert_eq!(status, 200);
    let report: StatusReport = serde_json::from_str(&body).expect("status JSON");
    assert!(!report.ready, "{report:?}");
    assert_eq!(w.get("/livez").await.map(|(s, _)| s), Some(200));

    // The API server answers the list: ready.
    hold.release();
    w.wait_until("/readyz to turn ready", "/readyz", |a| {
        a == Some((200, "ready\n".to_string()))
    })
    .await;

    // SIGTERM: from the first unready answer on, it never says ready
    // again, and it exits 0. (Between the signal and the exit there may be
    // no time to see the 503; the unit tests of admin.rs check that one.)
    w.terminate();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut answers: Vec<u16> = Vec::new();
    let status = loop {
        if let Some(status) = w.exited() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "run did not stop on SIGTERM:\n{}",
            w.log()
        );
        if let Some((code, _)) = w.get("/readyz").await {
            answers.push(code);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "exit {status}:\n{}", w.log());
    if let Some(first) = answers.iter().position(|&c| c != 200) {
        assert!(
            answers[first..].iter().all(|&c| c == 503),
            "ready again after shutdown started: {answers:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_both_python_parsers_with_every_metric_issue_6_lists() {
    let sim = sim().await;
    let mut w = Watchdog::start(&sim, "5s").await;
    // A tick has judged the target: evaluations and signal results exist.
    w.wait_until("a verdict in /status", "/status", |a| {
        let Some((200, body)) = a else {
            return false;
        };
        serde_json::from_str::<StatusReport>(&body).is_ok_and(|r| {
            r.ready
                && r.targets.iter().any(|t| {
                    t.name == "kailash-kaizen"
                        && t.verdict != rollback_watchdog::report::status::StatusVerdict::Unknown
                })
        })
    })
    .await;
    // ...and a Prometheus query has been timed (the first ticks may have
    // had no new span to query yet).
    w.wait_until("a timed query in /metrics", "/metrics", |a| {
        a.is_some_and(|(code, body)| {
            code == 200 && body.contains("rollback_watchdog_signal_query_seconds_count")
        })
    })
    .await;

    // curl, promtool, a browser: the Prometheus text format.
    let (content_type, text) = w.metrics(None).await;
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert_promtool_accepts(&text);
    let families = python_parse(&text, "text");
    assert_required_families(&families, false);

    // Prometheus asks for OpenMetrics first, and gets it.
    let (content_type, openmetrics) = w.metrics(Some(PROMETHEUS_ACCEPT)).await;
    assert_eq!(
        content_type,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    let om_families = python_parse(&openmetrics, "openmetrics");
    assert_required_families(&om_families, true);

    // What a tick leaves behind, the same in both.
    for families in [&families, &om_families] {
        assert_eq!(value(families, "rollback_watchdog_targets", &[]), Some(1.0));
        assert!(
            value(
                families,
                "rollback_watchdog_last_tick_timestamp_seconds",
                &[]
            )
            .is_some_and(|t| t > 1.7e9),
            "{families:?}"
        );
        let evaluations = family(families, "evaluations").expect("evaluations");
        assert!(
            evaluations
                .samples
                .iter()
                .any(|s| s.name == "rollback_watchdog_evaluations_total"
                    && s.labels.get("target").map(String::as_str)
                        == Some("production/kailash-kaizen")
                    && s.value() >= 1.0),
            "{evaluations:?}"
        );
        let signals = family(families, "signal_results").expect("signal_results");
        assert!(
            signals
                .samples
                .iter()
                .any(|s| s.labels.get("signal").map(String::as_str) == Some("pods")),
            "{signals:?}"
        );
        // Series an alert takes increase() of exist before their first event.
        assert_eq!(
            value(
                families,
                "rollback_watchdog_rollbacks_total",
                &[
                    ("target", "production/kailash-kaizen"),
                    ("outcome", "failed")
                ]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                families,
                "rollback_watchdog_notifications_total",
                &[("sink", "oncall"), ("outcome", "gave_up")]
            ),
            Some(0.0)
        );
        let build = family(families, "build_info").expect("build_info");
        assert_eq!(
            build.samples[0].labels.get("version").map(String::as_str),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Reads from `stream` until it is closed; the bytes it got, or None if it
/// was still open after `limit`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_is_cut_off_after_the_request_timeout() {
    let sim = sim().await;
    let w = Watchdog::start(&sim, "1s").await;
    let addr = w.base.trim_start_matches("http://").to_string();

    // Half a request, and a connection that says nothing at all.
    let mut half = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .expect("write");
    let mut silent = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");

    // They hold nothing up meanwhile.
    assert_eq!(w.get("/livez").await.map(|(s, _)| s), Some(200));
    assert_eq!(w.get("/metrics").await.map(|(s, _)| s), Some(200));

    // Both are closed after about `request_timeout` (1 s); the bound is
    // generous for a loaded machine, and without a header timeout they
    // would stay open for good.
    let limit = Duration::from_secs(20);
    let waited = Instant::now();
    let got = read_until_closed(&mut half, limit)
        .await
        .unwrap_or_else(|| {
            panic!(
                "a half-sent request was still open after {limit:?}:\n{}",
                w.log()
            )
        });
    // The configured 1 s, not some built-in default: well under 5 s.
    let took = waited.elapsed();
    assert!(took < Duration::from_secs(5), "closed only after {took:?}");
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
    assert!(
        read_until_closed(&mut silent, limit).await.is_some(),
        "a silent connection was still open after {limit:?}"
    );
    assert_eq!(w.get("/livez").await.map(|(s, _)| s), Some(200));
}
