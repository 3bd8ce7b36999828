//! What the watchdog tells: the audit trail, incidents and their
//! notifications, its own metrics and `/status`.

pub mod audit;
pub mod incident;
pub mod metrics;
pub mod notify;
pub mod status;
