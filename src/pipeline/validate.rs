//! Validate, the runbook's step 1: the API reads (the Deployment, its
//! ReplicaSets) and this process's state, handed to the pure
//! [`crate::decide::plan`] that chooses the revision to restore or refuses
//! with a sentence that says why. No rule is decided here.

use super::*;
use crate::decide::refusal::READ_FAILURES_TOLD_AFTER;

impl Pipeline {
    pub(super) async fn validate(
        &self,
        request: &RollbackRequest,
        started: jiff::Timestamp,
    ) -> Result<Plan, Refusal> {
        let d = match self.get(&request.namespace, &request.name).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Err(Refusal::NotFound {
                    target: request.target(),
                    namespace: request.namespace.clone(),
                })
            }
            Err(e) => {
                return Err(Refusal::ReadFailed {
                    error: e.to_string(),
                })
            }
        };
        let policy = request
            .policy
            .clone()
            .unwrap_or_else(|| self.ctx.policy_for(&d));
        let running_here = self.is_active(&request.target());
        // What the Deployment alone refuses needs no ReplicaSet read.
        crate::decide::plan::admit(&d, request, &policy, running_here)?;
        let replicasets = self
            .replicasets(&d)
            .await
            .map_err(|e| Refusal::ReadFailed {
                error: e.to_string(),
            })?;
        crate::decide::plan::plan(&PlanInput {
            deployment: &d,
            replicasets: &replicasets,
            request,
            policy: &policy,
            running_here,
            dry_run_everywhere: self.ctx.config.watchdog.dry_run,
            now: self.ctx.now(),
            started,
        })
    }

    pub(super) async fn refuse(
        &self,
        request: RollbackRequest,
        refusal: Refusal,
        started: jiff::Timestamp,
    ) -> RollbackOutcome {
        let key = DeploymentKey::new(&request.namespace, &request.name);
        let id = IncidentId::rollback(key, 0, started);
        let mut steps = Vec::new();
        let why = refusal.to_string();
        let outcome = if refusal.is_read_failure() {
            StepOutcome::Failed
        } else {
            StepOutcome::Refused
        };
        self.record(
            &mut steps,
            &id,
            Line::new(Step::Validate, outcome, why.clone()),
        );
        let mut incident = self.base_incident(&request, &id, EventKind::RollbackFailed, started);
        incident.failed_step = Some(Step::Validate.as_str().to_owned());
        incident.error = Some(why.clone());
        incident.dry_run = request.dry_run;
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        // A failed read on a verdict is told once, when it has failed
        // READ_FAILURES_TOLD_AFTER times in a row: nothing was changed, and
        // the daemon tries again at every tick.
        let retried = refusal.is_read_failure() && matches!(request.trigger, Trigger::Verdict);
        let in_a_row = request.read_failures_before + 1;
        let told_now = retried && in_a_row == READ_FAILURES_TOLD_AFTER;
        if told_now {
            incident.error = Some(format!(
                "{why}; Validate could not read the cluster {in_a_row} times in a row, so the Bad revision is still serving; the watchdog keeps trying at every tick (check the API server and the watchdog's RBAC)"
            ));
        }
        if let Some(d) = refusal.deployment() {
            self.event(d, Reason::RollbackRefused, why).await;
            if matches!(request.trigger, Trigger::Annotation { .. }) {
                self.consume_request_annotation(d).await;
            }
        }
        self.report(&incident).await;
        // A person at the CLI reads the refusal; automatic triggers tell
        // on-call.
        if retried {
            tracing::warn!(target = %request.target(), error = %refusal, failures_in_a_row = in_a_row, "the rollback is tried again at the next tick");
            if told_now {
                self.notify(&mut steps, &id, &incident);
            }
        } else if matches!(
            request.trigger,
            Trigger::Verdict | Trigger::Annotation { .. }
        ) {
            self.notify(&mut steps, &id, &incident);
        }
        RollbackOutcome {
            result: if refusal.is_read_failure() {
                RollbackResult::Failed
            } else {
                RollbackResult::Refused
            },
            incident,
            steps,
            patch: Vec::new(),
        }
    }
}
