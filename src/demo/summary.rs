//! Step 6: read back what a user would check (the Deployment, the backup,
//! the blocklist, `/metrics`) and print the summary. A rollback that does
//! not read back as done is an error, not a summary.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;

use super::feeds::{AuditTail, Feeds};
use super::timeline::Timeline;
use super::watcher::Watcher;
use super::{bounded, DemoError, DemoReport};
use crate::observe::revision::first_image;
use crate::pipeline::RollbackOutcome;
use crate::report::incident::Incident;
use crate::sim::{SEED_DEPLOYMENT, SEED_IMAGE, SEED_NAMESPACE, WATCHDOG_NAMESPACE};

/// What `/metrics` said at the end of the story.
pub(super) struct Scrape {
    url: String,
    /// The rollback counter's line.
    rollbacks: String,
    file: PathBuf,
}

/// Scrapes the watchdog's own `/metrics` as `curl` would (the Prometheus
/// text format), keeps it in `dir`, and checks that it counts exactly the
/// one rollback the demo made.
pub(super) async fn scrape_metrics(url: &str, dir: &Path) -> Result<Scrape, DemoError> {
    let scrape_failed = |e: &dyn Display| DemoError::NotVerified(format!("GET {url} failed: {e}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| scrape_failed(&e))?;
    let text = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| scrape_failed(&e))?
        .text()
        .await
        .map_err(|e| scrape_failed(&e))?;
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).map_err(|e| {
        DemoError::NotVerified(format!("cannot keep the scrape in {}: {e}", file.display()))
    })?;
    let series = format!(
        "rollback_watchdog_rollbacks_total{{target=\"{SEED_NAMESPACE}/{SEED_DEPLOYMENT}\",outcome=\"succeeded\"}}"
    );
    let rollbacks = text
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(name, _)| name == series))
        .ok_or_else(|| DemoError::NotVerified(format!("{url} has no {series}")))?
        .to_string();
    if !rollbacks.ends_with(" 1") {
        return Err(DemoError::NotVerified(format!(
            "{url} counts other than one rollback: {rollbacks}"
        )));
    }
    Ok(Scrape {
        url: url.to_string(),
        rollbacks,
        file,
    })
}

/// Step 6: reads back what a user would check and prints the summary;
/// what the demo showed, for the caller.
#[allow(clippy::too_many_arguments)]
pub(super) async fn summary(
    tl: &Timeline,
    client: &kube::Client,
    outcome: &RollbackOutcome,
    emitted: &[Incident],
    feeds: &Feeds,
    scrape: &Scrape,
    bad: &str,
    with_prometheus: bool,
    deployed: Instant,
    watch: &Watcher,
) -> Result<DemoReport, DemoError> {
    let incident = &outcome.incident;
    let back = read_back(client, incident, bad).await?;
    let detect = incident.time_to_detect().or_else(|| {
        watch
            .bad_at
            .map(|t| t.duration_since(deployed).as_secs_f64())
    });
    let report = DemoReport {
        with_prometheus,
        bad_image: bad.to_string(),
        time_to_detect: detect,
        time_to_recover: incident.time_to_recover(),
        backup: back.backup.clone(),
        audit_log: feeds.audit.path.clone(),
        final_image: back.final_image.clone(),
        slack_messages: feeds.shown_messages,
        rollbacks_metric: scrape.rollbacks.clone(),
        metrics_file: scrape.file.clone(),
    };
    let told = told(emitted, feeds);
    tl.plain("");
    tl.plain("Summary");
    what_happened(tl, &report, incident);
    where_to_check(tl, &report, &back, &feeds.audit, &told, &scrape.url);
    Ok(report)
}

/// The summary's first rows: the result, how it was seen, how fast, and
/// from which revision to which.
fn what_happened(tl: &Timeline, report: &DemoReport, incident: &Incident) {
    let DemoReport {
        with_prometheus,
        bad_image: bad,
        time_to_detect: detect,
        time_to_recover: recover,
        ..
    } = report;
    let secs = |s: &Option<f64>| s.map_or("unknown".to_string(), |s| format!("{s:.1}s"));
    let (from, to) = (
        describe_revision(incident.from.as_ref()),
        describe_revision(incident.to.as_ref()),
    );
    row(
        tl,
        "result",
        format!(
            "rolled back and verified: {SEED_NAMESPACE}/{SEED_DEPLOYMENT} runs {SEED_IMAGE} again"
        ),
    );
    row(
        tl,
        "signals",
        if *with_prometheus {
            "Prometheus (error ratio, latency), pods, per-pod health".into()
        } else {
            "pods and per-pod health (no Prometheus)".into()
        },
    );
    row(
        tl,
        "time to detect",
        format!("{} (rollout of {bad} -> verdict Bad)", secs(detect)),
    );
    row(
        tl,
        "time to recover",
        format!("{} (verdict Bad -> rollback verified)", secs(recover)),
    );
    row(tl, "from", from);
    row(tl, "to", to);
    row(tl, "reason", incident.reason.clone());
}

/// The summary's other rows: each thing a user would check, and where.
fn where_to_check(
    tl: &Timeline,
    report: &DemoReport,
    back: &ReadBack,
    audit: &AuditTail,
    told: &[String],
    metrics_url: &str,
) {
    let DemoReport {
        bad_image: bad,
        backup,
        final_image,
        slack_messages,
        ..
    } = report;
    let ReadBack {
        saved,
        saved_image,
        blocklisted,
        ..
    } = back;
    let audit_lines = audit.lines.len();
    let audit_steps: Vec<&str> = audit.lines.iter().map(|l| l.step.as_str()).collect();
    row(
        tl,
        "backed up",
        format!(
            "ConfigMap {backup}: the full Deployment as it was before the rollback ({saved_image}, resourceVersion {}{}) and the rollback record",
            saved.metadata.resource_version.clone().unwrap_or_default(),
            if saved.status.is_some() { ", status included" } else { "" }
        ),
    );
    row(
        tl,
        "blocklisted",
        match blocklisted {
            Some(entry) => format!(
                "revision {} ({bad}): a re-deploy of it is flagged and judged at the first failing tick",
                entry.revision
            ),
            None => "nothing (unexpected)".into(),
        },
    );
    row(
        tl,
        "notifications",
        format!(
            "{slack_messages} Slack message(s) received by the local receiver; decisions told: {}",
            told.join(", ")
        ),
    );
    row(
        tl,
        "audit log",
        format!(
            "{} ({audit_lines} lines: {}); kept for you to read",
            audit.path.display(),
            audit_steps.join(", ")
        ),
    );
    row(
        tl,
        "metrics",
        format!(
            "{} (from {}; the whole scrape is in {})",
            report.rollbacks_metric,
            metrics_url,
            report.metrics_file.display()
        ),
    );
    row(
        tl,
        "final image",
        format!("{final_image} (the Deployment's template, read back from the cluster)"),
    );
}

/// One row of the summary: `  name             value`.
fn row(tl: &Timeline, name: &str, value: String) {
    tl.plain(format!("  {name:<16} {value}"));
}

/// What the demo read back from the cluster after the rollback.
struct ReadBack {
    /// The Deployment's image now.
    final_image: String,
    /// The backup ConfigMap, as NAMESPACE/NAME.
    backup: String,
    /// The Deployment as the backup holds it.
    saved: Deployment,
    saved_image: String,
    blocklisted: Option<crate::observe::blocklist::Entry>,
}

/// Reads back what a user would check: the Deployment runs v1 again, the
/// backup holds the bad Deployment, and the bad revision is blocklisted.
async fn read_back(
    client: &kube::Client,
    incident: &Incident,
    bad: &str,
) -> Result<ReadBack, DemoError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let d = bounded(
        &format!("read {SEED_NAMESPACE}/{SEED_DEPLOYMENT}"),
        deployments.get(SEED_DEPLOYMENT),
    )
    .await?;
    let final_image = first_image(&d);
    if final_image != SEED_IMAGE {
        return Err(DemoError::NotVerified(format!(
            "the Deployment's template runs {final_image}, not {SEED_IMAGE}"
        )));
    }

    // The backup: the full v2 Deployment and the rollback record.
    let backup = incident
        .backup
        .clone()
        .ok_or_else(|| DemoError::NotVerified("the incident names no backup ConfigMap".into()))?;
    let (backup_ns, backup_name) = backup
        .split_once('/')
        .unwrap_or((WATCHDOG_NAMESPACE, backup.as_str()));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), backup_ns);
    let cm = bounded(
        &format!("read the backup ConfigMap {backup}"),
        configmaps.get(backup_name),
    )
    .await?;
    let data = cm.data.unwrap_or_default();
    let saved: Option<Deployment> = data
        .get("deployment.json")
        .and_then(|s| serde_json::from_str(s).ok());
    let Some(saved) = saved else {
        return Err(DemoError::NotVerified(format!(
            "the backup ConfigMap {backup} holds no readable deployment.json"
        )));
    };
    let saved_image = first_image(&saved);
    if saved_image != bad {
        return Err(DemoError::NotVerified(format!(
            "the backup ConfigMap {backup} holds a Deployment running {saved_image}, not {bad}"
        )));
    }
    let bad_hash = incident
        .from
        .as_ref()
        .map(|f| f.pod_template_hash.clone())
        .unwrap_or_default();
    let blocklisted = crate::observe::blocklist::is_blocklisted(&d, &bad_hash, &[bad.to_string()]);
    Ok(ReadBack {
        final_image,
        backup,
        saved,
        saved_image,
        blocklisted,
    })
}

/// `revision N (images, pod-template-hash H, known-good)`.
fn describe_revision(r: Option<&crate::report::incident::RevisionRef>) -> String {
    r.map_or("unknown".to_string(), |r| {
        let mark = if r.known_good { ", known-good" } else { "" };
        format!(
            "revision {} ({}, pod-template-hash {}{mark})",
            r.revision,
            r.images.join(", "),
            r.pod_template_hash
        )
    })
}

/// Each decision told, with what became of its delivery.
fn told(emitted: &[Incident], feeds: &Feeds) -> Vec<String> {
    emitted
        .iter()
        .map(|i| {
            let how = feeds
                .deliveries
                .iter()
                .find(|d| d.incident_id == i.id && d.kind == i.kind)
                .map_or("no delivery outcome yet", |d| d.result.label());
            format!("{} {how}", i.kind.as_str())
        })
        .collect()
}
