//! The decision rules, one case per test.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use serde_json::json;

use super::*;
use crate::config::Loader;
use crate::k8s::keys::BLOCKLIST;
use crate::observe::revision::{Revision, Rollout, Window, WindowWhy};
use crate::observe::targets::Source;
use crate::signals::{Measurement, Outcome, SignalId, Threshold};

const TICK: Duration = Duration::from_secs(15);

fn t0() -> Timestamp {
    "2026-11-27T10:00:00Z".parse().expect("a time")
}

fn at(tick: u32) -> Timestamp {
    t0() + TICK * tick
}

/// Revision 2 (`h2`, web:v2) of production/web, rolled out one minute
/// before t0, with a 15 min window; revision 1 (`h1`) before it. This
/// replica may act, and nothing is in flight.
struct World {
    target: WatchedDeployment,
    state: TargetState,
    subject: Subject,
    facts: Facts,
}

fn revision(number: i64, hash: &str) -> Revision {
    Revision {
        number,
        pod_template_hash: hash.into(),
        replica_set: format!("web-{hash}"),
        replica_set_uid: format!("uid-{hash}"),
        images: vec![format!("web:v{number}")],
        created: None,
        reused: false,
        history: Vec::new(),
    }
}

fn world(config: &str) -> World {
    let toml = format!(
        "[defaults]\nwatch_window = \"15m\"\n{config}\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n"
    );
    let policy = Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("a valid test config")
        .config
        .targets[0]
        .policy
        .clone();
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "production", "uid": "uid-web"}
    }))
    .expect("a Deployment");
    let started = t0() - jiff::SignedDuration::from_secs(60);
    World {
        target: WatchedDeployment {
            namespace: "production".into(),
            name: "web".into(),
            source: Source::Config { index: 0 },
            policy,
            deployment: Arc::new(deployment),
        },
        state: TargetState {
            namespace: "production".into(),
            deployment: "web".into(),
            uid: "uid-web".into(),
            now: t0(),
            rollout: Rollout::Known {
                current: revision(2, "h2"),
                previous: Some(revision(1, "h1")),
            },
            rollout_started: Some(started),
            started_estimated: false,
            window: Some(Window::closing(
                started,
                started,
                Duration::from_secs(15 * 60),
                WindowWhy::AfterCompletion {
                    completed: started,
                    estimated: false,
                },
            )),
            paused: false,
            known_good: None,
            fully_rolled_out: true,
            progress_deadline_exceeded: false,
            pods: Vec::new(),
            serving_others: Vec::new(),
            pods_seen_at: None,
            previous_since: None,
            warnings: Vec::new(),
            older_target: Some(1),
            kept: None,
        },
        subject: Subject {
            namespace: "production".into(),
            deployment: "web".into(),
            revision: 2,
            pod_template_hash: "h2".into(),
            images: vec!["web:v2".into()],
            rollout_started: started,
            baseline: None,
            pods: Vec::new(),
            progress_deadline_exceeded: false,
            ..Default::default()
        },
        facts: Facts {
            may_act: true,
            ..Facts::default()
        },
    }
}

fn failing(now: Timestamp) -> Vec<SignalResult> {
    let outcome = Outcome::Fail {
        measured: Measurement::ratio(0.302),
        threshold: Threshold::Max {
            limit: Measurement::ratio(0.05),
        },
        baseline: Some(0.001),
        sentence: String::new(),
    };
    // A new sample each tick: evidence counts once.
    vec![SignalResult::new(SignalId::ErrorRate, outcome, now)]
}

fn passing(now: Timestamp) -> Vec<SignalResult> {
    vec![SignalResult::new(SignalId::ErrorRate, Outcome::pass(), now)]
}

/// One tick of the world at `now`, as the run loop calls it.
fn tick(
    w: &mut World,
    memory: &mut RevisionState,
    results: Vec<SignalResult>,
    now: Timestamp,
) -> Decision {
    w.state.now = now;
    memory.for_revision(
        Some((w.subject.revision, w.subject.pod_template_hash.clone())),
        now,
    );
    decide(
        memory,
        &Input {
            target: &w.target,
            state: &w.state,
            subject: &w.subject,
            results: &results,
            facts: &w.facts,
            now,
        },
    )
}

/// Ticks until the verdict is Bad (at most 10), returning that decision.
fn until_bad(w: &mut World, memory: &mut RevisionState, from: u32) -> (u32, Decision) {
    for n in from..from + 10 {
        let d = tick(w, memory, failing(at(n)), at(n));
        if d.judgement.verdict == Verdict::Bad {
            return (n, d);
        }
        assert_eq!(d.action, Action::None, "acted before Bad at tick {n}");
    }
    panic!("never Bad");
}

fn is_rollback(a: &Action) -> bool {
    matches!(a, Action::RollBack(_))
}

#[test]
fn a_bad_revision_of_a_paused_deployment_is_rolled_back_once_it_is_resumed() {
    let mut w = world("");
    w.state.paused = true;
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    assert_eq!(bad.action, Action::None, "no rollback while paused");
    assert!(
        bad.status_reasons
            .iter()
            .any(|r| r.contains("waits until the rollout is resumed")),
        "{:?}",
        bad.status_reasons
    );
    assert_eq!(memory.acted(), None, "the decision is kept");
    let still = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert_eq!(still.action, Action::None);
    w.state.paused = false;
    let resumed = tick(&mut w, &mut memory, failing(at(n + 2)), at(n + 2));
    assert!(is_rollback(&resumed.action), "{:?}", resumed.action);
    let after = tick(&mut w, &mut memory, failing(at(n + 3)), at(n + 3));
    assert_eq!(after.action, Action::None, "once");
}

#[test]
fn a_bad_revision_is_rolled_back_once_and_the_next_revision_is_judged_afresh() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    let Action::RollBack(order) = &bad.action else {
        panic!("{:?}", bad.action)
    };
    assert_eq!(order.judged_hash, "h2");
    assert_eq!(order.signals.len(), 1);
    assert_eq!(
        order.reason.as_deref(),
        bad.status_reasons.first().map(String::as_str)
    );
    assert!(!order.blocklisted_redeploy);
    assert_eq!(memory.acted(), Some(Acted::RolledBack));
    // Still Bad next tick: no second order.
    let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert_eq!(again.judgement.verdict, Verdict::Bad);
    assert_eq!(again.action, Action::None);
    // A new revision starts from scratch.
    w.subject.revision = 3;
    w.subject.pod_template_hash = "h3".into();
    let (_, next) = until_bad(&mut w, &mut memory, n + 2);
    assert!(is_rollback(&next.action), "{:?}", next.action);
}

#[test]
fn detection_is_measured_once_per_revision_from_the_rollout_start() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    let expected = at(n)
        .duration_since(w.subject.rollout_started)
        .as_secs_f64();
    assert_eq!(bad.detection_seconds, Some(expected));
    assert_eq!(memory.detected_at(), Some(at(n)));
    let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert_eq!(again.detection_seconds, None);
}

#[test]
fn a_revision_the_watchdog_restored_escalates_instead_of_rolling_back() {
    let mut w = world("");
    // One of our rollbacks, recorded as this revision's rollout began.
    w.facts.rollbacks = vec![w.subject.rollout_started + jiff::SignedDuration::from_secs(5)];
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    let Action::Escalate { sentence } = &bad.action else {
        panic!("{:?}", bad.action)
    };
    assert!(
        sentence.starts_with("revision 2 was restored by the watchdog's own rollback and is bad too: no second automatic rollback; a person must act ("),
        "{sentence}"
    );
    assert_eq!(memory.acted(), Some(Acted::Escalated));
    let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert_eq!(again.action, Action::None, "escalated once");
}

#[test]
fn the_template_our_rollback_restored_escalates_when_bad_again() {
    let mut w = world("");
    w.facts.rollbacks = vec![w.subject.rollout_started + jiff::SignedDuration::from_secs(5)];
    w.facts.restored = Some(crate::decide::request::Restored {
        revision: 1,
        pod_template_hash: "h2".into(),
        images: vec!["web:v2".into()],
    });
    let mut memory = RevisionState::default();
    let (_, bad) = until_bad(&mut w, &mut memory, 0);
    assert!(
        matches!(&bad.action, Action::Escalate { sentence } if sentence.contains("restored by the watchdog's own rollback")),
        "{:?}",
        bad.action
    );
}

#[test]
fn a_new_template_a_person_deploys_right_after_our_rollback_is_rolled_back() {
    // Our rollback restored revision 1 (h1, web:v1) 20 s before a person
    // deployed web:v2 (found by the soak: it escalated as if restored by
    // us, and the next bad deploy rolled back onto it).
    let mut w = world("");
    w.facts.rollbacks = vec![w.subject.rollout_started - jiff::SignedDuration::from_secs(20)];
    w.facts.restored = Some(crate::decide::request::Restored {
        revision: 1,
        pod_template_hash: "h1".into(),
        images: vec!["web:v1".into()],
    });
    let mut memory = RevisionState::default();
    let (_, bad) = until_bad(&mut w, &mut memory, 0);
    assert!(is_rollback(&bad.action), "{:?}", bad.action);
}

#[test]
fn an_old_rollback_does_not_make_a_new_revision_ours() {
    let mut w = world("");
    w.facts.rollbacks = vec![w.subject.rollout_started - jiff::SignedDuration::from_mins(10)];
    let mut memory = RevisionState::default();
    let (_, bad) = until_bad(&mut w, &mut memory, 0);
    assert!(is_rollback(&bad.action), "{:?}", bad.action);
}

#[test]
fn the_known_good_revision_deployed_again_and_bad_escalates() {
    let mut w = world("");
    // A person's `rollout undo` to the known-good template: same hash,
    // a new revision number.
    w.state.known_good = Some(KnownGood {
        revision: 1,
        pod_template_hash: "h2".into(),
        images: vec!["web:v2".into()],
        at: t0().to_string(),
    });
    let mut memory = RevisionState::default();
    let (_, bad) = until_bad(&mut w, &mut memory, 0);
    let Action::Escalate { sentence } = &bad.action else {
        panic!("{:?}", bad.action)
    };
    assert!(
        sentence.starts_with(
            "revision 2 is the last known-good revision, deployed again, and is bad now"
        ),
        "{sentence}"
    );
}

#[test]
fn a_persons_undo_with_nothing_older_to_go_to_escalates() {
    let undone = |older_target: Option<i64>| {
        let mut w = world("");
        // `rollout undo` to revision 1's template: its ReplicaSet is
        // revision 4 now, and remembers it was 1.
        let mut current = revision(4, "h1");
        current.reused = true;
        current.history = vec![1];
        w.state.rollout = Rollout::Known {
            current,
            previous: Some(revision(3, "h3")),
        };
        w.state.older_target = older_target;
        w.subject.revision = 4;
        w
    };
    let mut w = undone(None);
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    let Action::Escalate { sentence } = &bad.action else {
        panic!("{:?}", bad.action)
    };
    assert!(
        sentence.starts_with(
            "revision 4 brings back the template first deployed as revision 1, and is bad now: every other revision is newer"
        ),
        "{sentence}"
    );
    let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert_eq!(again.action, Action::None, "escalated once");

    // With an older template to go to, it rolls back as usual.
    let mut w = undone(Some(2));
    let mut memory = RevisionState::default();
    let (_, bad) = until_bad(&mut w, &mut memory, 0);
    assert!(is_rollback(&bad.action), "{:?}", bad.action);
}

#[test]
fn a_replica_that_may_not_act_judges_but_spends_no_decision() {
    let mut w = world("");
    w.facts.may_act = false;
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    assert_eq!(bad.action, Action::None);
    assert_eq!(memory.acted(), None);
    // It takes over: the decision is still there to make.
    w.facts.may_act = true;
    let now_leading = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert!(is_rollback(&now_leading.action), "{:?}", now_leading.action);
}

#[test]
fn a_decision_given_back_is_made_again() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let (n, bad) = until_bad(&mut w, &mut memory, 0);
    assert!(is_rollback(&bad.action));
    memory.give_back_decision();
    let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
    assert!(is_rollback(&again.action), "{:?}", again.action);
}

#[test]
fn an_in_flight_rollback_is_resumed_and_a_request_annotation_answered_before_any_verdict() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    w.facts.in_flight = true;
    w.facts.in_flight_to_resume = true;
    w.facts.annotation_request = true;
    let d = tick(&mut w, &mut memory, passing(at(0)), at(0));
    assert_eq!(d.action, Action::Resume);
    w.facts.in_flight_to_resume = false;
    let d = tick(&mut w, &mut memory, failing(at(1)), at(1));
    assert_eq!(d.action, Action::Annotation);
    assert_eq!(memory.acted(), None, "a request spends no verdict");
}

#[test]
fn a_template_rolled_back_before_is_judged_with_threshold_one() {
    let mut w = world("failure_threshold = 3");
    let mut memory = RevisionState::default();
    let first = tick(&mut w, &mut memory, failing(at(0)), at(0));
    assert_ne!(first.judgement.verdict, Verdict::Bad, "threshold 3");

    let mut w = world("failure_threshold = 3");
    let entry = json!([{"podTemplateHash": "h2", "images": ["web:v2"], "revision": 2, "reason": "error ratio", "at": "2026-11-27T09:00:00Z"}]);
    let mut d = (*w.target.deployment).clone();
    d.metadata.annotations = Some(
        [(BLOCKLIST.to_string(), entry.to_string())]
            .into_iter()
            .collect(),
    );
    w.target.deployment = Arc::new(d);
    let mut memory = RevisionState::default();
    let first = tick(&mut w, &mut memory, failing(at(0)), at(0));
    assert_eq!(first.judgement.verdict, Verdict::Bad);
    let Action::RollBack(order) = &first.action else {
        panic!("{:?}", first.action)
    };
    assert!(order.blocklisted_redeploy);
    assert!(
        first.status_reasons.iter().any(|r| r
            == "this template was rolled back before (revision 2): judged with failure_threshold = 1"),
        "{:?}",
        first.status_reasons
    );
}

#[test]
fn a_blocklisted_template_deployed_again_right_after_our_rollback_is_rolled_back_again() {
    // Our rollback of v2 was 20 s ago; a person deploys v2 again (its
    // ReplicaSet reused as revision 4). No rollback restores a
    // blocklisted template, so it is not "restored by us": it goes.
    let mut w = world("");
    let entry = json!([{"podTemplateHash": "h2", "images": ["web:v2"], "revision": 2, "reason": "pods crash", "at": "2026-11-27T09:59:00Z"}]);
    let mut d = (*w.target.deployment).clone();
    d.metadata.annotations = Some([(BLOCKLIST.to_string(), entry.to_string())].into());
    w.target.deployment = Arc::new(d);
    w.subject.revision = 4;
    w.facts.rollbacks = vec![w.subject.rollout_started - jiff::SignedDuration::from_secs(20)];
    let mut memory = RevisionState::default();
    let first = tick(&mut w, &mut memory, failing(at(0)), at(0));
    let Action::RollBack(order) = &first.action else {
        panic!("{:?}", first.action)
    };
    assert!(order.blocklisted_redeploy);
}

#[test]
fn a_pending_tick_keeps_the_revisions_decision_and_a_new_revision_starts_afresh() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let (n, _) = until_bad(&mut w, &mut memory, 0);
    assert_eq!(memory.acted(), Some(Acted::RolledBack));
    // The caches lag a switch for a tick: nothing is judged, nothing
    // forgotten.
    memory.for_revision(None, at(n + 1));
    let again = tick(&mut w, &mut memory, failing(at(n + 2)), at(n + 2));
    assert_eq!(again.action, Action::None, "decided once");
    // The revision the switch made (the same template renumbered by a
    // re-deploy) is new: judged afresh.
    w.subject.revision = 4;
    let (_, next) = until_bad(&mut w, &mut memory, n + 3);
    assert!(is_rollback(&next.action), "{:?}", next.action);
}

#[test]
fn dry_run_and_paused_still_decide_once_the_pipeline_rehearses_or_refuses() {
    // Dry run and pause are the pipeline's to apply (it rehearses or
    // refuses, and says so); the decision is made once either way.
    for config in ["dry_run = true", "paused = true"] {
        let mut w = world(config);
        let mut memory = RevisionState::default();
        let (n, bad) = until_bad(&mut w, &mut memory, 0);
        assert!(is_rollback(&bad.action), "{config}: {:?}", bad.action);
        let again = tick(&mut w, &mut memory, failing(at(n + 1)), at(n + 1));
        assert_eq!(again.action, Action::None, "{config}");
    }
}

#[test]
fn degraded_outside_the_window_is_reported_once_and_nothing_is_rolled_back() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let closed = at(100);
    let mut seen = Vec::new();
    for n in 0..6 {
        let now = closed + TICK * n;
        seen.push(tick(&mut w, &mut memory, failing(now), now).action);
    }
    let reports: Vec<&Action> = seen
        .iter()
        .filter(|a| matches!(a, Action::ReportDegraded { .. }))
        .collect();
    assert_eq!(reports.len(), 1, "{seen:?}");
    assert!(!seen.iter().any(is_rollback), "{seen:?}");
}

/// A window that closed at `closes`; the state is read at `now`.
fn close_window(w: &mut World) -> Timestamp {
    w.state
        .window
        .and_then(|w| w.closes)
        .expect("a window with an end")
        + TICK
}

#[test]
fn known_good_needs_a_healthy_tick_and_no_bad_one_in_the_window() {
    // Healthy during the window: recorded on the first healthy tick after.
    let mut w = world("");
    let mut memory = RevisionState::default();
    assert!(tick(&mut w, &mut memory, passing(at(0)), at(0))
        .known_good
        .is_none());
    let after = close_window(&mut w);
    let d = tick(&mut w, &mut memory, passing(after), after);
    let write = d.known_good.expect("recorded");
    assert_eq!((write.record.revision, write.adopted), (2, false));
    assert_eq!(d.unverified, None);
    memory.known_good_recorded();
    let again = tick(&mut w, &mut memory, passing(after + TICK), after + TICK);
    assert!(again.known_good.is_none(), "recorded once");

    // Bad in the window, healthy after: never known-good.
    let mut w = world("");
    w.facts.may_act = false;
    let mut memory = RevisionState::default();
    until_bad(&mut w, &mut memory, 0);
    for n in 20..24 {
        tick(&mut w, &mut memory, passing(at(n)), at(n));
    }
    assert_eq!(memory.evidence(), Evidence::Failed);
    let after = close_window(&mut w);
    assert!(tick(&mut w, &mut memory, passing(after), after)
        .known_good
        .is_none());
}

#[test]
fn a_window_that_closed_unverified_is_said_once_and_not_recorded() {
    let mut w = world("");
    let mut memory = RevisionState::default();
    let inconclusive = |now| {
        vec![SignalResult::new(
            SignalId::ErrorRate,
            Outcome::inconclusive("no traffic"),
            now,
        )]
    };
    tick(&mut w, &mut memory, inconclusive(at(0)), at(0));
    let after = close_window(&mut w);
    let d = tick(&mut w, &mut memory, inconclusive(after), after);
    assert_eq!(
        d.unverified.as_deref(),
        Some("the observation window of revision 2 closed without one healthy evaluation; it is not recorded as known-good")
    );
    assert!(d.known_good.is_none());
    let again = tick(
        &mut w,
        &mut memory,
        inconclusive(after + TICK),
        after + TICK,
    );
    assert_eq!(again.unverified, None, "said once");
}

#[test]
fn a_revision_already_old_at_start_up_is_adopted_but_never_while_a_rollback_is_in_flight() {
    let mut w = world("");
    let after = close_window(&mut w);
    w.facts.in_flight = true;
    let mut memory = RevisionState::default();
    let d = tick(&mut w, &mut memory, passing(after), after);
    assert!(d.known_good.is_none(), "in flight");
    w.facts.in_flight = false;
    let d = tick(&mut w, &mut memory, passing(after + TICK), after + TICK);
    let write = d.known_good.expect("adopted");
    assert!(write.adopted);
    // Not on a tick that is not Healthy now.
    let mut memory = RevisionState::default();
    let d = tick(&mut w, &mut memory, failing(after), after);
    assert!(d.known_good.is_none());
}

#[test]
fn pod_history_is_kept_for_its_own_revision_only_and_reset_by_a_new_one() {
    let mut w = world("");
    w.subject.pods = vec![std::sync::Arc::new(
        serde_json::from_value(json!({
            "metadata": {"name": "web-h2-a", "namespace": "production"},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .expect("a pod"),
    )];
    let key = (2, "h2".to_owned());
    let mut state = RevisionState::default();
    state.for_revision(Some(key.clone()), t0());
    state.remember_pods(&w.target.policy.pods, &w.subject, t0());
    assert!(state.pod_history(&key).ever_ready.contains("web-h2-a"));
    assert_eq!(state.pod_history(&(1, "h1".into())), PodHistory::default());

    // A subject of another revision is not remembered under this one.
    let mut other = w.subject.clone();
    other.revision = 3;
    other.pod_template_hash = "h3".into();
    state.remember_pods(&w.target.policy.pods, &other, t0());
    assert_eq!(state.pod_history(&(3, "h3".into())), PodHistory::default());

    state.for_revision(Some((3, "h3".into())), t0());
    assert_eq!(state.pod_history(&(3, "h3".into())), PodHistory::default());
}
