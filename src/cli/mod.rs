//! The command line: every subcommand with its arguments and help, and
//! [`dispatch`], which runs one. The handlers live one file per family:
//! [`config`] (`check-config`, `notify-test`), [`run`] (`run`, `status`,
//! `self-check`), [`rollback`] (`rollback`, `restore`, `history`,
//! `validate`). [`target`] reads a Deployment argument the way kubectl
//! does. Nothing below `cli` may call into it.

pub mod config;
pub mod drill;
pub mod rollback;
pub mod run;
pub mod setup;
pub mod target;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::runtime::admin::AdminError;
use crate::runtime::app::AppError;
use crate::runtime::telemetry::LogFormat;
#[cfg(feature = "sim")]
use crate::sim::standalone::StandaloneError;

/// Success.
pub const EXIT_OK: u8 = 0;
/// A runtime failure (cluster unreachable, rollback failed...).
pub const EXIT_FAILURE: u8 = 1;
/// The config (or the command line) is wrong: fix it and run again.
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "rollback-watchdog",
    version,
    about = "Watches Kubernetes Deployments after each rollout and rolls a bad revision back by itself",
    long_about = "Watches Kubernetes Deployments after each rollout, judges the new revision from \
                  Prometheus metrics, health probes and pod states, and when it is bad runs the \
                  rollback runbook: validate, back up, roll back, wait, verify, audit, notify.",
    after_help = "Exit codes: 0 success, 1 runtime failure, 2 invalid config or command line."
)]
pub struct Cli {
    /// Config file (TOML). Keys can also be set with ROLLBACK_WATCHDOG_<SECTION>__<KEY>.
    #[arg(long, global = true, value_name = "PATH", env = "ROLLBACK_WATCHDOG_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,

    /// Log line format, written to stderr.
    #[arg(long, global = true, value_enum, env = "ROLLBACK_WATCHDOG_LOG_FORMAT", default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,

    /// Log filter, RUST_LOG syntax (e.g. "info,rollback_watchdog=debug"); overrides RUST_LOG.
    #[arg(
        long,
        global = true,
        value_name = "FILTER",
        env = "ROLLBACK_WATCHDOG_LOG"
    )]
    pub log: Option<String>,

    /// Kubeconfig file to connect with (as kubectl's --kubeconfig); default: KUBECONFIG, else ~/.kube/config, else in-cluster.
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,

    /// Kubeconfig context to connect with (as kubectl's --context); default: the current context.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,

    /// Namespace of a Deployment given as NAME or deployment/NAME (as kubectl's -n).
    #[arg(short = 'n', long, global = true, value_name = "NS")]
    pub namespace: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch the configured Deployments and roll back bad revisions (the daemon).
    Run,
    /// Check a config file and print the effective config with secrets redacted.
    CheckConfig(CheckConfigArgs),
    /// Check against the cluster what `run` checks at start-up: every RBAC permission the config needs, and Prometheus.
    SelfCheck,
    /// Show each target's revision, observation window, signals and verdict.
    Status(StatusArgs),
    /// Show a Deployment's revisions (known-good, blocklisted, rolled back) and its incident records.
    History {
        #[arg(value_name = "NS/NAME", help = DEPLOYMENT_HELP)]
        target: DeploymentArg,
    },
    /// Roll a Deployment back through the full pipeline (validate, back up, patch, wait, verify, audit, notify).
    Rollback(RollbackArgs),
    /// Put a backed-up Deployment template back, through the same pipeline.
    Restore(RestoreArgs),
    /// Run the runbook's verification checklist on a Deployment now (exit 0 pass, 1 fail).
    Validate {
        #[arg(value_name = "NS/NAME", help = DEPLOYMENT_HELP)]
        target: DeploymentArg,
    },
    /// The runbook's rollback drill: every pipeline step that changes nothing, timed (--live: a real rollback and roll forward).
    Drill(DrillArgs),
    /// Send a clearly marked test message through each configured notification sink.
    NotifyTest {
        /// Only the sink at this index of [[notify]] (0-based).
        #[arg(long, value_name = "N")]
        sink: Option<usize>,
    },
    /// The whole story on the simulated cluster: a bad deploy detected and rolled back, in under a minute.
    #[cfg(feature = "sim")]
    Demo(DemoArgs),
    /// Run the simulated cluster on its own, for kubectl and for `run`, until Ctrl-C.
    #[cfg(feature = "sim")]
    Sim(SimArgs),
    /// Print a shell completion script (e.g. `source <(rollback-watchdog completion bash)`).
    Completion {
        #[arg(value_enum)]
        shell: CompletionShell,
    },
}

/// The help of every Deployment argument.
const DEPLOYMENT_HELP: &str =
    "The Deployment: NAMESPACE/NAME, or NAME or deployment/NAME with -n NAMESPACE";

/// The shells `completion` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// Config file to check; overrides --config.
    #[arg(value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// Treat secret files and variables that are absent here as errors, not warnings
    /// (use it where the watchdog runs, with its Secrets mounted).
    #[arg(long)]
    pub strict: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Admin URL of a running watchdog.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
    /// Do not ask a running watchdog: connect to the cluster and Prometheus and evaluate every target once.
    #[arg(long)]
    pub once: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    #[arg(value_name = "NS/NAME", help = DEPLOYMENT_HELP)]
    pub target: DeploymentArg,
    /// `previous` (last known-good, else the highest older revision not blocklisted),
    /// a revision number, or an image tag to set on the container.
    #[arg(value_name = "previous|REVISION|IMAGE_TAG")]
    pub to: RollbackTo,
    /// The container whose image an IMAGE_TAG replaces (default: the first).
    #[arg(long, value_name = "NAME")]
    pub container: Option<String>,
    /// Why, for the change-cause annotation, the audit record and the notification.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
    /// Validate and print the patch, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct DrillArgs {
    #[arg(value_name = "NS/NAME", help = DEPLOYMENT_HELP)]
    pub target: DeploymentArg,
    /// For a staging Deployment: roll back to the previous revision for real,
    /// verify, roll forward to the original template, verify, and time both.
    #[arg(long)]
    pub live: bool,
    /// Confirm --live (it is refused without it).
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup ConfigMap's name, as listed by `history`.
    #[arg(value_name = "BACKUP")]
    pub backup: String,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Validate and print the patch, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Act as if Prometheus were not installed: judge from the pod and health signals only
    /// (the bad v2 then crash-loops instead of answering errors). The variable takes 1/0, true/false.
    #[arg(long, env = "ROLLBACK_WATCHDOG_DEMO_NO_PROMETHEUS", value_parser = clap::builder::BoolishValueParser::new())]
    pub no_prometheus: bool,
}

#[cfg(feature = "sim")]
impl DemoArgs {
    pub fn options(&self) -> crate::demo::DemoOptions {
        crate::demo::DemoOptions {
            no_prometheus: self.no_prometheus,
        }
    }
}

/// Arguments of `rollback-watchdog sim`, handed as they are to the
/// simulated cluster's standalone runner.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address of the simulated API server; port 0 picks a free one (the kubeconfig names it).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Write a kubeconfig for the simulated cluster here.
    #[arg(long, value_name = "PATH")]
    pub kubeconfig_out: Option<PathBuf>,
    /// Write a Prometheus config that scrapes exactly the live app pods here.
    #[arg(long, value_name = "PATH")]
    pub prometheus_config_out: Option<PathBuf>,
    /// Append every API request (method, path, query, content type, status) as JSON lines here.
    #[arg(long, value_name = "PATH")]
    pub request_log: Option<PathBuf>,
    /// Behaviour table (TOML: image -> ready delay, crash mode, error ratio, latency, request rate,
    /// /health status while warming up, Poisson or exact traffic; timed error bursts; the traffic seed).
    /// Without it, the image tag's suffix decides: -errors, -slow, -crash, -pullfail, -oom, -unready.
    #[arg(long, value_name = "FILE")]
    pub behaviours: Option<PathBuf>,
    /// Create namespaces production and rollback-watchdog and production/kailash-kaizen (3 replicas of kailash-kaizen:v1).
    #[arg(long)]
    pub seed: bool,
    /// How many times faster than real time the simulated cluster runs.
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = positive_f64)]
    pub time_scale: f64,
    /// Scrape interval written into the Prometheus config.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub scrape_interval: std::time::Duration,
    /// Scale runs: pods serve no HTTP listener (no metrics, no scrape targets) and Deployments get
    /// no Service, so 10,000 Deployments of 3 pods fit in one process.
    #[arg(long)]
    pub no_pod_listeners: bool,
}

#[cfg(feature = "sim")]
impl SimArgs {
    pub fn options(&self) -> crate::sim::standalone::StandaloneOptions {
        crate::sim::standalone::StandaloneOptions {
            listen: self.listen,
            kubeconfig_out: self.kubeconfig_out.clone(),
            prometheus_config_out: self.prometheus_config_out.clone(),
            request_log: self.request_log.clone(),
            behaviours: self.behaviours.clone(),
            seed: self.seed,
            time_scale: self.time_scale,
            scrape_interval: self.scrape_interval,
            no_pod_listeners: self.no_pod_listeners,
        }
    }
}

/// What the command line cannot turn into an exit code by itself.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[cfg(feature = "sim")]
    #[error(transparent)]
    Sim(#[from] StandaloneError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    App(#[from] AppError),
}

impl Cli {
    /// The log filter: `--log`, else for the demo (whose story is its
    /// stdout) only trouble unless `RUST_LOG` says otherwise, else none
    /// (`RUST_LOG` or the default).
    pub fn log_filter(&self) -> Option<&str> {
        #[cfg(feature = "sim")]
        if matches!(self.command, Command::Demo(_))
            && std::env::var("RUST_LOG").map_or(true, |v| v.trim().is_empty())
        {
            return Some(self.log.as_deref().unwrap_or(crate::demo::LOG_FILTER));
        }
        self.log.as_deref()
    }

    /// The Deployment `arg` names, `-n/--namespace` applied; a usage error
    /// (exit 2) that says what to write when the namespace is missing or
    /// contradicts itself. Every subcommand that names a Deployment goes
    /// through here.
    pub fn deployment(
        &self,
        arg: &DeploymentArg,
        err: &mut dyn Write,
    ) -> Result<DeploymentRef, u8> {
        arg.resolve(self.namespace.as_deref()).map_err(|why| {
            let _ = writeln!(err, "error: {why}\n\nFor more information, try '--help'.");
            EXIT_CONFIG
        })
    }

    /// kubectl's `--kubeconfig` and `--context`, for [`crate::k8s::connect`].
    pub fn kube_options(&self) -> crate::k8s::KubeOptions {
        crate::k8s::KubeOptions {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone(),
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completion(shell: CompletionShell, out: &mut dyn Write) {
    use clap::CommandFactory;
    use clap_complete::{generate, Shell};
    let shell = match shell {
        CompletionShell::Bash => Shell::Bash,
        CompletionShell::Zsh => Shell::Zsh,
        CompletionShell::Fish => Shell::Fish,
    };
    generate(shell, &mut Cli::command(), "rollback-watchdog", out);
}

/// Runs the subcommand; its exit code. Call inside a Tokio runtime.
pub async fn dispatch(cli: &Cli) -> Result<u8, CliError> {
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    let path = cli.config.as_path();
    crate::k8s::use_kube_options(cli.kube_options());
    Ok(match &cli.command {
        Command::CheckConfig(args) => {
            let path = args.path.as_deref().unwrap_or(path);
            config::check_config(path, args.strict, &mut out, &mut err)
        }
        Command::NotifyTest { sink } => config::notify_test(path, *sink, &mut out, &mut err).await,
        Command::Run => run::run(path, &mut err, termination()).await,
        Command::SelfCheck => run::self_check(path, &mut out, &mut err).await,
        Command::Status(args) => run::status(path, args, &mut out, &mut err).await,
        Command::Rollback(args) => {
            let target = match cli.deployment(&args.target, &mut err) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            let mut io = rollback::Io::with_stdin(&mut out, &mut err);
            rollback::rollback(path, &target, args, rollback::default_sink(), &mut io).await
        }
        Command::Restore(args) => {
            let mut io = rollback::Io::with_stdin(&mut out, &mut err);
            rollback::restore(path, args, rollback::default_sink(), &mut io).await
        }
        Command::Drill(args) => {
            let target = match cli.deployment(&args.target, &mut err) {
                Ok(t) => t,
                Err(code) => return Ok(code),
            };
            let mut io = rollback::Io::with_stdin(&mut out, &mut err);
            drill::drill(path, &target, args.live, args.yes, &mut io).await
        }
        Command::History { target } => match cli.deployment(target, &mut err) {
            Ok(target) => rollback::history(path, &target, &mut out, &mut err).await,
            Err(code) => code,
        },
        Command::Validate { target } => match cli.deployment(target, &mut err) {
            Ok(target) => rollback::validate(path, &target, &mut out, &mut err).await,
            Err(code) => code,
        },
        Command::Completion { shell } => {
            completion(*shell, &mut out);
            EXIT_OK
        }
        #[cfg(feature = "sim")]
        Command::Sim(args) => {
            crate::sim::standalone::run(args.options(), &mut out, termination()).await?;
            EXIT_OK
        }
        #[cfg(feature = "sim")]
        Command::Demo(args) => {
            match crate::demo::run(args.options(), Box::new(std::io::stdout())).await {
                Ok(_) => EXIT_OK,
                Err(e) => {
                    eprintln!("rollback-watchdog demo failed: {e}");
                    EXIT_FAILURE
                }
            }
        }
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn termination() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

/// `NAMESPACE/NAME` of a Deployment, as the subcommands take it once
/// `-n/--namespace` is applied.
pub type DeploymentRef = crate::k8s::DeploymentKey;
pub use target::DeploymentArg;

/// What `rollback` rolls back to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTo {
    Previous,
    Revision(u64),
    ImageTag(String),
}

impl FromStr for RollbackTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "previous" {
            return Ok(Self::Previous);
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse()
                .map(Self::Revision)
                .map_err(|_| format!("revision {s} is too large"));
        }
        // Docker's tag grammar: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
        let first_ok = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if first_ok && rest_ok && s.len() <= 128 {
            Ok(Self::ImageTag(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is not `previous`, a revision number or an image tag like v1.2.3"
            ))
        }
    }
}

impl Command {
    /// The subcommand's name as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Run => "run",
            Command::CheckConfig(_) => "check-config",
            Command::SelfCheck => "self-check",
            Command::Status(_) => "status",
            Command::History { .. } => "history",
            Command::Rollback(_) => "rollback",
            Command::Restore(_) => "restore",
            Command::Validate { .. } => "validate",
            Command::Drill(_) => "drill",
            Command::NotifyTest { .. } => "notify-test",
            #[cfg(feature = "sim")]
            Command::Demo(_) => "demo",
            #[cfg(feature = "sim")]
            Command::Sim(_) => "sim",
            Command::Completion { .. } => "completion",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn rollback_targets_parse_like_the_runbook_writes_them() {
        assert_eq!("previous".parse::<RollbackTo>(), Ok(RollbackTo::Previous));
        assert_eq!("7".parse::<RollbackTo>(), Ok(RollbackTo::Revision(7)));
        assert_eq!(
            "v1.2.3".parse::<RollbackTo>(),
            Ok(RollbackTo::ImageTag("v1.2.3".into()))
        );
        assert!("v1 2".parse::<RollbackTo>().is_err());
        assert!("production".parse::<DeploymentRef>().is_err());
        assert!("production".parse::<DeploymentArg>().is_ok());
        assert_eq!(
            "production/kailash-kaizen"
                .parse::<DeploymentRef>()
                .map(|r| r.to_string()),
            Ok("production/kailash-kaizen".to_string())
        );
    }
}
