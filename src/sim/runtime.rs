//! Runs the simulated cluster's behaviour: the deployment controller, the
//! ReplicaSet controller, garbage collection, the kubelet and the
//! Services' endpoints, in one loop over the store. The first pass looks at
//! every object; later passes only at what the store's change feed names
//! (the objects written and their owners) and at what is due by time (pod
//! ready delays and crash loops, and progress deadlines), so a
//! pass costs O(changes), not O(objects). A pass runs after every store
//! change and on a short timer. It must never outlive its handle: dropping the
//! [`ControllerHandle`] stops the loop and closes every pod's and Service's
//! listener.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::app::{ScrapeTarget, ScrapeTargets};
use super::behaviour::Behaviours;
use super::clock::SimClock;
use super::deployment::DeploymentController;
use super::kubelet::Kubelet;
use super::objects::{controller_owner, ControllerError};
use super::replicaset::{
    collect_garbage, collect_garbage_after, reconcile_replicaset_keys, reconcile_replicasets,
};
use super::service::Services;
use super::store::{Changed, Kind, Store, DEPLOYMENTS, PODS, REPLICASETS};

/// Real time between passes when nothing changes.
pub const TICK: Duration = Duration::from_millis(100);
/// Real time a pass waits after a change, so bursts of writes reconcile once.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Real time between looks for Deployments whose progress deadline has
/// passed (everything else follows writes).
const RECHECK: Duration = Duration::from_secs(1);

/// The running controllers. Dropping it (or [`ControllerHandle::shutdown`])
/// stops them.
pub struct ControllerHandle {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    targets: ScrapeTargets,
    services: Option<Services>,
    behaviours: Behaviours,
    clock: SimClock,
}

/// What the writes since the last pass ask each controller to look at.
#[derive(Default)]
struct Work {
    deployments: BTreeSet<(String, String)>,
    replicasets: BTreeSet<(String, String)>,
    pods: BTreeSet<(String, String)>,
    services: BTreeSet<(String, String)>,
    deleted_owners: BTreeSet<(Kind, String, String)>,
    written: BTreeSet<(Kind, String, String)>,
}

impl Work {
    fn add(&mut self, store: &Store, c: Changed, with_services: bool) {
        let key = (c.namespace.clone(), c.name.clone());
        if c.deleted {
            self.deleted_owners
                .insert((c.kind, c.namespace.clone(), c.uid.clone()));
        } else {
            self.written
                .insert((c.kind, c.namespace.clone(), c.name.clone()));
        }
        if c.kind == DEPLOYMENTS {
            self.deployments.insert(key.clone());
            self.services.insert(key);
        } else if c.kind == REPLICASETS {
            self.replicasets.insert(key);
            for (kind, owner) in c.owners {
                if kind == DEPLOYMENTS.kind {
                    self.deployments
                        .insert((c.namespace.clone(), owner.clone()));
                    self.services.insert((c.namespace.clone(), owner));
                }
            }
        } else if c.kind == PODS {
            self.pods.insert(key);
            for (kind, owner) in c.owners {
                if kind != REPLICASETS.kind {
                    continue;
                }
                if with_services {
                    // The Service of the ReplicaSet's Deployment.
                    if let Some(d) = store
                        .get(&REPLICASETS, &c.namespace, &owner)
                        .ok()
                        .and_then(|rs| controller_owner(&rs))
                    {
                        self.services.insert((c.namespace.clone(), d.name));
                    }
                }
                self.replicasets.insert((c.namespace.clone(), owner));
            }
        }
    }
}

/// Starts the controllers on `store`, every running pod serving HTTP.
/// Must be called inside a tokio runtime.
pub fn spawn(store: Store, behaviours: Behaviours, clock: SimClock) -> ControllerHandle {
    spawn_with(store, behaviours, clock, true)
}

/// [`spawn`]; with `pod_listeners` false, pods serve no HTTP and there
/// are no Services (scale runs).
pub fn spawn_with(
    store: Store,
    behaviours: Behaviours,
    clock: SimClock,
    pod_listeners: bool,
) -> ControllerHandle {
    let targets = ScrapeTargets::default();
    let (stop, mut stopped) = watch::channel(false);
    let mut deployments = DeploymentController::new(clock);
    // Bursts timed from the sim's start count from here, at its scale.
    behaviours.start_clock(clock);
    let mut kubelet = Kubelet::new(clock, behaviours.clone(), targets.clone());
    if !pod_listeners {
        kubelet = kubelet.without_listeners();
    }
    let services = pod_listeners.then(|| Services::new(kubelet.ips()));
    let endpoints = services.clone();
    let task = tokio::spawn(async move {
        // Subscribed before the first pass, so no write falls between.
        let mut feed = store.change_feed();
        let mut changes = store.changes();
        changes.borrow_and_update();
        // The first pass looks at everything; later ones at what changed.
        if let Err(e) = full_pass(&store, &mut deployments, &mut kubelet) {
            tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
        }
        if let Some(endpoints) = &endpoints {
            endpoints.reconcile(&store);
        }
        let mut last_recheck = Instant::now();
        // What the writes so far ask each controller to look at; a stage
        // takes its part, and what later stages write waits for the next
        // pass, as in the level-based loop this replaces.
        let mut pending = Work::default();
        loop {
            tokio::select! {
                _ = changes.changed() => tokio::time::sleep(DEBOUNCE).await,
                _ = tokio::time::sleep(TICK) => {}
                _ = stopped.changed() => break,
            }
            if *stopped.borrow() {
                break;
            }
            changes.borrow_and_update();
            let recheck = last_recheck.elapsed() >= RECHECK;
            if recheck {
                last_recheck = Instant::now();
            }
            let with_services = endpoints.is_some();
            let mut drain = |pending: &mut Work| {
                while let Ok(change) = feed.try_recv() {
                    pending.add(&store, change, with_services);
                }
            };
            drain(&mut pending);
            let keys = std::mem::take(&mut pending.deployments);
            if let Err(e) = deployments.reconcile_keys(&store, &keys, recheck) {
                tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
                pending.deployments.extend(keys);
            }
            // What the deployment controller wrote is reconciled in the
            // same pass, and so on down the chain.
            drain(&mut pending);
            let keys = std::mem::take(&mut pending.replicasets);
            if let Err(e) = reconcile_replicaset_keys(&store, &keys) {
                tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
                pending.replicasets.extend(keys);
            }
            drain(&mut pending);
            let deleted = std::mem::take(&mut pending.deleted_owners);
            let written = std::mem::take(&mut pending.written);
            if let Err(e) = collect_garbage_after(&store, &deleted, &written) {
                tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
                pending.deleted_owners.extend(deleted);
                pending.written.extend(written);
            }
            drain(&mut pending);
            let keys = std::mem::take(&mut pending.pods);
            if let Err(e) = kubelet.sync(&store, &keys) {
                tracing::warn!(error = %e, "sim controllers: pass failed, retrying");
                pending.pods.extend(keys);
            }
            // After the kubelet, so a readiness change reaches the
            // Services in the same pass.
            drain(&mut pending);
            let keys = std::mem::take(&mut pending.services);
            if let Some(endpoints) = &endpoints {
                endpoints.reconcile_keys(&store, &keys);
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

fn full_pass(
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

    /// Every Deployment's Service (see `sim::service`); `None` when pods
    /// serve no HTTP.
    pub fn services(&self) -> Option<Services> {
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
        if let Some(services) = &self.services {
            services.clear();
        }
    }
}

impl Drop for ControllerHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(services) = &self.services {
            services.clear();
        }
    }
}
