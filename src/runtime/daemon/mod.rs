//! The run loop of `rollback-watchdog run`: every tick it reads the watch
//! caches, resolves the targets, measures every signal of every target
//! concurrently, asks the decision layer ([`crate::decide::decision`]) what
//! to do, and applies what it returns (`apply`: log lines, Events on the
//! Deployment, metrics, notices, the pipeline). A revision that survives
//! its window is recorded known-good. A Bad verdict starts the rollback
//! pipeline once per revision, never for a revision the watchdog restored
//! itself (that one escalates instead). It makes no API-server call per
//! tick except the writes it reports, and it never acts on missing data.

mod apply;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource, ResourceExt};

use crate::config::Config;
use crate::config::EventKind;
use crate::decide::decision::{
    decide, Action, Decision, Facts, Input, KnownGoodWrite, RevisionState,
};
use crate::decide::judge::{Judgement, Verdict};
use crate::observe::cache::Caches;
use crate::observe::memory;
use crate::observe::revision::{self, TargetState};
use crate::observe::targets::{self, TargetWarning, WatchedDeployment};
use crate::observe::tracker::Tracker;
use crate::observe::wake::Wake;
use crate::pipeline::{self, Pipeline, RollbackOutcome, RollbackRequest, RollbackResult};
use crate::report::audit::Reason;
use crate::report::incident::{Incident, IncidentId, IncidentSink, RevisionRef, Trigger};
use crate::report::metrics::TargetOutcome;
use crate::report::metrics::{Metrics, SignalLabels, SignalResultLabels, TargetResult};
use crate::report::status::{
    KnownGoodStatus, Role, SignalStatus, StatusReport, StatusVerdict, TargetStatus, WindowStatus,
};
use crate::runtime::admin::AdminState;
use crate::runtime::lease::Leadership;
use crate::signals::health::HealthProber;
use crate::signals::misconfigured::SurveyLine;
use crate::signals::prometheus::PrometheusSource;
use crate::signals::{Outcome, SignalResult, Signals, Subject};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot build the signal sources: {0}")]
    Signals(#[from] crate::signals::SignalsError),
    #[error("the watch caches never synced within {0:?}: is the API server reachable and does the service account have get/list/watch on deployments, replicasets and pods?")]
    NotSynced(Duration),
    #[error(transparent)]
    Cache(#[from] crate::observe::cache::CacheError),
    #[error(transparent)]
    Rollback(#[from] crate::pipeline::RollbackError),
}

/// What one tick concluded for one target: the input for the pipeline.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub target: WatchedDeployment,
    pub state: TargetState,
    pub subject: Option<Subject>,
    pub results: Vec<SignalResult>,
    pub judgement: Option<Judgement>,
}

impl Evaluation {
    pub fn verdict(&self) -> Option<Verdict> {
        self.judgement.as_ref().map(|j| j.verdict)
    }
}

/// What the loop remembers of one Deployment between ticks: the
/// decision layer's state of its current revision, and what `/status`
/// shows of it.
#[derive(Debug, Default)]
struct Memory {
    revision: RevisionState,
    status: TargetStatus,
    /// The record this process last wrote to the cluster for the target
    /// ([`memory::Memory`]): not written again while the cache lags.
    kept: Option<memory::Memory>,
    /// The revision on-call was told has a query that cannot match: one
    /// notice per revision (the delivery ledger covers restarts).
    misconfigured_told: Option<i64>,
}

/// The loop's dependencies. Cheap to clone parts are shared with the admin
/// server and tests.
pub struct Daemon {
    config: Arc<Config>,
    client: Client,
    caches: Caches,
    signals: Signals,
    metrics: Metrics,
    admin: AdminState,
    recorder: Recorder,
    tracker: Tracker,
    memory: HashMap<String, Memory>,
    reported_warnings: BTreeSet<TargetWarning>,
    role: Role,
    /// The leader election (or standalone) state: the role in `/status`
    /// follows it, and shutdown revokes it.
    leadership: Option<Leadership>,
    /// Writes (Events, known-good) happen only while this says so: the
    /// leader election sets it; standalone it is always true.
    may_write: Arc<dyn Fn() -> bool + Send + Sync>,
    /// The rollback pipeline; without it a Bad verdict is only reported.
    pipeline: Option<Arc<Pipeline>>,
    sink: Option<Arc<dyn IncidentSink>>,
    /// Pipelines running now, by Deployment uid.
    running: HashMap<String, (String, tokio::task::JoinHandle<Option<RollbackOutcome>>)>,
    /// By Deployment uid, the in-flight id of the last pipeline that
    /// finished here: a lagging cache that still shows that record must
    /// not start a second resume. One per watched Deployment (an older
    /// record was cleared before the next rollback could start), so it is
    /// bounded by the targets, as the memory is.
    completed: HashMap<String, String>,
    /// The resourceVersion of the Deployment that started the last
    /// pipeline, by uid: the same (stale) object never starts another.
    triggered_by: HashMap<String, String>,
    /// Finished pipelines not yet taken by [`Daemon::take_outcomes`].
    finished: Vec<RollbackOutcome>,
}

impl Daemon {
    /// Starts the watch caches and builds the signal sources. Metrics feed
    /// `metrics`; `/status` is published through `admin`.
    pub fn new(
        config: Arc<Config>,
        client: Client,
        metrics: Metrics,
        admin: AdminState,
    ) -> Result<Daemon, DaemonError> {
        let queries = metrics.signal_query_seconds.clone();
        let probes = metrics.signal_query_seconds.clone();
        let prometheus = PrometheusSource::new(&config.prometheus)
            .map_err(crate::signals::SignalsError::from)?
            .with_observer(Arc::new(move |r| {
                queries
                    .get_or_create(&SignalLabels {
                        signal: r.signal.id(),
                    })
                    .observe(r.duration.as_secs_f64());
            }));
        let health = HealthProber::for_config(&config)
            .map_err(crate::signals::SignalsError::from)?
            .with_observer(Arc::new(move |r| {
                probes
                    .get_or_create(&SignalLabels {
                        signal: r.signal.id(),
                    })
                    .observe(r.duration.as_secs_f64());
            }));
        let signals = Signals::new(prometheus, health, config.watchdog.cluster_name.clone());
        let caches = Caches::for_config(client.clone(), &config);
        let reporter = Reporter {
            controller: "rollback-watchdog".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Ok(Daemon {
            config,
            client,
            caches,
            signals,
            metrics,
            admin,
            recorder,
            tracker: Tracker::new(),
            memory: HashMap::new(),
            reported_warnings: BTreeSet::new(),
            role: Role::Standalone,
            leadership: None,
            may_write: Arc::new(|| true),
            pipeline: None,
            sink: None,
            running: HashMap::new(),
            completed: HashMap::new(),
            triggered_by: HashMap::new(),
            finished: Vec::new(),
        })
    }

    /// Acts on Bad verdicts through a pipeline on `ctx`, whose decisions
    /// go to `sink` (the notifiers). [`crate::runtime::app`] builds both.
    pub fn with_pipeline_context(
        mut self,
        ctx: pipeline::Context,
        sink: Arc<dyn IncidentSink>,
    ) -> Self {
        self.pipeline = Some(Arc::new(Pipeline::new(ctx)));
        self.sink = Some(sink);
        self
    }

    /// Pipelines that finished since the last call.
    pub fn take_outcomes(&mut self) -> Vec<RollbackOutcome> {
        std::mem::take(&mut self.finished)
    }

    /// Whether a pipeline is running for any target.
    pub fn pipelines_running(&self) -> bool {
        !self.running.is_empty()
    }

    /// Waits (bounded) for running pipelines to finish.
    pub async fn wait_pipelines(&mut self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while !self.running.is_empty() && tokio::time::Instant::now() < deadline {
            self.collect_finished().await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.collect_finished().await;
    }

    async fn collect_finished(&mut self) {
        let done: Vec<String> = self
            .running
            .iter()
            .filter(|(_, (_, task))| task.is_finished())
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in done {
            let Some((target, task)) = self.running.remove(&uid) else {
                continue;
            };
            match task.await {
                Ok(None) => {}
                Ok(Some(outcome)) => {
                    // Stopped before its patch (the Lease blinked, or a
                    // shutdown): nothing happened, so the decision is not
                    // spent. The next tick as leader decides again.
                    let patched = outcome.steps.iter().any(|st| {
                        st.step == pipeline::Step::Update && st.outcome == pipeline::StepOutcome::Ok
                    });
                    // Validate could not read the cluster (after its
                    // retries): nothing was decided or changed, so the
                    // decision is not spent either; the next tick tries again.
                    let read_failed = outcome.read_failed_before_any_change();
                    let retriable =
                        outcome.result == RollbackResult::HandedOver && !patched || read_failed;
                    if retriable {
                        if let Some(m) = self.memory.get_mut(&uid) {
                            if read_failed {
                                m.revision.read_failed();
                            } else {
                                m.revision.give_back_decision();
                            }
                        }
                        self.triggered_by.remove(&uid);
                    } else if let Some(m) = self.memory.get_mut(&uid) {
                        m.revision.settle_decision();
                    }
                    // Only a pipeline that went through Wait cleared its
                    // in-flight record. One that failed at Update may still
                    // have been applied (a timeout): its record, if any, is
                    // resumed on a later tick.
                    if outcome.result != RollbackResult::HandedOver
                        && outcome
                            .steps
                            .iter()
                            .any(|st| st.step == pipeline::Step::Wait)
                    {
                        self.completed
                            .insert(uid.clone(), outcome.incident.id.clone());
                    }
                    let result = outcome.result.metric_label();
                    self.metrics
                        .rollbacks
                        .get_or_create(&TargetOutcome {
                            target: target.clone(),
                            outcome: result.into(),
                        })
                        .inc();
                    if outcome.result == RollbackResult::Succeeded {
                        if let Some(seconds) = outcome.incident.time_to_recover() {
                            self.metrics.recovery_seconds.observe(seconds);
                        }
                    }
                    tracing::info!(target = %target, result, "{}", outcome.why());
                    self.finished.push(outcome);
                }
                Err(e) => {
                    tracing::error!(target = %target, error = %e, "the rollback pipeline task failed")
                }
            }
        }
    }

    /// Starts `request` (or a resume) in the background for `uid`.
    fn spawn_pipeline(
        &mut self,
        uid: String,
        target: String,
        work: PipelineWork,
        trigger_rv: Option<String>,
    ) {
        let Some(pipeline) = self.pipeline.clone() else {
            return;
        };
        if let Some(rv) = trigger_rv {
            self.triggered_by.insert(uid.clone(), rv);
        }
        let client = self.client.clone();
        let task = tokio::spawn(async move {
            match work {
                PipelineWork::Run(request) => Some(pipeline.run(*request).await),
                PipelineWork::Resume(cached) => {
                    // The cache may lag: resume from the object as it is now.
                    let ns = cached.metadata.namespace.clone().unwrap_or_default();
                    let name = cached.metadata.name.clone().unwrap_or_default();
                    let api: kube::Api<Deployment> = kube::Api::namespaced(client, &ns);
                    match tokio::time::timeout(Duration::from_secs(10), api.get(&name)).await {
                        Ok(Ok(fresh)) => pipeline.resume(&fresh).await,
                        Ok(Err(e)) => {
                            tracing::warn!(target = %crate::k8s::DeploymentKey::new(&ns, &name), error = %e, "cannot read the Deployment to resume its rollback; will retry");
                            None
                        }
                        Err(_) => None,
                    }
                }
            }
        });
        self.running.insert(uid, (target, task));
    }

    /// Acts only while `leadership` allows: followers evaluate and report
    /// in `/status` but start no pipeline, write no Event and tell no
    /// sink. The pipeline's context needs the same guard.
    pub fn with_leadership(mut self, leadership: Leadership) -> Self {
        self.may_write = leadership.guard();
        self.role = leadership.role();
        self.leadership = Some(leadership);
        self
    }

    /// Sets the role shown in `/status` and the guard for every write.
    pub fn with_role(mut self, role: Role, may_write: Arc<dyn Fn() -> bool + Send + Sync>) -> Self {
        self.role = role;
        self.may_write = may_write;
        self
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The watch caches every tick reads.
    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    pub fn signals(&self) -> &Signals {
        &self.signals
    }

    /// Waits until every reflector has synced once, then marks `/readyz`.
    pub async fn wait_synced(&self, limit: Duration) -> Result<(), DaemonError> {
        match tokio::time::timeout(limit, self.caches.ready()).await {
            Ok(result) => {
                result?;
                self.admin.set_synced();
                Ok(())
            }
            Err(_) => Err(DaemonError::NotSynced(limit)),
        }
    }

    /// Runs ticks every `watchdog.interval` until `shutdown` completes.
    pub async fn run(
        mut self,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), DaemonError> {
        tokio::pin!(shutdown);
        let synced = tokio::select! {
            r = self.wait_synced(Duration::from_secs(120)) => Some(r),
            _ = &mut shutdown => None,
        };
        match synced {
            None => {
                self.drain().await;
                return Ok(());
            }
            Some(r) => r?,
        }
        tracing::info!(interval = ?self.config.watchdog.interval, "caches synced; watching");
        self.check_queries_at_startup().await;
        let mut ticker = tokio::time::interval(self.config.watchdog.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wakeups = self.caches.wakeups().clone();
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {
                    self.tick(Timestamp::now()).await;
                }
                _ = wakeups.rung() => {
                    // A burst of events (a pod's containers one after the
                    // other, its pods one after the other) is one evaluation.
                    tokio::select! {
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(WAKE_DEBOUNCE) => {}
                    }
                    self.wake(Timestamp::now()).await;
                }
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Shutdown: unready at once, no new work, no write after the one in
    /// progress. A pipeline past its patch stops before its next write and
    /// leaves its in-flight record for the next leader (or the next
    /// start); whatever is still running after `watchdog.shutdown_grace`
    /// is cut off, which is safe for the same reason.
    pub async fn drain(&mut self) {
        self.admin.set_shutting_down();
        if let Some(l) = &self.leadership {
            l.revoke();
        }
        if !self.running.is_empty() {
            tracing::info!(
                pipelines = self.running.len(),
                grace = %humantime::format_duration(self.config.watchdog.shutdown_grace),
                "shutting down: letting the running rollback step finish"
            );
        }
        self.wait_pipelines(self.config.watchdog.shutdown_grace)
            .await;
        for (uid, (target, task)) in self.running.drain() {
            tracing::warn!(target = %target, uid = %uid, "shutting down: a rollback step did not finish within shutdown_grace; cut off (its in-flight record, if patched, is resumed by the next leader)");
            task.abort();
        }
    }

    /// One evaluation of every target at `now`. Returns what it concluded;
    /// the report (logs, Events, metrics, `/status`) is already done.
    pub async fn tick(&mut self, now: Timestamp) -> Vec<Evaluation> {
        let started = std::time::Instant::now();
        self.collect_finished().await;
        let snapshot = self.caches.snapshot();
        let resolution = targets::resolve(&self.config, &snapshot);
        self.report_warnings(&resolution.warnings).await;

        // Observing is cheap and pure: do it in order, then measure
        // concurrently.
        let mut observed = Vec::with_capacity(resolution.targets.len());
        for target in resolution.targets {
            let (state, subject) = self.observe(&target, &snapshot, now);
            observed.push((target, state, subject));
        }
        let live: HashSet<String> = observed.iter().map(|(t, _, _)| t.uid()).collect();
        self.tracker.retain(&live);
        self.memory.retain(|uid, _| live.contains(uid));
        // Bounded by the watched targets, as the memory is.
        self.triggered_by.retain(|uid, _| live.contains(uid));
        self.completed.retain(|uid, _| live.contains(uid));
        self.metrics
            .set_targets(observed.iter().map(|(t, _, _)| t.display_name()));

        let signals = &self.signals;
        let limit = (self.config.watchdog.max_concurrent_targets as usize).max(1);
        let measured: Vec<(
            WatchedDeployment,
            TargetState,
            Option<Subject>,
            Vec<SignalResult>,
        )> = futures::stream::iter(observed.into_iter().map(
            |(target, state, subject)| async move {
                let results = match &subject {
                    Some(s) => signals.evaluate(&target.policy, s, now).await,
                    None => Vec::new(),
                };
                (target, state, subject, results)
            },
        ))
        .buffer_unordered(limit)
        .collect()
        .await;

        let mut evaluations = Vec::with_capacity(measured.len());
        for (target, state, subject, results) in measured {
            let judgement = self
                .judge_one(&target, &state, subject.as_ref(), &results, now, false)
                .await;
            evaluations.push(Evaluation {
                target,
                state,
                subject,
                results,
                judgement,
            });
        }
        evaluations.sort_by(|a, b| {
            (&a.target.namespace, &a.target.name).cmp(&(&b.target.namespace, &b.target.name))
        });
        self.metrics
            .last_tick_timestamp_seconds
            .set(now.as_millisecond() as f64 / 1000.0);
        self.publish_status(&resolution.warnings, now);
        // The scale bench counts ticks and their wall time by this line.
        tracing::debug!(
            targets = evaluations.len(),
            wall_ms = started.elapsed().as_millis() as u64,
            "tick done"
        );
        evaluations
    }

    /// The target's state at `now` and the revision to judge, with what
    /// the loop remembers of it (what was counted, its pods' history).
    fn observe(
        &mut self,
        target: &WatchedDeployment,
        snapshot: &crate::observe::cache::Snapshot,
        now: Timestamp,
    ) -> (TargetState, Option<Subject>) {
        let state = self.tracker.observe(target, snapshot, now);
        let mut subject = state.subject();
        if let Some(s) = subject.as_mut() {
            if let Some(memory) = self.memory.get(&target.uid()) {
                let key = (s.revision, s.pod_template_hash.clone());
                s.counted_until = memory.revision.counted_until(&key);
                s.pod_history = memory.revision.pod_history(&key);
            }
            s.pod_history.established_after = self.config.watchdog.interval;
        }
        (state, subject)
    }

    /// Evaluates at once the targets the watch events since the last call
    /// woke ([`crate::observe::wake`]): a pod of theirs in a crash state,
    /// a new spec or revision, a missed progress deadline. Only the pod
    /// signal is measured (it reads the caches, so it answers at once even
    /// while Prometheus is slow), and what it shows is kept only when it
    /// makes the verdict Bad (or Degraded) where it was not: an evaluation
    /// between ticks adds no failing tick, so a storm of events counts for
    /// nothing, and `failure_threshold` counts ticks as before. What it saw
    /// of the pods (since when each is crashing, which were Ready) is kept,
    /// dated when it was seen. Returns the targets it evaluated.
    pub async fn wake(&mut self, now: Timestamp) -> Vec<Evaluation> {
        let woken = self.caches.wakeups().take();
        if woken.is_empty() {
            return Vec::new();
        }
        self.collect_finished().await;
        let snapshot = self.caches.snapshot();
        let resolution = targets::resolve(&self.config, &snapshot);
        let mut evaluations = Vec::new();
        for target in resolution.targets {
            if !is_woken(&woken, &target, &snapshot) {
                continue;
            }
            self.metrics.event_evaluations.inc();
            let (state, subject) = self.observe(&target, &snapshot, now);
            let results: Vec<SignalResult> = subject
                .as_ref()
                .filter(|_| target.policy.pods.enabled)
                .map(|s| crate::signals::pods::evaluate(&target.policy.pods, s, now))
                .into_iter()
                .collect();
            let judgement = match &subject {
                Some(s) => {
                    self.judge_one(&target, &state, Some(s), &results, now, true)
                        .await
                }
                None => None,
            };
            evaluations.push(Evaluation {
                target,
                state,
                subject,
                results,
                judgement,
            });
        }
        if !evaluations.is_empty() {
            self.publish_status(&resolution.warnings, now);
        }
        evaluations
    }

    async fn judge_one(
        &mut self,
        target: &WatchedDeployment,
        state: &TargetState,
        subject: Option<&Subject>,
        results: &[SignalResult],
        now: Timestamp,
        between_ticks: bool,
    ) -> Option<Judgement> {
        let uid = target.uid();
        let key = subject.map(|s| (s.revision, s.pod_template_hash.clone()));
        let memory = self.memory.entry(uid.clone()).or_default();
        memory.revision.for_revision(key, now);
        let Some(subject) = subject else {
            memory.status = unknown_status(target, state, now);
            return None;
        };
        if let Some(kept) = &state.kept {
            memory.revision.recall(kept);
        }
        let facts = Facts {
            between_ticks,
            ..self.facts(target)
        };
        let memory = self.memory.entry(uid).or_default();
        let input = Input {
            target,
            state,
            subject,
            results,
            facts: &facts,
            now,
        };
        let decision = if between_ticks {
            // Decided on a copy, kept only when it is news: Bad (or
            // Degraded) where the last verdict kept was not.
            let mut trial = memory.revision.clone();
            let decision = decide(&mut trial, &input);
            let decisive = |v: Option<Verdict>| matches!(v, Some(Verdict::Bad | Verdict::Degraded));
            if !decisive(Some(decision.judgement.verdict))
                || decisive(memory.revision.last_verdict())
            {
                memory
                    .revision
                    .remember_pods(&target.policy.pods, subject, now);
                return Some(decision.judgement);
            }
            memory.revision = trial;
            decision
        } else {
            decide(&mut memory.revision, &input)
        };
        // After the signals ran: what they judged this tick is history for
        // the next.
        memory
            .revision
            .remember_pods(&target.policy.pods, subject, now);
        let earlier = std::mem::take(&mut memory.status.signals);
        memory.status = judged_status(target, state, &decision, results, now);
        if between_ticks {
            // The signals not measured now show what the last tick saw.
            let fresh: HashSet<String> = results.iter().map(|r| r.signal.id()).collect();
            memory
                .status
                .signals
                .extend(earlier.into_iter().filter(|s| !fresh.contains(&s.signal)));
        }
        self.measure(target, subject, &decision, results);
        // What must outlive this process goes to the cluster before any
        // notice or act it records.
        self.keep(target, state).await;
        self.apply(target, subject, decision, results, now).await
    }

    /// Writes the target's memory ([`memory`]) when it changed. Leader
    /// only, and never while a rollback of the target runs here (its
    /// outcome is written once it is known).
    async fn keep(&mut self, target: &WatchedDeployment, state: &TargetState) {
        let uid = target.uid();
        if !(self.may_write)() || self.running.contains_key(&uid) {
            return;
        }
        let Some(m) = self.memory.get_mut(&uid) else {
            return;
        };
        let Some(want) = m.revision.to_keep(state) else {
            return;
        };
        if state.kept.as_ref() == Some(&want) || m.kept.as_ref() == Some(&want) {
            return;
        }
        match memory::write(&self.client, &target.namespace, &target.name, &want).await {
            Ok(()) => m.kept = Some(want),
            Err(e) => tracing::warn!(target = %target.display_name(), error = %e, "will retry"),
        }
    }

    /// What the loop knows of a target beyond the caches, for [`decide`].
    fn facts(&self, target: &WatchedDeployment) -> Facts {
        let d = &target.deployment;
        let uid = target.uid();
        let in_flight = pipeline::in_flight_of(d);
        Facts {
            // Only the leader decides: a follower keeps judging, so it can
            // act at once when it takes over, but marks nothing as done.
            may_act: !self.running.contains_key(&uid)
                && self.pipeline.is_some()
                && (self.may_write)(),
            // Readable or not: an unreadable record still means a rollback
            // may be in flight, and blocks a known-good write.
            in_flight: crate::decide::request::may_be_in_flight(d),
            in_flight_to_resume: in_flight
                .ok()
                .flatten()
                .is_some_and(|f| self.completed.get(&uid) != Some(&f.id.to_string())),
            // Seen once per object version, valid or not: a malformed
            // value is reported once and never blocks the verdict.
            annotation_request: pipeline::annotation_request(d).is_some()
                && self.triggered_by.get(&uid) != d.metadata.resource_version.as_ref(),
            rollbacks: pipeline::rollbacks_of(d),
            restored: crate::decide::request::restored_of(d),
            interval: self.config.watchdog.interval,
            between_ticks: false,
        }
    }

    fn publish_status(&self, warnings: &[TargetWarning], now: Timestamp) {
        let mut targets: Vec<TargetStatus> =
            self.memory.values().map(|m| m.status.clone()).collect();
        targets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        self.admin.publish(StatusReport {
            cluster: self.config.watchdog.cluster_name.clone(),
            role: self.leadership.as_ref().map_or(self.role, Leadership::role),
            ready: self.admin.is_ready(),
            generated_at: now.to_string(),
            targets,
            warnings: warnings.iter().map(ToString::to_string).collect(),
        });
    }

    /// Every configured Prometheus query of every target's current
    /// revision, asked once: which return nothing while `total_query`
    /// shows traffic ([`crate::signals::misconfigured`]). Each line names
    /// the target and revision. Measures and judges nothing else.
    pub async fn check_queries(&mut self, now: Timestamp) -> Vec<SurveyLine> {
        let snapshot = self.caches.snapshot();
        let resolution = targets::resolve(&self.config, &snapshot);
        let mut lines = Vec::new();
        for target in resolution.targets {
            let state = self.tracker.observe(&target, &snapshot, now);
            let Some(subject) = state.subject() else {
                continue;
            };
            for line in self.signals.survey(&target.policy, &subject, now).await {
                lines.push(SurveyLine {
                    ok: line.ok,
                    text: format!(
                        "{} revision {}: {}",
                        target.display_name(),
                        subject.revision,
                        line.text
                    ),
                });
            }
        }
        lines
    }

    /// The start-up self-check of the queries: warnings in the log, never
    /// a stop, and never long (a silent Prometheus was already reported,
    /// and is not asked again query by query).
    async fn check_queries_at_startup(&mut self) {
        let limit = self.signals.prometheus().timeout() * 2;
        if self.signals.prometheus().ping().await.is_err() {
            return;
        }
        match tokio::time::timeout(limit, self.check_queries(Timestamp::now())).await {
            Ok(lines) => {
                for line in lines.iter().filter(|l| !l.ok) {
                    tracing::warn!("self-check: {}", line.text);
                }
            }
            Err(_) => tracing::warn!(
                "self-check: the queries were not all asked within {}; the watchdog goes on",
                humantime::format_duration(limit)
            ),
        }
    }

    /// The current `/status` document.
    pub fn status(&self) -> StatusReport {
        self.admin.snapshot()
    }
}

/// How long the loop waits after a watch event's wake-up before it
/// evaluates, so a burst of events is one evaluation.
pub const WAKE_DEBOUNCE: Duration = Duration::from_millis(150);

/// Whether a wake-up names `target`: its Deployment, or the pods of one of
/// its ReplicaSets.
fn is_woken(
    woken: &HashSet<Wake>,
    target: &WatchedDeployment,
    snapshot: &crate::observe::cache::Snapshot,
) -> bool {
    woken.contains(&Wake::Deployment {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    }) || snapshot.replicasets_of(&target.uid()).iter().any(|rs| {
        rs.labels()
            .get(crate::k8s::keys::POD_TEMPLATE_HASH)
            .is_some_and(|hash| {
                woken.contains(&Wake::Pods {
                    namespace: target.namespace.clone(),
                    hash: hash.clone(),
                })
            })
    })
}

enum PipelineWork {
    Run(Box<RollbackRequest>),
    Resume(Box<Deployment>),
}

fn base_status(target: &WatchedDeployment, state: &TargetState, now: Timestamp) -> TargetStatus {
    let current = state.current();
    TargetStatus {
        namespace: target.namespace.clone(),
        name: target.name.clone(),
        revision: current.map(|r| r.number),
        pod_template_hash: current.map(|r| r.pod_template_hash.clone()),
        images: current.map(|r| r.images.clone()).unwrap_or_default(),
        window: state.window.as_ref().map(|w| WindowStatus {
            opened_at: w.opened.to_string(),
            closes_at: w.closes.map(|c| c.to_string()),
            remaining_seconds: w.remaining(now).map(|r| r.as_secs()),
            open: w.is_open(now),
            why: w.describe(target.policy.watch_window),
        }),
        known_good: state.known_good.as_ref().map(|k| KnownGoodStatus {
            revision: k.revision,
            pod_template_hash: k.pod_template_hash.clone(),
        }),
        verdict: StatusVerdict::Unknown,
        warnings: state.warnings.clone(),
        last_evaluated: Some(now.to_string()),
        ..TargetStatus::default()
    }
}

/// A target without a revision to judge yet.
fn unknown_status(target: &WatchedDeployment, state: &TargetState, now: Timestamp) -> TargetStatus {
    let mut status = base_status(target, state, now);
    status.verdict = StatusVerdict::Unknown;
    status.reasons = state.warnings.clone();
    if let revision::Rollout::Pending { why } = &state.rollout {
        status.reasons.push(format!("rollout pending: {why}"));
    }
    status
}

/// A judged target, as `/status` shows it.
fn judged_status(
    target: &WatchedDeployment,
    state: &TargetState,
    decision: &Decision,
    results: &[SignalResult],
    now: Timestamp,
) -> TargetStatus {
    let judgement = &decision.judgement;
    let mut status = base_status(target, state, now);
    status.verdict = judgement.verdict.into();
    status.reasons = decision.status_reasons.clone();
    status.blind = judgement.state.blind_since.is_some();
    status.warnings.extend(
        results
            .iter()
            .filter_map(|r| r.misconfigured.as_ref())
            .map(ToString::to_string),
    );
    status.signals = results
        .iter()
        .map(|r| SignalStatus::from_result(r, judgement.state.failing_ticks(&r.signal)))
        .collect();
    status.last_evaluated = Some(now.to_string());
    status
}
