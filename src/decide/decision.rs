//! What the watchdog decides about one revision at one tick, given what it
//! measured and what it remembers. Pure: no client, no clock, no writes.
//! The run loop gathers the facts (the caches, the Deployment's records,
//! which pipelines run here), calls [`decide`], and applies the
//! [`Decision`]: metrics, logs, Events, notices, the pipeline and the
//! known-good record.
//!
//! The rules it keeps:
//! - one decision per revision: a Bad revision is rolled back (or
//!   escalated) once, never once per tick;
//! - a revision the watchdog restored itself, the known-good revision
//!   deployed again, or a template a person brought back with no older
//!   template left to go to ([`TargetState::older_target`]), is never
//!   rolled back automatically: it escalates, since nothing older is known
//!   to be better;
//! - a Bad revision of a paused Deployment (`spec.paused`) is not acted
//!   on until the rollout is resumed: the decision is kept, not spent on
//!   a refusal;
//! - a template rolled back before is judged with `failure_threshold = 1`;
//! - only a replica that may act decides (a follower judges, marks nothing);
//! - known-good is recorded once, on a Healthy tick, for a revision whose
//!   window closed after at least one healthy and no bad evaluation (or
//!   that was already old when this process started), never while a
//!   rollback is in flight or after the revision was acted on.

use std::collections::BTreeMap;

use jiff::{SignedDuration, Timestamp};

use crate::config::PodsPolicy;
use crate::decide::judge::{judge, judge_some, JudgePolicy, JudgeState, Judgement, Verdict};
use crate::observe::blocklist::{self, Entry};
use crate::observe::memory::Memory;
pub use crate::observe::memory::{Acted, Evidence};
use crate::observe::revision::{KnownGood, TargetState, WindowWhy};
use crate::observe::targets::WatchedDeployment;
use crate::report::audit::Reason;
use crate::signals::{PodHistory, SignalId, SignalResult, Subject};

/// A revision restored by the watchdog's own rollback is one whose rollout
/// started no earlier than this before the rollback was recorded.
const OWN_ROLLBACK_SLACK: SignedDuration = SignedDuration::from_secs(60);

/// How far the revision's known-good record has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KnownGoodProgress {
    #[default]
    Pending,
    /// Its window closed unverified, and that was said once.
    ReportedUnverified,
    /// The record was written.
    Recorded,
}

/// What the run loop remembers of one Deployment's current revision
/// between ticks. A new revision starts from scratch.
#[derive(Debug, Clone, Default)]
pub struct RevisionState {
    /// (revision, pod-template-hash) the state belongs to.
    key: Option<(i64, String)>,
    judge: JudgeState,
    /// When this process first saw the revision.
    first_seen: Option<Timestamp>,
    /// When a verdict that may roll back was first reached.
    detected_at: Option<Timestamp>,
    evidence: Evidence,
    acted: Option<Acted>,
    /// A degraded-outside-window notice was sent.
    degraded_reported: bool,
    known_good: KnownGoodProgress,
    /// What was seen of the revision's pods on earlier ticks.
    pod_history: PodHistory,
    /// The rollback decided on this revision has an outcome (its pipeline
    /// finished, and was not handed back before its patch): only then is
    /// it part of the memory kept in the cluster.
    settled: bool,
    /// The cluster's memory of this revision was read once: the blind
    /// episode under way is taken from it only then.
    recalled: bool,
    /// Rollbacks decided on this revision whose Validate could not read
    /// the cluster, in a row (each given back and tried again).
    read_failures: u32,
}

impl RevisionState {
    /// Starts over when `key` names another revision than the one the
    /// state belongs to. None (the rollout is pending for a tick: the
    /// caches lag a switch) keeps the state: the next revision named
    /// starts over, the same one goes on where it was, its decision
    /// still spent.
    pub fn for_revision(&mut self, key: Option<(i64, String)>, now: Timestamp) {
        if key.is_some() && self.key != key {
            *self = RevisionState {
                key,
                first_seen: Some(now),
                ..RevisionState::default()
            };
        }
    }

    /// Per signal, the evidence time of the last result counted for the
    /// revision `key` names (empty for another revision): what
    /// [`Subject::counted_until`] carries into the next measurement.
    pub fn counted_until(&self, key: &(i64, String)) -> BTreeMap<SignalId, Timestamp> {
        if self.key.as_ref() != Some(key) {
            return BTreeMap::new();
        }
        self.judge
            .signals
            .iter()
            .filter_map(|(id, track)| Some((id.clone(), track.last_observed?)))
            .collect()
    }

    /// What was seen of the pods of the revision `key` names on earlier
    /// ticks (empty for another revision).
    pub fn pod_history(&self, key: &(i64, String)) -> PodHistory {
        if self.key.as_ref() == Some(key) {
            self.pod_history.clone()
        } else {
            PodHistory::default()
        }
    }

    /// Remembers what this tick showed of the revision's pods (which were
    /// Ready, which are in a crash state now) for the warm-up and
    /// established-crash rules of the next ticks. Only for the revision
    /// the state belongs to, and only its current pods.
    pub fn remember_pods(&mut self, policy: &PodsPolicy, subject: &Subject, now: Timestamp) {
        if self.key.as_ref() == Some(&(subject.revision, subject.pod_template_hash.clone())) {
            self.pod_history.remember(policy, subject, now);
        }
    }

    /// The known-good record of this revision was written.
    pub fn known_good_recorded(&mut self) {
        self.known_good = KnownGoodProgress::Recorded;
    }

    /// The rollback stopped before its patch (the Lease blinked, or a
    /// shutdown): nothing happened, so the decision is not spent and the
    /// next tick decides again.
    pub fn give_back_decision(&mut self) {
        self.acted = None;
        self.settled = false;
    }

    /// Validate could not read the cluster for the rollback decided on
    /// this revision: the decision is given back (the next tick tries
    /// again). Returns how many times in a row that has happened.
    pub fn read_failed(&mut self) -> u32 {
        self.give_back_decision();
        self.read_failures += 1;
        self.read_failures
    }

    /// Read failures in a row so far (0 once a rollback got past Validate).
    pub fn read_failures(&self) -> u32 {
        self.read_failures
    }

    /// The rollback decided on this revision finished (rolled back,
    /// refused, or failed after its patch): the decision is spent for
    /// good, and the memory in the cluster says so from now on.
    pub fn settle_decision(&mut self) {
        self.read_failures = 0;
        self.settled = self.acted.is_some();
    }

    /// Merges what the cluster remembers of this revision (written by this
    /// or an earlier leader) into this state: a Bad verdict, what was done
    /// about it and the notices sent are never forgotten, and the blind
    /// episode under way when this process first saw the revision is the
    /// one already told. A record about another revision changes nothing.
    pub fn recall(&mut self, kept: &Memory) {
        let Some((number, hash)) = &self.key else {
            return;
        };
        if !kept.is_about(*number, hash) {
            return;
        }
        self.evidence = self.evidence.merge(kept.evidence);
        if let (None, Some(acted)) = (self.acted, kept.acted) {
            self.acted = Some(acted);
            self.settled = true;
        }
        self.detected_at = match (self.detected_at, kept.bad_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.degraded_reported |= kept.degraded_reported;
        if kept.unverified_reported && self.known_good == KnownGoodProgress::Pending {
            self.known_good = KnownGoodProgress::ReportedUnverified;
        }
        if !self.recalled {
            self.recalled = true;
            if self.judge.blind_since.is_none() {
                self.judge.blind_since = kept.blind_since;
            }
        }
    }

    /// The memory to keep in the cluster for this revision, given its
    /// target state (the window's times), or None before it has a key and
    /// a start. A rollback still running is not in it: if this process
    /// goes before the patch, the next leader must decide again.
    pub fn to_keep(&self, state: &TargetState) -> Option<Memory> {
        let (revision, hash) = self.key.clone()?;
        let window = state.window.as_ref()?;
        let completed = match window.why {
            WindowWhy::AfterCompletion { completed, .. } => Some(completed),
            _ => None,
        };
        let acted = match self.acted {
            Some(Acted::RolledBack) if !self.settled => None,
            acted => acted,
        };
        Some(Memory {
            revision,
            pod_template_hash: hash,
            started: window.opened,
            completed,
            evidence: self.evidence,
            bad_at: self.detected_at,
            acted,
            degraded_reported: self.degraded_reported,
            unverified_reported: self.known_good == KnownGoodProgress::ReportedUnverified,
            blind_since: self.judge.blind_since,
        })
    }

    /// The verdict of the last evaluation kept.
    pub fn last_verdict(&self) -> Option<Verdict> {
        self.judge.last_verdict
    }

    pub fn detected_at(&self) -> Option<Timestamp> {
        self.detected_at
    }

    pub fn evidence(&self) -> Evidence {
        self.evidence
    }

    pub fn acted(&self) -> Option<Acted> {
        self.acted
    }

    pub fn known_good(&self) -> KnownGoodProgress {
        self.known_good
    }
}

/// What the run loop knows beyond the caches, gathered before deciding.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// This replica may act on the target now: it has a pipeline, may
    /// write (leads), and runs no pipeline for the target already.
    pub may_act: bool,
    /// The Deployment carries an in-flight rollback record (readable or
    /// not).
    pub in_flight: bool,
    /// ...which no pipeline of this process finished: resume it.
    pub in_flight_to_resume: bool,
    /// A `rollback-to` annotation not yet answered for this object version.
    pub annotation_request: bool,
    /// Times of the watchdog's rollbacks of this Deployment.
    pub rollbacks: Vec<Timestamp>,
    /// What the latest of them restored; None when no rollback recorded
    /// it (before the record existed): then the times alone decide.
    pub restored: Option<crate::decide::request::Restored>,
    /// The loop's tick interval (`watchdog.interval`): what a failing
    /// streak must span, see [`JudgePolicy::interval`].
    pub interval: std::time::Duration,
    /// A watch event woke this evaluation between ticks: only the signals
    /// in the results were measured, the others keep their counters
    /// ([`judge_some`]).
    pub between_ticks: bool,
}

/// Everything [`decide`] reads.
pub struct Input<'a> {
    pub target: &'a WatchedDeployment,
    pub state: &'a TargetState,
    pub subject: &'a Subject,
    pub results: &'a [SignalResult],
    pub facts: &'a Facts,
    pub now: Timestamp,
}

/// What to do about the verdict: at most one of these per tick.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    None,
    /// An in-flight rollback record was found: resume at Wait/Verify.
    Resume,
    /// A person asked for a rollback by annotation: run it.
    Annotation,
    /// Roll the revision back.
    RollBack(RollbackOrder),
    /// Bad, but not ours to roll back: a person must act.
    Escalate {
        sentence: String,
    },
    /// Degraded outside the window: say so, change nothing.
    ReportDegraded {
        sentence: String,
    },
}

/// The judge's case for a rollback, for the pipeline's request.
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackOrder {
    /// The decisive reason.
    pub reason: Option<String>,
    /// The failing signals.
    pub signals: Vec<SignalResult>,
    pub rollout_started_at: Timestamp,
    pub detected_at: Option<Timestamp>,
    /// The template was rolled back before (judged with threshold 1).
    pub blocklisted_redeploy: bool,
    /// The template judged: a deploy landing before the patch is not
    /// rolled back by this order.
    pub judged_hash: String,
}

/// An Event for a verdict that changed.
#[derive(Debug, Clone, PartialEq)]
pub struct VerdictEvent {
    pub reason: Reason,
    pub note: String,
}

/// The known-good record to write, and whether it is an adoption at
/// start-up rather than a window survived.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownGoodWrite {
    pub record: KnownGood,
    pub adopted: bool,
}

/// What one tick decided for one revision.
#[derive(Debug, Clone)]
pub struct Decision {
    pub judgement: Judgement,
    /// The blocklist entry of the current template, if it has one.
    pub blocklisted: Option<Entry>,
    /// The judge's reasons as sentences.
    pub reasons: Vec<String>,
    /// What `/status` gives as reasons: the judge's, the blocklist's, the
    /// target's warnings.
    pub status_reasons: Vec<String>,
    /// Seconds from the rollout's start to detection, on the tick a
    /// verdict first may roll back.
    pub detection_seconds: Option<f64>,
    pub verdict_event: Option<VerdictEvent>,
    pub action: Action,
    /// The window closed without a healthy evaluation: say so once.
    pub unverified: Option<String>,
    pub known_good: Option<KnownGoodWrite>,
}

/// The judge's view of a target's policy at this tick.
pub fn judge_policy(
    policy: &crate::config::Policy,
    state: &TargetState,
    interval: std::time::Duration,
) -> JudgePolicy {
    JudgePolicy {
        failure_threshold: policy.failure_threshold,
        thresholds: Default::default(),
        blind_alert_after: policy.blind_alert_after,
        immediate_bad_when_all_pods_crash: policy.immediate_bad_when_all_pods_crash,
        in_window: state.in_window(),
        rollback_outside_window: policy.rollback_outside_window,
        max_result_age: None,
        interval,
    }
}

/// Judges the revision and decides what to do, updating `memory`.
pub fn decide(memory: &mut RevisionState, input: &Input) -> Decision {
    let Input {
        target,
        state,
        subject,
        results,
        facts,
        now,
    } = *input;
    let blocklisted = blocklist::is_blocklisted(
        &target.deployment,
        &subject.pod_template_hash,
        &subject.images,
    );
    let mut policy = judge_policy(&target.policy, state, facts.interval);
    if blocklisted.is_some() {
        // A template that was rolled back once gets no benefit of the doubt.
        policy.failure_threshold = 1;
    }
    let judgement = if facts.between_ticks {
        judge_some(&policy, &memory.judge, results, now)
    } else {
        judge(&policy, &memory.judge, results, now)
    };
    memory.judge = judgement.state.clone();
    let verdict = judgement.verdict;
    memory.evidence = match (verdict, memory.evidence) {
        (Verdict::Bad | Verdict::Degraded, _) if state.in_window() => Evidence::Failed,
        (Verdict::Healthy, Evidence::Unproven) => Evidence::Healthy,
        (_, evidence) => evidence,
    };
    let detection_seconds = (verdict.may_roll_back() && memory.detected_at.is_none()).then(|| {
        memory.detected_at = Some(now);
        (now - subject.rollout_started)
            .total(jiff::Unit::Second)
            .unwrap_or(0.0)
            .max(0.0)
    });

    let reasons: Vec<String> = judgement
        .reasons
        .iter()
        .map(|r| r.sentence.clone())
        .collect();
    let mut status_reasons = reasons.clone();
    if let Some(entry) = &blocklisted {
        status_reasons.push(format!(
            "this template was rolled back before (revision {}): judged with failure_threshold = 1",
            entry.revision
        ));
    }
    status_reasons.extend(state.warnings.iter().cloned());
    if verdict == Verdict::Bad && state.paused && memory.acted.is_none() {
        status_reasons.push(format!(
            "{}/{} is paused (spec.paused): the rollback waits until the rollout is resumed",
            state.namespace, state.deployment
        ));
    }

    let verdict_event = judgement
        .verdict_changed
        .then(|| verdict_event(verdict, subject.revision, &reasons));
    let action = action(
        memory,
        input,
        &judgement,
        &reasons,
        &status_reasons,
        blocklisted.is_some(),
    );
    let (unverified, known_good) = known_good(memory, state, subject, facts, verdict);
    Decision {
        judgement,
        blocklisted,
        reasons,
        status_reasons,
        detection_seconds,
        verdict_event,
        action,
        unverified,
        known_good,
    }
}

fn verdict_event(verdict: Verdict, revision: i64, reasons: &[String]) -> VerdictEvent {
    let reason = match verdict {
        Verdict::Healthy => Reason::RevisionHealthy,
        Verdict::Inconclusive => Reason::RevisionInconclusive,
        Verdict::Suspect => Reason::RevisionSuspect,
        Verdict::Bad => Reason::RevisionBad,
        Verdict::Degraded => Reason::RevisionDegraded,
    };
    let verdict = verdict.as_str();
    let note = if reasons.is_empty() {
        format!("revision {revision} is {verdict}")
    } else {
        format!("revision {revision} is {verdict}: {}", reasons.join("; "))
    };
    VerdictEvent { reason, note }
}

/// One decision per revision, and only by a replica that may act.
fn action(
    memory: &mut RevisionState,
    input: &Input,
    judgement: &Judgement,
    reasons: &[String],
    status_reasons: &[String],
    blocklisted: bool,
) -> Action {
    let Input {
        state,
        subject,
        results,
        facts,
        ..
    } = *input;
    if !facts.may_act {
        return Action::None;
    }
    if facts.in_flight_to_resume {
        return Action::Resume;
    }
    if facts.annotation_request {
        return Action::Annotation;
    }
    let first_reason = reasons.first().cloned().unwrap_or_default();
    match judgement.verdict {
        // A person holds the rollout (`kubectl rollout pause`): the
        // pipeline would refuse, so the decision is kept for the resume
        // (the window stays open meanwhile).
        Verdict::Bad if memory.acted.is_none() && state.paused => Action::None,
        Verdict::Bad if memory.acted.is_none() => {
            // Restored by the watchdog: its rollout started with one of our
            // rollbacks and it is the template that rollback restored, or
            // it is the known-good revision a rollback restored (a restart
            // can misjudge when a reused ReplicaSet took over). Never a
            // blocklisted template: no rollback restores one, so a
            // person's re-deploy of it soon after our rollback is a new bad
            // revision, rolled back again; so is a new template a person
            // deploys soon after.
            let restored_by_us = !blocklisted
                && ((facts
                    .rollbacks
                    .iter()
                    .any(|t| *t >= subject.rollout_started - OWN_ROLLBACK_SLACK)
                    && facts
                        .restored
                        .as_ref()
                        .is_none_or(|r| r.is(&subject.pod_template_hash, &subject.images)))
                    || (!facts.rollbacks.is_empty() && state.current_is_known_good()));
            // The recorded known-good revision deployed again (a person's
            // `rollout undo`) and bad now: nothing older is known to be
            // better, so a person decides, as after the watchdog's own.
            let known_good_again = state.current_template_is_known_good();
            // A template brought back (a person's `rollout undo`) with no
            // older template to go to: every other revision is newer, the
            // one the person just left among them, or blocklisted.
            let undone_nothing_older =
                state.current().is_some_and(|c| c.reused) && state.older_target.is_none();
            if restored_by_us || known_good_again || undone_nothing_older {
                memory.acted = Some(Acted::Escalated);
                let why = if restored_by_us {
                    "was restored by the watchdog's own rollback and is bad too: no second automatic rollback".to_owned()
                } else if known_good_again {
                    "is the last known-good revision, deployed again, and is bad now: nothing older is known to be better, so there is no automatic rollback".to_owned()
                } else {
                    format!(
                        "brings back the template first deployed as revision {}, and is bad now: every other revision is newer (the one left behind among them) or blocklisted, so there is no automatic rollback",
                        state.current().map_or(subject.revision, |c| c.first_deployed())
                    )
                };
                Action::Escalate {
                    sentence: format!(
                        "revision {} {why}; a person must act ({first_reason})",
                        subject.revision
                    ),
                }
            } else {
                memory.acted = Some(Acted::RolledBack);
                Action::RollBack(RollbackOrder {
                    reason: status_reasons.first().cloned(),
                    signals: results
                        .iter()
                        .filter(|r| r.outcome.is_fail())
                        .cloned()
                        .collect(),
                    rollout_started_at: subject.rollout_started,
                    detected_at: memory.detected_at,
                    blocklisted_redeploy: blocklisted,
                    judged_hash: subject.pod_template_hash.clone(),
                })
            }
        }
        Verdict::Degraded if !memory.degraded_reported => {
            memory.degraded_reported = true;
            Action::ReportDegraded {
                sentence: format!(
                    "revision {} is degraded outside its observation window ({first_reason}); no recent deploy to roll back, so nothing was changed",
                    subject.revision
                ),
            }
        }
        _ => Action::None,
    }
}

/// Whether the revision is recorded known-good now, or its unverified
/// window close is said.
fn known_good(
    memory: &mut RevisionState,
    state: &TargetState,
    subject: &Subject,
    facts: &Facts,
    verdict: Verdict,
) -> (Option<String>, Option<KnownGoodWrite>) {
    let Some(due) = state.known_good_due() else {
        return (None, None);
    };
    // Already old when this process first saw it: adopted at start-up.
    let adopted = memory
        .first_seen
        .zip(state.window.as_ref())
        .is_some_and(|(seen, w)| w.closes.is_some_and(|closes| seen >= closes));
    let verified = memory.evidence == Evidence::Healthy;
    let unverified = (!adopted && !verified && memory.known_good == KnownGoodProgress::Pending)
        .then(|| {
            memory.known_good = KnownGoodProgress::ReportedUnverified;
            format!(
                "the observation window of revision {} closed without one healthy evaluation; it is not recorded as known-good",
                subject.revision
            )
        });
    // Recorded only on a tick that is Healthy now, never while a rollback
    // of this Deployment is in flight or after this revision was Bad or
    // acted on: a known-good record is a rollback target.
    let write = ((adopted || verified)
        && verdict == Verdict::Healthy
        && memory.evidence != Evidence::Failed
        && memory.acted.is_none()
        && !facts.in_flight
        && memory.known_good != KnownGoodProgress::Recorded)
        .then_some(KnownGoodWrite {
            record: due,
            adopted,
        });
    (unverified, write)
}

#[cfg(test)]
mod tests;
