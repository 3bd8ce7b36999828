//! The rollback pipeline, the runbook's `rollback.sh` made safe to run with
//! nobody watching: Validate → Backup → Update → Wait → Verify → Audit →
//! Notify, the same steps for the judge's verdict, the CLI, the annotation
//! trigger and `restore`. Every step's outcome is an audit line; every
//! decision and result is an Event on the Deployment and an incident for
//! the notifiers.
//!
//! It must never overwrite a change it did not see (the patch opens with a
//! `test` of the resourceVersion and a human's deploy is never retried
//! over), never patch a Deployment twice for one rollback (the in-flight
//! record travels in the same patch, and a restarted watchdog only resumes
//! at Wait/Verify), never roll back automatically again when the restored
//! revision is bad too (it escalates), and never write while another
//! replica leads (`may_write` is asked before every write).
//!
//! Annotations it reads and writes on the Deployment:
//! - [`IN_FLIGHT`], `{"id","step":"wait","trigger",...,"backup","started","generation"}`
//!   from the patch until the pipeline finishes;
//! - [`ROLLBACKS`], JSON list of RFC 3339 times of its rollbacks (cooldown
//!   and budget survive restarts);
//! - [`crate::k8s::keys::BLOCKLIST`], [`crate::k8s::keys::KNOWN_GOOD`];
//! - it honours [`crate::k8s::keys::PAUSED`], [`IRREVERSIBLE`] and GitOps
//!   labels, and sets `kubernetes.io/change-cause`.

pub mod backup;

use crate::k8s::keys;
use crate::k8s::keys::{
    CHANGE_CAUSE, FIELD_MANAGER, IN_FLIGHT, IRREVERSIBLE, KNOWN_GOOD, ROLLBACKS, ROLLBACK_TO,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{Config, EventKind, Policy};
use crate::observe::blocklist;
use crate::observe::cache::Snapshot;
use crate::observe::revision::{self, Revision, Rollout};
use crate::pipeline::backup::{Backups, Record};
use crate::report::audit::{AuditLine, AuditLog, EventPublisher, Notice};
use crate::report::incident::{Incident, IncidentSink, RevisionRef, Trigger};
use crate::signals::{SignalResult, Signals, Subject};

/// How long one API call of the pipeline may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// A `test` that failed only because the controller wrote the status is
/// re-issued (with the fresh resourceVersion) at most this many times.
const STATUS_RACE_RETRIES: usize = 2;

/// What to check when a call never got an answer from the API server (an
/// answer, like 403 or 404, speaks for itself).
fn api_hint(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(_) => "",
        _ => "; the API server was not reached: check the server address in KUBECONFIG (or the in-cluster service account) and the network path to it",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Audit(#[from] crate::report::audit::AuditError),
    #[error("cannot build the signal sources for verification: {0}")]
    Signals(#[from] crate::signals::SignalsError),
    #[error("{target}: {what}: {source}{hint}", hint = api_hint(.source))]
    Api {
        target: String,
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("{target}: {what}: the API server did not answer within {timeout:?}")]
    Timeout {
        target: String,
        what: String,
        timeout: Duration,
    },
    #[error("annotation {IN_FLIGHT} on {target} is not an in-flight record: {source}")]
    BadInFlight {
        target: String,
        #[source]
        source: serde_json::Error,
    },
}

/// What to roll back to.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// The last known-good revision, else the highest older revision that
    /// is not blocklisted.
    Previous,
    /// A revision number, as `kubectl rollout history` lists it.
    Revision(i64),
    /// `kubectl set image` semantics: this tag on the named container, or on
    /// the only one.
    ImageTag {
        container: Option<String>,
        tag: String,
    },
    /// A pod template from a backup (`restore`).
    Template {
        backup: String,
        template: Box<PodTemplateSpec>,
    },
}

/// One request to roll a Deployment back.
#[derive(Debug, Clone)]
pub struct RollbackRequest {
    pub namespace: String,
    pub name: String,
    pub to: Target,
    pub trigger: Trigger,
    /// Why, in one sentence; derived from the failing signals when None.
    pub reason: Option<String>,
    /// The failing signals behind the decision.
    pub signals: Vec<SignalResult>,
    /// Validate and report the patch only (ORed with the policy's and the
    /// global `dry_run`).
    pub dry_run: bool,
    pub rollout_started_at: Option<jiff::Timestamp>,
    pub detected_at: Option<jiff::Timestamp>,
    /// The target's effective policy (the run loop has it); None: resolved
    /// from the config like the run loop would.
    pub policy: Option<Policy>,
    /// The bad revision re-deploys a blocklisted template (flagged in the
    /// notifications).
    pub blocklisted_redeploy: bool,
    /// The `pod-template-hash` the verdict was about. When the Deployment's
    /// current revision is another one by the time Validate reads it (a
    /// person deployed or undid meanwhile), the rollback is refused: a
    /// verdict on one revision never rolls back another.
    pub judged_hash: Option<String>,
}

impl RollbackRequest {
    /// A request with nothing but the essentials; fill in the rest.
    pub fn new(namespace: &str, name: &str, to: Target, trigger: Trigger) -> Self {
        RollbackRequest {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            to,
            trigger,
            reason: None,
            signals: Vec::new(),
            dry_run: false,
            rollout_started_at: None,
            detected_at: None,
            policy: None,
            blocklisted_redeploy: false,
            judged_hash: None,
        }
    }

    pub fn target(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The pipeline's steps, as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Validate,
    Backup,
    Update,
    Wait,
    Verify,
    Audit,
    Notify,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validate => "validate",
            Step::Backup => "backup",
            Step::Update => "update",
            Step::Wait => "wait",
            Step::Verify => "verify",
            Step::Audit => "audit",
            Step::Notify => "notify",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Ok,
    Refused,
    Failed,
    Conflict,
    DryRun,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Refused => "refused",
            StepOutcome::Failed => "failed",
            StepOutcome::Conflict => "conflict",
            StepOutcome::DryRun => "dry_run",
        }
    }
}

/// One step's outcome, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: Step,
    pub outcome: StepOutcome,
    /// One sentence.
    pub summary: String,
    pub details: Value,
    pub at: String,
}

/// How the whole rollback ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RollbackResult {
    /// Rolled out and verified.
    Succeeded,
    /// Validate said no; nothing was changed.
    Refused,
    /// Dry run: validated, the patch reported, nothing changed.
    WouldRollBack,
    /// Someone changed the Deployment first; nothing was overwritten.
    Conflict,
    /// A step failed before the restored revision could be judged.
    Failed,
    /// Patched, but the restored revision did not come up healthy: a
    /// person must act. Never followed by another automatic rollback.
    Escalated,
    /// This process lost the right to write (leadership lost, or shutting
    /// down) and stopped before its next write. If the patch was sent, the
    /// in-flight record on the Deployment stays, and the next leader (or
    /// the next start) resumes at Wait/Verify; nothing was notified here.
    HandedOver,
}

/// What the pipeline did.
#[derive(Debug, Clone)]
pub struct RollbackOutcome {
    pub result: RollbackResult,
    /// The decision record (also emitted to the sink unless noted).
    pub incident: Incident,
    pub steps: Vec<StepRecord>,
    /// The JSON Patch sent (or, in a dry run, that would be sent).
    pub patch: Vec<Value>,
}

impl RollbackOutcome {
    /// The sentence that says why, for refusals and failures.
    pub fn why(&self) -> String {
        self.incident
            .error
            .clone()
            .unwrap_or_else(|| self.incident.reason.clone())
    }
}

/// Rollout progress while waiting, for the CLI to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    pub target: String,
    pub replicas: i32,
    pub updated: i32,
    pub available: i32,
    /// Replicas of older revisions still running.
    pub old: i32,
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}/{} updated, {}/{} available",
            self.target, self.updated, self.replicas, self.available, self.replicas
        )?;
        if self.old > 0 {
            write!(f, ", {} old", self.old)?;
        }
        Ok(())
    }
}

pub type WriteGuard = Arc<dyn Fn() -> bool + Send + Sync>;
pub type Clock = Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>;
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// Everything the pipeline needs, passed down; cheap to clone.
#[derive(Clone)]
pub struct Context {
    pub client: Client,
    pub config: Arc<Config>,
    pub sink: Arc<dyn IncidentSink>,
    pub audit: AuditLog,
    /// Leadership: asked before every write; false stops the pipeline.
    pub may_write: WriteGuard,
    pub clock: Clock,
    /// The signal sources Verify evaluates; None: readiness only.
    pub signals: Option<Signals>,
    pub progress: Option<ProgressFn>,
    /// Per API call.
    pub api_timeout: Duration,
    /// How often Wait reads the Deployment.
    pub poll_interval: Duration,
    events: EventPublisher,
    /// Deployments this process is rolling back right now.
    active: Arc<Mutex<HashSet<String>>>,
}

impl Context {
    /// A context that always may write, with the wall clock and the
    /// signal sources of the config. Opens the audit log now, so an
    /// unwritable one stops everything before any change.
    pub fn new(
        client: Client,
        config: Arc<Config>,
        sink: Arc<dyn IncidentSink>,
    ) -> Result<Context, RollbackError> {
        let audit = AuditLog::open(&config.watchdog.audit_log)?;
        let signals = Signals::from_config(&config)?;
        Ok(Context {
            events: EventPublisher::new(client.clone()),
            client,
            config,
            sink,
            audit,
            may_write: Arc::new(|| true),
            clock: Arc::new(jiff::Timestamp::now),
            signals: Some(signals),
            progress: None,
            api_timeout: API_TIMEOUT,
            poll_interval: Duration::from_secs(1),
            active: Arc::default(),
        })
    }

    pub fn with_may_write(mut self, guard: WriteGuard) -> Self {
        self.may_write = guard;
        self
    }

    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    pub fn with_signals(mut self, signals: Option<Signals>) -> Self {
        self.signals = signals;
        self
    }

    fn now(&self) -> jiff::Timestamp {
        (self.clock)()
    }

    fn deployments(&self, namespace: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn backups(&self) -> Backups {
        Backups::new(
            self.client.clone(),
            &self.config.watchdog.namespace,
            self.api_timeout,
        )
    }

    /// The effective policy of a Deployment, as the run loop resolves it.
    pub fn policy_for(&self, d: &Deployment) -> Policy {
        policy_for(&self.config, d)
    }
}

/// The effective policy of a Deployment, as the run loop resolves it: its
/// target's (with annotation overrides), else `[defaults]`, with the
/// global `dry_run` and `paused` switches folded in.
pub fn policy_for(config: &Config, d: &Deployment) -> Policy {
    let snapshot = Snapshot::from_objects([d.clone()], [], []);
    let resolution = crate::observe::targets::resolve(config, &snapshot);
    let (ns, name) = (d.namespace().unwrap_or_default(), d.name_any());
    let mut policy = resolution
        .targets
        .into_iter()
        .find(|t| t.namespace == ns && t.name == name)
        .map(|t| t.policy)
        .unwrap_or_else(|| config.opt_in_policy());
    policy.dry_run |= config.watchdog.dry_run;
    policy.paused |= config.watchdog.paused;
    policy
}

/// The in-flight record kept in [`IN_FLIGHT`] from the patch until the
/// pipeline finishes: enough to resume at Wait/Verify after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InFlight {
    pub id: String,
    /// The next step: always `wait` (Wait then Verify).
    pub step: String,
    pub trigger: Trigger,
    pub reason: String,
    pub from: RevisionRef,
    pub to: RevisionRef,
    /// The backup ConfigMap, `namespace/name`.
    pub backup: Option<String>,
    /// When the pipeline started, RFC 3339.
    pub started: String,
    /// The Deployment's generation our patch produced: a higher one means
    /// someone changed it after us.
    pub generation: i64,
    #[serde(default)]
    pub rollout_started_at: Option<String>,
    #[serde(default)]
    pub detected_at: Option<String>,
    /// The failing signals as sentences.
    #[serde(default)]
    pub measured: Vec<String>,
}

/// The in-flight record on a Deployment, if any.
pub fn in_flight_of(d: &Deployment) -> Result<Option<InFlight>, RollbackError> {
    match d.annotations().get(IN_FLIGHT) {
        None => Ok(None),
        Some(t) if t.trim().is_empty() => Ok(None),
        Some(t) => serde_json::from_str(t)
            .map(Some)
            .map_err(|source| RollbackError::BadInFlight {
                target: target_of(d),
                source,
            }),
    }
}

/// Times of the watchdog's rollbacks recorded on a Deployment.
pub fn rollbacks_of(d: &Deployment) -> Vec<jiff::Timestamp> {
    d.annotations()
        .get(ROLLBACKS)
        .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A validated rollback, ready for Backup and Update.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: String,
    pub request: RollbackRequest,
    pub policy: Policy,
    /// The Deployment as validated; its resourceVersion guards the patch.
    pub deployment: Deployment,
    pub from: RevisionRef,
    pub to: RevisionRef,
    /// The pod template the patch puts in place (no `pod-template-hash`).
    pub template: Value,
    pub reason: String,
    pub dry_run: bool,
    /// Things on-call should know ("the target was never verified").
    pub notes: Vec<String>,
    /// `namespace/name` of the backup, once written.
    pub backup: Option<String>,
    pub started: jiff::Timestamp,
    pub steps: Vec<StepRecord>,
    /// The JSON Patch sent, once sent.
    pub patch: Vec<Value>,
}

impl Plan {
    pub fn target(&self) -> String {
        self.request.target()
    }

    /// Whether the rolled-back revision goes on the blocklist: not when a
    /// person restores a backup (that undoes a rollback on purpose).
    fn blocklists_from(&self) -> bool {
        !matches!(self.request.trigger, Trigger::Restore { .. })
    }
}

/// The pipeline. Build one per process (or per command) from a [`Context`].
#[derive(Clone)]
pub struct Pipeline {
    ctx: Context,
}

impl Pipeline {
    pub fn new(ctx: Context) -> Self {
        Pipeline { ctx }
    }

    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The whole pipeline for one request.
    pub async fn run(&self, request: RollbackRequest) -> RollbackOutcome {
        let asked_by_annotation = matches!(request.trigger, Trigger::Annotation { .. });
        let (ns, name) = (request.namespace.clone(), request.name.clone());
        let outcome = match self.plan(request).await {
            Ok(plan) => self.execute(plan).await,
            Err(refused) => *refused,
        };
        // A request by annotation is answered once, whatever the answer:
        // left in place, a conflict or a failed step would fire it again
        // on the next tick, against whatever is deployed by then.
        if asked_by_annotation && outcome.result != RollbackResult::Succeeded {
            if let Ok(Some(d)) = self.get(&ns, &name).await {
                self.consume_request_annotation(&d).await;
            }
        }
        outcome
    }

    /// Validate: reads the Deployment and its ReplicaSets and decides the
    /// target, or refuses with a sentence (recorded, told on the Deployment,
    /// and for automatic triggers notified).
    pub async fn plan(&self, request: RollbackRequest) -> Result<Plan, Box<RollbackOutcome>> {
        let started = self.ctx.now();
        match self.validate(&request, started).await {
            Ok(mut plan) => {
                let summary = format!(
                    "rollback of {} from {} to {} is allowed{}",
                    plan.target(),
                    describe_ref(&plan.from),
                    describe_ref(&plan.to),
                    if plan.notes.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", plan.notes.join("; "))
                    }
                );
                let details = json!({
                    "from": plan.from, "to": plan.to, "reason": plan.reason,
                    "notes": plan.notes, "dry_run": plan.dry_run,
                });
                let (id, target) = (plan.id.clone(), plan.target());
                self.record(
                    &mut plan.steps,
                    &id,
                    &target,
                    Step::Validate,
                    StepOutcome::Ok,
                    summary,
                    details,
                );
                Ok(plan)
            }
            Err(refusal) => Err(Box::new(self.refuse(request, refusal, started).await)),
        }
    }

    /// Backup, Update, Wait, Verify, Audit, Notify for a validated plan (or
    /// only the report, for a dry run).
    pub async fn execute(&self, mut plan: Plan) -> RollbackOutcome {
        if plan.dry_run {
            return self.dry_run(plan).await;
        }
        let key = plan.target();
        if !self.claim(&key) {
            let why = format!("a rollback of {key} is already running in this watchdog");
            return self
                .stop_before_update(plan, Step::Validate, StepOutcome::Refused, why)
                .await;
        }
        let outcome = self.execute_claimed(&mut plan).await;
        self.release(&key);
        outcome
    }

    async fn execute_claimed(&self, plan: &mut Plan) -> RollbackOutcome {
        if let Err(outcome) = self.backup(plan).await {
            return *outcome;
        }
        let in_flight = match self.update(plan).await {
            Ok(f) => f,
            Err(outcome) => return *outcome,
        };
        let steps = std::mem::take(&mut plan.steps);
        self.finish(
            in_flight,
            steps,
            plan.request.signals.clone(),
            plan.patch.clone(),
        )
        .await
    }

    /// Backup: the whole Deployment and the record, as a ConfigMap; then
    /// prunes old backups. A failed backup stops the rollback.
    pub async fn backup(&self, plan: &mut Plan) -> Result<(), Box<RollbackOutcome>> {
        if !(self.ctx.may_write)() {
            let plan = plan.clone();
            return Err(Box::new(self.not_leader(plan, Step::Backup).await));
        }
        let record = Record {
            id: plan.id.clone(),
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
        };
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
                let (id, target) = (plan.id.clone(), plan.target());
                self.record(
                    &mut plan.steps,
                    &id,
                    &target,
                    Step::Backup,
                    StepOutcome::Ok,
                    summary,
                    details,
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

    /// Update: the one JSON Patch (test resourceVersion, replace the
    /// template, annotations including the in-flight record). A human's
    /// change in between is a conflict: reported, never overwritten.
    pub async fn update(&self, plan: &mut Plan) -> Result<InFlight, Box<RollbackOutcome>> {
        let target = plan.target();
        let api = self.ctx.deployments(&plan.request.namespace);
        let mut attempt = 0;
        loop {
            if !(self.ctx.may_write)() {
                let plan = plan.clone();
                return Err(Box::new(self.not_leader(plan, Step::Update).await));
            }
            let in_flight = self.in_flight_record(plan);
            let ops = patch_ops(plan, &in_flight);
            let patch: json_patch::Patch = match serde_json::from_value(Value::Array(ops.clone())) {
                Ok(p) => p,
                Err(e) => {
                    let why = format!("cannot build the patch for {target}: {e}");
                    let plan = plan.clone();
                    return Err(Box::new(
                        self.stop_before_update(plan, Step::Update, StepOutcome::Failed, why)
                            .await,
                    ));
                }
            };
            let pp = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            let sent = tokio::time::timeout(
                self.ctx.api_timeout,
                api.patch(&plan.request.name, &pp, &Patch::<Value>::Json(patch)),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {
                    plan.patch = ops.clone();
                    let summary = format!(
                        "patched {target}: template of {} in place of {}",
                        describe_ref(&plan.to),
                        describe_ref(&plan.from)
                    );
                    let (id, t) = (plan.id.clone(), target.clone());
                    self.record(
                        &mut plan.steps,
                        &id,
                        &t,
                        Step::Update,
                        StepOutcome::Ok,
                        summary,
                        json!({"patch": ops}),
                    );
                    let mut started = self.incident_from(
                        &in_flight,
                        EventKind::RollbackStarted,
                        &plan.request.signals,
                    );
                    started.changes = changes(&ops);
                    self.ctx.sink.emit(&started);
                    self.event(
                        &plan.deployment,
                        false,
                        "RollbackStarted",
                        format!(
                            "Rolling back from {} to {}: {}",
                            describe_ref(&plan.from),
                            describe_ref(&plan.to),
                            plan.reason
                        ),
                    )
                    .await;
                    return Ok(in_flight);
                }
                Ok(Err(kube::Error::Api(status))) if status.code == 422 || status.code == 409 => {
                    // Did a person change the spec, or did the controller
                    // only write the status? The generation tells.
                    let fresh = match self.get(&plan.request.namespace, &plan.request.name).await {
                        Ok(Some(d)) => d,
                        Ok(None) => {
                            let why =
                                format!("{target}: Deployment deleted before the rollback patch");
                            let plan = plan.clone();
                            return Err(Box::new(
                                self.stop_before_update(
                                    plan,
                                    Step::Update,
                                    StepOutcome::Failed,
                                    why,
                                )
                                .await,
                            ));
                        }
                        Err(e) => {
                            let plan = plan.clone();
                            return Err(Box::new(
                                self.stop_before_update(
                                    plan,
                                    Step::Update,
                                    StepOutcome::Failed,
                                    e.to_string(),
                                )
                                .await,
                            ));
                        }
                    };
                    // Only the status may differ: annotations and labels
                    // (a pause, a GitOps label, a rollback-to) do not move
                    // the generation, so compare them too.
                    let same_spec = without_replicas(&fresh) == without_replicas(&plan.deployment)
                        && fresh.metadata.labels == plan.deployment.metadata.labels
                        && fresh.metadata.annotations == plan.deployment.metadata.annotations
                        && fresh.annotations().get(IN_FLIGHT).is_none();
                    if same_spec && attempt < STATUS_RACE_RETRIES {
                        attempt += 1;
                        tracing::info!(target = %target, "resourceVersion moved by a status write only; patching again with the fresh version");
                        plan.deployment.metadata.resource_version =
                            fresh.metadata.resource_version.clone();
                        continue;
                    }
                    let why = format!(
                        "{target} changed after the rollback was validated (resourceVersion {} -> {}, generation {} -> {}): someone deployed meanwhile; the watchdog does not overwrite it. API server: {}",
                        plan.deployment.resource_version().unwrap_or_default(),
                        fresh.resource_version().unwrap_or_default(),
                        plan.deployment.metadata.generation.unwrap_or(0),
                        fresh.metadata.generation.unwrap_or(0),
                        status.message
                    );
                    let plan = plan.clone();
                    return Err(Box::new(
                        self.conflict_before_update(plan, fresh, why, ops).await,
                    ));
                }
                Ok(Err(e)) => {
                    let why = format!("{target}: the rollback patch was rejected: {e}");
                    let plan = plan.clone();
                    return Err(Box::new(
                        self.stop_before_update(plan, Step::Update, StepOutcome::Failed, why)
                            .await,
                    ));
                }
                Err(_) => {
                    // The patch may or may not have landed: if it did, the
                    // in-flight record says so and `resume` finishes it.
                    let why = format!(
                        "{target}: the API server did not answer the rollback patch within {:?}; if it was applied, the in-flight record {IN_FLIGHT} lets the next start resume it",
                        self.ctx.api_timeout
                    );
                    let plan = plan.clone();
                    return Err(Box::new(
                        self.stop_before_update(plan, Step::Update, StepOutcome::Failed, why)
                            .await,
                    ));
                }
            }
        }
    }

    /// For the run loop, at start-up and on each tick: finishes a rollback
    /// a previous process patched but did not finish (Wait, Verify, Audit,
    /// Notify; never a second patch). None when `deployment` has no
    /// in-flight record or this process is already finishing it.
    pub async fn resume(&self, deployment: &Deployment) -> Option<RollbackOutcome> {
        let in_flight = match in_flight_of(deployment) {
            Ok(Some(f)) => f,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("{e}");
                return None;
            }
        };
        let key = target_of(deployment);
        if !self.claim(&key) {
            return None;
        }
        let mut steps = Vec::new();
        self.record(
            &mut steps,
            &in_flight.id,
            &key,
            Step::Wait,
            StepOutcome::Ok,
            format!(
                "resuming the rollback of {key} found in flight (started {}): Wait and Verify, no second patch",
                in_flight.started
            ),
            json!({"resumed": true, "in_flight": in_flight}),
        );
        let outcome = self.finish(in_flight, steps, Vec::new(), Vec::new()).await;
        self.release(&key);
        Some(outcome)
    }

    /// Wait, Verify, then the closing patch (in-flight cleared, known-good
    /// kept), the report, the Event and the notification.
    async fn finish(
        &self,
        in_flight: InFlight,
        mut steps: Vec<StepRecord>,
        signals: Vec<SignalResult>,
        patch: Vec<Value>,
    ) -> RollbackOutcome {
        let (ns, name) = split_target(&in_flight.id);
        let target = format!("{ns}/{name}");
        let policy = match self.get(&ns, &name).await {
            Ok(Some(d)) => self.ctx.policy_for(&d),
            _ => self.ctx.config.opt_in_policy(),
        };
        let waited = self.wait(&ns, &name, &in_flight, &policy).await;
        let (result, failed_step, error, final_deployment) = match waited {
            Waited::Done(d) => {
                self.record(
                    &mut steps,
                    &in_flight.id,
                    &target,
                    Step::Wait,
                    StepOutcome::Ok,
                    format!("{target} is fully rolled out"),
                    json!({"revision": revision_annotation(&d)}),
                );
                match self.verify(&d, &in_flight, &policy).await {
                    Verified::HandedOver => {
                        return self.handed_over(&in_flight, steps, patch, Step::Verify, None)
                    }
                    Verified::Passed { summary, details } => {
                        self.record(
                            &mut steps,
                            &in_flight.id,
                            &target,
                            Step::Verify,
                            StepOutcome::Ok,
                            summary,
                            details,
                        );
                        (RollbackResult::Succeeded, None, None, Some(d))
                    }
                    Verified::Failed { summary, details } => {
                        self.record(
                            &mut steps,
                            &in_flight.id,
                            &target,
                            Step::Verify,
                            StepOutcome::Failed,
                            summary.clone(),
                            details,
                        );
                        (
                            RollbackResult::Escalated,
                            Some(Step::Verify),
                            Some(summary),
                            Some(d),
                        )
                    }
                    Verified::Superseded(why, d) => {
                        self.record(
                            &mut steps,
                            &in_flight.id,
                            &target,
                            Step::Verify,
                            StepOutcome::Conflict,
                            why.clone(),
                            Value::Null,
                        );
                        (
                            RollbackResult::Conflict,
                            Some(Step::Verify),
                            Some(why),
                            Some(*d),
                        )
                    }
                }
            }
            Waited::HandedOver => {
                return self.handed_over(&in_flight, steps, patch, Step::Wait, None)
            }
            Waited::Failed(why, d) => {
                self.record(
                    &mut steps,
                    &in_flight.id,
                    &target,
                    Step::Wait,
                    StepOutcome::Failed,
                    why.clone(),
                    Value::Null,
                );
                (RollbackResult::Escalated, Some(Step::Wait), Some(why), d)
            }
            Waited::Superseded(why, d) => {
                self.record(
                    &mut steps,
                    &in_flight.id,
                    &target,
                    Step::Wait,
                    StepOutcome::Conflict,
                    why.clone(),
                    Value::Null,
                );
                (
                    RollbackResult::Conflict,
                    Some(Step::Wait),
                    Some(why),
                    Some(d),
                )
            }
        };

        // Leadership may have gone while verifying: the closing write, the
        // report and the notification belong to whoever leads now.
        if !(self.ctx.may_write)() {
            return self.handed_over(&in_flight, steps, patch, Step::Verify, None);
        }
        // Close the record; keep known-good on the restored template.
        if let Some(d) = &final_deployment {
            if let Err(why) = self
                .close(d, &in_flight, result == RollbackResult::Succeeded)
                .await
            {
                // The record is still on the Deployment: telling on-call
                // now would be told again by whoever resumes it. Leave it
                // to the next tick (or the next leader), which resumes.
                let why = format!(
                    "{why}; the in-flight record stays and the rollback is resumed at Wait/Verify, then reported"
                );
                return self.handed_over(&in_flight, steps, patch, Step::Verify, Some(why));
            }
        }

        let kind = match result {
            RollbackResult::Succeeded => EventKind::RollbackSucceeded,
            RollbackResult::Conflict => EventKind::Conflict,
            _ => EventKind::Escalation,
        };
        let mut incident = self.incident_from(&in_flight, kind, &signals);
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        incident.failed_step = failed_step.map(|s| s.as_str().to_owned());
        incident.error = error.clone();
        incident.changes = changes(&patch);
        if let Some(d) = &final_deployment {
            let (warning, reason, note) = match result {
                RollbackResult::Succeeded => (false, "RolledBack", format!(
                    "Rolled back from {} to {} and verified: {}", describe_ref(&in_flight.from), describe_ref(&in_flight.to), in_flight.reason)),
                RollbackResult::Conflict => (true, "RollbackConflict", error.clone().unwrap_or_default()),
                _ => (true, "RollbackEscalated", format!(
                    "Rolled back to {} but it is not healthy ({}): a person must act; the watchdog will not roll back again",
                    describe_ref(&in_flight.to), error.clone().unwrap_or_default())),
            };
            self.event(d, warning, reason, note).await;
        }
        if result == RollbackResult::Escalated {
            tracing::error!(target = %target, error = %error.clone().unwrap_or_default(),
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
        self.notify(&mut steps, &incident);
        RollbackOutcome {
            result,
            incident,
            steps,
            patch,
        }
    }

    async fn dry_run(&self, mut plan: Plan) -> RollbackOutcome {
        let in_flight = self.in_flight_record(&plan);
        let ops = patch_ops(&plan, &in_flight);
        let target = plan.target();
        let summary = format!(
            "dry run: would patch {target} from {} to {} ({} operations); nothing changed",
            describe_ref(&plan.from),
            describe_ref(&plan.to),
            ops.len()
        );
        let id = plan.id.clone();
        self.record(
            &mut plan.steps,
            &id,
            &target,
            Step::Update,
            StepOutcome::DryRun,
            summary,
            json!({"patch": ops}),
        );
        let mut incident =
            self.incident_from(&in_flight, EventKind::WouldRollBack, &plan.request.signals);
        incident.dry_run = true;
        incident.changes = changes(&ops);
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(
            &plan.deployment,
            false,
            "WouldRollBack",
            format!(
                "Dry run: would roll back from {} to {}: {}",
                describe_ref(&plan.from),
                describe_ref(&plan.to),
                plan.reason
            ),
        )
        .await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &incident);
        RollbackOutcome {
            result: RollbackResult::WouldRollBack,
            incident,
            steps: plan.steps,
            patch: ops,
        }
    }

    // ---- Validate ----

    async fn validate(
        &self,
        request: &RollbackRequest,
        started: jiff::Timestamp,
    ) -> Result<Plan, Refusal> {
        let target = request.target();
        let d = match self.get(&request.namespace, &request.name).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Refusal::new(format!(
                "{target}: Deployment not found; check the namespace and name (kubectl get deploy -n {})",
                request.namespace
            ))),
            Err(e) => return Err(Refusal::failed(e.to_string())),
        };
        let policy = request
            .policy
            .clone()
            .unwrap_or_else(|| self.ctx.policy_for(&d));
        let refuse = |why: String| Err(Refusal::on(why, &d));

        if let Some(f) = in_flight_of(&d).ok().flatten() {
            return refuse(format!(
                "a rollback of {target} is already in flight (started {}, to {}); it resumes at Wait/Verify, wait for it to finish",
                f.started, describe_ref(&f.to)
            ));
        }
        if d.annotations().contains_key(IN_FLIGHT) {
            return refuse(format!("{target} carries an unreadable {IN_FLIGHT} record; a rollback may be in flight: remove the annotation once you checked"));
        }
        if self.is_active(&target) {
            return refuse(format!(
                "a rollback of {target} is already running in this watchdog"
            ));
        }
        if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            return refuse(format!("{target} is paused (spec.paused); resume it with `kubectl rollout resume deployment/{} -n {}` first", request.name, request.namespace));
        }
        if d.annotations()
            .get(crate::k8s::keys::PAUSED)
            .map(|v| v.trim())
            == Some("true")
        {
            return refuse(format!(
                "{target} carries {}: \"true\"; the watchdog takes no action on it",
                crate::k8s::keys::PAUSED
            ));
        }
        if policy.paused {
            return refuse(format!("the watchdog is paused for {target} (paused = true in the config); it takes no action"));
        }
        if let Some(tool) = gitops_manager(&d) {
            if !policy.allow_gitops {
                return refuse(format!(
                    "{target} is managed by {tool}: a sync would undo the rollback; roll back in Git, or set allow_gitops = true for this target"
                ));
            }
        }

        let replicasets = self
            .replicasets(&d)
            .await
            .map_err(|e| Refusal::failed(e.to_string()))?;
        let (current, previous) = match revision::rollout(&d, &replicasets) {
            Rollout::Known { current, previous } => (current, previous),
            Rollout::Pending { why } => return refuse(format!("{target}: the current revision is not known yet ({why}); try again when the rollout has started")),
        };
        if let Some(judged) = &request.judged_hash {
            if *judged != current.pod_template_hash {
                return refuse(format!(
                    "{target} changed since the verdict: the bad revision was {judged}, the current one is revision {} ({}); someone deployed meanwhile, so nothing is rolled back",
                    current.number, current.pod_template_hash
                ));
            }
        }
        let current_rs = replicasets
            .iter()
            .find(|rs| rs.name_any() == current.replica_set);
        if is_irreversible(&d, current_rs.map(|r| r.as_ref())) {
            return refuse(format!(
                "revision {} of {target} is marked {IRREVERSIBLE}: \"true\" (e.g. a schema migration); the watchdog only alerts, roll forward by hand",
                current.number
            ));
        }

        let now = self.ctx.now();
        let history = rollbacks_of(&d);
        if let Some(last) = history.iter().max() {
            let until = add(*last, policy.cooldown);
            if now < until {
                return refuse(format!(
                    "{target} was rolled back at {last}; the cooldown ({}) forbids another rollback until {until}",
                    humantime::format_duration(policy.cooldown)
                ));
            }
        }
        let since = sub(now, policy.rollback_budget_window);
        let recent = history.iter().filter(|t| **t > since).count();
        if recent >= policy.max_rollbacks_per_window as usize {
            return refuse(format!(
                "{target} was rolled back {recent} time(s) in the last {}; max_rollbacks_per_window = {} forbids another",
                humantime::format_duration(policy.rollback_budget_window),
                policy.max_rollbacks_per_window
            ));
        }

        let blocked = blocklist::entries(&d);
        let is_blocked = |r: &Revision| {
            blocked
                .iter()
                .find(|e| e.matches(&r.pod_template_hash, &r.images))
                .cloned()
        };
        let known_good = revision::known_good_of(&d).ok().flatten();
        let owned = revision::owned_revisions(&d, &replicasets);
        let current_template = d
            .spec
            .as_ref()
            .map(|s| revision::template_without_hash(&s.template));
        let mut notes = Vec::new();

        let (to, template): (RevisionRef, Value) = match &request.to {
            Target::Previous | Target::Revision(_) => {
                let chosen: (Revision, &ReplicaSet) = match &request.to {
                    Target::Revision(n) => {
                        let Some(found) = owned.iter().find(|(r, _)| r.number == *n) else {
                            let list: Vec<String> =
                                owned.iter().map(|(r, _)| r.number.to_string()).collect();
                            return refuse(format!("revision {n} of {target} not found (revisions: {}); see `rollback-watchdog history {target}`", list.join(", ")));
                        };
                        if found.0.number == current.number {
                            return refuse(format!("skipped rollback: revision {n} is the current revision of {target}"));
                        }
                        if let Some(e) = is_blocked(&found.0) {
                            return refuse(format!("revision {n} of {target} is blocklisted ({}, rolled back at {}); remove it from {} to use it", e.reason, e.at, keys::BLOCKLIST));
                        }
                        (found.0.clone(), found.1)
                    }
                    _ => {
                        let by_known_good = known_good.as_ref().and_then(|kg| {
                            owned.iter().rev().find(|(r, _)| {
                                r.pod_template_hash == kg.pod_template_hash
                                    && r.number != current.number
                                    && is_blocked(r).is_none()
                            })
                        });
                        match by_known_good {
                            Some((r, rs)) => (r.clone(), *rs),
                            None => {
                                let older = owned.iter().rev().find(|(r, _)| {
                                    r.number < current.number && is_blocked(r).is_none()
                                });
                                match older {
                                    Some((r, rs)) => {
                                        notes.push(format!(
                                            "revision {} was never verified as known-good",
                                            r.number
                                        ));
                                        (r.clone(), *rs)
                                    }
                                    None => {
                                        let why = if previous.is_some() {
                                            "every older revision is blocklisted"
                                        } else {
                                            "it has no older revision"
                                        };
                                        return refuse(format!(
                                            "no revision of {target} to roll back to: {why}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                };
                let (rev, rs) = chosen;
                let Some(rs_template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
                    return refuse(format!(
                        "revision {} of {target} (ReplicaSet {}) has no pod template",
                        rev.number, rev.replica_set
                    ));
                };
                if Some(revision::template_without_hash(&rs_template)) == current_template {
                    return refuse(format!("skipped rollback: revision {}'s template is the current template of {target}", rev.number));
                }
                let verified = known_good
                    .as_ref()
                    .is_some_and(|kg| kg.pod_template_hash == rev.pod_template_hash);
                (revision_ref(&rev, verified), template_value(&rs_template))
            }
            Target::ImageTag { container, tag } => {
                if !tag_is_well_formed(tag) {
                    return refuse(format!("{tag:?} is not an image tag like v1.2.3 (letters, digits, _ . -, at most 128)"));
                }
                let Some(mut tpl) = d.spec.as_ref().map(|s| s.template.clone()) else {
                    return refuse(format!("{target} has no pod template"));
                };
                let Some(pod) = tpl.spec.as_mut() else {
                    return refuse(format!("{target} has no pod spec"));
                };
                let names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
                let index = match container {
                    Some(c) => match names.iter().position(|n| n == c) {
                        Some(i) => i,
                        None => {
                            return refuse(format!(
                                "{target} has no container {c:?} (containers: {})",
                                names.join(", ")
                            ))
                        }
                    },
                    None if names.len() == 1 => 0,
                    None => {
                        return refuse(format!(
                            "{target} has {} containers ({}); name one with --container",
                            names.len(),
                            names.join(", ")
                        ))
                    }
                };
                let old = pod.containers[index].image.clone().unwrap_or_default();
                let new = with_tag(&old, tag);
                if new == old {
                    return refuse(format!(
                        "skipped rollback: container {} of {target} already runs {new}",
                        names[index]
                    ));
                }
                pod.containers[index].image = Some(new.clone());
                let images = template_images(&tpl);
                let same = owned.iter().rev().find(|(_, rs)| {
                    rs.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(revision::template_without_hash)
                        == Some(revision::template_without_hash(&tpl))
                });
                let to = match same {
                    Some((r, _)) => revision_ref(
                        r,
                        known_good
                            .as_ref()
                            .is_some_and(|kg| kg.pod_template_hash == r.pod_template_hash),
                    ),
                    None => RevisionRef {
                        revision: 0,
                        pod_template_hash: String::new(),
                        images: images.clone(),
                        known_good: false,
                    },
                };
                if let Some(e) = blocked
                    .iter()
                    .find(|e| e.matches(&to.pod_template_hash, &images))
                {
                    return refuse(format!(
                        "{new} is blocklisted on {target} ({}, rolled back at {})",
                        e.reason, e.at
                    ));
                }
                if !to.known_good {
                    notes.push(format!("image {new} was never verified as known-good"));
                }
                (to, template_value(&tpl))
            }
            Target::Template { backup, template } => {
                if Some(revision::template_without_hash(template)) == current_template {
                    return refuse(format!("skipped restore: the template in backup {backup} is the current template of {target}"));
                }
                let same = owned.iter().rev().find(|(_, rs)| {
                    rs.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(revision::template_without_hash)
                        == Some(revision::template_without_hash(template))
                });
                let to = match same {
                    Some((r, _)) => revision_ref(
                        r,
                        known_good
                            .as_ref()
                            .is_some_and(|kg| kg.pod_template_hash == r.pod_template_hash),
                    ),
                    None => RevisionRef {
                        revision: 0,
                        pod_template_hash: String::new(),
                        images: template_images(template),
                        known_good: false,
                    },
                };
                (to, template_value(template))
            }
        };

        let from = revision_ref(
            &current,
            known_good.as_ref().is_some_and(|kg| kg.names(&current)),
        );
        let reason = request
            .reason
            .clone()
            .unwrap_or_else(|| default_reason(request));
        let dry_run = request.dry_run || policy.dry_run || self.ctx.config.watchdog.dry_run;
        Ok(Plan {
            id: format!("{target}/r{}/{}", current.number, started.as_millisecond()),
            request: request.clone(),
            policy,
            deployment: d,
            from,
            to,
            template,
            reason,
            dry_run,
            notes,
            backup: None,
            started,
            steps: Vec::new(),
            patch: Vec::new(),
        })
    }

    // ---- Wait ----

    async fn wait(&self, ns: &str, name: &str, in_flight: &InFlight, policy: &Policy) -> Waited {
        let target = format!("{ns}/{name}");
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

    // ---- Verify ----

    async fn verify(
        &self,
        rolled_out: &Deployment,
        in_flight: &InFlight,
        policy: &Policy,
    ) -> Verified {
        let target = target_of(rolled_out);
        let (ns, name) = (
            rolled_out.namespace().unwrap_or_default(),
            rolled_out.name_any(),
        );
        let window = policy.verify_window;
        let every = self
            .ctx
            .config
            .watchdog
            .interval
            .min(window / 3)
            .max(Duration::from_millis(100));
        let started = Instant::now();
        let switched = self.ctx.now();
        let mut ticks = 0u32;
        let mut consecutive: BTreeMap<String, u32> = BTreeMap::new();
        let mut inconclusive: BTreeMap<String, String> = BTreeMap::new();
        loop {
            if !(self.ctx.may_write)() {
                return Verified::HandedOver;
            }
            ticks += 1;
            let d = match self.get(&ns, &name).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Verified::Failed {
                        summary: format!("{target}: Deployment deleted during verification"),
                        details: Value::Null,
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    rolled_out.clone()
                }
            };
            if self.changed_by_someone(&d, in_flight).await {
                return Verified::Superseded(format!(
                    "{target} was changed by someone else during verification; the watchdog stops and does not touch it"), Box::new(d));
            }
            let tick = self.verify_tick(&d, switched, policy).await;
            let tick = match tick {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("{e}");
                    if Instant::now().duration_since(started) >= window && ticks >= 3 {
                        return Verified::Failed {
                            summary: format!("could not verify {target}: {e}"),
                            details: Value::Null,
                        };
                    }
                    tokio::time::sleep(every).await;
                    continue;
                }
            };
            for r in &tick.results {
                let id = r.signal.id();
                if r.outcome.is_fail() {
                    *consecutive.entry(id).or_default() += 1;
                } else {
                    consecutive.remove(&id);
                    if let crate::signals::Outcome::Inconclusive { why } = &r.outcome {
                        inconclusive.insert(id, why.clone());
                    }
                }
            }
            let done = Instant::now().duration_since(started) >= window && ticks >= 3;
            let failing: Vec<String> = tick
                .results
                .iter()
                .filter(|r| {
                    r.outcome.is_fail()
                        && (consecutive.get(&r.signal.id()).copied().unwrap_or(0) >= 2 || done)
                })
                .map(SignalResult::describe)
                .collect();
            let mut problems = failing;
            if done && !tick.ready_ok {
                problems.push(tick.ready_line.clone());
            }
            if !problems.is_empty() {
                return Verified::Failed {
                    summary: format!(
                        "{} is not healthy after the rollback: {}",
                        describe_ref(&in_flight.to),
                        problems.join("; ")
                    ),
                    details: json!({"checks": tick.lines, "ticks": ticks}),
                };
            }
            if done {
                let mut summary = format!(
                    "{} verified over {} ({ticks} checks): {}",
                    describe_ref(&in_flight.to),
                    humantime::format_duration(window),
                    tick.ready_line
                );
                let metrics: Vec<String> = inconclusive
                    .iter()
                    .filter(|(id, _)| {
                        matches!(id.as_str(), "error_rate" | "latency") || id.starts_with("rule:")
                    })
                    .map(|(id, why)| format!("{id}: {why}"))
                    .collect();
                if !metrics.is_empty() {
                    summary.push_str(&format!(
                        "; could not verify metrics ({})",
                        metrics.join("; ")
                    ));
                }
                return Verified::Passed {
                    summary,
                    details: json!({"checks": tick.lines, "ticks": ticks, "inconclusive": inconclusive}),
                };
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One round of the runbook's measurable checklist on the current
    /// revision of `d`.
    pub async fn verify_tick(
        &self,
        d: &Deployment,
        switched: jiff::Timestamp,
        policy: &Policy,
    ) -> Result<Checks, RollbackError> {
        self.reader()
            .checklist(
                d,
                switched,
                policy,
                self.ctx.signals.as_ref(),
                self.ctx.now(),
            )
            .await
    }

    fn reader(&self) -> Reader {
        Reader::new(self.ctx.client.clone(), self.ctx.api_timeout)
    }

    // ---- the closing write, audit, notify ----

    /// Clears the in-flight record; on success keeps the restored revision
    /// known-good under its new revision number.
    async fn close(
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
    async fn consume_request_annotation(&self, d: &Deployment) {
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
    fn record(
        &self,
        steps: &mut Vec<StepRecord>,
        id: &str,
        target: &str,
        step: Step,
        outcome: StepOutcome,
        summary: String,
        details: Value,
    ) {
        let at = rfc3339(self.ctx.now());
        let line = AuditLine {
            time: at.clone(),
            target: target.to_owned(),
            rollback: id.to_owned(),
            step: step.as_str().to_owned(),
            outcome: outcome.as_str().to_owned(),
            details: json!({"summary": summary, "details": details}),
        };
        if let Err(e) = self.ctx.audit.append(&line) {
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
    }

    /// The final audit line: the runbook's incident report.
    async fn report(&self, incident: &Incident) {
        let at = rfc3339(self.ctx.now());
        let line = AuditLine {
            time: at,
            target: incident.target(),
            rollback: incident.id.clone(),
            step: "report".to_owned(),
            outcome: kind_name(incident.kind),
            details: serde_json::to_value(incident).unwrap_or(Value::Null),
        };
        if let Err(e) = self.ctx.audit.append(&line) {
            tracing::error!(target = %incident.target(), "{e}");
        }
        tracing::info!(target = %incident.target(), rollback = %incident.id, kind = %kind_name(incident.kind), reason = %incident.reason, "incident report");
    }

    fn notify(&self, steps: &mut Vec<StepRecord>, incident: &Incident) {
        // The leader tells on-call; a replica that lost the Lease while
        // deciding leaves it to the leader, which decides for itself.
        if !(self.ctx.may_write)() {
            let target = incident.target();
            self.record(
                steps,
                &incident.id,
                &target,
                Step::Notify,
                StepOutcome::Refused,
                format!(
                    "{} not sent: this watchdog is no longer the leader",
                    kind_name(incident.kind)
                ),
                json!({"kind": incident.kind}),
            );
            return;
        }
        self.ctx.sink.emit(incident);
        let target = incident.target();
        self.record(
            steps,
            &incident.id,
            &target,
            Step::Notify,
            StepOutcome::Ok,
            format!("{} handed to the notifiers", kind_name(incident.kind)),
            json!({"kind": incident.kind}),
        );
    }

    async fn event(&self, d: &Deployment, warning: bool, reason: &str, note: String) {
        if !(self.ctx.may_write)() {
            return;
        }
        let notice = Notice {
            warning,
            reason: reason.to_owned(),
            action: "Rollback".to_owned(),
            note,
        };
        let _ = self.ctx.events.publish(d, &notice).await;
    }

    async fn refuse(
        &self,
        request: RollbackRequest,
        refusal: Refusal,
        started: jiff::Timestamp,
    ) -> RollbackOutcome {
        let target = request.target();
        let id = format!("{target}/r0/{}", started.as_millisecond());
        let mut steps = Vec::new();
        let outcome = if refusal.failed {
            StepOutcome::Failed
        } else {
            StepOutcome::Refused
        };
        self.record(
            &mut steps,
            &id,
            &target,
            Step::Validate,
            outcome,
            refusal.why.clone(),
            Value::Null,
        );
        let mut incident = self.base_incident(&request, &id, EventKind::RollbackFailed, started);
        incident.failed_step = Some(Step::Validate.as_str().to_owned());
        incident.error = Some(refusal.why.clone());
        incident.dry_run = request.dry_run;
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        if let Some(d) = &refusal.deployment {
            self.event(d, true, "RollbackRefused", refusal.why.clone())
                .await;
            if matches!(request.trigger, Trigger::Annotation { .. }) {
                self.consume_request_annotation(d).await;
            }
        }
        self.report(&incident).await;
        // A person at the CLI reads the refusal; automatic triggers tell on-call.
        if matches!(
            request.trigger,
            Trigger::Verdict | Trigger::Annotation { .. }
        ) {
            self.notify(&mut steps, &incident);
        }
        RollbackOutcome {
            result: if refusal.failed {
                RollbackResult::Failed
            } else {
                RollbackResult::Refused
            },
            incident,
            steps,
            patch: Vec::new(),
        }
    }

    async fn stop_before_update(
        &self,
        mut plan: Plan,
        step: Step,
        outcome: StepOutcome,
        why: String,
    ) -> RollbackOutcome {
        let target = plan.target();
        let id = plan.id.clone();
        self.record(
            &mut plan.steps,
            &id,
            &target,
            step,
            outcome,
            why.clone(),
            Value::Null,
        );
        let in_flight = self.in_flight_record(&plan);
        let mut incident =
            self.incident_from(&in_flight, EventKind::RollbackFailed, &plan.request.signals);
        incident.failed_step = Some(step.as_str().to_owned());
        incident.error = Some(why.clone());
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(
            &plan.deployment,
            true,
            "RollbackFailed",
            format!("Rollback not done ({} failed): {why}", step.as_str()),
        )
        .await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &incident);
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

    async fn conflict_before_update(
        &self,
        mut plan: Plan,
        fresh: Deployment,
        why: String,
        ops: Vec<Value>,
    ) -> RollbackOutcome {
        let target = plan.target();
        let id = plan.id.clone();
        self.record(
            &mut plan.steps,
            &id,
            &target,
            Step::Update,
            StepOutcome::Conflict,
            why.clone(),
            json!({"patch": ops}),
        );
        let in_flight = self.in_flight_record(&plan);
        let mut incident =
            self.incident_from(&in_flight, EventKind::Conflict, &plan.request.signals);
        incident.failed_step = Some(Step::Update.as_str().to_owned());
        incident.error = Some(why.clone());
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(&fresh, true, "RollbackConflict", why).await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &incident);
        RollbackOutcome {
            result: RollbackResult::Conflict,
            incident,
            steps: plan.steps,
            patch: ops,
        }
    }

    /// Stopped after the patch because this process may no longer write:
    /// the in-flight record stays for the next leader, which resumes it.
    fn handed_over(
        &self,
        in_flight: &InFlight,
        mut steps: Vec<StepRecord>,
        patch: Vec<Value>,
        step: Step,
        why: Option<String>,
    ) -> RollbackOutcome {
        let (ns, name) = split_target(&in_flight.id);
        let target = format!("{ns}/{name}");
        let why = why.unwrap_or_else(|| format!(
            "{target}: this watchdog is no longer the leader (or is shutting down); it stopped before its next write, and the next leader resumes this rollback from its in-flight record at Wait/Verify"
        ));
        self.record(
            &mut steps,
            &in_flight.id,
            &target,
            step,
            StepOutcome::Failed,
            why.clone(),
            json!({"handed_over": true}),
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

    async fn not_leader(&self, plan: Plan, step: Step) -> RollbackOutcome {
        let mut plan = plan;
        let target = plan.target();
        let id = plan.id.clone();
        let why = format!(
            "{target}: this watchdog is not the leader; the leader acts, nothing was changed here"
        );
        self.record(
            &mut plan.steps,
            &id,
            &target,
            step,
            StepOutcome::Failed,
            why.clone(),
            Value::Null,
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

    fn in_flight_record(&self, plan: &Plan) -> InFlight {
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
        }
    }

    fn base_incident(
        &self,
        request: &RollbackRequest,
        id: &str,
        kind: EventKind,
        at: jiff::Timestamp,
    ) -> Incident {
        Incident {
            id: id.to_owned(),
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
            dashboard_url: None,
            runbook_url: None,
        }
    }

    fn incident_from(&self, f: &InFlight, kind: EventKind, signals: &[SignalResult]) -> Incident {
        let (namespace, deployment) = split_target(&f.id);
        Incident {
            id: f.id.clone(),
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
            blocklisted_redeploy: false,
            changes: Vec::new(),
            dashboard_url: None,
            runbook_url: None,
        }
    }

    fn claim(&self, key: &str) -> bool {
        self.ctx
            .active
            .lock()
            .map(|mut s| s.insert(key.to_owned()))
            .unwrap_or(false)
    }

    fn release(&self, key: &str) {
        if let Ok(mut s) = self.ctx.active.lock() {
            s.remove(key);
        }
    }

    fn is_active(&self, key: &str) -> bool {
        self.ctx
            .active
            .lock()
            .map(|s| s.contains(key))
            .unwrap_or(false)
    }

    // ---- API reads, each bounded ----

    async fn get(&self, ns: &str, name: &str) -> Result<Option<Deployment>, RollbackError> {
        self.reader().deployment(ns, name).await
    }

    async fn replicasets(&self, d: &Deployment) -> Result<Vec<Arc<ReplicaSet>>, RollbackError> {
        self.reader().replicasets(d).await
    }

    /// Whether someone changed what the rollback put in place. A higher
    /// generation alone is not enough: a HorizontalPodAutoscaler scaling
    /// the Deployment moves it too. Someone deployed when the template is
    /// no longer the restored revision's, or the rollout was paused; when
    /// that cannot be read, assume someone did (and stop, touching nothing).
    async fn changed_by_someone(&self, d: &Deployment, in_flight: &InFlight) -> bool {
        if d.metadata.generation.unwrap_or(0) <= in_flight.generation {
            return false;
        }
        let Some(spec) = d.spec.as_ref() else {
            return true;
        };
        if spec.paused == Some(true) {
            return true;
        }
        let Ok(replicasets) = self.replicasets(d).await else {
            return true;
        };
        let restored = revision::owned_revisions(d, &replicasets)
            .into_iter()
            .find(|(r, _)| r.pod_template_hash == in_flight.to.pod_template_hash)
            .and_then(|(_, rs)| rs.spec.as_ref().and_then(|s| s.template.clone()));
        match restored {
            Some(template) => template_value(&template) != template_value(&spec.template),
            None => true,
        }
    }
}

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

    fn api_error(&self, target: String, what: &str, e: Result<kube::Error, ()>) -> RollbackError {
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
            Ok(Err(e)) => {
                Err(self.api_error(format!("{ns}/{name}"), "cannot read the Deployment", Ok(e)))
            }
            Err(_) => Err(self.api_error(
                format!("{ns}/{name}"),
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

enum Waited {
    Done(Deployment),
    /// No longer allowed to write: stop, the next leader resumes.
    HandedOver,
    Failed(String, Option<Deployment>),
    Superseded(String, Deployment),
}

enum Verified {
    Passed { summary: String, details: Value },
    HandedOver,
    Failed { summary: String, details: Value },
    Superseded(String, Box<Deployment>),
}

struct Refusal {
    why: String,
    /// An error reading the cluster rather than a rule saying no.
    failed: bool,
    deployment: Option<Box<Deployment>>,
}

impl Refusal {
    fn new(why: String) -> Self {
        Refusal {
            why,
            failed: false,
            deployment: None,
        }
    }
    fn failed(why: String) -> Self {
        Refusal {
            why,
            failed: true,
            deployment: None,
        }
    }
    fn on(why: String, d: &Deployment) -> Self {
        Refusal {
            why,
            failed: false,
            deployment: Some(Box::new(d.clone())),
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

/// The request a person made with [`ROLLBACK_TO`] on the Deployment, for
/// the run loop: None without the annotation, an error sentence for a
/// value that is neither `previous` nor a revision number (the run loop
/// reports it and may remove the annotation).
pub fn annotation_request(d: &Deployment) -> Option<Result<RollbackRequest, String>> {
    let value = d.annotations().get(ROLLBACK_TO)?.trim().to_owned();
    let to = if value == "previous" {
        Target::Previous
    } else {
        match value.parse::<i64>() {
            Ok(n) if n > 0 => Target::Revision(n),
            _ => {
                return Some(Err(format!(
                    "annotation {ROLLBACK_TO} on {}: {value:?} is neither `previous` nor a revision number; it is ignored",
                    target_of(d)
                )))
            }
        }
    };
    let mut request = RollbackRequest::new(
        &d.namespace().unwrap_or_default(),
        &d.name_any(),
        to,
        Trigger::Annotation { value },
    );
    request.detected_at = Some(jiff::Timestamp::now());
    Some(Ok(request))
}

/// JSON Pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
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

/// "revision 5 (v2)".
pub fn describe_ref(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("revision {} ({})", r.revision, tags(&r.images))
    } else {
        format!("a new revision ({})", r.images.join(", "))
    }
}

fn describe_to(r: &RevisionRef) -> String {
    if r.revision > 0 {
        format!("{} ({})", r.revision, tags(&r.images))
    } else {
        format!("image {}", r.images.join(", "))
    }
}

fn tags(images: &[String]) -> String {
    images
        .iter()
        .map(|i| crate::signals::health::image_tag(i).unwrap_or(i).to_owned())
        .collect::<Vec<_>>()
        .join(", ")
}

fn default_reason(request: &RollbackRequest) -> String {
    let m = measured(&request.signals);
    if !m.is_empty() {
        return m.join("; ");
    }
    match &request.trigger {
        Trigger::Cli { user } => format!(
            "requested by {} on the command line",
            if user.is_empty() { "a person" } else { user }
        ),
        Trigger::Annotation { value } => {
            format!("requested with the annotation rollback-to: {value}")
        }
        Trigger::Restore { backup } => format!("restore of backup {backup} requested"),
        Trigger::Verdict => "the revision was judged Bad".to_owned(),
        Trigger::Report => "report".to_owned(),
    }
}

fn measured(signals: &[SignalResult]) -> Vec<String> {
    signals
        .iter()
        .filter(|s| s.outcome.is_fail())
        .map(SignalResult::describe)
        .collect()
}

fn changes(ops: &[Value]) -> Vec<String> {
    ops.iter().map(|o| o.to_string()).collect()
}

fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn revision_ref(r: &Revision, known_good: bool) -> RevisionRef {
    RevisionRef {
        revision: r.number,
        pod_template_hash: r.pod_template_hash.clone(),
        images: r.images.clone(),
        known_good,
    }
}

/// The spec without `replicas`: an autoscaler's change, not a deploy.
fn without_replicas(d: &Deployment) -> Option<k8s_openapi::api::apps::v1::DeploymentSpec> {
    d.spec.clone().map(|mut s| {
        s.replicas = None;
        s
    })
}

fn template_value(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(keys::POD_TEMPLATE_HASH);
    }
    v
}

fn template_images(t: &PodTemplateSpec) -> Vec<String> {
    t.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| c.image.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// `image` with its tag (and any digest) replaced by `tag`.
pub fn with_tag(image: &str, tag: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match base[slash..].rfind(':') {
        Some(i) => &base[..slash + i],
        None => base,
    };
    format!("{repo}:{tag}")
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn tag_is_well_formed(tag: &str) -> bool {
    let first = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Which GitOps tool manages the Deployment, if any.
pub fn gitops_manager(d: &Deployment) -> Option<String> {
    let labels = d.labels();
    let annotations = d.annotations();
    if labels.contains_key("argocd.argoproj.io/instance") {
        return Some("Argo CD (label argocd.argoproj.io/instance)".to_owned());
    }
    if labels.contains_key("app.kubernetes.io/instance")
        && annotations
            .keys()
            .any(|k| k.starts_with("argocd.argoproj.io/"))
    {
        return Some(
            "Argo CD (label app.kubernetes.io/instance with argocd.argoproj.io/ annotations)"
                .to_owned(),
        );
    }
    for key in [
        "kustomize.toolkit.fluxcd.io/name",
        "helm.toolkit.fluxcd.io/name",
    ] {
        if labels.contains_key(key) {
            return Some(format!("Flux (label {key})"));
        }
    }
    None
}

/// The revision is marked irreversible on its ReplicaSet or pod template.
fn is_irreversible(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let yes = |m: Option<&BTreeMap<String, String>>| {
        m.and_then(|a| a.get(IRREVERSIBLE)).map(|v| v.trim()) == Some("true")
    };
    let rs_yes = rs.is_some_and(|rs| {
        yes(rs.metadata.annotations.as_ref())
            || yes(rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref()))
    });
    rs_yes
        || yes(d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref()))
}

fn pod_running_and_ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.metadata.deletion_timestamp.is_none()
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn progress_of(target: &str, d: &Deployment) -> Progress {
    let status = d.status.clone().unwrap_or_default();
    let replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    Progress {
        target: target.to_owned(),
        replicas,
        updated,
        available: status.available_replicas.unwrap_or(0),
        old: (status.replicas.unwrap_or(0) - updated).max(0),
    }
}

fn selector_of(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.as_ref())
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn revision_annotation(d: &Deployment) -> Option<String> {
    d.annotations().get(keys::REVISION).cloned()
}

fn target_of(d: &Deployment) -> String {
    format!("{}/{}", d.namespace().unwrap_or_default(), d.name_any())
}

/// `ns/name/r5/123` → (ns, name).
fn split_target(id: &str) -> (String, String) {
    let mut parts = id.splitn(3, '/');
    let ns = parts.next().unwrap_or_default().to_owned();
    let name = parts.next().unwrap_or_default().to_owned();
    (ns, name)
}

pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string()
}

fn add(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(jiff::Timestamp::MAX)
}

fn sub(t: jiff::Timestamp, d: Duration) -> jiff::Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_sub(d).ok())
        .unwrap_or(jiff::Timestamp::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_replaces_the_tag_and_digest_but_keeps_the_registry_port() {
        assert_eq!(
            with_tag("kailash-kaizen:v2", "v1.2.3"),
            "kailash-kaizen:v1.2.3"
        );
        assert_eq!(
            with_tag("registry:5000/team/web", "v1"),
            "registry:5000/team/web:v1"
        );
        assert_eq!(
            with_tag("ghcr.io/o/web:v2@sha256:abc", "v1"),
            "ghcr.io/o/web:v1"
        );
        assert!(tag_is_well_formed("v1.2.3"));
        assert!(!tag_is_well_formed("-v1"));
        assert!(!tag_is_well_formed("v1 2"));
    }

    #[test]
    fn annotation_keys_are_escaped_as_json_pointers() {
        assert_eq!(
            escape_pointer("kubernetes.io/change-cause"),
            "kubernetes.io~1change-cause"
        );
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn gitops_labels_are_recognised() {
        let mut d = Deployment::default();
        assert!(gitops_manager(&d).is_none());
        d.metadata.labels = Some(
            [(
                "kustomize.toolkit.fluxcd.io/name".to_string(),
                "apps".to_string(),
            )]
            .into(),
        );
        assert!(gitops_manager(&d).unwrap().starts_with("Flux"));
        d.metadata.labels =
            Some([("app.kubernetes.io/instance".to_string(), "web".to_string())].into());
        assert!(gitops_manager(&d).is_none());
        d.metadata.annotations =
            Some([("argocd.argoproj.io/sync-wave".to_string(), "1".to_string())].into());
        assert!(gitops_manager(&d).unwrap().starts_with("Argo CD"));
    }
}
