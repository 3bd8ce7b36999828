//! Backup, the runbook's step 2: the Deployment as it is, with the plan,
//! in a ConfigMap before anything changes.

use super::*;

impl Pipeline {
    /// Backup: the whole Deployment and the record, as a ConfigMap; then
    /// prunes old backups. A failed backup stops the rollback.
    pub async fn backup(&self, plan: &mut Plan) -> Result<(), Box<RollbackOutcome>> {
        if !(self.ctx.may_write)() {
            let plan = plan.clone();
            return Err(Box::new(self.not_leader(plan, Step::Backup).await));
        }
        let record = self.backup_record(plan);
        let backups = self.ctx.backups();
        match backups.write(&plan.deployment, &record).await {
            Ok(name) => {
                let full = format!("{}/{name}", backups.namespace());
                plan.backup = Some(full.clone());
                let (pruned, problems) = if (self.ctx.may_write)() {
                    backups
                        .prune(
                            &plan.request.namespace,
                            &plan.request.name,
                            plan.policy.backup_retention.max(1) as usize,
                        )
                        .await
                } else {
                    (Vec::new(), Vec::new())
                };
                for p in &problems {
                    tracing::warn!(target = %plan.target(), "{p}");
                }
                let summary = format!("backed up {} to ConfigMap {full}", plan.target());
                let details = json!({"backup": full, "pruned": pruned, "problems": problems});
                let id = plan.id.clone();
                self.record(
                    &mut plan.steps,
                    &id,
                    Line::new(Step::Backup, StepOutcome::Ok, summary).with(details),
                );
                Ok(())
            }
            Err(e) => {
                let plan = plan.clone();
                Err(Box::new(
                    self.stop_before_update(plan, Step::Backup, StepOutcome::Failed, e.to_string())
                        .await,
                ))
            }
        }
    }

    /// What a backup records with the Deployment: the plan, the trigger,
    /// the signals and the times (also what the drill writes and reads back).
    pub fn backup_record(&self, plan: &Plan) -> Record {
        Record {
            id: plan.id.to_string(),
            namespace: plan.request.namespace.clone(),
            deployment: plan.request.name.clone(),
            trigger: plan.request.trigger.clone(),
            reason: plan.reason.clone(),
            measured: measured(&plan.request.signals),
            signals: serde_json::to_value(&plan.request.signals).unwrap_or(Value::Null),
            from: plan.from.clone(),
            to: plan.to.clone(),
            at: rfc3339(self.ctx.now()),
            rollout_started_at: plan.request.rollout_started_at.map(rfc3339),
            detected_at: plan.request.detected_at.map(rfc3339),
        }
    }
}
