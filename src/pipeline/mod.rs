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
//! - [`crate::k8s::keys::RESTORED`], what the latest rollback restored (a
//!   revision bad again escalates only when it is that template);
//! - [`crate::k8s::keys::BLOCKLIST`], [`crate::k8s::keys::KNOWN_GOOD`];
//! - it honours [`crate::k8s::keys::PAUSED`], [`crate::k8s::keys::IRREVERSIBLE`]
//!   and GitOps labels, and sets `kubernetes.io/change-cause`.
//!
//! One file per step: `validate` (the reads; the rules that choose the
//! revision or refuse are the pure [`crate::decide::plan`]),
//! `backup_step` (the ConfigMap store is [`backup`]),
//! `update`, `wait`, `verify`
//! and `close` (the closing write, audit and notify). The
//! annotation codec is `codec`, the bounded API reads `reader`, the words
//! used in reports `words`. This file holds the outcome types, the context
//! and the order the steps run in; the request and the plan are
//! [`crate::decide`]'s, re-exported here.

pub mod backup;
mod backup_step;
mod close;
mod codec;
pub mod crash;
mod reader;
mod update;
mod validate;
mod verify;
mod wait;
mod words;

pub use crate::decide::plan::{
    gitops_manager, tag_is_well_formed, with_tag, Plan, Step, StepOutcome, StepRecord,
};
pub use crate::decide::request::{Restored, RollbackRequest, Target};
use close::Line;
pub use codec::*;
pub use reader::*;
pub use update::*;
use verify::*;
use wait::*;
pub use words::*;

use crate::k8s::keys;
use crate::k8s::keys::{
    CHANGE_CAUSE, FIELD_MANAGER, IN_FLIGHT, KNOWN_GOOD, ROLLBACKS, ROLLBACK_TO,
};
use crate::k8s::DeploymentKey;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::config::{Config, EventKind, Policy};
use crate::decide::plan::{sub, template_value, PlanInput, Refusal};
use crate::observe::blocklist;
use crate::observe::cache::Snapshot;
use crate::observe::revision::{self, Rollout};
use crate::pipeline::backup::{Backups, Record};
use crate::report::audit::{AuditLine, AuditLog, AuditOutcome, EventPublisher, Notice, Reason};
use crate::report::incident::IncidentId;
use crate::report::incident::{Incident, IncidentSink, RevisionRef, Trigger};
use crate::signals::{SignalResult, Signals, Subject};

/// How long one API call of the pipeline may take.
pub const API_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a finished rollback waits for its result notice to be settled
/// by every sink before it clears its in-flight record anyway (the notice
/// is then still delivered in the background, but a crash loses it).
pub const NOTICE_SETTLE_LIMIT: Duration = Duration::from_secs(10);
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

impl RollbackResult {
    /// The `outcome` label of `rollback_watchdog_rollbacks_total`.
    pub fn metric_label(self) -> &'static str {
        match self {
            RollbackResult::Succeeded => "succeeded",
            RollbackResult::Refused => "refused",
            RollbackResult::WouldRollBack => "dry_run",
            RollbackResult::Conflict => "conflict",
            RollbackResult::Failed => "failed",
            RollbackResult::Escalated => "escalated",
            RollbackResult::HandedOver => "handed_over",
        }
    }
}

/// How a person reads it: the CLI's result line, the demo's summary.
impl std::fmt::Display for RollbackResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RollbackResult::Succeeded => "succeeded",
            RollbackResult::Refused => "refused",
            RollbackResult::WouldRollBack => "dry run",
            RollbackResult::Conflict => "stopped on a conflict",
            RollbackResult::Failed => "failed",
            RollbackResult::Escalated => "ESCALATED",
            RollbackResult::HandedOver => {
                "stopped before its next write (not the leader, or shutting down)"
            }
        })
    }
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

    /// Validate could not read the cluster (after its retries) for a
    /// verdict: nothing was decided or changed, so the next tick may try
    /// again.
    pub fn read_failed_before_any_change(&self) -> bool {
        self.result == RollbackResult::Failed
            && matches!(self.incident.trigger, Trigger::Verdict)
            && !self.steps.iter().any(|st| {
                matches!(
                    st.step,
                    Step::Backup | Step::Update | Step::Wait | Step::Verify
                )
            })
            && self
                .steps
                .iter()
                .any(|st| st.step == Step::Validate && st.outcome == StepOutcome::Failed)
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
    /// How often Wait reads the Deployment (every 250 ms by default: a
    /// rollout that completed is seen at once, for 4 GETs a second).
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
            poll_interval: Duration::from_millis(250),
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

    /// The backup store in `watchdog.namespace`.
    pub fn backups(&self) -> Backups {
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
                let id = plan.id.clone();
                self.record(
                    &mut plan.steps,
                    &id,
                    Line::new(Step::Validate, StepOutcome::Ok, summary).with(details),
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
        self.record(&mut steps, &in_flight.id, Line::new(Step::Wait, StepOutcome::Ok, format!(
                "resuming the rollback of {key} found in flight (started {}): Wait and Verify, no second patch",
                in_flight.started
            )).with(json!({"resumed": true, "in_flight": in_flight})));
        // A crash right after the patch may have lost `rollback_started`
        // (it was only queued): send it again. The delivery ledger keys on
        // the incident id and kind, so a sink that has it drops the repeat.
        if (self.ctx.may_write)() {
            let started = self.incident_from(&in_flight, EventKind::RollbackStarted, &[]);
            self.ctx.sink.emit(&started);
        }
        // Reported before the stop (a crash after the report or the
        // notice, or a closing write that failed): tell and close only.
        let reported = match self.ctx.audit.find_report(&in_flight.id.to_string()) {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(target = %key, "{e}; the rollback is resumed at Wait/Verify");
                None
            }
        };
        let outcome = match reported {
            Some(report) => {
                self.finish_reported(deployment, in_flight, steps, report)
                    .await
            }
            None => self.finish(in_flight, steps, Vec::new(), Vec::new()).await,
        };
        self.release(&key);
        Some(outcome)
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
            Line::new(Step::Update, StepOutcome::DryRun, summary).with(json!({"patch": ops})),
        );
        let mut incident =
            self.incident_from(&in_flight, EventKind::WouldRollBack, &plan.request.signals);
        incident.dry_run = true;
        incident.changes = changes(&in_flight, &ops);
        incident.patch = ops.clone();
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        self.event(
            &plan.deployment,
            Reason::WouldRollBack,
            format!(
                "Dry run: would roll back from {} to {}: {}",
                describe_ref(&plan.from),
                describe_ref(&plan.to),
                plan.reason
            ),
        )
        .await;
        self.report(&incident).await;
        self.notify(&mut plan.steps, &plan.id, &incident);
        RollbackOutcome {
            result: RollbackResult::WouldRollBack,
            incident,
            steps: plan.steps,
            patch: ops,
        }
    }

    fn reader(&self) -> Reader {
        Reader::new(self.ctx.client.clone(), self.ctx.api_timeout)
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

/// The spec without `replicas`: an autoscaler's change, not a deploy.
fn without_replicas(d: &Deployment) -> Option<k8s_openapi::api::apps::v1::DeploymentSpec> {
    d.spec.clone().map(|mut s| {
        s.replicas = None;
        s
    })
}

/// The annotations a person (or a tool) sets: without the watchdog's own
/// memory record, which another replica may rewrite at any time.
fn annotations_of_people(d: &Deployment) -> Option<std::collections::BTreeMap<String, String>> {
    d.metadata.annotations.clone().map(|mut a| {
        a.remove(crate::k8s::keys::MEMORY);
        a
    })
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
    DeploymentKey::of(d).to_string()
}

pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.round(jiff::Unit::Millisecond).unwrap_or(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_keys_are_escaped_as_json_pointers() {
        assert_eq!(
            escape_pointer("kubernetes.io/change-cause"),
            "kubernetes.io~1change-cause"
        );
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }

    #[test]
    fn every_result_a_run_loop_counts_exists_at_zero_on_metrics() {
        use crate::report::metrics::ROLLBACK_OUTCOMES;
        for r in [
            RollbackResult::Succeeded,
            RollbackResult::Refused,
            RollbackResult::WouldRollBack,
            RollbackResult::Conflict,
            RollbackResult::Failed,
            RollbackResult::Escalated,
        ] {
            assert!(
                ROLLBACK_OUTCOMES.contains(&r.metric_label()),
                "{r:?} counts as {:?}, which /metrics does not start at 0",
                r.metric_label()
            );
        }
        // A hand-over is not an outcome: the next leader finishes it.
        assert!(!ROLLBACK_OUTCOMES.contains(&RollbackResult::HandedOver.metric_label()));
    }
}
