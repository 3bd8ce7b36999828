//! rollback-watchdog: watches Kubernetes Deployments after each rollout and
//! runs the deployment-rollback runbook by itself when a new revision is bad.
//! Everything testable lives here; `main.rs` only wires the CLI to it.

pub mod admin;
pub mod audit;
pub mod backup;
pub mod blocklist;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod incident;
pub mod judge;
pub mod lease;
pub mod metrics;
pub mod notify;
pub mod revision;
pub mod rollback;
pub mod selector;
pub mod selfcheck;
pub mod signals;
pub mod sim;
pub mod status;
pub mod targets;
pub mod telemetry;
