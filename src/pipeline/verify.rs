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
        let mut ticks = 0u32;
        let mut consecutive: BTreeMap<String, u32> = BTreeMap::new();
        let mut inconclusive: BTreeMap<String, String> = BTreeMap::new();
        loop {
            if !(self.ctx.may_write)() {
                return Verified::HandedOver;
            }
            ticks += 1;
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
            let tick = self.verify_tick(&d, switched, policy).await;
            let tick = match tick {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!("{e}");
                    if Instant::now().duration_since(started) >= window && ticks >= 3 {
                        return Verified::Failed {
                            summary: format!("could not verify {target}: {e}"),
                            details: Value::Null,
                        };
                    }
                    tokio::time::sleep(every).await;
                    continue;
                }
            };
            for r in &tick.results {
                let id = r.signal.id();
                if r.outcome.is_fail() {
                    *consecutive.entry(id).or_default() += 1;
                } else {
                    consecutive.remove(&id);
                    if let crate::signals::Outcome::Inconclusive { why } = &r.outcome {
                        inconclusive.insert(id, why.clone());
                    }
                }
            }
            let done = Instant::now().duration_since(started) >= window && ticks >= 3;
            let failing: Vec<String> = tick
                .results
                .iter()
                .filter(|r| {
                    r.outcome.is_fail()
                        && (consecutive.get(&r.signal.id()).copied().unwrap_or(0) >= 2 || done)
                })
                .map(SignalResult::describe)
                .collect();
            let mut problems = failing;
            if done && !tick.ready_ok {
                problems.push(tick.ready_line.clone());
            }
            if !problems.is_empty() {
                return Verified::Failed {
                    summary: format!(
                        "{} is not healthy after the rollback: {}",
                        describe_ref(&in_flight.to),
                        problems.join("; ")
                    ),
                    details: json!({"checks": tick.lines, "ticks": ticks}),
                };
            }
            if done {
                let mut summary = format!(
                    "{} verified over {} ({ticks} checks): {}",
                    describe_ref(&in_flight.to),
                    humantime::format_duration(window),
                    tick.ready_line
                );
                let metrics: Vec<String> = inconclusive
                    .iter()
                    .filter(|(id, _)| {
                        matches!(id.as_str(), "error_rate" | "latency") || id.starts_with("rule:")
                    })
                    .map(|(id, why)| format!("{id}: {why}"))
                    .collect();
                if !metrics.is_empty() {
                    summary.push_str(&format!(
                        "; could not verify metrics ({})",
                        metrics.join("; ")
                    ));
                }
                return Verified::Passed {
                    summary,
                    details: json!({"checks": tick.lines, "ticks": ticks, "inconclusive": inconclusive}),
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
