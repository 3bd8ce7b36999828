//! Carrying a decision out: metrics and log lines, Events on the
//! Deployment, notices to the sinks, the pipeline, the known-good record.
//! Every write here is asked of `may_write` first.

use super::*;

impl Daemon {
    /// Metrics and logs of one decision.
    pub(super) fn measure(
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
    pub(super) async fn apply(
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
        self.tell_misconfigured(target, subject, results, now).await;
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
    pub(super) async fn act(
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
                    read_failures_before: self
                        .memory
                        .get(&target.uid())
                        .map_or(0, |m| m.revision.read_failures()),
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
    pub(super) async fn record_known_good(
        &mut self,
        target: &WatchedDeployment,
        write: KnownGoodWrite,
    ) {
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

    pub(super) async fn report_warnings(&mut self, warnings: &[TargetWarning]) {
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

    pub(super) async fn event(&self, d: &Deployment, reason: Reason, action: &str, note: String) {
        let reference = d.object_ref(&());
        self.event_ref(&reference, reason, action, note).await;
    }

    pub(super) async fn event_ref(
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
}

impl Daemon {
    /// Queries that cannot match ([`crate::signals::misconfigured`]): a
    /// warning Event and one `misconfigured` notice per revision, naming
    /// every such query.
    async fn tell_misconfigured(
        &mut self,
        target: &WatchedDeployment,
        subject: &Subject,
        results: &[SignalResult],
        now: Timestamp,
    ) {
        let findings: Vec<String> = results
            .iter()
            .filter_map(|r| r.misconfigured.as_ref())
            .map(ToString::to_string)
            .collect();
        if findings.is_empty() || !(self.may_write)() {
            return;
        }
        let memory = self.memory.entry(target.uid()).or_default();
        if memory.misconfigured_told == Some(subject.revision) {
            return;
        }
        memory.misconfigured_told = Some(subject.revision);
        let sentence = findings.join("; also ");
        tracing::warn!(target = %target.display_name(), revision = subject.revision, "{sentence}");
        self.event(
            &target.deployment,
            Reason::QueryMisconfigured,
            "Judge",
            sentence.clone(),
        )
        .await;
        let report = Report {
            kind: EventKind::Misconfigured,
            reason: sentence,
            episode: None,
        };
        self.report(target, subject, report, results, now);
    }

    /// Tells the sinks about a decision that is not a rollback (blind,
    /// degraded, escalation). Only while allowed to write, like Events.
    pub(super) fn report(
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
        if !self.still_current(target, subject) {
            tracing::info!(
                target = %target.display_name(),
                revision = subject.revision,
                kind = kind.as_str(),
                "notice not sent: the revision it is about is no longer the Deployment's current one"
            );
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
            patch: Vec::new(),
            dashboard_url: None,
            runbook_url: None,
        });
    }
}

impl Daemon {
    /// Whether `subject` is still the current revision of `target` in the
    /// caches as they are now: the signals took time, and a notice about
    /// a revision replaced meanwhile must not go out.
    fn still_current(&self, target: &WatchedDeployment, subject: &Subject) -> bool {
        let snapshot = self.caches.snapshot();
        let Some(d) = snapshot.deployment(&target.namespace, &target.name) else {
            return false;
        };
        let uid = d.metadata.uid.clone().unwrap_or_default();
        match revision::rollout(d, snapshot.replicasets_of(&uid)) {
            revision::Rollout::Known { current, .. } => {
                current.number == subject.revision
                    && current.pod_template_hash == subject.pod_template_hash
            }
            revision::Rollout::Pending { .. } => false,
        }
    }
}

/// A notice that is not a rollback: what, why, and for a blind report the
/// episode it belongs to.
pub(super) struct Report {
    kind: EventKind,
    reason: String,
    episode: Option<Timestamp>,
}

pub(super) trait ObjectRefFor {
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

pub(super) fn outcome_name(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Pass { .. } => "pass",
        Outcome::Fail { .. } => "fail",
        Outcome::Inconclusive { .. } => "inconclusive",
    }
}

pub(super) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}
