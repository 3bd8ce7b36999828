//! The process around the decisions: the run loop and the one place that
//! assembles it (`app`), leader election, the admin server, the start-up
//! self-check and logging.

pub mod admin;
pub mod app;
pub mod daemon;
pub mod lease;
pub mod selfcheck;
pub mod telemetry;
