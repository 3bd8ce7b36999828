//! The simulated cluster: a loopback Kubernetes API server with a deployment
//! controller, a kubelet, a small app that serves metrics and a Service in
//! front of each Deployment, so the watchdog's real `kube` client can be
//! tested over real HTTP with no real cluster. It must never listen on
//! anything but loopback.

pub mod access;
pub mod api;
pub mod app;
pub mod behaviour;
pub mod burst;
pub mod clock;
pub mod deployment;
pub mod discovery;
pub mod events;
pub mod kubelet;
pub mod lag;
pub mod objects;
pub mod patch;
pub mod prometheus;
pub mod protobuf;
pub mod rbac;
pub mod replicaset;
pub mod reqlog;
pub mod runtime;
pub mod service;
pub mod standalone;
pub mod store;
pub mod table;
pub mod traffic;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use access::{AccessPolicy, AccessRequest, AccessRule, Decision};
pub use api::{ApiError, ApiState, Fault, FaultRule, Faults, ListHold};
pub use app::{ScrapeTarget, ScrapeTargets};
pub use behaviour::{Behaviour, Behaviours, Crash, Traffic};
pub use burst::{Burst, ImageMatch, Span, Starts};
pub use clock::SimClock;
pub use lag::WatchLag;
pub use reqlog::{RequestEntry, RequestLog};
pub use runtime::ControllerHandle;
pub use store::Store;

/// The Deployment `--seed` creates: the runbook's service.
pub const SEED_NAMESPACE: &str = "production";
pub const SEED_DEPLOYMENT: &str = "kailash-kaizen";
pub const SEED_IMAGE: &str = "kailash-kaizen:v1";
/// The watchdog's own namespace (backups, the Lease).
pub const WATCHDOG_NAMESPACE: &str = "rollback-watchdog";

/// How to start a simulated cluster.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// Create the namespaces `production` and `rollback-watchdog` and the
    /// Deployment `production/kailash-kaizen` (3 replicas of
    /// `kailash-kaizen:v1`, container `app`).
    pub seed: bool,
    /// Also append the request log as JSON lines to this file.
    pub request_log_path: Option<PathBuf>,
    /// Where to write the kubeconfig; a temp file kept by the handle if None.
    pub kubeconfig_path: Option<PathBuf>,
    /// Bookmark interval for watches that ask for bookmarks (default 1s).
    pub bookmark_interval: Option<std::time::Duration>,
    /// What each image does (ready delay, crash mode, error ratio,
    /// latency); the built-in suffix table by default.
    pub behaviours: Behaviours,
    /// How fast sim time runs (durations in specs are divided by it).
    pub clock: SimClock,
    /// Run no controllers: a bare API server (for API-only tests).
    pub api_only: bool,
    /// Where the API server listens; `127.0.0.1:0` (a free port) if None.
    /// Only loopback addresses are accepted.
    pub listen: Option<SocketAddr>,
    /// Delays of watch events per kind, so a client's caches see the
    /// events of two kinds out of order; none by default.
    pub watch_lag: Option<WatchLag>,
    /// Scale runs: pods serve no HTTP listener of their own (no socket per
    /// pod, no scrape targets, no metrics) and Deployments get no Service,
    /// so tens of thousands of pods fit in one process.
    pub no_pod_listeners: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("cannot bind the simulated API server: {0}")]
    Bind(#[source] std::io::Error),
    #[error("the simulated cluster listens only on loopback (127.0.0.0/8 or ::1), not on {0}; use e.g. 127.0.0.1:6443")]
    NotLoopback(SocketAddr),
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
    #[error("cannot bind the simulated cluster's control endpoint: {0}")]
    Control(#[source] std::io::Error),
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
    controllers: Option<ControllerHandle>,
    behaviours: Behaviours,
    clock: SimClock,
    targets: ScrapeTargets,
    services: Option<service::Services>,
    control_addr: SocketAddr,
    control: Option<JoinHandle<()>>,
}

impl SimCluster {
    /// Binds `127.0.0.1:0`, writes a kubeconfig and starts serving.
    pub async fn start(opts: SimOptions) -> Result<SimCluster, SimError> {
        let listen = opts
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        if !listen.ip().is_loopback() {
            return Err(SimError::NotLoopback(listen));
        }
        let store = Store::default();
        let log = match &opts.request_log_path {
            Some(p) => RequestLog::with_file(p)?,
            None => RequestLog::new(),
        };
        let mut state = ApiState::new(store.clone()).with_request_log(log);
        if let Some(every) = opts.bookmark_interval {
            state = state.with_bookmark_interval(every);
        }
        if let Some(lag) = opts.watch_lag.clone() {
            state = state.with_watch_lag(lag);
        }

        for ns in ["default", "kube-system"] {
            store
                .create(&store::NAMESPACES, "", json!({"metadata": {"name": ns}}))
                .map_err(SimError::Seed)?;
        }
        if opts.seed {
            seed(&store).map_err(SimError::Seed)?;
        }

        let controllers = if opts.api_only {
            None
        } else {
            Some(runtime::spawn_with(
                store.clone(),
                opts.behaviours.clone(),
                opts.clock,
                !opts.no_pod_listeners,
            ))
        };
        let targets = controllers
            .as_ref()
            .map(ControllerHandle::targets)
            .unwrap_or_default();
        let services = controllers.as_ref().and_then(ControllerHandle::services);
        let (control_addr, control) = serve_control(targets.clone())
            .await
            .map_err(SimError::Control)?;

        let listener = tokio::net::TcpListener::bind(listen)
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
            controllers,
            behaviours: opts.behaviours,
            clock: opts.clock,
            targets,
            services,
            control_addr,
            control: Some(control),
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

    /// The behaviour table; changing it changes what running pods do.
    pub fn behaviours(&self) -> &Behaviours {
        &self.behaviours
    }

    /// How fast sim time runs: `clock().sim(real)` turns a real duration
    /// into the sim time a behaviour or a burst is written in.
    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// Every app pod that serves metrics now, with `namespace` and `pod`
    /// labels.
    pub fn scrape_targets(&self) -> Vec<ScrapeTarget> {
        self.targets.list()
    }

    /// `http://127.x.y.z:PORT` of the Service in front of Deployment
    /// `namespace/name` (see `sim::service`): a loopback address of its own,
    /// on the Deployment's first container port (8080 in the seed),
    /// balancing each new connection over the Ready pods of all its
    /// revisions, and refusing connections while none is Ready. `None` when
    /// the Deployment does not exist, or the sim runs no controllers or no
    /// pod listeners (`SimOptions::no_pod_listeners`). The
    /// address stays the same for the life of the sim.
    pub fn service_url(&self, namespace: &str, name: &str) -> Option<String> {
        self.services.as_ref()?.url(self.store(), namespace, name)
    }

    /// A live handle on the same list (clones share it), for a service
    /// discovery endpoint shared by several sims.
    pub fn scrape_target_handle(&self) -> ScrapeTargets {
        self.targets.clone()
    }

    /// The URL of the Prometheus HTTP service-discovery endpoint that lists
    /// [`Self::scrape_targets`].
    pub fn scrape_sd_url(&self) -> String {
        format!("http://{}/scrape-targets", self.control_addr)
    }

    /// A complete `prometheus.yml` that scrapes exactly the live app pods.
    pub fn prometheus_config(&self, scrape_interval: std::time::Duration) -> String {
        prometheus::scrape_config(&self.scrape_sd_url(), scrape_interval)
    }

    pub fn api_state(&self) -> &ApiState {
        &self.state
    }

    /// The API server's fault switchboard: add rules, read the counts.
    pub fn faults(&self) -> &Faults {
        self.state.faults()
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

    /// Stops the server, the controllers and every app pod.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(controllers) = self.controllers.take() {
            controllers.shutdown().await;
        }
        if let Some(server) = self.server.take() {
            // The server task's own result does not matter once stopping.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), server).await;
        }
    }

    fn stop(&mut self) {
        self.state.close_watches();
        if let Some(control) = self.control.take() {
            control.abort();
        }
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

/// Creates the seeded namespaces and `production/kailash-kaizen`.
fn seed(store: &Store) -> Result<(), store::StoreError> {
    for ns in [SEED_NAMESPACE, WATCHDOG_NAMESPACE] {
        store.create(&store::NAMESPACES, "", json!({"metadata": {"name": ns}}))?;
    }
    let mut deployment = seed_deployment(SEED_DEPLOYMENT, SEED_IMAGE, 3);
    deployment::apply_deployment_defaults(&mut deployment);
    store.create(&store::DEPLOYMENTS, SEED_NAMESPACE, deployment)?;
    Ok(())
}

/// A Deployment as a team would write it: one container `app` serving on
/// 8080, labelled `app=<name>`.
pub fn seed_deployment(name: &str, image: &str, replicas: i32) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": "app",
                    "image": image,
                    "ports": [{"name": "http", "containerPort": 8080}],
                }]},
            },
        },
    })
}

/// The sim's own control endpoint (not part of the Kubernetes API): the
/// Prometheus HTTP service-discovery list of app pods.
async fn serve_control(targets: ScrapeTargets) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/scrape-targets",
        axum::routing::get(move || {
            let targets = targets.clone();
            async move { axum::Json(targets.to_http_sd_json()) }
        }),
    );
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(error = %e, "sim control endpoint stopped");
        }
    });
    Ok((addr, task))
}
