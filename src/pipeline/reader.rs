//! Bounded API reads shared by the steps and the CLI, and the
//! verification checklist built from them.

use super::*;
use backon::{ExponentialBuilder, Retryable};

/// Retries of a read that failed for a passing reason (delays 0.1 s,
/// 0.2 s, 0.4 s, 0.8 s: about 1.5 s plus the attempts).
const READ_RETRIES: usize = 4;

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

    /// One read, each attempt bounded by the timeout. A transient failure
    /// (5xx, 429, a timeout, no connection) is tried again a few times
    /// over about two seconds: one lost answer must not fail a rollback
    /// or escalate to a person. Any other error (403, 404, ...) is
    /// returned at once. `Err(())` is a timeout.
    async fn read<T, F, Fut>(&self, call: F) -> Result<T, Result<kube::Error, ()>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, kube::Error>>,
    {
        let once = || async {
            match tokio::time::timeout(self.timeout, call()).await {
                Ok(r) => r.map_err(Ok),
                Err(_) => Err(Err(())),
            }
        };
        once.retry(
            ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(100))
                .with_max_delay(Duration::from_secs(1))
                .with_max_times(READ_RETRIES),
        )
        .when(|e: &Result<kube::Error, ()>| e.as_ref().map_or(true, super::backup::transient))
        .notify(|e, after| tracing::debug!(error = ?e, ?after, "cluster read failed; trying again"))
        .await
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
        self.read(|| api.get_opt(name)).await.map_err(|e| {
            self.api_error(
                DeploymentKey::new(ns, name).to_string(),
                "cannot read the Deployment",
                e,
            )
        })
    }

    /// The ReplicaSets matching the Deployment's selector (ownership is
    /// checked by the callers).
    pub async fn replicasets(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>, RollbackError> {
        let api: Api<ReplicaSet> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let lp = ListParams::default().labels(&selector_of(d));
        match self.read(|| api.list(&lp)).await {
            Ok(list) => Ok(list.items.into_iter().map(Arc::new).collect()),
            Err(e) => Err(self.api_error(target_of(d), "cannot list its ReplicaSets", e)),
        }
    }

    /// The pods carrying this `pod-template-hash`.
    pub async fn pods(&self, d: &Deployment, hash: &str) -> Result<Vec<Pod>, RollbackError> {
        let api: Api<Pod> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        let lp = ListParams::default().labels(&format!("{}={hash}", keys::POD_TEMPLATE_HASH));
        match self.read(|| api.list(&lp)).await {
            Ok(list) => Ok(list.items),
            Err(e) => Err(self.api_error(target_of(d), "cannot list its pods", e)),
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
            pods: pods.into_iter().map(Arc::new).collect(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{Fault, FaultRule, SimCluster, SimOptions};

    #[tokio::test]
    async fn a_read_is_retried_on_passing_failures_and_gives_up_after_a_few() {
        let sim = SimCluster::start(SimOptions {
            seed: true,
            ..Default::default()
        })
        .await
        .expect("sim");
        let reader = Reader::new(sim.client().await.expect("client"), Duration::from_secs(5));
        let (ns, name) = ("production", "kailash-kaizen");

        // Every read answers 500: five attempts, then the error.
        sim.faults().add(FaultRule::new(
            "get",
            "deployments",
            Fault::ServerError,
            1.0,
        ));
        let e = reader.deployment(ns, name).await;
        assert!(e.is_err(), "{e:?}");
        assert_eq!(sim.faults().injected().get("500"), Some(&5));

        // 429 and 504 are retried too: with half the reads failing, the
        // read comes through (seeded draws).
        sim.faults().clear();
        let throttled = Fault::TooManyRequests {
            retry_after_secs: 1,
        };
        sim.faults()
            .add(FaultRule::new("get", "deployments", throttled, 0.3));
        sim.faults()
            .add(FaultRule::new("list", "replicasets", Fault::Timeout, 0.3));
        for _ in 0..12 {
            let d = reader.deployment(ns, name).await;
            let d = d.expect("read through 429s").expect("exists");
            reader.replicasets(&d).await.expect("listed through 504s");
        }
        let injected = sim.faults().injected();
        assert!(
            injected.contains_key("429") && injected.contains_key("504"),
            "{injected:?}"
        );
        sim.shutdown().await;
    }
}
