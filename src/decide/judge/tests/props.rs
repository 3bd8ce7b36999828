//! Property tests of the judge (issue 15, item 3): random interleavings of
//! signal results, with the promises that must hold for every one of them.
//! `PROPTEST_CASES` raises the number of cases (CI runs the default below).

use proptest::prelude::*;

use super::*;

/// Cases per property unless `PROPTEST_CASES` says otherwise.
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

fn signals() -> [SignalId; 5] {
    [
        SignalId::ErrorRate,
        SignalId::Latency,
        SignalId::Pods,
        api(),
        SignalId::Rule {
            name: "payments".into(),
        },
    ]
}

fn any_say() -> impl Strategy<Value = Say> + Clone {
    use Say::*;
    prop::sample::select(vec![
        Pass,
        Fail,
        Inc,
        AllCrash,
        OneCrash,
        NanFail,
        NoBaselineFail,
        StaleFail,
        Conflict,
        SpanFail,
        SpanPass,
        SpanInc,
    ])
}

/// Every kind of result but a measurement older than the tick before
/// (`StaleFail`): see the monotonicity property below.
fn in_order_say() -> impl Strategy<Value = Say> + Clone {
    use Say::*;
    prop::sample::select(vec![
        Pass,
        Fail,
        Inc,
        AllCrash,
        OneCrash,
        NanFail,
        NoBaselineFail,
        Conflict,
        SpanFail,
        SpanPass,
        SpanInc,
    ])
}

fn quiet_say() -> impl Strategy<Value = Say> + Clone {
    prop::sample::select(vec![Say::Pass, Say::Inc, Say::SpanInc, Say::SpanPass])
}

/// Up to 60 ticks; on each, a random subset of the signals says something.
fn ticks(
    say: impl Strategy<Value = Say> + Clone,
) -> impl Strategy<Value = Vec<Vec<(SignalId, Say)>>> {
    let tick = prop::collection::vec((0..signals().len(), say), 0..=5).prop_map(|picks| {
        picks
            .into_iter()
            .map(|(i, s)| (signals()[i].clone(), s))
            .collect::<Vec<_>>()
    });
    prop::collection::vec(tick, 1..60)
}

fn any_policy() -> impl Strategy<Value = JudgePolicy> {
    (1u32..6, any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(threshold, crash_at_once, in_window, outside)| JudgePolicy {
            failure_threshold: threshold,
            immediate_bad_when_all_pods_crash: crash_at_once,
            in_window,
            rollback_outside_window: outside,
            ..JudgePolicy::default()
        },
    )
}

fn is_failure(say: Say) -> bool {
    !matches!(say, Say::Pass | Say::Inc | Say::SpanInc | Say::SpanPass)
}

proptest! {
    #![proptest_config(config())]

    /// Passes and Inconclusives alone, in any order and any number, never
    /// make Bad (nor Suspect or Degraded).
    #[test]
    fn inconclusive_never_produces_bad(policy in any_policy(), ticks in ticks(quiet_say())) {
        for (i, j) in run(&policy, &ticks).iter().enumerate() {
            prop_assert!(
                !j.verdict.may_roll_back() && j.verdict != Verdict::Degraded,
                "tick {i}: {:?} from {:?}", j.verdict, ticks[i]
            );
        }
    }

    /// A tick whose own results hold no failure never turns a revision Bad,
    /// whatever came before; Bad only ever comes inside a window or with
    /// `rollback_outside_window`; and an Inconclusive tick after a Bad one is
    /// never Bad by itself.
    #[test]
    fn bad_needs_a_failure_on_the_tick_and_a_window(policy in any_policy(), ticks in ticks(any_say())) {
        let judged = run(&policy, &ticks);
        for (i, j) in judged.iter().enumerate() {
            if j.verdict != Verdict::Bad {
                continue;
            }
            prop_assert!(
                ticks[i].iter().any(|(_, s)| is_failure(*s)),
                "tick {i} is Bad with no failure on it: {:?}", ticks[i]
            );
            prop_assert!(
                policy.in_window || policy.rollback_outside_window,
                "tick {i} is Bad outside the window without the opt-in"
            );
        }
    }

    /// Turning any failure into an Inconclusive never brings a Bad verdict
    /// earlier: missing data is never evidence. Measurements arrive in
    /// order here: a sample older than one already counted is not new
    /// evidence, but once that newer one is replaced by an Inconclusive the
    /// older sample is the first seen, and rightly counts from its own time
    /// (a case the long run found, Fail at t1 blinded, a t0 sample at t2).
    #[test]
    fn inconclusive_instead_of_a_failure_never_makes_bad_sooner(
        policy in any_policy(),
        ticks in ticks(in_order_say()),
        mask in prop::collection::vec(any::<bool>(), 60 * 5),
    ) {
        let mut k = 0;
        let blinded: Vec<Vec<(SignalId, Say)>> = ticks
            .iter()
            .map(|t| {
                t.iter()
                    .map(|(s, say)| {
                        k += 1;
                        if is_failure(*say) && mask[k % mask.len()] {
                            (s.clone(), Say::Inc)
                        } else {
                            (s.clone(), *say)
                        }
                    })
                    .collect()
            })
            .collect();
        let first_bad = |js: &[Judgement]| js.iter().position(|j| j.verdict == Verdict::Bad);
        if let Some(blind) = first_bad(&run(&policy, &blinded)) {
            let seen = first_bad(&run(&policy, &ticks));
            prop_assert!(
                seen.is_some_and(|s| s <= blind),
                "Bad at tick {blind} with Inconclusives, at {seen:?} with the failures they replaced"
            );
        }
    }
}
