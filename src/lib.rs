//! rollback-watchdog: watches Kubernetes Deployments after each rollout and
//! runs the deployment-rollback runbook by itself when a new revision is bad.
//! Everything testable lives here; `main.rs` only wires the CLI to it.
//!
//! The modules follow the data, and nothing calls back up the flow:
//!
//! - [`config`]: the one TOML file, typed and validated.
//! - [`k8s`]: what Kubernetes itself defines (label selectors).
//! - [`observe`]: watch caches, targets, revisions and their windows, the blocklist.
//! - [`signals`]: error ratio, latency, health probes, pod states.
//! - [`decide`]: the judge, from signal results to a verdict.
//! - [`pipeline`]: the runbook's steps: validate, back up, update, wait, verify, close.
//! - [`report`]: audit trail, incidents, notifications, metrics, `/status`.
//! - [`runtime`]: the run loop, leader election, the admin server, self-check, logging.
//! - [`cli`]: the command line and its subcommands.
//! - `demo` and `sim`: the embedded simulated cluster and the story told on it
//!   (with the default cargo feature `sim`; an image build leaves it out).

pub mod cli;
pub mod config;
pub mod decide;
#[cfg(feature = "sim")]
pub mod demo;
pub mod k8s;
pub mod observe;
pub mod pipeline;
pub mod report;
pub mod runtime;
pub mod signals;
#[cfg(feature = "sim")]
pub mod sim;
