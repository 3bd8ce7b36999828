use super::*;
use crate::signals::PodsFinding;

const TICK: Duration = Duration::from_secs(15);

/// What one signal says on one tick of a scenario.
#[derive(Clone, Copy, Debug)]
enum Say {
    Pass,
    /// The signal's typical failure (see `fail_of`).
    Fail,
    /// Prometheus down, too little traffic...
    Inc,
    /// Pods: every pod crashing.
    AllCrash,
    /// Pods: one of three crashing.
    OneCrash,
    /// A Fail whose measured value is NaN (a signal bug).
    NanFail,
    /// A ratio-to-baseline Fail without a baseline.
    NoBaselineFail,
    /// Fail, but the same measurement as the first tick's.
    StaleFail,
    /// Two results in one tick: a Pass and a Fail.
    Conflict,
    /// Fail over the requests since the previous tick (a rate).
    SpanFail,
    /// Pass over the requests since the previous tick.
    SpanPass,
    /// Too few new samples in the span since the last counted tick.
    SpanInc,
}

fn t0() -> Timestamp {
    "2026-11-27T10:00:00Z".parse().unwrap()
}

fn at(tick: usize) -> Timestamp {
    t0() + TICK * u32::try_from(tick).unwrap()
}

fn fail_of(signal: &SignalId) -> Outcome {
    let (measured, threshold, baseline) = match signal {
        SignalId::ErrorRate => (
            Measurement::ratio(0.302),
            Threshold::Max {
                limit: Measurement::ratio(0.05),
            },
            Some(0.001),
        ),
        SignalId::Latency => (
            Measurement::seconds(0.64),
            Threshold::RatioToBaseline {
                max_ratio: 1.5,
                floor: Some(Measurement::seconds(0.05)),
            },
            Some(0.4),
        ),
        SignalId::Health { .. } => (
            Measurement::http_status(503),
            Threshold::Expected {
                what: "HTTP 200".into(),
            },
            None,
        ),
        SignalId::Pods => (
            Measurement::count(3.0, "crashing pod", "crashing pods"),
            Threshold::Expected {
                what: "no pod in a crash state".into(),
            },
            None,
        ),
        SignalId::Rule { .. } => (
            Measurement::number(4.0),
            Threshold::FailsWhen {
                op: ">".into(),
                limit: Measurement::number(0.0),
            },
            None,
        ),
    };
    Outcome::Fail {
        measured,
        threshold,
        baseline,
        sentence: String::new(),
    }
}

fn results_of(signal: &SignalId, say: Say, tick: usize) -> Vec<SignalResult> {
    let now = at(tick);
    let one = |outcome| vec![SignalResult::new(signal.clone(), outcome, now)];
    let crash = |crashing| {
        vec![
            SignalResult::new(signal.clone(), fail_of(signal), now).with_pods(PodsFinding {
                pods: 3,
                crashing,
                reasons: vec!["CrashLoopBackOff".into()],
            }),
        ]
    };
    match say {
        Say::Pass => one(Outcome::pass()),
        Say::Fail => one(fail_of(signal)),
        Say::Inc => one(Outcome::inconclusive("Prometheus unreachable")),
        Say::AllCrash => crash(3),
        Say::OneCrash => crash(1),
        Say::NanFail => one(Outcome::Fail {
            measured: Measurement::ratio(f64::NAN),
            threshold: Threshold::Max {
                limit: Measurement::ratio(0.05),
            },
            baseline: None,
            sentence: String::new(),
        }),
        Say::NoBaselineFail => one(Outcome::Fail {
            measured: Measurement::seconds(0.64),
            threshold: Threshold::RatioToBaseline {
                max_ratio: 1.5,
                floor: None,
            },
            baseline: None,
            sentence: String::new(),
        }),
        Say::StaleFail => vec![SignalResult::new(signal.clone(), fail_of(signal), at(0))],
        Say::Conflict => vec![
            SignalResult::new(signal.clone(), Outcome::pass(), now),
            SignalResult::new(signal.clone(), fail_of(signal), now),
        ],
        Say::SpanFail => {
            vec![SignalResult::new(signal.clone(), fail_of(signal), now).over_span(now - TICK)]
        }
        Say::SpanInc => {
            vec![
                SignalResult::new(signal.clone(), Outcome::inconclusive("no new samples"), now)
                    .over_span(now - TICK),
            ]
        }
        Say::SpanPass => {
            vec![SignalResult::new(signal.clone(), Outcome::pass(), now).over_span(now - TICK)]
        }
    }
}

/// Runs ticks from an empty state; tick `i` is at `t0 + 15 s × i`.
fn run(policy: &JudgePolicy, ticks: &[Vec<(SignalId, Say)>]) -> Vec<Judgement> {
    let mut state = JudgeState::default();
    let mut out = Vec::new();
    for (i, tick) in ticks.iter().enumerate() {
        let results: Vec<SignalResult> = tick
            .iter()
            .flat_map(|(signal, say)| results_of(signal, *say, i))
            .collect();
        let j = judge(policy, &state, &results, at(i));
        state = j.state.clone();
        out.push(j);
    }
    out
}

fn letters(js: &[Judgement]) -> String {
    js.iter()
        .map(|j| match j.verdict {
            Verdict::Healthy => 'H',
            Verdict::Inconclusive => 'I',
            Verdict::Suspect => 'S',
            Verdict::Bad => 'B',
            Verdict::Degraded => 'D',
        })
        .collect()
}

/// `n` ticks where every listed signal says the same.
fn steady(n: usize, says: &[(SignalId, Say)]) -> Vec<Vec<(SignalId, Say)>> {
    vec![says.to_vec(); n]
}

/// One signal saying a sequence.
fn seq(signal: SignalId, says: &[Say]) -> Vec<Vec<(SignalId, Say)>> {
    says.iter().map(|s| vec![(signal.clone(), *s)]).collect()
}

fn api() -> SignalId {
    SignalId::health("api")
}

fn per_pod() -> SignalId {
    SignalId::health(SignalId::PER_POD)
}

struct Row {
    name: &'static str,
    policy: JudgePolicy,
    ticks: Vec<Vec<(SignalId, Say)>>,
    /// One letter per tick: Healthy, Inconclusive, Suspect, Bad, Degraded.
    verdicts: String,
    /// Ticks that carry a blind report.
    blind_at: Vec<usize>,
}

fn rows() -> Vec<Row> {
    use Say::*;
    use SignalId::{ErrorRate, Latency, Pods};
    let p = JudgePolicy::default;
    let prometheus_down = [(ErrorRate, Inc), (Latency, Inc), (Pods, Pass)];
    let mut flapping = Vec::new();
    for _ in 0..34 {
        flapping.extend([Fail, Pass, Pass]);
    }
    flapping.truncate(100);
    let mut outage_then_fail = vec![Fail, Fail];
    // 21 inconclusive ticks: the 21st is 5 min after the first.
    outage_then_fail.extend([Inc; 21]);
    outage_then_fail.push(Fail);
    let mut short_gap_then_fail = vec![Fail, Fail];
    short_gap_then_fail.extend([Inc; 20]);
    short_gap_then_fail.push(Fail);
    vec![
        Row {
            name: "error ratio failing 3 ticks is Bad",
            policy: p(),
            ticks: seq(ErrorRate, &[Fail, Fail, Fail]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "a rate failing over 5 consecutive spans is Bad: the first and latest may hold only a burst's ends",
            policy: p(),
            ticks: seq(ErrorRate, &[SpanFail, SpanFail, SpanFail, SpanFail, SpanFail]),
            verdicts: "SSSSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "a burst shorter than 3 ticks touches at most 4 spans and is never Bad",
            policy: p(),
            ticks: seq(ErrorRate, &[SpanPass, SpanFail, SpanFail, SpanFail, SpanFail, SpanPass, SpanPass]),
            verdicts: "HSSSSHH".into(),
            blind_at: vec![],
        },
        Row {
            name: "a pass between failing spans starts the persistence over",
            policy: p(),
            ticks: seq(ErrorRate, &[SpanFail, SpanFail, SpanPass, SpanFail, SpanFail, SpanFail, SpanFail, SpanFail]),
            verdicts: "SSHSSSSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "a rate whose next span is still filling after a pass stays Healthy",
            policy: p(),
            ticks: vec![
                vec![(ErrorRate, SpanInc), (Pods, Pass)],
                vec![(ErrorRate, SpanPass), (Pods, Pass)],
                vec![(ErrorRate, SpanInc), (Pods, Pass)],
                vec![(ErrorRate, SpanPass), (Pods, Pass)],
            ],
            verdicts: "IHHH".into(),
            blind_at: vec![],
        },
        Row {
            name: "a span still filling for blind_alert_after is no longer a pass",
            policy: p(),
            ticks: {
                let mut t = vec![vec![(ErrorRate, SpanPass)]];
                t.extend(vec![vec![(ErrorRate, SpanInc)]; 21]);
                t
            },
            verdicts: format!("H{}{}", "H".repeat(19), "II"),
            blind_at: vec![21],
        },
        Row {
            name: "error ratio failing twice then passing resets the counter",
            policy: p(),
            ticks: seq(ErrorRate, &[Fail, Fail, Pass, Fail, Fail, Pass]),
            verdicts: "SSHSSH".into(),
            blind_at: vec![],
        },
        Row {
            name: "latency 1.6x the baseline for 3 ticks is Bad",
            policy: p(),
            ticks: seq(Latency, &[Fail, Fail, Fail]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "latency passing the whole window is never Bad",
            policy: p(),
            ticks: steady(60, &[(Latency, Pass), (ErrorRate, Pass), (Pods, Pass)]),
            verdicts: "H".repeat(60),
            blind_at: vec![],
        },
        Row {
            name: "every pod crashing is Bad at once when configured",
            policy: JudgePolicy {
                immediate_bad_when_all_pods_crash: true,
                ..p()
            },
            ticks: seq(Pods, &[AllCrash]),
            verdicts: "B".into(),
            blind_at: vec![],
        },
        Row {
            name: "every pod crashing waits for the threshold when not configured",
            policy: p(),
            ticks: seq(Pods, &[AllCrash, AllCrash, AllCrash]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "one pod of three crashing is not immediate even when configured",
            policy: JudgePolicy {
                immediate_bad_when_all_pods_crash: true,
                ..p()
            },
            ticks: seq(Pods, &[OneCrash, OneCrash, OneCrash]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "crash-looping pods are Bad with Prometheus stopped",
            policy: p(),
            ticks: steady(3, &[(ErrorRate, Inc), (Latency, Inc), (Pods, AllCrash)]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "Prometheus down the whole window is never Bad and blind once",
            policy: p(),
            // 15 min of ticks; blind 5 min after the first inconclusive tick.
            ticks: steady(60, &prometheus_down),
            verdicts: "I".repeat(60),
            blind_at: vec![20],
        },
        Row {
            name: "a second outage after recovery is a second blind episode",
            policy: p(),
            ticks: [
                steady(25, &prometheus_down),
                steady(2, &[(ErrorRate, Pass), (Latency, Pass), (Pods, Pass)]),
                steady(25, &prometheus_down),
            ]
            .concat(),
            verdicts: ["I".repeat(25), "HH".into(), "I".repeat(25)].concat(),
            blind_at: vec![20, 47],
        },
        Row {
            name: "one signal recovering while another stays blind keeps the episode",
            policy: p(),
            ticks: [
                steady(25, &[(ErrorRate, Inc), (Latency, Inc)]),
                steady(10, &[(ErrorRate, Pass), (Latency, Inc)]),
            ]
            .concat(),
            verdicts: "I".repeat(35),
            blind_at: vec![20],
        },
        Row {
            name: "every signal inconclusive is blind too",
            policy: p(),
            ticks: steady(30, &[(ErrorRate, Inc), (Latency, Inc), (Pods, Inc)]),
            verdicts: "I".repeat(30),
            blind_at: vec![20],
        },
        Row {
            name: "no results at all is inconclusive, never Healthy",
            policy: p(),
            ticks: vec![vec![]; 3],
            verdicts: "III".into(),
            blind_at: vec![],
        },
        Row {
            name: "traffic below min_request_rate is inconclusive, not Bad",
            policy: p(),
            ticks: steady(10, &[(ErrorRate, Inc), (Pods, Pass), (api(), Pass)]),
            verdicts: "I".repeat(10),
            blind_at: vec![],
        },
        Row {
            name: "flapping one failing tick in three is never Bad over 100 ticks",
            policy: p(),
            ticks: seq(ErrorRate, &flapping),
            verdicts: "SHH".repeat(34)[..100].to_owned(),
            blind_at: vec![],
        },
        Row {
            name: "per-pod health failing is Bad; the service URL keeps its own counter",
            policy: p(),
            ticks: vec![
                vec![(per_pod(), Fail), (api(), Fail)],
                vec![(per_pod(), Fail), (api(), Pass)],
                vec![(per_pod(), Fail), (api(), Fail)],
            ],
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "a failing service URL alone follows its own threshold",
            policy: JudgePolicy {
                thresholds: BTreeMap::from([(api(), 5)]),
                ..p()
            },
            ticks: steady(5, &[(api(), Fail), (per_pod(), Pass)]),
            verdicts: "SSSSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "Bad outside the window is Degraded without rollback_outside_window",
            policy: JudgePolicy {
                in_window: false,
                ..p()
            },
            ticks: seq(ErrorRate, &[Fail, Fail, Fail, Fail]),
            verdicts: "SSDD".into(),
            blind_at: vec![],
        },
        Row {
            name: "Bad outside the window is Bad with rollback_outside_window",
            policy: JudgePolicy {
                in_window: false,
                rollback_outside_window: true,
                ..p()
            },
            ticks: seq(ErrorRate, &[Fail, Fail, Fail]),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "one signal failing among inconclusive ones is Bad from its own ticks",
            policy: p(),
            ticks: steady(
                3,
                &[
                    (ErrorRate, Fail),
                    (Latency, Inc),
                    (SignalId::rule("payment"), Inc),
                ],
            ),
            verdicts: "SSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "inconclusive ticks between failures hold the counter, never add",
            policy: p(),
            ticks: seq(ErrorRate, &[Fail, Inc, Inc, Fail, Inc, Fail]),
            verdicts: "SSSSSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "inconclusive alone never reaches Bad however long",
            policy: p(),
            ticks: seq(ErrorRate, &[Fail, Fail, Inc, Inc, Inc, Inc, Inc]),
            verdicts: "SSSSSSS".into(),
            blind_at: vec![],
        },
        Row {
            name: "a streak held across a blind spell is dropped",
            policy: p(),
            ticks: seq(ErrorRate, &outage_then_fail),
            // Held (S) until the 5-minute mark drops it, then one fresh failing tick.
            verdicts: ["SS".into(), "S".repeat(20), "I".into(), "S".into()].concat(),
            blind_at: vec![22],
        },
        Row {
            name: "a streak held through a gap shorter than blind_alert_after still chains",
            policy: p(),
            ticks: seq(ErrorRate, &short_gap_then_fail),
            verdicts: ["SS".into(), "S".repeat(20), "B".into()].concat(),
            blind_at: vec![],
        },
        Row {
            name: "a NaN Fail is inconclusive, not evidence",
            policy: p(),
            ticks: seq(ErrorRate, &[NanFail; 5]),
            verdicts: "IIIII".into(),
            blind_at: vec![],
        },
        Row {
            name: "a ratio-to-baseline Fail without a baseline is inconclusive",
            policy: p(),
            ticks: seq(Latency, &[NoBaselineFail; 5]),
            verdicts: "IIIII".into(),
            blind_at: vec![],
        },
        Row {
            name: "the same measurement fed again is one tick of evidence",
            policy: p(),
            ticks: seq(ErrorRate, &[Fail, StaleFail, StaleFail, StaleFail]),
            verdicts: "SSSS".into(),
            blind_at: vec![],
        },
        Row {
            name: "a Pass and a Fail of one signal in one tick are inconclusive",
            policy: p(),
            ticks: seq(ErrorRate, &[Conflict, Conflict, Conflict]),
            verdicts: "III".into(),
            blind_at: vec![],
        },
        Row {
            name: "a signal missing from a tick holds its counter",
            policy: p(),
            ticks: vec![
                vec![(ErrorRate, Fail), (Pods, Pass)],
                vec![(ErrorRate, Fail), (Pods, Pass)],
                vec![(Pods, Pass)],
                vec![(ErrorRate, Fail), (Pods, Pass)],
            ],
            verdicts: "SSSB".into(),
            blind_at: vec![],
        },
        Row {
            name: "a zero failure_threshold still needs a failing tick",
            policy: JudgePolicy {
                failure_threshold: 0,
                ..p()
            },
            ticks: seq(ErrorRate, &[Pass, Inc, Fail]),
            verdicts: "HIB".into(),
            blind_at: vec![],
        },
    ]
}

#[test]
fn verdicts_follow_the_runbook_tick_by_tick() {
    for row in rows() {
        assert_eq!(row.ticks.len(), row.verdicts.len(), "{}: table", row.name);
        let js = run(&row.policy, &row.ticks);
        assert_eq!(letters(&js), row.verdicts, "{}", row.name);
        let blind: Vec<usize> = js
            .iter()
            .enumerate()
            .filter(|(_, j)| j.blind_report.is_some())
            .map(|(i, _)| i)
            .collect();
        assert_eq!(blind, row.blind_at, "{}: blind reports", row.name);
        for (i, j) in js.iter().enumerate() {
            assert_eq!(
                j.verdict.may_roll_back(),
                j.verdict == Verdict::Bad,
                "{}: tick {i}",
                row.name
            );
            if j.verdict == Verdict::Bad || j.verdict == Verdict::Degraded {
                assert!(
                    j.reasons.first().is_some_and(Reason::is_decisive),
                    "{}: tick {i} has no decisive reason: {:?}",
                    row.name,
                    j.reasons
                );
            }
        }
    }
}

fn sentences(j: &Judgement) -> Vec<String> {
    j.reasons.iter().map(|r| r.sentence.clone()).collect()
}

#[test]
fn a_bad_error_ratio_is_explained_with_value_threshold_baseline_and_ticks() {
    let js = run(
        &JudgePolicy::default(),
        &seq(SignalId::ErrorRate, &[Say::Fail; 3]),
    );
    let bad = &js[2];
    assert_eq!(
        sentences(bad),
        ["error ratio 30.2 % > max 5.0 % (baseline 0.1 %) on 3 consecutive ticks (rollback at 3)"]
    );
    let Finding::Failing {
        failing_ticks,
        needed_ticks,
        baseline,
        ..
    } = &bad.reasons[0].finding
    else {
        panic!("not a failing finding: {:?}", bad.reasons[0]);
    };
    assert_eq!(
        (*failing_ticks, *needed_ticks, *baseline),
        (3, 3, Some(0.001))
    );
    assert_eq!(
        sentences(&js[0]),
        ["error ratio 30.2 % > max 5.0 % (baseline 0.1 %) on 1 consecutive tick, 3 needed for Bad"]
    );
}

#[test]
fn a_slow_release_shows_the_baseline_it_is_compared_with() {
    let js = run(
        &JudgePolicy::default(),
        &seq(SignalId::Latency, &[Say::Fail; 3]),
    );
    assert_eq!(
        sentences(&js[2]),
        ["latency 640 ms > 1.5× baseline 400 ms (1.60×, floor 50 ms) on 3 consecutive ticks (rollback at 3)"]
    );
}

#[test]
fn an_immediate_crash_says_every_pod_crashes() {
    let policy = JudgePolicy {
        immediate_bad_when_all_pods_crash: true,
        ..JudgePolicy::default()
    };
    let js = run(&policy, &seq(SignalId::Pods, &[Say::AllCrash]));
    assert_eq!(
        sentences(&js[0]),
        ["pods 3 crashing pods, expected no pod in a crash state: all 3 pods of the revision are crashing, Bad at once (immediate_bad_when_all_pods_crash)"]
    );
}

#[test]
fn held_and_skipped_ticks_are_said_out_loud() {
    let js = run(
        &JudgePolicy::default(),
        &seq(
            SignalId::ErrorRate,
            &[Say::Fail, Say::Inc, Say::Fail, Say::Fail],
        ),
    );
    assert_eq!(
        sentences(&js[1]),
        ["error ratio failed 1 of 3 consecutive ticks needed; no data this tick (Prometheus unreachable), counter held"]
    );
    assert_eq!(
        sentences(&js[3]),
        ["error ratio 30.2 % > max 5.0 % (baseline 0.1 %) on 3 consecutive ticks (rollback at 3); 1 inconclusive tick was in between and not counted"]
    );
}

#[test]
fn the_blind_report_names_each_blind_signal_and_how_long() {
    let ticks = steady(
        21,
        &[
            (SignalId::ErrorRate, Say::Inc),
            (SignalId::Latency, Say::Inc),
            (SignalId::Pods, Say::Pass),
        ],
    );
    let js = run(&JudgePolicy::default(), &ticks);
    let report = js[20].blind_report.as_ref().expect("blind at 5 min");
    assert_eq!(report.since, t0());
    assert_eq!(
        report.sentence,
        "watchdog is blind: no conclusive result from error ratio for 5m (Prometheus unreachable); latency for 5m (Prometheus unreachable). Missing data is never evidence of a bad release: these signals cannot trigger a rollback until they report again."
    );
    assert_eq!(
        sentences(&js[20]),
        [
            "error ratio inconclusive since 2026-11-27T10:00:00Z: Prometheus unreachable",
            "latency inconclusive since 2026-11-27T10:00:00Z: Prometheus unreachable",
        ]
    );
}

#[test]
fn the_service_url_counter_is_its_own_while_per_pod_turns_bad() {
    let js = run(
        &JudgePolicy::default(),
        &[
            vec![(per_pod(), Say::Fail), (api(), Say::Fail)],
            vec![(per_pod(), Say::Fail), (api(), Say::Pass)],
            vec![(per_pod(), Say::Fail), (api(), Say::Fail)],
        ],
    );
    let last = &js[2];
    assert_eq!(last.verdict, Verdict::Bad);
    assert_eq!(last.state.failing_ticks(&per_pod()), 3);
    assert_eq!(last.state.failing_ticks(&api()), 1);
    let decisive: Vec<&SignalId> = last
        .reasons
        .iter()
        .filter(|r| r.is_decisive())
        .map(|r| &r.signal)
        .collect();
    assert_eq!(decisive, [&per_pod()]);
}

#[test]
fn a_verdict_change_is_flagged_once() {
    let js = run(
        &JudgePolicy::default(),
        &seq(
            SignalId::ErrorRate,
            &[
                Say::Pass,
                Say::Pass,
                Say::Fail,
                Say::Fail,
                Say::Fail,
                Say::Fail,
            ],
        ),
    );
    let changed: Vec<bool> = js.iter().map(|j| j.verdict_changed).collect();
    assert_eq!(changed, [true, false, true, false, true, false]);
}

#[test]
fn the_judgement_serializes_for_status() {
    let js = run(
        &JudgePolicy::default(),
        &seq(SignalId::ErrorRate, &[Say::Fail; 3]),
    );
    let v = serde_json::to_value(&js[2]).unwrap();
    assert_eq!(v["verdict"], "bad");
    assert_eq!(v["state"]["signals"]["error_rate"]["failing_ticks"], 3);
    assert_eq!(v["reasons"][0]["signal"], "error_rate");
    assert_eq!(v["reasons"][0]["kind"], "failing");
    assert_eq!(v["reasons"][0]["measured"]["text"], "30.2 %");
}

#[test]
fn a_clock_going_backwards_is_not_time_passing() {
    let policy = JudgePolicy::default();
    let inc = [SignalResult::new(
        SignalId::ErrorRate,
        Outcome::inconclusive("Prometheus unreachable"),
        t0(),
    )];
    let first = judge(&policy, &JudgeState::default(), &inc, t0());
    let earlier = t0() - Duration::from_secs(3600);
    let second = judge(&policy, &first.state, &inc, earlier);
    assert!(second.blind_report.is_none());
    assert_eq!(second.verdict, Verdict::Inconclusive);
}

#[test]
fn results_older_than_max_result_age_are_not_evidence() {
    let policy = JudgePolicy {
        max_result_age: Some(Duration::from_secs(30)),
        ..JudgePolicy::default()
    };
    let old = [SignalResult::new(
        SignalId::ErrorRate,
        fail_of(&SignalId::ErrorRate),
        t0(),
    )];
    let j = judge(
        &policy,
        &JudgeState::default(),
        &old,
        t0() + Duration::from_secs(60),
    );
    assert_eq!(j.verdict, Verdict::Inconclusive);
    assert_eq!(
        sentences(&j),
        ["error ratio inconclusive since 2026-11-27T10:01:00Z: the last measurement is 1m old"]
    );
}

#[test]
fn forgetting_a_removed_signal_stops_it_reading_as_missing() {
    let policy = JudgePolicy::default();
    let first = run(
        &policy,
        &[vec![(api(), Say::Pass), (SignalId::Pods, Say::Pass)]],
    );
    let mut state = first[0].state.clone();
    state.retain_signals(|s| *s != api());
    let pods = results_of(&SignalId::Pods, Say::Pass, 1);
    let j = judge(&policy, &state, &pods, at(1));
    assert_eq!(j.verdict, Verdict::Healthy);
}

#[test]
fn a_streak_too_short_in_evidence_time_says_why_it_is_not_bad_yet() {
    let js = run(
        &JudgePolicy::default(),
        &seq(
            SignalId::ErrorRate,
            &[Say::SpanFail, Say::SpanFail, Say::SpanFail],
        ),
    );
    let last = js.last().expect("three ticks");
    assert_eq!(last.verdict, Verdict::Suspect);
    let sentence = &last.reasons[0].sentence;
    assert!(
        sentence.contains(
            "on 3 consecutive ticks, but shown for only 15s of the 45s a streak of 3 must cover"
        ),
        "{sentence}"
    );
}

#[test]
fn ticks_closer_than_the_interval_do_not_make_a_short_burst_bad() {
    // Probes every 5 s against a 15 s interval: three failing point
    // samples within 10 s prove 10 s of failure, not 30 s.
    let policy = JudgePolicy::default();
    let mut state = JudgeState::default();
    let mut verdicts = Vec::new();
    for i in 0..7u32 {
        let now = t0() + Duration::from_secs(5) * i;
        let r = SignalResult::new(api(), fail_of(&api()), now);
        let j = judge(&policy, &state, &[r], now);
        state = j.state.clone();
        verdicts.push(j.verdict);
    }
    let first_bad = verdicts.iter().position(|v| *v == Verdict::Bad);
    assert_eq!(first_bad, Some(6), "{verdicts:?}");
}

#[test]
fn an_evaluation_between_ticks_leaves_the_signals_it_did_not_measure_alone() {
    let policy = JudgePolicy {
        immediate_bad_when_all_pods_crash: true,
        ..JudgePolicy::default()
    };
    // Two ticks: errors failing twice, pods passing.
    let js = run(
        &policy,
        &steady(
            2,
            &[
                (SignalId::ErrorRate, Say::Fail),
                (SignalId::Pods, Say::Pass),
            ],
        ),
    );
    let state = js[1].state.clone();
    // Between tick 1 and 2, a watch event: only the pods, one of three
    // crashing. The error counter is neither held nor missing.
    let between = at(1) + Duration::from_secs(3);
    let mut one = results_of(&SignalId::Pods, Say::OneCrash, 1);
    one[0].at = between;
    let j = judge_some(&policy, &state, &one, between);
    assert_eq!(j.verdict, Verdict::Suspect);
    assert_eq!(
        j.state.signals[&SignalId::ErrorRate],
        state.signals[&SignalId::ErrorRate]
    );
    assert!(
        j.reasons.iter().all(|r| r.signal == SignalId::Pods),
        "{:?}",
        j.reasons
    );
    // Every pod crashing: Bad at once, between ticks.
    let mut all = results_of(&SignalId::Pods, Say::AllCrash, 1);
    all[0].at = between;
    let j = judge_some(&policy, &state, &all, between);
    assert_eq!(j.verdict, Verdict::Bad);
    assert_eq!(j.blind_report, None);
}

mod props;
