//! The binary: parse the command line, start logging, hand over to the
//! library. Exit codes are documented in `cli` (0, 1, 2 config).

use std::process::ExitCode;

use clap::Parser;
use rollback_watchdog::cli::commands;
use rollback_watchdog::cli::{self, Cli, Command};
use rollback_watchdog::runtime::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo's story is its stdout; unless asked, stderr only carries trouble.
    let demo_quiet = matches!(cli.command, Command::Demo(_))
        && std::env::var("RUST_LOG").map_or(true, |v| v.trim().is_empty());
    let filter = cli
        .log
        .as_deref()
        .or(demo_quiet.then_some(rollback_watchdog::demo::LOG_FILTER));
    if let Err(e) = telemetry::init(cli.log_format, filter) {
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
        Command::SelfCheck => {
            let runtime = tokio::runtime::Runtime::new()?;
            let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
            runtime.block_on(rollback_watchdog::cli::commands::self_check(
                &cli.config,
                &mut out,
                &mut err,
            ))
        }
        Command::Status(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(commands::status(&cli.config, args, &mut out, &mut err))
        }
        Command::Rollback(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let sink = rollback_watchdog::cli::commands::default_sink();
            rollback_watchdog::cli::commands::Io::with_std(|io| {
                runtime.block_on(rollback_watchdog::cli::commands::rollback(
                    &cli.config,
                    args,
                    sink,
                    io,
                ))
            })
        }
        Command::Restore(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let sink = rollback_watchdog::cli::commands::default_sink();
            rollback_watchdog::cli::commands::Io::with_std(|io| {
                runtime.block_on(rollback_watchdog::cli::commands::restore(
                    &cli.config,
                    args,
                    sink,
                    io,
                ))
            })
        }
        Command::History { target } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(rollback_watchdog::cli::commands::history(
                &cli.config,
                target,
                &mut out,
                &mut err,
            ))
        }
        Command::Validate { target } => {
            let runtime = tokio::runtime::Runtime::new()?;
            runtime.block_on(rollback_watchdog::cli::commands::validate(
                &cli.config,
                target,
                &mut out,
                &mut err,
            ))
        }
        Command::NotifyTest { sink } => cli::notify_test(&cli.config, *sink, &mut out, &mut err),
        Command::Demo(args) => {
            let runtime = tokio::runtime::Runtime::new()?;
            let result = runtime.block_on(rollback_watchdog::demo::run(
                args.options(),
                Box::new(std::io::stdout()),
            ));
            runtime.shutdown_timeout(std::time::Duration::from_secs(5));
            match result {
                Ok(_) => cli::EXIT_OK,
                Err(e) => {
                    eprintln!("rollback-watchdog demo failed: {e}");
                    cli::EXIT_FAILURE
                }
            }
        }
    })
}
