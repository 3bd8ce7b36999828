//! The judge: a pure function from (policy, previous counters, this tick's
//! signal results, now) to a verdict with reasons an on-call engineer can
//! read. No I/O, no clock, no globals: everything it knows is in its
//! arguments, so every rule below is table-tested.
//!
//! It must never be wrong in the dangerous direction: missing data is never
//! evidence of a bad release, and only [`Verdict::Bad`] may lead to a
//! rollback.
//!
//! # Rules
//!
//! - A signal's counter counts its consecutive failing ticks. When it
//!   reaches the signal's threshold (`failure_threshold`, or a per-signal
//!   override) on a tick where that signal failed, the verdict is Bad.
//! - One Pass resets that signal's counter to zero. Flapping (fail, pass,
//!   pass, ...) is therefore never Bad.
//! - **Inconclusive neither adds nor resets; it holds.** A held streak is
//!   shown (verdict Suspect) but can only turn Bad on a later tick where the
//!   signal really fails again. Why hold rather than reset: resetting would
//!   let missing data count as evidence of health, so a bad release behind
//!   a flaky Prometheus (one timeout every third scrape) would never be
//!   rolled back; and holding never lets missing data count toward Bad,
//!   because the count only moves on a real Fail. Why not hold forever: a
//!   streak held across a blind spell (the signal inconclusive for
//!   `blind_alert_after` or longer) is dropped, because failures from
//!   before and after an outage are not "consecutive" evidence of one
//!   problem. Dropping delays a rollback; it never causes one.
//! - A result that is not a new observation (its `at` is not after the last
//!   result counted for that signal, or older than `max_result_age`) is
//!   treated as Inconclusive: the same measurement seen twice is one tick of
//!   evidence, not two.
//! - A Fail whose measured value is NaN or infinite, or a ratio-to-baseline
//!   Fail without a usable baseline, is treated as Inconclusive: signals are
//!   meant to report those as Inconclusive already, and the judge does not
//!   trust that they always will.
//! - The caller passes one result per configured signal per tick (an
//!   Inconclusive one when it timed out). Several results for one signal in
//!   one tick count only if they all agree; the judge does not aggregate,
//!   signals do. A signal the judge has seen before but that is missing
//!   from this tick is Inconclusive ("no result this tick").
//! - With `immediate_bad_when_all_pods_crash`, a failing pod signal that
//!   reports every pod of the revision crashing (and at least one pod) is
//!   Bad at once.
//! - **Blind**: a signal inconclusive for `blind_alert_after` or longer is
//!   blind. A blind episode of the target starts when its first signal goes
//!   blind and ends when no signal is blind; its start produces exactly one
//!   [`BlindReport`]. Blindness is per signal, not "every signal
//!   inconclusive", because the pod and health signals usually keep passing
//!   while Prometheus is down, and that is exactly when on-call must hear
//!   the watchdog cannot see errors or latency.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;

use crate::signals::{
    opt_timestamp, timestamp, Measurement, Outcome, SignalId, SignalResult, Threshold,
};

/// What the judge needs of a target's policy, already resolved for this
/// revision and this tick (config converts into it).
#[derive(Debug, Clone, PartialEq)]
pub struct JudgePolicy {
    /// Consecutive failing ticks of one signal that make a revision Bad.
    /// Zero is read as one: no revision is ever Bad without a failing tick.
    pub failure_threshold: u32,
    /// Per-signal overrides of `failure_threshold` (same zero rule).
    pub thresholds: BTreeMap<SignalId, u32>,
    /// How long a signal may stay inconclusive before on-call is told the
    /// watchdog is blind, and how long a failing streak survives no data.
    pub blind_alert_after: Duration,
    /// A failing pod signal with every pod crashing is Bad at once.
    pub immediate_bad_when_all_pods_crash: bool,
    /// The revision's observation window is open.
    pub in_window: bool,
    /// Bad outside the window may roll back too (otherwise: Degraded).
    pub rollback_outside_window: bool,
    /// Results older than this (by their `at`) are Inconclusive. `None`:
    /// no age limit beyond "newer than the last one counted".
    pub max_result_age: Option<Duration>,
}

impl Default for JudgePolicy {
    /// The DESIGN.md defaults, inside a window.
    fn default() -> Self {
        JudgePolicy {
            failure_threshold: 3,
            thresholds: BTreeMap::new(),
            blind_alert_after: Duration::from_secs(5 * 60),
            immediate_bad_when_all_pods_crash: false,
            in_window: true,
            rollback_outside_window: false,
            max_result_age: None,
        }
    }
}

impl JudgePolicy {
    /// Failing ticks that make `signal` Bad; never less than one.
    pub fn threshold_for(&self, signal: &SignalId) -> u32 {
        self.thresholds
            .get(signal)
            .copied()
            .unwrap_or(self.failure_threshold)
            .max(1)
    }
}

/// A target's verdict on one tick, and the action each allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every signal that reported passed. Action: none.
    Healthy,
    /// Nothing is failing, but at least one signal could not judge (or none
    /// reported). Action: none; never evidence either way.
    Inconclusive,
    /// Some signal is failing, or has a held failing streak, below its
    /// threshold. Action: report only (status, log, Event).
    Suspect,
    /// A signal reached its threshold (or every pod crashes, when that is
    /// immediate) inside the window, or outside it with
    /// `rollback_outside_window`. Action: the rollback pipeline. The only
    /// verdict that may change the cluster.
    Bad,
    /// The same evidence as Bad, outside the window without
    /// `rollback_outside_window`. Action: report degradation (metric,
    /// notification); never roll back, since no deploy caused it.
    Degraded,
}

impl Verdict {
    /// Whether this verdict may start a rollback.
    pub fn may_roll_back(self) -> bool {
        self == Verdict::Bad
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Healthy => "healthy",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Suspect => "suspect",
            Verdict::Bad => "bad",
            Verdict::Degraded => "degraded",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One signal's counters, carried from tick to tick.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SignalTrack {
    /// Consecutive failing ticks (inconclusive ticks in between hold it).
    pub failing_ticks: u32,
    /// Inconclusive ticks inside the current failing streak, not counted.
    pub held_ticks: u32,
    /// Since when the signal has been inconclusive without a break.
    #[serde(serialize_with = "opt_timestamp")]
    pub inconclusive_since: Option<Timestamp>,
    /// The `at` of the last conclusive result counted.
    #[serde(serialize_with = "opt_timestamp")]
    pub last_observed: Option<Timestamp>,
}

/// Everything the judge remembers between ticks of one revision. Start a
/// new revision with `JudgeState::default()`. Losing it (a restart) only
/// delays a verdict: counters start again from zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JudgeState {
    pub signals: BTreeMap<SignalId, SignalTrack>,
    /// Start of the current blind episode; `Some` means it was reported.
    #[serde(serialize_with = "opt_timestamp")]
    pub blind_since: Option<Timestamp>,
    pub last_verdict: Option<Verdict>,
}

impl JudgeState {
    /// Forgets signals that are no longer configured (after a config
    /// reload), so they do not read as "no result this tick" forever.
    pub fn retain_signals(&mut self, mut keep: impl FnMut(&SignalId) -> bool) {
        self.signals.retain(|id, _| keep(id));
    }

    /// The failing-tick counter of one signal.
    pub fn failing_ticks(&self, signal: &SignalId) -> u32 {
        self.signals.get(signal).map_or(0, |t| t.failing_ticks)
    }
}

/// Why a signal matters to this verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The signal failed this tick.
    Failing {
        measured: Measurement,
        threshold: Threshold,
        #[serde(skip_serializing_if = "Option::is_none")]
        baseline: Option<f64>,
        failing_ticks: u32,
        needed_ticks: u32,
        /// Inconclusive ticks inside the streak, not counted.
        held_ticks: u32,
        /// Every pod crashes and that is configured as immediate.
        immediate: bool,
        /// This finding alone makes the verdict Bad (or Degraded).
        decisive: bool,
        /// The signal's own sentence.
        detail: String,
    },
    /// No data this tick, but an earlier failing streak is held.
    Held {
        failing_ticks: u32,
        needed_ticks: u32,
        why: String,
    },
    /// No data this tick and no failing streak.
    Inconclusive {
        why: String,
        #[serde(serialize_with = "opt_timestamp")]
        since: Option<Timestamp>,
    },
}

/// One line of the verdict's explanation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    pub signal: SignalId,
    #[serde(flatten)]
    pub finding: Finding,
    /// For Slack: "error ratio 30.2 % > max 5.0 % (baseline 0.1 %) on 3
    /// consecutive ticks (rollback at 3)".
    pub sentence: String,
}

impl Reason {
    pub fn is_decisive(&self) -> bool {
        matches!(self.finding, Finding::Failing { decisive: true, .. })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentence)
    }
}

/// A signal that has been inconclusive for `blind_alert_after` or longer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlindSignal {
    pub signal: SignalId,
    #[serde(serialize_with = "timestamp")]
    pub since: Timestamp,
    pub why: String,
}

/// "The watchdog is blind": sent once at the start of a blind episode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlindReport {
    #[serde(serialize_with = "timestamp")]
    pub since: Timestamp,
    pub signals: Vec<BlindSignal>,
    pub sentence: String,
}

impl fmt::Display for BlindReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sentence)
    }
}

/// The judge's answer for one tick.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Judgement {
    pub verdict: Verdict,
    /// Pass it back on the next tick.
    pub state: JudgeState,
    /// Decisive reasons first, then failing, held and inconclusive signals.
    pub reasons: Vec<Reason>,
    /// Set on exactly one tick per blind episode: its start.
    pub blind_report: Option<BlindReport>,
    /// The verdict differs from the previous tick's (true on the first).
    pub verdict_changed: bool,
}

/// What one signal amounts to on this tick, after the judge's own checks.
enum Seen<'a> {
    Pass(Timestamp),
    Fail(Timestamp, &'a SignalResult),
    Inconclusive(String),
}

/// Judges one tick. Pure: same arguments, same answer.
pub fn judge(
    policy: &JudgePolicy,
    state: &JudgeState,
    results: &[SignalResult],
    now: Timestamp,
) -> Judgement {
    let seen = this_tick(policy, state, results, now);
    let mut next = JudgeState {
        signals: state.signals.clone(),
        blind_since: state.blind_since,
        last_verdict: state.last_verdict,
    };

    let mut decisive = Vec::new();
    let mut failing = Vec::new();
    let mut held = Vec::new();
    let mut inconclusive = Vec::new();
    let mut any_pass = false;

    for (signal, seen) in &seen {
        let track = next.signals.entry(signal.clone()).or_default();
        let needed = policy.threshold_for(signal);
        match seen {
            Seen::Pass(at) => {
                *track = SignalTrack {
                    last_observed: Some(*at),
                    ..SignalTrack::default()
                };
                any_pass = true;
            }
            Seen::Fail(at, result) => {
                track.failing_ticks = track.failing_ticks.saturating_add(1);
                track.inconclusive_since = None;
                track.last_observed = Some(*at);
                let immediate = policy.immediate_bad_when_all_pods_crash
                    && *signal == SignalId::Pods
                    && result.pods.as_ref().is_some_and(|p| p.all_pods_crashing());
                let is_decisive = immediate || track.failing_ticks >= needed;
                let reason = failing_reason(result, track, needed, immediate, is_decisive);
                if is_decisive {
                    decisive.push(reason);
                } else {
                    failing.push(reason);
                }
            }
            Seen::Inconclusive(why) => {
                let since = *track.inconclusive_since.get_or_insert(now);
                if track.failing_ticks > 0 && elapsed(since, now) >= policy.blind_alert_after {
                    // Evidence on both sides of a blind spell is not consecutive.
                    track.failing_ticks = 0;
                    track.held_ticks = 0;
                }
                if track.failing_ticks > 0 {
                    track.held_ticks = track.held_ticks.saturating_add(1);
                    held.push(Reason {
                        signal: signal.clone(),
                        sentence: format!(
                            "{} failed {} of {needed} consecutive ticks needed; no data this tick ({why}), counter held",
                            signal.label(),
                            track.failing_ticks,
                        ),
                        finding: Finding::Held {
                            failing_ticks: track.failing_ticks,
                            needed_ticks: needed,
                            why: why.clone(),
                        },
                    });
                } else {
                    inconclusive.push(Reason {
                        signal: signal.clone(),
                        sentence: format!(
                            "{} inconclusive since {}: {why}",
                            signal.label(),
                            rfc3339(since)
                        ),
                        finding: Finding::Inconclusive {
                            why: why.clone(),
                            since: Some(since),
                        },
                    });
                }
            }
        }
    }

    let verdict = if !decisive.is_empty() {
        if policy.in_window || policy.rollback_outside_window {
            Verdict::Bad
        } else {
            Verdict::Degraded
        }
    } else if !failing.is_empty() || !held.is_empty() {
        Verdict::Suspect
    } else if inconclusive.is_empty() && any_pass {
        Verdict::Healthy
    } else {
        Verdict::Inconclusive
    };

    let blind: Vec<BlindSignal> = seen
        .iter()
        .filter_map(|(signal, seen)| {
            let Seen::Inconclusive(why) = seen else {
                return None;
            };
            let since = next.signals.get(signal)?.inconclusive_since?;
            (elapsed(since, now) >= policy.blind_alert_after).then(|| BlindSignal {
                signal: signal.clone(),
                since,
                why: why.clone(),
            })
        })
        .collect();
    let blind_report = if blind.is_empty() {
        next.blind_since = None;
        None
    } else if next.blind_since.is_some() {
        None
    } else {
        next.blind_since = Some(now);
        Some(blind_report(blind, now))
    };

    let verdict_changed = state.last_verdict != Some(verdict);
    next.last_verdict = Some(verdict);

    let mut reasons = decisive;
    reasons.extend(failing);
    reasons.extend(held);
    reasons.extend(inconclusive);
    Judgement {
        verdict,
        state: next,
        reasons,
        blind_report,
        verdict_changed,
    }
}

/// This tick's results, one per signal, after the judge's own checks;
/// signals seen before but missing now are Inconclusive.
fn this_tick<'a>(
    policy: &JudgePolicy,
    state: &JudgeState,
    results: &'a [SignalResult],
    now: Timestamp,
) -> BTreeMap<SignalId, Seen<'a>> {
    let mut by_signal: BTreeMap<SignalId, Vec<&'a SignalResult>> = BTreeMap::new();
    for r in results {
        by_signal.entry(r.signal.clone()).or_default().push(r);
    }
    let mut seen: BTreeMap<SignalId, Seen<'a>> = by_signal
        .into_iter()
        .map(|(signal, rs)| {
            let last = state.signals.get(&signal).and_then(|t| t.last_observed);
            let mut each = rs.iter().map(|r| check(policy, r, last, now));
            let first = each.next();
            let merged = match first {
                None => Seen::Inconclusive("no result this tick".to_owned()),
                Some(first) => each.fold(first, |a, b| match (a, b) {
                    (Seen::Pass(x), Seen::Pass(y)) => Seen::Pass(x.max(y)),
                    (Seen::Fail(x, r), Seen::Fail(y, _)) => Seen::Fail(x.max(y), r),
                    (i @ Seen::Inconclusive(_), _) | (_, i @ Seen::Inconclusive(_)) => i,
                    _ => Seen::Inconclusive(format!(
                        "{} results for this signal in one tick disagree",
                        rs.len()
                    )),
                }),
            };
            (signal, merged)
        })
        .collect();
    for signal in state.signals.keys() {
        seen.entry(signal.clone())
            .or_insert_with(|| Seen::Inconclusive("no result this tick".to_owned()));
    }
    seen
}

/// A result as evidence, or Inconclusive with why it is not.
fn check<'a>(
    policy: &JudgePolicy,
    r: &'a SignalResult,
    last_observed: Option<Timestamp>,
    now: Timestamp,
) -> Seen<'a> {
    if let Outcome::Inconclusive { why } = &r.outcome {
        return Seen::Inconclusive(why.clone());
    }
    if let Some(last) = last_observed {
        if r.at <= last {
            return Seen::Inconclusive(format!("no new measurement since {}", rfc3339(last)));
        }
    }
    if let Some(max_age) = policy.max_result_age {
        let age = elapsed(r.at, now);
        if age > max_age {
            return Seen::Inconclusive(format!(
                "the last measurement is {} old",
                humantime::format_duration(whole_seconds(age))
            ));
        }
    }
    match &r.outcome {
        Outcome::Inconclusive { why } => Seen::Inconclusive(why.clone()),
        Outcome::Pass { .. } => Seen::Pass(r.at),
        Outcome::Fail {
            measured,
            threshold,
            baseline,
            ..
        } => {
            if !measured.is_finite() {
                return Seen::Inconclusive(format!(
                    "measured {} is not a number, not evidence",
                    measured.value
                ));
            }
            let needs_baseline = matches!(threshold, Threshold::RatioToBaseline { .. });
            if needs_baseline && !baseline.is_some_and(|b| b.is_finite() && b >= 0.0) {
                return Seen::Inconclusive(
                    "failed against the baseline, but the baseline is unknown".to_owned(),
                );
            }
            Seen::Fail(r.at, r)
        }
    }
}

fn failing_reason(
    r: &SignalResult,
    track: &SignalTrack,
    needed: u32,
    immediate: bool,
    decisive: bool,
) -> Reason {
    let (measured, threshold, baseline, detail) = match &r.outcome {
        Outcome::Fail {
            measured,
            threshold,
            baseline,
            sentence,
        } => (
            measured.clone(),
            threshold.clone(),
            *baseline,
            sentence.clone(),
        ),
        // `check` lets only a Fail through as Seen::Fail.
        _ => (
            Measurement::number(f64::NAN),
            Threshold::Expected {
                what: "a failing result".to_owned(),
            },
            None,
            String::new(),
        ),
    };
    let n = track.failing_ticks;
    let ticks = if n == 1 { "tick" } else { "ticks" };
    let mut sentence = r.describe();
    if immediate {
        let pods = r.pods.as_ref().map_or(0, |p| p.pods);
        sentence.push_str(&format!(
            ": all {pods} pods of the revision are crashing, Bad at once (immediate_bad_when_all_pods_crash)"
        ));
    } else if decisive {
        sentence.push_str(&format!(
            " on {n} consecutive {ticks} (rollback at {needed})"
        ));
    } else {
        sentence.push_str(&format!(
            " on {n} consecutive {ticks}, {needed} needed for Bad"
        ));
    }
    if track.held_ticks > 0 {
        let h = track.held_ticks;
        let was = if h == 1 { "tick was" } else { "ticks were" };
        sentence.push_str(&format!(
            "; {h} inconclusive {was} in between and not counted"
        ));
    }
    if !detail.is_empty() {
        sentence.push_str(". ");
        sentence.push_str(&detail);
    }
    Reason {
        signal: r.signal.clone(),
        finding: Finding::Failing {
            measured,
            threshold,
            baseline,
            failing_ticks: n,
            needed_ticks: needed,
            held_ticks: track.held_ticks,
            immediate,
            decisive,
            detail,
        },
        sentence,
    }
}

fn blind_report(signals: Vec<BlindSignal>, now: Timestamp) -> BlindReport {
    let since = signals.iter().map(|s| s.since).min().unwrap_or(now);
    let each: Vec<String> = signals
        .iter()
        .map(|s| {
            format!(
                "{} for {} ({})",
                s.signal.label(),
                humantime::format_duration(whole_seconds(elapsed(s.since, now))),
                s.why
            )
        })
        .collect();
    let sentence = format!(
        "watchdog is blind: no conclusive result from {}. Missing data is never evidence of a bad release: these signals cannot trigger a rollback until they report again.",
        each.join("; ")
    );
    BlindReport {
        since,
        signals,
        sentence,
    }
}

/// Time from `since` to `now`; zero if the clock went backwards.
fn elapsed(since: Timestamp, now: Timestamp) -> Duration {
    let d = now.duration_since(since);
    if d.is_negative() {
        Duration::ZERO
    } else {
        d.unsigned_abs()
    }
}

fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn rfc3339(ts: Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
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
}
