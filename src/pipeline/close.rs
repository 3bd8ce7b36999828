//! The closing write, the audit trail and the notifications: how every
//! pipeline ends, whether it finished, was handed over or was refused.

use super::*;

impl Pipeline {
    /// Wait, Verify, then the closing patch (in-flight cleared, known-good
    /// kept), the report, the Event and the notification.
    pub(super) async fn finish(
        &self,
        in_flight: InFlight,
        mut steps: Vec<StepRecord>,
        signals: Vec<SignalResult>,
        patch: Vec<Value>,
    ) -> RollbackOutcome {
        let ended = match self.wait_and_verify(&in_flight, &mut steps).await {
            Ok(ended) => ended,
            Err(step) => return self.handed_over(&in_flight, steps, patch, step, None),
        };
        // Leadership may have gone while verifying: the report, the
        // notification and the closing write belong to whoever leads now.
        if !(self.ctx.may_write)() {
            return self.handed_over(&in_flight, steps, patch, Step::Verify, None);
        }
        // The report and the notice come before the record is closed: a
        // crash anywhere up to the closing write leaves the record, and
        // the restart finds the report, tells on-call again (the delivery
        // ledger drops what a sink already has) and closes it.
        let incident = self.conclude(&in_flight, &ended, &signals, &patch).await;
        self.tell(&mut steps, &in_flight.id, &incident).await;
        let succeeded = ended.result == RollbackResult::Succeeded;
        if let Some(d) = &ended.deployment {
            if let Err(why) = self.close(d, &in_flight, succeeded).await {
                return self.not_closed(&in_flight, steps, patch, why);
            }
        }
        RollbackOutcome {
            result: ended.result,
            incident,
            steps,
            patch,
        }
    }

    /// For [`Pipeline::resume`]: the rollback of `in_flight` was reported
    /// (`report` is its audit line's incident) before the process stopped.
    /// Tells on-call again, which a sink that has it drops, and closes the
    /// record; never a second Wait, Verify or report.
    pub(super) async fn finish_reported(
        &self,
        d: &Deployment,
        in_flight: InFlight,
        mut steps: Vec<StepRecord>,
        report: Value,
    ) -> RollbackOutcome {
        let kind = report["kind"]
            .as_str()
            .and_then(|k| EventKind::ALL.into_iter().find(|e| e.as_str() == k))
            .unwrap_or(EventKind::Escalation);
        let result = match kind {
            EventKind::RollbackSucceeded => RollbackResult::Succeeded,
            EventKind::Conflict => RollbackResult::Conflict,
            _ => RollbackResult::Escalated,
        };
        let mut incident = self.incident_from(&in_flight, kind, &[]);
        let text = |key: &str| report[key].as_str().map(str::to_owned);
        incident.at = text("at").unwrap_or(incident.at);
        incident.finished_at = text("finished_at");
        incident.failed_step = text("failed_step");
        incident.error = text("error");
        incident.changes = report["changes"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        incident.patch = report["patch"].as_array().cloned().unwrap_or_default();
        if !(self.ctx.may_write)() {
            return self.handed_over(&in_flight, steps, incident.patch, Step::Notify, None);
        }
        self.tell(&mut steps, &in_flight.id, &incident).await;
        let patch = incident.patch.clone();
        if let Err(why) = self
            .close(d, &in_flight, kind == EventKind::RollbackSucceeded)
            .await
        {
            return self.not_closed(&in_flight, steps, patch, why);
        }
        RollbackOutcome {
            result,
            incident,
            steps,
            patch,
        }
    }

    /// The closing write failed after the report and the notice: the
    /// record stays, and the next tick (or the next leader) resumes it,
    /// finds the report and only closes it.
    fn not_closed(
        &self,
        in_flight: &InFlight,
        steps: Vec<StepRecord>,
        patch: Vec<Value>,
        why: String,
    ) -> RollbackOutcome {
        let why = format!(
            "{why}; the in-flight record stays, and the rollback, already reported, is closed when it is resumed"
        );
        self.handed_over(in_flight, steps, patch, Step::Notify, Some(why))
    }

    /// Wait, then Verify, each recorded; the step at which leadership
    /// went, if it did.
    async fn wait_and_verify(
        &self,
        in_flight: &InFlight,
        steps: &mut Vec<StepRecord>,
    ) -> Result<Ended, Step> {
        let key = &in_flight.id.deployment;
        let (ns, name, target) = (&key.namespace, &key.name, key.to_string());
        let policy = match self.get(ns, name).await {
            Ok(Some(d)) => self.ctx.policy_for(&d),
            _ => self.ctx.config.opt_in_policy(),
        };
        let id = &in_flight.id;
        let d = match self.wait(ns, name, in_flight, &policy).await {
            Waited::Done(d) => d,
            Waited::HandedOver => return Err(Step::Wait),
            Waited::Failed(why, d) => {
                self.record(
                    steps,
                    id,
                    Line::new(Step::Wait, StepOutcome::Failed, why.clone()),
                );
                return Ok(Ended::stopped(
                    RollbackResult::Escalated,
                    Step::Wait,
                    why,
                    d,
                ));
            }
            Waited::Superseded(why, d) => {
                self.record(
                    steps,
                    id,
                    Line::new(Step::Wait, StepOutcome::Conflict, why.clone()),
                );
                return Ok(Ended::stopped(
                    RollbackResult::Conflict,
                    Step::Wait,
                    why,
                    Some(d),
                ));
            }
        };
        let done = Line::new(
            Step::Wait,
            StepOutcome::Ok,
            format!("{target} is fully rolled out"),
        )
        .with(json!({"revision": revision_annotation(&d)}));
        self.record(steps, id, done);
        Ok(match self.verify(&d, in_flight, &policy).await {
            Verified::HandedOver => return Err(Step::Verify),
            Verified::Passed { summary, details } => {
                self.record(
                    steps,
                    id,
                    Line::new(Step::Verify, StepOutcome::Ok, summary).with(details),
                );
                Ended {
                    result: RollbackResult::Succeeded,
                    failed_step: None,
                    error: None,
                    deployment: Some(d),
                }
            }
            Verified::Failed { summary, details } => {
                self.record(
                    steps,
                    id,
                    Line::new(Step::Verify, StepOutcome::Failed, summary.clone()).with(details),
                );
                Ended::stopped(RollbackResult::Escalated, Step::Verify, summary, Some(d))
            }
            Verified::Superseded(why, d) => {
                self.record(
                    steps,
                    id,
                    Line::new(Step::Verify, StepOutcome::Conflict, why.clone()),
                );
                Ended::stopped(RollbackResult::Conflict, Step::Verify, why, Some(*d))
            }
        })
    }

    /// The incident of a finished rollback: the Event, the escalation log
    /// line, the audit report and the result kept with the backup.
    async fn conclude(
        &self,
        in_flight: &InFlight,
        ended: &Ended,
        signals: &[SignalResult],
        patch: &[Value],
    ) -> Incident {
        let (result, error) = (ended.result, ended.error.clone().unwrap_or_default());
        let kind = match result {
            RollbackResult::Succeeded => EventKind::RollbackSucceeded,
            RollbackResult::Conflict => EventKind::Conflict,
            _ => EventKind::Escalation,
        };
        let mut incident = self.incident_from(in_flight, kind, signals);
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        incident.failed_step = ended.failed_step.map(|s| s.as_str().to_owned());
        incident.error = ended.error.clone();
        incident.changes = changes(in_flight, patch);
        incident.patch = patch.to_vec();
        if let Some(d) = &ended.deployment {
            let (reason, note) = match result {
                RollbackResult::Succeeded => (Reason::RolledBack, format!(
                    "Rolled back from {} to {} and verified: {}", describe_ref(&in_flight.from), describe_ref(&in_flight.to), in_flight.reason)),
                RollbackResult::Conflict => (Reason::RollbackConflict, error.clone()),
                _ => (Reason::RollbackEscalated, format!(
                    "Rolled back to {} but it is not healthy ({error}): a person must act; the watchdog will not roll back again",
                    describe_ref(&in_flight.to))),
            };
            self.event(d, reason, note).await;
        }
        if result == RollbackResult::Escalated {
            let target = incident.target();
            tracing::error!(target = %target, error = %error,
                "ESCALATION: the rollback of {target} did not bring back a healthy revision; a person must act");
        }
        self.report(&incident).await;
        if let Some(b) = &in_flight.backup {
            let name = b.rsplit('/').next().unwrap_or(b);
            if (self.ctx.may_write)() {
                let value = serde_json::to_value(&incident).unwrap_or(Value::Null);
                if let Err(e) = self.ctx.backups().add_result(name, &value).await {
                    tracing::warn!("{e}");
                }
            }
        }
        incident
    }

    /// Clears the in-flight record; on success keeps the restored revision
    /// known-good under its new revision number.
    pub(super) async fn close(
        &self,
        d: &Deployment,
        in_flight: &InFlight,
        succeeded: bool,
    ) -> Result<(), String> {
        if !(self.ctx.may_write)() {
            return Err(format!(
                "{}: not the leader; the in-flight record stays for the leader",
                target_of(d)
            ));
        }
        let mut annotations = serde_json::Map::new();
        annotations.insert(IN_FLIGHT.to_owned(), Value::Null);
        if succeeded && in_flight.to.known_good {
            if let Ok(rs) = self.replicasets(d).await {
                if let Rollout::Known { current, .. } = revision::rollout(d, &rs) {
                    if current.pod_template_hash == in_flight.to.pod_template_hash {
                        let kg = revision::KnownGood {
                            revision: current.number,
                            pod_template_hash: current.pod_template_hash.clone(),
                            images: current.images.clone(),
                            at: rfc3339(self.ctx.now()),
                        };
                        if let Ok(text) = serde_json::to_string(&kg) {
                            annotations.insert(KNOWN_GOOD.to_owned(), Value::String(text));
                        }
                    }
                }
            }
        }
        let patch = json!({"metadata": {"annotations": annotations}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let api = self.ctx.deployments(&d.namespace().unwrap_or_default());
        match tokio::time::timeout(
            self.ctx.api_timeout,
            api.patch(&d.name_any(), &pp, &Patch::Merge(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("cannot clear {IN_FLIGHT} on {}: {e}", target_of(d))),
            Err(_) => Err(format!(
                "cannot clear {IN_FLIGHT} on {}: timed out",
                target_of(d)
            )),
        }
    }

    /// A refused annotation request is answered (Event, notification) and
    /// removed, so it is not retried on every tick.
    pub(super) async fn consume_request_annotation(&self, d: &Deployment) {
        if !(self.ctx.may_write)() || !d.annotations().contains_key(ROLLBACK_TO) {
            return;
        }
        let patch = json!({"metadata": {"annotations": {ROLLBACK_TO: null}}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let api = self.ctx.deployments(&d.namespace().unwrap_or_default());
        let sent = tokio::time::timeout(
            self.ctx.api_timeout,
            api.patch(&d.name_any(), &pp, &Patch::Merge(&patch)),
        )
        .await;
        if !matches!(sent, Ok(Ok(_))) {
            tracing::warn!(target = %target_of(d), "cannot remove the annotation {ROLLBACK_TO}; it will be seen again");
        }
    }

    #[allow(clippy::too_many_arguments)]
    /// One step's outcome: an audit line, a log line, and a record in
    /// `steps` for the outcome.
    pub(super) fn record(&self, steps: &mut Vec<StepRecord>, id: &IncidentId, line: Line) {
        let Line {
            step,
            outcome,
            summary,
            details,
        } = line;
        let target = id.deployment.to_string();
        let at = rfc3339(self.ctx.now());
        let audit = AuditLine {
            time: at.clone(),
            target: target.clone(),
            rollback: id.to_string(),
            step,
            outcome: AuditOutcome::Step(outcome),
            details: json!({"summary": summary, "details": details}),
        };
        if let Err(e) = self.ctx.audit.append(&audit) {
            tracing::error!(target = %target, step = step.as_str(), "{e}");
        }
        match outcome {
            StepOutcome::Ok | StepOutcome::DryRun => {
                tracing::info!(target = %target, rollback = %id, step = step.as_str(), outcome = outcome.as_str(), "{summary}")
            }
            _ => {
                tracing::warn!(target = %target, rollback = %id, step = step.as_str(), outcome = outcome.as_str(), "{summary}")
            }
        }
        steps.push(StepRecord {
            step,
            outcome,
            summary,
            details,
            at,
        });
        if outcome == StepOutcome::Ok {
            crash::after(step);
        }
    }

    /// The final audit line: the runbook's incident report.
    pub(super) async fn report(&self, incident: &Incident) {
        let at = rfc3339(self.ctx.now());
        let line = AuditLine {
            time: at,
            target: incident.target(),
            rollback: incident.id.clone(),
            step: Step::Report,
            outcome: AuditOutcome::Incident(incident.kind),
            details: serde_json::to_value(incident).unwrap_or(Value::Null),
        };
        if let Err(e) = self.ctx.audit.append(&line) {
            tracing::error!(target = %incident.target(), "{e}");
        }
        tracing::info!(target = %incident.target(), rollback = %incident.id, kind = %kind_name(incident.kind), reason = %incident.reason, "incident report");
        crash::after(Step::Report);
    }

    /// The result notice of a rollback that patched: sent, then awaited
    /// until every sink has settled it (delivered, or given up at its
    /// deadline), bounded by [`NOTICE_SETTLE_LIMIT`], so that the in-flight
    /// record is closed only after on-call has been told.
    async fn tell(&self, steps: &mut Vec<StepRecord>, id: &IncidentId, incident: &Incident) {
        if !(self.ctx.may_write)() {
            self.notify(steps, id, incident);
            return;
        }
        let settled = self.ctx.sink.emit_settled(incident);
        let summary = match tokio::time::timeout(NOTICE_SETTLE_LIMIT, settled).await {
            Ok(()) => format!("{} settled by every notifier", kind_name(incident.kind)),
            Err(_) => format!(
                "{} handed to the notifiers; not settled within {}, it is delivered in the background",
                kind_name(incident.kind),
                humantime::format_duration(NOTICE_SETTLE_LIMIT)
            ),
        };
        self.record(
            steps,
            id,
            Line::new(Step::Notify, StepOutcome::Ok, summary).with(json!({"kind": incident.kind})),
        );
    }

    pub(super) fn notify(&self, steps: &mut Vec<StepRecord>, id: &IncidentId, incident: &Incident) {
        // The leader tells on-call; a replica that lost the Lease while
        // deciding leaves it to the leader, which decides for itself.
        if !(self.ctx.may_write)() {
            self.record(
                steps,
                id,
                Line::new(
                    Step::Notify,
                    StepOutcome::Refused,
                    format!(
                        "{} not sent: this watchdog is no longer the leader",
                        kind_name(incident.kind)
                    ),
                )
                .with(json!({"kind": incident.kind})),
            );
            return;
        }
        self.ctx.sink.emit(incident);
        self.record(
            steps,
            id,
            Line::new(
                Step::Notify,
                StepOutcome::Ok,
                format!("{} handed to the notifiers", kind_name(incident.kind)),
            )
            .with(json!({"kind": incident.kind})),
        );
    }

    pub(super) async fn event(&self, d: &Deployment, reason: Reason, note: String) {
        if !(self.ctx.may_write)() {
            return;
        }
        let notice = Notice {
            reason,
            action: "Rollback".to_owned(),
            note,
        };
        let _ = self.ctx.events.publish(d, &notice).await;
    }

    /// Stopped after the patch because this process may no longer write:
    /// the in-flight record stays for the next leader, which resumes it.
    pub(super) fn handed_over(
        &self,
        in_flight: &InFlight,
        mut steps: Vec<StepRecord>,
        patch: Vec<Value>,
        step: Step,
        why: Option<String>,
    ) -> RollbackOutcome {
        let target = in_flight.id.deployment.to_string();
        let why = why.unwrap_or_else(|| format!(
            "{target}: this watchdog is no longer the leader (or is shutting down); it stopped before its next write, and the next leader resumes this rollback from its in-flight record at Wait/Verify"
        ));
        self.record(
            &mut steps,
            &in_flight.id,
            Line::new(step, StepOutcome::Failed, why.clone()).with(json!({"handed_over": true})),
        );
        let mut incident = self.incident_from(in_flight, EventKind::RollbackFailed, &[]);
        incident.failed_step = Some(step.as_str().to_owned());
        incident.error = Some(why);
        RollbackOutcome {
            result: RollbackResult::HandedOver,
            incident,
            steps,
            patch,
        }
    }

    pub(super) async fn not_leader(&self, plan: Plan, step: Step) -> RollbackOutcome {
        let mut plan = plan;
        let target = plan.target();
        let id = plan.id.clone();
        let why = format!(
            "{target}: this watchdog is not the leader; the leader acts, nothing was changed here"
        );
        self.record(
            &mut plan.steps,
            &id,
            Line::new(step, StepOutcome::Failed, why.clone()),
        );
        let in_flight = self.in_flight_record(&plan);
        let mut incident =
            self.incident_from(&in_flight, EventKind::RollbackFailed, &plan.request.signals);
        incident.failed_step = Some(step.as_str().to_owned());
        incident.error = Some(why);
        RollbackOutcome {
            result: RollbackResult::HandedOver,
            incident,
            steps: plan.steps,
            patch: Vec::new(),
        }
    }

    pub(super) fn base_incident(
        &self,
        request: &RollbackRequest,
        id: &IncidentId,
        kind: EventKind,
        at: jiff::Timestamp,
    ) -> Incident {
        Incident {
            id: id.to_string(),
            kind,
            cluster: self.ctx.config.watchdog.cluster_name.clone(),
            namespace: request.namespace.clone(),
            deployment: request.name.clone(),
            trigger: request.trigger.clone(),
            reason: request
                .reason
                .clone()
                .unwrap_or_else(|| default_reason(request)),
            from: None,
            to: None,
            signals: request.signals.clone(),
            rollout_started_at: request.rollout_started_at.map(rfc3339),
            detected_at: request.detected_at.map(rfc3339),
            at: rfc3339(at),
            finished_at: None,
            failed_step: None,
            error: None,
            dry_run: request.dry_run,
            backup: None,
            blocklisted_redeploy: request.blocklisted_redeploy,
            changes: Vec::new(),
            patch: Vec::new(),
            dashboard_url: None,
            runbook_url: None,
        }
    }

    pub(super) fn incident_from(
        &self,
        f: &InFlight,
        kind: EventKind,
        signals: &[SignalResult],
    ) -> Incident {
        let key = &f.id.deployment;
        let (namespace, deployment) = (key.namespace.clone(), key.name.clone());
        Incident {
            id: f.id.to_string(),
            kind,
            cluster: self.ctx.config.watchdog.cluster_name.clone(),
            namespace,
            deployment,
            trigger: f.trigger.clone(),
            reason: f.reason.clone(),
            from: Some(f.from.clone()),
            to: Some(f.to.clone()),
            signals: signals.to_vec(),
            rollout_started_at: f.rollout_started_at.clone(),
            detected_at: f.detected_at.clone(),
            at: rfc3339(self.ctx.now()),
            finished_at: None,
            failed_step: None,
            error: None,
            dry_run: false,
            backup: f.backup.clone(),
            blocklisted_redeploy: f.blocklisted_redeploy,
            changes: Vec::new(),
            patch: Vec::new(),
            dashboard_url: None,
            runbook_url: None,
        }
    }
}

/// How Wait and Verify ended, before the closing write.
pub(super) struct Ended {
    result: RollbackResult,
    failed_step: Option<Step>,
    error: Option<String>,
    /// The Deployment as last read, for the closing write and the Event.
    deployment: Option<Deployment>,
}

impl Ended {
    fn stopped(result: RollbackResult, step: Step, why: String, d: Option<Deployment>) -> Self {
        Ended {
            result,
            failed_step: Some(step),
            error: Some(why),
            deployment: d,
        }
    }
}

/// A step's outcome as the pipeline records it.
pub(super) struct Line {
    step: Step,
    outcome: StepOutcome,
    /// One sentence.
    summary: String,
    details: Value,
}

impl Line {
    pub(super) fn new(step: Step, outcome: StepOutcome, summary: String) -> Self {
        Line {
            step,
            outcome,
            summary,
            details: Value::Null,
        }
    }

    /// The step's facts: the patch, the backup, measured values.
    pub(super) fn with(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}
