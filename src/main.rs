//! The binary: parse the command line, start logging, run the subcommand
//! on one Tokio runtime. Exit codes are documented in `cli` (0, 1, 2 config).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rollback_watchdog::cli::{self, Cli};
use rollback_watchdog::runtime::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, cli.log_filter()) {
        eprintln!("rollback-watchdog: {e}");
        return ExitCode::from(cli::EXIT_CONFIG);
    }
    match run(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("rollback-watchdog: {e:#}");
            ExitCode::from(cli::EXIT_FAILURE)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Runtime::new()?;
    let code = runtime.block_on(cli::dispatch(cli));
    // Whatever a subcommand left running gets a bounded moment to stop.
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(code?)
}
