//! The binary: parse the command line, start logging, hand over to the
//! library. Exit codes are documented in `cli` (0, 1, 2 config, 3 not yet).

use std::process::ExitCode;

use clap::Parser;
use rollback_watchdog::cli::{self, Cli, Command};
use rollback_watchdog::commands;
use rollback_watchdog::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(cli.log_format, cli.log.as_deref()) {
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
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    Ok(match &cli.command {
        Command::CheckConfig(args) => {
            let path = args.path.as_deref().unwrap_or(&cli.config);
            cli::check_config(path, args.strict, &mut out, &mut err)
        }
        Command::Sim(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let mut out = std::io::stdout();
            runtime.block_on(rollback_watchdog::sim::standalone::run(
                args.options(),
                &mut out,
                cli::termination(),
            ))?;
            cli::EXIT_OK
        }
        Command::Run => {
            let runtime = tokio::runtime::Runtime::new()?;
            let mut err = std::io::stderr();
            runtime.block_on(commands::run(&cli.config, &mut err, cli::termination()))
        }
        Command::Status(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(commands::status(&cli.config, args, &mut out, &mut err))
        }
        Command::Rollback(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let sink = rollback_watchdog::commands::default_sink();
            rollback_watchdog::commands::Io::with_std(|io| {
                runtime.block_on(rollback_watchdog::commands::rollback(
                    &cli.config,
                    args,
                    sink,
                    io,
                ))
            })
        }
        Command::Restore(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let sink = rollback_watchdog::commands::default_sink();
            rollback_watchdog::commands::Io::with_std(|io| {
                runtime.block_on(rollback_watchdog::commands::restore(
                    &cli.config,
                    args,
                    sink,
                    io,
                ))
            })
        }
        Command::History { target } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(rollback_watchdog::commands::history(
                &cli.config,
                target,
                &mut out,
                &mut err,
            ))
        }
        Command::Validate { target } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(rollback_watchdog::commands::validate(
                &cli.config,
                target,
                &mut out,
                &mut err,
            ))
        }
        Command::NotifyTest { sink } => cli::notify_test(&cli.config, *sink, &mut out, &mut err),
        other => cli::not_available(other, &mut err),
    })
}
