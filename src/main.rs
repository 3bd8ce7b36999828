//! The binary: parse the command line, start logging, run the subcommand
//! on one Tokio runtime. Exit codes are documented in `cli` (0, 1, 2 config).

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rollback_watchdog::cli::{self, Cli};
use rollback_watchdog::runtime::telemetry;

fn main() -> ExitCode {
    cap_malloc_arenas();
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

/// glibc's malloc gives each thread that contends an arena of its own, up
/// to 8 per core, and keeps what is freed in each. The runtime starts a
/// worker thread per core, so on a node with many cores the arenas, and
/// the freed memory they keep, multiply. On the 2-core bench machine the
/// cap is worth little (peak RSS at 10,000 Deployments 867 MiB with 2
/// arenas, 898 MiB with 8: benches/README.md). `MALLOC_ARENA_MAX` in the
/// environment, which glibc reads itself, wins. Other C libraries (musl in
/// the static image) have no such setting.
fn cap_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called first
        // thing in main, before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}
