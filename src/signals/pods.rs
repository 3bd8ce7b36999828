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

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use super::{Measurement, Outcome, PodsFinding, SignalId, SignalResult, Subject, Threshold};
use crate::config::PodsPolicy;

/// What the pod signal can refuse to judge. Nothing in it is fatal: each
/// becomes an Inconclusive result.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodsError {
    #[error("revision {revision} has no pods yet")]
    NoPods { revision: i64 },
}

/// Pods named in a sentence at most; the rest are counted.
const NAMED_PODS: usize = 5;

/// Why one pod counts as crashing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodProblem {
    pod: String,
    /// Configured reasons seen on the pod (`CrashLoopBackOff`, ...).
    reasons: Vec<String>,
    /// The highest restart count of its containers.
    restarts: i32,
    over_restarts: bool,
}

/// Judges the revision's pods. One result, always.
pub fn evaluate(policy: &PodsPolicy, subject: &Subject, now: jiff::Timestamp) -> SignalResult {
    let pods = &subject.pods;
    let problems: Vec<PodProblem> = pods
        .iter()
        .filter_map(|pod| problem(policy, pod, subject.rollout_started))
        .collect();
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

    let outcome = if problems.is_empty() && !deadline {
        if pods.is_empty() {
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
        if deadline {
            sentences.push(format!(
                "the rollout of revision {} exceeded its progress deadline (ProgressDeadlineExceeded)",
                subject.revision
            ));
        }
        let mut expected = format!(
            "no pod in {} and none over {} restarts",
            policy.crash_reasons.join(", "),
            policy.max_restarts
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
    SignalResult::new(SignalId::Pods, outcome, now).with_pods(finding)
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
    for c in containers {
        restarts = restarts.max(c.restart_count);
        for reason in container_reasons(c, since) {
            if policy.crash_reasons.iter().any(|r| r == reason) {
                reasons.insert(reason.to_owned());
            }
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
    })
}

/// Waiting, terminated and last-terminated reasons of one container.
fn container_reasons(c: &ContainerStatus, since: jiff::Timestamp) -> impl Iterator<Item = &str> {
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
    [waiting, terminated, last].into_iter().flatten()
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
            pods,
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
    fn every_pod_crash_looping_is_all_pods_crashing() {
        let r = judge(vec![
            pod("web-7f9c-a", crash_looping(1)),
            pod("web-7f9c-b", crash_looping(1)),
        ]);
        assert!(r.outcome.is_fail());
        assert!(r.pods.as_ref().is_some_and(PodsFinding::all_pods_crashing));
    }

    #[test]
    fn an_oom_kill_fails_until_the_container_is_ready_again() {
        // Restarted after the kill, not ready yet: crashing.
        let mut status = running(1);
        status["ready"] = json!(false);
        status["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        let r = judge(vec![
            pod("web-7f9c-a", status.clone()),
            pod("web-7f9c-b", running(0)),
        ]);
        assert_eq!(
            sentence(&r),
            "1 of 2 pods of revision 5 is in OOMKilled (web-7f9c-a: 1 restart)"
        );
        // Ready again: one kill during warm-up is history, not a Fail on
        // every tick from now on (more restarts than the limit still are).
        status["ready"] = json!(true);
        let r = judge(vec![
            pod("web-7f9c-a", status),
            pod("web-7f9c-b", running(0)),
        ]);
        assert!(r.outcome.is_pass(), "{:?}", r.outcome);
    }

    #[test]
    fn pods_crashing_for_different_reasons_are_each_explained() {
        let mut oom = running(1);
        oom["ready"] = json!(false);
        oom["lastState"] = json!({"terminated": {"exitCode": 137, "reason": "OOMKilled"}});
        let r = judge(vec![
            pod("web-7f9c-a", crash_looping(4)),
            pod("web-7f9c-b", oom),
        ]);
        assert_eq!(
            sentence(&r),
            "2 of 2 pods of revision 5 are crashing \
             (web-7f9c-a: CrashLoopBackOff, 4 restarts; web-7f9c-b: OOMKilled, 1 restart)"
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_fails() {
        let status = json!({
            "name": "app", "image": "kailash-kaizen:v5", "imageID": "", "ready": false,
            "restartCount": 0,
            "state": {"waiting": {"reason": "ImagePullBackOff"}},
        });
        let r = judge(vec![pod("web-7f9c-a", status)]);
        assert!(r.outcome.is_fail());
        assert_eq!(
            r.pods.as_ref().map(|f| f.reasons.clone()),
            Some(vec!["ImagePullBackOff".to_owned()])
        );
        assert!(r.describe().contains("1 crashing pod"), "{}", r.describe());
    }

    #[test]
    fn a_failing_init_container_counts() {
        let r = judge(vec![pod_with(
            "web-7f9c-a",
            json!({"phase": "Pending", "initContainerStatuses": [{
                "name": "migrate", "image": "migrate:v5", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError"}},
            }]}),
        )]);
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
}
