//! The run loop of `rollback-watchdog run`: every tick it reads the watch
//! caches, resolves the targets, measures every signal of every target
//! concurrently, asks the judge, and reports what it found (log lines,
//! Events on the Deployment, metrics, `/status`). A revision that survives
//! its window is recorded known-good. A Bad verdict starts the rollback
//! pipeline once per revision, never for a revision the watchdog restored
//! itself (that one escalates instead). It makes no API-server call per
//! tick except the writes it reports, and it never acts on missing data.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::{Client, Resource};

use crate::config::Config;
use crate::config::EventKind;
use crate::decide::decision::{
    decide, Action, Decision, Facts, Input, KnownGoodWrite, RevisionState,
};
use crate::decide::judge::{Judgement, Verdict};
use crate::observe::cache::Caches;
use crate::observe::revision::{self, TargetState, Tracker};
use crate::observe::targets::{self, TargetWarning, WatchedDeployment};
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
    /// In-flight ids whose pipeline finished here: a lagging cache that
    /// still shows the record must not start a second resume.
    completed: HashSet<String>,
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
        let health = HealthProber::new()
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
            completed: HashSet::new(),
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
                    if outcome.result == RollbackResult::HandedOver && !patched {
                        if let Some(m) = self.memory.get_mut(&uid) {
                            m.revision.give_back_decision();
                        }
                        self.triggered_by.remove(&uid);
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
                        self.completed.insert(outcome.incident.id.clone());
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
        let mut ticker = tokio::time::interval(self.config.watchdog.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = ticker.tick() => {
                    self.tick(Timestamp::now()).await;
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
        self.collect_finished().await;
        let snapshot = self.caches.snapshot();
        let resolution = targets::resolve(&self.config, &snapshot);
        self.report_warnings(&resolution.warnings).await;

        // Observing is cheap and pure: do it in order, then measure
        // concurrently.
        let mut observed = Vec::with_capacity(resolution.targets.len());
        for target in resolution.targets {
            let state = self.tracker.observe(&target, &snapshot, now);
            let subject = state.subject();
            observed.push((target, state, subject));
        }
        let live: HashSet<String> = observed.iter().map(|(t, _, _)| t.uid()).collect();
        self.tracker.retain(&live);
        self.memory.retain(|uid, _| live.contains(uid));
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
                .judge_one(&target, &state, subject.as_ref(), &results, now)
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
        evaluations
    }

    async fn judge_one(
        &mut self,
        target: &WatchedDeployment,
        state: &TargetState,
        subject: Option<&Subject>,
        results: &[SignalResult],
        now: Timestamp,
    ) -> Option<Judgement> {
        let uid = target.uid();
        let key = subject.map(|s| (s.revision, s.pod_template_hash.clone()));
        let memory = self.memory.entry(uid.clone()).or_default();
        memory.revision.for_revision(key, now);
        let Some(subject) = subject else {
            memory.status = unknown_status(target, state, now);
            return None;
        };
        let facts = self.facts(target);
        let memory = self.memory.entry(uid).or_default();
        let decision = decide(
            &mut memory.revision,
            &Input {
                target,
                state,
                subject,
                results,
                facts: &facts,
                now,
            },
        );
        memory.status = judged_status(target, state, &decision, results, now);
        self.measure(target, subject, &decision, results);
        self.apply(target, subject, decision, results, now).await
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
            in_flight: matches!(in_flight, Ok(Some(_))),
            in_flight_to_resume: in_flight
                .ok()
                .flatten()
                .is_some_and(|f| !self.completed.contains(&f.id.to_string())),
            // Seen once per object version, valid or not: a malformed
            // value is reported once and never blocks the verdict.
            annotation_request: pipeline::annotation_request(d).is_some()
                && self.triggered_by.get(&uid) != d.metadata.resource_version.as_ref(),
            rollbacks: pipeline::rollbacks_of(d),
        }
    }

    /// Metrics and logs of one decision.
    fn measure(
        &self,
        target: &WatchedDeployment,
        subject: &Subject,
        decision: &Decision,
        results: &[SignalResult],
    ) {
        let name = target.display_name();
        let judgement = &decision.judgement;
        let verdict = judgement.verdict.as_str();
        self.metrics
            .evaluations
            .get_or_create(&TargetResult {
                target: name.clone(),
                result: verdict.into(),
            })
            .inc();
        self.metrics.set_verdict(&name, judgement.verdict.into());
        for r in results {
            self.metrics
                .signal_results
                .get_or_create(&SignalResultLabels {
                    signal: r.signal.id(),
                    result: outcome_name(&r.outcome).into(),
                })
                .inc();
        }
        if let Some(seconds) = decision.detection_seconds {
            self.metrics.detection_seconds.observe(seconds);
        }
        // Logs: one line per failing signal, one per verdict change.
        for r in results.iter().filter(|r| r.outcome.is_fail()) {
            if let Outcome::Fail {
                measured,
                threshold,
                baseline,
                ..
            } = &r.outcome
            {
                tracing::warn!(
                    target = %name,
                    revision = subject.revision,
                    signal = %r.signal.id(),
                    value = %measured,
                    threshold = ?threshold,
                    baseline = ?baseline,
                    failing_ticks = judgement.state.failing_ticks(&r.signal),
                    "{}",
                    r.describe()
                );
            }
        }
        if judgement.verdict_changed {
            let reasons = &decision.reasons;
            if matches!(
                judgement.verdict,
                Verdict::Bad | Verdict::Degraded | Verdict::Suspect
            ) {
                tracing::warn!(target = %name, revision = subject.revision, verdict, reasons = ?reasons, "verdict changed");
            } else {
                tracing::info!(target = %name, revision = subject.revision, verdict, "verdict changed");
            }
        }
    }

    /// Carries a decision out: Events, notices, the pipeline, the
    /// known-good record. Writes only while allowed.
    async fn apply(
        &mut self,
        target: &WatchedDeployment,
        subject: &Subject,
        decision: Decision,
        results: &[SignalResult],
        now: Timestamp,
    ) -> Option<Judgement> {
        let d = &target.deployment;
        let name = target.display_name();
        if let Some(e) = &decision.verdict_event {
            self.event(d, e.reason, "Judge", e.note.clone()).await;
        }
        if let Some(blind) = &decision.judgement.blind_report {
            tracing::warn!(target = %name, revision = subject.revision, "{blind}");
            self.event(d, Reason::WatchdogBlind, "Judge", blind.sentence.clone())
                .await;
            let report = Report {
                kind: EventKind::Blind,
                reason: blind.sentence.clone(),
                episode: Some(blind.since),
            };
            self.report(target, subject, report, results, now);
        }
        self.act(target, subject, decision.action, results, now)
            .await;
        if let Some(note) = decision.unverified {
            tracing::warn!(target = %name, revision = subject.revision, "{note}");
            self.event(d, Reason::RevisionUnverified, "RecordKnownGood", note)
                .await;
        }
        if let Some(write) = decision.known_good {
            self.record_known_good(target, write).await;
        }
        Some(decision.judgement)
    }

    /// Starts what the decision's action asks for.
    async fn act(
        &mut self,
        target: &WatchedDeployment,
        subject: &Subject,
        action: Action,
        results: &[SignalResult],
        now: Timestamp,
    ) {
        let d = &target.deployment;
        let name = target.display_name();
        let version = d.metadata.resource_version.clone();
        match action {
            Action::None => {}
            Action::Resume => {
                tracing::info!(target = %name, "an in-flight rollback was found: resuming at Wait/Verify");
                let work = PipelineWork::Resume(Box::new(d.as_ref().clone()));
                self.spawn_pipeline(target.uid(), name, work, None);
            }
            Action::Annotation => {
                if let Some(rv) = version.clone() {
                    self.triggered_by.insert(target.uid(), rv);
                }
                match pipeline::annotation_request(d) {
                    Some(Ok(mut request)) => {
                        // Pinned to what is deployed now: a deploy that
                        // lands before the patch is not rolled back by
                        // this request.
                        request.judged_hash = Some(subject.pod_template_hash.clone());
                        tracing::info!(target = %name, "rollback requested by annotation");
                        let work = PipelineWork::Run(Box::new(request));
                        self.spawn_pipeline(target.uid(), name, work, version);
                    }
                    Some(Err(problem)) => {
                        tracing::warn!(target = %name, "{problem}");
                        self.event(d, Reason::InvalidAnnotation, "Rollback", problem)
                            .await;
                    }
                    None => {}
                }
            }
            Action::RollBack(order) => {
                tracing::warn!(target = %name, revision = subject.revision, "Bad verdict: starting the rollback pipeline");
                let request = RollbackRequest {
                    reason: order.reason,
                    signals: order.signals,
                    rollout_started_at: Some(order.rollout_started_at),
                    detected_at: order.detected_at,
                    policy: Some(target.policy.clone()),
                    blocklisted_redeploy: order.blocklisted_redeploy,
                    judged_hash: Some(order.judged_hash),
                    ..RollbackRequest::new(
                        &target.namespace,
                        &target.name,
                        pipeline::Target::Previous,
                        Trigger::Verdict,
                    )
                };
                let work = PipelineWork::Run(Box::new(request));
                self.spawn_pipeline(target.uid(), name, work, version);
            }
            Action::Escalate { sentence } => {
                tracing::error!(target = %name, revision = subject.revision, "{sentence}");
                self.event(d, Reason::RollbackEscalated, "Judge", sentence.clone())
                    .await;
                let report = Report {
                    kind: EventKind::Escalation,
                    reason: sentence,
                    episode: None,
                };
                self.report(target, subject, report, results, now);
            }
            Action::ReportDegraded { sentence } => {
                tracing::warn!(target = %name, revision = subject.revision, "{sentence}");
                let report = Report {
                    kind: EventKind::DegradedOutsideWindow,
                    reason: sentence,
                    episode: None,
                };
                self.report(target, subject, report, results, now);
            }
        }
    }

    /// Writes the known-good record, and says so; a failure is retried on
    /// a later tick.
    async fn record_known_good(&mut self, target: &WatchedDeployment, write: KnownGoodWrite) {
        if !(self.may_write)() {
            return;
        }
        let KnownGoodWrite {
            record: kg,
            adopted,
        } = write;
        let name = target.display_name();
        match revision::record_known_good(&self.client, &target.namespace, &target.name, &kg).await
        {
            Ok(()) => {
                self.tracker.recorded(&target.uid(), kg.clone());
                if let Some(m) = self.memory.get_mut(&target.uid()) {
                    m.revision.known_good_recorded();
                }
                let note =
                    format!(
                    "revision {} ({}) survived its observation window{}; recorded as known-good",
                    kg.revision,
                    kg.images.join(", "),
                    if adopted { " (adopted at start-up)" } else { "" }
                );
                tracing::info!(target = %name, revision = kg.revision, "{note}");
                self.event(
                    &target.deployment,
                    Reason::RevisionKnownGood,
                    "RecordKnownGood",
                    note,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(target = %name, error = %e, "cannot record known-good; will retry")
            }
        }
    }

    async fn report_warnings(&mut self, warnings: &[TargetWarning]) {
        let now: BTreeSet<TargetWarning> = warnings.iter().cloned().collect();
        let new: Vec<TargetWarning> = now.difference(&self.reported_warnings).cloned().collect();
        for w in &new {
            tracing::warn!(target = %crate::k8s::DeploymentKey::new(&w.namespace, &w.subject), "{w}");
            if w.deployment_exists {
                let reference = Deployment::object_ref_for(&w.namespace, &w.subject);
                self.event_ref(
                    &reference,
                    Reason::TargetWarning,
                    "Resolve",
                    w.message.clone(),
                )
                .await;
            }
        }
        self.reported_warnings = now;
    }

    async fn event(&self, d: &Deployment, reason: Reason, action: &str, note: String) {
        let reference = d.object_ref(&());
        self.event_ref(&reference, reason, action, note).await;
    }

    async fn event_ref(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: Reason,
        action: &str,
        note: String,
    ) {
        if !(self.may_write)() {
            return;
        }
        let event = KubeEvent {
            type_: if reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.as_str().into(),
            note: Some(truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        match tokio::time::timeout(
            Duration::from_secs(10),
            self.recorder.publish(&event, reference),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(reason = reason.as_str(), error = %e, "cannot record a Kubernetes Event")
            }
            Err(_) => {
                tracing::warn!(
                    reason = reason.as_str(),
                    "recording a Kubernetes Event timed out"
                )
            }
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

    /// The current `/status` document.
    pub fn status(&self) -> StatusReport {
        self.admin.snapshot()
    }
}

impl Daemon {
    /// Tells the sinks about a decision that is not a rollback (blind,
    /// degraded, escalation). Only while allowed to write, like Events.
    fn report(
        &self,
        target: &WatchedDeployment,
        subject: &Subject,
        report: Report,
        results: &[SignalResult],
        now: Timestamp,
    ) {
        let Report {
            kind,
            reason,
            episode,
        } = report;
        let Some(sink) = &self.sink else {
            return;
        };
        if !(self.may_write)() {
            return;
        }
        let memory = self.memory.get(&target.uid());
        sink.emit(&Incident {
            // Stable per revision and kind (per episode for blind), so the
            // delivery ledger drops a repeat after a restart.
            id: IncidentId::notice(target.key(), subject.revision, kind, episode).to_string(),
            kind,
            cluster: self.config.watchdog.cluster_name.clone(),
            namespace: target.namespace.clone(),
            deployment: target.name.clone(),
            trigger: Trigger::Report,
            reason,
            from: Some(RevisionRef {
                revision: subject.revision,
                pod_template_hash: subject.pod_template_hash.clone(),
                images: subject.images.clone(),
                known_good: false,
            }),
            to: None,
            signals: results
                .iter()
                .filter(|r| !r.outcome.is_pass())
                .cloned()
                .collect(),
            rollout_started_at: Some(subject.rollout_started.to_string()),
            detected_at: memory
                .and_then(|m| m.revision.detected_at())
                .map(|t| t.to_string()),
            at: now.to_string(),
            finished_at: None,
            failed_step: None,
            error: None,
            dry_run: target.policy.dry_run,
            backup: None,
            blocklisted_redeploy: false,
            changes: Vec::new(),
            dashboard_url: None,
            runbook_url: None,
        });
    }
}

/// A notice that is not a rollback: what, why, and for a blind report the
/// episode it belongs to.
struct Report {
    kind: EventKind,
    reason: String,
    episode: Option<Timestamp>,
}

enum PipelineWork {
    Run(Box<RollbackRequest>),
    Resume(Box<Deployment>),
}

trait ObjectRefFor {
    fn object_ref_for(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference;
}

impl ObjectRefFor for Deployment {
    fn object_ref_for(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }
}

fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Pass { .. } => "pass",
        Outcome::Fail { .. } => "fail",
        Outcome::Inconclusive { .. } => "inconclusive",
    }
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
            closes_at: w.closes.to_string(),
            remaining_seconds: w.remaining(now).as_secs(),
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
    status.signals = results
        .iter()
        .map(|r| SignalStatus::from_result(r, judgement.state.failing_ticks(&r.signal)))
        .collect();
    status.last_evaluated = Some(now.to_string());
    status
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
