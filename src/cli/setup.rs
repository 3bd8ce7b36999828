//! What every cluster-facing subcommand does first: load the config and
//! connect, printing each problem as a sentence on stderr. It must never
//! go on with a config that did not load.

use std::io::Write;
use std::path::Path;

use kube::Client;

use crate::cli::{EXIT_CONFIG, EXIT_FAILURE};
use crate::config::{Config, ConfigError, Loader};
use crate::k8s::connect;

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
pub async fn setup(config_path: &Path, err: &mut dyn Write) -> Result<(Config, Client), u8> {
    let config = load_config(config_path, err)?;
    match connect().await {
        Ok(client) => Ok((config, client)),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            Err(EXIT_FAILURE)
        }
    }
}
