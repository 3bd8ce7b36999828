//! The app each serving pod runs: an HTTP server on the pod's own loopback
//! address with `/metrics`, `/health` and `/version`. Its metrics are a
//! function of time and the image's behaviour, not of real traffic, so a
//! rate over any window is exact: requests = rate × seconds ready, errors =
//! ratio × requests, latency buckets from a fixed log-normal shape scaled
//! by the behaviour's median. Connections are kept alive, as real servers
//! keep them, so a client pinned to a pod through a Service stays on it. It
//! must never bind anything but loopback, and a stopped pod must stop
//! answering (dropping the server closes the listener and every idle
//! kept-alive connection).

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

use super::behaviour::{image_tag, Behaviour, Behaviours};

/// Spread of the latency distribution (log-normal sigma): p95 is about
/// 2.3 × the median, p99 about 3.2 ×.
pub const LATENCY_SIGMA: f64 = 0.5;

/// Histogram bucket bounds in seconds: 5 ms to 10 s, each 10 % above the
/// last (4 significant digits), fine enough that `histogram_quantile` tells
/// a 1.3 × from a 1.6 × slowdown.
pub fn bucket_bounds() -> Vec<f64> {
    let mut out = Vec::new();
    let mut b: f64 = 0.005;
    while b <= 10.0 {
        let digits = 3 - b.log10().floor() as i32;
        let scale = 10f64.powi(digits);
        out.push((b * scale).round() / scale);
        b *= 1.1;
    }
    out
}

/// Standard normal CDF (Abramowitz & Stegun 7.1.26, error < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    let erf = if z >= 0.0 { erf } else { -erf };
    0.5 * (1.0 + erf)
}

/// Fraction of requests at or below `bound` seconds for a median.
pub fn latency_cdf(bound: f64, median: f64) -> f64 {
    if median <= 0.0 {
        return 1.0;
    }
    normal_cdf((bound / median).ln() / LATENCY_SIGMA)
}

/// A pod's counters, integrated over the time it was ready so they stay
/// monotonic when a test changes the behaviour mid-run.
#[derive(Debug)]
struct Counters {
    last: Instant,
    ready: bool,
    ok: f64,
    errors: f64,
    total: f64,
    sum: f64,
    buckets: Vec<f64>,
}

impl Counters {
    fn advance(&mut self, now: Instant, b: &Behaviour, bounds: &[f64]) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if !self.ready || dt <= 0.0 {
            return;
        }
        let n = b.request_rate.max(0.0) * dt;
        let ratio = b.error_ratio.clamp(0.0, 1.0);
        self.errors += n * ratio;
        self.ok += n * (1.0 - ratio);
        self.total += n;
        let median = b.latency.as_secs_f64();
        self.sum += n * median * (LATENCY_SIGMA * LATENCY_SIGMA / 2.0).exp();
        for (count, bound) in self.buckets.iter_mut().zip(bounds) {
            *count += n * latency_cdf(*bound, median);
        }
    }
}

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
            behaviours,
            counters: Mutex::new(Counters {
                last: Instant::now(),
                ready: false,
                ok: 0.0,
                errors: 0.0,
                total: 0.0,
                sum: 0.0,
                buckets: vec![0.0; bounds.len()],
            }),
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
        let mut c = self.counters();
        c.advance(Instant::now(), &b, &self.bounds);
        c.ready = ready;
    }

    /// The Prometheus text exposition of this pod's metrics now.
    pub fn render_metrics(&self) -> String {
        use std::fmt::Write;
        let b = self.behaviours.lookup(&self.image);
        let mut c = self.counters();
        c.advance(Instant::now(), &b, &self.bounds);
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
    let b = app.behaviours.lookup(&app.image);
    let code = StatusCode::from_u16(b.health_status).unwrap_or(StatusCode::OK);
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

    #[test]
    fn buckets_are_fine_and_sorted() {
        let b = bucket_bounds();
        assert!(b.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(b[0], 0.005);
        assert!(*b.last().unwrap() <= 10.0 && b.len() > 60);
    }

    #[test]
    fn cdf_is_one_half_at_the_median() {
        assert!((latency_cdf(0.05, 0.05) - 0.5).abs() < 1e-6);
        assert!(latency_cdf(0.2, 0.05) > 0.99);
    }

    #[test]
    fn counters_grow_with_ready_time_only() {
        let state = AppState::new("ns", "p", "app:v1", Behaviours::builtin());
        {
            let mut c = state.counters();
            c.last -= Duration::from_secs(10);
        }
        // Not ready yet: those ten seconds carry no traffic.
        state.set_ready(true);
        assert_eq!(state.counters().total, 0.0);
        {
            let mut c = state.counters();
            c.last -= Duration::from_secs(10);
        }
        let text = state.render_metrics();
        let total = state.counters().total;
        assert!((200.0..201.0).contains(&total), "{total}");
        assert!(
            text.contains("http_request_duration_seconds_count 200"),
            "{text}"
        );
    }
}
