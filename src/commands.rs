//! The long-running and cluster-facing subcommands (`run`, `status`),
//! between the parsed command line and the library: load the config,
//! connect, call in, and turn every failure into a sentence and an exit
//! code. Nothing here decides anything.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::admin::{self, AdminState};
use crate::cli::{OutputFormat, StatusArgs, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::config::{Config, ConfigError, Loader, MissingSecrets};
use crate::daemon::Daemon;
use crate::metrics::Metrics;
use crate::status::{self, Role, StatusReport};

/// Loads the config for a command that acts: missing secrets are errors.
/// Prints every problem and returns the exit code on failure.
fn load(path: &Path, err: &mut dyn Write) -> Result<Config, u8> {
    match Loader::from_file(path)
        .missing_secrets(MissingSecrets::Error)
        .load()
    {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            Ok(loaded.config)
        }
        Err(ConfigError::Invalid { problems, .. }) => {
            let _ = writeln!(
                err,
                "error: {} is not a valid config ({} problems):",
                path.display(),
                problems.len()
            );
            for p in problems {
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

/// A client from `KUBECONFIG` or the in-cluster service account.
async fn client(err: &mut dyn Write) -> Result<kube::Client, u8> {
    match kube::Client::try_default().await {
        Ok(c) => Ok(c),
        Err(e) => {
            let _ = writeln!(
                err,
                "error: cannot build a Kubernetes client: {e}; set KUBECONFIG, or run inside the cluster with a service account"
            );
            Err(EXIT_FAILURE)
        }
    }
}

/// `rollback-watchdog run`: the daemon, until `shutdown`.
pub async fn run(
    config_path: &Path,
    err: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> u8 {
    let config = match load(config_path, err) {
        Ok(c) => Arc::new(c),
        Err(code) => return code,
    };
    let client = match client(err).await {
        Ok(c) => c,
        Err(code) => return code,
    };
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
    let daemon = match Daemon::new(config, client, metrics, admin_state.clone()) {
        Ok(d) => d,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let result = daemon.run(shutdown).await;
    admin_state.set_shutting_down();
    let _ = stop_admin.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
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
        .any(|t| t.verdict == "bad" || t.verdict == "degraded");
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
    let config = Arc::new(load(config_path, err)?);
    let client = client(err).await?;
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
