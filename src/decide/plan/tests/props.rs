//! Property tests of the choice of target and of the rollback budget
//! (issue 15, item 3): random histories, blocklists and past rollbacks.
//! `PROPTEST_CASES` raises the number of cases.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::observe::blocklist;

const CASES: u32 = 512;

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

/// Revisions 1..=n, each with an image from a small set (so templates
/// share images), the last one current; some revisions blocklisted; some
/// past rollbacks; a budget; a target asked for.
#[derive(Debug, Clone)]
struct History {
    images: Vec<u8>,
    blocklisted: Vec<bool>,
    /// Minutes before NOW of each past rollback.
    rollbacks: Vec<u32>,
    max_rollbacks: u32,
    budget_minutes: u32,
    cooldown_minutes: u32,
    asked: Option<i64>,
}

fn history() -> impl Strategy<Value = History> {
    (2usize..7).prop_flat_map(|n| {
        (
            prop::collection::vec(0u8..4, n),
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(0u32..300, 0..5),
            1u32..4,
            1u32..240,
            0u32..60,
            prop::option::of(0i64..9),
        )
            .prop_map(
                |(
                    images,
                    blocklisted,
                    rollbacks,
                    max_rollbacks,
                    budget_minutes,
                    cooldown_minutes,
                    asked,
                )| {
                    History {
                        images,
                        blocklisted,
                        rollbacks,
                        max_rollbacks,
                        budget_minutes,
                        cooldown_minutes,
                        asked,
                    }
                },
            )
    })
}

fn case_of(h: &History) -> Case {
    let n = h.images.len();
    let image = |i: usize| format!("web:v{}", h.images[i]);
    let hash = |i: usize| format!("h{}", i + 1);
    let mut case = Case::to(match h.asked {
        Some(r) => Target::Revision(r),
        None => Target::Previous,
    });
    case.d = deployment(&image(n - 1));
    case.replicasets = (0..n)
        .map(|i| Arc::new(replicaset(i as i64 + 1, &hash(i), &image(i))))
        .collect();
    let entries: Vec<Value> = (0..n)
        .filter(|i| h.blocklisted[*i])
        .map(|i| {
            json!({"podTemplateHash": hash(i), "images": [image(i)], "revision": i + 1,
                   "reason": "5xx", "at": "2026-11-27T08:30:00Z"})
        })
        .collect();
    let now = ts(NOW);
    let times: Vec<String> = h
        .rollbacks
        .iter()
        .map(|m| (now - jiff::SignedDuration::from_secs(i64::from(*m) * 60)).to_string())
        .collect();
    case.policy.max_rollbacks_per_window = h.max_rollbacks;
    case.policy.rollback_budget_window = Duration::from_secs(u64::from(h.budget_minutes) * 60);
    case.policy.cooldown = Duration::from_secs(u64::from(h.cooldown_minutes) * 60);
    let mut case = case.annotated(BLOCKLIST, &serde_json::to_string(&entries).expect("json"));
    if !times.is_empty() {
        case = case.annotated(ROLLBACKS, &serde_json::to_string(&times).expect("json"));
    }
    case
}

proptest! {
    #![proptest_config(config())]

    /// Whatever is asked, a planned rollback never restores a blocklisted
    /// template nor the current one, and never exceeds the budget.
    #[test]
    fn a_blocklisted_template_is_never_a_target_and_the_budget_holds(h in history()) {
        let case = case_of(&h);
        let Ok(plan) = case.plan() else {
            return Ok(());
        };
        prop_assert!(
            blocklist::is_blocklisted(&case.d, &plan.to.pod_template_hash, &plan.to.images).is_none(),
            "blocklisted target {:?} chosen in {h:?}", plan.to
        );
        let current = format!("h{}", h.images.len());
        prop_assert_ne!(&plan.to.pod_template_hash, &current, "the current template chosen: {:?}", h);
        let minutes = |m: &u32| *m;
        let recent = h.rollbacks.iter().map(minutes).filter(|m| *m < h.budget_minutes).count();
        prop_assert!(
            recent < h.max_rollbacks as usize,
            "{recent} rollbacks in the last {} min, max {}, and another planned", h.budget_minutes, h.max_rollbacks
        );
        prop_assert!(
            h.rollbacks.iter().all(|m| *m >= h.cooldown_minutes),
            "a rollback inside the cooldown: {h:?}"
        );
    }
}
