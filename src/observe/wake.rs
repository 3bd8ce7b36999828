//! Wake-ups: the watch events that call for evaluating a target at once
//! instead of at the next tick. A pod of a Deployment entering a crash
//! state (a container waiting for any reason but its creation, terminated,
//! or restarted), a Deployment whose new spec the controller has not acted
//! on yet or whose rollout missed its progress deadline, and a ReplicaSet
//! the controller has not acted on yet (a new revision appearing).
//!
//! The watchers ([`crate::observe::cache`]) offer every applied object;
//! what wakes is collected in a set (one entry per Deployment or per pod
//! template, so a burst of events is one entry) and the run loop is
//! notified. It takes the set after a short debounce
//! ([`crate::runtime::daemon`]). The set is bounded by the number of
//! watched Deployments and revisions, whatever the rate of events.

use std::collections::HashSet;
use std::sync::Mutex;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use kube::ResourceExt;
use tokio::sync::Notify;

use crate::k8s::keys::POD_TEMPLATE_HASH;

/// What a watch event asks to evaluate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Wake {
    /// The Deployment of this namespace and name.
    Deployment { namespace: String, name: String },
    /// The Deployment whose revision has this `pod-template-hash`.
    Pods { namespace: String, hash: String },
}

/// An object a watch event may wake a target for.
pub trait Wakes {
    /// What to evaluate at once after this object changed, if anything.
    fn wake(&self) -> Option<Wake>;
}

/// Waiting reasons of a container that is only starting.
const STARTING: [&str; 2] = ["ContainerCreating", "PodInitializing"];

fn crash_like(c: &ContainerStatus) -> bool {
    let state = c.state.as_ref();
    c.restart_count > 0
        || state.is_some_and(|s| s.terminated.is_some())
        || state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .is_some_and(|r| !STARTING.contains(&r))
}

impl Wakes for Pod {
    fn wake(&self) -> Option<Wake> {
        let status = self.status.as_ref()?;
        let crashing = status
            .container_statuses
            .iter()
            .flatten()
            .chain(status.init_container_statuses.iter().flatten())
            .any(crash_like);
        let hash = self.labels().get(POD_TEMPLATE_HASH)?;
        crashing.then(|| Wake::Pods {
            namespace: self.namespace().unwrap_or_default(),
            hash: hash.clone(),
        })
    }
}

impl Wakes for Deployment {
    fn wake(&self) -> Option<Wake> {
        let status = self.status.as_ref();
        // A new spec of an existing Deployment (a new Deployment, at
        // generation 1, has no revision to judge yet: a bulk apply of
        // thousands wakes nothing).
        let unobserved = self.metadata.generation > Some(1)
            && status.and_then(|s| s.observed_generation) < self.metadata.generation;
        let deadline = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c.type_ == "Progressing"
                        && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                })
            });
        (unobserved || deadline).then(|| Wake::Deployment {
            namespace: self.namespace().unwrap_or_default(),
            name: self.name_any(),
        })
    }
}

impl Wakes for ReplicaSet {
    fn wake(&self) -> Option<Wake> {
        // A new ReplicaSet, other than a new Deployment's first.
        let first = self
            .annotations()
            .get(crate::k8s::keys::REVISION)
            .is_none_or(|r| r == "1");
        let unobserved = !first
            && self.status.as_ref().and_then(|s| s.observed_generation) < self.metadata.generation;
        let owner = self
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true) && o.kind == "Deployment")?;
        unobserved.then(|| Wake::Deployment {
            namespace: self.namespace().unwrap_or_default(),
            name: owner.name.clone(),
        })
    }
}

/// The wake-ups not yet taken, and the run loop's doorbell.
#[derive(Debug, Default)]
pub struct Wakeups {
    pending: Mutex<HashSet<Wake>>,
    notify: Notify,
}

impl Wakeups {
    /// Records what `obj` wakes, if anything, and rings.
    pub fn offer<K: Wakes>(&self, obj: &K) {
        if let Some(wake) = obj.wake() {
            self.push(wake);
        }
    }

    pub fn push(&self, wake: Wake) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.insert(wake);
        }
        self.notify.notify_one();
    }

    /// Completes once something was offered since the last call (at once
    /// if it was while nobody waited).
    pub async fn rung(&self) {
        self.notify.notified().await;
    }

    /// Everything offered so far, emptying the set.
    pub fn take(&self) -> HashSet<Wake> {
        self.pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(container: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "web-h2-a", "namespace": "prod", "labels": {"pod-template-hash": "h2"}},
            "status": {"phase": "Running", "containerStatuses": [container]},
        }))
        .expect("test pod")
    }

    fn container(restarts: i32, state: serde_json::Value) -> serde_json::Value {
        json!({"name": "app", "image": "web:v2", "imageID": "", "ready": false,
               "restartCount": restarts, "state": state})
    }

    #[test]
    fn a_pod_wakes_its_revision_when_it_crashes_and_not_while_it_starts() {
        let woke = Some(Wake::Pods {
            namespace: "prod".into(),
            hash: "h2".into(),
        });
        let creating = container(0, json!({"waiting": {"reason": "ContainerCreating"}}));
        assert_eq!(pod(creating).wake(), None);
        let running = container(0, json!({"running": {}}));
        assert_eq!(pod(running).wake(), None);
        let backoff = container(1, json!({"waiting": {"reason": "CrashLoopBackOff"}}));
        assert_eq!(pod(backoff).wake(), woke);
        let pull = container(0, json!({"waiting": {"reason": "ErrImagePull"}}));
        assert_eq!(pod(pull).wake(), woke);
        let oom = container(
            0,
            json!({"terminated": {"reason": "OOMKilled", "exitCode": 137}}),
        );
        assert_eq!(pod(oom).wake(), woke);
    }

    #[test]
    fn a_deployment_wakes_on_a_new_spec_or_a_missed_deadline_only() {
        let d = |generation: i64, observed: i64, reason: &str| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "prod", "generation": generation},
                "status": {"observedGeneration": observed, "conditions": [
                    {"type": "Progressing", "status": "True", "reason": reason}]},
            }))
            .expect("test deployment")
        };
        let woke = Some(Wake::Deployment {
            namespace: "prod".into(),
            name: "web".into(),
        });
        assert_eq!(d(2, 2, "NewReplicaSetAvailable").wake(), None);
        assert_eq!(
            d(1, 0, "NewReplicaSetAvailable").wake(),
            None,
            "a new Deployment"
        );
        assert_eq!(d(3, 2, "NewReplicaSetAvailable").wake(), woke);
        assert_eq!(d(2, 2, "ProgressDeadlineExceeded").wake(), woke);
    }

    #[test]
    fn wakeups_coalesce_and_are_taken_once() {
        let w = Wakeups::default();
        let wake = Wake::Pods {
            namespace: "prod".into(),
            hash: "h2".into(),
        };
        for _ in 0..100 {
            w.push(wake.clone());
        }
        assert_eq!(w.take(), HashSet::from([wake]));
        assert!(w.take().is_empty());
    }
}
