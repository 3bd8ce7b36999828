//! Update, the runbook's step 3: one JSON Patch that tests the
//! resourceVersion, restores the template and writes the in-flight record,
//! or a clear stop when someone else changed the Deployment first.

use super::*;

/// Throttled (429) rollback patches sent again at most this many times.
const THROTTLE_RETRIES: usize = 3;

impl Pipeline {
    /// Update: the one JSON Patch (test resourceVersion, replace the
    /// template, annotations including the in-flight record). A human's
    /// change in between is a conflict: reported, never overwritten.
    pub async fn update(&self, plan: &mut Plan) -> Result<InFlight, Box<RollbackOutcome>> {
        let mut attempt = 0;
        let mut throttled = 0;
        loop {
            if !(self.ctx.may_write)() {
                let plan = plan.clone();
                return Err(Box::new(self.not_leader(plan, Step::Update).await));
            }
            let in_flight = self.in_flight_record(plan);
            let ops = patch_ops(plan, &in_flight);
            let why = match self.send_patch(plan, &ops).await {
                Ok(()) => {
                    self.patched(plan, &in_flight, ops).await;
                    return Ok(in_flight);
                }
                Err(NotPatched::Failed(why)) => why,
                Err(NotPatched::Throttled(why)) if throttled < THROTTLE_RETRIES => {
                    throttled += 1;
                    tracing::info!(target = %plan.target(), "{why}; sending it again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(NotPatched::Throttled(why)) => why,
                Err(NotPatched::Moved(message)) => {
                    match self.moved(plan, &message, attempt).await {
                        Moved::StatusOnly(version) => {
                            attempt += 1;
                            tracing::info!(target = %plan.target(), "resourceVersion moved by a status write only; patching again with the fresh version");
                            plan.deployment.metadata.resource_version = version;
                            continue;
                        }
                        Moved::Changed(fresh, why) => {
                            let plan = plan.clone();
                            let outcome = self.conflict_before_update(plan, *fresh, why, ops).await;
                            return Err(Box::new(outcome));
                        }
                        Moved::Unreadable(why) => why,
                    }
                }
            };
            let plan = plan.clone();
            let outcome = self
                .stop_before_update(plan, Step::Update, StepOutcome::Failed, why)
                .await;
            return Err(Box::new(outcome));
        }
    }

    /// The rollback drill's Update: the very patch [`Pipeline::update`]
    /// would send, sent with `dryRun=All` so the API server checks it
    /// (the resourceVersion test, the template, admission) and stores
    /// nothing. The Deployment it would become, or why it would fail.
    pub async fn update_dry_run(&self, plan: &Plan) -> Result<(Deployment, Vec<Value>), String> {
        let target = plan.target();
        let ops = patch_ops(plan, &self.in_flight_record(plan));
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.clone()))
            .map_err(|e| format!("cannot build the patch for {target}: {e}"))?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            dry_run: true,
            ..Default::default()
        };
        let api = self.ctx.deployments(&plan.request.namespace);
        match tokio::time::timeout(
            self.ctx.api_timeout,
            api.patch(&plan.request.name, &pp, &Patch::<Value>::Json(patch)),
        )
        .await
        {
            Ok(Ok(d)) => Ok((d, ops)),
            Ok(Err(e)) => Err(format!(
                "{target}: the API server rejected the rollback patch (dryRun=All): {e}{}",
                api_hint(&e)
            )),
            Err(_) => Err(format!(
                "{target}: the API server did not answer the dry-run patch within {:?}",
                self.ctx.api_timeout
            )),
        }
    }

    /// Sends the patch, bounded by the API timeout.
    async fn send_patch(&self, plan: &Plan, ops: &[Value]) -> Result<(), NotPatched> {
        let target = plan.target();
        let patch: json_patch::Patch = serde_json::from_value(Value::Array(ops.to_vec()))
            .map_err(|e| NotPatched::Failed(format!("cannot build the patch for {target}: {e}")))?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let api = self.ctx.deployments(&plan.request.namespace);
        let sent = tokio::time::timeout(
            self.ctx.api_timeout,
            api.patch(&plan.request.name, &pp, &Patch::<Value>::Json(patch)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(kube::Error::Api(status))) if status.code == 422 || status.code == 409 => {
                Err(NotPatched::Moved(status.message))
            }
            // 429 means the request was not processed: safe to send again.
            Ok(Err(kube::Error::Api(status))) if status.code == 429 => Err(NotPatched::Throttled(
                format!("{target}: the rollback patch was throttled: {}", status.message),
            )),
            Ok(Err(e)) => Err(NotPatched::Failed(format!(
                "{target}: the rollback patch was rejected: {e}"
            ))),
            // The patch may or may not have landed: if it did, the
            // in-flight record says so and `resume` finishes it.
            Err(_) => Err(NotPatched::Failed(format!(
                "{target}: the API server did not answer the rollback patch within {:?}; if it was applied, the in-flight record {IN_FLIGHT} lets the next start resume it",
                self.ctx.api_timeout
            ))),
        }
    }

    /// The patch landed: recorded, and announced to the sinks and on the
    /// Deployment.
    async fn patched(&self, plan: &mut Plan, in_flight: &InFlight, ops: Vec<Value>) {
        let summary = format!(
            "patched {}: template of {} in place of {}",
            plan.target(),
            describe_ref(&plan.to),
            describe_ref(&plan.from)
        );
        plan.patch = ops.clone();
        let id = plan.id.clone();
        let details = json!({"patch": ops});
        self.record(
            &mut plan.steps,
            &id,
            Line::new(Step::Update, StepOutcome::Ok, summary).with(details),
        );
        let mut started =
            self.incident_from(in_flight, EventKind::RollbackStarted, &plan.request.signals);
        started.changes = changes(in_flight, &ops);
        started.patch = ops.clone();
        self.ctx.sink.emit(&started);
        let note = format!(
            "Rolling back from {} to {}: {}",
            describe_ref(&plan.from),
            describe_ref(&plan.to),
            plan.reason
        );
        self.event(&plan.deployment, Reason::RollbackStarted, note)
            .await;
    }

    /// After a 409/422: did a person change the Deployment, or did the
    /// controller only write its status? The generation, labels and
    /// annotations tell.
    async fn moved(&self, plan: &Plan, api_message: &str, attempt: usize) -> Moved {
        let target = plan.target();
        let fresh = match self.get(&plan.request.namespace, &plan.request.name).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return Moved::Unreadable(format!(
                    "{target}: Deployment deleted before the rollback patch"
                ))
            }
            Err(e) => return Moved::Unreadable(e.to_string()),
        };
        // Only the status may differ: annotations and labels (a pause, a
        // GitOps label, a rollback-to) do not move the generation, so
        // compare them too.
        let same_spec = without_replicas(&fresh) == without_replicas(&plan.deployment)
            && fresh.metadata.labels == plan.deployment.metadata.labels
            && annotations_of_people(&fresh) == annotations_of_people(&plan.deployment)
            && fresh.annotations().get(IN_FLIGHT).is_none();
        if same_spec && attempt < STATUS_RACE_RETRIES {
            return Moved::StatusOnly(fresh.metadata.resource_version.clone());
        }
        let why = format!(
            "{target} changed after the rollback was validated (resourceVersion {} -> {}, generation {} -> {}): someone deployed meanwhile; the watchdog does not overwrite it. API server: {api_message}",
            plan.deployment.resource_version().unwrap_or_default(),
            fresh.resource_version().unwrap_or_default(),
            plan.deployment.metadata.generation.unwrap_or(0),
            fresh.metadata.generation.unwrap_or(0),
        );
        Moved::Changed(Box::new(fresh), why)
    }

    pub(super) async fn stop_before_update(
        &self,
        mut plan: Plan,
        step: Step,
        outcome: StepOutcome,
        why: String,
    ) -> RollbackOutcome {
        let id = plan.id.clone();
        self.record(&mut plan.steps, &id, Line::new(step, outcome, why.clone()));
        let in_flight = self.in_flight_record(&plan);
        let mut incident =
            self.incident_from(&in_flight, EventKind::RollbackFailed, &plan.request.signals);
        incident.failed_step = Some(step.as_str().to_owned());
        incident.error = Some(why.clone());
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(
            &plan.deployment,
            Reason::RollbackFailed,
            format!("Rollback not done ({} failed): {why}", step.as_str()),
        )
        .await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &plan.id, &incident);
        RollbackOutcome {
            result: if outcome == StepOutcome::Refused {
                RollbackResult::Refused
            } else {
                RollbackResult::Failed
            },
            incident,
            steps: plan.steps,
            patch: Vec::new(),
        }
    }

    pub(super) async fn conflict_before_update(
        &self,
        mut plan: Plan,
        fresh: Deployment,
        why: String,
        ops: Vec<Value>,
    ) -> RollbackOutcome {
        let id = plan.id.clone();
        self.record(
            &mut plan.steps,
            &id,
            Line::new(Step::Update, StepOutcome::Conflict, why.clone()).with(json!({"patch": ops})),
        );
        let in_flight = self.in_flight_record(&plan);
        let mut incident =
            self.incident_from(&in_flight, EventKind::Conflict, &plan.request.signals);
        incident.failed_step = Some(Step::Update.as_str().to_owned());
        incident.error = Some(why.clone());
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(&fresh, Reason::RollbackConflict, why).await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &plan.id, &incident);
        RollbackOutcome {
            result: RollbackResult::Conflict,
            incident,
            steps: plan.steps,
            patch: ops,
        }
    }

    pub(super) fn in_flight_record(&self, plan: &Plan) -> InFlight {
        InFlight {
            id: plan.id.clone(),
            step: "wait".to_owned(),
            trigger: plan.request.trigger.clone(),
            reason: plan.reason.clone(),
            from: plan.from.clone(),
            to: plan.to.clone(),
            backup: plan.backup.clone(),
            started: rfc3339(plan.started),
            generation: plan.deployment.metadata.generation.unwrap_or(0) + 1,
            rollout_started_at: plan.request.rollout_started_at.map(rfc3339),
            detected_at: plan.request.detected_at.map(rfc3339),
            measured: measured(&plan.request.signals),
            blocklisted_redeploy: plan.request.blocklisted_redeploy,
        }
    }
}

/// The Update's JSON Patch: `test` resourceVersion, `replace` template,
/// then one `add` per annotation (never a replace of the whole map).
pub fn patch_ops(plan: &Plan, in_flight: &InFlight) -> Vec<Value> {
    let d = &plan.deployment;
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": d.resource_version().unwrap_or_default()}),
        json!({"op": "replace", "path": "/spec/template", "value": plan.template}),
    ];
    if d.metadata.annotations.is_none() {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    let now = in_flight.started.clone();
    let mut annotations: Vec<(String, String)> = vec![
        (CHANGE_CAUSE.to_owned(), change_cause(plan)),
        (
            IN_FLIGHT.to_owned(),
            serde_json::to_string(in_flight).unwrap_or_default(),
        ),
    ];
    let mut history: Vec<String> = rollbacks_of(d)
        .into_iter()
        .filter(|t| {
            *t > sub(
                plan.started,
                plan.policy.rollback_budget_window.max(plan.policy.cooldown),
            )
        })
        .map(rfc3339)
        .collect();
    history.push(now.clone());
    annotations.push((
        ROLLBACKS.to_owned(),
        serde_json::to_string(&history).unwrap_or_default(),
    ));
    let restored = Restored {
        revision: plan.to.revision,
        pod_template_hash: plan.to.pod_template_hash.clone(),
        images: plan.to.images.clone(),
    };
    annotations.push((
        keys::RESTORED.to_owned(),
        serde_json::to_string(&restored).unwrap_or_default(),
    ));
    let list = blocklist::entries(d);
    let list = if plan.blocklists_from() {
        blocklist::with(
            list,
            blocklist::Entry {
                pod_template_hash: plan.from.pod_template_hash.clone(),
                images: plan.from.images.clone(),
                revision: plan.from.revision,
                reason: plan.reason.clone(),
                at: now,
            },
        )
    } else {
        blocklist::without(list, &plan.to.pod_template_hash, &plan.to.images)
    };
    annotations.push((
        keys::BLOCKLIST.to_owned(),
        serde_json::to_string(&list).unwrap_or_default(),
    ));
    for (k, v) in annotations {
        ops.push(json!({"op": "add", "path": format!("/metadata/annotations/{}", escape_pointer(&k)), "value": v}));
    }
    // The request annotation is consumed by the rollback it asked for.
    if matches!(plan.request.trigger, Trigger::Annotation { .. })
        && d.annotations().contains_key(ROLLBACK_TO)
    {
        ops.push(json!({"op": "remove", "path": format!("/metadata/annotations/{}", escape_pointer(ROLLBACK_TO))}));
    }
    ops
}

/// `kubernetes.io/change-cause`: who rolled back, from what, to what, why.
pub fn change_cause(plan: &Plan) -> String {
    let by = match &plan.request.trigger {
        Trigger::Cli { user } if !user.is_empty() => format!(" (by {user}, CLI)"),
        Trigger::Cli { .. } => " (CLI)".to_owned(),
        Trigger::Annotation { .. } => " (annotation)".to_owned(),
        Trigger::Restore { backup } => format!(" (restore of {backup})"),
        _ => String::new(),
    };
    let verb = if matches!(plan.request.trigger, Trigger::Restore { .. }) {
        "restored"
    } else {
        "rolled back"
    };
    format!(
        "rollback-watchdog{by}: {verb} from {} to {}: {}",
        describe_ref(&plan.from),
        describe_to(&plan.to),
        plan.reason
    )
}

/// Why the patch did not land.
pub(super) enum NotPatched {
    /// 409 or 422: the resourceVersion moved; the API server's message.
    Moved(String),
    /// 429: the API server did not process it; worth another try.
    Throttled(String),
    /// Anything else, as the audit line says it.
    Failed(String),
}

/// What moved the resourceVersion.
pub(super) enum Moved {
    /// Only a status write: patch again with this version.
    StatusOnly(Option<String>),
    /// Someone changed the Deployment: a conflict, never overwritten.
    Changed(Box<Deployment>, String),
    /// It could not be read again.
    Unreadable(String),
}
