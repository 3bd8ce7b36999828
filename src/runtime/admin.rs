//! The admin HTTP server: `/livez`, `/readyz`, `/metrics` and `/status`,
//! for kubelet probes, Prometheus and people. It only reads shared state;
//! it must never block the watch loop, and every request has a deadline.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus_client::registry::Registry;

use crate::report::metrics::Format;
use crate::report::status::StatusReport;

/// Errors starting the admin server.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr} for the admin server (admin.listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the admin server's own address: {0}")]
    LocalAddr(#[source] std::io::Error),
}

/// What the admin server serves; cheap to clone, shared with the loop.
#[derive(Clone)]
pub struct AdminState {
    registry: Arc<Registry>,
    synced: Arc<AtomicBool>,
    shutting_down: Arc<AtomicBool>,
    status: Arc<RwLock<StatusReport>>,
    request_timeout: Duration,
}

impl AdminState {
    pub fn new(registry: Registry, request_timeout: Duration) -> Self {
        AdminState {
            registry: Arc::new(registry),
            synced: Arc::new(AtomicBool::new(false)),
            shutting_down: Arc::new(AtomicBool::new(false)),
            status: Arc::new(RwLock::new(StatusReport::default())),
            request_timeout,
        }
    }

    /// Every reflector has synced once: `/readyz` may turn ready.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::SeqCst);
    }

    /// Shutdown has started: `/readyz` turns unready for good.
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::SeqCst) && !self.shutting_down.load(Ordering::SeqCst)
    }

    /// Replaces the `/status` snapshot.
    pub fn publish(&self, report: StatusReport) {
        let mut guard = self.status.write().unwrap_or_else(|p| p.into_inner());
        *guard = report;
    }

    pub fn snapshot(&self) -> StatusReport {
        let mut report = self
            .status
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        report.ready = self.is_ready();
        report
    }
}

/// The admin routes.
pub fn router(state: AdminState) -> Router {
    let timeout = state.request_timeout;
    Router::new()
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .layer(axum::middleware::from_fn(
            move |req, next: axum::middleware::Next| async move {
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(resp) => resp,
                    Err(_) => {
                        (StatusCode::SERVICE_UNAVAILABLE, "request timed out\n").into_response()
                    }
                }
            },
        ))
        .with_state(state)
}

/// Binds `addr` (with a clear error naming `admin.listen`).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, AdminError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| AdminError::Bind { addr, source })
}

/// The admin server running in the background, as `run` and the demo
/// start it. Dropping it without [`AdminServer::stop`] also stops it
/// (gracefully, in the background).
pub struct AdminServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Binds `addr` (port 0 picks a free one) and serves `state` until stopped.
pub async fn start(addr: SocketAddr, state: AdminState) -> Result<AdminServer, AdminError> {
    let listener = bind(addr).await?;
    let addr = listener.local_addr().map_err(AdminError::LocalAddr)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Ok(AdminServer { addr, stop, task })
}

impl AdminServer {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, for people and scrapers.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops taking connections and lets requests in progress finish;
    /// whatever still runs after `limit` is cut off.
    pub async fn stop(self, limit: Duration) {
        let AdminServer { stop, mut task, .. } = self;
        let _ = stop.send(());
        if tokio::time::timeout(limit, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// Serves until `shutdown` completes, then lets requests in progress
/// finish. HTTP/1.1 only (kubelet probes and Prometheus speak it). A
/// connection that has not sent a whole request head within the request
/// timeout (a slow or stuck client, or one idle between requests) is
/// closed, so no client can hold a connection open for good.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let timeout = state.request_timeout;
    let service = TowerToHyperService::new(router(state));
    let connections = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "the admin server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(timeout)
            .serve_connection(TokioIo::new(stream), service.clone());
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            // A client that goes away or times out is not the server's error.
            let _ = conn.await;
        });
    }
    drop(listener);
    // Idle connections close now; one mid-request within its timeout.
    connections.shutdown().await;
    Ok(())
}

async fn readyz(State(state): State<AdminState>) -> Response {
    if state.shutting_down.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n",
        )
            .into_response()
    } else if !state.synced.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches have not synced yet\n",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = Format::negotiate(accept);
    let body = crate::report::metrics::render(&state.registry, format);
    (
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::VARY, "Accept"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(state): State<AdminState>) -> Json<StatusReport> {
    Json(state.snapshot())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::metrics::Metrics;

    #[tokio::test]
    async fn readyz_follows_sync_and_shutdown_and_metrics_are_served() {
        let (metrics, registry) = Metrics::new();
        metrics.targets.set(3);
        let state = AdminState::new(registry, Duration::from_secs(2));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, state.clone(), async {
            let _ = rx.await;
        }));
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("http://{addr}{path}")).send();

        assert_eq!(get("/livez").await.unwrap().status(), 200);
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        state.set_synced();
        assert_eq!(get("/readyz").await.unwrap().status(), 200);
        let body = get("/metrics").await.unwrap().text().await.unwrap();
        assert!(body.contains("rollback_watchdog_targets 3"), "{body}");
        let report: StatusReport = get("/status").await.unwrap().json().await.unwrap();
        assert!(report.ready);
        state.set_shutting_down();
        assert_eq!(get("/readyz").await.unwrap().status(), 503);
        let _ = tx.send(());
        server.await.unwrap().unwrap();
    }
}
