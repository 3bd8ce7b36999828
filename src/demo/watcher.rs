//! What the run loop saw, as the timeline tells it: each tick's
//! evaluation compared with the last, so only changes are printed.

use std::collections::HashMap;
use std::time::Instant;

use super::timeline::Timeline;
use super::WATCH_WINDOW;
use crate::decide::judge::Verdict;
use crate::runtime::daemon::Evaluation;
use crate::signals::Outcome;

/// Prints what changed between ticks: the revision, the rollout, each
/// signal's state, the verdict, known-good records.
pub(super) struct Watcher {
    threshold: u32,
    revision: Option<(i64, String)>,
    rolled_out: bool,
    /// (revision, pod-template-hash) of the known-good record.
    known_good: Option<(i64, String)>,
    /// Per signal: (revision, state, failing ticks) last printed.
    signals: HashMap<String, (i64, &'static str, u32)>,
    verdict: Option<(i64, Verdict)>,
    pub(super) bad_at: Option<Instant>,
    pub(super) pipeline_seen: bool,
}

impl Watcher {
    pub(super) fn new(threshold: u32) -> Watcher {
        Watcher {
            threshold,
            revision: None,
            rolled_out: false,
            known_good: None,
            signals: HashMap::new(),
            verdict: None,
            bad_at: None,
            pipeline_seen: false,
        }
    }

    pub(super) fn last_verdict(&self) -> String {
        self.verdict.map_or("none".into(), |(r, v)| {
            format!("{} for revision {r}", title(v))
        })
    }

    pub(super) fn observe(&mut self, tl: &Timeline, e: &Evaluation) {
        let Some(current) = e.state.current() else {
            return;
        };
        let key = (current.number, current.pod_template_hash.clone());
        let images = current.images.join(", ");
        if self.revision.as_ref() != Some(&key) {
            let again = if current.reused {
                " (its ReplicaSet brought back)"
            } else {
                ""
            };
            tl.say(format!(
                "revision {} ({images}) is the Deployment's current revision{again}; its {WATCH_WINDOW} observation window is open",
                current.number
            ));
            self.revision = Some(key);
            self.rolled_out = false;
        }
        if e.state.fully_rolled_out && !self.rolled_out {
            tl.say(format!(
                "revision {} ({images}) fully rolled out: every replica updated and available",
                current.number
            ));
        }
        self.rolled_out = e.state.fully_rolled_out;
        self.known_good(tl, e);
        if self.pipeline_seen {
            // The restored revision is the pipeline's to verify (its steps
            // say how), never judged for another rollback: its signals
            // would only repeat the Verify step.
            return;
        }

        let judge_state = e.judgement.as_ref().map(|j| &j.state);
        let decided = self
            .verdict
            .is_some_and(|(r, v)| r == current.number && v == Verdict::Bad);
        for r in &e.results {
            let state = match &r.outcome {
                Outcome::Pass { .. } => "pass",
                Outcome::Fail { .. } => "FAIL",
                Outcome::Inconclusive { .. } => "n/a ",
            };
            let ticks = judge_state.map_or(0, |s| s.failing_ticks(&r.signal));
            let id = r.signal.id();
            let before = self.signals.get(&id).copied();
            let changed = before.is_none_or(|(rev, s, _)| rev != current.number || s != state);
            // A failing signal is shown on each tick that brings it closer
            // to the threshold: that is the judge counting.
            let counting = state == "FAIL"
                && !decided
                && before.is_some_and(|(_, _, t)| t != ticks)
                && ticks <= self.threshold;
            if changed || counting {
                let count = if state == "FAIL" && ticks > 0 {
                    format!("  [failing tick {ticks} of {}]", self.threshold)
                } else {
                    String::new()
                };
                tl.say(format!("  {state}  {}{count}", r.describe()));
            }
            self.signals.insert(id, (current.number, state, ticks));
        }

        if let Some(j) = &e.judgement {
            let now = (current.number, j.verdict);
            if self.verdict != Some(now) {
                let reason = j
                    .reasons
                    .first()
                    .map(|r| format!(": {}", r.sentence))
                    .unwrap_or_default();
                let action = match j.verdict {
                    Verdict::Bad if !self.pipeline_seen => {
                        " -> the run loop starts the rollback pipeline"
                    }
                    _ => "",
                };
                tl.say(format!(
                    "verdict for revision {}: {}{reason}{action}",
                    current.number,
                    title(j.verdict)
                ));
                if j.verdict == Verdict::Bad && self.bad_at.is_none() {
                    self.bad_at = Some(Instant::now());
                }
                self.verdict = Some(now);
            }
        }
    }

    fn known_good(&mut self, tl: &Timeline, e: &Evaluation) {
        let Some(k) = e.state.known_good.as_ref() else {
            return;
        };
        let now = (k.revision, k.pod_template_hash.clone());
        if self.known_good.as_ref() == Some(&now) {
            return;
        }
        let same_template = self
            .known_good
            .as_ref()
            .is_some_and(|(_, hash)| *hash == k.pod_template_hash);
        let images = k.images.join(", ");
        if same_template {
            tl.say(format!(
                "the known-good record follows the restored template: revision {} ({images})",
                k.revision
            ));
        } else {
            tl.say(format!(
                "revision {} ({images}) survived its window: recorded known-good (annotation {} on the Deployment)",
                k.revision,
                crate::k8s::keys::KNOWN_GOOD
            ));
        }
        self.known_good = Some(now);
    }
}

fn title(v: Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "Healthy",
        Verdict::Inconclusive => "Inconclusive",
        Verdict::Suspect => "Suspect",
        Verdict::Bad => "Bad",
        Verdict::Degraded => "Degraded",
    }
}
