//! The subcommands that need nothing but the config: `check-config`
//! prints the effective config, `notify-test` sends a marked test message
//! through each sink. They must never print a secret, and never touch the
//! cluster.

use std::io::Write;

use crate::cli::{EXIT_CONFIG, EXIT_FAILURE, EXIT_OK};
use crate::config::{ConfigError, Loader, MissingSecrets};

/// `check-config`: the effective config, redacted, on `out`; warnings and
/// problems one per line on `err`. Returns the exit code.
pub fn check_config(
    path: &std::path::Path,
    strict: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let policy = if strict {
        MissingSecrets::Error
    } else {
        MissingSecrets::Warn
    };
    let result = Loader::from_file(path).missing_secrets(policy).load();
    let shown = path.display();
    match result {
        Ok(loaded) => {
            for w in &loaded.warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            match loaded.config.to_redacted_toml() {
                Ok(text) => {
                    let _ = write!(out, "{text}");
                    tracing::info!(
                        path = %shown,
                        targets = loaded.config.targets.len(),
                        sinks = loaded.config.notify.len(),
                        warnings = loaded.warnings.len(),
                        "config is valid"
                    );
                    EXIT_OK
                }
                Err(e) => {
                    let _ = writeln!(err, "error: {e}");
                    EXIT_FAILURE
                }
            }
        }
        Err(ConfigError::Invalid { problems, warnings }) => {
            let n = problems.len();
            let _ = writeln!(
                err,
                "error: {shown} is not a valid config ({n} problem{}):",
                if n == 1 { "" } else { "s" }
            );
            for p in &problems {
                let _ = writeln!(err, "{p}");
            }
            for w in &warnings {
                let _ = writeln!(err, "warning: {w}");
            }
            EXIT_CONFIG
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_CONFIG
        }
    }
}

/// `notify-test`: sends a clearly marked test message through every sink
/// (or only `--sink N`) directly, not through the delivery ledger, and
/// prints one line per sink. Exit 0 when every sink took it, 1 when one
/// did not, 2 when the config is wrong.
pub async fn notify_test(
    path: &std::path::Path,
    only: Option<usize>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let loaded = match Loader::from_file(path).load() {
        Ok(l) => l,
        Err(ConfigError::Invalid { problems, .. }) => {
            let n = problems.len();
            let _ = writeln!(
                err,
                "error: {} is not a valid config ({n} problem{}):",
                path.display(),
                if n == 1 { "" } else { "s" }
            );
            for p in &problems {
                let _ = writeln!(err, "{p}");
            }
            return EXIT_CONFIG;
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_CONFIG;
        }
    };
    let policy = crate::report::notify::RetryPolicy::default();
    match crate::report::notify::send_test(&loaded.config, only, &policy).await {
        Ok(results) => {
            let mut code = EXIT_OK;
            for r in &results {
                let _ = writeln!(out, "{r}");
                if r.report.result != crate::report::notify::DeliveryResult::Delivered {
                    code = EXIT_FAILURE;
                }
            }
            code
        }
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_CONFIG
        }
    }
}
