//! Bounded API reads shared by the steps and the CLI, and the
//! verification checklist built from them.

use super::*;

/// The pipeline's reads of the cluster, each bounded by a timeout. Also
/// what `history` and `validate` use.
#[derive(Clone)]
pub struct Reader {
    client: Client,
    timeout: Duration,
}

impl Reader {
    pub fn new(client: Client, timeout: Duration) -> Self {
        Reader { client, timeout }
    }

    pub(super) fn api_error(
        &self,
        target: String,
        what: &str,
        e: Result<kube::Error, ()>,
    ) -> RollbackError {
        match e {
            Ok(source) => RollbackError::Api {
                target,
                what: what.to_owned(),
                source,
            },
            Err(()) => RollbackError::Timeout {
                target,
                what: what.to_owned(),
                timeout: self.timeout,
            },
        }
    }

    /// The Deployment, None when it does not exist.
    pub async fn deployment(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<Option<Deployment>, RollbackError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        match tokio::time::timeout(self.timeout, api.get_opt(name)).await {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(self.api_error(
                DeploymentKey::new(ns, name).to_string(),
                "cannot read the Deployment",
                Ok(e),
            )),
            Err(_) => Err(self.api_error(
                DeploymentKey::new(ns, name).to_string(),
                "cannot read the Deployment",
                Err(()),
            )),
        }
    }

    /// The ReplicaSets matching the Deployment's selector (ownership is
    /// checked by the callers).
    pub async fn replicasets(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>, RollbackError> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let lp = ListParams::default().labels(&selector_of(d));
        match tokio::time::timeout(self.timeout, api.list(&lp)).await {
            Ok(Ok(list)) => Ok(list.items.into_iter().map(Arc::new).collect()),
            Ok(Err(e)) => Err(self.api_error(target_of(d), "cannot list its ReplicaSets", Ok(e))),
            Err(_) => Err(self.api_error(target_of(d), "cannot list its ReplicaSets", Err(()))),
        }
    }

    /// The pods carrying this `pod-template-hash`.
    pub async fn pods(&self, d: &Deployment, hash: &str) -> Result<Vec<Pod>, RollbackError> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let lp = ListParams::default().labels(&format!("{}={hash}", keys::POD_TEMPLATE_HASH));
        match tokio::time::timeout(self.timeout, api.list(&lp)).await {
            Ok(Ok(list)) => Ok(list.items),
            Ok(Err(e)) => Err(self.api_error(target_of(d), "cannot list its pods", Ok(e))),
            Err(_) => Err(self.api_error(target_of(d), "cannot list its pods", Err(()))),
        }
    }

    /// One round of the runbook's measurable checklist on the current
    /// revision of `d`: its pods running and ready, and every configured
    /// signal (health, version, error ratio, latency, rules, pod states).
    pub async fn checklist(
        &self,
        d: &Deployment,
        switched: jiff::Timestamp,
        policy: &Policy,
        signals: Option<&Signals>,
        now: jiff::Timestamp,
    ) -> Result<Checks, RollbackError> {
        let target = target_of(d);
        let replicasets = self.replicasets(d).await?;
        let Rollout::Known { current, .. } = revision::rollout(d, &replicasets) else {
            let line = format!("{target}: the current revision is not known yet");
            return Ok(Checks {
                results: Vec::new(),
                ready_ok: false,
                ready_line: line.clone(),
                lines: vec![line],
            });
        };
        let pods = self.pods(d, &current.pod_template_hash).await?;
        let snapshot = Snapshot::from_objects([], [], pods);
        let pods: Vec<Pod> =
            revision::pods_of(&snapshot, &d.namespace().unwrap_or_default(), &current)
                .iter()
                .map(|p| Pod::clone(p))
                .collect();
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = pods.iter().filter(|p| pod_running_and_ready(p)).count() as i32;
        let ready_ok = ready >= want;
        let ready_line = format!(
            "{ready}/{want} pods of revision {} running and ready",
            current.number
        );
        let subject = Subject {
            namespace: d.namespace().unwrap_or_default(),
            deployment: d.name_any(),
            revision: current.number,
            pod_template_hash: current.pod_template_hash.clone(),
            images: current.images.clone(),
            rollout_started: switched,
            // Before a rollback the older revision is the bad one: no baseline.
            baseline: None,
            pods,
            progress_deadline_exceeded: revision::progress_deadline_exceeded(d),
            ..Subject::default()
        };
        let results = match signals {
            Some(signals) => signals.evaluate(policy, &subject, now).await,
            None => Vec::new(),
        };
        let mut lines = vec![ready_line.clone()];
        lines.extend(results.iter().map(SignalResult::describe));
        Ok(Checks {
            results,
            ready_ok,
            ready_line,
            lines,
        })
    }
}

/// One round of verification checks.
#[derive(Debug, Clone)]
pub struct Checks {
    pub results: Vec<SignalResult>,
    /// Every desired replica of the current revision is running and ready.
    pub ready_ok: bool,
    pub ready_line: String,
    /// Every check as a sentence.
    pub lines: Vec<String>,
}

impl Checks {
    /// Pass when pods are ready and no signal fails (Inconclusive passes:
    /// missing data is not evidence).
    pub fn passed(&self) -> bool {
        self.ready_ok && !self.results.iter().any(|r| r.outcome.is_fail())
    }
}
