//! The app each serving pod runs: an HTTP server on the pod's own loopback
//! address with `/metrics`, `/health` and `/version`. Its metrics are the
//! traffic the image's behaviour and the table's bursts describe
//! ([`super::traffic`]: Poisson by default, exact on request), counted
//! while the pod is Ready, not real traffic. `/health` answers the
//! behaviour's status, or its warm-up status while the pod is not yet
//! Ready. It must never bind anything but loopback, and a stopped pod must
//! stop answering (dropping the server closes the listener and every idle
//! kept-alive connection). Connections are kept alive, as real servers
//! keep them, so a client pinned to a pod through a Service stays on it.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use super::behaviour::{image_tag, Behaviours};
use super::traffic::{bucket_bounds, pod_seed, Counters};

/// What one pod's server knows.
pub struct AppState {
    pub namespace: String,
    pub pod: String,
    pub image: String,
    behaviours: Behaviours,
    bounds: Vec<f64>,
    counters: Mutex<Counters>,
}

impl AppState {
    pub fn new(namespace: &str, pod: &str, image: &str, behaviours: Behaviours) -> Self {
        let bounds = bucket_bounds();
        AppState {
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            image: image.to_string(),
            counters: Mutex::new(Counters::new(
                Instant::now(),
                pod_seed(behaviours.seed(), namespace, pod),
                bounds.len(),
            )),
            behaviours,
            bounds,
        }
    }

    fn counters(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Traffic flows only while the pod is ready (a Service would route
    /// none to it otherwise). Counts up to now under the old state first.
    pub fn set_ready(&self, ready: bool) {
        let b = self.behaviours.lookup(&self.image);
        let bursts = self.behaviours.bursts_for(&self.image);
        let mut c = self.counters();
        c.set_ready(Instant::now(), ready, &b, &bursts, &self.bounds);
    }

    /// Whether the kubelet last found the pod Ready.
    pub fn is_ready(&self) -> bool {
        self.counters().ready()
    }

    /// The status `/health` answers with now.
    pub fn health_status(&self) -> u16 {
        let ready = self.is_ready();
        self.behaviours.lookup(&self.image).health_status(ready)
    }

    /// The Prometheus text exposition of this pod's metrics now.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let b = self.behaviours.lookup(&self.image);
        let bursts = self.behaviours.bursts_for(&self.image);
        let mut c = self.counters();
        c.advance(Instant::now(), &b, &bursts, &self.bounds);
        let mut out = String::new();
        let tag = image_tag(&self.image).unwrap_or("");
        let _ = writeln!(out, "# HELP app_build_info The image this pod runs.");
        let _ = writeln!(out, "# TYPE app_build_info gauge");
        let _ = writeln!(
            out,
            "app_build_info{{image=\"{}\",version=\"{}\"}} 1",
            self.image, tag
        );
        let _ = writeln!(
            out,
            "# HELP http_requests_total HTTP requests served, by status code."
        );
        let _ = writeln!(out, "# TYPE http_requests_total counter");
        let _ = writeln!(out, "http_requests_total{{code=\"200\"}} {}", c.ok.floor());
        let _ = writeln!(
            out,
            "http_requests_total{{code=\"500\"}} {}",
            c.errors.floor()
        );
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds HTTP request latency."
        );
        let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
        for (bound, count) in self.bounds.iter().zip(&c.buckets) {
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                count.floor()
            );
        }
        let total = c.total.floor();
        let _ = writeln!(
            out,
            "http_request_duration_seconds_bucket{{le=\"+Inf\"}} {total}"
        );
        let _ = writeln!(out, "http_request_duration_seconds_sum {}", c.sum);
        let _ = writeln!(out, "http_request_duration_seconds_count {total}");
        out
    }
}

async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.render_metrics(),
    )
        .into_response()
}

async fn health(State(app): State<Arc<AppState>>) -> Response {
    let code = StatusCode::from_u16(app.health_status()).unwrap_or(StatusCode::OK);
    let status = if code.is_success() { "ok" } else { "unhealthy" };
    (code, axum::Json(json!({"status": status, "pod": app.pod}))).into_response()
}

async fn version(State(app): State<Arc<AppState>>) -> Response {
    let tag = image_tag(&app.image).unwrap_or("");
    axum::Json(json!({"version": tag, "image": app.image, "pod": app.pod})).into_response()
}

/// A running app server; dropping it closes the listener, and (axum's
/// serve ends its connections gracefully when its task is dropped) every
/// idle kept-alive connection.
pub struct AppServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AppServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AppServer {
    /// Binds `ip:port` and serves. Must run inside a tokio runtime.
    pub fn start(ip: Ipv4Addr, port: u16, state: Arc<AppState>) -> std::io::Result<AppServer> {
        let std_listener = std::net::TcpListener::bind((ip, port))?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/health", get(health))
            .route("/version", get(version))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::warn!(%addr, error = %e, "sim app server stopped");
            }
        });
        Ok(AppServer { addr, state, task })
    }
}

/// One pod Prometheus should scrape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScrapeTarget {
    pub address: SocketAddr,
    /// `namespace`, `pod`, and where known `deployment`, `pod_template_hash`.
    pub labels: BTreeMap<String, String>,
}

/// The live scrape targets, shared between the kubelet (which adds and
/// removes them) and whoever serves them to Prometheus. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ScrapeTargets {
    inner: Arc<Mutex<BTreeMap<(String, String), ScrapeTarget>>>,
}

impl ScrapeTargets {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), ScrapeTarget>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn insert(&self, target: ScrapeTarget) {
        let key = (
            target.labels.get("namespace").cloned().unwrap_or_default(),
            target.labels.get("pod").cloned().unwrap_or_default(),
        );
        self.lock().insert(key, target);
    }

    pub(crate) fn remove(&self, namespace: &str, pod: &str) {
        self.lock()
            .remove(&(namespace.to_string(), pod.to_string()));
    }

    /// Every serving pod, sorted by namespace and name.
    pub fn list(&self) -> Vec<ScrapeTarget> {
        self.lock().values().cloned().collect()
    }

    /// The list in Prometheus's HTTP service discovery format.
    pub fn to_http_sd_json(&self) -> Value {
        Value::Array(
            self.list()
                .into_iter()
                .map(|t| json!({"targets": [t.address.to_string()], "labels": t.labels}))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn sample(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    }

    #[test]
    fn a_warming_up_pod_answers_its_warm_up_status_until_ready() {
        let behaviours = Behaviours::builtin();
        behaviours.warm_up("app:v2", Duration::from_secs(15), 503);
        let warming = AppState::new("ns", "p2", "app:v2", behaviours.clone());
        assert_eq!(warming.health_status(), 503, "not yet Ready");
        warming.set_ready(true);
        assert_eq!(warming.health_status(), 200, "Ready");
        warming.set_ready(false);
        assert_eq!(warming.health_status(), 503, "unready again");
        // Without a warm-up status, /health answers as soon as it listens.
        let plain = AppState::new("ns", "p1", "app:v1", behaviours);
        assert_eq!(plain.health_status(), 200);
    }

    #[test]
    fn metrics_count_whole_requests_and_only_while_ready() {
        let state = AppState::new("ns", "p", "app:v1", Behaviours::builtin());
        state.counters().backdate(Duration::from_secs(10));
        // Not ready yet: those ten seconds carry no traffic.
        state.set_ready(true);
        assert_eq!(state.counters().total, 0.0);
        state.counters().backdate(Duration::from_secs(10));
        let text = state.render_metrics();
        let total = sample(&text, "http_request_duration_seconds_count");
        // 20 req/s for 10 s: Poisson with mean 200, sd 14.
        assert!((130.0..270.0).contains(&total), "{total}");
        assert_eq!(total.fract(), 0.0);
        let ok = sample(&text, "http_requests_total{code=\"200\"}");
        let errors = sample(&text, "http_requests_total{code=\"500\"}");
        assert_eq!(ok + errors, total, "{text}");
        assert_eq!(
            sample(&text, "http_request_duration_seconds_bucket{le=\"+Inf\"}"),
            total
        );
    }
}
