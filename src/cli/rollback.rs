//! The pipeline's subcommands: `rollback`, `restore`, `history` and
//! `validate` (what an SRE types during an incident instead of the
//! runbook's `rollback.sh` and `validate_deployment.sh`). Progress goes to
//! stderr, the result to stdout; exit codes are those of [`crate::cli`].
//! They must never change anything without `--yes` or a confirmation typed
//! on a terminal, and never print a bare error: every failure names the
//! object and what to do.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::{Client, ResourceExt};

use crate::cli::setup::setup;
use crate::cli::{
    DeploymentRef, RestoreArgs, RollbackArgs, RollbackTo, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK,
};
use crate::config::Config;
use crate::k8s::keys;
use crate::observe::blocklist;
use crate::observe::revision::{self, Revision};
use crate::pipeline::backup::{Backup, Backups, Record};
use crate::pipeline::{
    self, describe_ref, Context, Pipeline, Plan, Reader, RollbackOutcome, RollbackRequest,
    RollbackResult, Target, API_TIMEOUT,
};
use crate::report::incident::{IncidentSink, Trigger};

/// Where the command's words go.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Whether a person can answer a question on stdin.
    pub terminal: bool,
    /// Reads the answer to a confirmation question.
    pub answer: Box<dyn FnMut() -> String + 'a>,
}

impl<'a> Io<'a> {
    /// `out` and `err`, with questions answered on the process's stdin.
    pub fn with_stdin(out: &'a mut dyn Write, err: &'a mut dyn Write) -> Io<'a> {
        Io {
            out,
            err,
            terminal: std::io::stdin().is_terminal(),
            answer: Box::new(|| {
                let mut line = String::new();
                let _ = std::io::stdin().lock().read_line(&mut line);
                line
            }),
        }
    }
}

/// The Deployment `target`, or the exit code after saying why it cannot
/// be read (not found names the object and what to check).
async fn fetch_deployment(
    reader: &Reader,
    target: &DeploymentRef,
    err: &mut dyn Write,
) -> Result<Deployment, u8> {
    match reader.deployment(&target.namespace, &target.name).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => {
            let _ = writeln!(
                err,
                "error: {target}: Deployment not found; check the namespace and name"
            );
            Err(EXIT_FAILURE)
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

fn user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_default()
}

fn pipeline(
    client: Client,
    config: Config,
    sink: Arc<dyn IncidentSink>,
    err: &mut dyn Write,
) -> Result<Pipeline, u8> {
    let ctx = match Context::new(client, Arc::new(config), sink) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return Err(EXIT_CONFIG);
        }
    };
    // Progress on stderr, one line per change.
    let ctx = ctx.with_progress(Arc::new(|p: &pipeline::Progress| {
        eprintln!("waiting: {p}");
    }));
    Ok(Pipeline::new(ctx))
}

fn refuse_without_terminal(what: &str, io: &mut Io) -> u8 {
    let _ = writeln!(
        io.err,
        "refusing to {what} without confirmation: stdin is not a terminal; pass --yes to confirm (nothing was changed)"
    );
    EXIT_FAILURE
}

/// `rollback NS/NAME previous|REVISION|IMAGE_TAG`.
pub async fn rollback(
    config_path: &Path,
    target: &DeploymentRef,
    args: &RollbackArgs,
    sink: Arc<dyn IncidentSink>,
    io: &mut Io<'_>,
) -> u8 {
    if !args.yes && !args.dry_run && !io.terminal {
        return refuse_without_terminal(&format!("roll back {target}"), io);
    }
    let to = match &args.to {
        RollbackTo::Previous => Target::Previous,
        RollbackTo::Revision(n) => match i64::try_from(*n) {
            Ok(n) => Target::Revision(n),
            Err(_) => {
                let _ = writeln!(io.err, "error: revision {n} is too large");
                return EXIT_CONFIG;
            }
        },
        RollbackTo::ImageTag(tag) => Target::ImageTag {
            container: args.container.clone(),
            tag: tag.clone(),
        },
    };
    let mut request = RollbackRequest::new(
        &target.namespace,
        &target.name,
        to,
        Trigger::Cli { user: user() },
    );
    request.reason = args.reason.clone();
    request.dry_run = args.dry_run;
    request.detected_at = Some(jiff::Timestamp::now());
    run_request(config_path, request, args.yes, sink, io).await
}

/// `restore BACKUP`: the backed-up template through the same pipeline.
pub async fn restore(
    config_path: &Path,
    args: &RestoreArgs,
    sink: Arc<dyn IncidentSink>,
    io: &mut Io<'_>,
) -> u8 {
    if !args.yes && !args.dry_run && !io.terminal {
        return refuse_without_terminal(&format!("restore backup {}", args.backup), io);
    }
    let (config, client) = match setup(config_path, io.err).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let backups = Backups::new(client, &config.watchdog.namespace, API_TIMEOUT);
    let name = args
        .backup
        .rsplit('/')
        .next()
        .unwrap_or(&args.backup)
        .to_owned();
    let backup = match backups.get(&name).await {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(io.err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let (Some(ns), name_of) = (backup.deployment.namespace(), backup.deployment.name_any()) else {
        let _ = writeln!(
            io.err,
            "error: backup {} holds a Deployment without a namespace",
            backup.name
        );
        return EXIT_FAILURE;
    };
    let Some(template) = backup.deployment.spec.as_ref().map(|s| s.template.clone()) else {
        let _ = writeln!(
            io.err,
            "error: backup {} holds a Deployment without a pod template",
            backup.name
        );
        return EXIT_FAILURE;
    };
    let full = format!("{}/{}", backup.namespace, backup.name);
    let mut request = RollbackRequest::new(
        &ns,
        &name_of,
        Target::Template {
            backup: full.clone(),
            template: Box::new(template),
        },
        Trigger::Restore { backup: full },
    );
    request.dry_run = args.dry_run;
    request.detected_at = Some(jiff::Timestamp::now());
    run_request(config_path, request, args.yes, sink, io).await
}

async fn run_request(
    config_path: &Path,
    request: RollbackRequest,
    yes: bool,
    sink: Arc<dyn IncidentSink>,
    io: &mut Io<'_>,
) -> u8 {
    let (config, client) = match setup(config_path, io.err).await {
        Ok(both) => both,
        Err(code) => return code,
    };
    let pipeline = match pipeline(client, config, sink, io.err) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let plan = match pipeline.plan(request).await {
        Ok(plan) => plan,
        Err(outcome) => {
            print_outcome(&outcome, io.out);
            let _ = writeln!(io.err, "not rolled back: {}", outcome.why());
            return EXIT_FAILURE;
        }
    };
    if !yes && !plan.dry_run && !confirm(&plan, io) {
        let _ = writeln!(
            io.err,
            "not rolled back: not confirmed (nothing was changed)"
        );
        return EXIT_FAILURE;
    }
    let outcome = pipeline.execute(plan).await;
    print_outcome(&outcome, io.out);
    match outcome.result {
        RollbackResult::Succeeded | RollbackResult::WouldRollBack => EXIT_OK,
        _ => {
            let _ = writeln!(io.err, "rollback {}: {}", outcome.result, outcome.why());
            EXIT_FAILURE
        }
    }
}

fn confirm(plan: &Plan, io: &mut Io) -> bool {
    if !io.terminal {
        return false;
    }
    let _ = writeln!(
        io.err,
        "About to roll back {} from {} to {}.\nReason: {}{}\nType 'yes' to proceed: ",
        plan.target(),
        describe_ref(&plan.from),
        describe_ref(&plan.to),
        plan.reason,
        plan.notes
            .iter()
            .map(|n| format!("\nNote: {n}"))
            .collect::<String>()
    );
    let _ = io.err.flush();
    matches!((io.answer)().trim(), "yes" | "y" | "YES" | "Yes")
}

/// The incident summary on stdout.
pub fn print_outcome(outcome: &RollbackOutcome, out: &mut dyn Write) {
    let i = &outcome.incident;
    let _ = writeln!(out, "{}: {}", i.target(), outcome.result);
    if let (Some(from), Some(to)) = (&i.from, &i.to) {
        let _ = writeln!(out, "  from:    {}", describe_ref(from));
        let _ = writeln!(
            out,
            "  to:      {}{}",
            describe_ref(to),
            if to.known_good { " (known-good)" } else { "" }
        );
    }
    let _ = writeln!(out, "  reason:  {}", i.reason);
    if let Some(e) = &i.error {
        let _ = writeln!(out, "  error:   {e}");
    }
    if let Some(b) = &i.backup {
        let _ = writeln!(out, "  backup:  {b}");
    }
    let _ = writeln!(out, "  steps:");
    for s in &outcome.steps {
        let _ = writeln!(
            out,
            "    {:<9} {:<9} {}",
            s.step.as_str(),
            s.outcome.as_str(),
            s.summary
        );
    }
    if outcome.result == RollbackResult::WouldRollBack {
        let _ = writeln!(out, "  would patch (JSON Patch):");
        for op in &outcome.patch {
            let _ = writeln!(out, "    {op}");
        }
    }
}

/// `history NS/NAME`: revisions like `kubectl rollout history`, with
/// marks, then the incident records from the backups.
pub async fn history(
    config_path: &Path,
    target: &DeploymentRef,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let (config, client) = match setup(config_path, err).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let reader = Reader::new(client.clone(), API_TIMEOUT);
    let d = match fetch_deployment(&reader, target, err).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let replicasets = match reader.replicasets(&d).await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let backups = match Backups::new(client, &config.watchdog.namespace, API_TIMEOUT)
        .list(&target.namespace, &target.name)
        .await
    {
        Ok(b) => b,
        Err(e) => {
            let _ = writeln!(err, "warning: {e}");
            Vec::new()
        }
    };
    print_revisions(target, &d, &replicasets, &backups, out);
    let _ = writeln!(out);
    print_records(&config.watchdog.namespace, &backups, out);
    EXIT_OK
}

/// The revision table of `history`: each ReplicaSet `d` controls, with
/// what the watchdog knows of it.
fn print_revisions(
    target: &DeploymentRef,
    d: &Deployment,
    replicasets: &[Arc<ReplicaSet>],
    backups: &[Backup],
    out: &mut dyn Write,
) {
    let uid = d.uid().unwrap_or_default();
    let mut revisions: Vec<(Revision, Option<String>)> = replicasets
        .iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .filter_map(|rs| {
            Revision::of(rs).map(|r| (r, rs.annotations().get(keys::CHANGE_CAUSE).cloned()))
        })
        .collect();
    revisions.sort_by_key(|(r, _)| r.number);
    let current = match revision::rollout(d, replicasets) {
        revision::Rollout::Known { current, .. } => Some(current.number),
        revision::Rollout::Pending { .. } => None,
    };
    let known_good = revision::known_good_of(d).ok().flatten();
    let blocked = blocklist::entries(d);
    let records: Vec<&Record> = backups.iter().filter_map(|b| b.record.as_ref()).collect();

    let _ = writeln!(out, "deployment.apps/{}", target.name);
    let _ = writeln!(out, "REVISION  IMAGES                          MARKS                               CHANGE-CAUSE");
    for (r, cause) in &revisions {
        let hash = &r.pod_template_hash;
        let marks = [
            ("current", Some(r.number) == current),
            (
                "known-good",
                known_good
                    .as_ref()
                    .is_some_and(|k| &k.pod_template_hash == hash),
            ),
            (
                "blocklisted",
                blocked.iter().any(|e| &e.pod_template_hash == hash),
            ),
            (
                "rolled-back-from",
                records
                    .iter()
                    .any(|rec| &rec.from.pod_template_hash == hash),
            ),
            (
                "rolled-back-to",
                records.iter().any(|rec| &rec.to.pod_template_hash == hash),
            ),
        ];
        let marks: Vec<&str> = marks
            .iter()
            .filter(|(_, on)| *on)
            .map(|(word, _)| *word)
            .collect();
        let marks = if marks.is_empty() {
            "-".to_owned()
        } else {
            marks.join(",")
        };
        let _ = writeln!(
            out,
            "{:<9} {:<31} {:<35} {}",
            r.number,
            r.images.join(","),
            marks,
            cause.as_deref().unwrap_or("<none>")
        );
    }
}

/// The rollback records of `history`, one line per backup.
fn print_records(namespace: &str, backups: &[Backup], out: &mut dyn Write) {
    if backups.is_empty() {
        let _ = writeln!(out, "No rollback records in namespace {namespace}.");
        return;
    }
    let _ = writeln!(out, "Rollback records (backups in namespace {namespace}):");
    for b in backups {
        let Some(rec) = &b.record else {
            let _ = writeln!(out, "{}  (no record)", b.name);
            continue;
        };
        let result = b
            .result
            .as_ref()
            .and_then(|v| v.get("kind"))
            .and_then(|k| k.as_str())
            .unwrap_or("unfinished");
        let by = match &rec.trigger {
            Trigger::Verdict => "verdict".to_owned(),
            Trigger::Cli { user } => format!("cli:{user}"),
            Trigger::Annotation { .. } => "annotation".to_owned(),
            Trigger::Restore { backup } => format!("restore:{backup}"),
            Trigger::Report => "report".to_owned(),
        };
        let _ = writeln!(
            out,
            "{}  {}  by {by}  {} -> {}  result: {result}  reason: {}",
            b.name,
            rec.at,
            describe_ref(&rec.from),
            describe_ref(&rec.to),
            rec.reason
        );
    }
}

/// `validate NS/NAME`: the runbook's verification checklist, now. Exit 0
/// when the rollout is complete, every pod is ready and no signal fails
/// (Inconclusive does not fail: missing data is not evidence).
pub async fn validate(
    config_path: &Path,
    target: &DeploymentRef,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let (config, client) = match setup(config_path, err).await {
        Ok(v) => v,
        Err(code) => return code,
    };
    let reader = Reader::new(client, API_TIMEOUT);
    let d = match fetch_deployment(&reader, target, err).await {
        Ok(d) => d,
        Err(code) => return code,
    };
    let signals = match crate::signals::Signals::from_config(&config) {
        Ok(s) => Some(s),
        Err(e) => {
            let _ = writeln!(err, "warning: {e}; checking pods only");
            None
        }
    };
    let policy = pipeline::policy_for(&config, &d);
    let now = jiff::Timestamp::now();
    let checks = match reader
        .checklist(&d, now, &policy, signals.as_ref(), now)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let rolled_out = revision::fully_rolled_out(&d);
    let mark = |ok: bool| if ok { "PASS" } else { "FAIL" };
    let _ = writeln!(out, "{target}");
    let _ = writeln!(
        out,
        "  {}  rollout complete (kubectl rollout status)",
        mark(rolled_out)
    );
    let _ = writeln!(out, "  {}  {}", mark(checks.ready_ok), checks.ready_line);
    for r in &checks.results {
        let word = if r.outcome.is_fail() {
            "FAIL"
        } else if r.outcome.is_inconclusive() {
            "----"
        } else {
            "PASS"
        };
        let _ = writeln!(out, "  {word}  {}", r.describe());
    }
    if rolled_out && checks.passed() {
        let _ = writeln!(out, "{target} passes the verification checklist");
        EXIT_OK
    } else {
        let _ = writeln!(out, "{target} FAILS the verification checklist");
        EXIT_FAILURE
    }
}

/// Where the CLI's decisions go until the notifiers are wired in: the log.
pub fn default_sink() -> Arc<dyn IncidentSink> {
    Arc::new(LogSink)
}

/// Writes each incident as a structured log line.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogSink;

impl IncidentSink for LogSink {
    fn emit(&self, incident: &crate::report::incident::Incident) {
        tracing::info!(
            target = %incident.target(),
            kind = ?incident.kind,
            reason = %incident.reason,
            "incident"
        );
    }
}
