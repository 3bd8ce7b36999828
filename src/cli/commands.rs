//! The cluster-facing subcommands: `run` and `status`, and the pipeline's
//! `rollback`, `restore`, `history` and `validate` (what an SRE types during
//! an incident instead of the runbook's `rollback.sh` and
//! `validate_deployment.sh`). Progress goes to
//! stderr, the result to stdout; exit codes are those of [`crate::cli`].
//! They must never change anything without `--yes` or a confirmation typed
//! on a terminal, and never print a bare error: every failure names the
//! object and what to do.

use crate::k8s::keys;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kube::{Client, ResourceExt};

use crate::cli::{
    DeploymentRef, OutputFormat, RestoreArgs, RollbackArgs, RollbackTo, StatusArgs, EXIT_CONFIG,
    EXIT_FAILURE, EXIT_OK,
};
use crate::config::{Config, ConfigError, Loader, MissingSecrets};
use crate::k8s::connect;
use crate::observe::blocklist;
use crate::observe::revision::{self, Revision};
use crate::pipeline::backup::Backups;
use crate::pipeline::{
    self, describe_ref, Context, Pipeline, Plan, Reader, RollbackOutcome, RollbackRequest,
    RollbackResult, Target, API_TIMEOUT,
};
use crate::report::incident::{IncidentSink, Trigger};
use crate::report::metrics::Metrics;
use crate::report::status::{self, Role, StatusReport, StatusVerdict};
use crate::runtime::admin::{self, AdminState};
use crate::runtime::daemon::Daemon;
use crate::runtime::lease::{Elector, Leadership, LeaseSettings};
use crate::runtime::selfcheck;

/// Where the command's words go.
pub struct Io<'a> {
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    /// Whether a person can answer a question on stdin.
    pub terminal: bool,
    /// Reads the answer to a confirmation question.
    pub answer: &'a mut dyn FnMut() -> String,
}

impl Io<'_> {
    /// The process's stdout, stderr and stdin.
    pub fn with_std<R>(f: impl FnOnce(&mut Io) -> R) -> R {
        let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
        let mut answer = || {
            let mut line = String::new();
            let _ = std::io::stdin().lock().read_line(&mut line);
            line
        };
        let mut io = Io {
            out: &mut out,
            err: &mut err,
            terminal: std::io::stdin().is_terminal(),
            answer: &mut answer,
        };
        f(&mut io)
    }
}

/// Loads the config, printing every problem; the exit code on failure.
pub fn load_config(path: &Path, err: &mut dyn Write) -> Result<Config, u8> {
    load_with(Loader::from_file(path), path, err)
}

/// Like [`load_config`] with a loader the caller set up (the self-check
/// only warns about absent secret files).
pub fn load_with(loader: Loader, path: &Path, err: &mut dyn Write) -> Result<Config, u8> {
    match loader.load() {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            Ok(loaded.config)
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            let _ = writeln!(err, "error: {} is not a valid config:", path.display());
            for p in &problems {
                let _ = writeln!(err, "{p}");
            }
            Err(EXIT_CONFIG)
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            Err(EXIT_CONFIG)
        }
    }
}

/// The config and a client, each failure printed; the exit code on failure.
async fn setup(config_path: &Path, err: &mut dyn Write) -> Result<(Config, Client), u8> {
    let config = load_config(config_path, err)?;
    match connect().await {
        Ok(client) => Ok((config, client)),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}

/// The Deployment `target`, or the exit code after saying why it cannot
/// be read (not found names the object and what to check).
async fn fetch_deployment(
    reader: &Reader,
    target: &DeploymentRef,
    err: &mut dyn Write,
) -> Result<k8s_openapi::api::apps::v1::Deployment, u8> {
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
    args: &RollbackArgs,
    sink: Arc<dyn IncidentSink>,
    io: &mut Io<'_>,
) -> u8 {
    if !args.yes && !args.dry_run && !io.terminal {
        return refuse_without_terminal(&format!("roll back {}", args.target), io);
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
        &args.target.namespace,
        &args.target.name,
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
            let _ = writeln!(
                io.err,
                "rollback {}: {}",
                result_word(outcome.result),
                outcome.why()
            );
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

fn result_word(r: RollbackResult) -> &'static str {
    match r {
        RollbackResult::Succeeded => "succeeded",
        RollbackResult::Refused => "refused",
        RollbackResult::WouldRollBack => "dry run",
        RollbackResult::Conflict => "stopped on a conflict",
        RollbackResult::Failed => "failed",
        RollbackResult::Escalated => "ESCALATED",
        RollbackResult::HandedOver => {
            "stopped before its next write (not the leader, or shutting down)"
        }
    }
}

/// The incident summary on stdout.
pub fn print_outcome(outcome: &RollbackOutcome, out: &mut dyn Write) {
    let i = &outcome.incident;
    let _ = writeln!(out, "{}: {}", i.target(), result_word(outcome.result));
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
    let current = match revision::rollout(&d, &replicasets) {
        revision::Rollout::Known { current, .. } => Some(current.number),
        revision::Rollout::Pending { .. } => None,
    };
    let known_good = revision::known_good_of(&d).ok().flatten();
    let blocked = blocklist::entries(&d);
    let records: Vec<_> = backups.iter().filter_map(|b| b.record.clone()).collect();

    let _ = writeln!(out, "deployment.apps/{}", target.name);
    let _ = writeln!(out, "REVISION  IMAGES                          MARKS                               CHANGE-CAUSE");
    for (r, cause) in &revisions {
        let mut marks = Vec::new();
        if Some(r.number) == current {
            marks.push("current");
        }
        if known_good
            .as_ref()
            .is_some_and(|k| k.pod_template_hash == r.pod_template_hash)
        {
            marks.push("known-good");
        }
        if blocked
            .iter()
            .any(|e| e.pod_template_hash == r.pod_template_hash)
        {
            marks.push("blocklisted");
        }
        if records
            .iter()
            .any(|rec| rec.from.pod_template_hash == r.pod_template_hash)
        {
            marks.push("rolled-back-from");
        }
        if records
            .iter()
            .any(|rec| rec.to.pod_template_hash == r.pod_template_hash)
        {
            marks.push("rolled-back-to");
        }
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
    let _ = writeln!(out);
    if backups.is_empty() {
        let _ = writeln!(
            out,
            "No rollback records in namespace {}.",
            config.watchdog.namespace
        );
        return EXIT_OK;
    }
    let _ = writeln!(
        out,
        "Rollback records (backups in namespace {}):",
        config.watchdog.namespace
    );
    for b in &backups {
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
    EXIT_OK
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

/// `rollback-watchdog run`: the daemon, until `shutdown`.
pub async fn run(
    config_path: &Path,
    err: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> u8 {
    let (config, client) = match setup(config_path, err).await {
        Ok((config, client)) => (Arc::new(config), client),
        Err(code) => return code,
    };
    if selfcheck::at_startup(&config, &client, err).await.is_err() {
        return EXIT_FAILURE;
    }
    let (metrics, registry) = Metrics::new();
    let admin_state = AdminState::new(registry, config.admin.request_timeout);
    let listener = match admin::bind(config.admin.listen).await {
        Ok(l) => l,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(admin::serve(listener, admin_state.clone(), async move {
        let _ = admin_stopped.await;
    }));
    let notifier = match notifier(&config, &metrics) {
        Ok(n) => Arc::new(n),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    // Leader election: only the Lease holder acts; the others evaluate.
    let (stop_elector, elector_stop) = tokio::sync::watch::channel(false);
    let (leadership, elector) = if config.leader_election.enabled {
        let elector = Elector::new(client.clone(), LeaseSettings::from_config(&config))
            .with_gauge(metrics.leader.clone());
        tracing::info!(identity = %elector.identity(), "leader election on: this replica acts only while it holds the Lease");
        let leadership = elector.leadership();
        (leadership, Some(tokio::spawn(elector.run(elector_stop))))
    } else {
        metrics.leader.set(1);
        (Leadership::standalone(), None)
    };
    let daemon = match Daemon::new(config.clone(), client, metrics.clone(), admin_state.clone())
        .map(|d| d.with_leadership(leadership.clone()))
        .and_then(|d| d.with_pipeline(notifier.clone()))
    {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    // The loop stops on SIGTERM, or when the lease machinery dies: a
    // replica that cannot take part in the election must not go on.
    let mut elector = elector;
    let mut lease_failure: Option<String> = None;
    // One shutdown_grace for the whole stop: the running step, then the
    // queued notifications get what is left (at least a moment).
    let mut stop_began: Option<tokio::time::Instant> = None;
    let result = {
        let died = async {
            match elector.as_mut() {
                Some(task) => Some(task.await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(shutdown);
        tokio::pin!(died);
        let mut stopped = false;
        let run = daemon.run(async {
            tokio::select! {
                _ = &mut shutdown => {}
                ended = &mut died => {
                    stopped = true;
                    lease_failure = Some(match ended {
                        Some(Ok(Ok(()))) => "the leader election stopped unexpectedly".to_owned(),
                        Some(Ok(Err(e))) => e.to_string(),
                        Some(Err(e)) => format!("the leader election task failed: {e}"),
                        None => String::new(),
                    });
                }
            }
            stop_began = Some(tokio::time::Instant::now());
            // No write from here on, even by a tick still running.
            leadership.revoke();
        });
        let result = run.await;
        if stopped {
            elector = None;
        }
        result
    };
    // No write after this point: release the Lease so the other replica
    // takes over at once, not after lease_duration.
    leadership.revoke();
    if let Some(task) = elector {
        let _ = stop_elector.send(true);
        let limit = config.leader_election.renew_deadline * 2 + Duration::from_secs(1);
        match tokio::time::timeout(limit, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => lease_failure = Some(e.to_string()),
            Ok(Err(e)) => lease_failure = Some(format!("the leader election task failed: {e}")),
            Err(_) => tracing::warn!(
                "releasing the Lease took longer than {limit:?}; it expires by itself"
            ),
        }
    }
    admin_state.set_shutting_down();
    // Deliver what is queued, within the shutdown grace.
    let spent = stop_began.map(|t| t.elapsed()).unwrap_or_default();
    notifier
        .shutdown(
            config
                .watchdog
                .shutdown_grace
                .saturating_sub(spent)
                .max(Duration::from_secs(2)),
        )
        .await;
    let _ = stop_admin.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(why) = lease_failure {
        let _ = writeln!(err, "error: leader election: {why}");
        return EXIT_FAILURE;
    }
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        }
    }
}

/// The notifiers of `[[notify]]`: deliveries recorded in a ledger next to
/// the audit log (a restart never resends a decision), outcomes counted in
/// the metrics and written to the audit log.
pub fn notifier(
    config: &Config,
    metrics: &Metrics,
) -> Result<crate::report::notify::Notifier, String> {
    use crate::report::notify::{DeliveryOutcome, FileLedger, MetricsObserver};
    let audit = crate::report::audit::AuditLog::open(&config.watchdog.audit_log)
        .map_err(|e| e.to_string())?;
    let ledger_path = config
        .watchdog
        .audit_log
        .parent()
        .map(|dir| dir.join("notified.jsonl"))
        .unwrap_or_else(|| std::path::PathBuf::from("notified.jsonl"));
    let ledger = FileLedger::open(&ledger_path).map_err(|e| {
        format!(
            "{e} (the delivery ledger lives next to watchdog.audit_log: {})",
            ledger_path.display()
        )
    })?;
    crate::report::notify::Notifier::builder(&config.notify)
        .ledger(Arc::new(ledger))
        .observer(MetricsObserver(metrics.clone()))
        .observer(move |o: &DeliveryOutcome| {
            let target = o
                .incident_id
                .split('/')
                .take(2)
                .collect::<Vec<_>>()
                .join("/");
            let outcome = serde_json::to_value(o).unwrap_or_default();
            let word = outcome
                .get("result")
                .and_then(|r| r.as_str())
                .unwrap_or("delivery")
                .to_string();
            let line = crate::report::audit::AuditLine {
                time: jiff::Timestamp::now().to_string(),
                target,
                rollback: o.incident_id.clone(),
                step: "notify".into(),
                outcome: word,
                details: outcome,
            };
            if let Err(e) = audit.append(&line) {
                tracing::warn!(error = %e, "cannot write a delivery outcome to the audit log");
            }
        })
        .start()
        .inspect(|notifier| metrics.set_sinks(&notifier.sink_names()))
        .map_err(|e| e.to_string())
}

/// `rollback-watchdog status`: asks a running watchdog, or (`--once`)
/// evaluates every target itself one time. With `--once` the exit code is
/// 1 when a target is Bad or Degraded, so a CI pipeline can gate on it.
pub async fn status(
    config_path: &Path,
    args: &StatusArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let report = if args.once {
        match evaluate_once(config_path, err).await {
            Ok(r) => r,
            Err(code) => return code,
        }
    } else {
        match fetch(&args.url).await {
            Ok(r) => r,
            Err(e) => {
                let _ = writeln!(
                    err,
                    "error: cannot read {}/status: {e}; is the watchdog running there? `status --once` evaluates without it",
                    args.url.trim_end_matches('/')
                );
                return EXIT_FAILURE;
            }
        }
    };
    match args.output {
        OutputFormat::Json => match serde_json::to_string_pretty(&report) {
            Ok(text) => {
                let _ = writeln!(out, "{text}");
            }
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                return EXIT_FAILURE;
            }
        },
        OutputFormat::Table => {
            let _ = write!(out, "{}", status::render_table(&report));
        }
    }
    let bad = report
        .targets
        .iter()
        .any(|t| matches!(t.verdict, StatusVerdict::Bad | StatusVerdict::Degraded));
    if args.once && bad {
        EXIT_FAILURE
    } else {
        EXIT_OK
    }
}

async fn fetch(url: &str) -> Result<StatusReport, reqwest::Error> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    client
        .get(format!("{}/status", url.trim_end_matches('/')))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

async fn evaluate_once(config_path: &Path, err: &mut dyn Write) -> Result<StatusReport, u8> {
    let (config, client) = setup(config_path, err).await?;
    let config = Arc::new(config);
    let (metrics, registry) = Metrics::new();
    let admin_state = AdminState::new(registry, config.admin.request_timeout);
    // One evaluation acts on nothing: no Events, no known-good writes.
    let mut daemon = Daemon::new(config, client, metrics, admin_state)
        .map_err(|e| {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        })?
        .with_role(Role::OneShot, Arc::new(|| false));
    if let Err(e) = daemon.wait_synced(Duration::from_secs(60)).await {
        let _ = writeln!(err, "error: {e}");
        return Err(EXIT_FAILURE);
    }
    daemon.tick(jiff::Timestamp::now()).await;
    Ok(daemon.status())
}

/// `rollback-watchdog self-check`: the start-up check on its own, every
/// permission with its answer on `out`; exit 0 when all are granted (a
/// silent Prometheus is a warning), 1 otherwise, 2 for a bad config.
pub async fn self_check(
    config_path: &Path,
    out: &mut (dyn Write + Send),
    err: &mut (dyn Write + Send),
) -> u8 {
    let config = match load_config_for_check(config_path, err) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let client = match connect().await {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let (access, prometheus) = tokio::join!(
        selfcheck::check_access(
            &client,
            selfcheck::required(&config),
            selfcheck::REVIEW_TIMEOUT
        ),
        selfcheck::check_prometheus(&config.prometheus)
    );
    let checks = match access {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(
                err,
                "{}",
                selfcheck::review_failed(&e, &selfcheck::api_server().await)
            );
            return EXIT_FAILURE;
        }
    };
    for c in &checks {
        let _ = writeln!(
            out,
            "{:<8} {}: {}",
            if c.allowed { "ok" } else { "MISSING" },
            c.requirement.permission,
            c.requirement.why()
        );
    }
    match &prometheus {
        Ok(()) => {
            let _ = writeln!(
                out,
                "{:<8} Prometheus at {} answers",
                "ok", config.prometheus.url
            );
        }
        Err(why) => {
            let _ = writeln!(out, "{:<8} {why}", "WARNING");
        }
    }
    let missing: Vec<&selfcheck::Check> = checks.iter().filter(|c| !c.allowed).collect();
    if missing.is_empty() {
        EXIT_OK
    } else {
        let _ = write!(err, "{}", selfcheck::describe_missing(&missing));
        EXIT_FAILURE
    }
}

/// The config as `run` would load it, except that absent secret files
/// are warnings: the check needs none of them, and an operator may run it
/// away from the pod where the Secret is mounted.
fn load_config_for_check(path: &Path, err: &mut dyn Write) -> Result<Config, u8> {
    load_with(
        Loader::from_file(path).missing_secrets(MissingSecrets::Warn),
        path,
        err,
    )
}
