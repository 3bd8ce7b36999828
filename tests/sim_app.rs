//! The sim's app pods as a probe and a scraper meet them: a pod that warms
//! up answers `/health` with 503 until it is Ready, and an error burst shows
//! in the `/metrics` counters of exactly the pods it hits, and in a real
//! Prometheus scraping twice a second, over its span. Every wait is
//! bounded; nothing asserts how fast anything happens.

mod support;

use std::time::{Duration, Instant};

use rollback_watchdog::sim::behaviour::{Behaviour, Behaviours};
use rollback_watchdog::sim::burst::{Burst, ImageMatch, Starts};
use rollback_watchdog::sim::clock::SimClock;
use rollback_watchdog::sim::deployment::apply_deployment_defaults;
use rollback_watchdog::sim::store::{Store, DEPLOYMENTS, NAMESPACES, PODS};
use rollback_watchdog::sim::{seed_deployment, SimCluster, SimOptions};
use serde_json::{json, Value};
use support::eventually;

const NS: &str = "shop";
const WAIT: Duration = Duration::from_secs(30);

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn create(store: &Store, name: &str, image: &str) {
    let mut d = seed_deployment(name, image, 1);
    apply_deployment_defaults(&mut d);
    store.create(&DEPLOYMENTS, NS, d).unwrap();
}

/// The one pod of Deployment `name`, once it has one.
fn pod_of(store: &Store, name: &str) -> Option<Value> {
    let prefix = format!("{name}-");
    store.list(&PODS, Some(NS)).0.into_iter().find(|p| {
        p["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with(&prefix))
    })
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn base_url(pod: &Value) -> Option<String> {
    pod["status"]["podIP"]
        .as_str()
        .map(|ip| format!("http://{ip}:8080"))
}

/// (requests, errors) from a pod's `/metrics`.
async fn counts(http: &reqwest::Client, base: &str) -> (f64, f64) {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sample = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    (
        sample("http_request_duration_seconds_count"),
        sample("http_requests_total{code=\"500\"}"),
    )
}

async fn health(http: &reqwest::Client, base: &str) -> u16 {
    http.get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warming_up_pod_answers_503_until_ready_and_a_burst_shows_only_where_it_hits() {
    let clock = SimClock::new(20.0);
    let behaviours = Behaviours::builtin();
    let quiet = Behaviour {
        error_ratio: 0.0,
        request_rate: 200.0,
        ..Behaviour::default()
    };
    behaviours.set("shop:v1", quiet.clone());
    behaviours.set("shop:v2", quiet);
    // 1.5 s of real time, long enough to probe the pod while it warms up.
    behaviours.warm_up("shop:v2", clock.sim(Duration::from_millis(1500)), 503);
    let sim = SimCluster::start(SimOptions {
        clock,
        behaviours: behaviours.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let store = sim.store();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .unwrap();
    create(store, "old", "shop:v1");
    create(store, "new", "shop:v2");
    let http = http();

    // Warm-up: probed until the API says Ready. As with a real readiness
    // probe, /health turns 200 just before the pod turns Ready, so a pod
    // the API called Ready before a probe answers 200, and the answers go
    // 503 … 503, 200 … 200.
    let mut seen = Vec::new();
    let deadline = Instant::now() + WAIT;
    let new_base = loop {
        assert!(
            Instant::now() < deadline,
            "new's pod never turned Ready: {seen:?}"
        );
        let pod = eventually("new's pod listening", || {
            pod_of(store, "new")
                .filter(|p| base_url(p).is_some())
                .ok_or_else(|| "no pod with an IP".to_string())
        })
        .await;
        let base = base_url(&pod).unwrap();
        let status = health(&http, &base).await;
        seen.push(status);
        if is_ready(&pod) {
            assert_eq!(status, 200, "a Ready pod is healthy: {seen:?}");
            break base;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(seen.first(), Some(&503), "warming up: {seen:?}");
    let turned = seen.iter().position(|s| *s == 200).unwrap_or(seen.len());
    assert!(
        seen[..turned].iter().all(|s| *s == 503) && seen[turned..].iter().all(|s| *s == 200),
        "503 until ready, then 200: {seen:?}"
    );
    assert_eq!(health(&http, &new_base).await, 200, "Ready: healthy");

    let old_base = eventually("old's pod ready", || {
        pod_of(store, "old")
            .filter(is_ready)
            .and_then(|p| base_url(&p))
            .ok_or_else(|| "not ready".to_string())
    })
    .await;
    assert_eq!(health(&http, &old_base).await, 200, "no warm-up configured");
    assert_eq!(counts(&http, &new_base).await.1, 0.0, "no errors before");

    // A burst on shop:v2 only: every request fails for 0.5 s of real time.
    let span = behaviours
        .burst(Burst {
            images: ImageMatch::Image("shop:v2".into()),
            starts: Starts::In(Duration::ZERO),
            lasts: clock.sim(Duration::from_millis(500)),
            error_ratio: 1.0,
        })
        .unwrap()
        .expect("a burst from now has a span at once");
    sleep_until(span.end).await;
    let (_, new_errors) = counts(&http, &new_base).await;
    // 200 req/s for 0.5 s: Poisson, mean 100, sd 10.
    assert!((50.0..=150.0).contains(&new_errors), "{new_errors}");
    assert_eq!(counts(&http, &old_base).await.1, 0.0, "shop:v1 not hit");

    // A downstream outage hits every image: half the requests fail.
    let outage = behaviours
        .burst(Burst {
            images: ImageMatch::All,
            starts: Starts::In(Duration::ZERO),
            lasts: clock.sim(Duration::from_millis(500)),
            error_ratio: 0.5,
        })
        .unwrap()
        .expect("a span");
    sleep_until(outage.end).await;
    let (old_total, old_errors) = counts(&http, &old_base).await;
    let (new_total, after_outage) = counts(&http, &new_base).await;
    // Mean 50 each, sd 7.
    assert!((15.0..=85.0).contains(&old_errors), "{old_errors}");
    assert!(
        (15.0..=85.0).contains(&(after_outage - new_errors)),
        "{new_errors} → {after_outage}"
    );

    // Over: requests go on, errors stop (the base ratio is 0).
    let deadline = Instant::now() + WAIT;
    let (old_errors_later, new_errors_later) = loop {
        let (old_later, old_errors_later) = counts(&http, &old_base).await;
        let (new_later, new_errors_later) = counts(&http, &new_base).await;
        if old_later >= old_total + 20.0 && new_later >= new_total + 20.0 {
            break (old_errors_later, new_errors_later);
        }
        assert!(
            Instant::now() < deadline,
            "no more requests after the outage: {old_later}, {new_later}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(old_errors_later, old_errors);
    assert_eq!(new_errors_later, after_outage);
    sim.shutdown().await;
}

/// The samples of one series over the last `window`, as (unix seconds, value).
async fn series(prom: &str, query: &str) -> Vec<(f64, f64)> {
    let client = prometheus_http_query::Client::try_from(prom).unwrap();
    let Ok(result) = client.query(query).get().await else {
        return Vec::new();
    };
    result
        .data()
        .as_matrix()
        .and_then(|m| m.first())
        .map(|r| {
            r.samples()
                .iter()
                .map(|s| (s.timestamp(), s.value()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shows_in_prometheus_over_its_span_and_nowhere_else() {
    const NS_PROM: &str = "burst-prom";
    let prom = support::prom::shared_every(Duration::from_millis(500));
    let clock = SimClock::new(20.0);
    let behaviours = Behaviours::builtin();
    behaviours.set(
        "shop:v1",
        Behaviour {
            error_ratio: 0.0,
            request_rate: 200.0,
            ..Behaviour::default()
        },
    );
    let sim = SimCluster::start(SimOptions {
        clock,
        behaviours: behaviours.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    prom.register(sim.scrape_target_handle());
    let store = sim.store();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS_PROM}}))
        .unwrap();
    let mut d = seed_deployment("web", "shop:v1", 1);
    apply_deployment_defaults(&mut d);
    store.create(&DEPLOYMENTS, NS_PROM, d).unwrap();

    let errors = format!(r#"http_requests_total{{namespace="{NS_PROM}",code="500"}}[30s]"#);
    let deadline = Instant::now() + Duration::from_secs(60);
    while series(&prom.url, &errors).await.len() < 3 {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the pod"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Every request fails for 1.5 s of real time.
    let wall_start = jiff::Timestamp::now().as_millisecond() as f64 / 1000.0;
    let span = behaviours
        .burst(Burst {
            images: ImageMatch::All,
            starts: Starts::In(Duration::ZERO),
            lasts: clock.sim(Duration::from_millis(1500)),
            error_ratio: 1.0,
        })
        .unwrap()
        .expect("a span");
    let wall_end = wall_start + (span.end - span.start).as_secs_f64();
    sleep_until(span.end).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let samples = loop {
        let samples = series(&prom.url, &errors).await;
        // Three scrapes after the end.
        if samples.iter().filter(|(t, _)| *t > wall_end).count() >= 3 {
            break samples;
        }
        assert!(
            Instant::now() < deadline,
            "no scrapes after the burst: {samples:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // A scrape renders the counter a moment after its timestamp: 100 ms of
    // slack on each side.
    let before: Vec<_> = samples
        .iter()
        .filter(|(t, _)| *t < wall_start - 0.1)
        .collect();
    let after: Vec<_> = samples
        .iter()
        .filter(|(t, _)| *t > wall_end + 0.1)
        .collect();
    assert!(!before.is_empty(), "{samples:?}");
    assert!(
        before.iter().all(|(_, v)| *v == 0.0),
        "errors before: {samples:?}"
    );
    let total = after.first().map(|(_, v)| *v).unwrap_or_default();
    assert!(
        after.iter().all(|(_, v)| *v == total),
        "errors after: {samples:?}"
    );
    // 200 req/s for 1.5 s: mean 300, sd 17.
    assert!((220.0..=380.0).contains(&total), "{total}: {samples:?}");
    let inside = samples
        .iter()
        .filter(|(t, _)| *t > wall_start + 0.1 && *t < wall_end - 0.1)
        .count();
    assert!(inside >= 1, "a scrape inside the burst: {samples:?}");
    sim.shutdown().await;
}
