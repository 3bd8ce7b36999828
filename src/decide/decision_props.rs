//! Property tests of target and window tracking as the run loop sees it
//! (issue 15, item 3): random interleavings of signal results, deploys,
//! the watchdog's own rollbacks and the passing of time, fed to
//! [`decide`] tick by tick. `PROPTEST_CASES` raises the number of cases.

use std::sync::Arc;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::apps::v1::Deployment;
use proptest::prelude::*;
use serde_json::json;

use crate::config::Loader;
use crate::decide::decision::{decide, Action, Facts, Input, RevisionState};
use crate::decide::request::Restored;
use crate::observe::revision::{Revision, Rollout, TargetState, Window, WindowWhy};
use crate::observe::targets::{Source, WatchedDeployment};
use crate::signals::{Measurement, Outcome, SignalId, SignalResult, Subject, Threshold};

const CASES: u32 = 512;
const TICK: Duration = Duration::from_secs(15);
const WINDOW: Duration = Duration::from_secs(15 * 60);

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(CASES),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

#[derive(Debug, Clone, Copy)]
enum Step {
    /// One evaluation tick 15 s later: the error ratio says this.
    Tick(Say),
    /// Time passes with no evaluation (a leader change, a long outage).
    Jump { minutes: u32 },
    /// A person deploys a new revision.
    Deploy,
    /// The watchdog's own rollback lands: a new revision it restored.
    OwnRollback,
}

#[derive(Debug, Clone, Copy)]
enum Say {
    Pass,
    Fail,
    Inc,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop::sample::select(vec![Say::Pass, Say::Fail, Say::Fail, Say::Inc]).prop_map(Step::Tick),
        1 => (1u32..30).prop_map(|minutes| Step::Jump { minutes }),
        1 => Just(Step::Deploy),
        1 => Just(Step::OwnRollback),
    ]
}

fn results(say: Say, now: Timestamp) -> Vec<SignalResult> {
    let outcome = match say {
        Say::Pass => Outcome::pass(),
        Say::Inc => Outcome::inconclusive("Prometheus unreachable"),
        Say::Fail => Outcome::Fail {
            measured: Measurement::ratio(0.302),
            threshold: Threshold::Max {
                limit: Measurement::ratio(0.05),
            },
            baseline: Some(0.001),
            sentence: String::new(),
        },
    };
    vec![SignalResult::new(SignalId::ErrorRate, outcome, now)]
}

fn revision(number: i64) -> Revision {
    Revision {
        number,
        pod_template_hash: format!("h{number}"),
        replica_set: format!("web-h{number}"),
        replica_set_uid: format!("uid-h{number}"),
        images: vec![format!("web:v{number}")],
        created: None,
        reused: false,
        history: Vec::new(),
    }
}

fn target(outside: bool) -> WatchedDeployment {
    let toml = format!(
        "[defaults]\nwatch_window = \"15m\"\nrollback_outside_window = {outside}\n\
         [[targets]]\nnamespace = \"production\"\nname = \"web\"\n"
    );
    let policy = Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .map(|l| l.config.targets[0].policy.clone());
    let deployment: Result<Deployment, _> = serde_json::from_value(
        json!({"metadata": {"name": "web", "namespace": "production", "uid": "uid-web"}}),
    );
    WatchedDeployment {
        namespace: "production".into(),
        name: "web".into(),
        source: Source::Config { index: 0 },
        policy: policy.unwrap_or_else(|e| panic!("test config: {e}")),
        deployment: Arc::new(deployment.unwrap_or_else(|e| panic!("test Deployment: {e}"))),
    }
}

fn state(number: i64, started: Timestamp, now: Timestamp) -> TargetState {
    TargetState {
        namespace: "production".into(),
        deployment: "web".into(),
        uid: "uid-web".into(),
        now,
        rollout: Rollout::Known {
            current: revision(number),
            previous: Some(revision(number - 1)),
        },
        rollout_started: Some(started),
        started_estimated: false,
        window: Some(Window::closing(
            started,
            started,
            WINDOW,
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
        older_target: Some(number - 1),
        kept: None,
    }
}

fn subject(number: i64, started: Timestamp) -> Subject {
    Subject {
        namespace: "production".into(),
        deployment: "web".into(),
        revision: number,
        pod_template_hash: format!("h{number}"),
        images: vec![format!("web:v{number}")],
        rollout_started: started,
        ..Default::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Over any interleaving: a rollback is ordered only inside the window
    /// (unless the target opts in), only on a tick with a failure, at most
    /// once per revision, and never on a revision the watchdog restored:
    /// whether or not the rollback left its restored record (an older
    /// watchdog's did not), and whatever deploys came before it.
    #[test]
    fn rollbacks_only_in_windows_once_and_never_of_our_own(
        outside in any::<bool>(),
        records_restored in any::<bool>(),
        steps in prop::collection::vec(step(), 1..120),
    ) {
        let target = target(outside);
        let mut now: Timestamp = "2026-11-27T10:00:00Z".parse().map_err(|e| TestCaseError::fail(format!("{e}")))?;
        let mut number = 2;
        let mut started = now;
        let mut ours = false;
        let mut facts = Facts { may_act: true, interval: TICK, ..Facts::default() };
        let mut memory = RevisionState::default();
        let mut rolled_back = false;
        for (i, s) in steps.iter().enumerate() {
            let say = match *s {
                Step::Tick(say) => say,
                Step::Jump { minutes } => {
                    now += SignedDuration::from_secs(i64::from(minutes) * 60);
                    continue;
                }
                Step::Deploy | Step::OwnRollback => {
                    number += 1;
                    started = now;
                    ours = matches!(s, Step::OwnRollback);
                    if ours {
                        facts.rollbacks.push(now);
                        if records_restored {
                            facts.restored = Some(Restored {
                                revision: number,
                                pod_template_hash: format!("h{number}"),
                                images: vec![format!("web:v{number}")],
                            });
                        }
                    }
                    rolled_back = false;
                    continue;
                }
            };
            now += TICK;
            let state = state(number, started, now);
            let subject = subject(number, started);
            memory.for_revision(Some((number, subject.pod_template_hash.clone())), now);
            let results = results(say, now);
            let d = decide(&mut memory, &Input {
                target: &target,
                state: &state,
                subject: &subject,
                results: &results,
                facts: &facts,
                now,
            });
            if let Action::RollBack(_) = d.action {
                prop_assert!(state.in_window() || outside, "step {i}: a rollback outside the window");
                prop_assert!(matches!(say, Say::Fail), "step {i}: a rollback on a tick that said {say:?}");
                prop_assert!(!rolled_back, "step {i}: a second rollback of revision {number}");
                prop_assert!(!ours, "step {i}: the watchdog's own rollback (revision {number}) judged for another rollback");
                rolled_back = true;
            }
        }
    }
}
