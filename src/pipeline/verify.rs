//! Verify, the runbook's step 5: the checklist passes for the verify
//! window, or the rollback is reported failed.

use super::*;

impl Pipeline {
    pub(super) async fn verify(
        &self,
        rolled_out: &Deployment,
        in_flight: &InFlight,
        policy: &Policy,
    ) -> Verified {
        let target = target_of(rolled_out);
        let (ns, name) = (
            rolled_out.namespace().unwrap_or_default(),
            rolled_out.name_any(),
        );
        let window = policy.verify_window;
        let every = self
            .ctx
            .config
            .watchdog
            .interval
            .min(window / 3)
            .max(Duration::from_millis(100));
        let started = Instant::now();
        let switched = self.ctx.now();
        let mut tally = Tally::default();
        loop {
            if !(self.ctx.may_write)() {
                return Verified::HandedOver;
            }
            tally.ticks += 1;
            let d = match self.get(&ns, &name).await {
                Ok(Some(d)) => d,
                Ok(None) => {
                    return Verified::Failed {
                        summary: format!("{target}: Deployment deleted during verification"),
                        details: Value::Null,
                    }
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    rolled_out.clone()
                }
            };
            if self.changed_by_someone(&d, in_flight).await {
                return Verified::Superseded(format!(
                    "{target} was changed by someone else during verification; the watchdog stops and does not touch it"), Box::new(d));
            }
            let ticks = tally.ticks;
            let done = || Instant::now().duration_since(started) >= window && ticks >= 3;
            let tick = match self.verify_tick(&d, switched, policy).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("{e}");
                    if done() {
                        return Verified::Failed {
                            summary: format!("could not verify {target}: {e}"),
                            details: Value::Null,
                        };
                    }
                    tokio::time::sleep(every).await;
                    continue;
                }
            };
            tally.count(&tick);
            let done = done();
            let problems = tally.problems(&tick, done);
            if !problems.is_empty() {
                return Verified::Failed {
                    summary: format!(
                        "{} is not healthy after the rollback: {}",
                        describe_ref(&in_flight.to),
                        problems.join("; ")
                    ),
                    details: json!({"checks": tick.lines, "ticks": tally.ticks}),
                };
            }
            if done {
                let mut summary = format!(
                    "{} verified over {} ({} checks): {}",
                    describe_ref(&in_flight.to),
                    humantime::format_duration(window),
                    tally.ticks,
                    tick.ready_line
                );
                let metrics = tally.unverified_metrics();
                if !metrics.is_empty() {
                    summary.push_str(&format!(
                        "; could not verify metrics ({})",
                        metrics.join("; ")
                    ));
                }
                return Verified::Passed {
                    summary,
                    details: json!({"checks": tick.lines, "ticks": tally.ticks, "inconclusive": tally.inconclusive}),
                };
            }
            tokio::time::sleep(every).await;
        }
    }

    /// One round of the runbook's measurable checklist on the current
    /// revision of `d`.
    pub async fn verify_tick(
        &self,
        d: &Deployment,
        switched: jiff::Timestamp,
        policy: &Policy,
    ) -> Result<Checks, RollbackError> {
        self.reader()
            .checklist(
                d,
                switched,
                policy,
                self.ctx.signals.as_ref(),
                self.ctx.now(),
            )
            .await
    }
}

pub(super) enum Verified {
    Passed { summary: String, details: Value },
    HandedOver,
    Failed { summary: String, details: Value },
    Superseded(String, Box<Deployment>),
}

/// What Verify has seen so far.
#[derive(Default)]
pub(super) struct Tally {
    ticks: u32,
    /// Consecutive failing checks, by signal.
    consecutive: BTreeMap<String, u32>,
    /// The last reason each signal could not judge.
    inconclusive: BTreeMap<String, String>,
}

impl Tally {
    fn count(&mut self, tick: &Checks) {
        for r in &tick.results {
            let id = r.signal.id();
            if r.outcome.is_fail() {
                *self.consecutive.entry(id).or_default() += 1;
            } else {
                self.consecutive.remove(&id);
                if let crate::signals::Outcome::Inconclusive { why } = &r.outcome {
                    self.inconclusive.insert(id, why.clone());
                }
            }
        }
    }

    /// What fails verification now: a signal failing on two checks in a
    /// row, or on the last one; pods not ready at the end.
    fn problems(&self, tick: &Checks, done: bool) -> Vec<String> {
        let mut problems: Vec<String> = tick
            .results
            .iter()
            .filter(|r| {
                r.outcome.is_fail()
                    && (self.consecutive.get(&r.signal.id()).copied().unwrap_or(0) >= 2 || done)
            })
            .map(SignalResult::describe)
            .collect();
        if done && !tick.ready_ok {
            problems.push(tick.ready_line.clone());
        }
        problems
    }

    /// The metric signals that could not judge, said in the summary so a
    /// pass on pods alone is never mistaken for a full one.
    fn unverified_metrics(&self) -> Vec<String> {
        self.inconclusive
            .iter()
            .filter(|(id, _)| {
                matches!(id.as_str(), "error_rate" | "latency") || id.starts_with("rule:")
            })
            .map(|(id, why)| format!("{id}: {why}"))
            .collect()
    }
}
