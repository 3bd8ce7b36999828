//! The simulated cluster: a loopback Kubernetes API server with a deployment
//! controller, a kubelet and a small app that serves metrics, so the
//! watchdog's real `kube` client can be tested over real HTTP with no real
//! cluster. It must never listen on anything but loopback.

pub mod access;
pub mod api;
pub mod discovery;
pub mod patch;
pub mod protobuf;
pub mod reqlog;
pub mod store;
pub mod table;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use access::{AccessPolicy, AccessRequest, AccessRule, Decision};
pub use api::{ApiError, ApiState};
pub use reqlog::{RequestEntry, RequestLog};
pub use store::Store;

/// How to start a simulated cluster.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Create the namespaces `production` and `rollback-watchdog` (and,
    /// once the controller lands, the seeded Deployment).
    pub seed: bool,
    /// Also append the request log as JSON lines to this file.
    pub request_log_path: Option<PathBuf>,
    /// Where to write the kubeconfig; a temp file kept by the handle if None.
    pub kubeconfig_path: Option<PathBuf>,
    /// Bookmark interval for watches that ask for bookmarks (default 1s).
    pub bookmark_interval: Option<std::time::Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the simulated API server to 127.0.0.1: {0}")]
    Bind(#[source] std::io::Error),
    #[error("cannot write the kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    RequestLog(#[from] reqlog::RequestLogError),
    #[error("cannot seed the simulated cluster: {0}")]
    Seed(#[source] store::StoreError),
    #[error("cannot build a kube client for the simulated cluster: {0}")]
    Client(String),
}

/// A running simulated cluster. Dropping it stops the server.
pub struct SimCluster {
    addr: SocketAddr,
    state: ApiState,
    kubeconfig_path: PathBuf,
    /// Keeps the temp kubeconfig alive as long as the handle.
    _kubeconfig_file: Option<tempfile::NamedTempFile>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl SimCluster {
    /// Binds `127.0.0.1:0`, writes a kubeconfig and starts serving.
    pub async fn start(opts: SimOptions) -> Result<SimCluster, SimError> {
        let store = Store::default();
        let log = match &opts.request_log_path {
            Some(p) => RequestLog::with_file(p)?,
            None => RequestLog::new(),
        };
        let mut state = ApiState::new(store.clone()).with_request_log(log);
        if let Some(every) = opts.bookmark_interval {
            state = state.with_bookmark_interval(every);
        }

        if opts.seed {
            for ns in ["production", "rollback-watchdog"] {
                store
                    .create(&store::NAMESPACES, "", json!({"metadata": {"name": ns}}))
                    .map_err(SimError::Seed)?;
            }
        }
        for ns in ["default", "kube-system"] {
            store
                .create(&store::NAMESPACES, "", json!({"metadata": {"name": ns}}))
                .map_err(SimError::Seed)?;
        }

        // ---- controllers go here -------------------------------------
        // The deployment controller, kubelet and app (src/sim/controller.rs,
        // kubelet.rs, app.rs) are spawned here over `store.clone()`, driven
        // by `opts.behaviours` and `opts.time_scale`, and the seeded
        // Deployment `production/kailash-kaizen` is created when `opts.seed`.
        // ----------------------------------------------------------------

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(SimError::Bind)?;
        let addr = listener.local_addr().map_err(SimError::Bind)?;
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(api::serve(listener, state.clone(), async move {
            // A dropped sender also means stop.
            let _ = rx.await;
        }));

        let url = format!("http://{addr}");
        let kubeconfig = kubeconfig_json(&url);
        let (kubeconfig_path, file) = match &opts.kubeconfig_path {
            Some(p) => {
                std::fs::write(p, kubeconfig.as_bytes()).map_err(|source| {
                    SimError::Kubeconfig {
                        path: p.display().to_string(),
                        source,
                    }
                })?;
                (p.clone(), None)
            }
            None => {
                let write = || -> std::io::Result<tempfile::NamedTempFile> {
                    let mut f = tempfile::Builder::new()
                        .prefix("sim-kubeconfig-")
                        .suffix(".yaml")
                        .tempfile()?;
                    std::io::Write::write_all(&mut f, kubeconfig.as_bytes())?;
                    Ok(f)
                };
                let f = write().map_err(|source| SimError::Kubeconfig {
                    path: "<temp file>".into(),
                    source,
                })?;
                (f.path().to_path_buf(), Some(f))
            }
        };
        Ok(SimCluster {
            addr,
            state,
            kubeconfig_path,
            _kubeconfig_file: file,
            shutdown: Some(tx),
            server: Some(server),
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A kubeconfig (JSON, which is valid YAML) for kubectl and kube.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    pub fn store(&self) -> &Store {
        self.state.store()
    }

    pub fn request_log(&self) -> &RequestLog {
        self.state.request_log()
    }

    pub fn access(&self) -> &AccessPolicy {
        self.state.access()
    }

    pub fn api_state(&self) -> &ApiState {
        &self.state
    }

    /// Ends every open watch (clients re-watch; see `ApiState::close_watches`).
    pub fn close_watches(&self) {
        self.state.close_watches();
    }

    /// A `kube::Client` for the sim, with the default namespace `default`.
    pub async fn client(&self) -> Result<kube::Client, SimError> {
        let url: axum::http::Uri = self
            .url()
            .parse()
            .map_err(|e: axum::http::uri::InvalidUri| SimError::Client(e.to_string()))?;
        let config = kube::Config::new(url);
        kube::Client::try_from(config).map_err(|e| SimError::Client(e.to_string()))
    }

    /// Stops the server and ends open watches.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(server) = self.server.take() {
            // The server task's own result does not matter once stopping.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
    }

    fn stop(&mut self) {
        self.state.close_watches();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        self.stop();
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

fn kubeconfig_json(url: &str) -> String {
    let doc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "sim", "cluster": {"server": url}}],
        "users": [{"name": "sim-user", "user": {}}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim-user", "namespace": "default"}}],
        "current-context": "sim",
        "preferences": {},
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}
