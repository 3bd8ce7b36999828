//! Scale benchmark: the release binary watching N Deployments of 3 pods
//! each in the sim (pods without listeners), opted in by annotation in one
//! namespace. `cargo bench --bench scale` runs N = 100, 1,000 and 10,000
//! (or the sizes in `SCALE_SIZES`, comma-separated) and prints the table
//! recorded in benches/README.md ("## Scale"). Without `--bench` (as
//! `cargo test --all-targets` runs it) it only checks, in seconds, that a
//! few Deployments are watched and measured.
//!
//! Measured per size: the time from the process start to `/readyz` 200
//! (the initial lists of Deployments, ReplicaSets and all pods included),
//! the one-time start-up wave after it (each revision's first verdict
//! Event, known-good record and memory: until two whole ticks in a row send
//! no API request; its time, requests and CPU), then over whole ticks
//! after the wave: CPU per tick (user + system from /proc), the tick wall
//! time (the daemon's own "tick done" debug line: the bench reads the log
//! and puts no load on the watchdog, as polling `/metrics` did), API requests
//! per tick (the sim's request log), Prometheus queries per tick (a stub
//! Prometheus that answers every query with an empty vector and counts
//! them: the queries the watchdog issues with the default error-rate and
//! latency signals on), the peak RSS (VmHWM, the wave's peak included) and
//! the RSS at the end (VmRSS). `SCALE_WATCHDOG_BIN`
//! names another build of the binary to measure. The error-rate and latency
//! queries are grouped (one query per tick for all targets, the
//! `grouped = true` templates of config/README.md); `SCALE_PER_TARGET=1`
//! measures the per-target templates instead.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollback_watchdog::sim::deployment::apply_deployment_defaults;
use rollback_watchdog::sim::store::{DEPLOYMENTS, NAMESPACES, PODS};
use rollback_watchdog::sim::{seed_deployment, SimCluster, SimOptions, WATCHDOG_NAMESPACE};
use serde_json::json;

const NS: &str = "scale";

struct Row {
    deployments: usize,
    pods: usize,
    settle: Duration,
    ready: Duration,
    cpu_per_tick: Duration,
    tick_wall: Duration,
    api_per_tick: f64,
    queries_per_tick: f64,
    peak_rss_mib: f64,
    rss_end_mib: f64,
    /// The one-time start-up wave after `/readyz`: each revision's first
    /// verdict Event, known-good record and memory annotation. How long
    /// it lasted, its API requests and its CPU.
    wave: Duration,
    wave_requests: usize,
    wave_cpu: Duration,
}

/// Kills and reaps the watchdog when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = if full {
        std::env::var("SCALE_SIZES")
            .ok()
            .map(|s| s.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![100, 1_000, 10_000])
    } else {
        vec![3]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut rows = Vec::new();
    for n in sizes {
        let row = rt.block_on(run(n, full));
        eprintln!(
            "scale: {n} Deployments measured (settled in {:.1} s)",
            row.settle.as_secs_f64()
        );
        rows.push(row);
    }
    println!("| Deployments (pods) | ready after start | start-up wave (time, API requests, CPU) | CPU per tick | tick wall time | API requests per tick | Prometheus queries per tick | peak RSS | RSS at the end |");
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for r in &rows {
        println!(
            "| {} ({}) | {:.2} s | {:.1} s, {}, {:.1} s | {} ms | {} ms | {:.1} | {:.1} | {:.0} MiB | {:.0} MiB |",
            r.deployments,
            r.pods,
            r.ready.as_secs_f64(),
            r.wave.as_secs_f64(),
            r.wave_requests,
            r.wave_cpu.as_secs_f64(),
            r.cpu_per_tick.as_millis(),
            r.tick_wall.as_millis(),
            r.api_per_tick,
            r.queries_per_tick,
            r.peak_rss_mib,
            r.rss_end_mib
        );
    }
    if !full {
        let r = &rows[0];
        assert_eq!(r.pods, 9, "the smoke run's pods all run");
        assert!(r.queries_per_tick > 0.0, "the watchdog queried Prometheus");
    }
}

async fn run(n: usize, full: bool) -> Row {
    let sim = SimCluster::start(SimOptions {
        no_pod_listeners: true,
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let store = sim.store();
    for ns in [NS, WATCHDOG_NAMESPACE] {
        store
            .create(&NAMESPACES, "", json!({"metadata": {"name": ns}}))
            .expect("a namespace");
    }
    let started = Instant::now();
    for i in 0..n {
        let name = format!("app-{i:05}");
        let mut d = seed_deployment(&name, "app:v1", 3);
        d["metadata"]["annotations"] = json!({"rollback-watchdog.io/enabled": "true"});
        apply_deployment_defaults(&mut d);
        store.create(&DEPLOYMENTS, NS, d).expect("a Deployment");
    }
    let want = n * 3;
    loop {
        let (pods, _) = store.list(&PODS, Some(NS));
        let running = pods
            .iter()
            .filter(|p| p.pointer("/status/phase").and_then(|v| v.as_str()) == Some("Running"))
            .count();
        if running == want {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "the sim did not settle: {running} of {want} pods Running"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let settle = started.elapsed();

    let (prom_url, queries) = stub_prometheus().await;
    let dir = tempfile::tempdir().expect("a temp dir");
    let admin = free_port();
    let interval = if full { 5 } else { 1 };
    let config = write_config(dir.path(), &prom_url, admin, interval);
    // SCALE_WATCHDOG_BIN: another build of the binary (a release build
    // measured from a quicker harness build).
    let bin = std::env::var("SCALE_WATCHDOG_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_rollback-watchdog").to_string());
    let mut cmd = Command::new(bin);
    cmd.env("KUBECONFIG", sim.kubeconfig_path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("ROLLBACK_WATCHDOG_CONFIG")
        .env_remove("POD_NAME")
        // The daemon's "tick done" line (with its wall time) marks each tick.
        .env("RUST_LOG", "warn,rollback_watchdog::runtime::daemon=debug")
        .arg("--config")
        .arg(&config)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.path().join("stderr")).expect("a log file"),
        ));
    let start = Instant::now();
    let proc = Proc(cmd.spawn().expect("the watchdog starts"));
    let pid = proc.0.id();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    loop {
        let ok = http
            .get(format!("http://127.0.0.1:{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "the watchdog was not ready in 5 minutes: {}",
            std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ready = start.elapsed();

    // The start-up wave: every revision's first verdict writes its Event,
    // known-good record and memory once, spread over the first ticks. It
    // is over when two whole ticks in a row sent no API request (bounded).
    let (wave_start, wave_cpu0, wave_api0) = (
        Instant::now(),
        cpu_time(pid),
        sim.request_log().entries().len(),
    );
    let log = dir.path().join("stderr");
    let mut seen = wait_ticks(&log, 0).await.len();
    let mut quiet = 0;
    while quiet < 2 && wave_start.elapsed() < Duration::from_secs(300) {
        let before = sim.request_log().entries().len();
        seen = wait_ticks(&log, seen).await.len();
        quiet = if sim.request_log().entries().len() == before {
            quiet + 1
        } else {
            0
        };
    }
    let wave = wave_start.elapsed();
    let wave_cpu = cpu_time(pid).saturating_sub(wave_cpu0);
    let wave_requests = sim.request_log().entries().len() - wave_api0;

    // Whole ticks: from one tick's end to the end of the tick `ticks` later.
    let ticks: u32 = if full { 6 } else { 2 };
    let (cpu0, api0, q0) = (
        cpu_time(pid),
        sim.request_log().entries().len(),
        queries.load(Ordering::SeqCst),
    );
    let mut walls = Vec::new();
    for _ in 0..ticks {
        let all = wait_ticks(&log, seen).await;
        walls.extend_from_slice(&all[seen..]);
        seen = all.len();
    }
    let (cpu1, api1, q1) = (
        cpu_time(pid),
        sim.request_log().entries().len(),
        queries.load(Ordering::SeqCst),
    );
    let peak_rss_mib = proc_status_kib(pid, "VmHWM:") as f64 / 1024.0;
    let rss_end_mib = proc_status_kib(pid, "VmRSS:") as f64 / 1024.0;
    // What the requests during the measured ticks were, by verb and kind.
    let mut by_kind = std::collections::BTreeMap::<String, usize>::new();
    for e in sim.request_log().entries().iter().skip(api0) {
        let kind = e.path.rsplit('/').nth(1).unwrap_or("").to_string();
        *by_kind.entry(format!("{} {kind}", e.method)).or_default() += 1;
    }
    eprintln!("scale: {n}: API requests in the measured ticks: {by_kind:?}");
    drop(proc);
    let row = Row {
        deployments: n,
        pods: want,
        settle,
        ready,
        cpu_per_tick: cpu1.saturating_sub(cpu0) / ticks,
        tick_wall: walls.iter().sum::<Duration>() / walls.len().max(1) as u32,
        api_per_tick: api1.saturating_sub(api0) as f64 / f64::from(ticks),
        queries_per_tick: q1.saturating_sub(q0) as f64 / f64::from(ticks),
        peak_rss_mib,
        rss_end_mib,
        wave,
        wave_requests,
        wave_cpu,
    };
    sim.shutdown().await;
    row
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The grouped templates: one series per namespace and pod (and `le`).
const GROUPED: &str = r#"
[defaults.error_rate]
grouped = true
errors_query = 'sum by (namespace, pod) (rate(http_requests_total{code=~"5.."}[{window}]))'
total_query = 'sum by (namespace, pod) (rate(http_requests_total[{window}]))'

[defaults.latency]
grouped = true
query = 'sum by (namespace, pod, le) (rate(http_request_duration_seconds_bucket[{window}]))'
"#;

fn write_config(dir: &Path, prometheus: &str, admin: u16, interval: u64) -> std::path::PathBuf {
    let path = dir.join("watchdog.toml");
    let text = format!(
        r#"
[watchdog]
cluster_name = "scale"
interval = "{interval}s"
namespace = "{WATCHDOG_NAMESPACE}"
audit_log = "{audit}"
opt_in_namespaces = ["{NS}"]

[prometheus]
url = "{prometheus}"
timeout = "2s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[defaults.health]
enabled = false
{grouped}"#,
        grouped = if std::env::var_os("SCALE_PER_TARGET").is_some() {
            ""
        } else {
            GROUPED
        },
        audit = dir.join("audit.jsonl").display(),
    );
    std::fs::write(&path, text).expect("the config is written");
    path
}

/// A Prometheus that answers every query with an empty vector, counting them.
async fn stub_prometheus() -> (String, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counter = count.clone();
    let app = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            axum::Json(json!({"status": "success", "data": {"resultType": "vector", "result": []}}))
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, count)
}

/// The wall times of the ticks the watchdog has logged ("tick done"), once
/// there are more than `after` (bounded: 2 minutes).
async fn wait_ticks(log: &Path, after: usize) -> Vec<Duration> {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let walls: Vec<Duration> = text
            .lines()
            .filter(|l| l.contains("tick done"))
            .filter_map(|l| {
                let ms = l.split("wall_ms=").nth(1)?.split_whitespace().next()?;
                ms.parse().ok().map(Duration::from_millis)
            })
            .collect();
        if walls.len() > after {
            return walls;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no tick in 2 minutes: {text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// User + system CPU time of a process.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command (which may hold spaces) start at state.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after ')'.
    let hz = 100;
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

/// A `kB` field of /proc/PID/status: `VmHWM:` (peak RSS), `VmRSS:`.
fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}
