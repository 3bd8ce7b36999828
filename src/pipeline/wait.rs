//! Wait, the runbook's step 4: the restored revision rolls out, or the
//! progress deadline says it will not.

use super::*;

impl Pipeline {
    pub(super) async fn wait(
        &self,
        ns: &str,
        name: &str,
        in_flight: &InFlight,
        policy: &Policy,
    ) -> Waited {
        let target = DeploymentKey::new(ns, name).to_string();
        let deadline = Instant::now() + policy.rollout_timeout;
        let mut last_progress: Option<Progress> = None;
        let mut last_seen: Option<Deployment> = None;
        loop {
            if !(self.ctx.may_write)() {
                return Waited::HandedOver;
            }
            match self.get(ns, name).await {
                Ok(Some(d)) => {
                    if self.changed_by_someone(&d, in_flight).await {
                        return Waited::Superseded(format!(
                            "{target} was changed by someone else during the rollout (generation {} > {}); the watchdog stops and does not touch it",
                            d.metadata.generation.unwrap_or(0), in_flight.generation
                        ), d);
                    }
                    let observed = d
                        .status
                        .as_ref()
                        .and_then(|s| s.observed_generation)
                        .unwrap_or(0)
                        >= d.metadata.generation.unwrap_or(0);
                    let progress = progress_of(&target, &d);
                    if last_progress.as_ref() != Some(&progress) {
                        if let Some(cb) = &self.ctx.progress {
                            cb(&progress);
                        }
                        tracing::info!(target = %target, "{progress}");
                        last_progress = Some(progress);
                    }
                    if observed && revision::fully_rolled_out(&d) {
                        return Waited::Done(d);
                    }
                    if observed && revision::progress_deadline_exceeded(&d) {
                        return Waited::Failed(format!(
                            "the rollout of {} on {target} exceeded its progress deadline (ProgressDeadlineExceeded)",
                            describe_ref(&in_flight.to)
                        ), Some(d));
                    }
                    last_seen = Some(d);
                }
                Ok(None) => {
                    return Waited::Failed(
                        format!("{target}: Deployment deleted during the rollout"),
                        None,
                    )
                }
                Err(e) => tracing::warn!(target = %target, "{e}; still waiting"),
            }
            if Instant::now() >= deadline {
                let p = last_progress.map(|p| p.to_string()).unwrap_or_default();
                return Waited::Failed(
                    format!(
                    "the rollout of {} on {target} did not finish within rollout_timeout ({}): {p}",
                    describe_ref(&in_flight.to),
                    humantime::format_duration(policy.rollout_timeout)
                ),
                    last_seen,
                );
            }
            tokio::time::sleep(
                self.ctx
                    .poll_interval
                    .min(deadline.saturating_duration_since(Instant::now()))
                    .max(Duration::from_millis(10)),
            )
            .await;
        }
    }
}

pub(super) enum Waited {
    Done(Deployment),
    /// No longer allowed to write: stop, the next leader resumes.
    HandedOver,
    Failed(String, Option<Deployment>),
    Superseded(String, Deployment),
}
