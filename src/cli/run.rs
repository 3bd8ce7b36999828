//! The daemon's subcommands: `run` (the watchdog until SIGTERM), `status`
//! (ask a running one, or evaluate once) and `self-check`. Exit codes are
//! those of [`crate::cli`]. `run` must never write once it has lost the
//! Lease or begun to stop, and never go on without its leader election.

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cli::setup::{load_with, setup};
use crate::cli::{CliError, OutputFormat, StatusArgs, EXIT_FAILURE, EXIT_OK};
use crate::config::{Config, Loader, MissingSecrets};
use crate::k8s::connect;
use crate::report::notify::Notifier;
use crate::report::status::{self, Role, StatusReport, StatusVerdict};
use crate::runtime::admin::{self, AdminServer};
use crate::runtime::app::{App, PipelineOptions, Record};
use crate::runtime::daemon::{Daemon, DaemonError};
use crate::runtime::lease::{Elector, Leadership, LeaseError};
use crate::runtime::selfcheck;
use crate::signals::misconfigured::SurveyLine;

/// `rollback-watchdog run`: the daemon, until `shutdown`.
pub async fn run(
    config_path: &Path,
    err: &mut (dyn Write + Send),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> u8 {
    let (config, client) = match setup(config_path, err).await {
        Ok((config, client)) => (Arc::new(config), client),
        Err(code) => return code,
    };
    if selfcheck::at_startup(&config, &client, err).await.is_err() {
        return EXIT_FAILURE;
    }
    let app = App::new(config, client);
    let running = match Running::start(&app).await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    running.run(&app, shutdown, err).await
}

/// What `run` started, in the order it starts them.
struct Running {
    admin: AdminServer,
    notifier: Arc<Notifier>,
    leadership: Leadership,
    elector: Option<ElectorTask>,
    daemon: Daemon,
}

/// The leader election running in the background.
struct ElectorTask {
    task: JoinHandle<Result<(), LeaseError>>,
    stop: watch::Sender<bool>,
}

impl ElectorTask {
    fn spawn(elector: Elector) -> ElectorTask {
        let (stop, stopped) = watch::channel(false);
        ElectorTask {
            task: tokio::spawn(elector.run(stopped)),
            stop,
        }
    }
}

/// How the loop ended.
struct Stopped {
    result: Result<(), DaemonError>,
    /// Why the leader election stopped it, if it did.
    lease_failure: Option<String>,
    /// When stopping began: the shutdown grace counts from here.
    began: Option<Instant>,
}

impl Running {
    async fn start(app: &App) -> Result<Running, CliError> {
        let admin = admin::start(app.config().admin.listen, app.admin().clone()).await?;
        let notifier = Arc::new(app.notifier(Record::AuditLog).await?);
        // Leader election: only the Lease holder acts; the others evaluate.
        let (leadership, elector) = app.leadership();
        let elector = elector.map(ElectorTask::spawn);
        let daemon = app
            .daemon()
            .leadership(leadership.clone())
            .pipeline(PipelineOptions::new(notifier.clone()))
            .build()?;
        Ok(Running {
            admin,
            notifier,
            leadership,
            elector,
            daemon,
        })
    }

    /// Runs the loop, then stops everything in order; the exit code.
    async fn run(
        self,
        app: &App,
        shutdown: impl Future<Output = ()> + Send + 'static,
        err: &mut (dyn Write + Send),
    ) -> u8 {
        let Running {
            admin,
            notifier,
            leadership,
            mut elector,
            daemon,
        } = self;
        let mut stopped = watch_until_stopped(daemon, &leadership, &mut elector, shutdown).await;
        // No write after this point: release the Lease so the other replica
        // takes over at once, not after lease_duration.
        leadership.revoke();
        if let Some(elector) = elector {
            if let Some(why) = release(elector, app.config()).await {
                stopped.lease_failure = Some(why);
            }
        }
        app.admin().set_shutting_down();
        // Deliver what is queued, within the shutdown grace.
        let spent = stopped.began.map(|t| t.elapsed()).unwrap_or_default();
        notifier
            .shutdown(
                app.config()
                    .watchdog
                    .shutdown_grace
                    .saturating_sub(spent)
                    .max(Duration::from_secs(2)),
            )
            .await;
        admin.stop(Duration::from_secs(5)).await;
        if let Some(why) = stopped.lease_failure {
            let _ = writeln!(err, "error: leader election: {why}");
            return EXIT_FAILURE;
        }
        match stopped.result {
            Ok(()) => EXIT_OK,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                EXIT_FAILURE
            }
        }
    }
}

/// Runs the loop until `shutdown`, or until the lease machinery dies: a
/// replica that cannot take part in the election must not go on. An
/// elector that died is taken out of `elector`.
async fn watch_until_stopped(
    daemon: Daemon,
    leadership: &Leadership,
    elector: &mut Option<ElectorTask>,
    shutdown: impl Future<Output = ()>,
) -> Stopped {
    let mut lease_failure: Option<String> = None;
    // One shutdown_grace for the whole stop: the running step, then the
    // queued notifications get what is left (at least a moment).
    let mut began: Option<Instant> = None;
    let mut died_first = false;
    let result = {
        let died = async {
            match elector.as_mut() {
                Some(e) => Some((&mut e.task).await),
                None => std::future::pending().await,
            }
        };
        tokio::pin!(shutdown);
        tokio::pin!(died);
        daemon
            .run(async {
                tokio::select! {
                    _ = &mut shutdown => {}
                    ended = &mut died => {
                        died_first = true;
                        lease_failure = Some(match ended {
                            Some(Ok(Ok(()))) => "the leader election stopped unexpectedly".to_owned(),
                            Some(Ok(Err(e))) => e.to_string(),
                            Some(Err(e)) => format!("the leader election task failed: {e}"),
                            None => String::new(),
                        });
                    }
                }
                began = Some(Instant::now());
                // No write from here on, even by a tick still running.
                leadership.revoke();
            })
            .await
    };
    if died_first {
        *elector = None;
    }
    Stopped {
        result,
        lease_failure,
        began,
    }
}

/// Tells the elector to release the Lease and waits (bounded) for it;
/// why the election failed, if it did.
async fn release(elector: ElectorTask, config: &Config) -> Option<String> {
    let _ = elector.stop.send(true);
    let limit = config.leader_election.renew_deadline * 2 + Duration::from_secs(1);
    match tokio::time::timeout(limit, elector.task).await {
        Ok(Ok(Ok(()))) => None,
        Ok(Ok(Err(e))) => Some(e.to_string()),
        Ok(Err(e)) => Some(format!("the leader election task failed: {e}")),
        Err(_) => {
            tracing::warn!("releasing the Lease took longer than {limit:?}; it expires by itself");
            None
        }
    }
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
    let app = App::new(Arc::new(config), client);
    // One evaluation acts on nothing: no Events, no known-good writes.
    let mut daemon = app
        .daemon()
        .role(Role::OneShot, Arc::new(|| false))
        .build()
        .map_err(|e| {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        })?;
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
    if prometheus.is_ok() {
        for line in check_queries(config.clone(), client.clone(), err).await {
            let _ = writeln!(
                out,
                "{:<8} {}",
                if line.ok { "ok" } else { "WARNING" },
                line.text
            );
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

/// Every target's queries asked once by a daemon that acts on nothing:
/// which return no series while traffic flows. Warnings, never a refusal.
async fn check_queries(
    config: Config,
    client: kube::Client,
    err: &mut (dyn Write + Send),
) -> Vec<SurveyLine> {
    let app = App::new(Arc::new(config), client);
    let built = app.daemon().role(Role::OneShot, Arc::new(|| false)).build();
    let mut daemon = match built {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "warning: cannot check the queries: {e}");
            return Vec::new();
        }
    };
    if let Err(e) = daemon.wait_synced(Duration::from_secs(60)).await {
        let _ = writeln!(err, "warning: cannot check the queries: {e}");
        return Vec::new();
    }
    daemon.check_queries(jiff::Timestamp::now()).await
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
