//! `rollback-watchdog sim`: the simulated cluster on its own until Ctrl-C,
//! so a person can explore it with kubectl and `rollback-watchdog run` can
//! watch it like a real cluster. It writes a kubeconfig, a Prometheus scrape
//! config and the request log where asked, and never binds beyond loopback.

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{Behaviours, SimClock, SimCluster, SimError, SimOptions};

/// What `rollback-watchdog sim` was asked to do.
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    pub listen: SocketAddr,
    pub kubeconfig_out: Option<PathBuf>,
    pub prometheus_config_out: Option<PathBuf>,
    pub request_log: Option<PathBuf>,
    pub behaviours: Option<PathBuf>,
    pub seed: bool,
    pub time_scale: f64,
    /// The scrape interval written into the Prometheus config.
    pub scrape_interval: Duration,
    /// Pods serve no HTTP listener (`SimOptions::no_pod_listeners`).
    pub no_pod_listeners: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    #[error(transparent)]
    Sim(#[from] SimError),
    #[error("the behaviour table {path}: {source}")]
    Behaviours {
        path: PathBuf,
        #[source]
        source: super::behaviour::BehaviourError,
    },
    #[error("{FAULTS_ENV}: {0}")]
    Faults(String),
    #[error("cannot write the Prometheus config {path}: {source}")]
    PrometheusConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The environment variable that switches faults on in `sim`: rules
/// separated by commas, each `VERB:RESOURCE:FAULT:FRACTION` (see
/// [`super::FaultRule`]), e.g. `SIM_FAULTS=*:*:500:0.05,watch:*:drop=5s:0.2`.
pub const FAULTS_ENV: &str = "SIM_FAULTS";

/// The fault rules `SIM_FAULTS` asks for; none when it is unset or empty.
pub fn faults_from_env() -> Result<Vec<super::FaultRule>, StandaloneError> {
    let Ok(text) = std::env::var(FAULTS_ENV) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .filter(|r| !r.trim().is_empty())
        .map(|r| r.parse().map_err(StandaloneError::Faults))
        .collect()
}

/// Starts the simulated cluster, prints where everything is on `out`, and
/// runs until `shutdown` completes.
pub async fn run(
    opts: StandaloneOptions,
    out: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()>,
) -> Result<(), StandaloneError> {
    let behaviours = match &opts.behaviours {
        Some(path) => {
            Behaviours::from_file(path).map_err(|source| StandaloneError::Behaviours {
                path: path.clone(),
                source,
            })?
        }
        None => Behaviours::builtin(),
    };
    let faults = faults_from_env()?;
    let sim = SimCluster::start(SimOptions {
        seed: opts.seed,
        request_log_path: opts.request_log.clone(),
        kubeconfig_path: opts.kubeconfig_out.clone(),
        behaviours,
        clock: SimClock::new(opts.time_scale),
        listen: Some(opts.listen),
        no_pod_listeners: opts.no_pod_listeners,
        ..Default::default()
    })
    .await?;
    for rule in &faults {
        sim.faults().add(rule.clone());
    }
    if let Some(path) = &opts.prometheus_config_out {
        std::fs::write(path, sim.prometheus_config(opts.scrape_interval)).map_err(|source| {
            StandaloneError::PrometheusConfig {
                path: path.clone(),
                source,
            }
        })?;
    }
    // What is printed is for a person; a closed stdout must not stop the sim.
    let _ = writeln!(out, "simulated cluster: API server at {}", sim.url());
    let _ = writeln!(
        out,
        "kubeconfig:        {}   (export KUBECONFIG={})",
        sim.kubeconfig_path().display(),
        sim.kubeconfig_path().display()
    );
    let _ = writeln!(out, "scrape targets:    {}", sim.scrape_sd_url());
    if let Some(path) = &opts.prometheus_config_out {
        let _ = writeln!(
            out,
            "prometheus config: {}   (prometheus --config.file={})",
            path.display(),
            path.display()
        );
    }
    if !faults.is_empty() {
        let _ = writeln!(out, "faults ({FAULTS_ENV}): {} rule(s)", faults.len());
    }
    if let Some(path) = &opts.request_log {
        let _ = writeln!(out, "request log:       {}", path.display());
    }
    if opts.seed {
        let _ = writeln!(
            out,
            "seeded:            namespaces {}, {}; deployment {}/{} ({} x3)",
            super::SEED_NAMESPACE,
            super::WATCHDOG_NAMESPACE,
            super::SEED_NAMESPACE,
            super::SEED_DEPLOYMENT,
            super::SEED_IMAGE
        );
    }
    if opts.no_pod_listeners {
        let _ = writeln!(
            out,
            "pod listeners:     none (pods serve no HTTP, Deployments have no Service)"
        );
    }
    let _ = writeln!(
        out,
        "time scale:        {}x; press Ctrl-C to stop",
        opts.time_scale
    );
    let _ = out.flush();
    shutdown.await;
    tracing::info!("stopping the simulated cluster");
    sim.shutdown().await;
    Ok(())
}
