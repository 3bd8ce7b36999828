//! `drill NS/NAME`: the runbook's monthly rollback drill, with the
//! pipeline's own steps. Without `--live` it runs every step that can run
//! without changing the workload (Validate, a backup written and read back,
//! the rollback patch as a server-side dry run, every signal now, a test
//! notification per sink); with `--live --yes` it rolls a staging
//! Deployment back and forward for real and times both. It must never
//! change the Deployment without `--live --yes`, and never leave it on
//! another template than the one it found when it can put that back.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;

use crate::cli::rollback::{default_sink, Io};
use crate::cli::setup::setup;
use crate::cli::{DeploymentRef, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::config::Config;
use crate::observe::revision;
use crate::pipeline::{
    describe_ref, Pipeline, Plan, RollbackRequest, RollbackResult, Target, API_TIMEOUT,
};
use crate::report::incident::Trigger;

/// The reason every drill request carries: in the change-cause, the audit
/// trail, the backup's record and `history`, so a drill is never taken for
/// an incident.
pub const DRILL_REASON: &str = "rollback drill (rollback-watchdog drill)";

/// How a step of the checklist ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Pass,
    /// Works, with something on-call should look at; does not fail the drill.
    Warn,
    Fail,
}

impl Mark {
    fn word(self) -> &'static str {
        match self {
            Mark::Pass => "PASS",
            Mark::Warn => "WARN",
            Mark::Fail => "FAIL",
        }
    }
}

/// One line of the checklist, with the lines under it.
struct Row {
    step: &'static str,
    mark: Mark,
    took: Duration,
    summary: String,
    details: Vec<String>,
}

#[derive(Default)]
struct Checklist {
    rows: Vec<Row>,
}

impl Checklist {
    fn add(&mut self, step: &'static str, started: Instant, mark: Mark, summary: String) {
        self.add_with(step, started, mark, summary, Vec::new());
    }

    fn add_with(
        &mut self,
        step: &'static str,
        started: Instant,
        mark: Mark,
        summary: String,
        details: Vec<String>,
    ) {
        self.rows.push(Row {
            step,
            mark,
            took: started.elapsed(),
            summary,
            details,
        });
    }

    fn failed(&self) -> usize {
        self.rows.iter().filter(|r| r.mark == Mark::Fail).count()
    }

    fn print(&self, out: &mut dyn Write) {
        for r in &self.rows {
            let _ = writeln!(
                out,
                "  {}  {:<13} {:>9}  {}",
                r.mark.word(),
                r.step,
                seconds(r.took),
                r.summary
            );
            for d in &r.details {
                let _ = writeln!(out, "{:<34}{d}", "");
            }
        }
    }
}

fn seconds(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// `drill NS/NAME [--live --yes]`.
pub async fn drill(
    config_path: &Path,
    target: &DeploymentRef,
    live: bool,
    yes: bool,
    io: &mut Io<'_>,
) -> u8 {
    if live && !yes {
        let _ = writeln!(
            io.err,
            "refusing a live drill of {target} without --yes: it rolls the Deployment back to its previous revision and forward again for real; run it on a staging Deployment, with --yes (nothing was changed)"
        );
        return EXIT_CONFIG;
    }
    let (config, client) = match setup(config_path, io.err).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let ctx = match crate::pipeline::Context::new(
        client,
        std::sync::Arc::new(config.clone()),
        default_sink(),
    ) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_CONFIG;
        }
    };
    let pipeline = Pipeline::new(ctx.with_progress(std::sync::Arc::new(
        |p: &crate::pipeline::Progress| eprintln!("waiting: {p}"),
    )));
    let mut list = Checklist::default();
    let _ = writeln!(
        io.out,
        "Rollback drill of {target}{}",
        if live {
            " (live: rolled back and forward for real)"
        } else {
            " (nothing in the workload is changed)"
        }
    );
    if live {
        live_drill(&pipeline, target, &mut list).await;
    } else {
        dry_drill(&pipeline, &config, target, &mut list).await;
    }
    list.print(io.out);
    match list.failed() {
        0 => {
            let _ = writeln!(io.out, "drill of {target} passed: every step works");
            EXIT_OK
        }
        n => {
            let _ = writeln!(
                io.out,
                "drill of {target} FAILED: {n} step{} would fail",
                if n == 1 { "" } else { "s" }
            );
            EXIT_FAILURE
        }
    }
}

fn request(target: &DeploymentRef, to: Target, trigger: Trigger) -> RollbackRequest {
    let mut r = RollbackRequest::new(&target.namespace, &target.name, to, trigger);
    r.reason = Some(DRILL_REASON.to_owned());
    r.detected_at = Some(jiff::Timestamp::now());
    r
}

fn cli_trigger() -> Trigger {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default();
    Trigger::Cli { user }
}

/// Validate, as a rollback to the previous revision would run it.
async fn validate(
    pipeline: &Pipeline,
    target: &DeploymentRef,
    list: &mut Checklist,
) -> Option<Plan> {
    let t = Instant::now();
    match pipeline
        .plan(request(target, Target::Previous, cli_trigger()))
        .await
    {
        Ok(plan) => {
            let mut summary = format!(
                "a rollback from {} to {} is allowed",
                describe_ref(&plan.from),
                describe_ref(&plan.to)
            );
            for n in &plan.notes {
                summary.push_str(&format!("; {n}"));
            }
            list.add("validate", t, Mark::Pass, summary);
            Some(plan)
        }
        Err(outcome) => {
            list.add("validate", t, Mark::Fail, outcome.why());
            None
        }
    }
}

/// Every step that can run without changing the workload.
async fn dry_drill(
    pipeline: &Pipeline,
    config: &Config,
    target: &DeploymentRef,
    list: &mut Checklist,
) {
    let plan = validate(pipeline, target, list).await;
    match &plan {
        Some(plan) => {
            backup_round_trip(pipeline, plan, list).await;
            patch_dry_run(pipeline, plan, list).await;
        }
        None => {
            for step in ["backup", "patch dry run"] {
                list.add(
                    step,
                    Instant::now(),
                    Mark::Fail,
                    "not tried: Validate refused the rollback".to_owned(),
                );
            }
        }
    }
    signals_now(pipeline, target, plan.as_ref().map(|p| &p.deployment), list).await;
    notify(config, list).await;
}

/// A backup written and read back, then deleted: it records no change, and
/// kept it would count against `backup_retention` (pushing out a real
/// incident's backup) and show in `history` as a rollback.
async fn backup_round_trip(pipeline: &Pipeline, plan: &Plan, list: &mut Checklist) {
    let t = Instant::now();
    let backups = pipeline.context().backups();
    let record = pipeline.backup_record(plan);
    let name = match backups.write(&plan.deployment, &record).await {
        Ok(n) => n,
        Err(e) => return list.add("backup", t, Mark::Fail, e.to_string()),
    };
    let full = format!("{}/{name}", backups.namespace());
    let read = backups.get(&name).await;
    let deleted = backups.delete(&name).await;
    let (mark, summary) = match read {
        Err(e) => (
            Mark::Fail,
            format!("wrote ConfigMap {full} but cannot read it back: {e}"),
        ),
        Ok(b) if b.deployment.spec != plan.deployment.spec => (
            Mark::Fail,
            format!("ConfigMap {full} read back holds another Deployment spec than was written"),
        ),
        Ok(b) if b.record.as_ref() != Some(&record) => (
            Mark::Fail,
            format!("ConfigMap {full} read back has a missing or different rollback record"),
        ),
        Ok(_) => match &deleted {
            Ok(()) => (
                Mark::Pass,
                format!("wrote ConfigMap {full}, read it back (Deployment and record match), deleted it"),
            ),
            Err(e) => (
                Mark::Warn,
                format!("wrote ConfigMap {full} and read it back, but it stays: {e}; delete it by hand"),
            ),
        },
    };
    list.add("backup", t, mark, summary);
}

/// The rollback patch with `dryRun=All`: the API server checks it and
/// stores nothing, which a second read confirms.
async fn patch_dry_run(pipeline: &Pipeline, plan: &Plan, list: &mut Checklist) {
    let t = Instant::now();
    let (would, ops) = match pipeline.update_dry_run(plan).await {
        Ok(v) => v,
        Err(why) => return list.add("patch dry run", t, Mark::Fail, why),
    };
    let would_images = would
        .spec
        .as_ref()
        .map(|s| revision::images(&s.template))
        .unwrap_or_default();
    if would_images != plan.to.images {
        return list.add(
            "patch dry run",
            t,
            Mark::Fail,
            format!(
                "the API server accepted the patch, but the template would run {} instead of {}",
                would_images.join(", "),
                plan.to.images.join(", ")
            ),
        );
    }
    let reader = crate::pipeline::Reader::new(pipeline.context().client.clone(), API_TIMEOUT);
    let unchanged = match reader
        .deployment(&plan.request.namespace, &plan.request.name)
        .await
    {
        Ok(Some(now)) => {
            same_template(&now, &plan.deployment)
                && now.metadata.generation == plan.deployment.metadata.generation
        }
        _ => false,
    };
    if !unchanged {
        return list.add(
            "patch dry run",
            t,
            Mark::Fail,
            format!(
                "after the dryRun=All patch {} has another template or generation (changed meanwhile, or the API server did not honour dryRun)",
                plan.target()
            ),
        );
    }
    list.add(
        "patch dry run",
        t,
        Mark::Pass,
        format!(
            "the API server accepted the rollback patch ({} operations, dryRun=All): the template would run {}; nothing stored",
            ops.len(),
            plan.to.images.join(", ")
        ),
    );
}

fn same_template(a: &Deployment, b: &Deployment) -> bool {
    let t = |d: &Deployment| {
        d.spec
            .as_ref()
            .map(|s| revision::template_without_hash(&s.template))
    };
    t(a) == t(b)
}

/// Every signal of the Deployment's policy, evaluated now.
async fn signals_now(
    pipeline: &Pipeline,
    target: &DeploymentRef,
    known: Option<&Deployment>,
    list: &mut Checklist,
) {
    let t = Instant::now();
    let reader = crate::pipeline::Reader::new(pipeline.context().client.clone(), API_TIMEOUT);
    let d = match known {
        Some(d) => d.clone(),
        None => match reader.deployment(&target.namespace, &target.name).await {
            Ok(Some(d)) => d,
            Ok(None) => {
                return list.add(
                    "signals",
                    t,
                    Mark::Fail,
                    format!("{target}: Deployment not found; check the namespace and name"),
                )
            }
            Err(e) => return list.add("signals", t, Mark::Fail, e.to_string()),
        },
    };
    let policy = pipeline.context().policy_for(&d);
    let now = jiff::Timestamp::now();
    let checks = match reader
        .checklist(&d, now, &policy, pipeline.context().signals.as_ref(), now)
        .await
    {
        Ok(c) => c,
        Err(e) => return list.add("signals", t, Mark::Fail, e.to_string()),
    };
    let mut details = vec![checks.ready_line.clone()];
    let (mut fail, mut inconclusive) = (0, 0);
    for r in &checks.results {
        if r.outcome.is_fail() {
            fail += 1;
        } else if r.outcome.is_inconclusive() {
            inconclusive += 1;
        }
        details.push(r.describe());
    }
    let n = match checks.results.len() {
        1 => "1 signal".to_owned(),
        n => format!("{n} signals"),
    };
    let (mark, summary) = if fail > 0 || !checks.ready_ok {
        (
            Mark::Fail,
            format!("{n} evaluated: {fail} fail now, so this is no healthy baseline to drill on"),
        )
    } else if inconclusive > 0 {
        (
            Mark::Warn,
            format!("{n} evaluated: {inconclusive} cannot judge now (missing data never rolls back: check the source)"),
        )
    } else {
        (Mark::Pass, format!("{n} evaluated, all pass"))
    };
    list.add_with("signals", t, mark, summary, details);
}

/// A marked test message through each `[[notify]]` sink.
async fn notify(config: &Config, list: &mut Checklist) {
    let t = Instant::now();
    if config.notify.is_empty() {
        return list.add(
            "notify",
            t,
            Mark::Warn,
            "no [[notify]] sink is configured: nobody would be told of a rollback".to_owned(),
        );
    }
    let policy = crate::report::notify::RetryPolicy::default();
    match crate::report::notify::send_test(config, None, &policy).await {
        Ok(results) => {
            let failed = results
                .iter()
                .filter(|r| r.report.result != crate::report::notify::DeliveryResult::Delivered)
                .count();
            let details = results.iter().map(|r| r.to_string()).collect();
            let (mark, summary) = if failed == 0 {
                (
                    Mark::Pass,
                    format!("a marked test message reached all {} sinks", results.len()),
                )
            } else {
                (
                    Mark::Fail,
                    format!(
                        "{failed} of {} sinks did not take the test message",
                        results.len()
                    ),
                )
            };
            list.add_with("notify", t, mark, summary, details);
        }
        Err(e) => list.add("notify", t, Mark::Fail, e.to_string()),
    }
}

/// The runbook's staging drill: roll back to the previous revision and
/// verify, roll forward to the original template and verify, and time both.
async fn live_drill(pipeline: &Pipeline, target: &DeploymentRef, list: &mut Checklist) {
    let Some(plan) = validate(pipeline, target, list).await else {
        return;
    };
    if plan.dry_run {
        let t = Instant::now();
        return list.add(
            "roll back",
            t,
            Mark::Fail,
            "dry_run is on for this target (config or policy): a live drill would change nothing; drill without --live, or turn dry_run off for the staging target".to_owned(),
        );
    }
    let original = plan.deployment.clone();
    let Some(original_template) = original.spec.as_ref().map(|s| s.template.clone()) else {
        return list.add(
            "roll back",
            Instant::now(),
            Mark::Fail,
            format!("{target} has no pod template"),
        );
    };
    let started = Instant::now();
    let back = pipeline.execute(plan).await;
    let rolled_back = back.result == RollbackResult::Succeeded;
    list.add(
        "roll back",
        started,
        if rolled_back { Mark::Pass } else { Mark::Fail },
        if rolled_back {
            format!(
                "rolled back to {} and verified; backup {}",
                back.incident
                    .to
                    .as_ref()
                    .map(describe_ref)
                    .unwrap_or_default(),
                back.incident.backup.as_deref().unwrap_or("-")
            )
        } else {
            format!("rollback {}: {}", back.result, back.why())
        },
    );
    // Put the original back whenever the template moved, even when the
    // rollback did not verify: a drill must not leave staging elsewhere.
    let reader = crate::pipeline::Reader::new(pipeline.context().client.clone(), API_TIMEOUT);
    let moved = match reader.deployment(&target.namespace, &target.name).await {
        Ok(Some(now)) => !same_template(&now, &original),
        // Unreadable: try; Validate reads it again and says why not.
        _ => true,
    };
    if !moved {
        return;
    }
    let backup = back.incident.backup.clone().unwrap_or_default();
    let forward_started = Instant::now();
    let mut forward = request(
        target,
        Target::Template {
            backup: backup.clone(),
            template: Box::new(original_template),
        },
        Trigger::Restore { backup },
    );
    // The drill's own rollback started the cooldown; the way back to the
    // original must not wait for it, nor count against the budget.
    let mut policy = pipeline.context().policy_for(&original);
    policy.cooldown = Duration::ZERO;
    policy.max_rollbacks_per_window = u32::MAX;
    forward.policy = Some(policy);
    let ahead = pipeline.run(forward).await;
    let forward_ok = ahead.result == RollbackResult::Succeeded;
    list.add(
        "roll forward",
        forward_started,
        if forward_ok { Mark::Pass } else { Mark::Fail },
        if forward_ok {
            format!(
                "rolled forward to {} and verified",
                ahead
                    .incident
                    .to
                    .as_ref()
                    .map(describe_ref)
                    .unwrap_or_default()
            )
        } else {
            format!("roll forward {}: {}", ahead.result, ahead.why())
        },
    );
    let t = Instant::now();
    let (mark, summary) = match reader.deployment(&target.namespace, &target.name).await {
        Ok(Some(now)) if same_template(&now, &original) => (
            Mark::Pass,
            format!("{target} runs its original template again"),
        ),
        Ok(Some(_)) => (
            Mark::Fail,
            format!("{target} does not run its original template: see `rollback-watchdog history {target}` and restore by hand"),
        ),
        Ok(None) => (Mark::Fail, format!("{target}: Deployment not found")),
        Err(e) => (Mark::Fail, e.to_string()),
    };
    let timings = if rolled_back && forward_ok {
        vec![
            format!(
                "time to roll back: {} (decision to the previous revision verified)",
                seconds(forward_started.duration_since(started))
            ),
            format!(
                "time to recover:   {} (decision to the original template verified again)",
                seconds(started.elapsed())
            ),
        ]
    } else {
        Vec::new()
    };
    list.add_with("original", t, mark, summary, timings);
}
