//! Detection latency and recovery, end to end: the real run loop (ticks
//! and watch-event wake-ups) with its rollback pipeline, against the sim
//! (20× time) and the real Prometheus scraping every second.
//!
//! `cargo bench --bench detection` runs every case `RUNS` times and prints
//! the two tables `benches/README.md` records ("Detection latency",
//! "Recovery"). Without `--bench` (as `cargo test --all-targets` runs it)
//! it does one crash loop without Prometheus, a few seconds, and checks
//! only that it is caught and rolled back.
//!
//! Times are wall-clock instants of what the bench's own watches on the
//! sim see (a pod's status, the Deployment's spec and status), and the
//! incident's `detected_at` and `finished_at` from the audit log.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::runtime::app::{App, PipelineOptions, Record};
use rollback_watchdog::sim::Behaviours;

#[path = "../tests/support/mod.rs"]
mod support;
use support::watch::{Prom, Scenario, NAME};

const RUNS: usize = 3;
const SCRAPE: Duration = Duration::from_secs(1);
const VERIFY_WINDOW: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
enum Kind {
    Errors,
    Latency,
    Crash,
}

struct Case {
    name: &'static str,
    image: &'static str,
    kind: Kind,
    interval: Duration,
    threshold: u32,
    /// The rate window (`error_rate.window` / `latency.window`).
    window: Duration,
    extra: &'static str,
}

const CASES: &[Case] = &[
    Case {
        name: "error ratio 30 % (max 5 %)",
        image: "web:v2-errors",
        kind: Kind::Errors,
        interval: Duration::from_secs(1),
        threshold: 3,
        window: Duration::from_secs(10),
        extra: "",
    },
    Case {
        name: "latency 1.6× the baseline (limit 1.5×)",
        image: "web:v2-slow",
        kind: Kind::Latency,
        interval: Duration::from_secs(1),
        threshold: 3,
        window: Duration::from_secs(10),
        extra: "[targets.latency]\nmin_requests = 300\n",
    },
    Case {
        name: "crash loop, `immediate_bad_when_all_pods_crash`",
        image: "web:v2-crash",
        kind: Kind::Crash,
        interval: Duration::from_secs(15),
        threshold: 3,
        window: Duration::from_secs(10),
        extra: "",
    },
];

/// What the bench's watches saw, as wall-clock instants.
#[derive(Default, Debug, Clone)]
struct Timeline {
    /// The first pod of the new image Ready.
    first_ready: Option<Timestamp>,
    /// The first pod of the new image in a crash state.
    first_crash: Option<Timestamp>,
    /// Every pod of the new image with 2 restarts or more: the status
    /// update that establishes the crash of all of them.
    established: Option<Timestamp>,
    /// The Deployment's template back on `web:v1` (the rollback's patch).
    patched: Option<Timestamp>,
    /// `web:v1` fully rolled out again.
    rolled_out: Option<Timestamp>,
}

fn is_ready(p: &Pod) -> bool {
    rollback_watchdog::signals::pods::is_ready(p)
}

fn image_of(p: &Pod) -> Option<&str> {
    p.spec
        .as_ref()
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.as_deref())
}

fn crash_state(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                let state = c.state.as_ref();
                state.is_some_and(|s| s.terminated.is_some())
                    || state
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("CrashLoopBackOff")
            })
        })
}

fn restarts(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |cs| {
            cs.iter().map(|c| c.restart_count).max().unwrap_or(0)
        })
}

/// Watches the namespace's pods and `web`, filling `timeline`.
fn watch(client: kube::Client, ns: &str, image: &'static str, timeline: Arc<Mutex<Timeline>>) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = timeline.clone();
    tokio::spawn(async move {
        let mut known: std::collections::BTreeMap<String, Pod> = Default::default();
        let mut stream = std::pin::pin!(watcher(pods, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let now = Timestamp::now();
            let pod = match event {
                Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => p,
                Ok(watcher::Event::Delete(p)) => {
                    known.remove(&p.metadata.name.clone().unwrap_or_default());
                    continue;
                }
                _ => continue,
            };
            if image_of(&pod) != Some(image) {
                continue;
            }
            known.insert(pod.metadata.name.clone().unwrap_or_default(), pod.clone());
            let Ok(mut t) = t.lock() else { return };
            if is_ready(&pod) && t.first_ready.is_none() {
                t.first_ready = Some(now);
            }
            if crash_state(&pod) && t.first_crash.is_none() {
                t.first_crash = Some(now);
            }
            if t.established.is_none() && known.values().all(|p| restarts(p) >= 2) {
                t.established = Some(now);
            }
        }
    });
    let deployments: Api<Deployment> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        let mut seen_new = false;
        let mut stream = std::pin::pin!(watcher(deployments, watcher::Config::default()));
        while let Some(event) = stream.next().await {
            let now = Timestamp::now();
            let Ok(watcher::Event::Apply(d) | watcher::Event::InitApply(d)) = event else {
                continue;
            };
            if d.metadata.name.as_deref() != Some(NAME) {
                continue;
            }
            let current = first_image(&d);
            let Ok(mut t) = timeline.lock() else { return };
            if current == image {
                seen_new = true;
                continue;
            }
            if !seen_new || current != "web:v1" {
                continue;
            }
            if t.patched.is_none() {
                t.patched = Some(now);
            }
            let s = d.status.clone().unwrap_or_default();
            let done = s.observed_generation >= d.metadata.generation
                && s.updated_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.replicas == Some(3);
            if done && t.rolled_out.is_none() {
                t.rolled_out = Some(now);
            }
        }
    });
}

/// One measured run.
#[derive(Debug, Clone)]
struct Run {
    timeline: Timeline,
    detected: Timestamp,
    finished: Timestamp,
}

fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to - from).total(jiff::Unit::Second).unwrap_or(f64::NAN)
}

async fn run_case(
    case: &Case,
    ns: &str,
    prometheus: Option<&support::prom::SharedPrometheus>,
) -> Run {
    let url = prometheus.map_or("http://127.0.0.1:1".to_owned(), |p| p.url.clone());
    let extra = format!(
        "immediate_bad_when_all_pods_crash = {}\nverify_window = \"{}s\"\nrollout_timeout = \"60s\"\n{}",
        matches!(case.kind, Kind::Crash),
        VERIFY_WINDOW.as_secs(),
        case.extra
    );
    let s = Scenario::start(ns, Prom::Url(&url), Behaviours::builtin(), &extra).await;
    if let Some(p) = prometheus {
        p.register(s.sim.scrape_target_handle());
        s.wait_scraped().await;
    }
    let mut config = (*s.config).clone();
    config.watchdog.interval = case.interval;
    let app = App::new(Arc::new(config), s.client.clone());
    let notifier = Arc::new(app.notifier(Record::AuditLog).await.expect("notifiers"));
    let daemon = app
        .daemon()
        .pipeline(PipelineOptions::new(notifier))
        .build()
        .expect("daemon");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(daemon.run(async {
        let _ = stopped.await;
    }));
    // v1 serves for a while first: its baseline has real traffic.
    let warm = if prometheus.is_some() { 10 } else { 2 };
    tokio::time::sleep(Duration::from_secs(warm)).await;

    let timeline = Arc::new(Mutex::new(Timeline::default()));
    watch(s.client.clone(), ns, case.image, timeline.clone());
    s.deploy(case.image).await;

    let deadline = Instant::now() + Duration::from_secs(180);
    let report = loop {
        let report = s.audit_lines().into_iter().find(|l| l["step"] == "report");
        if let Some(r) = report {
            break r;
        }
        assert!(Instant::now() < deadline, "{ns}: no rollback within 180 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
    let incident = &report["details"];
    assert_eq!(incident["kind"], "rollback_succeeded", "{ns}: {incident:#}");
    let at = |key: &str| -> Timestamp {
        incident[key]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{ns}: incident without {key}: {incident:#}"))
    };
    let timeline = timeline.lock().map(|t| t.clone()).unwrap_or_default();
    Run {
        timeline,
        detected: at("detected_at"),
        finished: at("finished_at"),
    }
}

/// The theoretical minimum from the first bad moment to Bad, and how it
/// is made up.
fn minimum(case: &Case, run: &Run) -> (f64, String) {
    let interval = case.interval.as_secs_f64();
    let scrape = SCRAPE.as_secs_f64();
    match case.kind {
        Kind::Errors | Kind::Latency => {
            let m = 2.0 * scrape + f64::from(case.threshold) * interval;
            (
                m,
                format!(
                    "scrape {scrape:.0} s + a second sample for the rate {scrape:.0} s + {} ticks × {interval:.0} s",
                    case.threshold
                ),
            )
        }
        Kind::Crash => {
            let m = match (run.timeline.first_crash, run.timeline.established) {
                (Some(a), Some(b)) => secs(a, b),
                _ => f64::NAN,
            };
            (
                m,
                "the kubelet's status update that establishes the crash (2 restarts)".to_owned(),
            )
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

fn range(v: &[f64]) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{lo:.2}–{hi:.2}")
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        if !full {
            // Smoke: one crash loop, no Prometheus, caught and rolled back.
            let run = run_case(&CASES[2], "bench-smoke", None).await;
            assert!(run.detected <= run.finished);
            println!("detection smoke: crash loop caught and rolled back");
            return;
        }
        let prometheus = support::prom::shared_every(SCRAPE);
        let mut detection = String::from(
            "| bad release | interval, threshold, window | first bad → Bad (median, range) | theoretical minimum | ratio | crash established → Bad |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        let mut recovery = String::from(
            "| bad release | Bad → patch sent (watchdog) | patch → rolled out (sim) | rolled out → verified, less `verify_window` (watchdog) | watchdog overhead | Bad → verified |\n| --- | --- | --- | --- | --- | --- |\n",
        );
        let mut notes = Vec::new();
        for (c, case) in CASES.iter().enumerate() {
            let mut latency = Vec::new();
            let mut ratios = Vec::new();
            let mut after_status = Vec::new();
            let mut mins = Vec::new();
            let (mut before, mut cluster, mut after, mut total) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for r in 0..RUNS {
                let ns = format!("bench-{c}-{r}");
                let run = run_case(case, &ns, Some(prometheus)).await;
                let t = &run.timeline;
                let first = match case.kind {
                    Kind::Crash => t.first_crash,
                    _ => t.first_ready,
                };
                let Some(first) = first else {
                    notes.push(format!("{ns}: no first bad moment seen: {t:?}"));
                    continue;
                };
                let took = secs(first, run.detected);
                let (min, why) = minimum(case, &run);
                latency.push(took);
                mins.push(min);
                ratios.push(took / min);
                if let Some(e) = t.established {
                    after_status.push(secs(e, run.detected));
                }
                if r == 0 {
                    notes.push(format!("{}: minimum = {why}", case.name));
                }
                if let (Some(p), Some(o)) = (t.patched, t.rolled_out) {
                    before.push(secs(run.detected, p));
                    cluster.push(secs(p, o));
                    after.push(secs(o, run.finished) - VERIFY_WINDOW.as_secs_f64());
                    total.push(secs(run.detected, run.finished));
                } else {
                    notes.push(format!("{ns}: rollback not seen by the watch: {t:?}"));
                }
                eprintln!(
                    "{ns}: {took:.2} s to Bad (min {min:.2} s), {:.2} s to verified",
                    secs(run.detected, run.finished)
                );
            }
            let established = if after_status.is_empty() {
                "n/a".to_owned()
            } else {
                format!("{:.2} s ({})", median(after_status.clone()), range(&after_status))
            };
            detection.push_str(&format!(
                "| {} | {:.0} s, {}, {:.0} s | {:.2} s ({}) | {:.2} s | {:.2}× ({}) | {} |\n",
                case.name,
                case.interval.as_secs_f64(),
                case.threshold,
                case.window.as_secs_f64(),
                median(latency.clone()),
                range(&latency),
                median(mins),
                median(ratios.clone()),
                range(&ratios),
                established,
            ));
            let overhead: Vec<f64> = before.iter().zip(&after).map(|(a, b)| a + b).collect();
            recovery.push_str(&format!(
                "| {} | {:.2} s | {:.2} s | {:.2} s | {:.2} s ({}) | {:.2} s |\n",
                case.name,
                median(before),
                median(cluster),
                median(after),
                median(overhead.clone()),
                range(&overhead),
                median(total),
            ));
        }
        println!("\n## Detection latency\n\n{detection}");
        println!("## Recovery (verify_window {} s)\n\n{recovery}", VERIFY_WINDOW.as_secs());
        for n in notes {
            println!("- {n}");
        }
    });
}
