//! One real Prometheus per test binary and scrape interval, scraping the
//! app pods of every sim the tests register, through one HTTP
//! service-discovery endpoint. [`shared`] scrapes every second; a test that
//! needs another interval (a burst shorter than a scrape, a slow scraper)
//! asks [`shared_every`], which starts one more Prometheus for that
//! interval. Each lives on its own thread and runtime (each
//! `#[tokio::test]` has its own), and its guard kills it when the test
//! binary exits.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rollback_watchdog::sim::prometheus::{self, PrometheusOptions, PrometheusServer};
use rollback_watchdog::sim::ScrapeTargets;

pub struct SharedPrometheus {
    pub url: String,
    /// How often it scrapes the pods (and evaluates).
    pub scrape_interval: Duration,
    sims: Arc<Mutex<Vec<ScrapeTargets>>>,
}

impl SharedPrometheus {
    /// Adds a sim's app pods to what Prometheus scrapes.
    pub fn register(&self, targets: ScrapeTargets) {
        if let Ok(mut sims) = self.sims.lock() {
            sims.push(targets);
        }
    }
}

static SHARED: OnceLock<Mutex<BTreeMap<Duration, &'static SharedPrometheus>>> = OnceLock::new();

/// The binary's Prometheus (scrape and discovery every second).
pub fn shared() -> &'static SharedPrometheus {
    shared_every(Duration::from_secs(1))
}

/// The binary's Prometheus that scrapes every `scrape_interval` (target
/// discovery stays at every second), started on first use.
pub fn shared_every(scrape_interval: Duration) -> &'static SharedPrometheus {
    let mut by_interval = SHARED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    by_interval
        .entry(scrape_interval)
        .or_insert_with(|| Box::leak(Box::new(start(scrape_interval))))
}

fn start(scrape_interval: Duration) -> SharedPrometheus {
    assert!(
        prometheus::available(),
        "prometheus and promtool must be on PATH (bash .ci/run installs Debian's package)"
    );
    let sims: Arc<Mutex<Vec<ScrapeTargets>>> = Arc::default();
    let hub_sims = sims.clone();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the shared Prometheus");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind the discovery hub");
            let hub_url = format!("http://{}/targets", listener.local_addr().expect("addr"));
            let app = axum::Router::new().route(
                "/targets",
                axum::routing::get(move || {
                    let sims = hub_sims.clone();
                    async move {
                        let mut all = Vec::new();
                        if let Ok(sims) = sims.lock() {
                            for s in sims.iter() {
                                if let serde_json::Value::Array(items) = s.to_http_sd_json() {
                                    all.extend(items);
                                }
                            }
                        }
                        axum::Json(serde_json::Value::Array(all))
                    }
                }),
            );
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).await;
            });
            let config = prometheus::scrape_config(&hub_url, scrape_interval);
            let server = PrometheusServer::start(PrometheusOptions::new(config))
                .await
                .expect("the shared Prometheus starts");
            let _ = tx.send(server.url().to_string());
            // Keep the server (and the hub) alive for the whole binary.
            std::future::pending::<()>().await;
            drop(server);
        });
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the shared Prometheus did not start");
    SharedPrometheus {
        url,
        scrape_interval,
        sims,
    }
}
