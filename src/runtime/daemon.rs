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

use crate::config::EventKind;
use crate::config::{Config, Policy};
use crate::decide::judge::{judge, JudgePolicy, JudgeState, Judgement, Verdict};
use crate::observe::blocklist;
use crate::observe::cache::Caches;
use crate::observe::revision::{self, TargetState, Tracker};
use crate::observe::targets::{self, TargetWarning, WatchedDeployment};
use crate::pipeline::{self, Pipeline, RollbackOutcome, RollbackRequest, RollbackResult};
use crate::report::incident::{Incident, IncidentSink, RevisionRef, Trigger};
use crate::report::metrics::TargetOutcome;
use crate::report::metrics::{Metrics, SignalLabels, SignalResultLabels, TargetResult};
use crate::report::status::{
    KnownGoodStatus, Role, SignalStatus, StatusReport, TargetStatus, WindowStatus,
};
use crate::runtime::admin::AdminState;
use crate::runtime::lease::Leadership;
use crate::signals::health::HealthProber;
use crate::signals::prometheus::PrometheusSource;
use crate::signals::{Outcome, SignalResult, Signals, Subject};

/// Every verdict name, for the one-hot verdict gauge.
const VERDICTS: [&str; 6] = [
    "healthy",
    "inconclusive",
    "suspect",
    "bad",
    "degraded",
    "unknown",
];

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

/// A revision restored by the watchdog's own rollback is one whose rollout
/// started no earlier than this before the rollback was recorded.
const OWN_ROLLBACK_SLACK: jiff::SignedDuration = jiff::SignedDuration::from_secs(60);

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

/// What the loop remembers of one Deployment between ticks.
#[derive(Debug, Default)]
struct Memory {
    /// (revision, pod-template-hash) the judge state belongs to.
    revision: Option<(i64, String)>,
    judge: JudgeState,
    /// When this process first saw the revision.
    first_seen: Option<Timestamp>,
    /// A Bad or Degraded verdict during this revision's window.
    bad_in_window: bool,
    /// Ticks on which every signal passed.
    healthy_ticks: u32,
    /// The known-good write for this revision was attempted and reported.
    known_good_reported: bool,
    /// The unverified window close was reported.
    unverified_reported: bool,
    /// Detection time was recorded for this revision.
    detection_recorded: bool,
    /// The pipeline was started (or an escalation sent) for this revision:
    /// one decision per revision, never one per tick.
    acted: bool,
    /// A degraded-outside-window report was sent for this revision.
    degraded_reported: bool,
    /// When the verdict first turned Bad.
    detected_at: Option<Timestamp>,
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
                            m.acted = false;
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
                    let result = outcome_word(outcome.result);
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
                            tracing::warn!(target = %format!("{ns}/{name}"), error = %e, "cannot read the Deployment to resume its rollback; will retry");
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
        let name = target.display_name();
        let memory = self.memory.entry(uid).or_default();
        if memory.revision != key {
            // A new revision is judged from scratch.
            *memory = Memory {
                revision: key.clone(),
                first_seen: Some(now),
                ..Memory::default()
            };
        }
        let Some(subject) = subject else {
            memory.status = base_status(target, state, now);
            memory.status.verdict = "unknown".into();
            memory.status.reasons = state.warnings.clone();
            if let revision::Rollout::Pending { why } = &state.rollout {
                memory
                    .status
                    .reasons
                    .push(format!("rollout pending: {why}"));
            }
            return None;
        };

        let blocklisted = blocklist::is_blocklisted(
            &target.deployment,
            &subject.pod_template_hash,
            &subject.images,
        );
        let mut policy = judge_policy(&target.policy, state);
        if blocklisted.is_some() {
            // A template that was rolled back once gets no benefit of the doubt.
            policy.failure_threshold = 1;
        }
        let judgement = judge(&policy, &memory.judge, results, now);
        memory.judge = judgement.state.clone();
        match judgement.verdict {
            Verdict::Bad | Verdict::Degraded if state.in_window() => memory.bad_in_window = true,
            Verdict::Healthy => memory.healthy_ticks += 1,
            _ => {}
        }

        // Metrics.
        let verdict = judgement.verdict.as_str();
        self.metrics
            .evaluations
            .get_or_create(&TargetResult {
                target: name.clone(),
                result: verdict.into(),
            })
            .inc();
        self.metrics.set_verdict(&name, verdict, &VERDICTS);
        for r in results {
            self.metrics
                .signal_results
                .get_or_create(&SignalResultLabels {
                    signal: r.signal.id(),
                    result: outcome_name(&r.outcome).into(),
                })
                .inc();
        }
        if judgement.verdict.may_roll_back() && memory.detected_at.is_none() {
            memory.detected_at = Some(now);
        }
        if judgement.verdict.may_roll_back() && !memory.detection_recorded {
            memory.detection_recorded = true;
            let seconds = (now - subject.rollout_started)
                .total(jiff::Unit::Second)
                .unwrap_or(0.0)
                .max(0.0);
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
        let reasons: Vec<String> = judgement
            .reasons
            .iter()
            .map(|r| r.sentence.clone())
            .collect();
        if judgement.verdict_changed {
            let level_warn = matches!(
                judgement.verdict,
                Verdict::Bad | Verdict::Degraded | Verdict::Suspect
            );
            if level_warn {
                tracing::warn!(target = %name, revision = subject.revision, verdict, reasons = ?reasons, "verdict changed");
            } else {
                tracing::info!(target = %name, revision = subject.revision, verdict, "verdict changed");
            }
        }

        // Status.
        let mut status = base_status(target, state, now);
        status.verdict = verdict.into();
        status.reasons = reasons.clone();
        if let Some(entry) = &blocklisted {
            status.reasons.push(format!(
                "this template was rolled back before (revision {}): judged with failure_threshold = 1",
                entry.revision
            ));
        }
        status.reasons.extend(state.warnings.iter().cloned());
        status.blind = judgement.state.blind_since.is_some();
        status.signals = results
            .iter()
            .map(|r| SignalStatus::from_result(r, judgement.state.failing_ticks(&r.signal)))
            .collect();
        status.last_evaluated = Some(now.to_string());
        memory.status = status;

        let known_good = state.known_good_due();
        let adopted = memory
            .first_seen
            .zip(state.window.as_ref())
            .is_some_and(|(seen, w)| seen >= w.closes);
        let verified = memory.healthy_ticks > 0 && !memory.bad_in_window;
        let verdict_now = judgement.verdict;
        let (blind_report, verdict_changed) =
            (judgement.blind_report.clone(), judgement.verdict_changed);
        let report_unverified =
            known_good.is_some() && !adopted && !verified && !memory.unverified_reported;
        if report_unverified {
            memory.unverified_reported = true;
        }
        // Recorded only on a tick that is Healthy now, never while a
        // rollback of this Deployment is in flight or after this revision
        // was Bad or escalated: a known-good record is a rollback target.
        let in_flight = matches!(pipeline::in_flight_of(&target.deployment), Ok(Some(_)));
        let write_known_good = known_good.filter(|_| {
            (adopted || verified)
                && verdict_now == Verdict::Healthy
                && !memory.bad_in_window
                && !memory.acted
                && !in_flight
                && !memory.known_good_reported
        });

        // What to do about the verdict: one decision per revision.
        let d = &target.deployment;
        // Restored by the watchdog: its rollout started with one of our
        // rollbacks, or it is the known-good revision a rollback restored
        // (a restart can misjudge when a reused ReplicaSet took over).
        let rollbacks = pipeline::rollbacks_of(d);
        // The recorded known-good revision deployed again (a person's
        // `rollout undo`) and bad now: nothing older is known to be
        // better, so a person decides, as after the watchdog's own.
        let known_good_again = state.current_template_is_known_good();
        let restored_by_us = rollbacks
            .iter()
            .any(|t| *t >= subject.rollout_started - OWN_ROLLBACK_SLACK)
            || (!rollbacks.is_empty() && state.current_is_known_good());
        let own_rollback = restored_by_us || known_good_again;
        let mut action = Action::None;
        // Only the leader decides: a follower keeps judging, so it can act
        // at once when it takes over, but marks nothing as done.
        if !self.running.contains_key(&target.uid())
            && self.pipeline.is_some()
            && (self.may_write)()
        {
            let memory = self.memory.entry(target.uid()).or_default();
            let in_flight = pipeline::in_flight_of(d).ok().flatten();
            if in_flight.is_some_and(|f| !self.completed.contains(&f.id)) {
                action = Action::Resume;
            } else if let Some(request) = pipeline::annotation_request(d).filter(|_| {
                self.triggered_by.get(&target.uid()) != d.metadata.resource_version.as_ref()
            }) {
                // Seen once per object version, valid or not: a malformed
                // value is reported once and never blocks the verdict.
                if let Some(rv) = d.metadata.resource_version.clone() {
                    self.triggered_by.insert(target.uid(), rv);
                }
                action = Action::Annotation(request.map(Box::new));
            } else if verdict_now == Verdict::Bad && !memory.acted {
                memory.acted = true;
                action = if own_rollback {
                    Action::Escalate
                } else {
                    Action::RollBack(Box::new(RollbackRequest {
                        reason: judgement_reason(&memory.status.reasons),
                        signals: results
                            .iter()
                            .filter(|r| r.outcome.is_fail())
                            .cloned()
                            .collect(),
                        rollout_started_at: Some(subject.rollout_started),
                        detected_at: memory.detected_at,
                        policy: Some(target.policy.clone()),
                        blocklisted_redeploy: blocklisted.is_some(),
                        judged_hash: Some(subject.pod_template_hash.clone()),
                        ..RollbackRequest::new(
                            &target.namespace,
                            &target.name,
                            pipeline::Target::Previous,
                            Trigger::Verdict,
                        )
                    }))
                };
            } else if verdict_now == Verdict::Degraded && !memory.degraded_reported {
                memory.degraded_reported = true;
                action = Action::Degraded;
            }
        }

        // Events (writes: only while allowed).
        if verdict_changed {
            let (kind, reason) = match verdict_now {
                Verdict::Healthy => (EventType::Normal, "RevisionHealthy"),
                Verdict::Inconclusive => (EventType::Normal, "RevisionInconclusive"),
                Verdict::Suspect => (EventType::Warning, "RevisionSuspect"),
                Verdict::Bad => (EventType::Warning, "RevisionBad"),
                Verdict::Degraded => (EventType::Warning, "RevisionDegraded"),
            };
            let note = if reasons.is_empty() {
                format!("revision {} is {verdict}", subject.revision)
            } else {
                format!(
                    "revision {} is {verdict}: {}",
                    subject.revision,
                    reasons.join("; ")
                )
            };
            self.event(d, kind, reason, "Judge", note).await;
        }
        if let Some(blind) = blind_report {
            tracing::warn!(target = %name, revision = subject.revision, "{blind}");
            self.event(
                d,
                EventType::Warning,
                "WatchdogBlind",
                "Judge",
                blind.sentence.clone(),
            )
            .await;
            self.report(
                target,
                subject,
                Report {
                    kind: EventKind::Blind,
                    reason: blind.sentence.clone(),
                    episode: Some(blind.since),
                },
                results,
                now,
            );
        }
        match action {
            Action::None => {}
            Action::Resume => {
                tracing::info!(target = %name, "an in-flight rollback was found: resuming at Wait/Verify");
                self.spawn_pipeline(
                    target.uid(),
                    name.clone(),
                    PipelineWork::Resume(Box::new(d.as_ref().clone())),
                    None,
                );
            }
            Action::Annotation(Ok(mut request)) => {
                // Pinned to what is deployed now: a deploy that lands
                // before the patch is not rolled back by this request.
                request.judged_hash = Some(subject.pod_template_hash.clone());
                tracing::info!(target = %name, "rollback requested by annotation");
                self.spawn_pipeline(
                    target.uid(),
                    name.clone(),
                    PipelineWork::Run(request),
                    d.metadata.resource_version.clone(),
                );
            }
            Action::Annotation(Err(problem)) => {
                tracing::warn!(target = %name, "{problem}");
                self.event(
                    d,
                    EventType::Warning,
                    "InvalidAnnotation",
                    "Rollback",
                    problem,
                )
                .await;
            }
            Action::RollBack(request) => {
                tracing::warn!(target = %name, revision = subject.revision, "Bad verdict: starting the rollback pipeline");
                self.spawn_pipeline(
                    target.uid(),
                    name.clone(),
                    PipelineWork::Run(request),
                    d.metadata.resource_version.clone(),
                );
            }
            Action::Escalate => {
                let why = if !restored_by_us {
                    "is the last known-good revision, deployed again, and is bad now: nothing older is known to be better, so there is no automatic rollback"
                } else {
                    "was restored by the watchdog's own rollback and is bad too: no second automatic rollback"
                };
                let sentence = format!(
                    "revision {} {why}; a person must act ({})",
                    subject.revision,
                    reasons.first().cloned().unwrap_or_default()
                );
                tracing::error!(target = %name, revision = subject.revision, "{sentence}");
                self.event(
                    d,
                    EventType::Warning,
                    "RollbackEscalated",
                    "Judge",
                    sentence.clone(),
                )
                .await;
                self.report(
                    target,
                    subject,
                    Report {
                        kind: EventKind::Escalation,
                        reason: sentence,
                        episode: None,
                    },
                    results,
                    now,
                );
            }
            Action::Degraded => {
                let sentence = format!(
                    "revision {} is degraded outside its observation window ({}); no recent deploy to roll back, so nothing was changed",
                    subject.revision,
                    reasons.first().cloned().unwrap_or_default()
                );
                tracing::warn!(target = %name, revision = subject.revision, "{sentence}");
                self.report(
                    target,
                    subject,
                    Report {
                        kind: EventKind::DegradedOutsideWindow,
                        reason: sentence,
                        episode: None,
                    },
                    results,
                    now,
                );
            }
        }
        if report_unverified {
            let note = format!(
                "the observation window of revision {} closed without one healthy evaluation; it is not recorded as known-good",
                subject.revision
            );
            tracing::warn!(target = %name, revision = subject.revision, "{note}");
            self.event(
                d,
                EventType::Warning,
                "RevisionUnverified",
                "RecordKnownGood",
                note,
            )
            .await;
        }
        if let Some(kg) = write_known_good {
            if (self.may_write)() {
                match revision::record_known_good(
                    &self.client,
                    &target.namespace,
                    &target.name,
                    &kg,
                )
                .await
                {
                    Ok(()) => {
                        self.tracker.recorded(&target.uid(), kg.clone());
                        if let Some(m) = self.memory.get_mut(&target.uid()) {
                            m.known_good_reported = true;
                        }
                        let note = format!(
                            "revision {} ({}) survived its observation window{}; recorded as known-good",
                            kg.revision,
                            kg.images.join(", "),
                            if adopted { " (adopted at start-up)" } else { "" }
                        );
                        tracing::info!(target = %name, revision = kg.revision, "{note}");
                        self.event(
                            d,
                            EventType::Normal,
                            "RevisionKnownGood",
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
        }
        Some(judgement)
    }

    async fn report_warnings(&mut self, warnings: &[TargetWarning]) {
        let now: BTreeSet<TargetWarning> = warnings.iter().cloned().collect();
        let new: Vec<TargetWarning> = now.difference(&self.reported_warnings).cloned().collect();
        for w in &new {
            tracing::warn!(target = %format!("{}/{}", w.namespace, w.subject), "{w}");
            if w.deployment_exists {
                let reference = Deployment::object_ref_for(&w.namespace, &w.subject);
                self.event_ref(
                    &reference,
                    EventType::Warning,
                    "TargetWarning",
                    "Resolve",
                    w.message.clone(),
                )
                .await;
            }
        }
        self.reported_warnings = now;
    }

    async fn event(
        &self,
        d: &Deployment,
        kind: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reference = d.object_ref(&());
        self.event_ref(&reference, kind, reason, action, note).await;
    }

    async fn event_ref(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        kind: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if !(self.may_write)() {
            return;
        }
        let event = KubeEvent {
            type_: kind,
            reason: reason.into(),
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
            Ok(Err(e)) => tracing::warn!(reason, error = %e, "cannot record a Kubernetes Event"),
            Err(_) => tracing::warn!(reason, "recording a Kubernetes Event timed out"),
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
            id: format!(
                "{}/{}/r{}/{}{}",
                target.namespace,
                target.name,
                subject.revision,
                kind.as_str(),
                episode
                    .map(|t| format!("/{}", t.as_second()))
                    .unwrap_or_default()
            ),
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
            detected_at: memory.and_then(|m| m.detected_at).map(|t| t.to_string()),
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

/// What a tick decided to do for one target.
enum Action {
    None,
    Resume,
    Annotation(Result<Box<RollbackRequest>, String>),
    RollBack(Box<RollbackRequest>),
    Escalate,
    Degraded,
}

enum PipelineWork {
    Run(Box<RollbackRequest>),
    Resume(Box<Deployment>),
}

fn outcome_word(result: RollbackResult) -> &'static str {
    match result {
        RollbackResult::Succeeded => "succeeded",
        RollbackResult::Refused => "refused",
        RollbackResult::WouldRollBack => "dry_run",
        RollbackResult::Conflict => "conflict",
        RollbackResult::Failed => "failed",
        RollbackResult::Escalated => "escalated",
        RollbackResult::HandedOver => "handed_over",
    }
}

/// The decisive reason of a Bad verdict, for the incident.
fn judgement_reason(reasons: &[String]) -> Option<String> {
    reasons.first().cloned()
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

/// The judge's view of a target's policy at this tick.
pub fn judge_policy(policy: &Policy, state: &TargetState) -> JudgePolicy {
    JudgePolicy {
        failure_threshold: policy.failure_threshold,
        thresholds: Default::default(),
        blind_alert_after: policy.blind_alert_after,
        immediate_bad_when_all_pods_crash: policy.immediate_bad_when_all_pods_crash,
        in_window: state.in_window(),
        rollback_outside_window: policy.rollback_outside_window,
        max_result_age: None,
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
        verdict: "unknown".into(),
        warnings: state.warnings.clone(),
        last_evaluated: Some(now.to_string()),
        ..TargetStatus::default()
    }
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
