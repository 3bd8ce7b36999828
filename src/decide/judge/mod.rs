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
//!   override) on a tick where that signal failed, **and the streak proves
//!   the failure persisted** (below), the verdict is Bad.
//! - **Persistence, by evidence time.** `failure_threshold` failing ticks
//!   `interval` apart must mean a failure that lasted about
//!   `failure_threshold × interval`, whatever the signal's own window. A
//!   point sample (a probe, the pod states) shows the failure at its `at`:
//!   `n` of them `interval` apart show it over `(n - 1) × interval`, the
//!   classic count. A measurement over a span of requests (a Prometheus
//!   rate over `span_from..at`) shows only that the failure happened
//!   *somewhere* in the span: its first failing span may hold just the
//!   start of a burst, its latest just the end. So for a span-based signal
//!   the streak counts as persistent only when the start of its latest span
//!   is at least `needed × interval` after the end of its first failing
//!   span (its onset): the failure then covered every span in between,
//!   whole. Because each tick measures only the requests since the last
//!   counted one (evidence counts once), an error burst shorter than
//!   `failure_threshold × interval` never makes a revision Bad by itself,
//!   however long the query's window; the price is that a rate signal
//!   needs two ticks more than a probe (5 at the default 3).
//! - One Pass resets that signal's counter to zero. Flapping (fail, pass,
//!   pass, ...) is therefore never Bad.
//! - **A span that is still filling is no reason to doubt a pass.** A
//!   Prometheus signal measures the requests since its last counted tick;
//!   when too few new samples or requests have come in yet it is
//!   Inconclusive and its span grows. If its last counted span passed,
//!   less than `blind_alert_after` ago, it does not keep the verdict from
//!   Healthy (it is listed last, saying so). Without this a tick shorter
//!   than two scrape intervals would never see every signal pass at once.
//!   It changes no counter, and only Healthy, never Bad, depends on it.
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
//!   reports every pod of the revision in an established crash (2 restarts
//!   or seen on 2 ticks, see `signals::pods`; at least one pod) is Bad at once.
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
    /// The loop's tick interval: a streak of `n` failing ticks must show
    /// the failure over `(n - 1) × interval` of evidence time (see the
    /// rules). Zero: counting alone decides.
    pub interval: Duration,
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
            interval: Duration::from_secs(15),
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
    /// The `at` of the first failing result of the current streak.
    #[serde(serialize_with = "opt_timestamp")]
    pub onset: Option<Timestamp>,
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
    /// Inconclusive over a span of requests (too few new samples or
    /// requests yet): the span grows until it holds enough.
    Pending(String),
}

/// Judges one tick. Pure: same arguments, same answer.
pub fn judge(
    policy: &JudgePolicy,
    state: &JudgeState,
    results: &[SignalResult],
    now: Timestamp,
) -> Judgement {
    judge_with(policy, state, results, now, true)
}

/// Judges an evaluation between ticks that measured only the signals in
/// `results` (a watch event woke it, see `runtime::daemon`): the signals
/// left out keep their counters untouched and are not "missing", and the
/// blind episode is left as it was. Only a decisive verdict of it means
/// anything: the caller keeps its state only then.
pub fn judge_some(
    policy: &JudgePolicy,
    state: &JudgeState,
    results: &[SignalResult],
    now: Timestamp,
) -> Judgement {
    judge_with(policy, state, results, now, false)
}

fn judge_with(
    policy: &JudgePolicy,
    state: &JudgeState,
    results: &[SignalResult],
    now: Timestamp,
    every_signal: bool,
) -> Judgement {
    let mut seen = this_tick(policy, state, results, now);
    if !every_signal {
        seen.retain(|signal, _| results.iter().any(|r| r.signal == *signal));
    }
    let mut next = JudgeState {
        signals: state.signals.clone(),
        blind_since: state.blind_since,
        last_verdict: state.last_verdict,
    };

    let mut tally = Tally::default();
    for (signal, seen) in &seen {
        let track = next.signals.entry(signal.clone()).or_default();
        tally.count(policy, signal, seen, track, now);
    }
    let verdict = tally.verdict(policy);
    let blind_report = if every_signal {
        blindness(policy, &seen, &mut next, now)
    } else {
        None
    };

    let verdict_changed = state.last_verdict != Some(verdict);
    next.last_verdict = Some(verdict);
    Judgement {
        verdict,
        state: next,
        reasons: tally.into_reasons(),
        blind_report,
        verdict_changed,
    }
}

/// This tick's reasons, sorted by what they weigh, as the signals are
/// counted one by one.
#[derive(Default)]
struct Tally {
    decisive: Vec<Reason>,
    failing: Vec<Reason>,
    held: Vec<Reason>,
    inconclusive: Vec<Reason>,
    /// Span signals between counted spans whose last one passed.
    pending: Vec<Reason>,
    any_pass: bool,
}

impl Tally {
    /// Moves `signal`'s counters by what it showed this tick and files
    /// the reason it gives.
    fn count(
        &mut self,
        policy: &JudgePolicy,
        signal: &SignalId,
        seen: &Seen,
        track: &mut SignalTrack,
        now: Timestamp,
    ) {
        let needed = policy.threshold_for(signal);
        match seen {
            Seen::Pass(at) => {
                *track = SignalTrack {
                    last_observed: Some(*at),
                    ..SignalTrack::default()
                };
                self.any_pass = true;
            }
            Seen::Fail(at, result) => {
                track.failing_ticks = track.failing_ticks.saturating_add(1);
                track.inconclusive_since = None;
                track.last_observed = Some(*at);
                let onset = *track.onset.get_or_insert(*at);
                let immediate = policy.immediate_bad_when_all_pods_crash
                    && *signal == SignalId::Pods
                    && result.pods.as_ref().is_some_and(|p| p.all_pods_crashing());
                let persisted = Persistence::of(policy, result, onset, needed);
                let is_decisive =
                    immediate || (track.failing_ticks >= needed && persisted.proven());
                let reason =
                    failing_reason(result, track, needed, immediate, is_decisive, &persisted);
                if is_decisive {
                    self.decisive.push(reason);
                } else {
                    self.failing.push(reason);
                }
            }
            Seen::Inconclusive(why) => {
                self.no_evidence(policy, signal, why, false, track, needed, now)
            }
            Seen::Pending(why) => self.no_evidence(policy, signal, why, true, track, needed, now),
        }
    }

    /// An Inconclusive tick: the counter holds (or is dropped after a
    /// blind spell), and the signal says why it had no evidence.
    #[allow(clippy::too_many_arguments)]
    fn no_evidence(
        &mut self,
        policy: &JudgePolicy,
        signal: &SignalId,
        why: &str,
        pending: bool,
        track: &mut SignalTrack,
        needed: u32,
        now: Timestamp,
    ) {
        let since = *track.inconclusive_since.get_or_insert(now);
        if track.failing_ticks > 0 && elapsed(since, now) >= policy.blind_alert_after {
            // Evidence on both sides of a blind spell is not consecutive.
            track.failing_ticks = 0;
            track.held_ticks = 0;
            track.onset = None;
        }
        if track.failing_ticks > 0 {
            track.held_ticks = track.held_ticks.saturating_add(1);
            self.held.push(Reason {
                signal: signal.clone(),
                sentence: format!(
                    "{} failed {} of {needed} consecutive ticks needed; no data this tick ({why}), counter held",
                    signal.label(),
                    track.failing_ticks,
                ),
                finding: Finding::Held {
                    failing_ticks: track.failing_ticks,
                    needed_ticks: needed,
                    why: why.to_owned(),
                },
            });
        } else if let Some(passed) = track
            .last_observed
            .filter(|at| pending && elapsed(*at, now) < policy.blind_alert_after)
        {
            // Its last counted span passed, and its next one is still
            // filling: nothing against the revision, nothing new either.
            self.pending.push(Reason {
                signal: signal.clone(),
                sentence: format!(
                    "{} passed on its last counted span, up to {}; nothing to count since ({why})",
                    signal.label(),
                    rfc3339(passed)
                ),
                finding: Finding::Inconclusive {
                    why: why.to_owned(),
                    since: Some(since),
                },
            });
        } else {
            self.inconclusive.push(Reason {
                signal: signal.clone(),
                sentence: format!(
                    "{} inconclusive since {}: {why}",
                    signal.label(),
                    rfc3339(since)
                ),
                finding: Finding::Inconclusive {
                    why: why.to_owned(),
                    since: Some(since),
                },
            });
        }
    }

    fn verdict(&self, policy: &JudgePolicy) -> Verdict {
        if !self.decisive.is_empty() {
            if policy.in_window || policy.rollback_outside_window {
                Verdict::Bad
            } else {
                Verdict::Degraded
            }
        } else if !self.failing.is_empty() || !self.held.is_empty() {
            Verdict::Suspect
        } else if self.inconclusive.is_empty() && (self.any_pass || !self.pending.is_empty()) {
            Verdict::Healthy
        } else {
            Verdict::Inconclusive
        }
    }

    /// Decisive reasons first, then failing, held and inconclusive signals.
    fn into_reasons(self) -> Vec<Reason> {
        let mut reasons = self.decisive;
        reasons.extend(self.failing);
        reasons.extend(self.held);
        reasons.extend(self.inconclusive);
        reasons.extend(self.pending);
        reasons
    }
}

/// Which signals are blind after this tick, and the report when a blind
/// episode starts (exactly one per episode); `next.blind_since` follows.
fn blindness(
    policy: &JudgePolicy,
    seen: &BTreeMap<SignalId, Seen>,
    next: &mut JudgeState,
    now: Timestamp,
) -> Option<BlindReport> {
    let blind: Vec<BlindSignal> = seen
        .iter()
        .filter_map(|(signal, seen)| {
            let (Seen::Inconclusive(why) | Seen::Pending(why)) = seen else {
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
    if blind.is_empty() {
        next.blind_since = None;
        None
    } else if next.blind_since.is_some() {
        None
    } else {
        next.blind_since = Some(now);
        Some(blind_report(blind, now))
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
                    (i @ Seen::Pending(_), _) | (_, i @ Seen::Pending(_)) => i,
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
        return if r.span_from.is_some() {
            Seen::Pending(why.clone())
        } else {
            Seen::Inconclusive(why.clone())
        };
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

/// How long a failing streak has shown its failure, by evidence time.
struct Persistence {
    /// From the onset to the earliest moment the latest result speaks for.
    shown: Duration,
    /// What `needed` ticks `interval` apart must show.
    wanted: Duration,
    /// The latest result covers a span of requests.
    span: bool,
    /// A tenth of a tick: a tick that starts a few milliseconds early must
    /// not cost a whole tick.
    slack: Duration,
}

impl Persistence {
    fn of(policy: &JudgePolicy, r: &SignalResult, onset: Timestamp, needed: u32) -> Self {
        let from = r.span_from.map_or(r.at, |f| f.min(r.at));
        let span = r.span_from.is_some();
        // Points: n samples show (n - 1) intervals. Spans: the whole spans
        // between the onset's end and the latest's start, n of them.
        let intervals = if span {
            needed
        } else {
            needed.saturating_sub(1)
        };
        Persistence {
            shown: elapsed(onset, from),
            wanted: policy.interval * intervals,
            span,
            slack: policy.interval / 10,
        }
    }

    fn proven(&self) -> bool {
        self.shown + self.slack >= self.wanted
    }
}

fn failing_reason(
    r: &SignalResult,
    track: &SignalTrack,
    needed: u32,
    immediate: bool,
    decisive: bool,
    persisted: &Persistence,
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
    } else if n >= needed && !persisted.proven() {
        sentence.push_str(&format!(
            " on {n} consecutive {ticks}, but shown for only {} of the {} a streak of {needed} must cover{}",
            humantime::format_duration(whole_seconds(persisted.shown)),
            humantime::format_duration(whole_seconds(persisted.wanted)),
            if persisted.span {
                " (each tick measures only the requests since the last one, and the first and latest failing spans may hold just the two ends of a burst)"
            } else {
                ""
            }
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
mod tests;
