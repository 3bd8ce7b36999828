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
    #[error("cannot write the Prometheus config {path}: {source}")]
    PrometheusConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
    let sim = SimCluster::start(SimOptions {
        seed: opts.seed,
        request_log_path: opts.request_log.clone(),
        kubeconfig_path: opts.kubeconfig_out.clone(),
        behaviours,
        clock: SimClock::new(opts.time_scale),
        listen: Some(opts.listen),
        ..Default::default()
    })
    .await?;
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
