//! Test-only crash points: with `RW_CRASH_AFTER=<step>` in its environment
//! a debug build exits (code [`EXIT_CODE`]) right after that step's audit
//! line is written, as a process killed at that moment would, so a test
//! can restart it and check that nothing is done twice or lost. Steps:
//! `validate`, `backup`, `update`, `wait`, `verify`, `audit` (the incident
//! report), `notify`. Compiled out of release builds: there it does nothing.

use crate::report::audit::Step;

/// The exit status of a crash point, so a test tells it from a failure.
pub const EXIT_CODE: i32 = 86;
/// The environment variable that names the step to crash after.
pub const ENV: &str = "RW_CRASH_AFTER";

/// Exits the process if `RW_CRASH_AFTER` names `step` (debug builds only).
#[cfg(debug_assertions)]
pub fn after(step: Step) {
    let Ok(want) = std::env::var(ENV) else {
        return;
    };
    let name = match step {
        Step::Report => "audit",
        other => other.as_str(),
    };
    if want == name {
        eprintln!("{ENV}={want}: exiting right after the {name} step (test crash point)");
        std::process::exit(EXIT_CODE);
    }
}

/// Release builds have no crash points.
#[cfg(not(debug_assertions))]
pub fn after(_step: Step) {}
