//! Runs the simulated cluster's behaviour: the deployment controller, the
//! ReplicaSet controller, garbage collection, the kubelet and the
//! Services' endpoints, in one
//! level-based loop over the store. A pass runs on every store change and
//! on a short timer (for time-based transitions such as ready delays and
//! progress deadlines). It must never outlive its handle: dropping the
//! [`ControllerHandle`] stops the loop and closes every pod's and Service's
//! listener.

use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::app::{ScrapeTarget, ScrapeTargets};
use super::behaviour::Behaviours;
use super::clock::SimClock;
use super::deployment::DeploymentController;
use super::kubelet::Kubelet;
use super::objects::ControllerError;
use super::replicaset::{collect_garbage, reconcile_replicasets};
use super::service::Services;
use super::store::Store;

/// Real time between passes when nothing changes.
pub const TICK: Duration = Duration::from_millis(100);
/// Real time a pass waits after a change, so bursts of writes reconcile once.
const DEBOUNCE: Duration = Duration::from_millis(5);

/// The running controllers. Dropping it (or [`ControllerHandle::shutdown`])
/// stops them.
pub struct ControllerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    targets: ScrapeTargets,
    services: Services,
    behaviours: Behaviours,
    clock: SimClock,
}

/// Starts the controllers on `store`. Must be called inside a tokio runtime.
pub fn spawn(store: Store, behaviours: Behaviours, clock: SimClock) -> ControllerHandle {
    let targets = ScrapeTargets::default();
    let (stop, mut stopped) = watch::channel(false);
    let mut deployments = DeploymentController::new(clock);
    // Bursts timed from the sim's start count from here, at its scale.
    behaviours.start_clock(clock);
    let mut kubelet = Kubelet::new(clock, behaviours.clone(), targets.clone());
    let services = Services::new(kubelet.ips());
    let endpoints = services.clone();
    let task = tokio::spawn(async move {
        let mut changes = store.changes();
        loop {
            changes.borrow_and_update();
            if let Err(e) = pass(&store, &mut deployments, &mut kubelet) {
                tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
            }
            // After the kubelet, so a readiness change reaches the
            // Services in the same pass.
            endpoints.reconcile(&store);
            tokio::select! {
                _ = changes.changed() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(TICK) => {}
                _ = stopped.changed() => break,
            }
            if *stopped.borrow() {
                break;
            }
        }
    });
    ControllerHandle {
        stop,
        task: Some(task),
        targets,
        services,
        behaviours,
        clock,
    }
}

fn pass(
    store: &Store,
    deployments: &mut DeploymentController,
    kubelet: &mut Kubelet,
) -> Result<(), ControllerError> {
    deployments.reconcile_all(store)?;
    reconcile_replicasets(store)?;
    collect_garbage(store)?;
    kubelet.reconcile(store)
}

impl ControllerHandle {
    /// Every serving pod, for Prometheus.
    pub fn scrape_targets(&self) -> Vec<ScrapeTarget> {
        self.targets.list()
    }

    /// The targets in Prometheus's HTTP SD format:
    /// `[{"targets": ["127.x.y.z:8080"], "labels": {"namespace": "...", "pod": "..."}}]`.
    pub fn scrape_targets_json(&self) -> Value {
        self.targets.to_http_sd_json()
    }

    /// A live view of the targets that can outlive a borrow of the handle
    /// (for an HTTP SD endpoint).
    pub fn targets(&self) -> ScrapeTargets {
        self.targets.clone()
    }

    /// Every Deployment's Service (see `sim::service`).
    pub fn services(&self) -> Services {
        self.services.clone()
    }

    /// The behaviour table the kubelet and apps read; changes apply at once.
    pub fn behaviours(&self) -> &Behaviours {
        &self.behaviours
    }

    pub fn clock(&self) -> SimClock {
        self.clock
    }

    /// Stops the controllers and waits for the loop to end.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        self.services.clear();
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.services.clear();
    }
}
