//! `rollback-watchdog demo`: the whole story on the embedded simulated
//! cluster, in under a minute. It runs the real run loop, judge, rollback
//! pipeline, notifier and admin server (nothing is faked for the show)
//! against the sim, a real Prometheus when one is installed, and a loopback
//! Slack receiver, and prints what happens as a timeline. It must never reach beyond
//! 127.0.0.1, and must leave nothing running when it returns, whatever the
//! outcome: every wait is bounded.
//!
//! `story` tells it step by step: the `stage` (cluster, Prometheus, Slack
//! receiver), the `watchdog`, then each tick as the `watcher` sees it on the
//! `timeline` while the `feeds` show the audit log and the Slack messages,
//! and the `summary` reads back what a user would check.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::ConfigError;
use crate::pipeline::RollbackError;
use crate::report::notify::{Notifier, NotifyError};
use crate::runtime::admin::AdminServer;
use crate::runtime::app::AppError;
use crate::runtime::daemon::DaemonError;
use crate::sim::prometheus::PrometheusServer;
use crate::sim::{SimCluster, SimError};

mod feeds;
mod slack;
mod stage;
mod story;
mod summary;
mod timeline;
mod watchdog;
mod watcher;

pub use slack::render_slack;
use slack::Receiver;
use timeline::Timeline;

/// Set to `1` (or pass `--no-prometheus`) to run the demo as if Prometheus
/// were not installed: the pod and health signals only, and a crash-looping
/// v2 instead of one that answers errors.
pub const NO_PROMETHEUS_ENV: &str = "ROLLBACK_WATCHDOG_DEMO_NO_PROMETHEUS";

/// The log filter when neither `--log` nor `RUST_LOG` says otherwise: the
/// timeline on stdout tells the story, stderr only carries trouble. The run
/// loop's own warnings (each failing signal on each tick, the verdict) are
/// exactly what the timeline shows, so they are left out.
pub const LOG_FILTER: &str = "warn,rollback_watchdog::runtime::daemon=error";

/// The bad release when Prometheus measures errors: 30 % of requests 5xx.
pub const V2_ERRORS: &str = "kailash-kaizen:v2-errors";
/// The bad release without Prometheus: every pod in CrashLoopBackOff.
pub const V2_CRASH: &str = "kailash-kaizen:v2-crash";

/// How much faster than real time the simulated cluster runs.
const TIME_SCALE: f64 = 20.0;
/// Short enough for v1 to become known-good quickly, long enough for the
/// bad v2 to reach `failure_threshold` consecutive failing ticks inside it
/// (Prometheus needs a few scrapes of the new pods before the error ratio
/// has a value: about 6 s, then 3 ticks).
const WATCH_WINDOW: &str = "15s";
const TICK: Duration = Duration::from_secs(1);
/// How often the audit log, the Slack receiver and the delivery outcomes
/// are read, so each shows up on the timeline as it happens.
const FEED_POLL: Duration = Duration::from_millis(100);
/// How often the main loop checks for a finished pipeline between ticks.
const POLL: Duration = Duration::from_millis(200);
const SYNC_LIMIT: Duration = Duration::from_secs(30);
const KNOWN_GOOD_LIMIT: Duration = Duration::from_secs(30);
/// From the deploy of v2 to a finished (verified) rollback.
const ROLLBACK_LIMIT: Duration = Duration::from_secs(50);
/// One tick of the loop may not take longer than this.
const TICK_LIMIT: Duration = Duration::from_secs(10);
/// How long the demo waits for Slack messages still in flight.
const DELIVERY_LIMIT: Duration = Duration::from_secs(5);
/// A safety net over the whole story; each step has its own bound.
const OVERALL_LIMIT: Duration = Duration::from_secs(150);
/// Prometheus is killed after this whatever happens (its guard also kills
/// it as soon as this process is gone).
const PROMETHEUS_LIFETIME: Duration = Duration::from_secs(180);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the simulated cluster did not start: {0}")]
    Sim(#[from] SimError),
    #[error("cannot start the local Slack receiver on 127.0.0.1: {0}")]
    Receiver(#[source] std::io::Error),
    #[error("cannot start the watchdog's admin server on 127.0.0.1: {0}")]
    Admin(#[source] std::io::Error),
    #[error("cannot create the demo's temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("the demo's own config does not load (a bug in the demo): {0}")]
    Config(#[source] ConfigError),
    #[error("cannot start the notifier: {0}")]
    Notify(#[source] NotifyError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot build the rollback pipeline: {0}")]
    Pipeline(#[source] RollbackError),
    #[error(transparent)]
    Watchdog(AppError),
    #[error("the simulated API server refused to {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the simulated API server did not answer within {limit:?} while trying to {what}")]
    KubeTimeout { what: String, limit: Duration },
    #[error("{0}")]
    TimedOut(String),
    #[error("the rollback did not succeed: {result} ({why}); steps: {steps}")]
    NotRolledBack {
        result: crate::pipeline::RollbackResult,
        why: String,
        steps: String,
    },
    #[error("the rollback reported success, but {0}")]
    NotVerified(String),
}

impl From<AppError> for DemoError {
    /// The demo's own words for what it assembles itself.
    fn from(e: AppError) -> DemoError {
        match e {
            AppError::Notify(e) => DemoError::Notify(e),
            AppError::Pipeline(e) => DemoError::Pipeline(e),
            AppError::Daemon(e) => DemoError::Daemon(e),
            other => DemoError::Watchdog(other),
        }
    }
}

/// What the demo can be told.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Behave as if Prometheus were not installed.
    pub no_prometheus: bool,
}

/// What the demo showed, for callers that want more than the exit code.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub with_prometheus: bool,
    pub bad_image: String,
    pub time_to_detect: Option<f64>,
    pub time_to_recover: Option<f64>,
    pub backup: String,
    pub audit_log: PathBuf,
    pub final_image: String,
    pub slack_messages: usize,
    /// The rollback counter's line as `/metrics` served it at the end.
    pub rollbacks_metric: String,
    /// The whole `/metrics` scrape, kept next to the audit log.
    pub metrics_file: PathBuf,
}

/// Runs the demo, printing the timeline on `out`. Ok only when the bad
/// revision was rolled back and the rollback verified. Prometheus, the
/// Slack receiver and the simulated cluster are stopped before it returns.
pub async fn run(
    options: DemoOptions,
    out: Box<dyn Write + Send>,
) -> Result<DemoReport, DemoError> {
    let tl = Timeline::new(out);
    tl.plain("rollback-watchdog demo: a bad deploy is detected, rolled back, verified and told to on-call,");
    tl.plain("on a simulated cluster, by the real run loop and pipeline. Times are seconds since the start.");
    tl.plain("");
    let mut parts = Parts::default();
    let result =
        match tokio::time::timeout(OVERALL_LIMIT, story::tell(&tl, &options, &mut parts)).await {
            Ok(r) => r,
            Err(_) => Err(DemoError::TimedOut(format!(
                "the demo did not finish within {}s",
                OVERALL_LIMIT.as_secs()
            ))),
        };
    parts.shutdown().await;
    match &result {
        Ok(_) => tl.plain("\nEverything the demo started has stopped. Exit code 0."),
        Err(_) => tl.plain("\nEverything the demo started has stopped."),
    }
    result
}

/// What must be stopped at the end, whatever happened.
#[derive(Default)]
struct Parts {
    sim: Option<SimCluster>,
    prometheus: Option<PrometheusServer>,
    receiver: Option<Receiver>,
    notifier: Option<Arc<Notifier>>,
    admin: Option<AdminServer>,
}

impl Parts {
    async fn shutdown(&mut self) {
        if let Some(n) = self.notifier.take() {
            n.shutdown(Duration::from_secs(2)).await;
        }
        if let Some(a) = self.admin.take() {
            a.stop(Duration::from_secs(3)).await;
        }
        if let Some(mut p) = self.prometheus.take() {
            p.stop().await;
        }
        if let Some(r) = self.receiver.take() {
            r.stop().await;
        }
        if let Some(sim) = self.sim.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), sim.shutdown()).await;
        }
    }
}

/// A call to the simulated API server, bounded so no step can hang on it.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, DemoError> {
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DemoError::Kube {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(DemoError::KubeTimeout {
            what: what.to_string(),
            limit,
        }),
    }
}

/// A poisoned lock still holds what the timeline needs: take it anyway.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
