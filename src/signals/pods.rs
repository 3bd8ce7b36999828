//! The pod signal: crash states of the pods of the revision under judgment,
//! read from the pod cache in [`Subject::pods`] and the Deployment's
//! `ProgressDeadlineExceeded` condition. Pure: no I/O, no clock, so it keeps
//! judging when Prometheus and the network are down.
//!
//! It must never fail a revision for pods that are not its own, nor for
//! having no pods yet: zero pods mid-rollout is no evidence (Inconclusive),
//! unless the Deployment itself reports that the rollout missed its
//! progress deadline.
//!
//! A pod is *crashing* when any of its containers or init containers is
//! waiting, terminated, or last terminated with a reason in
//! `crash_reasons`, or has restarted more than `max_restarts` times.
//!
//! A crash counts (fails the signal, and counts in
//! [`PodsFinding::crashing`]) only once it is *established*: at least 2
//! restarts, or the pod seen in a crash state *now* (a waiting or
//! terminated reason, not only its last termination) on two ticks in a row,
//! the first before this tick's evidence time ([`PodHistory`]) and at least
//! a tick interval before it (less a tenth): an evaluation a watch event
//! wakes between ticks is a sighting, not a tick. One OOM
//! kill during warm-up, or one transient `ErrImagePull`, is Inconclusive; a
//! real crash loop restarts again and a failing pull persists, so both are
//! still caught a tick later. After a watchdog restart the history is
//! empty, which only delays that by a tick.
//!
//! A new revision with pods but none of them Ready, now or on an earlier
//! tick, `ready_timeout` after its rollout started (or after its oldest pod
//! was created, if later: replaced pods start a new clock) fails, without
//! waiting for the Deployment's progress deadline.
//!
//! The evidence time of the result is now while the pod watch is live, and
//! the time it was last known live while it is not
//! ([`Subject::pods_seen_at`]): a state re-read from a stalled watch is not
//! new evidence. Known limit: a watch stream that stalls silently (a
//! half-open TCP connection) is noticed only when the client's read timeout
//! fires; until then its state looks current.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::{
    Measurement, Outcome, PodHistory, PodsFinding, SignalId, SignalResult, Subject, Threshold,
};
use crate::config::PodsPolicy;

/// What the pod signal can refuse to judge. Nothing in it is fatal: each
/// becomes an Inconclusive result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodsError {
    #[error("revision {revision} has no pods yet")]
    NoPods { revision: i64 },
    #[error("{pods}; a crash counts once established: {ESTABLISHED_RESTARTS} restarts or seen on 2 ticks")]
    NotEstablished { pods: String },
}

/// Pods named in a sentence at most; the rest are counted.
const NAMED_PODS: usize = 5;
/// Restarts that establish a crash on their own.
const ESTABLISHED_RESTARTS: i32 = 2;

/// Why one pod counts as crashing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodProblem {
    pod: String,
    /// Configured reasons seen on the pod (`CrashLoopBackOff`, ...).
    reasons: Vec<String>,
    /// The highest restart count of its containers.
    restarts: i32,
    over_restarts: bool,
    /// A configured reason is the state of a container now (waiting or
    /// terminated), not only its last termination.
    crashing_now: bool,
}

impl PodProblem {
    /// At least 2 restarts, or in a crash state now and already on an
    /// earlier tick (before `at`).
    fn established(&self, history: &PodHistory, at: jiff::Timestamp) -> bool {
        let wanted = history.established_after - history.established_after / 10;
        self.restarts >= ESTABLISHED_RESTARTS
            || (self.crashing_now
                && history.crashing_since.get(&self.pod).is_some_and(|since| {
                    *since < at
                        && at.duration_since(*since)
                            >= jiff::SignedDuration::try_from(wanted)
                                .unwrap_or(jiff::SignedDuration::MAX)
                }))
    }
}

/// The evidence time of what `subject.pods` shows: now while the pod watch
/// is live, else when it was last known live.
pub fn evidence_time(subject: &Subject, now: jiff::Timestamp) -> jiff::Timestamp {
    subject.pods_seen_at.map_or(now, |seen| seen.min(now))
}

/// A pod that is Ready and not being deleted: one a Service routes to.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

impl PodHistory {
    /// Remembers this tick's pods of the revision: which were Ready, and
    /// since when each has been in a crash state now without a break.
    /// Bounded to the current pods: a deleted pod is forgotten.
    pub fn remember(&mut self, policy: &PodsPolicy, subject: &Subject, now: jiff::Timestamp) {
        let at = evidence_time(subject, now);
        let names: BTreeSet<String> = subject
            .pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        self.ever_ready.retain(|name| names.contains(name));
        self.ever_ready.extend(
            subject
                .pods
                .iter()
                .filter(|p| is_ready(p))
                .filter_map(|p| p.metadata.name.clone()),
        );
        let crashing_now: BTreeSet<String> = subject
            .pods
            .iter()
            .filter_map(|p| problem(policy, p, subject.rollout_started))
            .filter(|p| p.crashing_now)
            .map(|p| p.pod)
            .collect();
        self.crashing_since
            .retain(|name, _| crashing_now.contains(name));
        for name in crashing_now {
            self.crashing_since.entry(name).or_insert(at);
        }
    }
}

/// Judges the revision's pods. One result, always.
pub fn evaluate(policy: &PodsPolicy, subject: &Subject, now: jiff::Timestamp) -> SignalResult {
    let at = evidence_time(subject, now);
    let pods = &subject.pods;
    let (problems, pending): (Vec<PodProblem>, Vec<PodProblem>) = pods
        .iter()
        .filter_map(|pod| problem(policy, pod, subject.rollout_started))
        .partition(|p| p.established(&subject.pod_history, at));
    let reasons: Vec<String> = problems
        .iter()
        .flat_map(|p| p.reasons.iter().cloned())
        .chain(
            problems
                .iter()
                .any(|p| p.over_restarts)
                .then(|| format!("more than {} restarts", policy.max_restarts)),
        )
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let finding = PodsFinding {
        pods: u32::try_from(pods.len()).unwrap_or(u32::MAX),
        crashing: u32::try_from(problems.len()).unwrap_or(u32::MAX),
        reasons,
    };
    let deadline = subject.progress_deadline_exceeded && policy.progress_deadline_is_failure;
    let never_ready = never_ready(policy.ready_timeout, subject, at);

    let outcome = if problems.is_empty() && !deadline && never_ready.is_none() {
        if !pending.is_empty() {
            let named: Vec<String> = pending.iter().map(pending_detail).collect();
            Outcome::inconclusive(
                PodsError::NotEstablished {
                    pods: named_list(named),
                }
                .to_string(),
            )
        } else if pods.is_empty() {
            Outcome::inconclusive(
                PodsError::NoPods {
                    revision: subject.revision,
                }
                .to_string(),
            )
        } else {
            Outcome::pass_with(Measurement::count(pods.len() as f64, "pod", "pods"))
        }
    } else {
        let mut sentences = Vec::new();
        if !problems.is_empty() {
            sentences.push(crash_sentence(subject, &problems, policy.max_restarts));
        }
        if let Some(sentence) = never_ready {
            sentences.push(sentence);
        }
        if deadline {
            sentences.push(format!(
                "the rollout of revision {} exceeded its progress deadline (ProgressDeadlineExceeded)",
                subject.revision
            ));
        }
        let mut expected = format!(
            "no pod in {} and none over {} restarts, a Ready pod within {}",
            policy.crash_reasons.join(", "),
            policy.max_restarts,
            humantime::format_duration(policy.ready_timeout)
        );
        if policy.progress_deadline_is_failure {
            expected.push_str(", and progress before the Deployment's deadline");
        }
        Outcome::Fail {
            measured: Measurement::count(problems.len() as f64, "crashing pod", "crashing pods"),
            threshold: Threshold::Expected { what: expected },
            baseline: None,
            sentence: capitalize(&sentences.join("; ")),
        }
    };
    SignalResult::new(SignalId::Pods, outcome, at).with_pods(finding)
}

/// "no pod of revision 2 became Ready within 5m: 3 pods, web-abc Running
/// not Ready, ...", when the revision has pods, none Ready now or on an
/// earlier tick, and `timeout` has passed since its rollout started (or
/// since its oldest current pod was created, if later).
fn never_ready(timeout: Duration, subject: &Subject, at: jiff::Timestamp) -> Option<String> {
    let pods = &subject.pods;
    if pods.is_empty() || !subject.pod_history.ever_ready.is_disjoint(&names(pods)) {
        return None;
    }
    if pods.iter().any(|p| is_ready(p)) {
        return None;
    }
    let oldest_pod = pods
        .iter()
        .filter_map(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0))
        .min();
    let since = oldest_pod.map_or(subject.rollout_started, |t| t.max(subject.rollout_started));
    let waited = at.duration_since(since);
    if waited < jiff::SignedDuration::try_from(timeout).unwrap_or(jiff::SignedDuration::MAX) {
        return None;
    }
    let described: Vec<String> = pods.iter().map(|p| not_ready_detail(p)).collect();
    Some(format!(
        "no pod of revision {} became Ready within {}: {} {}, {}",
        subject.revision,
        humantime::format_duration(timeout),
        pods.len(),
        if pods.len() == 1 { "pod" } else { "pods" },
        named_list(described)
    ))
}

fn names(pods: &[Arc<Pod>]) -> BTreeSet<String> {
    pods.iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

/// "web-abc Running not Ready", "web-def Pending not Ready (ContainerCreating)".
fn not_ready_detail(pod: &Pod) -> String {
    let name = pod.metadata.name.as_deref().unwrap_or("(unnamed)");
    let status = pod.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("no phase");
    let waiting: BTreeSet<&str> = status
        .into_iter()
        .flat_map(|s| {
            s.container_statuses
                .iter()
                .flatten()
                .chain(s.init_container_statuses.iter().flatten())
        })
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.as_deref())
        .collect();
    if waiting.is_empty() {
        format!("{name} {phase} not Ready")
    } else {
        let waiting: Vec<&str> = waiting.into_iter().collect();
        format!("{name} {phase} not Ready ({})", waiting.join(", "))
    }
}

/// "web-abc OOMKilled once (1 restart)".
fn pending_detail(p: &PodProblem) -> String {
    let what = if p.reasons.is_empty() {
        "restarted".to_owned()
    } else {
        p.reasons.join(", ")
    };
    match p.restarts {
        1 => format!("{} {what} once (1 restart)", p.pod),
        n => format!("{} {what} ({n} restarts)", p.pod),
    }
}

fn named_list(mut items: Vec<String>) -> String {
    if items.len() > NAMED_PODS {
        let more = items.len() - NAMED_PODS;
        items.truncate(NAMED_PODS);
        items.push(format!("and {more} more"));
    }
    items.join(", ")
}

/// Why `pod` is crashing, or None when it is not. A last-terminated state
/// that ended before the revision's rollout started (an old pod of a
/// restored revision, OOM-killed days ago) is history, not evidence.
fn problem(policy: &PodsPolicy, pod: &Pod, since: jiff::Timestamp) -> Option<PodProblem> {
    let status = pod.status.as_ref()?;
    let containers = status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten());
    let mut reasons = BTreeSet::new();
    let mut restarts = 0;
    let mut crashing_now = false;
    let configured = |reason: &str| policy.crash_reasons.iter().any(|r| r == reason);
    for c in containers {
        restarts = restarts.max(c.restart_count);
        let (now, last) = container_reasons(c, since);
        for reason in now.into_iter().flatten().filter(|r| configured(r)) {
            crashing_now = true;
            reasons.insert(reason.to_owned());
        }
        if let Some(reason) = last.filter(|r| configured(r)) {
            reasons.insert(reason.to_owned());
        }
    }
    let over_restarts = i64::from(restarts) > i64::from(policy.max_restarts);
    if reasons.is_empty() && !over_restarts {
        return None;
    }
    Some(PodProblem {
        pod: pod.metadata.name.clone().unwrap_or_default(),
        reasons: reasons.into_iter().collect(),
        restarts,
        over_restarts,
        crashing_now,
    })
}

/// The waiting and terminated reasons of one container now, and its
/// last-terminated reason when that still counts.
fn container_reasons(
    c: &ContainerStatus,
    since: jiff::Timestamp,
) -> ([Option<&str>; 2], Option<&str>) {
    let state = c.state.as_ref();
    let waiting = state
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref());
    let terminated = state
        .and_then(|s| s.terminated.as_ref())
        .and_then(|t| t.reason.as_deref());
    // A past termination counts only while the container is not ready
    // again: one OOM during warm-up of a pod that recovered is history, not
    // a crash on every tick from now on (restarts over the limit still are).
    let last = c
        .last_state
        .as_ref()
        .filter(|_| !c.ready)
        .and_then(|s| s.terminated.as_ref())
        .filter(|t| t.finished_at.as_ref().is_none_or(|f| f.0 >= since))
        .and_then(|t| t.reason.as_deref());
    ([waiting, terminated], last)
}

/// "2 of 3 pods of revision 5 are in CrashLoopBackOff (web-7f9c-abcde: 4
/// restarts, web-7f9c-fghij: 2 restarts)".
fn crash_sentence(subject: &Subject, problems: &[PodProblem], max_restarts: u32) -> String {
    let total = subject.pods.len();
    let head = format!(
        "{} of {} {} of revision {}",
        problems.len(),
        total,
        if total == 1 { "pod" } else { "pods" },
        subject.revision
    );
    let verb = if problems.len() == 1 { "is" } else { "are" };
    let distinct: BTreeSet<&str> = problems
        .iter()
        .flat_map(|p| p.reasons.iter().map(String::as_str))
        .collect();
    let one_reason = match distinct.iter().next() {
        Some(reason) if distinct.len() == 1 && problems.iter().all(|p| !p.reasons.is_empty()) => {
            Some(*reason)
        }
        _ => None,
    };
    let what = match one_reason {
        Some(reason) => format!("{verb} in {reason}"),
        None if distinct.is_empty() => format!("restarted more than {max_restarts} times"),
        None => format!("{verb} crashing"),
    };
    // One reason for all, or restarts only: the pods differ by restarts.
    let restarts_only = one_reason.is_some() || distinct.is_empty();
    let detail = |p: &PodProblem| {
        let restarts = match p.restarts {
            1 => "1 restart".to_owned(),
            n => format!("{n} restarts"),
        };
        if restarts_only {
            restarts
        } else {
            let mut parts = p.reasons.clone();
            parts.push(restarts);
            parts.join(", ")
        }
    };
    let mut named: Vec<String> = problems
        .iter()
        .take(NAMED_PODS)
        .map(|p| format!("{}: {}", p.pod, detail(p)))
        .collect();
    if problems.len() > NAMED_PODS {
        named.push(format!("and {} more", problems.len() - NAMED_PODS));
    }
    let separator = if restarts_only { ", " } else { "; " };
    format!("{head} {what} ({})", named.join(separator))
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> PodsPolicy {
        PodsPolicy {
            enabled: true,
            crash_reasons: [
                "CrashLoopBackOff",
                "ImagePullBackOff",
                "ErrImagePull",
                "CreateContainerConfigError",
                "OOMKilled",
            ]
            .map(String::from)
            .to_vec(),
            max_restarts: 3,
            progress_deadline_is_failure: true,
            ready_timeout: Duration::from_secs(300),
        }
    }

    fn subject(pods: Vec<Pod>) -> Subject {
        Subject {
            namespace: "production".into(),
            deployment: "kailash-kaizen".into(),
            revision: 5,
            pod_template_hash: "7f9c".into(),
            images: vec!["kailash-kaizen:v5".into()],
            rollout_started: jiff::Timestamp::UNIX_EPOCH,
            baseline: None,
            pods: pods.into_iter().map(Arc::new).collect(),
            progress_deadline_exceeded: false,
            ..Default::default()
        }
    }

    fn pod(name: &str, container_status: serde_json::Value) -> Pod {
        pod_with(
            name,
            json!({"phase": "Running", "containerStatuses": [container_status]}),
        )
    }

    fn pod_with(name: &str, status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "production"},
            "status": status,
        }))
        .expect("test pod JSON")
    }

    fn running(restarts: i32) -> serde_json::Value {
        json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": true,
            "restartCount": restarts,
            "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
        })
    }

    fn crash_looping(restarts: i32) -> serde_json::Value {
        json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
            "restartCount": restarts,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
        })
    }

    fn judge(pods: Vec<Pod>) -> SignalResult {
        evaluate(&policy(), &subject(pods), jiff::Timestamp::UNIX_EPOCH)
    }

    /// Judged at the epoch, the pods named having been seen crashing on
    /// the tick 15 s before.
    fn judge_seen_before(pods: Vec<Pod>, seen: &[&str]) -> SignalResult {
        let mut s = subject(pods);
        for name in seen {
            s.pod_history
                .crashing_since
                .insert((*name).to_owned(), ts_secs(-15));
        }
        evaluate(&policy(), &s, jiff::Timestamp::UNIX_EPOCH)
    }

    fn ts_secs(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("a test time")
    }

    fn inconclusive_why(r: &SignalResult) -> &str {
        match &r.outcome {
            Outcome::Inconclusive { why } => why,
            other => panic!("expected Inconclusive, got {other:?}"),
        }
    }

    /// A container restarted once after an OOM kill, not ready yet.
    fn oom_killed_once() -> serde_json::Value {
        let mut status = running(1);
        status["ready"] = json!(false);
        status["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        status
    }

    fn sentence(r: &SignalResult) -> &str {
        match &r.outcome {
            Outcome::Fail { sentence, .. } => sentence,
            other => panic!("expected a Fail, got {other:?}"),
        }
    }

    #[test]
    fn two_of_three_pods_in_crash_loop_back_off_fail_and_are_named() {
        let r = judge(vec![
            pod("kailash-kaizen-7f9c-abcde", crash_looping(4)),
            pod("kailash-kaizen-7f9c-fghij", crash_looping(2)),
            pod("kailash-kaizen-7f9c-klmno", running(0)),
        ]);
        assert_eq!(
            sentence(&r),
            "2 of 3 pods of revision 5 are in CrashLoopBackOff \
             (kailash-kaizen-7f9c-abcde: 4 restarts, kailash-kaizen-7f9c-fghij: 2 restarts)"
        );
        let finding = r.pods.as_ref().expect("a pods finding");
        assert_eq!((finding.pods, finding.crashing), (3, 2));
        assert!(finding.reasons.contains(&"CrashLoopBackOff".to_owned()));
        assert!(!finding.all_pods_crashing());
    }

    #[test]
    fn every_pod_in_an_established_crash_is_all_pods_crashing() {
        let r = judge(vec![
            pod("web-7f9c-a", crash_looping(2)),
            pod("web-7f9c-b", crash_looping(3)),
        ]);
        assert!(r.outcome.is_fail());
        assert!(r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));
    }

    #[test]
    fn all_pods_crashing_counts_established_crashes_only() {
        // One pod crash-loops for real, the other crashed once: not "all".
        let pods = vec![
            pod("web-7f9c-a", crash_looping(4)),
            pod("web-7f9c-b", crash_looping(1)),
        ];
        let r = judge(pods.clone());
        assert_eq!(
            sentence(&r),
            "1 of 2 pods of revision 5 is in CrashLoopBackOff (web-7f9c-a: 4 restarts)"
        );
        let finding = r.pods.as_ref().expect("a pods finding");
        assert_eq!((finding.pods, finding.crashing), (2, 1));
        assert!(!finding.all_pods_crashing());
        // Still in CrashLoopBackOff on the next tick: established, all.
        let r = judge_seen_before(pods, &["web-7f9c-b"]);
        assert!(r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));
    }

    #[test]
    fn one_oom_kill_is_inconclusive_until_the_crash_is_established() {
        // Restarted once after the kill, not ready yet: one crash.
        let r = judge(vec![
            pod("web-7f9c-a", oom_killed_once()),
            pod("web-7f9c-b", running(0)),
        ]);
        assert_eq!(
            inconclusive_why(&r),
            "web-7f9c-a OOMKilled once (1 restart); \
             a crash counts once established: 2 restarts or seen on 2 ticks"
        );
        assert_eq!(r.pods.as_ref().map(|f| f.crashing), Some(0));
        // Seen so again on the next tick: still the one past kill (the
        // container runs again), not a crash state now.
        let r = judge_seen_before(vec![pod("web-7f9c-a", oom_killed_once())], &["web-7f9c-a"]);
        assert!(!r.outcome.is_fail(), "{:?}", r.outcome);
        // Killed a second time: established.
        let mut twice = oom_killed_once();
        twice["restartCount"] = json!(2);
        let r = judge(vec![
            pod("web-7f9c-a", twice),
            pod("web-7f9c-b", running(0)),
        ]);
        assert_eq!(
            sentence(&r),
            "1 of 2 pods of revision 5 is in OOMKilled (web-7f9c-a: 2 restarts)"
        );
    }

    #[test]
    fn an_oom_killed_container_seen_on_two_ticks_fails() {
        let killed = json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
            "restartCount": 1,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        });
        let r = judge(vec![pod("web-7f9c-a", killed.clone())]);
        assert!(
            inconclusive_why(&r).starts_with("web-7f9c-a OOMKilled once (1 restart); "),
            "{r:?}"
        );
        let r = judge_seen_before(vec![pod("web-7f9c-a", killed)], &["web-7f9c-a"]);
        assert_eq!(
            sentence(&r),
            "1 of 1 pod of revision 5 is in OOMKilled (web-7f9c-a: 1 restart)"
        );
        assert!(r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));
    }

    #[test]
    fn a_crash_first_seen_at_this_ticks_evidence_time_is_not_yet_established() {
        // The same cached state read again (a stalled watch dates it to the
        // same instant): not a second tick of evidence.
        let mut s = subject(vec![pod("web-7f9c-a", crash_looping(1))]);
        s.pod_history
            .crashing_since
            .insert("web-7f9c-a".into(), ts_secs(-15));
        s.pods_seen_at = Some(ts_secs(-15));
        let r = evaluate(&policy(), &s, jiff::Timestamp::UNIX_EPOCH);
        assert!(!r.outcome.is_fail(), "{:?}", r.outcome);
        assert_eq!(r.at, ts_secs(-15), "dated when the watch was last live");
    }

    #[test]
    fn a_crash_seen_between_ticks_is_established_only_a_tick_after_it_was_first_seen() {
        // An evaluation a watch event woke saw the pod OOM-killed 2 s ago,
        // with 15 s ticks: two sightings, but not two ticks apart.
        let killed = json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
            "restartCount": 1,
            "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}},
        });
        let at_interval = |seen_secs_ago: i64| {
            let mut s = subject(vec![pod("web-7f9c-a", killed.clone())]);
            s.pod_history.established_after = Duration::from_secs(15);
            s.pod_history
                .crashing_since
                .insert("web-7f9c-a".into(), ts_secs(-seen_secs_ago));
            evaluate(&policy(), &s, jiff::Timestamp::UNIX_EPOCH)
        };
        let r = at_interval(2);
        assert!(
            inconclusive_why(&r).starts_with("web-7f9c-a OOMKilled once (1 restart); "),
            "{r:?}"
        );
        // Seen so a tick ago (a few milliseconds less is the same tick).
        for secs in [14, 15, 60] {
            let r = at_interval(secs);
            assert_eq!(
                sentence(&r),
                "1 of 1 pod of revision 5 is in OOMKilled (web-7f9c-a: 1 restart)",
                "seen {secs} s ago"
            );
        }
    }

    #[test]
    fn an_oom_kill_of_a_container_ready_again_is_history() {
        let mut status = oom_killed_once();
        status["restartCount"] = json!(2);
        status["ready"] = json!(true);
        let r = judge(vec![
            pod("web-7f9c-a", status),
            pod("web-7f9c-b", running(0)),
        ]);
        assert!(r.outcome.is_pass(), "{:?}", r.outcome);
    }

    #[test]
    fn pods_crashing_for_different_reasons_are_each_explained() {
        let mut oom = oom_killed_once();
        oom["restartCount"] = json!(2);
        let r = judge(vec![
            pod("web-7f9c-a", crash_looping(4)),
            pod("web-7f9c-b", oom),
        ]);
        assert_eq!(
            sentence(&r),
            "2 of 2 pods of revision 5 are crashing \
             (web-7f9c-a: CrashLoopBackOff, 4 restarts; web-7f9c-b: OOMKilled, 2 restarts)"
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails_once_seen_on_two_ticks() {
        let status = json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff"}},
        });
        let r = judge(vec![pod("web-7f9c-a", status.clone())]);
        assert_eq!(
            inconclusive_why(&r),
            "web-7f9c-a ImagePullBackOff (0 restarts); \
             a crash counts once established: 2 restarts or seen on 2 ticks"
        );
        let r = judge_seen_before(vec![pod("web-7f9c-a", status)], &["web-7f9c-a"]);
        assert!(r.outcome.is_fail());
        assert_eq!(
            r.pods.as_ref().map(|f| f.reasons.clone()),
            Some(vec!["ImagePullBackOff".to_owned()])
        );
        assert!(r.describe().contains("1 crashing pod"), "{}", r.describe());
    }

    #[test]
    fn a_failing_init_container_counts() {
        let r = judge_seen_before(
            vec![pod_with(
                "web-7f9c-a",
                json!({"phase": "Pending", "initContainerStatuses": [{
                    "name": "migrate", "image": "migrate:v5", "imageID": "", "ready": false,
                    "restartCount": 0,
                    "state": {"waiting": {"reason": "CreateContainerConfigError"}},
                }]}),
            )],
            &["web-7f9c-a"],
        );
        assert!(r.outcome.is_fail(), "{r:?}");
    }

    #[test]
    fn restarts_over_the_limit_fail_without_a_crash_reason() {
        let r = judge(vec![
            pod("web-7f9c-a", running(4)),
            pod("web-7f9c-b", running(3)),
        ]);
        assert_eq!(
            sentence(&r),
            "1 of 2 pods of revision 5 restarted more than 3 times (web-7f9c-a: 4 restarts)"
        );
        assert_eq!(
            r.pods.as_ref().map(|f| f.reasons.clone()),
            Some(vec!["more than 3 restarts".to_owned()])
        );
    }

    #[test]
    fn restarts_at_the_limit_and_other_reasons_pass() {
        let mut completed = running(3);
        completed["lastState"] = json!({"terminated": {"exitCode": 0, "reason": "Completed"}});
        let r = judge(vec![pod("web-7f9c-a", completed)]);
        assert_eq!(
            r.outcome,
            Outcome::pass_with(Measurement::count(1.0, "pod", "pods"))
        );
        assert_eq!(r.pods.as_ref().map(|f| f.crashing), Some(0));
    }

    #[test]
    fn zero_pods_mid_rollout_are_inconclusive_not_a_failure() {
        let r = judge(vec![]);
        assert_eq!(
            r.outcome,
            Outcome::inconclusive("revision 5 has no pods yet")
        );
        assert!(!r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));
    }

    #[test]
    fn an_exceeded_progress_deadline_fails_even_with_no_pods() {
        let mut s = subject(vec![]);
        s.progress_deadline_exceeded = true;
        let r = evaluate(&policy(), &s, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            sentence(&r),
            "The rollout of revision 5 exceeded its progress deadline (ProgressDeadlineExceeded)"
        );
    }

    #[test]
    fn an_exceeded_deadline_is_ignored_when_not_configured_as_failure() {
        let mut s = subject(vec![pod("web-7f9c-a", running(0))]);
        s.progress_deadline_exceeded = true;
        let mut p = policy();
        p.progress_deadline_is_failure = false;
        assert!(evaluate(&p, &s, jiff::Timestamp::UNIX_EPOCH)
            .outcome
            .is_pass());
    }

    #[test]
    fn a_pod_without_status_is_not_crashing() {
        let r = judge(vec![serde_json::from_value(
            json!({"metadata": {"name": "web-7f9c-a"}}),
        )
        .expect("pod")]);
        assert!(r.outcome.is_pass());
    }

    fn not_ready_pod(name: &str, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "production", "creationTimestamp": created},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [{
                    "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"running": {}},
                }]},
        }))
        .expect("test pod JSON")
    }

    fn ready_pod(name: &str) -> Pod {
        let mut p = not_ready_pod(name, "1970-01-01T00:00:00Z");
        if let Some(c) = p
            .status
            .as_mut()
            .and_then(|s| s.conditions.as_mut())
            .and_then(|c| c.first_mut())
        {
            c.status = "True".into();
        }
        p
    }

    #[test]
    fn a_revision_with_no_pod_ever_ready_fails_after_ready_timeout() {
        let pods = vec![
            not_ready_pod("web-7f9c-a", "1970-01-01T00:00:00Z"),
            pod_with(
                "web-7f9c-b",
                json!({"phase": "Pending", "containerStatuses": [{
                    "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
                    "restartCount": 0, "state": {"waiting": {"reason": "ContainerCreating"}},
                }]}),
            ),
        ];
        // 4m59s after the rollout started: still starting.
        let r = evaluate(&policy(), &subject(pods.clone()), ts_secs(299));
        assert!(r.outcome.is_pass(), "{:?}", r.outcome);
        let r = evaluate(&policy(), &subject(pods.clone()), ts_secs(300));
        assert_eq!(
            sentence(&r),
            "No pod of revision 5 became Ready within 5m: 2 pods, \
             web-7f9c-a Running not Ready, web-7f9c-b Pending not Ready (ContainerCreating)"
        );
        // No crash: the immediate rule does not apply.
        assert!(!r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));

        // One of them was Ready on an earlier tick: it did start.
        let mut s = subject(pods);
        s.pod_history.ever_ready.insert("web-7f9c-a".into());
        assert!(evaluate(&policy(), &s, ts_secs(600)).outcome.is_pass());
    }

    #[test]
    fn ready_timeout_counts_from_the_oldest_pod_when_pods_were_replaced() {
        // The rollout started long ago, but its pods were just recreated.
        let pods = vec![not_ready_pod("web-7f9c-c", "1970-01-01T00:08:00Z")];
        let r = evaluate(&policy(), &subject(pods.clone()), ts_secs(600));
        assert!(r.outcome.is_pass(), "{:?}", r.outcome);
        let r = evaluate(&policy(), &subject(pods), ts_secs(780));
        assert!(r.outcome.is_fail(), "{:?}", r.outcome);
    }

    #[test]
    fn a_ready_pod_or_no_pods_never_trip_ready_timeout() {
        let late = ts_secs(3600);
        let ready = vec![
            ready_pod("web-7f9c-a"),
            not_ready_pod("web-7f9c-b", "1970-01-01T00:00:00Z"),
        ];
        assert!(evaluate(&policy(), &subject(ready), late).outcome.is_pass());
        assert_eq!(
            evaluate(&policy(), &subject(vec![]), late).outcome,
            Outcome::inconclusive("revision 5 has no pods yet")
        );
    }

    #[test]
    fn history_remembers_ready_pods_and_unbroken_crash_states_of_current_pods() {
        let mut history = PodHistory::default();
        history.ever_ready.insert("web-7f9c-gone".into());
        let first = subject(vec![
            ready_pod("web-7f9c-a"),
            pod("web-7f9c-b", crash_looping(1)),
            pod("web-7f9c-c", oom_killed_once()),
        ]);
        history.remember(&policy(), &first, ts_secs(0));
        assert_eq!(
            history.ever_ready.iter().collect::<Vec<_>>(),
            ["web-7f9c-a"],
            "a pod no longer there is forgotten"
        );
        assert_eq!(
            history.crashing_since.iter().collect::<Vec<_>>(),
            [(&"web-7f9c-b".to_owned(), &ts_secs(0))],
            "only a crash state now, not a past termination"
        );
        // Next tick: b still crashing keeps its first time; a not Ready
        // now is still remembered as once Ready.
        let second = subject(vec![
            not_ready_pod("web-7f9c-a", "1970-01-01T00:00:00Z"),
            pod("web-7f9c-b", crash_looping(1)),
        ]);
        history.remember(&policy(), &second, ts_secs(15));
        assert!(history.ever_ready.contains("web-7f9c-a"));
        assert_eq!(history.crashing_since.get("web-7f9c-b"), Some(&ts_secs(0)));
        // b recovered: its run is broken, a later crash starts over.
        let third = subject(vec![pod("web-7f9c-b", running(1))]);
        history.remember(&policy(), &third, ts_secs(30));
        assert!(history.crashing_since.is_empty());
    }

    #[test]
    fn a_crash_loop_judged_on_consecutive_ticks_fails_on_the_second() {
        // What the run loop does: judge, then remember.
        let mut s = subject(vec![pod("web-7f9c-a", crash_looping(1))]);
        let r = evaluate(&policy(), &s, ts_secs(0));
        assert!(!r.outcome.is_fail());
        let mut history = PodHistory::default();
        history.remember(&policy(), &s, ts_secs(0));
        s.pod_history = history;
        let r = evaluate(&policy(), &s, ts_secs(15));
        assert!(r.outcome.is_fail(), "{:?}", r.outcome);
    }
}
